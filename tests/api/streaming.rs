//! Streaming: events pass through as they arrive; a stream that dies midway is continued on a fallback (prefill) or
//! ends with an in-band error — never a clean end of a truncated answer.

use reliablegpt::mock_upstream::{Behavior, full_answer};
use serde_json::{Value, json};

use crate::helpers::{GatewayTest, spawn_gateway, sse_data, streamed_text};

const K1: &str = "sk-test-key-one-000000000000000000000001";

fn stream_body(model: &str) -> Value {
    json!({"model": model, "stream": true, "messages": [{"role": "user", "content": "Say the alphabet."}]})
}

async fn stream(gw: &GatewayTest, fallbacks: &[&str], model: &str) -> crate::helpers::Answer {
    let token = gw.key_set(&[K1], fallbacks).await;
    gw.post("/v1/chat/completions", &token, stream_body(model), &[]).await
}

/// A streamed gpt-4o request on a fresh one-key set, its body left to the caller to read.
async fn open_stream(gw: &GatewayTest) -> reqwest::Response {
    let token = gw.key_set(&[K1], &[]).await;
    let request = gw.app.client.post(gw.app.url("/v1/chat/completions")).bearer_auth(&token);
    request.json(&stream_body("gpt-4o")).send().await.unwrap()
}

fn words(n: usize) -> String {
    full_answer().split(' ').take(n).collect::<Vec<_>>().join(" ")
}

#[tokio::test]
async fn a_healthy_stream_passes_through_with_usage() {
    let gw = spawn_gateway().await;
    let token = gw.key_set(&[K1], &[]).await;
    let mut body = stream_body("gpt-4o");
    body["stream_options"] = json!({"include_usage": true});
    let a = gw.post("/v1/chat/completions", &token, body, &[]).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.header("content-type"), Some("text/event-stream"));
    assert_eq!(a.header("x-reliablegpt-model"), Some("gpt-4o"));
    assert_eq!(streamed_text(&a.text), full_answer());
    let data = sse_data(&a.text);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let usage: Value = serde_json::from_str(&data[data.len() - 2]).unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert!(usage["usage"]["completion_tokens"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn before_the_first_byte_a_stream_falls_back_freely() {
    let gw = spawn_gateway().await;
    gw.mock.script("gpt-4o", vec![Behavior::server_error()]);
    gw.mock.script("gpt-4o-mini", vec![Behavior::SlowFirstToken { delay_ms: 2_000 }]);
    let a = stream(&gw, &["gpt-4o-mini", "gpt-4.1"], "gpt-4o").await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.header("x-reliablegpt-model"), Some("gpt-4.1"));
    assert_eq!(streamed_text(&a.text), full_answer());
    assert_eq!(gw.models_seen(), vec!["gpt-4o", "gpt-4o", "gpt-4o", "gpt-4o-mini", "gpt-4.1"]);
}

async fn assert_rescued(behavior: Behavior, cut_after: usize) {
    let gw = spawn_gateway().await;
    gw.mock.script("gpt-4o", vec![behavior.clone()]);
    let a = stream(&gw, &["gpt-4o-mini"], "gpt-4o").await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(streamed_text(&a.text), full_answer(), "{behavior:?}: the client must see one complete answer");
    let data = sse_data(&a.text);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let ids: Vec<Value> =
        data.iter().filter_map(|d| serde_json::from_str::<Value>(d).ok()).map(|v| v["id"].clone()).collect();
    assert!(ids.windows(2).all(|w| w[0] == w[1]), "one stream id throughout: {ids:?}");
    let seen = gw.mock.requests();
    let rescue = seen.iter().find(|r| r.model.as_deref() == Some("gpt-4o-mini")).expect("a rescue request");
    let last = rescue.body["messages"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last, json!({"role": "assistant", "content": words(cut_after)}), "prefill is the partial answer");
}

#[tokio::test]
async fn a_stream_cut_midway_is_continued_on_the_fallback() {
    assert_rescued(Behavior::StreamCut { after_tokens: 5 }, 5).await;
}

#[tokio::test]
async fn a_stalled_stream_is_continued_on_the_fallback() {
    assert_rescued(Behavior::StreamStall { after_tokens: 3 }, 3).await;
}

#[tokio::test]
async fn a_stream_of_keep_alive_comments_only_is_a_stall() {
    // Comments every 100 ms never count as progress: after 600 ms of them the stream is continued elsewhere.
    assert_rescued(Behavior::StreamKeepAlive { after_tokens: 3, every_ms: 100 }, 3).await;
}

#[tokio::test]
async fn a_client_that_leaves_a_keep_alive_stream_releases_the_upstream() {
    let gw = spawn_gateway().await;
    gw.mock.script("gpt-4o", vec![Behavior::StreamKeepAlive { after_tokens: 2, every_ms: 50 }]);
    let mut res = open_stream(&gw).await;
    assert_eq!(res.status(), 200);
    let first = res.chunk().await.unwrap().expect("a first chunk");
    assert!(!first.is_empty());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while gw.mock.keep_alive_streams() == 0 {
        assert!(std::time::Instant::now() < deadline, "the mock never reached its keep-alive phase");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    drop(res);
    // The gateway notices the client is gone even though it has nothing to forward, and closes the upstream.
    while gw.mock.keep_alive_streams() > 0 {
        assert!(std::time::Instant::now() < deadline, "the upstream stream is still held open");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// The user turns of a request's messages.
fn last_message(r: &reliablegpt::mock_upstream::SeenRequest) -> Value {
    r.body["messages"].as_array().unwrap().last().unwrap().clone()
}

#[tokio::test]
async fn a_fallback_that_refuses_prefill_finishes_the_answer_from_an_instruction() {
    let gw = spawn_gateway().await;
    gw.mock.script("gpt-4o", vec![Behavior::StreamCut { after_tokens: 4 }]);
    gw.mock.set_rejects_prefill("gpt-4o-mini");
    let token = gw.key_set(&[K1], &["gpt-4o-mini"]).await;
    let mut body = stream_body("gpt-4o");
    body["stream_options"] = json!({"include_usage": true});
    let a = gw.post("/v1/chat/completions", &token, body, &[]).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(streamed_text(&a.text), full_answer(), "the whole answer, with the repeated word removed");
    assert_eq!(sse_data(&a.text).last().map(String::as_str), Some("[DONE]"));

    let rescues: Vec<_> =
        gw.mock.requests().into_iter().filter(|r| r.model.as_deref() == Some("gpt-4o-mini")).collect();
    assert_eq!(rescues.len(), 2, "one refused prefill, then the instruction");
    assert_eq!(last_message(&rescues[0]), json!({"role": "assistant", "content": words(4)}));
    let instruction = last_message(&rescues[1]);
    assert_eq!(instruction["role"], "user");
    assert!(instruction["content"].as_str().unwrap().contains(&format!("<partial_answer>\n{}\n", words(4))));

    // Usage describes the whole answer the client got, not only the continuation.
    let data = sse_data(&a.text);
    let usage: Value = serde_json::from_str(&data[data.len() - 2]).unwrap();
    let completion = usage["usage"]["completion_tokens"].as_u64().unwrap();
    let words_total = full_answer().split(' ').count() as u64;
    assert!(completion.abs_diff(words_total) <= 3, "{completion} tokens for a {words_total}-word answer");

    // The model is now known to refuse prefill: the next rescue goes straight to the instruction.
    gw.mock.clear();
    gw.mock.script("gpt-4o", vec![Behavior::StreamCut { after_tokens: 2 }]);
    let a = gw.post("/v1/chat/completions", &token, stream_body("gpt-4o"), &[]).await;
    assert_eq!(streamed_text(&a.text), full_answer());
    let rescues: Vec<_> =
        gw.mock.requests().into_iter().filter(|r| r.model.as_deref() == Some("gpt-4o-mini")).collect();
    assert_eq!(rescues.len(), 1);
    assert_eq!(last_message(&rescues[0])["role"], "user");
}

#[tokio::test]
async fn a_model_the_catalog_knows_refuses_prefill_is_asked_with_an_instruction_at_once() {
    let gw = spawn_gateway().await;
    gw.mock.script("gpt-4o", vec![Behavior::StreamCut { after_tokens: 6 }]);
    gw.mock.set_rejects_prefill("o4-mini");
    let a = stream(&gw, &["o4-mini"], "gpt-4o").await;
    assert_eq!(streamed_text(&a.text), full_answer());
    let rescues: Vec<_> = gw.mock.requests().into_iter().filter(|r| r.model.as_deref() == Some("o4-mini")).collect();
    assert_eq!(rescues.len(), 1, "no prefill attempt for a model the catalog marks assistant_prefill = false");
    assert_eq!(last_message(&rescues[0])["role"], "user");
}

#[tokio::test]
async fn rescued_and_partial_streams_are_counted_as_such() {
    let gw = spawn_gateway().await;
    let token = gw.key_set(&[K1], &["gpt-4o-mini"]).await;
    gw.mock.script("gpt-4o", vec![Behavior::StreamCut { after_tokens: 5 }]);
    let a = gw.post("/v1/chat/completions", &token, stream_body("gpt-4o"), &[]).await;
    assert_eq!(streamed_text(&a.text), full_answer());
    gw.mock.script("gpt-4o", vec![Behavior::StreamCut { after_tokens: 5 }]);
    gw.mock.script("gpt-4o-mini", vec![Behavior::server_error(), Behavior::server_error(), Behavior::server_error()]);
    let a = gw.post("/v1/chat/completions", &token, stream_body("gpt-4o"), &[]).await;
    assert!(a.text.contains("stream_interrupted"), "{}", a.text);

    // The pump reports after the client has its last byte.
    let mut metrics = String::new();
    for _ in 0..50 {
        metrics = gw.app.client.get(gw.app.url("/metrics")).send().await.unwrap().text().await.unwrap();
        if metrics.contains("outcome=\"partial\"") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    for line in [
        r#"reliablegpt_requests_total{outcome="rescued",model="gpt-4o-mini",provider="openai"} 1"#,
        r#"reliablegpt_requests_total{outcome="partial",model="gpt-4o",provider="openai"} 1"#,
        "reliablegpt_stream_rescues_total 1",
        r#"reliablegpt_upstream_attempts_total{class="transient",model="gpt-4o",provider="openai"} 2"#,
        r#"reliablegpt_upstream_attempts_total{class="transient",model="gpt-4o-mini",provider="openai"} 3"#,
    ] {
        assert!(metrics.contains(line), "missing {line} in {metrics}");
    }
    assert!(!metrics.contains("outcome=\"success\""), "a broken stream is never a success: {metrics}");
}

#[tokio::test]
async fn with_nothing_left_to_continue_a_cut_stream_ends_with_an_error() {
    let gw = spawn_gateway().await;
    gw.mock.script("gpt-4o", vec![Behavior::StreamCut { after_tokens: 2 }]);
    let a = stream(&gw, &[], "gpt-4o").await;
    let data = sse_data(&a.text);
    assert!(!data.contains(&"[DONE]".to_owned()));
    let last: Value = serde_json::from_str(data.last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "stream_interrupted");
}

#[tokio::test]
async fn malformed_chunks_are_dropped_and_a_missing_done_is_supplied() {
    let gw = spawn_gateway().await;
    gw.mock.script("gpt-4o", vec![Behavior::MalformedChunk { at_token: 3 }]);
    gw.mock.script("gpt-4.1", vec![Behavior::MissingDone]);
    let token = gw.key_set(&[K1], &[]).await;
    let a = gw.post("/v1/chat/completions", &token, stream_body("gpt-4o"), &[]).await;
    assert_eq!(streamed_text(&a.text), full_answer());
    let data = sse_data(&a.text);
    assert!(data.iter().all(|d| d == "[DONE]" || serde_json::from_str::<Value>(d).is_ok()), "{data:?}");
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));

    let a = gw.post("/v1/chat/completions", &token, stream_body("gpt-4.1"), &[]).await;
    assert_eq!(streamed_text(&a.text), full_answer());
    assert_eq!(sse_data(&a.text).last().map(String::as_str), Some("[DONE]"));

    let metrics = gw.app.client.get(gw.app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("reliablegpt_stream_malformed_chunks_total 1"), "{metrics}");
}

#[tokio::test]
async fn graceful_answers_stream_too() {
    let gw = spawn_gateway().await;
    let token = gw.key_set_with(json!([K1]), json!({"graceful_string": "Back soon."})).await;
    gw.mock.script("gpt-4o", vec![Behavior::overloaded()]);
    let a = gw.post("/v1/chat/completions", &token, stream_body("gpt-4o"), &[]).await;
    assert_eq!(a.header("x-reliablegpt-graceful"), Some("true"));
    assert_eq!(streamed_text(&a.text), "Back soon.");
    assert_eq!(sse_data(&a.text).last().map(String::as_str), Some("[DONE]"));
}

#[tokio::test]
async fn a_legacy_completion_stream_is_continued_by_extending_the_prompt() {
    let gw = spawn_gateway().await;
    gw.mock.script("davinci-002", vec![Behavior::StreamCut { after_tokens: 4 }]);
    let token = gw.key_set(&[K1], &["gpt-3.5-turbo-instruct"]).await;
    let body = json!({"model": "davinci-002", "prompt": "Say the alphabet: ", "stream": true});
    let a = gw.post("/v1/completions", &token, body, &[]).await;
    assert_eq!(a.status, 200, "{}", a.text);
    let text: String = sse_data(&a.text)
        .iter()
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|v| v.pointer("/choices/0/text").and_then(Value::as_str).map(str::to_owned))
        .collect();
    assert_eq!(text, full_answer());
    assert_eq!(sse_data(&a.text).last().map(String::as_str), Some("[DONE]"));
    let rescue = gw.mock.requests().into_iter().find(|r| r.model.as_deref() == Some("gpt-3.5-turbo-instruct")).unwrap();
    assert_eq!(rescue.body["prompt"], format!("Say the alphabet: {}", words(4)));
}

/// Events that reach the gateway together leave it together: one write for what one read brought, not one per event.
/// The client counts the body's HTTP chunks (a chunk is never merged with the next, so the count only errs upward).
#[tokio::test]
async fn events_that_arrive_together_leave_in_one_write() {
    let gw = spawn_gateway().await;
    gw.mock.script("gpt-4o", vec![Behavior::StreamBurst]);
    let res = open_stream(&gw).await;
    assert_eq!(res.status(), 200);
    let mut body = futures_util::StreamExt::boxed(res.bytes_stream());
    let (mut chunks, mut text) = (0, Vec::new());
    while let Some(chunk) = futures_util::StreamExt::next(&mut body).await {
        chunks += 1;
        text.extend_from_slice(&chunk.unwrap());
    }
    let text = String::from_utf8(text).unwrap();
    assert_eq!(streamed_text(&text), full_answer());
    let events = sse_data(&text).len();
    assert!(events > 20, "{events} events");
    // The first event goes out on its own (it decides that the stream has started); the rest in one write.
    assert!(chunks <= 3, "{events} events arrived in {chunks} chunks");
}
