#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The fault-injecting mock upstream, over real HTTP.

use std::time::{Duration, Instant};

use reliablegpt::mock_upstream::{ANSWER_WORDS, Behavior, MockUpstream, full_answer};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[path = "mock_upstream/dialects.rs"]
mod dialects;

const KEY: &str = "sk-test-0000000000000000000000000000abcd";

async fn start() -> MockUpstream {
    MockUpstream::start("127.0.0.1:0".parse().unwrap()).await.unwrap()
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap()
}

fn user(content: &str) -> Value {
    json!([{"role": "user", "content": content}])
}

/// The user turn the gateway sends to continue a cut-off answer on a model that refuses prefill.
fn instruction(partial: &str) -> String {
    format!(
        "Your previous answer was cut off. This is exactly what you had written so far:\n\n<partial_answer>\n{partial}\n\
         </partial_answer>\n\nContinue from exactly where it stops. Do not repeat any of it and add no preamble: reply \
         with only the missing rest."
    )
}

/// A conversation whose answer was cut after `partial`, continued by instruction.
fn continue_by_instruction(partial: &str) -> Value {
    json!([
        {"role": "user", "content": "Say the NATO alphabet."},
        {"role": "assistant", "content": partial},
        {"role": "user", "content": instruction(partial)}
    ])
}

fn with_prefill(partial: &str) -> Value {
    json!([{"role": "user", "content": "Say the NATO alphabet."}, {"role": "assistant", "content": partial}])
}

fn content(body: &Value) -> &str {
    body["choices"][0]["message"]["content"].as_str().unwrap()
}

async fn post(mock: &MockUpstream, path: &str, body: Value) -> reqwest::Response {
    client().post(format!("{}{path}", mock.base_url())).bearer_auth(KEY).json(&body).send().await.unwrap()
}

async fn chat(mock: &MockUpstream, body: Value) -> reqwest::Response {
    post(mock, "/chat/completions", body).await
}

/// The `data:` payloads of an SSE body.
fn events(body: &str) -> Vec<String> {
    assert!(body.ends_with("\n\n"), "every event ends with a blank line: {body:?}");
    body.split_terminator("\n\n").map(|e| e.strip_prefix("data: ").expect("a data line").to_owned()).collect()
}

/// The concatenated `delta.content` (or `text`) of the JSON events.
fn streamed_text(events: &[String]) -> String {
    events
        .iter()
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .filter_map(|v| {
            let choice = v["choices"].get(0)?.clone();
            choice["delta"]["content"].as_str().or(choice["text"].as_str()).map(str::to_owned)
        })
        .collect()
}

async fn error_of(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    (status, response.json::<Value>().await.unwrap())
}

#[tokio::test]
async fn healthy_chat_has_openai_shape_and_usage() {
    let mock = start().await;
    let response = chat(&mock, json!({"model": "gpt-4o", "messages": user("Hello there!")})).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    let body: Value = response.json().await.unwrap();
    assert!(body["id"].as_str().unwrap().starts_with("chatcmpl-mock-"));
    assert_eq!(body["object"], "chat.completion");
    assert!(body["created"].as_u64().unwrap() > 1_700_000_000);
    assert_eq!(body["model"], "gpt-4o");
    assert_eq!(body["system_fingerprint"], "fp_mock");
    assert_eq!(
        body["choices"],
        json!([{"index": 0, "message": {"role": "assistant", "content": full_answer(), "refusal": null},
                "logprobs": null, "finish_reason": "stop"}])
    );
    // "Hello there!" is 12 characters: 3 tokens; the answer is 24 words.
    assert_eq!(body["usage"], json!({"prompt_tokens": 3, "completion_tokens": 24, "total_tokens": 27}));
    assert_eq!(full_answer(), format!("{}.", ANSWER_WORDS.join(" ")));
}

#[tokio::test]
async fn streaming_concatenates_to_the_full_answer_and_ends_with_done() {
    let mock = start().await;
    let response = chat(&mock, json!({"model": "gpt-4o", "stream": true, "messages": user("hi")})).await;
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    assert_eq!(response.headers()["transfer-encoding"], "chunked");
    let events = events(&response.text().await.unwrap());
    assert_eq!(events.last().unwrap(), "[DONE]");
    assert_eq!(events.len(), 1 + 24 + 1 + 1);
    let first: Value = serde_json::from_str(&events[0]).unwrap();
    assert_eq!(first["object"], "chat.completion.chunk");
    assert_eq!(first["model"], "gpt-4o");
    assert_eq!(first["system_fingerprint"], "fp_mock");
    assert_eq!(
        first["choices"],
        json!([{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}])
    );
    let second: Value = serde_json::from_str(&events[1]).unwrap();
    assert_eq!(second["choices"][0]["delta"], json!({"content": "alpha"}));
    assert_eq!(second["id"], first["id"]);
    let third: Value = serde_json::from_str(&events[2]).unwrap();
    assert_eq!(third["choices"][0]["delta"]["content"], " bravo");
    let finish: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(finish["choices"], json!([{"index": 0, "delta": {}, "logprobs": null, "finish_reason": "stop"}]));
    assert!(finish.get("usage").is_none());
    assert_eq!(streamed_text(&events), full_answer());
}

#[tokio::test]
async fn include_usage_adds_a_usage_chunk() {
    let mock = start().await;
    let body = json!({"model": "gpt-4o", "stream": true, "stream_options": {"include_usage": true},
                      "messages": user("12345678")});
    let events = events(&chat(&mock, body).await.text().await.unwrap());
    assert_eq!(events.last().unwrap(), "[DONE]");
    let usage: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"], json!({"prompt_tokens": 2, "completion_tokens": 24, "total_tokens": 26}));
    let finish: Value = serde_json::from_str(&events[events.len() - 3]).unwrap();
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");
    assert_eq!(finish["usage"], Value::Null, "other chunks carry usage: null, as OpenAI's do");
    assert_eq!(streamed_text(&events), full_answer());
}

#[tokio::test]
async fn prefill_is_continued() {
    let mock = start().await;
    for prefill in ["alpha bravo charlie", "alpha bravo charlie ", "alpha bra"] {
        let messages = json!([{"role": "user", "content": "go"}, {"role": "assistant", "content": prefill}]);
        let body: Value = chat(&mock, json!({"model": "gpt-4o", "messages": messages})).await.json().await.unwrap();
        let answer = body["choices"][0]["message"]["content"].as_str().unwrap();
        assert_eq!(format!("{prefill}{answer}"), full_answer(), "prefill {prefill:?}");

        let streamed = chat(&mock, json!({"model": "gpt-4o", "stream": true, "messages": messages})).await;
        let text = streamed_text(&events(&streamed.text().await.unwrap()));
        assert_eq!(text, answer);
    }
    // Not a prefix of the answer: the whole answer.
    let messages = json!([{"role": "user", "content": "go"}, {"role": "assistant", "content": "zulu"}]);
    let body: Value = chat(&mock, json!({"model": "gpt-4o", "messages": messages})).await.json().await.unwrap();
    assert_eq!(body["choices"][0]["message"]["content"], full_answer());
}

#[tokio::test]
async fn an_instruction_is_continued_with_the_last_word_repeated() {
    let mock = start().await;
    let messages = continue_by_instruction("alpha bravo charlie delta");
    let body: Value = chat(&mock, json!({"model": "gpt-4o", "messages": messages})).await.json().await.unwrap();
    let answer = content(&body);
    assert_eq!(answer, full_answer().strip_prefix("alpha bravo charlie ").unwrap(), "\"delta\" is repeated");
    assert!(answer.starts_with("delta echo "));
    assert_eq!(format!("alpha bravo charlie delta{}", answer.strip_prefix("delta").unwrap()), full_answer());
    assert_eq!(body["usage"]["completion_tokens"], 21, "delta to xray");

    let request = json!({"model": "gpt-4o", "stream": true, "stream_options": {"include_usage": true},
                         "messages": messages});
    let events = events(&chat(&mock, request).await.text().await.unwrap());
    assert_eq!(events.last().unwrap(), "[DONE]");
    let first_word: Value = serde_json::from_str(&events[1]).unwrap();
    assert_eq!(first_word["choices"][0]["delta"]["content"], "delta");
    assert_eq!(streamed_text(&events), answer);
    let usage: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(usage["usage"]["completion_tokens"], 21);
    assert_eq!(usage["usage"]["total_tokens"], usage["usage"]["prompt_tokens"].as_u64().unwrap() + 21);

    // Cut inside a word: the model writes that word whole.
    let messages = continue_by_instruction("alpha bravo char");
    let body: Value = chat(&mock, json!({"model": "gpt-4o", "messages": messages})).await.json().await.unwrap();
    assert_eq!(content(&body), full_answer().strip_prefix("alpha bravo ").unwrap());
    // Text parts count as well.
    let parts = json!([{"role": "user", "content": [{"type": "text", "text": instruction("alpha bravo charlie")}]}]);
    let body: Value = chat(&mock, json!({"model": "gpt-4o", "messages": parts})).await.json().await.unwrap();
    assert!(content(&body).starts_with("charlie delta "), "{}", content(&body));
}

#[tokio::test]
async fn only_a_quoted_start_of_the_answer_in_the_last_user_turn_is_continued() {
    let mock = start().await;
    let answer_to = |messages: Value| {
        let mock = &mock;
        async move {
            let body: Value = chat(mock, json!({"model": "gpt-4o", "messages": messages})).await.json().await.unwrap();
            (content(&body).to_owned(), body["usage"]["completion_tokens"].as_u64().unwrap())
        }
    };
    assert_eq!(answer_to(user("Say the alphabet.")).await, (full_answer(), 24));
    assert_eq!(answer_to(user("alph")).await.0, full_answer(), "too short to be a quote");
    // "alphabet" and "deltas" do not end where the answer's words end; the longest valid quote is "alpha bravo charlie".
    let (answer, words) = answer_to(user("alphabet soup: alpha bravo, or alpha bravo charlie deltas")).await;
    assert_eq!(answer, full_answer().strip_prefix("alpha bravo ").unwrap());
    assert_eq!(words, 22);
    // The quote must be in the last message, and that must be the user's.
    let earlier = json!([{"role": "user", "content": instruction("alpha bravo")}, {"role": "assistant", "content": "ok"},
                         {"role": "user", "content": "Thanks, now say it all."}]);
    assert_eq!(answer_to(earlier).await.0, full_answer());
    let system = json!([{"role": "system", "content": instruction("alpha bravo")}]);
    assert_eq!(answer_to(system).await.0, full_answer());
}

#[tokio::test]
async fn a_target_that_rejects_prefill_refuses_every_prefill_and_serves_instructions() {
    let mock = start().await;
    mock.set_rejects_prefill("claude-like");
    let prefill = json!({"model": "claude-like", "messages": with_prefill("alpha bravo")});
    let expected = json!({"error": {
        "message": "This model does not support assistant message prefill. The conversation must end with a user message.",
        "type": "invalid_request_error", "param": null, "code": null}});
    for _ in 0..3 {
        assert_eq!(error_of(chat(&mock, prefill.clone()).await).await, (400, expected.clone()));
    }
    let streamed = json!({"model": "claude-like", "stream": true, "messages": with_prefill("alpha bravo")});
    assert_eq!(error_of(chat(&mock, streamed).await).await, (400, expected.clone()));

    let instructed = json!({"model": "claude-like", "messages": continue_by_instruction("alpha bravo")});
    let body: Value = chat(&mock, instructed.clone()).await.json().await.unwrap();
    assert_eq!(content(&body), full_answer().strip_prefix("alpha ").unwrap());
    let plain: Value = chat(&mock, json!({"model": "claude-like", "messages": user("hi")})).await.json().await.unwrap();
    assert_eq!(content(&plain), full_answer());
    // Other targets still accept prefill.
    let body: Value =
        chat(&mock, json!({"model": "gpt-4o", "messages": with_prefill("alpha bravo")})).await.json().await.unwrap();
    assert_eq!(content(&body), full_answer().strip_prefix("alpha bravo").unwrap());

    // Scripts still apply to the requests it serves, and a refused prefill does not consume a step.
    mock.script("claude-like", vec![Behavior::server_error(), Behavior::ok()]);
    assert_eq!(chat(&mock, prefill.clone()).await.status(), 400);
    assert_eq!(chat(&mock, instructed.clone()).await.status(), 500);
    assert_eq!(chat(&mock, instructed).await.status(), 200);
    assert_eq!(chat(&mock, prefill.clone()).await.status(), 400);

    mock.clear();
    let body: Value = chat(&mock, prefill).await.json().await.unwrap();
    assert_eq!(content(&body), full_answer().strip_prefix("alpha bravo").unwrap(), "clear forgets the setting");
}

#[tokio::test]
async fn rejects_prefill_over_http_and_on_azure() {
    let mock = start().await;
    let http = client();
    let control = |path: &str| format!("{}/_mock/{path}", mock.azure_endpoint());
    let set = http.post(control("rejects_prefill")).json(&json!({"target": "prod-claude"})).send().await.unwrap();
    assert_eq!(set.status(), 200);
    let bad = http.post(control("rejects_prefill")).json(&json!({"key": "prod-claude"})).send().await.unwrap();
    assert_eq!(bad.status(), 400);

    let azure = |messages: Value, stream: bool| {
        http.post(format!(
            "{}/openai/deployments/prod-claude/chat/completions?api-version=2024-10-21",
            mock.azure_endpoint()
        ))
        .header("api-key", "azure-key-0123456789")
        .json(&json!({"messages": messages, "stream": stream}))
        .send()
    };
    for _ in 0..2 {
        let (status, body) = error_of(azure(with_prefill("alpha bravo"), false).await.unwrap()).await;
        assert_eq!((status, body["error"]["type"].as_str()), (400, Some("invalid_request_error")));
        assert!(body["error"]["message"].as_str().unwrap().contains("does not support assistant message prefill"));
    }
    let response = azure(continue_by_instruction("alpha bravo charlie delta echo"), true).await.unwrap();
    assert_eq!(response.status(), 200);
    let text = streamed_text(&events(&response.text().await.unwrap()));
    assert_eq!(text, full_answer().strip_prefix("alpha bravo charlie delta ").unwrap());
    // The setting is per target: the same name as an OpenAI model is the same target.
    assert_eq!(chat(&mock, json!({"model": "prod-claude", "messages": with_prefill("alpha")})).await.status(), 400);
    assert_eq!(chat(&mock, json!({"model": "gpt-4o", "messages": with_prefill("alpha")})).await.status(), 200);

    assert_eq!(http.post(control("clear")).send().await.unwrap().status(), 200);
    let body: Value = azure(with_prefill("alpha bravo"), false).await.unwrap().json().await.unwrap();
    assert_eq!(content(&body), full_answer().strip_prefix("alpha bravo").unwrap());
}

#[tokio::test]
async fn script_steps_run_in_order_and_the_last_repeats() {
    let mock = start().await;
    mock.script("gpt-4o", vec![Behavior::server_error(), Behavior::ok()]);
    let request = json!({"model": "gpt-4o", "messages": user("hi")});
    let (status, body) = error_of(chat(&mock, request.clone()).await).await;
    assert_eq!(status, 500);
    assert_eq!(
        body,
        json!({"error": {"message": "The server had an error while processing your request. Sorry about that!",
                         "type": "server_error", "param": null, "code": null}})
    );
    assert_eq!(chat(&mock, request.clone()).await.status(), 200);
    assert_eq!(chat(&mock, request.clone()).await.status(), 200);
    // Other models are not affected.
    assert_eq!(chat(&mock, json!({"model": "gpt-4o-mini", "messages": user("hi")})).await.status(), 200);

    mock.script("gpt-4o", vec![Behavior::overloaded()]);
    for _ in 0..2 {
        let (status, body) = error_of(chat(&mock, request.clone()).await).await;
        assert_eq!((status, body["error"]["type"].as_str()), (503, Some("server_error")));
    }
}

#[tokio::test]
async fn rate_limited_sends_retry_after() {
    let mock = start().await;
    mock.script("gpt-4o", vec![Behavior::rate_limited(Some("7")), Behavior::rate_limited(None)]);
    let request = json!({"model": "gpt-4o", "messages": user("hi")});
    let response = chat(&mock, request.clone()).await;
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "7");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");
    assert_eq!(body["error"]["type"], "requests");
    assert!(body["error"]["message"].as_str().unwrap().starts_with("Rate limit reached for gpt-4o "));
    let response = chat(&mock, request).await;
    assert_eq!(response.status(), 429);
    assert!(response.headers().get("retry-after").is_none());
}

#[tokio::test]
async fn scripted_errors_have_openai_bodies() {
    let mock = start().await;
    let request = json!({"model": "gpt-5-imaginary", "messages": user("hi")});
    let cases = [
        (Behavior::model_not_found(), 404, Some("model_not_found"), "invalid_request_error"),
        (Behavior::content_filter(), 400, Some("content_filter"), "invalid_request_error"),
        (Behavior::bad_request(), 400, None, "invalid_request_error"),
    ];
    for (behavior, status, code, r#type) in cases {
        mock.script("gpt-5-imaginary", vec![behavior]);
        let (got, body) = error_of(chat(&mock, request.clone()).await).await;
        assert_eq!(got, status);
        assert_eq!(body["error"]["code"].as_str(), code);
        assert_eq!(body["error"]["type"], r#type);
        assert!(body["error"].get("param").is_some());
        if code == Some("model_not_found") {
            assert_eq!(
                body["error"]["message"],
                "The model `gpt-5-imaginary` does not exist or you do not have access to it."
            );
        }
        if code == Some("content_filter") {
            assert!(body["error"]["message"].as_str().unwrap().contains("content management policy"));
        }
    }
}

#[tokio::test]
async fn invalid_missing_and_no_quota_keys() {
    let mock = start().await;
    mock.set_invalid_key(KEY);
    let (status, body) = error_of(chat(&mock, json!({"model": "gpt-4o", "messages": user("hi")})).await).await;
    assert_eq!(status, 401);
    assert_eq!(
        body,
        json!({"error": {"message": "Incorrect API key provided: sk-...abcd. You can find your API key at https://platform.openai.com/account/api-keys.",
                         "type": "invalid_request_error", "param": null, "code": "invalid_api_key"}})
    );
    assert!(!body.to_string().contains(KEY));

    let url = format!("{}/chat/completions", mock.base_url());
    let response = client().post(&url).json(&json!({"model": "gpt-4o", "messages": user("hi")})).send().await.unwrap();
    let (status, body) = error_of(response).await;
    assert_eq!((status, body["error"]["code"].as_str()), (401, Some("invalid_api_key")));
    assert!(body["error"]["message"].as_str().unwrap().starts_with("You didn't provide an API key."));

    let poor = "sk-poor-11111111111111111111";
    mock.set_no_quota_key(poor);
    let response = client().post(&url).bearer_auth(poor).json(&json!({"model": "gpt-4o"})).send().await.unwrap();
    let (status, body) = error_of(response).await;
    assert_eq!(status, 429);
    assert_eq!(body["error"]["code"], "insufficient_quota");
    assert_eq!(body["error"]["type"], "insufficient_quota");

    // A key failure does not consume a script step.
    mock.script("gpt-4o", vec![Behavior::server_error(), Behavior::ok()]);
    let response = client().post(&url).bearer_auth(poor).json(&json!({"model": "gpt-4o"})).send().await.unwrap();
    assert_eq!(response.status(), 429);
    assert_eq!(post(&mock, "/chat/completions", json!({"model": "x"})).await.status(), 401);
    let response = client()
        .post(&url)
        .bearer_auth("sk-good")
        .json(&json!({"model": "gpt-4o", "messages": user("hi")}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 500);

    mock.clear();
    assert_eq!(chat(&mock, json!({"model": "gpt-4o", "messages": user("hi")})).await.status(), 200);
    assert_eq!(mock.requests().len(), 1);
}

#[tokio::test]
async fn azure_routes_use_the_deployment_and_api_key() {
    let mock = start().await;
    let url = |tail: &str| format!("{}/openai/deployments/prod-gpt4o/{tail}", mock.azure_endpoint());
    let response = client()
        .post(url("chat/completions?api-version=2024-10-21"))
        .header("api-key", "azure-key-0123456789")
        .json(&json!({"messages": user("hi")}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["model"], "prod-gpt4o");
    assert_eq!(body["choices"][0]["message"]["content"], full_answer());

    let seen = mock.requests();
    assert_eq!(seen[0].model.as_deref(), Some("prod-gpt4o"));
    assert_eq!(seen[0].api_key.as_deref(), Some("azure-key-0123456789"));
    assert_eq!(seen[0].path, "/openai/deployments/prod-gpt4o/chat/completions?api-version=2024-10-21");

    // Scripts are keyed by deployment.
    mock.script("prod-gpt4o", vec![Behavior::content_filter()]);
    let response = client()
        .post(url("chat/completions?api-version=2024-10-21"))
        .header("api-key", "azure-key-0123456789")
        .json(&json!({"messages": user("hi")}))
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(response).await.1["error"]["code"], "content_filter");

    // No api-version: Azure's 404.
    let response = client()
        .post(url("chat/completions"))
        .header("api-key", "azure-key-0123456789")
        .json(&json!({"messages": user("hi")}))
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(response).await, (404, json!({"error": {"code": "404", "message": "Resource not found"}})));

    mock.set_invalid_key("azure-bad-key-000000");
    let response = client()
        .post(url("embeddings?api-version=2024-10-21"))
        .header("api-key", "azure-bad-key-000000")
        .json(&json!({"input": "hi"}))
        .send()
        .await
        .unwrap();
    let (status, body) = error_of(response).await;
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "401");
    assert!(body["error"]["message"].as_str().unwrap().starts_with("Access denied due to invalid subscription key"));
}

#[tokio::test]
async fn context_limit_with_and_without_code() {
    let mock = start().await;
    let long = "x".repeat(400); // 100 tokens
    for (with_code, code) in [(true, json!("context_length_exceeded")), (false, Value::Null)] {
        mock.script("small", vec![Behavior::ContextLimit { max_tokens: 50, with_code }]);
        let (status, body) = error_of(chat(&mock, json!({"model": "small", "messages": user(&long)})).await).await;
        assert_eq!(status, 400);
        assert_eq!(
            body,
            json!({"error": {"message": "This model's maximum context length is 50 tokens. However, your messages resulted in 100 tokens. Please reduce the length of the messages.",
                             "type": "invalid_request_error", "param": "messages", "code": code}})
        );
        assert_eq!(chat(&mock, json!({"model": "small", "messages": user("short")})).await.status(), 200);
    }
}

#[tokio::test]
async fn stream_cut_ends_the_body_with_an_error_after_n_words() {
    let mock = start().await;
    mock.script("gpt-4o", vec![Behavior::StreamCut { after_tokens: 5 }]);
    let mut response = chat(&mock, json!({"model": "gpt-4o", "stream": true, "messages": user("hi")})).await;
    assert_eq!(response.status(), 200);
    let mut received = Vec::new();
    let error = loop {
        match response.chunk().await {
            Ok(Some(bytes)) => received.extend_from_slice(&bytes),
            Ok(None) => panic!("the stream ended cleanly"),
            Err(error) => break error,
        }
    };
    assert!(error.is_body() || error.is_decode() || error.is_request(), "{error:?}");
    let events = events(std::str::from_utf8(&received).unwrap());
    assert_eq!(events.len(), 1 + 5);
    assert_eq!(streamed_text(&events), ANSWER_WORDS[..5].join(" "));

    // Not streaming: a reset before the headers.
    let error = client()
        .post(format!("{}/chat/completions", mock.base_url()))
        .bearer_auth(KEY)
        .json(&json!({"model": "gpt-4o", "messages": user("hi")}))
        .send()
        .await
        .unwrap_err();
    assert!(error.status().is_none());
}

#[tokio::test]
async fn reset_before_headers_is_a_request_error() {
    let mock = start().await;
    mock.script("gpt-4o", vec![Behavior::ResetBeforeHeaders]);
    let error = client()
        .post(format!("{}/chat/completions", mock.base_url()))
        .bearer_auth(KEY)
        .json(&json!({"model": "gpt-4o", "messages": user("hi")}))
        .send()
        .await
        .unwrap_err();
    assert!(error.is_request() && !error.is_timeout(), "{error:?}");
    assert!(error.status().is_none());
}

#[tokio::test]
async fn no_response_times_out() {
    let mock = start().await;
    mock.script("gpt-4o", vec![Behavior::NoResponse, Behavior::StreamStall { after_tokens: 3 }]);
    let quick = reqwest::Client::builder().timeout(Duration::from_millis(300)).build().unwrap();
    let started = Instant::now();
    let error = quick
        .post(format!("{}/chat/completions", mock.base_url()))
        .bearer_auth(KEY)
        .json(&json!({"model": "gpt-4o", "messages": user("hi")}))
        .send()
        .await
        .unwrap_err();
    assert!(error.is_timeout(), "{error:?}");
    assert!(started.elapsed() >= Duration::from_millis(290));

    // StreamStall: three words, then silence.
    let mut response = client()
        .post(format!("{}/chat/completions", mock.base_url()))
        .bearer_auth(KEY)
        .json(&json!({"model": "gpt-4o", "stream": true, "messages": user("hi")}))
        .send()
        .await
        .unwrap();
    let mut received = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_millis(300), response.chunk()).await {
            Ok(Ok(Some(bytes))) => received.extend_from_slice(&bytes),
            Ok(other) => panic!("the stream ended: {other:?}"),
            Err(_) => break,
        }
    }
    assert_eq!(streamed_text(&events(std::str::from_utf8(&received).unwrap())), "alpha bravo charlie");
}

#[tokio::test]
async fn slow_first_token_delays_the_first_event_after_the_headers() {
    let mock = start().await;
    mock.script("gpt-4o", vec![Behavior::SlowFirstToken { delay_ms: 300 }]);
    let started = Instant::now();
    let mut response = chat(&mock, json!({"model": "gpt-4o", "stream": true, "messages": user("hi")})).await;
    assert!(started.elapsed() < Duration::from_millis(250), "the headers come at once");
    response.chunk().await.unwrap().unwrap();
    assert!(started.elapsed() >= Duration::from_millis(290));
    let started = Instant::now();
    let response = chat(&mock, json!({"model": "gpt-4o", "messages": user("hi")})).await;
    assert!(started.elapsed() >= Duration::from_millis(290));
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn malformed_chunk_is_one_bad_event_in_a_complete_stream() {
    let mock = start().await;
    mock.script("gpt-4o", vec![Behavior::MalformedChunk { at_token: 3 }]);
    let events = events(
        &chat(&mock, json!({"model": "gpt-4o", "stream": true, "messages": user("hi")})).await.text().await.unwrap(),
    );
    let bad: Vec<(usize, &String)> = events
        .iter()
        .enumerate()
        .filter(|(_, e)| *e != "[DONE]" && serde_json::from_str::<Value>(e).is_err())
        .collect();
    assert_eq!(bad.len(), 1);
    assert_eq!(bad[0], (1 + 3, &"{not json".to_owned()));
    assert_eq!(events.last().unwrap(), "[DONE]");
    assert_eq!(streamed_text(&events), full_answer());
}

#[tokio::test]
async fn missing_done_ends_without_done() {
    let mock = start().await;
    mock.script("gpt-4o", vec![Behavior::MissingDone]);
    let response = chat(&mock, json!({"model": "gpt-4o", "stream": true, "messages": user("hi")})).await;
    let events = events(&response.text().await.unwrap());
    assert!(events.iter().all(|e| e != "[DONE]"));
    let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], "stop");
    assert_eq!(streamed_text(&events), full_answer());
}

#[tokio::test]
async fn reject_prefill_only_rejects_prefill() {
    let mock = start().await;
    mock.script("gpt-4o", vec![Behavior::RejectPrefill, Behavior::RejectPrefill, Behavior::ok()]);
    let (status, body) =
        error_of(chat(&mock, json!({"model": "gpt-4o", "messages": with_prefill("alpha")})).await).await;
    assert_eq!(status, 400);
    assert_eq!(
        body,
        json!({"error": {"message": "This model does not support assistant message prefill. The conversation must end with a user message.",
                         "type": "invalid_request_error", "param": null, "code": null}})
    );
    // Under the step, an instruction to continue is served.
    let instructed = json!({"model": "gpt-4o", "messages": continue_by_instruction("alpha bravo")});
    let body: Value = chat(&mock, instructed).await.json().await.unwrap();
    assert_eq!(content(&body), full_answer().strip_prefix("alpha ").unwrap());
    // The script moved on: the next prefill is continued.
    let body: Value =
        chat(&mock, json!({"model": "gpt-4o", "messages": with_prefill("alpha")})).await.json().await.unwrap();
    assert_eq!(content(&body), full_answer().strip_prefix("alpha").unwrap());
}

#[tokio::test]
async fn flapping_is_down_then_up() {
    let mock = start().await;
    mock.script("gpt-4o", vec![Behavior::Flapping { down_ms: 200, up_ms: 60_000 }]);
    let request = json!({"model": "gpt-4o", "messages": user("hi")});
    assert_eq!(chat(&mock, request.clone()).await.status(), 503);
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(chat(&mock, request.clone()).await.status(), 200);
    assert_eq!(chat(&mock, request).await.status(), 200);
}

fn norm(v: &[f64]) -> f64 {
    v.iter().map(|x| x * x).sum::<f64>().sqrt()
}

#[tokio::test]
async fn embeddings_have_model_dimensions_and_unit_norm() {
    let mock = start().await;
    let body: Value = post(&mock, "/embeddings", json!({"model": "text-embedding-3-small", "input": "hello"}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["object"], "list");
    assert_eq!(body["model"], "text-embedding-3-small");
    assert_eq!(body["usage"], json!({"prompt_tokens": 2, "total_tokens": 2}));
    assert_eq!(body["data"][0]["object"], "embedding");
    assert_eq!(body["data"][0]["index"], 0);
    let small: Vec<f64> = serde_json::from_value(body["data"][0]["embedding"].clone()).unwrap();
    assert_eq!(small.len(), 1536);
    assert!((norm(&small) - 1.0).abs() < 1e-4);

    let body: Value =
        post(&mock, "/embeddings", json!({"model": "text-embedding-3-large", "input": ["hello", "world"]}))
            .await
            .json()
            .await
            .unwrap();
    let data = body["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    let large: Vec<f64> = serde_json::from_value(data[0]["embedding"].clone()).unwrap();
    let world: Vec<f64> = serde_json::from_value(data[1]["embedding"].clone()).unwrap();
    assert_eq!((large.len(), world.len(), data[1]["index"].as_u64()), (3072, 3072, Some(1)));
    assert_ne!(large[..8], world[..8]);
    assert!((norm(&world) - 1.0).abs() < 1e-4);

    let body: Value =
        post(&mock, "/embeddings", json!({"model": "text-embedding-3-small", "input": ["world", "hello"]}))
            .await
            .json()
            .await
            .unwrap();
    let again: Vec<f64> = serde_json::from_value(body["data"][1]["embedding"].clone()).unwrap();
    assert_eq!(again, small, "the same text gives the same vector");

    let body: Value =
        post(&mock, "/embeddings", json!({"model": "text-embedding-3-small", "input": "hello", "dimensions": 256}))
            .await
            .json()
            .await
            .unwrap();
    let short: Vec<f64> = serde_json::from_value(body["data"][0]["embedding"].clone()).unwrap();
    assert_eq!(short.len(), 256);
    assert!((norm(&short) - 1.0).abs() < 1e-4);

    // The OpenAI SDKs ask for base64 (little-endian f32).
    use base64::Engine as _;
    let body: Value = post(
        &mock,
        "/embeddings",
        json!({"model": "text-embedding-ada-002", "input": "hello", "encoding_format": "base64"}),
    )
    .await
    .json()
    .await
    .unwrap();
    let bytes =
        base64::engine::general_purpose::STANDARD.decode(body["data"][0]["embedding"].as_str().unwrap()).unwrap();
    let floats: Vec<f64> =
        bytes.chunks_exact(4).map(|b| f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]]))).collect();
    assert_eq!(floats.len(), 1536);
    assert!((floats[0] - small[0]).abs() < 1e-6);
}

#[tokio::test]
async fn legacy_completions_json_and_stream() {
    let mock = start().await;
    let body: Value = post(&mock, "/completions", json!({"model": "gpt-3.5-turbo-instruct", "prompt": "Say it"}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["object"], "text_completion");
    assert_eq!(
        body["choices"],
        json!([{"text": full_answer(), "index": 0, "logprobs": null, "finish_reason": "stop"}])
    );
    assert_eq!(body["usage"], json!({"prompt_tokens": 2, "completion_tokens": 24, "total_tokens": 26}));

    let response =
        post(&mock, "/completions", json!({"model": "gpt-3.5-turbo-instruct", "prompt": "Say it", "stream": true}))
            .await;
    let events = events(&response.text().await.unwrap());
    assert_eq!(events.last().unwrap(), "[DONE]");
    assert_eq!(events.len(), 24 + 1 + 1);
    let first: Value = serde_json::from_str(&events[0]).unwrap();
    assert_eq!(first["object"], "text_completion");
    assert_eq!(first["choices"][0]["text"], "alpha");
    assert_eq!(streamed_text(&events), full_answer());
}

#[tokio::test]
async fn requests_are_recorded() {
    let mock = start().await;
    chat(&mock, json!({"model": "gpt-4o", "messages": user("hi")})).await;
    chat(&mock, json!({"model": "gpt-4o-mini", "stream": true, "messages": user("hi")})).await.text().await.unwrap();
    post(&mock, "/embeddings", json!({"model": "text-embedding-3-small", "input": "x"})).await;
    let seen = mock.requests();
    assert_eq!(seen.len(), 3);
    assert_eq!(
        seen.iter().map(|r| (r.path.as_str(), r.model.as_deref(), r.api_key.as_deref(), r.stream)).collect::<Vec<_>>(),
        vec![
            ("/v1/chat/completions", Some("gpt-4o"), Some(KEY), false),
            ("/v1/chat/completions", Some("gpt-4o-mini"), Some(KEY), true),
            ("/v1/embeddings", Some("text-embedding-3-small"), Some(KEY), false),
        ]
    );
    assert_eq!(seen[0].body["messages"][0]["content"], "hi");
    assert!(seen[0].at <= seen[1].at && seen[1].at <= seen[2].at);
}

#[tokio::test]
async fn unknown_paths_bad_json_and_models() {
    let mock = start().await;
    let (status, body) = error_of(post(&mock, "/nope", json!({})).await).await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["message"], "Invalid URL (POST /v1/nope)");
    assert_eq!(body["error"]["type"], "invalid_request_error");

    let response = client()
        .post(format!("{}/chat/completions", mock.base_url()))
        .bearer_auth(KEY)
        .header("content-type", "application/json")
        .body("{\"model\": ")
        .send()
        .await
        .unwrap();
    let (status, body) = error_of(response).await;
    assert_eq!(status, 400);
    assert!(body["error"]["message"].as_str().unwrap().starts_with("We could not parse the JSON body"));
    assert_eq!(body["error"]["code"], Value::Null);

    let response = client().get(format!("{}/models", mock.base_url())).bearer_auth(KEY).send().await.unwrap();
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["object"], "list");
    assert_eq!(body["data"][0], json!({"id": "gpt-4o", "object": "model", "created": 0, "owned_by": "mock"}));
}

#[tokio::test]
async fn control_endpoints_script_over_http() {
    let mock = start().await;
    let http = client();
    let control = |path: &str| format!("{}/_mock/{path}", mock.azure_endpoint());
    let script = json!({"target": "gpt-4o", "steps": [
        {"kind": "error", "status": 502, "message": "upstream {model} broke"},
        {"kind": "ok", "latency_ms": 1}
    ]});
    let response = http.post(control("script")).json(&script).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let response =
        http.post(control("invalid_key")).json(&json!({"key": "sk-revoked-000000000000"})).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let bad =
        http.post(control("script")).json(&json!({"target": "x", "steps": [{"kind": "nope"}]})).send().await.unwrap();
    assert_eq!(bad.status(), 400);

    let request = json!({"model": "gpt-4o", "messages": user("hi")});
    let (status, body) = error_of(chat(&mock, request.clone()).await).await;
    assert_eq!((status, body["error"]["message"].as_str()), (502, Some("upstream gpt-4o broke")));
    assert_eq!(body["error"]["type"], "server_error");
    assert_eq!(chat(&mock, request.clone()).await.status(), 200);
    let response = http
        .post(format!("{}/chat/completions", mock.base_url()))
        .bearer_auth("sk-revoked-000000000000")
        .json(&request)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);

    let seen: Value = http.get(control("requests")).send().await.unwrap().json().await.unwrap();
    assert_eq!(seen.as_array().unwrap().len(), 3);
    assert_eq!(seen[0]["model"], "gpt-4o");
    assert_eq!(seen[0]["api_key"], KEY);
    assert_eq!(seen[0]["stream"], false);
    assert!(seen[0].get("at").is_none());

    assert_eq!(http.post(control("clear")).send().await.unwrap().status(), 200);
    assert!(mock.requests().is_empty());
    assert_eq!(chat(&mock, request).await.status(), 200);
}

#[tokio::test]
async fn raw_http_chunked_body_pipelining_and_keep_alive() {
    let mock = start().await;
    let body = json!({"model": "gpt-4o", "messages": user("hi")}).to_string();
    let (a, b) = body.split_at(10);
    let requests = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: mock\r\nAuthorization: Bearer {KEY}\r\n\
         Transfer-Encoding: chunked\r\n\r\n{:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n\
         GET /v1/models HTTP/1.1\r\nHost: mock\r\nAuthorization: Bearer {KEY}\r\nConnection: close\r\n\r\n",
        a.len(),
        b.len()
    );
    let mut socket = tokio::net::TcpStream::connect(mock.addr()).await.unwrap();
    socket.write_all(requests.as_bytes()).await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(5), socket.read_to_string(&mut answer)).await.unwrap().unwrap();
    assert_eq!(answer.matches("HTTP/1.1 200 OK\r\n").count(), 2, "{answer}");
    assert!(answer.contains(&full_answer()));
    assert!(answer.contains("\"gpt-4o-mini\""));
    assert!(answer.contains("Connection: close\r\n"));
    assert_eq!(mock.requests()[0].body["model"], "gpt-4o");

    // Dropping the mock frees the port.
    let addr = mock.addr();
    drop(mock);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn expect_continue_is_honoured() {
    let mock = start().await;
    let body = json!({"model": "gpt-4o", "messages": user("hi")}).to_string();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: mock\r\nAuthorization: Bearer {KEY}\r\nExpect: 100-continue\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let mut socket = tokio::net::TcpStream::connect(mock.addr()).await.unwrap();
    socket.write_all(head.as_bytes()).await.unwrap();
    let mut interim = [0u8; 25];
    tokio::time::timeout(Duration::from_secs(5), socket.read_exact(&mut interim)).await.unwrap().unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    socket.write_all(body.as_bytes()).await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(5), socket.read_to_string(&mut answer)).await.unwrap().unwrap();
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(answer.contains(&full_answer()));
}

/// A Responses stream's `(event name, data)` pairs; the name line and the `type` field always agree.
fn response_events(body: &str) -> Vec<(String, Value)> {
    body.split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| {
            let name = e.lines().find_map(|l| l.strip_prefix("event: ")).unwrap().to_owned();
            let data: Value = serde_json::from_str(e.lines().find_map(|l| l.strip_prefix("data: ")).unwrap()).unwrap();
            assert_eq!(data["type"], name.as_str());
            (name, data)
        })
        .collect()
}

#[tokio::test]
async fn responses_answer_as_response_objects_and_typed_events() {
    let mock = start().await;
    let res = post(&mock, "/responses", json!({"model": "gpt-4o", "input": "Say the alphabet."})).await;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!((body["object"].as_str(), body["status"].as_str()), (Some("response"), Some("completed")));
    assert!(body["id"].as_str().unwrap().starts_with("resp_"));
    assert_eq!(body["output"][0]["content"][0]["type"], "output_text");
    assert_eq!(body["output"][0]["content"][0]["text"], full_answer());
    assert_eq!(body["usage"]["output_tokens"], ANSWER_WORDS.len());

    let res = post(&mock, "/responses", json!({"model": "gpt-4o", "input": "Say it.", "stream": true})).await;
    assert!(res.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let events = response_events(&res.text().await.unwrap());
    let deltas: String = events.iter().filter_map(|(_, d)| d["delta"].as_str()).collect();
    assert_eq!(deltas, full_answer());
    assert_eq!(events.last().unwrap().0, "response.completed");
    let numbers: Vec<u64> = events.iter().map(|(_, d)| d["sequence_number"].as_u64().unwrap()).collect();
    assert_eq!(numbers, (0..events.len() as u64).collect::<Vec<_>>());
}

#[tokio::test]
async fn responses_get_the_chat_fault_menu() {
    let mock = start().await;
    mock.script("gpt-4o", vec![Behavior::rate_limited(Some("3")), Behavior::StreamCut { after_tokens: 4 }]);
    let res = post(&mock, "/responses", json!({"model": "gpt-4o", "input": "x"})).await;
    assert_eq!(res.status(), 429);
    assert_eq!(res.headers()["retry-after"], "3");
    let res = post(&mock, "/responses", json!({"model": "gpt-4o", "input": "x", "stream": true})).await;
    assert_eq!(res.status(), 200);
    let mut received = Vec::new();
    let mut stream = res.bytes_stream();
    let broke = loop {
        match futures_util::StreamExt::next(&mut stream).await {
            Some(Ok(chunk)) => received.extend_from_slice(&chunk),
            Some(Err(_)) => break true,
            None => break false,
        }
    };
    assert!(broke, "a cut stream is reset, not ended cleanly");
    let text = String::from_utf8(received).unwrap();
    assert!(!text.contains("response.completed"), "{text}");
    assert_eq!(text.matches("event: response.output_text.delta").count(), 4);

    mock.script("gpt-4o", vec![]);
    let res = post(&mock, "/responses", json!({"model": "gpt-4o"})).await;
    assert_eq!(res.status(), 400, "input is required");
}

#[tokio::test]
async fn responses_are_stored_per_key_like_an_account() {
    let mock = start().await;
    let created: Value =
        post(&mock, "/responses", json!({"model": "gpt-4o", "input": "x"})).await.json().await.unwrap();
    let id = created["id"].as_str().unwrap();
    let url = format!("{}/responses/{id}", mock.base_url());
    assert_eq!(client().get(&url).bearer_auth(KEY).send().await.unwrap().status(), 200);
    assert_eq!(client().get(&url).bearer_auth("sk-other").send().await.unwrap().status(), 404);
    let items: Value =
        client().get(format!("{url}/input_items")).bearer_auth(KEY).send().await.unwrap().json().await.unwrap();
    assert_eq!(items["data"][0]["content"][0]["text"], "x");
    let follow = json!({"model": "gpt-4o", "input": "y", "previous_response_id": id});
    let other = client().post(format!("{}/responses", mock.base_url())).bearer_auth("sk-other").json(&follow);
    let res = other.send().await.unwrap();
    assert_eq!(res.status(), 404);
    assert_eq!(res.json::<Value>().await.unwrap()["error"]["code"], "previous_response_not_found");
    assert_eq!(post(&mock, "/responses", follow).await.status(), 200);
    assert_eq!(client().delete(&url).bearer_auth(KEY).send().await.unwrap().status(), 200);
    assert_eq!(client().get(&url).bearer_auth(KEY).send().await.unwrap().status(), 404);
    let unstored = json!({"model": "gpt-4o", "input": "x", "store": false});
    let id =
        post(&mock, "/responses", unstored).await.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    let res = client().get(format!("{}/responses/{id}", mock.base_url())).bearer_auth(KEY).send().await.unwrap();
    assert_eq!(res.status(), 404, "store: false is not kept");
}
