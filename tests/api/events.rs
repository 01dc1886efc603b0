//! The engine's events: one per upstream attempt (breaker skips, hedge losers, rescues and mid-stream faults included)
//! and one outcome per request, each with wall-clock time, key set, instance, model, provider and key id — without the
//! request ever waiting on them.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use reliablegpt::config::{EngineSettings, MasterKeyring, env};
use reliablegpt::egress::{EgressPolicy, HostPattern};
use reliablegpt::engine::events::{
    AttemptEvent, AttemptResult, AttemptRole, Event, EventSink, OutcomeEvent, RequestOutcome,
};
use reliablegpt::engine::substitute::{
    AnswerSource, Ask, AskReason, BoxFuture, Completion, Substitute, SubstituteSource,
};
use reliablegpt::engine::{Endpoint, Engine, FailureClass, GatewayRequest, ProviderKind, Reply};
use reliablegpt::mock_upstream::{Behavior, MockUpstream};
use reliablegpt::vault::{KeyTarget, OpenKeySet, Policy, Provider, ProviderKey, Vault};
use secrecy::SecretString;
use serde_json::json;
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::helpers::{TestDatabase, random_secret};

pub(crate) struct Harness {
    pub engine: Arc<Engine>,
    events: mpsc::Receiver<Event>,
    pub mock: MockUpstream,
    _db: Arc<TestDatabase>,
}

async fn harness(tweak: impl FnOnce(&mut EngineSettings)) -> Harness {
    harness_with(tweak, None).await
}

pub(crate) async fn harness_with(
    tweak: impl FnOnce(&mut EngineSettings),
    answers: Option<Arc<dyn AnswerSource>>,
) -> Harness {
    let mock = MockUpstream::start("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let db = TestDatabase::create().await;
    let vault = Vault::new(
        db.pool().await,
        Arc::new(MasterKeyring::parse(env::MASTER_KEY, &random_secret()).unwrap()),
        &MasterKeyring::parse(env::TOKEN_PEPPER, &random_secret()).unwrap(),
    );
    let mut settings = EngineSettings {
        openai_base_url: mock.base_url(),
        retry_base: Duration::from_millis(5),
        first_byte_timeout: Duration::from_millis(600),
        stream_idle_timeout: Duration::from_millis(600),
        ..EngineSettings::default()
    };
    tweak(&mut settings);
    let egress = EgressPolicy::new(vec![HostPattern::parse("127.0.0.1").unwrap()], true);
    let (sink, events) = EventSink::channel(64);
    let mut engine = Engine::new(settings, egress, vault, sink).unwrap();
    if let Some(answers) = answers {
        engine = engine.with_answer_source(answers);
    }
    Harness { engine: Arc::new(engine), events, mock, _db: db }
}

pub(crate) fn key_set(fallbacks: &[&str]) -> Arc<OpenKeySet> {
    let key = ProviderKey {
        id: Uuid::new_v4(),
        provider: Provider::Openai,
        secret: SecretString::from("sk-events-0000000000000000000000000000"),
        target: KeyTarget::default(),
        invalid_since: None,
    };
    let policy = Policy { fallback_strategy: fallbacks.iter().map(|m| m.to_string()).collect(), ..Policy::default() };
    Arc::new(OpenKeySet::new(Uuid::new_v4(), policy, vec![key]))
}

fn request(model: &str, stream: bool) -> GatewayRequest {
    let body = json!({"model": model, "stream": stream, "messages": [{"role": "user", "content": "hi"}]});
    let mut req = GatewayRequest::new(Endpoint::Chat, body);
    req.instance = "shop-42".into();
    req
}

impl Harness {
    /// Every event emitted so far, split into attempts and outcomes.
    pub(crate) async fn drain(&mut self) -> (Vec<AttemptEvent>, Vec<OutcomeEvent>) {
        // The outcome is emitted last; give spawned stream pumps a moment.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let (mut attempts, mut outcomes) = (Vec::new(), Vec::new());
        while let Ok(event) = self.events.try_recv() {
            match event {
                Event::Attempt(a) => attempts.push(a),
                Event::Outcome(o) => outcomes.push(o),
            }
        }
        (attempts, outcomes)
    }
}

#[tokio::test]
async fn each_attempt_emits_one_event_and_each_request_one_outcome() {
    let mut h = harness(|_| {}).await;
    h.mock.script("gpt-4o", vec![Behavior::server_error(), Behavior::ok()]);
    let set = key_set(&[]);
    let before = Utc::now();
    let reply = h.engine.serve(set.clone(), request("gpt-4o", false)).await;
    assert!(matches!(reply, Reply::Upstream { status: 200, .. }));

    let (attempts, outcomes) = h.drain().await;
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    for e in &attempts {
        assert_eq!(e.key_set_id, set.key_set_id);
        assert_eq!(e.key_id, set.keys[0].id);
        assert_eq!((e.model.as_str(), e.provider, e.role), ("gpt-4o", ProviderKind::Openai, AttemptRole::Main));
        assert_eq!(e.instance, "shop-42");
        assert!(e.latency > Duration::ZERO);
        assert!(e.at >= before && e.at <= Utc::now(), "wall-clock time");
    }
    assert_eq!((attempts[0].result, attempts[0].status), (AttemptResult::Failed(FailureClass::Transient), Some(500)));
    assert_eq!((attempts[1].result, attempts[1].status), (AttemptResult::Success, Some(200)));
    let words = reliablegpt::mock_upstream::full_answer().split(' ').count() as u64;
    assert_eq!(attempts[1].tokens.map(|t| t.completion_tokens), Some(words), "reported usage travels with the event");

    assert_eq!(outcomes.len(), 1);
    let o = &outcomes[0];
    assert_eq!(o.outcome, RequestOutcome::FallbackSuccess, "a retry after a failure is not a clean success");
    assert_eq!((o.attempts, o.fallback_reason), (2, Some(FailureClass::Transient)));
    assert_eq!(o.served_by, Some(("gpt-4o".to_owned(), ProviderKind::Openai)));
    assert_eq!((o.instance.as_str(), o.requested_model.as_str()), ("shop-42", "gpt-4o"));
    assert_eq!(o.billed.completion_tokens, words);
}

#[tokio::test]
async fn a_breaker_skip_is_an_event_and_a_fallback_with_reason_breaker_open() {
    let mut h = harness(|s| {
        s.max_retries = 0;
        s.breaker_failures = 1;
        s.breaker_open = Duration::from_secs(30);
    })
    .await;
    h.mock.script("gpt-4o", vec![Behavior::server_error()]);
    let set = key_set(&["gpt-4o-mini"]);
    assert!(matches!(h.engine.serve(set.clone(), request("gpt-4o", false)).await, Reply::Upstream { status: 200, .. }));
    let _ = h.drain().await;

    let Reply::Upstream { served, .. } = h.engine.serve(set.clone(), request("gpt-4o", false)).await else {
        panic!("the fallback answers");
    };
    assert_eq!((served.model.as_str(), served.attempts), ("gpt-4o-mini", 1));
    assert_eq!(served.fallback_reason, Some(FailureClass::BreakerOpen));
    let (attempts, outcomes) = h.drain().await;
    let results: Vec<(&str, AttemptResult)> = attempts.iter().map(|a| (a.model.as_str(), a.result)).collect();
    assert_eq!(
        results,
        vec![("gpt-4o", AttemptResult::Failed(FailureClass::BreakerOpen)), ("gpt-4o-mini", AttemptResult::Success)]
    );
    assert_eq!(attempts[0].status, None);
    assert_eq!(outcomes[0].outcome, RequestOutcome::FallbackSuccess);
    assert_eq!(outcomes[0].fallback_reason, Some(FailureClass::BreakerOpen));
}

#[tokio::test]
async fn a_hedge_loser_is_reported_as_cancelled() {
    let mut h = harness(|_| {}).await;
    h.mock.script("gpt-4o", vec![Behavior::ok_after(2_000)]);
    let set = key_set(&["gpt-4o-mini"]);
    let mut req = request("gpt-4o", false);
    req.hedge = Some(Duration::from_millis(50));
    let Reply::Upstream { served, .. } = h.engine.serve(set, req).await else { panic!("answered") };
    assert_eq!((served.model.as_str(), served.attempts), ("gpt-4o-mini", 2));
    let (attempts, outcomes) = h.drain().await;
    let mut seen: Vec<(&str, AttemptRole, AttemptResult)> =
        attempts.iter().map(|a| (a.model.as_str(), a.role, a.result)).collect();
    seen.sort_by_key(|(m, ..)| *m);
    assert_eq!(
        seen,
        vec![
            ("gpt-4o", AttemptRole::Main, AttemptResult::Cancelled),
            ("gpt-4o-mini", AttemptRole::Hedge, AttemptResult::Success)
        ]
    );
    assert_eq!(outcomes[0].outcome, RequestOutcome::FallbackSuccess);
}

#[tokio::test]
async fn an_unrescued_broken_stream_is_partial_with_its_fault_as_an_event() {
    let mut h = harness(|_| {}).await;
    h.mock.script("gpt-4o", vec![Behavior::StreamCut { after_tokens: 3 }]);
    let Reply::Stream { mut rest, done, .. } = h.engine.serve(key_set(&[]), request("gpt-4o", true)).await else {
        panic!("a stream");
    };
    let mut last = Vec::new();
    while let Some(bytes) = rest.recv().await {
        last = bytes.to_vec();
    }
    assert!(String::from_utf8_lossy(&last).contains("stream_interrupted"));
    let end = done.await.unwrap();
    assert_eq!(end.outcome, RequestOutcome::Partial);
    assert_eq!(end.text, "alpha bravo charlie");
    assert!(end.error.unwrap().contains("broke"));

    let (attempts, outcomes) = h.drain().await;
    let results: Vec<AttemptResult> = attempts.iter().map(|a| a.result).collect();
    assert_eq!(results, vec![AttemptResult::Success, AttemptResult::Failed(FailureClass::Transient)]);
    assert_eq!(outcomes.len(), 1);
    assert_eq!(outcomes[0].outcome, RequestOutcome::Partial);
}

/// A stand-in for the semantic cache: answers every lookup but the busy-time one (to let that request reach the
/// upstream), and remembers what the engine asked and handed over.
#[derive(Default)]
pub(crate) struct Recorder {
    asked: std::sync::Mutex<Vec<(AskReason, String)>>,
    pub completed: std::sync::Mutex<Vec<Completion>>,
}

impl AnswerSource for Recorder {
    fn lookup<'a>(&'a self, ask: Ask<'a>) -> BoxFuture<'a, Option<Substitute>> {
        self.asked.lock().unwrap().push((ask.reason, ask.instance.to_owned()));
        if ask.reason == AskReason::Busy {
            return Box::pin(std::future::ready(None));
        }
        let overload = ask.reason != AskReason::AllFailed;
        let answer = Substitute {
            text: "From elsewhere.".into(),
            model: "gpt-4o".into(),
            source: SubstituteSource::Cache { similarity: 0.97, overload },
        };
        Box::pin(std::future::ready(Some(answer)))
    }

    fn completed(&self, completion: Completion) {
        self.completed.lock().unwrap().push(completion);
    }
}

pub(crate) fn caching_set(policy: serde_json::Value) -> Arc<OpenKeySet> {
    let set = key_set(&[]);
    let mut policy: Policy = serde_json::from_value(policy).unwrap();
    policy.caching = true;
    let keys = set.keys.iter().map(|k| k.clone_for_attempt()).collect();
    Arc::new(OpenKeySet::new(set.key_set_id, policy, keys))
}

#[tokio::test]
async fn the_outcome_chain_asks_elsewhere_before_the_graceful_string_and_only_with_caching_on() {
    let recorder = Arc::new(Recorder::default());
    let mut h = harness_with(|s| s.max_retries = 0, Some(recorder.clone())).await;
    h.mock.script("gpt-4o", vec![Behavior::server_error()]);
    let set = caching_set(json!({"graceful_string": "Sorry."}));
    let Reply::Substitute { body, source, served, .. } = h.engine.serve(set, request("gpt-4o", false)).await else {
        panic!("answered from elsewhere");
    };
    assert_eq!(source, SubstituteSource::Cache { similarity: 0.97, overload: false });
    assert_eq!((served.attempts, served.provider), (1, None));
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["choices"][0]["message"]["content"], "From elsewhere.");
    assert_eq!(*recorder.asked.lock().unwrap(), vec![(AskReason::AllFailed, "shop-42".to_owned())]);
    let (_, outcomes) = h.drain().await;
    assert_eq!(outcomes[0].outcome, RequestOutcome::Cached);

    // Caching off: nothing is asked, the graceful string answers.
    let mut off = Policy { graceful_string: Some("Sorry.".into()), ..Policy::default() };
    off.caching = false;
    let set = Arc::new(OpenKeySet::new(
        Uuid::new_v4(),
        off,
        key_set(&[]).keys.iter().map(|k| k.clone_for_attempt()).collect(),
    ));
    let Reply::Substitute { source, .. } = h.engine.serve(set, request("gpt-4o", false)).await else { panic!() };
    assert_eq!(source, SubstituteSource::Graceful);
    assert_eq!(recorder.asked.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn overload_asks_elsewhere_instead_of_a_503() {
    let recorder = Arc::new(Recorder::default());
    let h = harness_with(|_| {}, Some(recorder.clone())).await;
    h.mock.script("gpt-4o", vec![Behavior::ok_after(400), Behavior::ok()]);
    let set = caching_set(json!({"max_concurrency": 1, "max_queue_ms": 10}));
    let slow = h.engine.serve(set.clone(), request("gpt-4o", false));
    let second = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        h.engine.serve(set.clone(), request("gpt-4o", false)).await
    };
    let (slow, second) = tokio::join!(slow, second);
    assert!(matches!(slow, Reply::Upstream { status: 200, .. }));
    let Reply::Substitute { source, .. } = second else { panic!("the shed request was answered from elsewhere") };
    assert_eq!(source, SubstituteSource::Cache { similarity: 0.97, overload: true });
    let asked: Vec<AskReason> = recorder.asked.lock().unwrap().iter().map(|(r, _)| *r).collect();
    assert_eq!(asked, vec![AskReason::Busy, AskReason::Overloaded], "the first was admitted at 100% load: busy");
}

#[tokio::test]
async fn answered_requests_are_handed_over_whole_for_write_through() {
    let recorder = Arc::new(Recorder::default());
    // Never busy: no lookups before the upstream.
    let h = harness_with(|_| {}, Some(recorder.clone())).await;
    h.mock.script("gpt-4o", vec![Behavior::StreamCut { after_tokens: 5 }, Behavior::ok()]);
    let set = caching_set(json!({"fallback_strategy": ["gpt-4o-mini"]}));
    let Reply::Stream { mut rest, done, .. } = h.engine.serve(set.clone(), request("gpt-4o", true)).await else {
        panic!("a stream");
    };
    while rest.recv().await.is_some() {}
    let end = done.await.unwrap();
    assert_eq!(end.outcome, RequestOutcome::Rescued);
    assert!(matches!(h.engine.serve(set, request("gpt-4o", false)).await, Reply::Upstream { status: 200, .. }));

    let completed = recorder.completed.lock().unwrap().clone();
    let seen: Vec<(RequestOutcome, &str, &str)> =
        completed.iter().map(|c| (c.outcome, c.model.as_str(), c.text.as_str())).collect();
    let full = reliablegpt::mock_upstream::full_answer();
    assert_eq!(
        seen,
        vec![
            (RequestOutcome::Rescued, "gpt-4o-mini", full.as_str()),
            (RequestOutcome::Success, "gpt-4o", full.as_str())
        ]
    );
    assert!(completed.iter().all(|c| c.instance == "shop-42"));
    assert!(recorder.asked.lock().unwrap().is_empty());
}
