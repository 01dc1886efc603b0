//! The fallback engine end to end: what the client got, and what the mock upstream saw.

use std::time::{Duration, Instant};

use reliablegpt::config::env;
use reliablegpt::mock_upstream::{Behavior, full_answer};
use serde_json::{Value, json};

use crate::helpers::{chat_body, error_of, spawn_gateway, spawn_gateway_with};

const K1: &str = "sk-test-key-one-000000000000000000000001";
const K2: &str = "sk-test-key-two-000000000000000000000002";

#[tokio::test]
async fn healthy_request_is_forwarded_as_sent_and_answered_unchanged() {
    let gw = spawn_gateway().await;
    let token = gw.key_set(&[K1], &["gpt-4o-mini"]).await;
    let body = json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "temperature": 0.2,
                      "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
                      "response_format": {"type": "json_object"}, "logprobs": true});
    let a = gw.post("/v1/chat/completions", &token, body.clone(), &[]).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.body["choices"][0]["message"]["content"], full_answer());
    assert_eq!(a.body["model"], "gpt-4o");
    assert_eq!(a.header("x-reliablegpt-model"), Some("gpt-4o"));
    assert_eq!(a.header("x-reliablegpt-provider"), Some("openai"));
    assert_eq!(a.header("x-reliablegpt-attempts"), Some("1"));
    assert_eq!(a.header("x-reliablegpt-cache"), Some("miss"));
    assert_eq!(a.header("x-reliablegpt-fallback-reason"), None);
    let seen = gw.mock.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].api_key.as_deref(), Some(K1));
    assert_eq!(seen[0].body, body, "the body must reach the upstream exactly as sent");
}

#[tokio::test]
async fn transient_failures_are_retried_then_the_fallback_answers_with_its_own_usage() {
    let gw = spawn_gateway().await;
    let token = gw.key_set(&[K1], &["gpt-4o-mini", "gpt-4.1"]).await;
    gw.mock.script("gpt-4o", vec![Behavior::server_error()]);
    gw.mock.script("gpt-4o-mini", vec![Behavior::overloaded(), Behavior::ok()]);
    let a = gw.chat(&token, "gpt-4o").await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(gw.models_seen(), vec!["gpt-4o", "gpt-4o", "gpt-4o", "gpt-4o-mini", "gpt-4o-mini"]);
    assert_eq!(a.header("x-reliablegpt-model"), Some("gpt-4o-mini"));
    assert_eq!(a.header("x-reliablegpt-attempts"), Some("5"));
    assert_eq!(a.header("x-reliablegpt-fallback-reason"), Some("transient"));
    assert_eq!(a.body["model"], "gpt-4o-mini");
    let words = full_answer().split(' ').count() as u64;
    assert_eq!(a.body["usage"]["completion_tokens"], words, "usage is the answering attempt's alone");
}

#[tokio::test]
async fn fallback_header_overrides_the_policy_and_repeats_mean_try_again() {
    let gw = spawn_gateway_with(|e| {
        e.insert(env::MAX_RETRIES.into(), "0".into());
    })
    .await;
    let token = gw.key_set(&[K1], &["never-used"]).await;
    gw.mock.script("m1", vec![Behavior::server_error(), Behavior::server_error(), Behavior::ok()]);
    let a = gw.post("/v1/chat/completions", &token, chat_body("m1"), &[("x-reliablegpt-fallback", "m1, m1")]).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(gw.models_seen(), vec!["m1", "m1", "m1"]);
}

#[tokio::test]
async fn a_dead_key_is_rotated_marked_invalid_skipped_later_and_revived_by_patch() {
    let gw = spawn_gateway().await;
    let token = gw.key_set(&[K1, K2], &[]).await;
    gw.mock.set_invalid_key(K1);
    let a = gw.chat(&token, "gpt-4o").await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(gw.keys_seen(), vec![K1, K2]);
    assert_eq!(a.header("x-reliablegpt-fallback-reason"), Some("credential"));

    // The mark is written off the request path: wait for it.
    let mut listed = Value::Null;
    for _ in 0..50 {
        listed = gw.app.get_keys(&token).await.json().await.unwrap();
        if listed["keys"][0]["status"] == "invalid" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(listed["keys"][0]["status"], "invalid", "{listed}");
    assert!(listed["keys"][0]["last_error"].as_str().unwrap().contains("credential"));
    assert!(!listed.to_string().contains(K1));

    gw.mock.clear();
    assert_eq!(gw.chat(&token, "gpt-4o").await.status, 200);
    assert_eq!(gw.keys_seen(), vec![K2], "an invalid key is skipped by later requests");

    let key_id = listed["keys"][0]["id"].clone();
    assert_eq!(gw.app.patch_keys(&token, &json!({"revive_keys": [key_id]})).await.status(), 200);
    gw.mock.clear();
    assert_eq!(gw.chat(&token, "gpt-4o").await.status, 200);
    assert_eq!(gw.keys_seen(), vec![K1], "a revived key is used at once");
}

#[tokio::test]
async fn no_quota_rotates_too_but_rate_limits_and_5xx_never_rotate_keys() {
    let gw = spawn_gateway().await;
    let token = gw.key_set(&[K1, K2], &[]).await;
    gw.mock.set_no_quota_key(K1);
    assert_eq!(gw.chat(&token, "gpt-4o").await.status, 200);
    assert_eq!(gw.keys_seen(), vec![K1, K2]);

    let other = gw.key_set(&[K2, K1], &[]).await;
    gw.mock.clear();
    gw.mock.script("gpt-4o", vec![Behavior::overloaded()]);
    let a = gw.chat(&other, "gpt-4o").await;
    assert_eq!(a.status, 503, "{}", a.text);
    assert_eq!(gw.keys_seen(), vec![K2, K2, K2], "5xx retries the same key and never rotates");
    let error = &a.body["error"];
    assert_eq!(error["code"], "upstream_unavailable");
    assert!(error["message"].as_str().unwrap().contains("transient"), "{error}");
    assert!(!a.text.contains(K2), "the error must not reveal a key");

    gw.mock.clear();
    gw.mock.script("gpt-4.1", vec![Behavior::rate_limited(None)]);
    let a = gw.chat(&other, "gpt-4.1").await;
    assert_eq!(a.status, 429, "{}", a.text);
    assert_eq!(gw.keys_seen(), vec![K2], "429 without Retry-After: no hammering, no rotation");
}

#[tokio::test]
async fn context_errors_jump_to_a_model_that_fits_and_skip_ones_that_cannot() {
    let gw = spawn_gateway().await;
    let token = gw.key_set(&[K1], &["gpt-3.5-turbo", "gpt-4o"]).await;
    gw.mock.script("gpt-4", vec![Behavior::ContextLimit { max_tokens: 8192, with_code: true }]);
    // ~20k tokens: too big for gpt-4 (8k) and gpt-3.5-turbo (16k), fine for gpt-4o (128k).
    let body = json!({"model": "gpt-4", "messages": [{"role": "user", "content": "word ".repeat(16_000)}]});
    let a = gw.post("/v1/chat/completions", &token, body.clone(), &[]).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(gw.models_seen(), vec!["gpt-4", "gpt-4o"], "gpt-3.5-turbo cannot fit and must not be tried");
    assert_eq!(a.header("x-reliablegpt-fallback-reason"), Some("context_too_long"));

    // The message-only form that OpenAI-compatible servers send is understood too.
    gw.mock.clear();
    gw.mock.script("local-llm", vec![Behavior::ContextLimit { max_tokens: 100, with_code: false }]);
    let token2 = gw.key_set(&[K1], &["gpt-4o"]).await;
    let mut small = body.clone();
    small["model"] = json!("local-llm");
    let a = gw.post("/v1/chat/completions", &token2, small, &[]).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(gw.models_seen(), vec!["local-llm", "gpt-4o"]);

    // No planned model fits: the catalog's larger-context upgrade of the requested model is tried (gpt-4o → gpt-4.1).
    gw.mock.clear();
    gw.mock.script("gpt-4o", vec![Behavior::ContextLimit { max_tokens: 10, with_code: true }]);
    let token3 = gw.key_set(&[K1], &["gpt-3.5-turbo"]).await;
    let mut tiny = body.clone();
    tiny["model"] = json!("gpt-4o");
    let a = gw.post("/v1/chat/completions", &token3, tiny.clone(), &[]).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(gw.models_seen(), vec!["gpt-4o", "gpt-4.1"], "gpt-3.5-turbo cannot fit; the upgrade can");
    assert_eq!(a.header("x-reliablegpt-model"), Some("gpt-4.1"));
    assert_eq!(a.header("x-reliablegpt-fallback-reason"), Some("context_too_long"));

    // The upgrade does not fit either: the caller gets the original error unchanged.
    gw.mock.clear();
    gw.mock.script("gpt-4o", vec![Behavior::ContextLimit { max_tokens: 10, with_code: true }]);
    gw.mock.script("gpt-4.1", vec![Behavior::ContextLimit { max_tokens: 10, with_code: false }]);
    let a = gw.post("/v1/chat/completions", &token3, tiny, &[]).await;
    assert_eq!(a.status, 400, "{}", a.text);
    assert_eq!(a.body["error"]["code"], "context_length_exceeded");
    assert_eq!(gw.models_seen(), vec!["gpt-4o", "gpt-4.1"]);

    // A model with no upgrade in the catalog and nothing that fits: the original error.
    gw.mock.clear();
    gw.mock.script("local-llm", vec![Behavior::ContextLimit { max_tokens: 10, with_code: true }]);
    let mut local = body;
    local["model"] = json!("local-llm");
    let a = gw.post("/v1/chat/completions", &token3, local, &[]).await;
    assert_eq!(a.status, 400, "{}", a.text);
    assert_eq!(a.body["error"]["code"], "context_length_exceeded");
    assert_eq!(gw.models_seen(), vec!["local-llm"]);
}

#[tokio::test]
async fn caller_faults_and_content_filters_come_back_unchanged_without_retry_or_fallback() {
    let gw = spawn_gateway().await;
    let token = gw.key_set(&[K1, K2], &["gpt-4o-mini"]).await;
    for behavior in [Behavior::bad_request(), Behavior::content_filter()] {
        gw.mock.clear();
        gw.mock.script("gpt-4o", vec![behavior.clone()]);
        let a = gw.chat(&token, "gpt-4o").await;
        assert_eq!(a.status, 400, "{}", a.text);
        assert_eq!(gw.models_seen(), vec!["gpt-4o"], "{behavior:?}");
        let Behavior::Error { message, .. } = behavior else { unreachable!() };
        assert_eq!(a.body["error"]["message"], message, "the upstream's reason reaches the caller");
    }
    // model_not_found is not the caller's fault: the next model answers.
    gw.mock.clear();
    gw.mock.script("gpt-4o", vec![Behavior::model_not_found()]);
    let a = gw.chat(&token, "gpt-4o").await;
    assert_eq!(a.status, 200);
    assert_eq!(gw.models_seen(), vec!["gpt-4o", "gpt-4o-mini"]);
}

#[tokio::test]
async fn short_retry_after_is_honoured_on_the_same_target() {
    let gw = spawn_gateway().await;
    let token = gw.key_set(&[K1], &["gpt-4o-mini"]).await;
    gw.mock.script("gpt-4o", vec![Behavior::rate_limited(Some("1")), Behavior::ok()]);
    let started = Instant::now();
    let a = gw.chat(&token, "gpt-4o").await;
    assert_eq!(a.status, 200);
    assert!(started.elapsed() >= Duration::from_millis(950), "{:?}", started.elapsed());
    assert_eq!(gw.models_seen(), vec!["gpt-4o", "gpt-4o"]);
    let seen = gw.mock.requests();
    assert!(seen[1].at.duration_since(seen[0].at) >= Duration::from_millis(950));
}

#[tokio::test]
async fn long_retry_after_cools_the_target_down_and_moves_on() {
    let gw = spawn_gateway().await;
    let token = gw.key_set(&[K1], &["gpt-4o-mini"]).await;
    gw.mock.script("gpt-4o", vec![Behavior::rate_limited(Some("60"))]);
    let started = Instant::now();
    assert_eq!(gw.chat(&token, "gpt-4o").await.status, 200);
    assert!(started.elapsed() < Duration::from_secs(2));
    // The breaker keeps later requests off the cooling target.
    assert_eq!(gw.chat(&token, "gpt-4o").await.status, 200);
    assert_eq!(gw.models_seen(), vec!["gpt-4o", "gpt-4o-mini", "gpt-4o-mini"]);
    // The owner sees the key cooling down.
    let mut status = Value::Null;
    for _ in 0..50 {
        let listed: Value = gw.app.get_keys(&token).await.json().await.unwrap();
        status = listed["keys"][0]["status"].clone();
        if status == "cooling_down" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(status, "cooling_down");
}

#[tokio::test]
async fn absurd_retry_after_values_cool_the_target_down_and_never_break_the_request() {
    // Values found by probing: each one used to panic a worker (classifier, breaker arithmetic, cooldown date).
    let gw = spawn_gateway().await;
    for value in ["1e20", "1e19", "1e13", "18446744073709551615", "-5", "NaN", "inf", "Fri, 31 Dec 9999 23:59:59 GMT"] {
        // A fresh key set per value: its key is a new breaker target.
        let token = gw.key_set(&[K1], &["gpt-4o-mini"]).await;
        gw.mock.script("gpt-4o", vec![Behavior::rate_limited(Some(value))]);
        let a = gw.chat(&token, "gpt-4o").await;
        assert_eq!(a.status, 200, "Retry-After: {value}");
        assert_eq!(a.header("x-reliablegpt-model"), Some("gpt-4o-mini"), "Retry-After: {value}");
        // The service still answers afterwards.
        assert_eq!(gw.chat(&token, "gpt-4o-mini").await.status, 200, "Retry-After: {value}");
    }
}

#[tokio::test]
async fn an_upstream_answer_over_the_size_limit_is_a_clear_502_not_a_memory_spike() {
    let gw = crate::helpers::spawn_gateway_with(|e| {
        e.insert(env::MAX_UPSTREAM_BODY_BYTES.to_owned(), "4096".to_owned());
    })
    .await;
    let token = gw.key_set(&[K1], &[]).await;
    // The mock's embedding answer (1,536 numbers) is far over 4 KiB; a chat answer is well under it.
    let body = json!({"model": "text-embedding-3-small", "input": "hello"});
    let a = gw.post("/v1/embeddings", &token, body, &[]).await;
    assert_eq!(a.status, 502, "{}", a.text);
    assert_eq!(a.body["error"]["code"], "upstream_failed");
    assert!(a.body["error"]["message"].as_str().unwrap().contains("larger than 4096 bytes"), "{}", a.text);
    assert_eq!(gw.mock.requests().len(), 1, "refused once, not retried");
    assert_eq!(gw.chat(&token, "gpt-4o").await.status, 200);
}

#[tokio::test]
async fn a_cooldown_seen_by_one_replica_keeps_the_others_off_the_target() {
    let gw = spawn_gateway().await;
    let other = gw.app.sibling(|_| {}).await;
    let token = gw.key_set(&[K1], &["gpt-4o-mini"]).await;
    // The first request gets 429 with a long Retry-After; any later one would be served.
    gw.mock.script("gpt-4o", vec![Behavior::rate_limited(Some("60")), Behavior::ok()]);
    assert_eq!(gw.chat(&token, "gpt-4o").await.status, 200);
    assert_eq!(gw.models_seen(), vec!["gpt-4o", "gpt-4o-mini"]);
    // Once the cooldown is stored (and announced), the other replica skips the cooling target too.
    let started = Instant::now();
    loop {
        let listed: Value = gw.app.get_keys(&token).await.json().await.unwrap();
        if listed["keys"][0]["status"] == "cooling_down" {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "cooldown never stored: {listed}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let res = other.chat(&token, "gpt-4o").await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["x-reliablegpt-model"], "gpt-4o-mini");
    assert_eq!(gw.models_seen(), vec!["gpt-4o", "gpt-4o-mini", "gpt-4o-mini"], "the other replica never tried gpt-4o");
}

#[tokio::test]
async fn last_used_at_is_recorded_off_the_request_path() {
    let gw = spawn_gateway().await;
    let token = gw.key_set(&[K1, K2], &[]).await;
    assert_eq!(gw.chat(&token, "gpt-4o").await.status, 200);
    // Usage is flushed in batches every 5 s.
    let mut listed = Value::Null;
    for _ in 0..80 {
        listed = gw.app.get_keys(&token).await.json().await.unwrap();
        if !listed["keys"][0]["last_used_at"].is_null() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(listed["keys"][0]["last_used_at"].is_string(), "{listed}");
    assert!(listed["keys"][1]["last_used_at"].is_null(), "the second key was never used: {listed}");
}

#[tokio::test]
async fn a_silent_upstream_is_abandoned_at_the_first_byte_limit_not_retried() {
    let gw = spawn_gateway().await;
    let token = gw.key_set(&[K1], &["gpt-4o-mini"]).await;
    gw.mock.script("gpt-4o", vec![Behavior::NoResponse]);
    let started = Instant::now();
    let a = gw.chat(&token, "gpt-4o").await;
    let took = started.elapsed();
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(gw.models_seen(), vec!["gpt-4o", "gpt-4o-mini"]);
    assert_eq!(a.header("x-reliablegpt-fallback-reason"), Some("timeout"));
    assert!(took >= Duration::from_millis(550) && took < Duration::from_millis(1500), "{took:?}");
}

#[tokio::test]
async fn connection_resets_are_transient() {
    let gw = spawn_gateway().await;
    let token = gw.key_set(&[K1], &[]).await;
    gw.mock.script("gpt-4o", vec![Behavior::ResetBeforeHeaders, Behavior::ok()]);
    let a = gw.chat(&token, "gpt-4o").await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(gw.models_seen(), vec!["gpt-4o", "gpt-4o"]);
}

#[tokio::test]
async fn the_overall_deadline_bounds_the_request() {
    let gw = spawn_gateway().await;
    let token = gw.key_set(&[K1], &["gpt-4o-mini", "gpt-4.1"]).await;
    for m in ["gpt-4o", "gpt-4o-mini", "gpt-4.1"] {
        gw.mock.script(m, vec![Behavior::NoResponse]);
    }
    let started = Instant::now();
    let a = gw.post("/v1/chat/completions", &token, chat_body("gpt-4o"), &[("x-reliablegpt-timeout-ms", "900")]).await;
    assert!(started.elapsed() < Duration::from_millis(1400), "{:?}", started.elapsed());
    assert_eq!(a.status, 504, "{}", a.text);
    assert_eq!(a.body["error"]["code"], "deadline_exceeded");
}

#[tokio::test]
async fn breakers_open_on_a_dead_primary_and_traffic_returns_when_it_recovers() {
    let gw = spawn_gateway_with(|e| {
        e.insert(env::MAX_RETRIES.into(), "0".into());
        e.insert(env::BREAKER_FAILURES.into(), "2".into());
    })
    .await;
    let token = gw.key_set(&[K1], &["gpt-4o-mini"]).await;
    gw.mock.script("gpt-4o", vec![Behavior::server_error()]);
    let mut answers = Vec::new();
    for _ in 0..3 {
        answers.push(gw.chat(&token, "gpt-4o").await);
    }
    assert!(answers.iter().all(|a| a.status == 200));
    assert_eq!(
        gw.models_seen(),
        vec!["gpt-4o", "gpt-4o-mini", "gpt-4o", "gpt-4o-mini", "gpt-4o-mini"],
        "after two failures the open breaker skips the primary"
    );
    // A skipped primary is still a fallback, and says why.
    let skipped = &answers[2];
    assert_eq!(skipped.header("x-reliablegpt-attempts"), Some("1"), "a skip is not an upstream call");
    assert_eq!(skipped.header("x-reliablegpt-fallback-reason"), Some("breaker_open"));
    let metrics = gw.app.client.get(gw.app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    for line in [
        r#"reliablegpt_circuit_breakers{state="open"} 1"#,
        r#"reliablegpt_requests_total{outcome="fallback_success",model="gpt-4o-mini",provider="openai"} 3"#,
        r#"reliablegpt_fallbacks_total{reason="breaker_open",model="gpt-4o-mini",provider="openai"} 1"#,
        r#"reliablegpt_fallbacks_total{reason="transient",model="gpt-4o-mini",provider="openai"} 2"#,
        r#"reliablegpt_upstream_attempts_total{class="breaker_open",model="gpt-4o",provider="openai"} 1"#,
    ] {
        assert!(metrics.contains(line), "missing {line} in {metrics}");
    }
    assert!(!metrics.contains("outcome=\"success\""), "{metrics}");

    gw.mock.clear();
    gw.mock.script("gpt-4o", vec![Behavior::ok()]);
    tokio::time::sleep(Duration::from_millis(450)).await;
    let a = gw.chat(&token, "gpt-4o").await;
    assert_eq!(a.header("x-reliablegpt-model"), Some("gpt-4o"), "the half-open probe succeeds");
    assert_eq!(gw.chat(&token, "gpt-4o").await.header("x-reliablegpt-model"), Some("gpt-4o"));
    assert_eq!(gw.models_seen(), vec!["gpt-4o", "gpt-4o"]);
}

#[tokio::test]
async fn total_failure_lists_every_attempt_or_answers_with_the_graceful_string() {
    let gw = spawn_gateway_with(|e| {
        e.insert(env::MAX_RETRIES.into(), "0".into());
    })
    .await;
    let token = gw.key_set(&[K1], &["gpt-4o-mini"]).await;
    gw.mock.script("gpt-4o", vec![Behavior::server_error()]);
    gw.mock.script("gpt-4o-mini", vec![Behavior::ResetBeforeHeaders]);
    let a = gw.chat(&token, "gpt-4o").await;
    assert_eq!(a.status, 503);
    let message = a.body["error"]["message"].as_str().unwrap();
    assert!(message.contains("gpt-4o via openai") && message.contains("gpt-4o-mini via openai"), "{message}");
    assert!(message.contains("sk-...0001"), "attempts name the masked key: {message}");

    let graceful = gw
        .key_set_with(
            json!([K1]),
            json!({"fallback_strategy": ["gpt-4o-mini"], "graceful_string": "Sorry, try later."}),
        )
        .await;
    let a = gw.chat(&graceful, "gpt-4o").await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.header("x-reliablegpt-graceful"), Some("true"));
    assert_eq!(a.body["choices"][0]["message"]["content"], "Sorry, try later.");
    assert_eq!(a.body["object"], "chat.completion");
}

#[tokio::test]
async fn azure_deployments_first_then_the_backup_openai_key() {
    let gw = spawn_gateway().await;
    let azure_key = "0123456789abcdef0123456789abcdef";
    let token = gw
        .key_set_with(
            json!([{"provider": "azure", "key": azure_key, "endpoint": gw.mock.azure_endpoint(), "api_version": "2024-10-21",
                    "deployments": {"gpt-4o": "prod-gpt4o"}}, K1]),
            json!({"azure_fallback_strategy": ["prod-gpt4o"]}),
        )
        .await;
    let a = gw.chat(&token, "gpt-4o").await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.header("x-reliablegpt-provider"), Some("azure"));
    let seen = gw.mock.requests();
    assert!(seen[0].path.starts_with("/openai/deployments/prod-gpt4o/chat/completions?api-version=2024-10-21"));
    assert_eq!(seen[0].api_key.as_deref(), Some(azure_key));

    gw.mock.clear();
    gw.mock.script("prod-gpt4o", vec![Behavior::overloaded()]);
    let a = gw.chat(&token, "gpt-4o").await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.header("x-reliablegpt-provider"), Some("openai"));
    let seen = gw.mock.requests();
    assert_eq!(seen.last().unwrap().path, "/v1/chat/completions");
    assert_eq!(seen.last().unwrap().api_key.as_deref(), Some(K1));
}

#[tokio::test]
async fn completions_and_embeddings_use_the_same_engine() {
    let gw = spawn_gateway().await;
    let token =
        gw.key_set(&[K1], &["gpt-3.5-turbo-instruct", "text-embedding-ada-002", "text-embedding-3-large"]).await;
    gw.mock.script("davinci-002", vec![Behavior::server_error()]);
    let a = gw.post("/v1/completions", &token, json!({"model": "davinci-002", "prompt": "Say"}), &[]).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.body["choices"][0]["text"], full_answer());
    assert_eq!(
        a.header("x-reliablegpt-model"),
        Some("gpt-3.5-turbo-instruct"),
        "embedding models are no fallback for text"
    );

    gw.mock.clear();
    gw.mock.script("text-embedding-3-small", vec![Behavior::server_error()]);
    let a =
        gw.post("/v1/embeddings", &token, json!({"model": "text-embedding-3-small", "input": ["a", "b"]}), &[]).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.header("x-reliablegpt-model"), Some("text-embedding-ada-002"));
    assert_eq!(a.body["data"][0]["embedding"].as_array().unwrap().len(), 1536);
    assert!(!gw.models_seen().contains(&"text-embedding-3-large".to_owned()), "3072 dimensions cannot replace 1536");
}

#[tokio::test]
async fn models_metrics_and_request_validation() {
    let gw = spawn_gateway().await;
    let token = gw.key_set(&[K1], &["my-finetune"]).await;
    let res = gw.app.client.get(gw.app.url("/v1/models")).bearer_auth(&token).send().await.unwrap();
    let list: Value = res.json().await.unwrap();
    let ids: Vec<&str> = list["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert!(ids.contains(&"gpt-4o") && ids.contains(&"my-finetune"), "{ids:?}");

    for (body, headers, param) in [
        (json!({"messages": []}), vec![], "model"),
        (json!({"model": 5}), vec![], "model"),
        (json!({"model": "gpt-4o", "stream": "yes"}), vec![], "stream"),
        (chat_body("gpt-4o"), vec![("x-reliablegpt-timeout-ms", "0")], "x-reliablegpt-timeout-ms"),
        (chat_body("gpt-4o"), vec![("x-reliablegpt-instance", "bad id!")], "x-reliablegpt-instance"),
        (chat_body("gpt-4o"), vec![("x-reliablegpt-caching", "maybe")], "x-reliablegpt-caching"),
    ] {
        let a = gw.post("/v1/chat/completions", &token, body.clone(), &headers).await;
        assert_eq!(a.status, 400, "{body}");
        assert_eq!(a.body["error"]["param"], param, "{}", a.text);
    }
    assert!(gw.mock.requests().is_empty(), "invalid requests never reach an upstream");

    let error = error_of(
        gw.app
            .client
            .post(gw.app.url("/v1/chat/completions"))
            .bearer_auth("rgpt_nope")
            .json(&chat_body("gpt-4o"))
            .send()
            .await
            .unwrap(),
        401,
    )
    .await;
    assert_eq!(error["code"], "invalid_api_key");

    assert_eq!(gw.chat(&token, "gpt-4o").await.status, 200);
    let metrics = gw.app.client.get(gw.app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    for line in [
        r#"reliablegpt_requests_total{outcome="success",model="gpt-4o",provider="openai"} 1"#,
        r#"reliablegpt_upstream_attempts_total{class="success",model="gpt-4o",provider="openai"} 1"#,
        // Only the answered gateway request: rejected ones never reached the engine.
        "reliablegpt_gateway_overhead_seconds_count 1",
        "reliablegpt_requests_in_flight 0",
    ] {
        assert!(metrics.contains(line), "missing {line} in {metrics}");
    }
}

#[tokio::test]
async fn revocation_on_one_replica_stops_the_token_on_another_at_once() {
    let gw = spawn_gateway().await;
    let token = gw.key_set(&[K1], &[]).await;
    let replica = gw.app.sibling(|_| {}).await;
    // Warm the replica's in-memory key-set cache.
    let warm = replica.client.post(replica.url("/v1/chat/completions")).bearer_auth(&token).json(&chat_body("gpt-4o"));
    assert_eq!(warm.send().await.unwrap().status(), 200);
    assert_eq!(gw.app.delete_keys(&token).await.status(), 204);
    let mut status = 0;
    for _ in 0..50 {
        let req =
            replica.client.post(replica.url("/v1/chat/completions")).bearer_auth(&token).json(&chat_body("gpt-4o"));
        status = req.send().await.unwrap().status().as_u16();
        if status == 401 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(status, 401, "the replica kept serving a revoked token");
}

#[tokio::test]
async fn hedging_starts_the_next_target_when_the_first_is_slow_and_the_first_answer_wins() {
    let gw = spawn_gateway().await;
    let token = gw.key_set(&[K1], &["gpt-4o-mini"]).await;
    gw.mock.script("gpt-4o", vec![Behavior::ok_after(3_000)]);
    let started = Instant::now();
    let a = gw.post("/v1/chat/completions", &token, chat_body("gpt-4o"), &[("x-reliablegpt-hedge-ms", "100")]).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert!(started.elapsed() < Duration::from_millis(1_500), "{:?}", started.elapsed());
    assert_eq!(a.header("x-reliablegpt-model"), Some("gpt-4o-mini"));
    assert_eq!(a.header("x-reliablegpt-attempts"), Some("2"));
    let seen = gw.mock.requests();
    assert_eq!(gw.models_seen(), vec!["gpt-4o", "gpt-4o-mini"]);
    assert!(seen[1].at.duration_since(seen[0].at) >= Duration::from_millis(90), "the hedge waits hedge_ms");

    // A fast primary starts no hedge; the policy's hedge_ms works like the header.
    gw.mock.clear();
    let policy_token =
        gw.key_set_with(json!([K1]), json!({"fallback_strategy": ["gpt-4o-mini"], "hedge_ms": 500})).await;
    let a = gw.chat(&policy_token, "gpt-4o").await;
    assert_eq!(a.header("x-reliablegpt-attempts"), Some("1"));
    assert_eq!(gw.models_seen(), vec!["gpt-4o"]);
}

#[tokio::test]
async fn model_budgets_pace_requests_and_overflow_moves_to_the_next_model() {
    let gw = spawn_gateway().await;
    let token = gw
        .key_set_with(
            json!([K1]),
            json!({"fallback_strategy": ["gpt-4o-mini"], "model_limits": {"gpt-4o": {"rpm": 2}}, "max_queue_ms": 100}),
        )
        .await;
    for expected in ["gpt-4o", "gpt-4o", "gpt-4o-mini"] {
        let a = gw.chat(&token, "gpt-4o").await;
        assert_eq!(a.header("x-reliablegpt-model"), Some(expected), "{}", a.text);
    }
    assert_eq!(gw.models_seen(), vec!["gpt-4o", "gpt-4o", "gpt-4o-mini"], "the provider never saw a third gpt-4o call");
}

#[tokio::test]
async fn large_prompts_pass_and_oversized_bodies_get_413() {
    let gw = spawn_gateway().await;
    let token = gw.key_set(&[K1], &[]).await;
    let big = json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "x".repeat(2 * 1024 * 1024)}]});
    let a = gw.post("/v1/chat/completions", &token, big, &[]).await;
    assert_eq!(a.status, 200, "a 2 MiB prompt is a normal request");
    let huge = json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "x".repeat(33 * 1024 * 1024)}]});
    let a = gw.post("/v1/chat/completions", &token, huge, &[]).await;
    assert_eq!(a.status, 413);
    assert_eq!(a.body["error"]["code"], "payload_too_large");
    let a = gw.post("/v1/chat/completions", &token, json!("not an object"), &[]).await;
    assert_eq!(a.status, 400);
    assert_eq!(gw.mock.requests().len(), 1);
}

#[tokio::test]
async fn stored_upstream_urls_are_checked_again_against_todays_egress_settings() {
    let gw = spawn_gateway().await;
    let token = gw
        .key_set_with(
            json!([{"provider": "azure", "key": "0123456789abcdef0123456789abcdef", "endpoint": gw.mock.azure_endpoint(),
                    "api_version": "2024-10-21", "deployments": {"gpt-4o": "prod-gpt4o"}}, K1]),
            json!({}),
        )
        .await;
    // The operator has since turned private upstreams off: the stored loopback Azure endpoint must not get the key.
    let strict = gw
        .app
        .sibling(|e| {
            e.insert(env::ALLOW_PRIVATE_UPSTREAMS.into(), "false".into());
        })
        .await;
    let res = strict.client.post(strict.url("/v1/chat/completions")).bearer_auth(&token).json(&chat_body("gpt-4o"));
    let res = res.send().await.unwrap();
    assert_eq!(res.headers()["x-reliablegpt-provider"], "openai");
    assert_eq!(res.status(), 200);
    assert!(gw.mock.requests().iter().all(|r| !r.path.starts_with("/openai/")), "no request reached the Azure path");
}

#[tokio::test]
async fn a_refused_connection_is_transient_and_a_custom_base_url_falls_back_to_openai() {
    let gw = spawn_gateway().await;
    // Nothing listens on port 1: every connect is refused.
    let token = gw
        .key_set_with(json!([{"provider": "openai", "key": K2, "base_url": "http://127.0.0.1:1/v1"}, K1]), json!({}))
        .await;
    let a = gw.chat(&token, "gpt-4o").await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.header("x-reliablegpt-provider"), Some("openai"));
    assert_eq!(a.header("x-reliablegpt-fallback-reason"), Some("transient"));
    assert_eq!(a.header("x-reliablegpt-attempts"), Some("4"), "three connects (two retries), then the OpenAI key");
    assert_eq!(gw.keys_seen(), vec![K1]);
}

async fn key_status(gw: &crate::helpers::GatewayTest, token: &str, index: usize, want: &str) -> Value {
    let mut listed = Value::Null;
    for _ in 0..100 {
        listed = gw.app.get_keys(token).await.json().await.unwrap();
        if listed["keys"][index]["status"] == want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    listed["keys"][index]["status"].clone()
}

#[tokio::test]
async fn an_invalid_key_is_tried_once_more_after_its_cooldown_and_recovers_when_it_works() {
    let gw = spawn_gateway_with(|e| {
        e.insert(env::KEY_RETRY_AFTER_SECS.into(), "1".into());
    })
    .await;
    let token = gw.key_set(&[K1, K2], &[]).await;
    gw.mock.set_invalid_key(K1);
    assert_eq!(gw.chat(&token, "gpt-4o").await.status, 200);
    assert_eq!(key_status(&gw, &token, 0, "invalid").await, "invalid");

    // After the cooldown, one request tries the key again; it is still dead, so it is marked again and skipped.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    gw.mock.clear();
    gw.mock.set_invalid_key(K1);
    assert_eq!(gw.chat(&token, "gpt-4o").await.status, 200);
    assert_eq!(gw.chat(&token, "gpt-4o").await.status, 200);
    assert_eq!(gw.keys_seen(), vec![K1, K2, K2], "one retry of the dead key, then skipped again");

    // Once the provider accepts it again, the next retry brings it back to active.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    gw.mock.clear();
    assert_eq!(gw.chat(&token, "gpt-4o").await.status, 200);
    assert_eq!(gw.keys_seen(), vec![K1]);
    assert_eq!(key_status(&gw, &token, 0, "active").await, "active");
    gw.mock.clear();
    assert_eq!(gw.chat(&token, "gpt-4o").await.status, 200);
    assert_eq!(gw.keys_seen(), vec![K1], "a recovered key is first in line again");
}

#[tokio::test]
async fn six_parallel_requests_at_max_concurrency_two_get_two_answers_and_four_clean_503s() {
    // Answers slow enough that all six arrive while the first two are in flight, even on a busy machine.
    let gw = spawn_gateway_with(|e| {
        e.insert(env::FIRST_BYTE_TIMEOUT_MS.into(), "10000".into());
    })
    .await;
    let token = gw.key_set_with(json!([K1]), json!({"max_concurrency": 2, "max_queue_ms": 100})).await;
    gw.mock.script("gpt-4o", vec![Behavior::ok_after(2_500), Behavior::ok_after(2_500), Behavior::ok()]);
    let answers = futures_util::future::join_all((0..6).map(|_| gw.chat(&token, "gpt-4o"))).await;
    let ok: Vec<_> = answers.iter().filter(|a| a.status == 200).collect();
    let shed: Vec<_> = answers.iter().filter(|a| a.status == 503).collect();
    assert_eq!((ok.len(), shed.len()), (2, 4), "{:?}", answers.iter().map(|a| a.status).collect::<Vec<_>>());
    for a in &shed {
        assert_eq!(a.body["error"]["code"], "overloaded", "{}", a.text);
        assert!(a.body["error"]["message"].as_str().unwrap().contains("max_concurrency"), "{}", a.text);
        assert!(a.header("retry-after").and_then(|v| v.parse::<u64>().ok()).is_some_and(|s| s >= 1));
    }
    assert_eq!(gw.mock.requests().len(), 2, "shed requests never reach an upstream");
    let metrics = gw.app.client.get(gw.app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    for line in [
        "reliablegpt_requests_shed_total 4",
        r#"reliablegpt_requests_total{outcome="shed",model="gpt-4o",provider="none"} 4"#,
        "reliablegpt_requests_in_flight 0",
        "reliablegpt_requests_queued 0",
    ] {
        assert!(metrics.contains(line), "missing {line} in {metrics}");
    }
    // The slots are free again.
    assert_eq!(gw.chat(&token, "gpt-4o").await.status, 200);
}

#[tokio::test]
async fn a_stream_holds_its_slot_until_it_ends() {
    let gw = spawn_gateway().await;
    let token = gw.key_set_with(json!([K1]), json!({"max_concurrency": 1, "max_queue_ms": 100})).await;
    gw.mock.script("gpt-4o", vec![Behavior::StreamStall { after_tokens: 2 }, Behavior::ok()]);
    let body = json!({"model": "gpt-4o", "stream": true, "messages": [{"role": "user", "content": "hi"}]});
    let streaming = gw.post("/v1/chat/completions", &token, body, &[]);
    let second = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        gw.chat(&token, "gpt-4o").await
    };
    let (stalled, second) = tokio::join!(streaming, second);
    assert!(stalled.text.contains("stream_interrupted"), "{}", stalled.text);
    assert_eq!(second.status, 503, "the stalled stream still held the only slot: {}", second.text);
    let third = gw.chat(&token, "gpt-4o").await;
    assert_eq!(third.status, 200, "the slot was freed when the stream ended: {}", third.text);
}
