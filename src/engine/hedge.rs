//! Hedging ("treat slow as failed"): if the primary attempt has produced nothing after a delay, start a second one in
//! parallel; the first success wins and the other is cancelled (dropped, which aborts its HTTP request).

use std::future::Future;
use std::time::Duration;

pub struct Raced<T, E> {
    /// The winner's success, or the primary's failure when nothing succeeded.
    pub result: Result<T, E>,
    pub hedge_won: bool,
    pub hedge_started: bool,
    /// The hedge's own failure, when it failed.
    pub hedge_failure: Option<E>,
}

/// Runs `primary`; if it has not finished after `after`, calls `start_hedge` (which may decline: no target) and races
/// the two.
pub async fn race<T, E, P, H>(primary: P, after: Duration, start_hedge: impl FnOnce() -> Option<H>) -> Raced<T, E>
where
    P: Future<Output = Result<T, E>>,
    H: Future<Output = Result<T, E>>,
{
    tokio::pin!(primary);
    let sleep = tokio::time::sleep(after);
    tokio::pin!(sleep);
    tokio::select! {
        result = &mut primary => return Raced { result, hedge_won: false, hedge_started: false, hedge_failure: None },
        () = &mut sleep => {}
    }
    let Some(hedge) = start_hedge() else {
        return Raced { result: primary.await, hedge_won: false, hedge_started: false, hedge_failure: None };
    };
    tokio::pin!(hedge);
    tokio::select! {
        first = &mut primary => match first {
            Ok(t) => Raced { result: Ok(t), hedge_won: false, hedge_started: true, hedge_failure: None },
            Err(e) => match hedge.await {
                Ok(t) => Raced { result: Ok(t), hedge_won: true, hedge_started: true, hedge_failure: None },
                Err(h) => Raced { result: Err(e), hedge_won: false, hedge_started: true, hedge_failure: Some(h) },
            },
        },
        second = &mut hedge => match second {
            Ok(t) => Raced { result: Ok(t), hedge_won: true, hedge_started: true, hedge_failure: None },
            Err(h) => Raced { result: primary.await, hedge_won: false, hedge_started: true, hedge_failure: Some(h) },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    async fn after(ms: u64, r: Result<&'static str, &'static str>) -> Result<&'static str, &'static str> {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        r
    }

    #[tokio::test]
    async fn fast_primary_never_starts_a_hedge() {
        let r = race(after(5, Ok("p")), Duration::from_millis(50), || Some(after(0, Ok("h")))).await;
        assert_eq!((r.result, r.hedge_won, r.hedge_started), (Ok("p"), false, false));
    }

    #[tokio::test]
    async fn slow_primary_loses_to_the_hedge_and_is_cancelled() {
        let started = Instant::now();
        let r = race(after(5_000, Ok("p")), Duration::from_millis(20), || Some(after(10, Ok("h")))).await;
        assert_eq!((r.result, r.hedge_won, r.hedge_started), (Ok("h"), true, true));
        assert!(started.elapsed() < Duration::from_millis(500));
    }

    #[tokio::test]
    async fn a_failing_hedge_leaves_the_primary_to_finish() {
        let r = race(after(60, Ok("p")), Duration::from_millis(10), || Some(after(5, Err("h")))).await;
        assert_eq!((r.result, r.hedge_won, r.hedge_failure), (Ok("p"), false, Some("h")));
        let r = race(after(60, Err("p")), Duration::from_millis(10), || Some(after(5, Err("h")))).await;
        assert_eq!((r.result, r.hedge_failure), (Err("p"), Some("h")));
        let r = race(after(20, Err("p")), Duration::from_millis(10), || Some(after(50, Ok("h")))).await;
        assert_eq!((r.result, r.hedge_won), (Ok("h"), true));
    }

    #[tokio::test]
    async fn a_declined_hedge_leaves_the_primary_alone() {
        let r =
            race(after(30, Ok("p")), Duration::from_millis(5), || None::<std::future::Ready<Result<&str, &str>>>).await;
        assert_eq!((r.result, r.hedge_started), (Ok("p"), false));
    }
}
