//! Anthropic and Gemini as fallback targets: the client speaks chat completions, the gateway translates to each
//! provider's own API (the mock speaks both dialects exactly) and back, streaming included.

use serde_json::{Value, json};

use crate::helpers::{GatewayTest, spawn_gateway, sse_data, streamed_text};
use reliablegpt::mock_upstream::{Behavior, FULL_ANSWER};

const OPENAI: &str = "sk-openai-key-for-provider-tests-000000000001";
const CLAUDE: &str = "sk-ant-api03-provider-tests-00000000000000000001";
const CLAUDE2: &str = "sk-ant-api03-provider-tests-00000000000000000002";
const GEMINI: &str = "AIzaSyProviderTests0000000000000000000001";
const GEMINI2: &str = "AIzaSyProviderTests0000000000000000000002";

fn root(gw: &GatewayTest) -> String {
    format!("http://{}", gw.mock.addr())
}

/// An OpenAI key, then Anthropic and Gemini keys pointed at the mock.
async fn mixed_set(gw: &GatewayTest, keys: &[(&str, &str)], fallbacks: &[&str]) -> String {
    let keys: Vec<Value> = keys
        .iter()
        .map(|(provider, key)| match *provider {
            "openai" => json!(key),
            p => json!({"provider": p, "key": key, "base_url": root(gw)}),
        })
        .collect();
    gw.key_set_with(json!(keys), json!({"fallback_strategy": fallbacks})).await
}

fn chat(model: &str, stream: bool) -> Value {
    let mut body = json!({"model": model, "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Say the alphabet."},
    ]});
    if stream {
        body["stream"] = json!(true);
        body["stream_options"] = json!({"include_usage": true});
    }
    body
}

fn seen_paths(gw: &GatewayTest) -> Vec<String> {
    gw.mock.requests().into_iter().map(|r| r.path).collect()
}

#[tokio::test]
async fn openai_down_falls_back_to_anthropic_then_gemini_with_answers_in_the_chat_shape() {
    let gw = spawn_gateway().await;
    let token = mixed_set(
        &gw,
        &[("openai", OPENAI), ("anthropic", CLAUDE), ("gemini", GEMINI)],
        &["claude-sonnet-4-5", "gemini-2.5-pro"],
    )
    .await;
    gw.mock.script("gpt-4o", vec![Behavior::server_error(); 3]);
    let a = gw.post("/v1/chat/completions", &token, chat("gpt-4o", false), &[]).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.header("x-reliablegpt-provider"), Some("anthropic"));
    assert_eq!(a.header("x-reliablegpt-model"), Some("claude-sonnet-4-5"));
    assert_eq!(a.body["object"], "chat.completion");
    assert_eq!(a.body["model"], "claude-sonnet-4-5");
    assert_eq!(a.body["choices"][0]["message"]["content"], FULL_ANSWER);
    assert_eq!(a.body["choices"][0]["finish_reason"], "stop");
    assert!(a.body["usage"]["completion_tokens"].as_u64().unwrap() > 0, "{}", a.body);
    // The Anthropic request: its own path, key header, version header, system prompt and required max_tokens.
    let sent = gw.mock.requests().into_iter().find(|r| r.path == "/v1/messages").unwrap();
    assert_eq!(sent.api_key.as_deref(), Some(CLAUDE));
    assert_eq!(sent.body["system"], json!([{"type": "text", "text": "Be brief."}]));
    assert_eq!(sent.body["max_tokens"], 8192, "the catalog's default_max_tokens for claude-sonnet-4-5");
    assert_eq!(
        sent.body["messages"],
        json!([{"role": "user", "content": [{"type": "text", "text": "Say the alphabet."}]}])
    );

    // Anthropic overloaded (529) as well: Gemini answers.
    gw.mock.clear_requests();
    gw.mock.script("gpt-4o", vec![Behavior::server_error(); 3]);
    gw.mock.script("claude-sonnet-4-5", vec![overloaded_529(); 3]);
    let a = gw.post("/v1/chat/completions", &token, chat("gpt-4o", false), &[]).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.header("x-reliablegpt-provider"), Some("gemini"));
    assert_eq!(a.body["model"], "gemini-2.5-pro");
    assert_eq!(a.body["choices"][0]["message"]["content"], FULL_ANSWER);
    let paths = seen_paths(&gw);
    assert_eq!(paths.iter().filter(|p| *p == "/v1/messages").count(), 3, "529 is transient: retried: {paths:?}");
    assert_eq!(paths.last().map(String::as_str), Some("/v1beta/models/gemini-2.5-pro:generateContent"));
    let sent = gw.mock.requests().pop().unwrap();
    assert_eq!(sent.api_key.as_deref(), Some(GEMINI));
    assert_eq!(sent.body["systemInstruction"]["parts"][0]["text"], "Be brief.");
}

fn overloaded_529() -> Behavior {
    Behavior::Error {
        status: 529,
        code: None,
        r#type: "overloaded_error".into(),
        message: "Overloaded".into(),
        param: None,
        retry_after: None,
    }
}

async fn streamed(gw: &GatewayTest, token: &str, model: &str) -> crate::helpers::Answer {
    gw.post("/v1/chat/completions", token, chat(model, true), &[]).await
}

fn assert_one_clean_chat_stream(text: &str, model: &str) {
    let data = sse_data(text);
    assert_eq!(data.iter().filter(|d| *d == "[DONE]").count(), 1, "{text}");
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = data.iter().filter_map(|d| serde_json::from_str(d).ok()).collect();
    assert!(chunks.iter().all(|c| c["object"] == "chat.completion.chunk" && c["model"] == model), "{text}");
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let finishes: Vec<&Value> =
        chunks.iter().filter_map(|c| c.pointer("/choices/0/finish_reason")).filter(|f| !f.is_null()).collect();
    assert_eq!(finishes, vec![&json!("stop")], "{text}");
    let usage = chunks.iter().rev().find_map(|c| c.get("usage").filter(|u| !u.is_null())).expect("a usage chunk");
    assert!(usage["completion_tokens"].as_u64().unwrap() > 0);
    assert_eq!(streamed_text(text), FULL_ANSWER);
}

#[tokio::test]
async fn anthropic_and_gemini_streams_become_one_chat_stream_each() {
    let gw = spawn_gateway().await;
    let token = mixed_set(&gw, &[("anthropic", CLAUDE), ("gemini", GEMINI)], &[]).await;
    for (model, provider, path) in [
        ("claude-haiku-4-5", "anthropic", "/v1/messages"),
        ("gemini-2.5-flash", "gemini", "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"),
    ] {
        let a = streamed(&gw, &token, model).await;
        assert_eq!(a.status, 200, "{}", a.text);
        assert_eq!(a.header("x-reliablegpt-provider"), Some(provider));
        assert!(a.header("content-type").unwrap().starts_with("text/event-stream"));
        assert_one_clean_chat_stream(&a.text, model);
        assert_eq!(gw.mock.requests().last().unwrap().path, path);
    }
}

#[tokio::test]
async fn a_stream_cut_midway_on_anthropic_is_continued_on_gemini_without_a_seam() {
    let gw = spawn_gateway().await;
    let token = mixed_set(&gw, &[("anthropic", CLAUDE), ("gemini", GEMINI)], &["gemini-2.5-pro"]).await;
    gw.mock.script("claude-sonnet-4-5", vec![Behavior::StreamCut { after_tokens: 4 }]);
    let a = streamed(&gw, &token, "claude-sonnet-4-5").await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(streamed_text(&a.text), FULL_ANSWER, "{}", a.text);
    assert_eq!(sse_data(&a.text).iter().filter(|d| *d == "[DONE]").count(), 1);
    // Gemini does not take a prefill (catalog): it was asked to continue with an instruction quoting the partial.
    let rescue = gw.mock.requests().pop().unwrap();
    assert!(rescue.path.contains("gemini-2.5-pro:streamGenerateContent"), "{}", rescue.path);
    // Consecutive user turns are merged (Gemini alternates roles): the instruction is the last part.
    let last_turn = rescue.body["contents"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last_turn["role"], "user");
    let instruction = last_turn["parts"].as_array().unwrap().last().unwrap()["text"].as_str().unwrap().to_owned();
    assert!(instruction.contains("<partial_answer>\nalpha bravo charlie delta\n</partial_answer>"), "{last_turn}");
}

#[tokio::test]
async fn provider_errors_drive_rotation_retries_and_context_upgrades() {
    let gw = spawn_gateway().await;
    // A revoked Anthropic key: the next Anthropic key serves, and the first is marked invalid.
    gw.mock.set_invalid_key(CLAUDE);
    let token = mixed_set(&gw, &[("anthropic", CLAUDE), ("anthropic", CLAUDE2)], &[]).await;
    let a = gw.post("/v1/chat/completions", &token, chat("claude-sonnet-4-5", false), &[]).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.header("x-reliablegpt-fallback-reason"), Some("credential"));
    assert_eq!(gw.keys_seen(), vec![CLAUDE, CLAUDE2]);

    // An invalid Gemini key (400 API_KEY_INVALID) rotates as well.
    gw.mock.clear_requests();
    gw.mock.set_invalid_key(GEMINI);
    let token = mixed_set(&gw, &[("gemini", GEMINI), ("gemini", GEMINI2)], &[]).await;
    let a = gw.post("/v1/chat/completions", &token, chat("gemini-2.5-pro", false), &[]).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.header("x-reliablegpt-fallback-reason"), Some("credential"));
    assert_eq!(gw.keys_seen(), vec![GEMINI, GEMINI2]);

    // Anthropic's 429 with a short retry-after is waited out on the same target.
    gw.mock.clear_requests();
    let token = mixed_set(&gw, &[("anthropic", CLAUDE2), ("gemini", GEMINI2)], &["gemini-2.5-pro"]).await;
    gw.mock.script("claude-sonnet-4-5", vec![Behavior::rate_limited(Some("1")), Behavior::ok()]);
    let a = gw.post("/v1/chat/completions", &token, chat("claude-sonnet-4-5", false), &[]).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.header("x-reliablegpt-provider"), Some("anthropic"));
    assert_eq!(seen_paths(&gw), vec!["/v1/messages", "/v1/messages"]);

    // "prompt is too long" on Claude: the larger-window Gemini model is next.
    gw.mock.clear_requests();
    gw.mock.script("claude-sonnet-4-5", vec![Behavior::ContextLimit { max_tokens: 1, with_code: false }]);
    let a = gw.post("/v1/chat/completions", &token, chat("claude-sonnet-4-5", false), &[]).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.header("x-reliablegpt-fallback-reason"), Some("context_too_long"));
    assert_eq!(a.header("x-reliablegpt-provider"), Some("gemini"));

    // Gemini RESOURCE_EXHAUSTED (429 without retry-after) cools the model down and moves on.
    gw.mock.clear_requests();
    let token = mixed_set(&gw, &[("gemini", GEMINI2), ("anthropic", CLAUDE2)], &["claude-haiku-4-5"]).await;
    gw.mock.script("gemini-2.5-flash", vec![Behavior::rate_limited(None)]);
    let a = gw.post("/v1/chat/completions", &token, chat("gemini-2.5-flash", false), &[]).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.header("x-reliablegpt-fallback-reason"), Some("rate_limited"));
    assert_eq!(a.header("x-reliablegpt-provider"), Some("anthropic"));
}

#[tokio::test]
async fn what_a_provider_cannot_take_is_refused_with_the_field_named_and_nothing_is_sent() {
    let gw = spawn_gateway().await;
    let token = mixed_set(&gw, &[("anthropic", CLAUDE), ("gemini", GEMINI)], &[]).await;
    for (model, field, value) in [
        ("claude-sonnet-4-5", "logit_bias", json!({"50256": -100})),
        ("claude-sonnet-4-5", "response_format", json!({"type": "json_object"})),
        ("gemini-2.5-pro", "n", json!(3)),
    ] {
        let mut body = chat(model, false);
        body[field] = value;
        let a = gw.post("/v1/chat/completions", &token, body, &[]).await;
        assert_eq!(a.status, 400, "{model} {field}: {}", a.text);
        assert_eq!(a.body["error"]["param"], field, "{}", a.text);
        assert_eq!(a.body["error"]["type"], "invalid_request_error");
        assert!(a.body["error"]["message"].as_str().unwrap().contains("cannot serve this request"), "{}", a.text);
    }
    assert!(gw.mock.requests().is_empty(), "nothing untranslatable reached a provider");
    // Gemini has JSON mode: the same response_format goes through there.
    let mut body = chat("gemini-2.5-pro", false);
    body["response_format"] = json!({"type": "json_object"});
    let a = gw.post("/v1/chat/completions", &token, body, &[]).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(gw.mock.requests()[0].body["generationConfig"]["responseMimeType"], "application/json");
}

#[tokio::test]
async fn tool_calls_come_back_as_chat_tool_calls_from_both_providers() {
    let gw = spawn_gateway().await;
    let token = mixed_set(&gw, &[("anthropic", CLAUDE), ("gemini", GEMINI)], &[]).await;
    let tools = json!([{"type": "function", "function": {
        "name": "get_weather", "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]);
    for model in ["claude-sonnet-4-5", "gemini-2.5-pro"] {
        for stream in [false, true] {
            let mut body = chat(model, stream);
            body["tools"] = tools.clone();
            body["tool_choice"] = json!({"type": "function", "function": {"name": "get_weather"}});
            let a = gw.post("/v1/chat/completions", &token, body, &[]).await;
            assert_eq!(a.status, 200, "{model}: {}", a.text);
            let (name, arguments, finish) = if stream {
                let chunks: Vec<Value> =
                    sse_data(&a.text).iter().filter_map(|d| serde_json::from_str(d).ok()).collect();
                let name =
                    chunks.iter().find_map(|c| c.pointer("/choices/0/delta/tool_calls/0/function/name")).cloned();
                let arguments: String = chunks
                    .iter()
                    .filter_map(|c| c.pointer("/choices/0/delta/tool_calls/0/function/arguments")?.as_str())
                    .collect();
                let finish =
                    chunks.iter().filter_map(|c| c.pointer("/choices/0/finish_reason")).find(|f| !f.is_null()).cloned();
                (name.unwrap_or_default(), arguments, finish.unwrap_or_default())
            } else {
                let call = &a.body["choices"][0]["message"]["tool_calls"][0];
                let arguments = call["function"]["arguments"].as_str().unwrap_or_default().to_owned();
                (call["function"]["name"].clone(), arguments, a.body["choices"][0]["finish_reason"].clone())
            };
            assert_eq!(name, "get_weather", "{model} stream={stream}: {}", a.text);
            assert_eq!(serde_json::from_str::<Value>(&arguments).unwrap(), json!({"mock": true}));
            assert_eq!(finish, "tool_calls", "{model} stream={stream}");
        }
    }
    // The tool result goes back to the provider in its own shape.
    let body = json!({"model": "claude-sonnet-4-5", "messages": [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": null, "tool_calls": [
            {"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": "toolu_1", "content": "18 degrees"},
    ], "tools": tools});
    gw.mock.clear_requests();
    let a = gw.post("/v1/chat/completions", &token, body, &[]).await;
    assert_eq!(a.status, 200, "{}", a.text);
    let sent = gw.mock.requests().pop().unwrap();
    assert_eq!(sent.body["messages"][1]["content"][0]["type"], "tool_use");
    assert_eq!(sent.body["messages"][2]["content"][0]["type"], "tool_result");
    assert_eq!(sent.body["messages"][2]["content"][0]["tool_use_id"], "toolu_1");
}

#[tokio::test]
async fn a_provider_caller_error_reaches_the_client_in_the_openai_shape() {
    let gw = spawn_gateway().await;
    let token = mixed_set(&gw, &[("anthropic", CLAUDE)], &[]).await;
    gw.mock.script("claude-sonnet-4-5", vec![Behavior::bad_request()]);
    let a = gw.post("/v1/chat/completions", &token, chat("claude-sonnet-4-5", false), &[]).await;
    assert_eq!(a.status, 400, "{}", a.text);
    assert_eq!(a.body["error"]["type"], "invalid_request_error");
    assert_eq!(a.body["error"]["code"], "invalid_request_error", "Anthropic's error type as the code");
    assert!(a.body["error"]["message"].is_string());
}

#[tokio::test]
async fn models_lists_each_providers_models_and_claude_is_not_planned_for_other_endpoints() {
    let gw = spawn_gateway().await;
    let token = mixed_set(&gw, &[("openai", OPENAI), ("anthropic", CLAUDE)], &[]).await;
    let res = gw.app.client.get(gw.app.url("/v1/models")).bearer_auth(&token).send().await.unwrap();
    let listed: Value = res.json().await.unwrap();
    let owner =
        |id: &str| listed["data"].as_array().unwrap().iter().find(|m| m["id"] == id).map(|m| m["owned_by"].clone());
    assert_eq!(owner("claude-sonnet-4-5"), Some(json!("anthropic")));
    assert_eq!(owner("gpt-4o"), Some(json!("openai")));
    assert_eq!(owner("gemini-2.5-pro"), None, "no Gemini key");
    // The legacy completions endpoint is not translated: a Claude model there is not sent to Anthropic.
    let a = gw.post("/v1/completions", &token, json!({"model": "claude-sonnet-4-5", "prompt": "Hi"}), &[]).await;
    assert_ne!(a.status, 200, "{}", a.text);
    assert!(gw.mock.requests().iter().all(|r| r.path != "/v1/messages"));
}

#[tokio::test]
async fn in_band_stream_errors_fall_back_before_the_first_byte_and_are_rescued_after_it() {
    let gw = spawn_gateway().await;
    let token = mixed_set(&gw, &[("anthropic", CLAUDE), ("gemini", GEMINI)], &["gemini-2.5-flash"]).await;
    // Anthropic's `event: error` (overloaded) before any text: invisible to the client, transient (retried), then
    // the fallback answers.
    gw.mock.script("claude-sonnet-4-5", vec![Behavior::StreamError { after_tokens: 0, status: None }]);
    let a = streamed(&gw, &token, "claude-sonnet-4-5").await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.header("x-reliablegpt-provider"), Some("gemini"));
    assert_eq!(a.header("x-reliablegpt-fallback-reason"), Some("transient"));
    assert_one_clean_chat_stream(&a.text, "gemini-2.5-flash");

    // Midway: the client keeps what it got and the rest comes from Gemini, one `[DONE]`, no error event.
    gw.mock.script("claude-sonnet-4-5", vec![Behavior::StreamError { after_tokens: 3, status: None }]);
    let a = streamed(&gw, &token, "claude-sonnet-4-5").await;
    assert_eq!(streamed_text(&a.text), FULL_ANSWER, "{}", a.text);
    assert!(!a.text.contains("\"error\""), "{}", a.text);
    assert_eq!(sse_data(&a.text).iter().filter(|d| *d == "[DONE]").count(), 1);

    // Gemini's in-band error midway with nothing left to try: the client gets the chat stream's error event and no
    // `[DONE]`, never a clean end for a truncated answer.
    gw.mock.script("gemini-2.5-flash", vec![Behavior::StreamError { after_tokens: 2, status: None }]);
    let only = mixed_set(&gw, &[("gemini", GEMINI)], &[]).await;
    let a = streamed(&gw, &only, "gemini-2.5-flash").await;
    let data = sse_data(&a.text);
    assert!(!data.iter().any(|d| d == "[DONE]"), "{}", a.text);
    let last: Value = serde_json::from_str(data.last().unwrap()).unwrap();
    assert!(last.get("error").is_some(), "{}", a.text);
}

#[tokio::test]
async fn multi_turn_images_and_sampling_fields_reach_each_provider_in_its_shape() {
    let gw = spawn_gateway().await;
    let token = mixed_set(&gw, &[("anthropic", CLAUDE), ("gemini", GEMINI)], &[]).await;
    let png = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==";
    let body = |model: &str, extra: Value| {
        let mut b = json!({"model": model, "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi."},
            {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": [
                {"type": "text", "text": "What is in this picture?"},
                {"type": "image_url", "image_url": {"url": png}}]},
        ], "temperature": 0.5, "top_p": 0.9});
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        b
    };
    // `max_tokens` shorter than the answer: `length`; a stop word inside it: `stop` before the word.
    for (model, extra, finish, text) in [
        ("claude-sonnet-4-5", json!({"max_tokens": 3}), "length", "alpha bravo charlie"),
        ("gemini-2.5-pro", json!({"max_completion_tokens": 3}), "length", "alpha bravo charlie"),
        ("claude-sonnet-4-5", json!({"stop": ["charlie"]}), "stop", "alpha bravo"),
        ("gemini-2.5-pro", json!({"stop": "charlie"}), "stop", "alpha bravo"),
    ] {
        gw.mock.clear_requests();
        let a = gw.post("/v1/chat/completions", &token, body(model, extra.clone()), &[]).await;
        assert_eq!(a.status, 200, "{model} {extra}: {}", a.text);
        assert_eq!(a.body["choices"][0]["finish_reason"], finish, "{model} {extra}");
        assert_eq!(a.body["choices"][0]["message"]["content"].as_str().unwrap().trim_end(), text, "{model} {extra}");
        let sent = gw.mock.requests().pop().unwrap().body;
        if model.starts_with("claude") {
            assert_eq!((sent["temperature"].clone(), sent["top_p"].clone()), (json!(0.5), json!(0.9)));
            let roles: Vec<&str> =
                sent["messages"].as_array().unwrap().iter().map(|m| m["role"].as_str().unwrap()).collect();
            assert_eq!(roles, ["user", "assistant", "user"]);
            let image = &sent["messages"][2]["content"][1];
            assert_eq!(image["type"], "image");
            assert_eq!(image["source"]["type"], "base64");
            assert_eq!(image["source"]["media_type"], "image/png");
        } else {
            let config = &sent["generationConfig"];
            assert_eq!((config["temperature"].clone(), config["topP"].clone()), (json!(0.5), json!(0.9)));
            let roles: Vec<&str> =
                sent["contents"].as_array().unwrap().iter().map(|m| m["role"].as_str().unwrap()).collect();
            assert_eq!(roles, ["user", "model", "user"]);
            assert_eq!(sent["contents"][2]["parts"][1]["inlineData"]["mimeType"], "image/png");
        }
    }
}
