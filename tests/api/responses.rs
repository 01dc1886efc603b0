//! The Responses API (`/v1/responses`): the same engine as chat (fallbacks, rotation, retries, headers, error shape),
//! typed SSE events that end with an `error` event — never `response.completed` — when cut after the first byte, and
//! stored responses pinned to the provider key that created them.

use std::sync::Arc;

use reliablegpt::engine::events::RequestOutcome;
use reliablegpt::engine::{Endpoint, GatewayRequest, Reply};
use reliablegpt::mock_upstream::{Behavior, full_answer};
use serde_json::{Value, json};

use crate::events::{Recorder, caching_set, harness_with, key_set};
use crate::helpers::{Answer, GatewayTest, error_of, spawn_gateway};

const K1: &str = "sk-test-key-one-000000000000000000000001";
const K2: &str = "sk-test-key-two-000000000000000000000002";

fn body(model: &str) -> Value {
    json!({"model": model, "input": "Say the alphabet.", "instructions": "Be terse."})
}

fn stream_body(model: &str) -> Value {
    let mut b = body(model);
    b["stream"] = json!(true);
    b
}

/// The `output_text` of a response object.
fn output_text(response: &Value) -> String {
    response["output"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|item| item["type"] == "message")
        .flat_map(|item| item["content"].as_array().cloned().unwrap_or_default())
        .filter(|part| part["type"] == "output_text")
        .filter_map(|part| part["text"].as_str().map(str::to_owned))
        .collect()
}

/// A Responses stream's events as (event name, data).
fn events(text: &str) -> Vec<(String, Value)> {
    text.split("\n\n")
        .filter_map(|event| {
            let name = event.lines().find_map(|l| l.strip_prefix("event: "))?.to_owned();
            let data: Vec<&str> = event.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
            Some((name, serde_json::from_str(&data.join("\n")).ok()?))
        })
        .collect()
}

fn deltas(events: &[(String, Value)]) -> String {
    events
        .iter()
        .filter(|(name, _)| name == "response.output_text.delta")
        .filter_map(|(_, data)| data["delta"].as_str())
        .collect()
}

fn words(n: usize) -> String {
    full_answer().split(' ').take(n).collect::<Vec<_>>().join(" ")
}

async fn create(gw: &GatewayTest, token: &str, body: Value) -> Answer {
    gw.post("/v1/responses", token, body, &[]).await
}

#[tokio::test]
async fn a_json_response_passes_through_with_the_gateway_headers_and_the_clients_bytes() {
    let gw = spawn_gateway().await;
    let token = gw.key_set(&[K1], &[]).await;
    // Odd spacing and key order: forwarded byte for byte while the model is the requested one.
    let raw = r#"{ "input":"Say the alphabet.",   "model":"gpt-4o", "metadata":{"z":"1","a":"2"} }"#;
    let res = gw
        .app
        .client
        .post(gw.app.url("/v1/responses"))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body(raw)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let header = |name: &str| res.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    assert_eq!(header("x-reliablegpt-model").as_deref(), Some("gpt-4o"));
    assert_eq!(header("x-reliablegpt-provider").as_deref(), Some("openai"));
    assert_eq!(header("x-reliablegpt-attempts").as_deref(), Some("1"));
    assert_eq!(header("x-reliablegpt-cache").as_deref(), Some("miss"));
    assert_eq!(header("x-reliablegpt-fallback-reason"), None);
    let response: Value = res.json().await.unwrap();
    assert_eq!(response["object"], "response");
    assert_eq!(response["status"], "completed");
    assert_eq!(output_text(&response), full_answer());
    assert!(response["usage"]["output_tokens"].as_u64().unwrap() > 0);
    let seen = gw.mock.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/v1/responses");
    assert_eq!(seen[0].body, serde_json::from_str::<Value>(raw).unwrap());
}

#[tokio::test]
async fn responses_fall_back_on_5xx_and_429_with_the_model_rewritten_and_the_rest_kept() {
    let gw = spawn_gateway().await;
    gw.mock.script("gpt-4o", vec![Behavior::server_error()]);
    gw.mock.script("gpt-4o-mini", vec![Behavior::rate_limited(None)]);
    let token = gw.key_set(&[K1], &["gpt-4o-mini", "gpt-4.1"]).await;
    let a = create(&gw, &token, body("gpt-4o")).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.header("x-reliablegpt-model"), Some("gpt-4.1"));
    assert_eq!(a.header("x-reliablegpt-fallback-reason"), Some("transient"));
    assert_eq!(output_text(&a.body), full_answer());
    let seen = gw.mock.requests();
    let models: Vec<&str> = seen.iter().filter_map(|r| r.model.as_deref()).collect();
    assert_eq!(models, vec!["gpt-4o", "gpt-4o", "gpt-4o", "gpt-4o-mini", "gpt-4.1"], "5xx retries; 429 moves on");
    let last = &seen.last().unwrap().body;
    assert_eq!((last["input"].as_str(), last["instructions"].as_str()), (Some("Say the alphabet."), Some("Be terse.")));
    assert!(seen.iter().all(|r| r.path == "/v1/responses"));
}

#[tokio::test]
async fn when_every_target_fails_the_error_is_in_the_openai_shape_and_bad_input_is_a_400() {
    let gw = spawn_gateway().await;
    gw.mock.script("gpt-4o", vec![Behavior::server_error()]);
    let token = gw.key_set(&[K1], &[]).await;
    let res = gw.app.client.post(gw.app.url("/v1/responses")).bearer_auth(&token).json(&body("gpt-4o")).send().await;
    let error = error_of(res.unwrap(), 503).await;
    assert_eq!(error["code"], "upstream_unavailable");

    for (bad, param) in [
        (json!({"input": "hi"}), "model"),
        (json!({"model": "gpt-4o", "input": "hi", "stream": "yes"}), "stream"),
        (json!({"model": "gpt-4o", "input": "hi", "previous_response_id": 7}), "previous_response_id"),
        (json!({"model": "gpt-4o", "input": "hi", "previous_response_id": "../../keys"}), "previous_response_id"),
    ] {
        let res = gw.app.client.post(gw.app.url("/v1/responses")).bearer_auth(&token).json(&bad).send().await;
        let error = error_of(res.unwrap(), 400).await;
        assert_eq!(error["param"], param, "{bad}");
    }
    let res = gw
        .app
        .client
        .post(gw.app.url("/v1/responses"))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await;
    error_of(res.unwrap(), 400).await;
    // The upstream's own refusal (no input) comes back unchanged, without retries or fallbacks.
    gw.mock.clear();
    let a = create(&gw, &token, json!({"model": "gpt-4o"})).await;
    assert_eq!(a.status, 400, "{}", a.text);
    assert_eq!(a.body["error"]["param"], "input");
    assert_eq!(gw.mock.requests().len(), 1);
    // No token, no answer.
    let res = gw.app.client.post(gw.app.url("/v1/responses")).json(&body("gpt-4o")).send().await;
    error_of(res.unwrap(), 401).await;
}

#[tokio::test]
async fn a_stream_passes_its_typed_events_through_and_falls_back_before_the_first_byte() {
    let gw = spawn_gateway().await;
    gw.mock.script("gpt-4o", vec![Behavior::server_error()]);
    let token = gw.key_set(&[K1], &["gpt-4o-mini"]).await;
    let a = create(&gw, &token, stream_body("gpt-4o")).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.header("content-type"), Some("text/event-stream"));
    assert_eq!(a.header("x-reliablegpt-model"), Some("gpt-4o-mini"));
    let events = events(&a.text);
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names[..4],
        ["response.created", "response.in_progress", "response.output_item.added", "response.content_part.added"]
    );
    assert_eq!(names.last(), Some(&"response.completed"));
    assert_eq!(deltas(&events), full_answer());
    let sequence: Vec<u64> = events.iter().filter_map(|(_, d)| d["sequence_number"].as_u64()).collect();
    assert_eq!(sequence, (0..events.len() as u64).collect::<Vec<_>>(), "events arrive once and in order");
    let completed = &events.last().unwrap().1["response"];
    assert_eq!(output_text(completed), full_answer());
    assert!(completed["usage"]["input_tokens"].as_u64().unwrap() > 0);
}

/// As for chat: events that reach the gateway together leave it in one write (the client counts HTTP chunks, which
/// are never merged, so the count only errs upward).
#[tokio::test]
async fn typed_events_that_arrive_together_leave_in_one_write() {
    let gw = spawn_gateway().await;
    gw.mock.script("gpt-4o", vec![Behavior::StreamBurst]);
    let token = gw.key_set(&[K1], &[]).await;
    let request = gw.app.client.post(gw.app.url("/v1/responses")).bearer_auth(&token);
    let res = request.json(&stream_body("gpt-4o")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let mut body = futures_util::StreamExt::boxed(res.bytes_stream());
    let (mut chunks, mut text) = (0, Vec::new());
    while let Some(chunk) = futures_util::StreamExt::next(&mut body).await {
        chunks += 1;
        text.extend_from_slice(&chunk.unwrap());
    }
    let events = events(&String::from_utf8(text).unwrap());
    assert_eq!(deltas(&events), full_answer());
    assert_eq!(events.last().map(|(n, _)| n.as_str()), Some("response.completed"));
    assert!(events.len() > 20, "{} events", events.len());
    assert!(chunks <= 3, "{} events arrived in {chunks} chunks", events.len());
}

async fn assert_cut_short(behavior: Behavior, words_sent: usize, why: &str) {
    let gw = spawn_gateway().await;
    gw.mock.script("gpt-4o", vec![behavior]);
    let token = gw.key_set(&[K1], &["gpt-4o-mini"]).await;
    let a = create(&gw, &token, stream_body("gpt-4o")).await;
    assert_eq!(a.status, 200, "{}", a.text);
    let events = events(&a.text);
    assert!(events.iter().all(|(name, _)| name != "response.completed"), "a truncated answer never looks complete");
    assert_eq!(deltas(&events), words(words_sent));
    let (name, error) = events.last().unwrap();
    assert_eq!(name, "error", "{}", a.text);
    assert_eq!((error["type"].as_str(), error["code"].as_str()), (Some("error"), Some("stream_interrupted")));
    assert!(error["message"].as_str().unwrap().contains(why), "{error}");
    let before = events[events.len() - 2].1["sequence_number"].as_u64().unwrap();
    assert_eq!(error["sequence_number"].as_u64(), Some(before + 1));
    // Nothing is fabricated from another model after bytes reached the client.
    assert_eq!(gw.models_seen(), vec!["gpt-4o"]);
}

#[tokio::test]
async fn a_stream_cut_midway_ends_with_an_error_event_and_no_completed() {
    assert_cut_short(Behavior::StreamCut { after_tokens: 5 }, 5, "broke").await;
}

#[tokio::test]
async fn a_stalled_stream_ends_with_an_error_event_and_no_completed() {
    assert_cut_short(Behavior::StreamStall { after_tokens: 3 }, 3, "silent").await;
}

/// Key ids of the set, in the order they were given.
async fn key_ids(gw: &GatewayTest, token: &str) -> Vec<String> {
    let listed: Value = gw.app.get_keys(token).await.json().await.unwrap();
    listed["keys"].as_array().unwrap().iter().map(|k| k["id"].as_str().unwrap().to_owned()).collect()
}

/// A key set [K1, K2] and a response created with K2 (K2 first for that request, then K1 first again).
async fn response_created_by_k2(gw: &GatewayTest, stream: bool) -> (String, String, Vec<String>) {
    gw.mock.clear_requests();
    let token = gw.key_set(&[K1, K2], &["gpt-4o-mini"]).await;
    let ids = key_ids(gw, &token).await;
    let reorder = |order: Vec<&String>| json!({"order": order});
    assert_eq!(gw.app.patch_keys(&token, &reorder(vec![&ids[1], &ids[0]])).await.status(), 200);
    let a = create(gw, &token, if stream { stream_body("gpt-4o") } else { body("gpt-4o") }).await;
    assert_eq!(a.status, 200, "{}", a.text);
    let id = if stream {
        events(&a.text)[0].1["response"]["id"].as_str().unwrap().to_owned()
    } else {
        a.body["id"].as_str().unwrap().to_owned()
    };
    assert_eq!(gw.keys_seen(), vec![K2]);
    assert_eq!(gw.app.patch_keys(&token, &reorder(vec![&ids[0], &ids[1]])).await.status(), 200);
    gw.mock.clear_requests();
    (token, id, ids)
}

#[tokio::test]
async fn a_follow_up_goes_to_the_key_that_created_the_response_even_when_another_comes_first() {
    let gw = spawn_gateway().await;
    for stream in [false, true] {
        let (token, id, _) = response_created_by_k2(&gw, stream).await;
        let follow = json!({"model": "gpt-4o", "input": "And backwards?", "previous_response_id": id});
        let a = create(&gw, &token, follow.clone()).await;
        assert_eq!(a.status, 200, "{}", a.text);
        assert_eq!(gw.keys_seen(), vec![K2], "stream: {stream}");
        // A new key set without that response: the other key is first and would not know it.
        let a = create(&gw, &token, json!({"model": "gpt-4o", "input": "x"})).await;
        assert_eq!(a.status, 200);
        assert_eq!(gw.keys_seen().last().map(String::as_str), Some(K1), "other requests still use the key order");
    }
}

#[tokio::test]
async fn a_pinned_follow_up_falls_back_to_other_models_on_the_same_key_only() {
    let gw = spawn_gateway().await;
    let (token, id, _) = response_created_by_k2(&gw, false).await;
    gw.mock.script("gpt-4o", vec![Behavior::server_error()]);
    let follow = json!({"model": "gpt-4o", "input": "More.", "previous_response_id": id});
    let a = create(&gw, &token, follow).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.header("x-reliablegpt-model"), Some("gpt-4o-mini"));
    assert_eq!(gw.models_seen(), vec!["gpt-4o", "gpt-4o", "gpt-4o", "gpt-4o-mini"]);
    assert!(gw.keys_seen().iter().all(|k| k == K2), "never another account: {:?}", gw.keys_seen());

    // When the creating key itself is refused, the answer says so and no other key is tried.
    gw.mock.script("gpt-4o", vec![]);
    gw.mock.set_invalid_key(K2);
    gw.mock.clear_requests();
    let follow = json!({"model": "gpt-4o", "input": "More.", "previous_response_id": id});
    let res = gw.app.client.post(gw.app.url("/v1/responses")).bearer_auth(&token).json(&follow).send().await;
    let error = error_of(res.unwrap(), 401).await;
    assert!(error["message"].as_str().unwrap().contains("credential"), "{error}");
    assert!(gw.keys_seen().iter().all(|k| k == K2), "{:?}", gw.keys_seen());
}

#[tokio::test]
async fn a_removed_creating_key_or_an_unknown_id_is_a_clear_error_and_nothing_is_sent() {
    let gw = spawn_gateway().await;
    let (token, id, ids) = response_created_by_k2(&gw, false).await;
    let unknown = json!({"model": "gpt-4o", "input": "x", "previous_response_id": "resp_never_seen"});
    let res = gw.app.client.post(gw.app.url("/v1/responses")).bearer_auth(&token).json(&unknown).send().await;
    let error = error_of(res.unwrap(), 404).await;
    assert_eq!(
        (error["code"].as_str(), error["param"].as_str()),
        (Some("response_not_found"), Some("previous_response_id"))
    );

    assert_eq!(gw.app.patch_keys(&token, &json!({"remove_keys": [ids[1]]})).await.status(), 200);
    let follow = json!({"model": "gpt-4o", "input": "x", "previous_response_id": id});
    let res = gw.app.client.post(gw.app.url("/v1/responses")).bearer_auth(&token).json(&follow).send().await;
    let error = error_of(res.unwrap(), 409).await;
    assert_eq!(error["code"], "pinned_key_removed");
    assert!(error["message"].as_str().unwrap().contains("removed"), "{error}");
    let res = gw.app.client.get(gw.app.url(&format!("/v1/responses/{id}"))).bearer_auth(&token).send().await;
    assert_eq!(error_of(res.unwrap(), 409).await["code"], "pinned_key_removed");
    assert!(gw.mock.requests().is_empty(), "no other account was asked");

    // Revoking the key set deletes its records.
    assert_eq!(gw.app.count("vault_response_keys").await, 1);
    assert_eq!(gw.app.delete_keys(&token).await.status(), 204);
    assert_eq!(gw.app.count("vault_response_keys").await, 0);
}

#[tokio::test]
async fn stored_responses_are_read_listed_cancelled_and_deleted_with_their_key() {
    let gw = spawn_gateway().await;
    let (token, id, _) = response_created_by_k2(&gw, false).await;
    let get = |path: String| gw.app.client.get(gw.app.url(&path)).bearer_auth(&token).send();
    let res = get(format!("/v1/responses/{id}")).await.unwrap();
    assert_eq!(res.status(), 200);
    let stored: Value = res.json().await.unwrap();
    assert_eq!((stored["id"].as_str(), output_text(&stored)), (Some(id.as_str()), full_answer()));
    let res = get(format!("/v1/responses/{id}/input_items?limit=5&order=desc")).await.unwrap();
    assert_eq!(res.status(), 200);
    let items: Value = res.json().await.unwrap();
    assert_eq!(items["data"][0]["content"][0]["text"], "Say the alphabet.");
    let cancel = gw.app.client.post(gw.app.url(&format!("/v1/responses/{id}/cancel"))).bearer_auth(&token).send();
    let res = cancel.await.unwrap();
    assert_eq!(res.status(), 400, "a finished response cannot be cancelled: the upstream's answer, unchanged");
    let seen = gw.mock.requests();
    assert_eq!(seen.iter().map(|r| r.api_key.clone().unwrap()).collect::<Vec<_>>(), vec![K2; 3]);
    assert_eq!(seen[1].path, format!("/v1/responses/{id}/input_items?limit=5&order=desc"));

    let res = gw.app.client.delete(gw.app.url(&format!("/v1/responses/{id}"))).bearer_auth(&token).send().await;
    let deleted: Value = res.unwrap().json().await.unwrap();
    assert_eq!(deleted["deleted"], true);
    let res = get(format!("/v1/responses/{id}")).await.unwrap();
    assert_eq!(error_of(res, 404).await["code"], "response_not_found", "forgotten once deleted");
    let res = get("/v1/responses/resp_unknown".to_owned()).await.unwrap();
    assert_eq!(error_of(res, 404).await["code"], "response_not_found");
    let res = get(format!("/v1/responses/{id}?stream=true")).await.unwrap();
    error_of(res, 400).await;
}

#[tokio::test]
async fn responses_routes_answer_405_with_allow() {
    let gw = spawn_gateway().await;
    for (method, path, allow) in [
        (reqwest::Method::GET, "/v1/responses", "POST"),
        (reqwest::Method::PUT, "/v1/responses/resp_1", "GET, HEAD, DELETE"),
        (reqwest::Method::GET, "/v1/responses/resp_1/cancel", "POST"),
        (reqwest::Method::POST, "/v1/responses/resp_1/input_items", "GET, HEAD"),
    ] {
        let res = gw.app.client.request(method.clone(), gw.app.url(path)).send().await.unwrap();
        assert_eq!(res.status(), 405, "{method} {path}");
        assert_eq!(res.headers()["allow"], allow);
        error_of(res, 405).await;
    }
}

#[tokio::test]
async fn the_graceful_string_answers_as_a_response_object_and_stream() {
    let gw = spawn_gateway().await;
    gw.mock.script("gpt-4o", vec![Behavior::server_error()]);
    let token = gw.key_set_with(json!([K1]), json!({"graceful_string": "Back soon."})).await;
    let a = create(&gw, &token, body("gpt-4o")).await;
    assert_eq!((a.status, a.header("x-reliablegpt-graceful")), (200, Some("true")));
    assert_eq!((a.body["object"].as_str(), output_text(&a.body)), (Some("response"), "Back soon.".to_owned()));
    let a = create(&gw, &token, stream_body("gpt-4o")).await;
    let events = events(&a.text);
    assert_eq!(deltas(&events), "Back soon.");
    assert_eq!(events.last().map(|(n, _)| n.as_str()), Some("response.completed"));
    // No provider stores a gateway-made answer: continuing it is refused, saying so.
    let id = events[0].1["response"]["id"].as_str().unwrap();
    let follow = json!({"model": "gpt-4o", "input": "x", "previous_response_id": id});
    let res = gw.app.client.post(gw.app.url("/v1/responses")).bearer_auth(&token).json(&follow).send().await;
    let error = error_of(res.unwrap(), 404).await;
    assert!(error["message"].as_str().unwrap().contains("gateway itself"), "{error}");
}

#[tokio::test]
async fn azure_is_not_used_for_responses_and_an_azure_only_key_set_is_told_so() {
    let gw = spawn_gateway().await;
    let azure = json!({"provider": "azure", "key": "0123456789abcdef0123456789abcdef",
                       "endpoint": gw.mock.azure_endpoint(), "api_version": "2024-10-21",
                       "deployments": {"gpt-4o": "prod-gpt4o"}});
    let both = gw.key_set_with(json!([azure, K1]), json!({})).await;
    let a = create(&gw, &both, body("gpt-4o")).await;
    assert_eq!((a.status, a.header("x-reliablegpt-provider")), (200, Some("openai")), "{}", a.text);
    assert_eq!(gw.mock.requests().iter().map(|r| r.path.as_str()).collect::<Vec<_>>(), vec!["/v1/responses"]);

    let only_azure = gw.key_set_with(json!([azure]), json!({})).await;
    let res = gw.app.client.post(gw.app.url("/v1/responses")).bearer_auth(&only_azure).json(&body("gpt-4o")).send();
    let error = error_of(res.await.unwrap(), 400).await;
    assert!(error["message"].as_str().unwrap().contains("Azure"), "{error}");
    assert_eq!(gw.mock.requests().len(), 1, "nothing was sent");
}

#[tokio::test]
async fn accounting_reads_responses_usage_and_write_through_gets_the_output_text() {
    let recorder = Arc::new(Recorder::default());
    let mut h = harness_with(|_| {}, Some(recorder.clone())).await;
    let request = |stream: bool| {
        let mut b = body("gpt-4o");
        b["stream"] = json!(stream);
        GatewayRequest::new(Endpoint::Responses, b)
    };
    let set = caching_set(json!({}));
    assert!(matches!(h.engine.serve(set.clone(), request(false)).await, Reply::Upstream { status: 200, .. }));
    let Reply::Stream { mut rest, done, .. } = h.engine.serve(set, request(true)).await else { panic!("a stream") };
    while rest.recv().await.is_some() {}
    let end = done.await.unwrap();
    assert_eq!((end.outcome, end.text.as_str()), (RequestOutcome::Success, full_answer().as_str()));
    let words = full_answer().split(' ').count() as u64;
    assert_eq!(end.usage.map(|u| u.completion_tokens), Some(words));

    let (attempts, outcomes) = h.drain().await;
    assert_eq!(attempts[0].tokens.map(|t| t.completion_tokens), Some(words), "usage.output_tokens of the JSON body");
    assert!(attempts[0].tokens.is_some_and(|t| t.prompt_tokens > 0), "usage.input_tokens");
    assert_eq!(outcomes.iter().map(|o| o.billed.completion_tokens).collect::<Vec<_>>(), vec![words, words]);
    let completed = recorder.completed.lock().unwrap().clone();
    let texts: Vec<&str> = completed.iter().map(|c| c.text.as_str()).collect();
    assert_eq!(texts, vec![full_answer().as_str(), full_answer().as_str()]);
    assert!(completed.iter().all(|c| c.endpoint == Endpoint::Responses));

    // A cut stream is partial and never handed over.
    h.mock.script("gpt-4o", vec![Behavior::StreamCut { after_tokens: 2 }]);
    let Reply::Stream { mut rest, done, .. } = h.engine.serve(key_set(&[]), request(true)).await else {
        panic!("a stream")
    };
    while rest.recv().await.is_some() {}
    assert_eq!(done.await.unwrap().outcome, RequestOutcome::Partial);
    assert_eq!(recorder.completed.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn before_output_begins_a_silent_stream_may_think_for_the_request_budget_then_the_idle_timeout_applies() {
    let gw = spawn_gateway().await;
    let token = gw.key_set(&[K1], &[]).await;
    let budget = [("x-reliablegpt-timeout-ms", "1800")];
    // Silent right after response.created … content_part.added (a reasoning model thinking): the idle timeout (600 ms)
    // does not cut it; the request budget does.
    gw.mock.script("gpt-4o", vec![Behavior::StreamStall { after_tokens: 0 }]);
    let started = std::time::Instant::now();
    let a = gw.post("/v1/responses", &token, stream_body("gpt-4o"), &budget).await;
    let thinking = started.elapsed();
    assert_eq!(events(&a.text).last().map(|(n, _)| n.clone()), Some("error".to_owned()), "{}", a.text);
    assert!(
        thinking >= std::time::Duration::from_millis(1500),
        "waited the budget, not the idle timeout: {thinking:?}"
    );
    // Once output has begun, a gap longer than the idle timeout is a stall.
    gw.mock.script("gpt-4o", vec![Behavior::StreamStall { after_tokens: 2 }]);
    let started = std::time::Instant::now();
    let a = gw.post("/v1/responses", &token, stream_body("gpt-4o"), &budget).await;
    let stalled = started.elapsed();
    assert_eq!(deltas(&events(&a.text)), words(2));
    assert!(stalled < std::time::Duration::from_millis(1400), "the idle timeout cut it: {stalled:?}");
}

#[tokio::test]
async fn records_older_than_the_providers_retention_are_pruned() {
    use reliablegpt::config::{MasterKeyring, env};
    let gw = spawn_gateway().await;
    let (token, id, _) = response_created_by_k2(&gw, false).await;
    let (_, fresh, _) = response_created_by_k2(&gw, false).await;
    sqlx::query("UPDATE vault_response_keys SET created_at = now() - interval '31 days' WHERE response_id = $1")
        .bind(&id)
        .execute(&gw.app.pool)
        .await
        .unwrap();
    let vault = reliablegpt::vault::Vault::new(
        gw.app.pool.clone(),
        Arc::new(MasterKeyring::parse(env::MASTER_KEY, &crate::helpers::random_secret()).unwrap()),
        &MasterKeyring::parse(env::TOKEN_PEPPER, &crate::helpers::random_secret()).unwrap(),
    );
    let kept = reliablegpt::engine::responses::PINS_KEPT;
    assert_eq!(vault.prune_response_keys(kept).await.unwrap(), 1);
    let ids: Vec<String> =
        sqlx::query_scalar("SELECT response_id FROM vault_response_keys").fetch_all(&gw.app.pool).await.unwrap();
    assert_eq!(ids, vec![fresh]);
    let follow = json!({"model": "gpt-4o", "input": "x", "previous_response_id": id});
    let res = gw.app.client.post(gw.app.url("/v1/responses")).bearer_auth(&token).json(&follow).send().await;
    assert_eq!(error_of(res.unwrap(), 404).await["code"], "response_not_found");
}

#[tokio::test]
async fn hedging_races_the_next_model_and_a_pinned_hedge_stays_on_the_creating_key() {
    let gw = spawn_gateway().await;
    let (token, id, _) = response_created_by_k2(&gw, false).await;
    gw.mock.script("gpt-4o", vec![Behavior::ok_after(3_000)]);
    let hedge = [("x-reliablegpt-hedge-ms", "100")];
    let started = std::time::Instant::now();
    let a = gw.post("/v1/responses", &token, body("gpt-4o"), &hedge).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert!(started.elapsed() < std::time::Duration::from_millis(1_500), "{:?}", started.elapsed());
    assert_eq!((a.header("x-reliablegpt-model"), a.header("x-reliablegpt-attempts")), (Some("gpt-4o-mini"), Some("2")));
    assert_eq!(gw.keys_seen(), vec![K1, K1], "unpinned: the set's first key");

    gw.mock.clear_requests();
    let follow = json!({"model": "gpt-4o", "input": "More.", "previous_response_id": id});
    let a = gw.post("/v1/responses", &token, follow, &hedge).await;
    assert_eq!((a.status, a.header("x-reliablegpt-model")), (200, Some("gpt-4o-mini")), "{}", a.text);
    assert_eq!(gw.keys_seen(), vec![K2, K2], "the hedge used the creating key too");
}
