//! Stream rescue: continue a stream that broke after bytes reached the client, on the next targets of the same plan,
//! chosen by the same rules as every attempt ([`Engine::select`]) and with the same failure handling ([`Engine::decide`]).
//!
//! Continuation is capability-aware. A model that takes an assistant prefill gets the partial answer as one; a model that
//! refuses prefill (the catalog says so, or it refused once and we remember) gets an instruction instead — the partial
//! answer quoted in a user turn — and whatever it repeats of the partial answer is removed before the client sees it.
//! Legacy completions are continued by extending the prompt.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Instant;

use super::Engine;
use super::classify::FailureClass;
use super::decide::Next;
use super::events::AttemptRole;
use super::plan::Endpoint;
use super::request::{Continuation, body_with};
use super::run::Cx;
use super::stream::StreamJob;
use super::upstream::{AttemptOk, SseEvent, SseReader, Wire};

/// A continuation that produced its first event.
pub(super) struct Rescued {
    pub pos: usize,
    pub reader: SseReader,
    pub first: SseEvent,
    /// Continued from an instruction: its first pieces may repeat the partial answer.
    pub instruction: bool,
}

/// Models seen refusing an assistant prefill (bounded). A refusal seen here outranks the catalog's `true`: the same
/// model name may be served by a deployment that behaves differently.
#[derive(Default)]
pub(super) struct PrefillKnowledge {
    refusing: Mutex<HashSet<String>>,
}

const MAX_LEARNED_MODELS: usize = 1024;

impl PrefillKnowledge {
    fn refuses(&self, model: &str) -> bool {
        self.refusing.lock().unwrap_or_else(|p| p.into_inner()).contains(model)
    }

    fn learn(&self, model: &str) {
        let mut refusing = self.refusing.lock().unwrap_or_else(|p| p.into_inner());
        if refusing.len() < MAX_LEARNED_MODELS {
            refusing.insert(model.to_owned());
        }
    }
}

impl Engine {
    fn takes_prefill(&self, model: &str) -> bool {
        !self.prefill.refuses(model) && self.catalog.assistant_prefill(model).unwrap_or(true)
    }
}

impl StreamJob {
    /// Finds a target that continues `partial`. `Err`: why none could, for the client's in-band error.
    pub(super) async fn rescue(&mut self, partial: &str) -> Result<Rescued, String> {
        let endpoint = self.req.endpoint;
        if !matches!(endpoint, Endpoint::Chat | Endpoint::Completions) {
            return Err("this endpoint's answers cannot be continued".to_owned());
        }
        let engine = self.engine.clone();
        let plan = self.plan.clone();
        // A rescue gets the request's time budget again, from now: the original deadline bounded the first event.
        let deadline = Instant::now() + self.req.timeout.unwrap_or(engine.settings.request_timeout);
        let added = u32::try_from(partial.len() / 4).unwrap_or(u32::MAX);
        self.run.estimate = Some(self.run.estimate(&self.req).saturating_add(added));
        let mut refused_prefill = false;
        let mut pos = plan.next_step(self.pos);
        loop {
            let cx = Cx {
                set: &self.set,
                req: &self.req,
                started: self.started,
                deadline,
                hedge: None,
                caching: self.caching,
            };
            let pick = engine.select(&cx, &plan, &self.run, pos, AttemptRole::Rescue);
            engine.report_skips(&cx, &mut self.run, pick.skipped, AttemptRole::Rescue);
            let Some(mut target) = pick.target else {
                return Err(if pick.deadline_passed {
                    "the time allowed to continue it ran out".to_owned()
                } else if refused_prefill {
                    "no fallback target could continue it (assistant prefill refused, and no other target left)"
                        .to_owned()
                } else {
                    "no fallback target could continue it".to_owned()
                });
            };
            let mut instruction = endpoint == Endpoint::Chat && !engine.takes_prefill(&target.step.model);
            let mut retries = 0;
            loop {
                if !target.pace.is_zero() {
                    tokio::time::sleep(target.pace).await;
                }
                let continuation =
                    if instruction { Continuation::Instruction(partial) } else { Continuation::Prefill(partial) };
                let body = body_with(self.req.body(), &target.step.model, Some(continuation));
                let started = Instant::now();
                self.run.attempts += 1;
                let result = engine.call(target, body, "application/json", Wire::Sse, deadline).await;
                engine.report_result(&cx, &mut self.run, target, AttemptRole::Rescue, &result, started.elapsed());
                let failure = match result {
                    Ok(AttemptOk::Stream { reader, first }) => {
                        engine.on_success(&self.set, target.key, &target.candidate.breaker);
                        tracing::info!(model = %target.step.model, instruction, "stream rescued");
                        return Ok(Rescued { pos: target.pos, reader, first, instruction });
                    }
                    Ok(AttemptOk::Body { .. } | AttemptOk::Bytes { .. }) => {
                        // Answered without streaming: nothing to splice in.
                        engine.breakers.release_probe(&target.candidate.breaker);
                        pos = plan.next_step(target.pos);
                        break;
                    }
                    Err(failure) => failure,
                };
                self.run.note(target.step, target.key, failure.class, &failure.detail);
                if failure.class == FailureClass::CallerFault && !instruction && endpoint == Endpoint::Chat {
                    // Most likely the prefill itself was refused: remember, and ask this target again another way.
                    tracing::info!(model = %target.step.model, "assistant prefill refused; continuing from an instruction");
                    engine.prefill.learn(&target.step.model);
                    refused_prefill = true;
                    instruction = true;
                    if engine.pace_retry(&cx, &mut target, &mut self.run) {
                        continue;
                    }
                    pos = plan.next_step(target.pos);
                    break;
                }
                match engine.decide(&cx, &mut self.run, target, &failure, retries) {
                    Next::Retry(wait) => {
                        tokio::time::sleep(wait).await;
                        retries += 1;
                        if !engine.pace_retry(&cx, &mut target, &mut self.run) {
                            pos = plan.next_step(target.pos);
                            break;
                        }
                    }
                    Next::RotateKey => {
                        pos = target.pos + 1;
                        break;
                    }
                    Next::MoveOn | Next::ReturnUpstream => {
                        pos = plan.next_step(target.pos);
                        break;
                    }
                }
            }
        }
    }
}

/// Holds back a continuation's first pieces until it is clear how much of them repeats the end of the partial answer.
pub(super) struct Overlap {
    /// The end of the partial answer (a repeat longer than this is not looked for).
    tail: String,
    buffered: String,
}

/// Longest repeat looked for, in bytes.
const MAX_OVERLAP: usize = 200;

impl Overlap {
    pub fn new(partial: &str) -> Self {
        let mut start = partial.len().saturating_sub(MAX_OVERLAP);
        while !partial.is_char_boundary(start) {
            start += 1;
        }
        Self { tail: partial[start..].to_owned(), buffered: String::new() }
    }

    pub fn push(&mut self, piece: &str) {
        self.buffered.push_str(piece);
    }

    /// Whether more pieces could still change the verdict: some suffix of the tail still starts with everything
    /// buffered (and the character after a full-length match is not known yet).
    pub fn ready(&self) -> bool {
        let b = self.buffered.as_str();
        !(0..self.tail.len())
            .filter(|&i| self.tail.is_char_boundary(i))
            .map(|i| &self.tail[i..])
            .any(|suffix| suffix.len() >= b.len() && suffix.starts_with(b))
    }

    /// The buffered text without the repeated part.
    pub fn take_fresh(&mut self) -> String {
        let k = overlap(&self.tail, &self.buffered);
        self.buffered.split_off(k)
    }
}

fn is_word(c: char) -> bool {
    c.is_alphanumeric()
}

/// Length of the longest start of `continuation` that repeats the end of `partial`, as whole words: it must begin
/// at a word start in `partial` and end at a word end in `continuation`.
pub(super) fn overlap(partial: &str, continuation: &str) -> usize {
    let longest = partial.len().min(continuation.len());
    for k in (1..=longest).rev() {
        let start = partial.len() - k;
        if !continuation.is_char_boundary(k) || !partial.is_char_boundary(start) {
            continue;
        }
        let repeated = &continuation[..k];
        if !partial.ends_with(repeated) || !repeated.chars().any(is_word) {
            continue;
        }
        let starts_word = partial[..start].chars().next_back().is_none_or(|c| !is_word(c));
        let ends_word = continuation[k..].chars().next().is_none_or(|c| !is_word(c));
        if starts_word && ends_word {
            return k;
        }
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlap_is_whole_words_only() {
        assert_eq!(overlap("alpha bravo charlie delta", "delta echo"), 5);
        assert_eq!(overlap("alpha bravo charlie delta", "charlie delta echo"), 13);
        assert_eq!(overlap("alpha bravo", " charlie"), 0, "a clean continuation keeps everything");
        assert_eq!(overlap("I like the", "theory of it"), 0, "a word that merely starts the same is not a repeat");
        assert_eq!(overlap("we met at the", "e-mail"), 0, "a partial word is not a repeat");
        assert_eq!(overlap("one two", "one two three"), 7, "the whole partial may be repeated");
        assert_eq!(overlap("ends with. ", ". next"), 0, "punctuation alone is not a repeat");
        assert_eq!(overlap("größe über", "über alles"), "über".len());
    }

    #[test]
    fn pieces_are_held_until_the_repeat_is_known() {
        let mut o = Overlap::new("alpha bravo charlie delta");
        o.push("del");
        assert!(!o.ready(), "could still be the repeat of 'delta'");
        o.push("ta");
        assert!(!o.ready(), "the next character decides whether 'delta' is a whole word");
        o.push(" echo");
        assert!(o.ready());
        assert_eq!(o.take_fresh(), " echo");

        let mut o = Overlap::new("alpha bravo");
        o.push(" charlie");
        assert!(o.ready(), "nothing in the partial answer starts with this");
        assert_eq!(o.take_fresh(), " charlie");
    }

    #[test]
    fn long_partials_only_keep_their_tail() {
        let partial = format!("{} final words", "x".repeat(1000));
        let mut o = Overlap::new(&partial);
        assert!(o.tail.len() <= MAX_OVERLAP);
        o.push("words and more");
        assert!(o.ready());
        assert_eq!(o.take_fresh(), " and more");
    }
}
