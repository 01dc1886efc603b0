//! The Anthropic Messages and Gemini generateContent dialects of the mock, over real HTTP.

use std::time::Duration;

use reliablegpt::mock_upstream::{ANSWER_WORDS, Behavior, MockUpstream, full_answer};
use serde_json::{Value, json};

use super::{client, start};

const CLAUDE_KEY: &str = "sk-ant-api03-mock-tests-0000000000000000000001";
const GEMINI_KEY: &str = "AIzaSyMockTests00000000000000000000000001";
const CLAUDE: &str = "claude-sonnet-4-5";
const GEMINI: &str = "gemini-2.5-flash";

fn root(mock: &MockUpstream) -> String {
    format!("http://{}", mock.addr())
}

fn messages_body(content: &str) -> Value {
    json!({"model": CLAUDE, "max_tokens": 1024, "messages": [{"role": "user", "content": content}]})
}

async fn anthropic(mock: &MockUpstream, body: Value) -> reqwest::Response {
    client()
        .post(format!("{}/v1/messages", root(mock)))
        .header("x-api-key", CLAUDE_KEY)
        .header("anthropic-version", "2023-06-01")
        .json(&body)
        .send()
        .await
        .unwrap()
}

fn gemini_body(text: &str) -> Value {
    json!({"contents": [{"role": "user", "parts": [{"text": text}]}]})
}

async fn gemini(mock: &MockUpstream, op: &str, body: Value) -> reqwest::Response {
    client()
        .post(format!("{}/v1beta/models/{GEMINI}:{op}", root(mock)))
        .header("x-goog-api-key", GEMINI_KEY)
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn json_of(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

/// Anthropic's `event: X\ndata: {..}` events, checking that each `data.type` names its event.
fn typed_events(body: &str) -> Vec<(String, Value)> {
    assert!(body.ends_with("\n\n"), "{body:?}");
    body.split_terminator("\n\n")
        .map(|e| {
            let (event, data) = e.split_once('\n').unwrap();
            let name = event.strip_prefix("event: ").unwrap().to_owned();
            let data: Value = serde_json::from_str(data.strip_prefix("data: ").unwrap()).unwrap();
            assert_eq!(data["type"], name.as_str(), "{e}");
            (name, data)
        })
        .collect()
}

fn anthropic_text(events: &[(String, Value)]) -> String {
    events.iter().filter_map(|(_, d)| d.pointer("/delta/text").and_then(Value::as_str)).collect()
}

/// Gemini's `data: {..}\r\n\r\n` events.
fn gemini_events(body: &str) -> Vec<Value> {
    assert!(body.ends_with("\r\n\r\n"), "{body:?}");
    body.split_terminator("\r\n\r\n")
        .map(|e| serde_json::from_str(e.strip_prefix("data: ").expect("a data line")).unwrap())
        .collect()
}

fn gemini_text(events: &[Value]) -> String {
    events.iter().filter_map(|e| e.pointer("/candidates/0/content/parts/0/text").and_then(Value::as_str)).collect()
}

/// Reads a body until it fails; panics when it ends cleanly.
async fn read_until_reset(mut response: reqwest::Response) -> String {
    let mut received = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(bytes)) => received.extend_from_slice(&bytes),
            Ok(None) => panic!("the stream ended cleanly: {}", String::from_utf8_lossy(&received)),
            Err(_) => return String::from_utf8(received).unwrap(),
        }
    }
}

#[tokio::test]
async fn anthropic_answers_a_message_object_and_records_the_request() {
    let mock = start().await;
    let mut body = messages_body("Say the alphabet.");
    body["system"] = json!([{"type": "text", "text": "Be brief."}]);
    let response = anthropic(&mock, body.clone()).await;
    assert_eq!(response.status(), 200);
    let (_, message) = json_of(response).await;
    let id = message["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("msg_"), "{id}");
    assert_eq!(
        message,
        json!({"id": id, "type": "message", "role": "assistant", "model": CLAUDE,
               "content": [{"type": "text", "text": full_answer()}], "stop_reason": "end_turn", "stop_sequence": null,
               "usage": {"input_tokens": 7, "output_tokens": 24, "cache_creation_input_tokens": 0,
                         "cache_read_input_tokens": 0}})
    );
    let seen = mock.requests().pop().unwrap();
    assert_eq!((seen.path.as_str(), seen.model.as_deref()), ("/v1/messages", Some(CLAUDE)));
    assert_eq!((seen.api_key.as_deref(), seen.stream), (Some(CLAUDE_KEY), false));
    assert_eq!(seen.body, body);

    // Limits: max_tokens cuts words, a stop sequence stops before itself.
    let mut limited = messages_body("x");
    limited["max_tokens"] = json!(3);
    let (_, m) = json_of(anthropic(&mock, limited).await).await;
    assert_eq!(
        (m["content"][0]["text"].as_str(), m["stop_reason"].as_str()),
        (Some("alpha bravo charlie"), Some("max_tokens"))
    );
    let mut stopped = messages_body("x");
    stopped["stop_sequences"] = json!(["golf", "echo"]);
    let (_, m) = json_of(anthropic(&mock, stopped).await).await;
    assert_eq!(m["content"][0]["text"], "alpha bravo charlie delta ");
    assert_eq!((m["stop_reason"].as_str(), m["stop_sequence"].as_str()), (Some("stop_sequence"), Some("echo")));
}

#[tokio::test]
async fn anthropic_streams_its_exact_event_sequence() {
    let mock = start().await;
    let mut body = messages_body("Say the alphabet.");
    body["stream"] = json!(true);
    let response = anthropic(&mock, body).await;
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let events = typed_events(&response.text().await.unwrap());
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    let mut expected = vec!["message_start", "content_block_start", "ping"];
    expected.extend(std::iter::repeat_n("content_block_delta", 24));
    expected.extend(["content_block_stop", "message_delta", "message_stop"]);
    assert_eq!(names, expected);
    let start = &events[0].1["message"];
    assert_eq!((start["content"].clone(), start["stop_reason"].clone()), (json!([]), Value::Null));
    assert_eq!(start["usage"]["input_tokens"], 5);
    assert_eq!(events[1].1["content_block"], json!({"type": "text", "text": ""}));
    assert_eq!(events[3].1["delta"], json!({"type": "text_delta", "text": "alpha"}));
    assert_eq!(anthropic_text(&events), full_answer());
    let delta = &events[events.len() - 2].1;
    assert_eq!(delta["delta"], json!({"stop_reason": "end_turn", "stop_sequence": null}));
    assert_eq!(delta["usage"]["output_tokens"], 24);
    assert!(mock.requests().pop().unwrap().stream);
}

#[tokio::test]
async fn anthropic_tool_use_plain_and_streamed() {
    let mock = start().await;
    let mut body = messages_body("Weather in Paris?");
    body["tools"] = json!([{"name": "get_weather", "input_schema": {"type": "object"}}]);
    body["tool_choice"] = json!({"type": "tool", "name": "get_weather"});
    let (_, m) = json_of(anthropic(&mock, body.clone()).await).await;
    assert_eq!(m["stop_reason"], "tool_use");
    let block = &m["content"][0];
    assert_eq!((block["type"].as_str(), block["name"].as_str()), (Some("tool_use"), Some("get_weather")));
    assert_eq!(block["input"], json!({"mock": true}));
    assert!(block["id"].as_str().unwrap().starts_with("toolu_"));

    body["stream"] = json!(true);
    let events = typed_events(&anthropic(&mock, body.clone()).await.text().await.unwrap());
    let start = events.iter().find(|(n, _)| n == "content_block_start").unwrap();
    assert_eq!(start.1["content_block"]["type"], "tool_use");
    assert_eq!(start.1["content_block"]["input"], json!({}));
    let json: String =
        events.iter().filter_map(|(_, d)| d.pointer("/delta/partial_json").and_then(Value::as_str)).collect();
    assert_eq!(serde_json::from_str::<Value>(&json).unwrap(), json!({"mock": true}));
    let delta = events.iter().find(|(n, _)| n == "message_delta").unwrap();
    assert_eq!(delta.1["delta"]["stop_reason"], "tool_use");

    // The tool's result in the last user turn gets a text answer.
    body["stream"] = json!(false);
    body["messages"] = json!([
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "18 degrees"}]}
    ]);
    let (_, m) = json_of(anthropic(&mock, body).await).await;
    assert_eq!((m["stop_reason"].as_str(), m["content"][0]["text"].as_str()), (Some("end_turn"), Some(FULL)));
}

const FULL: &str = reliablegpt::mock_upstream::FULL_ANSWER;

#[tokio::test]
async fn anthropic_keys_version_and_body_checks() {
    let mock = start().await;
    let url = format!("{}/v1/messages", root(&mock));
    let body = messages_body("hi");
    let res = client().post(&url).header("anthropic-version", "2023-06-01").json(&body).send().await.unwrap();
    let (status, error) = json_of(res).await;
    assert_eq!(status, 401);
    assert_eq!(error["type"], "error");
    assert_eq!(error["error"]["type"], "authentication_error");

    mock.set_invalid_key("sk-ant-revoked");
    let res = client()
        .post(&url)
        .header("x-api-key", "sk-ant-revoked")
        .header("anthropic-version", "2023-06-01")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(
        json_of(res).await,
        (401, json!({"type": "error", "error": {"type": "authentication_error", "message": "invalid x-api-key"}}))
    );

    mock.set_no_quota_key(CLAUDE_KEY);
    let (status, error) = json_of(anthropic(&mock, body.clone()).await).await;
    assert_eq!((status, error["error"]["type"].as_str()), (400, Some("invalid_request_error")));
    assert_eq!(
        error["error"]["message"],
        "Your credit balance is too low to access the Anthropic API. Please go to Plans & Billing to upgrade or \
         purchase credits."
    );
    mock.clear();

    // No anthropic-version header; a bearer key is taken (Anthropic's SDKs send one).
    let res = client().post(&url).bearer_auth(CLAUDE_KEY).json(&body).send().await.unwrap();
    let (status, error) = json_of(res).await;
    assert_eq!((status, error["error"]["message"].as_str()), (400, Some("anthropic-version: header is required")));
    let res = client()
        .post(&url)
        .bearer_auth(CLAUDE_KEY)
        .header("anthropic-version", "2023-06-01")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);

    for (body, field) in [
        (json!({"max_tokens": 5, "messages": []}), "model: Field required"),
        (json!({"model": CLAUDE, "messages": [{"role": "user", "content": "x"}]}), "max_tokens: Field required"),
        (json!({"model": CLAUDE, "max_tokens": -1, "messages": []}), "max_tokens: Input should be greater"),
        (json!({"model": CLAUDE, "max_tokens": 5}), "messages: Field required"),
    ] {
        let (status, error) = json_of(anthropic(&mock, body.clone()).await).await;
        assert_eq!((status, error["error"]["type"].as_str()), (400, Some("invalid_request_error")), "{body}");
        assert!(error["error"]["message"].as_str().unwrap().starts_with(field), "{body}: {error}");
    }
    let res = client()
        .post(&url)
        .header("x-api-key", CLAUDE_KEY)
        .header("anthropic-version", "2023-06-01")
        .body("{not json")
        .send()
        .await
        .unwrap();
    let (status, error) = json_of(res).await;
    assert_eq!((status, error["error"]["type"].as_str()), (400, Some("invalid_request_error")));
    assert_eq!(mock.requests().len(), 7, "every API request since the clear is recorded");
    assert!(mock.requests().iter().all(|r| r.path == "/v1/messages"));
}

#[tokio::test]
async fn anthropic_errors_take_the_type_of_their_status() {
    let mock = start().await;
    for (status, r#type) in [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (403, "permission_error"),
        (404, "not_found_error"),
        (413, "request_too_large"),
        (429, "rate_limit_error"),
        (500, "api_error"),
        (503, "overloaded_error"),
        (529, "overloaded_error"),
    ] {
        mock.script(
            CLAUDE,
            vec![Behavior::Error {
                status,
                code: None,
                r#type: "server_error".into(),
                message: String::new(),
                param: None,
                retry_after: Some("4".into()),
            }],
        );
        let response = anthropic(&mock, messages_body("hi")).await;
        assert_eq!(response.headers()["retry-after"], "4");
        let (got, error) = json_of(response).await;
        assert_eq!(got, status);
        assert_eq!(
            (error["type"].as_str(), error["error"]["type"].as_str()),
            (Some("error"), Some(r#type)),
            "{status}"
        );
        assert!(!error["error"]["message"].as_str().unwrap().is_empty());
    }
    // A scripted type of Anthropic's own and a message are kept; `{model}` is filled in.
    mock.script(
        CLAUDE,
        vec![Behavior::Error {
            status: 400,
            code: None,
            r#type: "billing_error".into(),
            message: "no {model} for you".into(),
            param: None,
            retry_after: None,
        }],
    );
    let (_, error) = json_of(anthropic(&mock, messages_body("hi")).await).await;
    assert_eq!(error["error"], json!({"type": "billing_error", "message": "no claude-sonnet-4-5 for you"}));
    // Flapping is down as Anthropic is overloaded: 529.
    mock.script(CLAUDE, vec![Behavior::Flapping { down_ms: 60_000, up_ms: 1 }]);
    let (status, error) = json_of(anthropic(&mock, messages_body("hi")).await).await;
    assert_eq!((status, error["error"]["type"].as_str()), (529, Some("overloaded_error")));
}

#[tokio::test]
async fn anthropic_context_limit_prefill_and_instructions() {
    let mock = start().await;
    mock.script(CLAUDE, vec![Behavior::ContextLimit { max_tokens: 3, with_code: true }]);
    let (status, error) = json_of(anthropic(&mock, messages_body(&"x".repeat(40))).await).await;
    assert_eq!(status, 400);
    assert_eq!(
        error["error"],
        json!({"type": "invalid_request_error", "message": "prompt is too long: 10 tokens > 3 maximum"})
    );
    assert_eq!(anthropic(&mock, messages_body("hi")).await.status(), 200, "a prompt that fits is served");
    mock.script(CLAUDE, vec![]);

    let prefilled = |content: Value| {
        json!({"model": CLAUDE, "max_tokens": 1024, "messages": [
            {"role": "user", "content": "Say the alphabet."}, {"role": "assistant", "content": content}]})
    };
    let (_, m) = json_of(anthropic(&mock, prefilled(json!("alpha bravo"))).await).await;
    assert_eq!(format!("alpha bravo{}", m["content"][0]["text"].as_str().unwrap()), full_answer());
    let (_, m) = json_of(anthropic(&mock, prefilled(json!([{"type": "text", "text": "alpha bravo ch"}]))).await).await;
    assert_eq!(format!("alpha bravo ch{}", m["content"][0]["text"].as_str().unwrap()), full_answer());
    let (status, error) = json_of(anthropic(&mock, prefilled(json!("alpha bravo "))).await).await;
    assert_eq!(status, 400, "{error}");
    assert_eq!(error["error"]["message"], "messages: final assistant content cannot end with trailing whitespace");
    // A whole answer as prefill leaves nothing to say.
    let (_, m) = json_of(anthropic(&mock, prefilled(json!(FULL))).await).await;
    assert_eq!((m["content"].clone(), m["usage"]["output_tokens"].clone()), (json!([]), json!(0)));

    // An instruction quoting the partial answer: the last word again, then the rest.
    let instruction =
        "Your previous answer was cut off: <partial_answer>\nalpha bravo charlie\n</partial_answer> Continue.";
    let (_, m) = json_of(anthropic(&mock, messages_body(instruction)).await).await;
    assert_eq!(m["content"][0]["text"].as_str(), FULL.strip_prefix("alpha bravo "));

    mock.set_rejects_prefill(CLAUDE);
    let (status, error) = json_of(anthropic(&mock, prefilled(json!("alpha"))).await).await;
    assert_eq!(status, 400);
    assert_eq!(
        error["error"]["message"],
        "This model does not support assistant message prefill. The conversation must end with a user message."
    );
    assert_eq!(anthropic(&mock, messages_body(instruction)).await.status(), 200);
}

#[tokio::test]
async fn anthropic_stream_faults() {
    let mock = start().await;
    let mut body = messages_body("hi");
    body["stream"] = json!(true);

    mock.script(CLAUDE, vec![Behavior::StreamCut { after_tokens: 4 }]);
    let events = typed_events(&read_until_reset(anthropic(&mock, body.clone()).await).await);
    assert_eq!(anthropic_text(&events), ANSWER_WORDS[..4].join(" "));
    assert!(events.iter().all(|(n, _)| n != "message_stop" && n != "message_delta"));

    mock.script(CLAUDE, vec![Behavior::StreamError { after_tokens: 2, status: None }]);
    let events = typed_events(&anthropic(&mock, body.clone()).await.text().await.unwrap());
    assert_eq!(anthropic_text(&events), "alpha bravo");
    let (name, data) = events.last().unwrap();
    assert_eq!(name, "error");
    assert_eq!(data, &json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}));
    // Not streaming, the same failure is the HTTP error.
    mock.script(CLAUDE, vec![Behavior::StreamError { after_tokens: 2, status: Some(500) }]);
    let (status, error) = json_of(anthropic(&mock, messages_body("hi")).await).await;
    assert_eq!((status, error["error"]["type"].as_str()), (500, Some("api_error")));

    mock.script(CLAUDE, vec![Behavior::MissingDone]);
    let events = typed_events(&anthropic(&mock, body.clone()).await.text().await.unwrap());
    assert_eq!(anthropic_text(&events), full_answer());
    assert_eq!(events.last().unwrap().0, "content_block_stop", "no message_delta nor message_stop");

    mock.script(CLAUDE, vec![Behavior::MalformedChunk { at_token: 1 }]);
    let text = anthropic(&mock, body.clone()).await.text().await.unwrap();
    assert_eq!(text.matches("data: {not json\n\n").count(), 1);
    assert!(text.ends_with("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"));

    mock.script(CLAUDE, vec![Behavior::StreamKeepAlive { after_tokens: 1, every_ms: 10 }]);
    let mut response = anthropic(&mock, body.clone()).await;
    let mut received = String::new();
    while received.matches("event: ping").count() < 4 {
        received.push_str(std::str::from_utf8(&response.chunk().await.unwrap().unwrap()).unwrap());
    }
    assert_eq!(received.matches("event: content_block_delta").count(), 1);
    assert_eq!(mock.keep_alive_streams(), 1);
    drop(response);

    mock.script(CLAUDE, vec![Behavior::SlowFirstToken { delay_ms: 300 }]);
    let started = std::time::Instant::now();
    let response = anthropic(&mock, body.clone()).await;
    assert!(started.elapsed() < Duration::from_millis(250), "the headers come at once");
    assert_eq!(anthropic_text(&typed_events(&response.text().await.unwrap())), full_answer());
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn gemini_answers_generate_content_responses() {
    let mock = start().await;
    let mut body = gemini_body("Say the alphabet.");
    body["systemInstruction"] = json!({"parts": [{"text": "Be brief."}]});
    body["generationConfig"] = json!({"temperature": 0.1, "topP": 0.9, "responseMimeType": "text/plain"});
    let (status, res) = json_of(gemini(&mock, "generateContent", body.clone()).await).await;
    assert_eq!(status, 200);
    let id = res["responseId"].as_str().unwrap().to_owned();
    assert_eq!(
        res,
        json!({"candidates": [{"content": {"parts": [{"text": FULL}], "role": "model"}, "finishReason": "STOP",
                               "index": 0}],
               "usageMetadata": {"promptTokenCount": 7, "candidatesTokenCount": 24, "totalTokenCount": 31,
                                 "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 7}]},
               "modelVersion": GEMINI, "responseId": id})
    );
    let seen = mock.requests().pop().unwrap();
    assert_eq!(seen.path, format!("/v1beta/models/{GEMINI}:generateContent"));
    assert_eq!((seen.model.as_deref(), seen.api_key.as_deref(), seen.stream), (Some(GEMINI), Some(GEMINI_KEY), false));
    assert_eq!(seen.body, body);

    // The key in the query, and the v1 path.
    let res = client()
        .post(format!("{}/v1/models/{GEMINI}:generateContent?key=AIzaQuery", root(&mock)))
        .json(&gemini_body("hi"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(mock.requests().pop().unwrap().api_key.as_deref(), Some("AIzaQuery"));

    body["generationConfig"] = json!({"maxOutputTokens": 2, "stopSequences": ["zulu"]});
    let (_, res) = json_of(gemini(&mock, "generateContent", body.clone()).await).await;
    assert_eq!(res["candidates"][0]["content"]["parts"][0]["text"], "alpha bravo");
    assert_eq!(res["candidates"][0]["finishReason"], "MAX_TOKENS");
    body["generationConfig"] = json!({"stopSequences": ["charlie"]});
    let (_, res) = json_of(gemini(&mock, "generateContent", body.clone()).await).await;
    assert_eq!(res["candidates"][0]["content"]["parts"][0]["text"], "alpha bravo ");
    assert_eq!(res["candidates"][0]["finishReason"], "STOP");

    // A model turn last is a prefill; function calling in mode ANY.
    let prefill = json!({"contents": [{"role": "user", "parts": [{"text": "x"}]},
                                      {"role": "model", "parts": [{"text": "alpha bravo"}]}]});
    let (_, res) = json_of(gemini(&mock, "generateContent", prefill).await).await;
    assert_eq!(format!("alpha bravo{}", res["candidates"][0]["content"]["parts"][0]["text"].as_str().unwrap()), FULL);
    let mut call = gemini_body("Weather?");
    call["tools"] = json!([{"functionDeclarations": [{"name": "get_weather", "parameters": {"type": "OBJECT"}}]}]);
    call["toolConfig"] = json!({"functionCallingConfig": {"mode": "ANY"}});
    let (_, res) = json_of(gemini(&mock, "generateContent", call).await).await;
    assert_eq!(
        res["candidates"][0]["content"]["parts"],
        json!([{"functionCall": {"name": "get_weather", "args": {"mock": true}}}])
    );
    assert_eq!(res["candidates"][0]["finishReason"], "STOP");
}

#[tokio::test]
async fn gemini_streams_server_sent_events_with_crlf_and_no_done() {
    let mock = start().await;
    let response = gemini(&mock, "streamGenerateContent?alt=sse", gemini_body("hi")).await;
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let text = response.text().await.unwrap();
    assert!(!text.contains("[DONE]"));
    let events = gemini_events(&text);
    assert_eq!(events.len(), 24);
    assert_eq!(gemini_text(&events), FULL);
    assert!(
        events[..23]
            .iter()
            .all(|e| e["candidates"][0].get("finishReason").is_none() && e.get("usageMetadata").is_none())
    );
    let last = events.last().unwrap();
    assert_eq!(last["candidates"][0]["finishReason"], "STOP");
    assert_eq!(last["usageMetadata"]["candidatesTokenCount"], 24);
    assert!(events.iter().all(|e| e["modelVersion"] == GEMINI && e["responseId"] == last["responseId"]));
    let seen = mock.requests().pop().unwrap();
    assert_eq!((seen.path, seen.stream), (format!("/v1beta/models/{GEMINI}:streamGenerateContent?alt=sse"), true));

    // Without alt=sse (Google's JSON array stream): refused, loudly.
    let (status, error) = json_of(gemini(&mock, "streamGenerateContent", gemini_body("hi")).await).await;
    assert_eq!((status, error["error"]["status"].as_str()), (400, Some("INVALID_ARGUMENT")));
}

#[tokio::test]
async fn gemini_keys_checks_and_errors_by_status() {
    let mock = start().await;
    let url = format!("{}/v1beta/models/{GEMINI}:generateContent", root(&mock));
    let res = client().post(&url).json(&gemini_body("hi")).send().await.unwrap();
    let (status, error) = json_of(res).await;
    assert_eq!(
        (status, error["error"]["status"].as_str(), error["error"]["code"].as_u64()),
        (403, Some("PERMISSION_DENIED"), Some(403))
    );

    mock.set_invalid_key(GEMINI_KEY);
    let (status, error) = json_of(gemini(&mock, "generateContent", gemini_body("hi")).await).await;
    assert_eq!(status, 400);
    assert_eq!(error["error"]["message"], "API key not valid. Please pass a valid API key.");
    assert_eq!(error["error"]["status"], "INVALID_ARGUMENT");
    assert_eq!(
        error["error"]["details"][0],
        json!({"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID", "domain": "googleapis.com",
               "metadata": {"service": "generativelanguage.googleapis.com"}})
    );
    mock.clear();
    mock.set_no_quota_key(GEMINI_KEY);
    let (status, error) = json_of(gemini(&mock, "generateContent", gemini_body("hi")).await).await;
    assert_eq!((status, error["error"]["status"].as_str()), (429, Some("RESOURCE_EXHAUSTED")));
    mock.clear();

    let (status, error) = json_of(gemini(&mock, "generateContent", json!({"contents": []})).await).await;
    assert_eq!((status, error["error"]["status"].as_str()), (400, Some("INVALID_ARGUMENT")));
    assert!(error["error"]["message"].as_str().unwrap().contains("contents is not specified"));
    let (status, error) = json_of(gemini(&mock, "countTokens", gemini_body("hi")).await).await;
    assert_eq!((status, error["error"]["status"].as_str()), (404, Some("NOT_FOUND")));

    for (status, google) in [
        (400, "INVALID_ARGUMENT"),
        (401, "UNAUTHENTICATED"),
        (403, "PERMISSION_DENIED"),
        (404, "NOT_FOUND"),
        (429, "RESOURCE_EXHAUSTED"),
        (500, "INTERNAL"),
        (503, "UNAVAILABLE"),
        (504, "DEADLINE_EXCEEDED"),
    ] {
        mock.script(
            GEMINI,
            vec![Behavior::Error {
                status,
                code: None,
                r#type: "server_error".into(),
                message: String::new(),
                param: None,
                retry_after: None,
            }],
        );
        let (got, error) = json_of(gemini(&mock, "generateContent", gemini_body("hi")).await).await;
        assert_eq!(got, status);
        assert_eq!(
            (error["error"]["code"].as_u64(), error["error"]["status"].as_str()),
            (Some(u64::from(status)), Some(google))
        );
    }
    let (_, error) = json_of(gemini(&mock, "generateContent", gemini_body("hi")).await).await;
    assert_eq!(error["error"]["message"], "Deadline expired before operation could complete.");
    mock.script(
        GEMINI,
        vec![Behavior::Error {
            status: 404,
            code: None,
            r#type: "x".into(),
            message: String::new(),
            param: None,
            retry_after: None,
        }],
    );
    let (_, error) = json_of(gemini(&mock, "generateContent", gemini_body("hi")).await).await;
    assert!(error["error"]["message"].as_str().unwrap().starts_with("models/gemini-2.5-flash is not found"));
    mock.script(GEMINI, vec![Behavior::rate_limited(Some("20"))]);
    let response = gemini(&mock, "generateContent", gemini_body("hi")).await;
    assert_eq!(response.headers()["retry-after"], "20");
    let (_, error) = json_of(response).await;
    assert_eq!(error["error"]["details"][0]["retryDelay"], "20s");
    mock.script(GEMINI, vec![Behavior::ContextLimit { max_tokens: 1, with_code: true }]);
    let (status, error) = json_of(gemini(&mock, "generateContent", gemini_body("hello there")).await).await;
    assert_eq!(status, 400);
    assert_eq!(
        error["error"]["message"],
        "The input token count (3) exceeds the maximum number of tokens allowed (1)."
    );
    mock.script(GEMINI, vec![Behavior::Flapping { down_ms: 60_000, up_ms: 1 }]);
    let (status, error) = json_of(gemini(&mock, "generateContent", gemini_body("hi")).await).await;
    assert_eq!((status, error["error"]["status"].as_str()), (503, Some("UNAVAILABLE")));
}

#[tokio::test]
async fn gemini_stream_faults() {
    let mock = start().await;
    let op = "streamGenerateContent?alt=sse";
    mock.script(GEMINI, vec![Behavior::StreamCut { after_tokens: 3 }]);
    let events = gemini_events(&read_until_reset(gemini(&mock, op, gemini_body("hi")).await).await);
    assert_eq!(gemini_text(&events), "alpha bravo charlie");
    assert!(events.iter().all(|e| e["candidates"][0].get("finishReason").is_none()));

    mock.script(GEMINI, vec![Behavior::StreamError { after_tokens: 2, status: None }]);
    let events = gemini_events(&gemini(&mock, op, gemini_body("hi")).await.text().await.unwrap());
    assert_eq!(gemini_text(&events), "alpha bravo");
    assert_eq!(
        events.last().unwrap(),
        &json!({"error": {"code": 503, "message": "The model is overloaded. Please try again later.", "status": "UNAVAILABLE"}})
    );

    mock.script(GEMINI, vec![Behavior::MissingDone]);
    let events = gemini_events(&gemini(&mock, op, gemini_body("hi")).await.text().await.unwrap());
    assert_eq!(gemini_text(&events), FULL);
    assert!(events.iter().all(|e| e["candidates"][0].get("finishReason").is_none()));

    mock.script(GEMINI, vec![Behavior::StreamBurst]);
    let events = gemini_events(&gemini(&mock, op, gemini_body("hi")).await.text().await.unwrap());
    assert_eq!(gemini_text(&events), FULL);
    assert_eq!(events.last().unwrap()["candidates"][0]["finishReason"], "STOP");

    mock.script(GEMINI, vec![Behavior::MalformedChunk { at_token: 0 }]);
    let text = gemini(&mock, op, gemini_body("hi")).await.text().await.unwrap();
    assert!(text.starts_with("data: {not json\r\n\r\ndata: {"), "{text}");

    // An empty continuation still finishes.
    let done =
        json!({"contents": [{"role": "user", "parts": [{"text": "x"}]}, {"role": "model", "parts": [{"text": FULL}]}]});
    mock.script(GEMINI, vec![]);
    let events = gemini_events(&gemini(&mock, op, done).await.text().await.unwrap());
    assert_eq!(events.len(), 1);
    assert_eq!((gemini_text(&events).as_str(), &events[0]["candidates"][0]["finishReason"]), ("", &json!("STOP")));
}

#[tokio::test]
async fn openai_streams_get_an_in_band_error_too() {
    let mock = start().await;
    mock.script("gpt-4o", vec![Behavior::StreamError { after_tokens: 2, status: None }]);
    let body = json!({"model": "gpt-4o", "stream": true, "messages": [{"role": "user", "content": "hi"}]});
    let text = super::chat(&mock, body.clone()).await.text().await.unwrap();
    let events = super::events(&text);
    assert_eq!(super::streamed_text(&events), "alpha bravo");
    assert!(events.iter().all(|e| e != "[DONE]"));
    let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
    assert_eq!(last["error"]["type"], "server_error");

    mock.script("gpt-4o", vec![Behavior::StreamError { after_tokens: 2, status: Some(503) }]);
    let mut plain = body;
    plain["stream"] = json!(false);
    assert_eq!(super::chat(&mock, plain).await.status(), 503);

    mock.script("gpt-4o", vec![Behavior::StreamError { after_tokens: 1, status: None }]);
    let text = super::post(&mock, "/responses", json!({"model": "gpt-4o", "input": "x", "stream": true}))
        .await
        .text()
        .await
        .unwrap();
    assert_eq!(text.matches("event: response.output_text.delta").count(), 1);
    assert!(text.contains("event: error\ndata: {"), "{text}");
    assert!(!text.contains("response.completed"));
}
