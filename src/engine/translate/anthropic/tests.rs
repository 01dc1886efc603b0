use serde_json::{Value, json};

use super::*;
use crate::engine::classify::FailureClass;
use crate::engine::translate::tests::{assemble, sse_events, through_sse_reader};
use crate::engine::translate::{Malformed, StreamStatus, Unsupported};

fn request(chat: Value) -> Value {
    let body = anthropic_request(&chat, "claude-sonnet-4-5", 1024, false).unwrap();
    serde_json::from_slice(&body).unwrap()
}

fn refused(chat: Value) -> Unsupported {
    anthropic_request(&chat, "claude-sonnet-4-5", 1024, false).unwrap_err()
}

#[test]
fn a_whole_conversation_maps_field_by_field() {
    let chat = json!({
        "model": "gpt-4o",
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "developer", "content": [{"type": "text", "text": "Answer in French."}]},
            {"role": "user", "content": [
                {"type": "text", "text": "What is in these images, and the weather in Paris?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "high"}},
                {"type": "image_url", "image_url": {"url": "https://upload.wikimedia.org/a.jpg"}}
            ]},
            {"role": "assistant", "content": "Checking.", "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"location\":\"Paris\"}"}},
                {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": ""}}
            ]},
            {"role": "tool", "tool_call_id": "call_1", "content": "18°C"},
            {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "14:00"}]},
            {"role": "user", "content": "Thanks"}
        ],
        "tools": [
            {"type": "function", "function": {"name": "get_weather", "description": "Weather by city",
                "parameters": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]}}},
            {"type": "function", "function": {"name": "get_time"}}
        ],
        "tool_choice": "auto",
        "stop": "\n\nHuman:",
        "temperature": 0.2,
        "top_p": 0.9,
        "max_completion_tokens": 300,
        "user": "user-42",
        "stream_options": null,
        "n": 1,
        "logprobs": false
    });
    let expected = json!({
        "model": "claude-sonnet-4-5",
        "max_tokens": 300,
        "system": [{"type": "text", "text": "You are terse."}, {"type": "text", "text": "Answer in French."}],
        "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "What is in these images, and the weather in Paris?"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
                {"type": "image", "source": {"type": "url", "url": "https://upload.wikimedia.org/a.jpg"}}
            ]},
            {"role": "assistant", "content": [
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"location": "Paris"}},
                {"type": "tool_use", "id": "call_2", "name": "get_time", "input": {}}
            ]},
            // Both tool results and the next user message form one user turn, results first.
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "call_1", "content": [{"type": "text", "text": "18°C"}]},
                {"type": "tool_result", "tool_use_id": "call_2", "content": [{"type": "text", "text": "14:00"}]},
                {"type": "text", "text": "Thanks"}
            ]}
        ],
        "stop_sequences": ["\n\nHuman:"],
        "temperature": 0.2,
        "top_p": 0.9,
        "tools": [
            {"name": "get_weather", "description": "Weather by city",
                "input_schema": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]}},
            {"name": "get_time", "input_schema": {"type": "object", "properties": {}}}
        ],
        "tool_choice": {"type": "auto"},
        "metadata": {"user_id": "user-42"}
    });
    assert_eq!(request(chat), expected);
}

#[test]
fn max_tokens_comes_from_the_request_or_the_callers_default() {
    let messages = json!([{"role": "user", "content": "Hi"}]);
    assert_eq!(request(json!({"messages": messages}))["max_tokens"], 1024);
    assert_eq!(request(json!({"messages": messages, "max_tokens": 77}))["max_tokens"], 77);
    assert_eq!(request(json!({"messages": messages, "max_tokens": 77, "max_completion_tokens": 88}))["max_tokens"], 88);
    let streamed = anthropic_request(&json!({"messages": messages}), "m", 5, true).unwrap();
    let streamed: Value = serde_json::from_slice(&streamed).unwrap();
    assert_eq!(
        streamed,
        json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}], "stream": true})
    );
    assert_eq!(refused(json!({"messages": messages, "max_tokens": 0})).param, "max_tokens");
}

#[test]
fn tool_choice_and_parallel_calls() {
    let base = || {
        json!({"messages": [{"role": "user", "content": "x"}],
               "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]})
    };
    let with = |extra: Value| {
        let mut chat = base();
        for (k, v) in extra.as_object().unwrap() {
            chat[k] = v.clone();
        }
        request(chat).get("tool_choice").cloned()
    };
    assert_eq!(with(json!({})), None);
    assert_eq!(with(json!({"tool_choice": "required"})), Some(json!({"type": "any"})));
    assert_eq!(with(json!({"tool_choice": "none"})), Some(json!({"type": "none"})));
    assert_eq!(
        with(json!({"tool_choice": {"type": "function", "function": {"name": "f"}}})),
        Some(json!({"type": "tool", "name": "f"}))
    );
    assert_eq!(
        with(json!({"parallel_tool_calls": false})),
        Some(json!({"type": "auto", "disable_parallel_tool_use": true}))
    );
    assert_eq!(
        with(json!({"tool_choice": "required", "parallel_tool_calls": false})),
        Some(json!({"type": "any", "disable_parallel_tool_use": true}))
    );
    assert_eq!(with(json!({"parallel_tool_calls": true})), None);
}

#[test]
fn whatever_does_not_map_is_refused_naming_its_field() {
    let user = || json!([{"role": "user", "content": "Hi"}]);
    let with = |k: &str, v: Value| {
        let mut chat = json!({"messages": user()});
        chat[k] = v;
        refused(chat)
    };
    let cases = [
        (with("n", json!(2)), "n"),
        (with("logprobs", json!(true)), "logprobs"),
        (with("top_logprobs", json!(3)), "top_logprobs"),
        (with("logit_bias", json!({"50256": -100})), "logit_bias"),
        (with("audio", json!({"voice": "alloy", "format": "wav"})), "audio"),
        (with("modalities", json!(["text", "audio"])), "modalities"),
        (with("response_format", json!({"type": "json_object"})), "response_format"),
        (
            with("response_format", json!({"type": "json_schema", "json_schema": {"name": "x", "schema": {}}})),
            "response_format",
        ),
        (with("temperature", json!(1.5)), "temperature"),
        (with("temperature", json!("hot")), "temperature"),
        (with("seed", json!(7)), "seed"),
        (with("presence_penalty", json!(0.5)), "presence_penalty"),
        (with("frequency_penalty", json!(-1)), "frequency_penalty"),
        (with("functions", json!([{"name": "f"}])), "functions"),
        (with("reasoning_effort", json!("high")), "reasoning_effort"),
        (with("web_search_options", json!({})), "web_search_options"),
        (with("some_future_field", json!(true)), "some_future_field"),
        (with("stop", json!(5)), "stop"),
        (with("tool_choice", json!("required")), "tool_choice"),
        (with("tools", json!([{"type": "custom", "custom": {"name": "x"}}])), "tools[0].type"),
        (
            with("tools", json!([{"type": "function", "function": {"name": "f", "strict": true, "parameters": {}}}])),
            "tools[0].function.strict",
        ),
        (with("messages", json!([{"role": "system", "content": "only system"}])), "messages"),
        (with("messages", json!("Hi")), "messages"),
        (
            with("messages", json!([{"role": "user", "content": "a"}, {"role": "system", "content": "late"}])),
            "messages[1].role",
        ),
        (with("messages", json!([{"role": "function", "name": "f", "content": "x"}])), "messages[0].name"),
        (with("messages", json!([{"role": "function", "content": "x"}])), "messages[0].role"),
        (with("messages", json!([{"role": "user", "name": "alice", "content": "x"}])), "messages[0].name"),
        (with("messages", json!([{"role": "assistant", "audio": {"id": "a1"}, "content": "x"}])), "messages[0].audio"),
        (
            with(
                "messages",
                json!([{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}]}]),
            ),
            "messages[0].content[0]",
        ),
        (
            with("messages", json!([{"role": "user", "content": [{"type": "file", "file": {"file_id": "f"}}]}])),
            "messages[0].content[0]",
        ),
        (
            with(
                "messages",
                json!([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/bmp;base64,Qk0="}}]}]),
            ),
            "messages[0].content[0].image_url.url",
        ),
        (
            with(
                "messages",
                json!([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "ftp://x/y.png"}}]}]),
            ),
            "messages[0].content[0].image_url.url",
        ),
        (
            with(
                "messages",
                json!([{"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "[1]"}}]}]),
            ),
            "messages[0].tool_calls[0].function.arguments",
        ),
        (
            with(
                "messages",
                json!([{"role": "system", "content": [{"type": "image_url", "image_url": {"url": "https://x"}}]}]),
            ),
            "messages[0].content[0]",
        ),
        (with("messages", json!([{"role": "tool", "content": "no id"}])), "messages[0].tool_call_id"),
    ];
    for (err, param) in cases {
        assert_eq!(err.param, param, "{err:?}");
        assert!(!err.message.is_empty());
    }
    assert!(refused(json!([1])).message.contains("object"));
}

#[test]
fn fields_that_cannot_change_the_answer_are_accepted() {
    let chat = json!({
        "messages": [{"role": "user", "content": "Hi"}],
        "store": true, "metadata": {"a": "b"}, "service_tier": "auto", "stream_options": {"include_usage": true},
        "logit_bias": {}, "presence_penalty": 0, "frequency_penalty": 0.0, "response_format": {"type": "text"},
        "modalities": ["text"], "seed": null, "audio": null, "top_logprobs": 0
    });
    let body = request(chat);
    assert_eq!(body.as_object().unwrap().len(), 3, "{body}");
}

/// The documented non-streaming answer.
fn answer(content: Value, stop: &str) -> Vec<u8> {
    json!({
        "id": "msg_01XFDUDYJgAACzvnptvVoYEL", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
        "content": content, "stop_reason": stop, "stop_sequence": null,
        "usage": {"input_tokens": 2095, "output_tokens": 503}
    })
    .to_string()
    .into_bytes()
}

fn completion(body: &[u8]) -> Value {
    serde_json::from_slice(&anthropic_response(body, "claude-sonnet-4-5", "chatcmpl-1", 1_700_000_000).unwrap())
        .unwrap()
}

#[test]
fn a_text_answer_becomes_a_chat_completion() {
    let got = completion(&answer(json!([{"type": "text", "text": "Hi! My name is Claude."}]), "end_turn"));
    assert_eq!(
        got,
        json!({
            "id": "chatcmpl-1", "object": "chat.completion", "created": 1_700_000_000u64, "model": "claude-sonnet-4-5",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi! My name is Claude.", "refusal": null},
                         "logprobs": null, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 2095, "completion_tokens": 503, "total_tokens": 2598}
        })
    );
}

#[test]
fn tool_use_blocks_become_tool_calls() {
    let content = json!([
        {"type": "text", "text": "I'll check "},
        {"type": "thinking", "thinking": "hidden", "signature": "s"},
        {"type": "text", "text": "the weather."},
        {"type": "tool_use", "id": "toolu_01A09q90qw90lq917835lq9", "name": "get_weather",
         "input": {"location": "San Francisco, CA", "unit": "celsius"}}
    ]);
    let got = completion(&answer(content, "tool_use"));
    let choice = &got["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    assert_eq!(choice["message"]["content"], "I'll check the weather.");
    let call = &choice["message"]["tool_calls"][0];
    assert_eq!(call["id"], "toolu_01A09q90qw90lq917835lq9");
    assert_eq!(call["type"], "function");
    assert_eq!(call["function"]["name"], "get_weather");
    let arguments: Value = serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(arguments, json!({"location": "San Francisco, CA", "unit": "celsius"}));

    let only_tools =
        completion(&answer(json!([{"type": "tool_use", "id": "t", "name": "f", "input": {}}]), "tool_use"));
    assert_eq!(only_tools["choices"][0]["message"]["content"], Value::Null);
}

#[test]
fn stop_reasons_and_cached_usage() {
    for (stop, finish) in [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
    ] {
        let got = completion(&answer(json!([{"type": "text", "text": "x"}]), stop));
        assert_eq!(got["choices"][0]["finish_reason"], finish, "{stop}");
    }
    let cached = json!({"content": [], "stop_reason": "end_turn",
        "usage": {"input_tokens": 10, "cache_creation_input_tokens": 100, "cache_read_input_tokens": 1000, "output_tokens": 5}});
    let got = completion(cached.to_string().as_bytes());
    assert_eq!(got["usage"], json!({"prompt_tokens": 1110, "completion_tokens": 5, "total_tokens": 1115}));
    assert_eq!(got["choices"][0]["message"]["content"], "");
}

#[test]
fn malformed_answers_are_errors_not_panics() {
    for body in
        [&b"not json"[..], b"[]", br#"{"content": "text"}"#, br#"{"content": [{"type": "tool_use", "input": {}}]}"#]
    {
        assert!(anthropic_response(body, "m", "id", 0).is_err(), "{}", String::from_utf8_lossy(body));
    }
    // The error can be logged: it says where, never what the answer said.
    let Malformed(why) = anthropic_response(br#"{"content": "secret-canary"}"#, "m", "id", 0).unwrap_err();
    assert!(!why.contains("secret-canary") && why.contains("column"), "{why}");
}

/// The documented stream of a text answer, then a tool call whose input arrives in pieces.
const TEXT_AND_TOOL: &str = r#"event: message_start
data: {"type":"message_start","message":{"id":"msg_014p7gG3wDgGV9EUtLvnow3U","type":"message","role":"assistant","model":"claude-sonnet-4-5","stop_sequence":null,"usage":{"input_tokens":472,"output_tokens":2},"content":[],"stop_reason":null}}

event: content_block_start
data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}

event: ping
data: {"type": "ping"}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Okay, let's check"}}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":" the weather for San Francisco, CA:"}}

event: content_block_stop
data: {"type":"content_block_stop","index":0}

event: content_block_start
data: {"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_01T1x1fJ34qAmk2tNTrN7Up6","name":"get_weather","input":{}}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":""}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"location\":"}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":" \"San Francisco, CA\", \"unit\": \"fahrenheit\"}"}}

event: content_block_stop
data: {"type":"content_block_stop","index":1}

event: message_delta
data: {"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"output_tokens":89}}

event: message_stop
data: {"type":"message_stop"}

"#;

fn run(stream: &mut AnthropicStream, events: &[(Option<String>, String)]) -> (Vec<u8>, Vec<StreamStatus>) {
    let mut out = Vec::new();
    let statuses = events.iter().map(|(kind, data)| stream.event(kind.as_deref(), data, &mut out).unwrap()).collect();
    (out, statuses)
}

#[test]
fn a_stream_with_text_tool_calls_and_usage() {
    let mut stream = AnthropicStream::new("claude-sonnet-4-5", "chatcmpl-9", 42, true);
    let (out, statuses) = run(&mut stream, &sse_events(TEXT_AND_TOOL));
    assert_eq!(statuses.last(), Some(&StreamStatus::Finished));
    assert!(statuses[..statuses.len() - 1].iter().all(|s| *s == StreamStatus::Continue));

    let text = String::from_utf8(out.clone()).unwrap();
    assert_eq!(text.matches("data: [DONE]\n\n").count(), 1);
    assert!(text.ends_with("data: [DONE]\n\n"));
    let chunks = crate::engine::translate::tests::chunks(&out);
    for c in &chunks {
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(c["id"], "chatcmpl-9");
        assert_eq!(c["model"], "claude-sonnet-4-5");
        assert_eq!(c["created"], 42);
    }
    assert_eq!(chunks[0]["choices"][0]["delta"], json!({"role": "assistant", "content": ""}));
    // The tool call's first chunk names it; the rest carry argument pieces only.
    let calls: Vec<&Value> = chunks.iter().filter_map(|c| c["choices"][0]["delta"].get("tool_calls")).collect();
    assert_eq!(
        calls[0],
        &json!([{"index": 0, "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6", "type": "function", "function": {"name": "get_weather", "arguments": ""}}])
    );
    assert_eq!(calls[1], &json!([{"index": 0, "function": {"arguments": "{\"location\":"}}]));
    assert_eq!(calls.len(), 3, "the empty piece is not sent");
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"], json!({"prompt_tokens": 472, "completion_tokens": 89, "total_tokens": 561}));

    let whole = assemble(&out);
    assert_eq!(whole.text, "Okay, let's check the weather for San Francisco, CA:");
    assert_eq!(whole.finish_reason.as_deref(), Some("tool_calls"));
    assert_eq!(whole.tool_calls.len(), 1);
    let args: Value = serde_json::from_str(&whole.tool_calls[0].2).unwrap();
    assert_eq!(args, json!({"location": "San Francisco, CA", "unit": "fahrenheit"}));

    // Later events change nothing.
    let mut more = Vec::new();
    assert_eq!(stream.event(None, r#"{"type":"message_stop"}"#, &mut more), Ok(StreamStatus::Finished));
    assert!(more.is_empty());
}

#[test]
fn the_stream_says_what_the_answer_says() {
    let streamed = {
        let mut stream = AnthropicStream::new("m", "id", 1, true);
        assemble(&run(&mut stream, &sse_events(TEXT_AND_TOOL)).0)
    };
    let whole = json!({"content": [
            {"type": "text", "text": "Okay, let's check the weather for San Francisco, CA:"},
            {"type": "tool_use", "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6", "name": "get_weather",
             "input": {"location": "San Francisco, CA", "unit": "fahrenheit"}}],
        "stop_reason": "tool_use", "usage": {"input_tokens": 472, "output_tokens": 89}});
    let answered = completion(whole.to_string().as_bytes());
    let message = &answered["choices"][0]["message"];
    assert_eq!(message["content"], streamed.text.as_str());
    assert_eq!(answered["choices"][0]["finish_reason"], streamed.finish_reason.as_deref().unwrap());
    assert_eq!(answered["usage"], streamed.usage.unwrap());
    let call = &message["tool_calls"][0];
    assert_eq!(call["id"], streamed.tool_calls[0].0.as_str());
    assert_eq!(call["function"]["name"], streamed.tool_calls[0].1.as_str());
    let a: Value = serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    let b: Value = serde_json::from_str(&streamed.tool_calls[0].2).unwrap();
    assert_eq!(a, b);
}

#[tokio::test]
async fn how_the_bytes_arrive_does_not_change_the_output() {
    let translate = |events: Vec<(Option<String>, String)>| {
        let mut stream = AnthropicStream::new("m", "id", 1, true);
        run(&mut stream, &events).0
    };
    let reference = translate(sse_events(TEXT_AND_TOOL));
    let bytes = TEXT_AND_TOOL.replace('\n', "\r\n");
    for cuts in [vec![1], vec![7, 8, 9, 300, 301], (1..bytes.len()).step_by(13).collect(), (1..bytes.len()).collect()] {
        let events = through_sse_reader(bytes.as_bytes(), &cuts).await;
        assert_eq!(translate(events), reference, "cut at {cuts:?}");
    }
}

#[test]
fn how_the_provider_splits_the_deltas_does_not_change_the_answer() {
    let stream_of = |text_pieces: &[&str], json_pieces: &[&str]| {
        let mut events = vec![
            r#"{"type":"message_start","message":{"usage":{"input_tokens":3,"output_tokens":1}}}"#.to_owned(),
            r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#.to_owned(),
        ];
        for piece in text_pieces {
            events.push(
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}})
                    .to_string(),
            );
        }
        events.push(r#"{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"t1","name":"f","input":{}}}"#.to_owned());
        for piece in json_pieces {
            events.push(json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": piece}}).to_string());
        }
        events.push(
            r#"{"type":"message_delta","delta":{"stop_reason":"tool_use"},"usage":{"output_tokens":9}}"#.to_owned(),
        );
        events.push(r#"{"type":"message_stop"}"#.to_owned());
        let mut stream = AnthropicStream::new("m", "id", 1, false);
        let (out, _) = run(&mut stream, &events.into_iter().map(|d| (None, d)).collect::<Vec<_>>());
        assert!(!String::from_utf8_lossy(&out).contains("\"usage\""), "no usage chunk unless asked");
        assemble(&out)
    };
    let a = stream_of(&["Héllo, ", "wörld 😀"], &[r#"{"a": [1, "#, r#"2]}"#]);
    let b = stream_of(&["H", "éllo", ", wörld ", "😀"], &["{", r#""a": [1, 2]"#, "}"]);
    let c = stream_of(&["Héllo, wörld 😀"], &[r#"{"a": [1, 2]}"#]);
    assert_eq!(a, b);
    assert_eq!(a, c);
    assert_eq!(a.text, "Héllo, wörld 😀");
}

#[test]
fn an_error_event_is_reported_and_nothing_is_written() {
    let mut stream = AnthropicStream::new("m", "id", 1, true);
    let mut out = Vec::new();
    let start = r#"{"type":"message_start","message":{"usage":{"input_tokens":3,"output_tokens":1}}}"#;
    assert_eq!(stream.event(Some("message_start"), start, &mut out), Ok(StreamStatus::Continue));
    let written = out.len();
    let status = stream
        .event(
            Some("error"),
            r#"{"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}"#,
            &mut out,
        )
        .unwrap();
    assert_eq!(status, StreamStatus::Failed { class: FailureClass::Transient, message: "Overloaded".into() });
    assert_eq!(out.len(), written);
    assert!(!String::from_utf8_lossy(&out).contains("[DONE]"));

    let mut out = Vec::new();
    let too_long = r#"{"type":"error","error":{"type":"invalid_request_error","message":"prompt is too long: 200001 tokens > 200000 maximum"}}"#;
    assert!(matches!(
        AnthropicStream::new("m", "id", 1, false).event(None, too_long, &mut out),
        Ok(StreamStatus::Failed { class: FailureClass::ContextTooLong, .. })
    ));
}

#[test]
fn odd_streams_are_errors_or_harmless() {
    let mut out = Vec::new();
    let mut stream = AnthropicStream::new("m", "id", 1, false);
    assert!(stream.event(None, "not json", &mut out).is_err());
    assert!(
        stream
            .event(
                None,
                r#"{"type":"content_block_delta","index":5,"delta":{"type":"input_json_delta","partial_json":"{"}}"#,
                &mut out
            )
            .is_err()
    );
    assert!(stream.event(None, r#"{"type":"content_block_start","index":0}"#, &mut out).is_err());
    // Unknown events and thinking deltas are skipped; the event name stands in for a missing `type`.
    let before = out.len();
    for data in [
        r#"{"type":"future_event"}"#,
        r#"{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"hm"}}"#,
    ] {
        assert_eq!(stream.event(None, data, &mut out), Ok(StreamStatus::Continue));
    }
    assert_eq!(out.len(), before);
    assert_eq!(stream.event(Some("message_stop"), "{}", &mut out), Ok(StreamStatus::Finished));
    let whole = assemble(&out);
    assert_eq!(whole.finish_reason.as_deref(), Some("stop"));
}

#[test]
fn anthropic_errors_are_classified() {
    use FailureClass::*;
    let err = |kind: &str, message: &str| json!({"type": "error", "error": {"type": kind, "message": message}, "request_id": "req_1"});
    let cases = [
        (529, err("overloaded_error", "Overloaded"), Transient),
        (500, err("api_error", "Internal server error"), Transient),
        (429, err("rate_limit_error", "Number of request tokens has exceeded your per-minute rate limit"), RateLimited),
        (401, err("authentication_error", "invalid x-api-key"), Credential),
        (
            403,
            err("permission_error", "Your API key does not have permission to use the specified resource."),
            Credential,
        ),
        (400, err("invalid_request_error", "Your credit balance is too low to access the Anthropic API."), Credential),
        (400, err("invalid_request_error", "prompt is too long: 215000 tokens > 200000 maximum"), ContextTooLong),
        (
            400,
            err("invalid_request_error", "input length and `max_tokens` exceed context limit: 198000 + 8192 > 200000"),
            ContextTooLong,
        ),
        (404, err("not_found_error", "model: claude-nonexistent"), ModelNotFound),
        (400, err("invalid_request_error", "messages: roles must alternate"), CallerFault),
        (413, err("request_too_large", "Request exceeds the maximum allowed number of bytes."), CallerFault),
        (529, json!("<html>overloaded</html>"), Transient),
        (503, json!({}), Transient),
        (429, json!(null), RateLimited),
        (401, json!(null), Credential),
        (400, json!({}), CallerFault),
    ];
    for (status, body, expected) in cases {
        assert_eq!(classify_anthropic(status, body.to_string().as_bytes()), expected, "{status} {body}");
    }
    assert_eq!(classify_anthropic(502, b"\xff\xfe"), Transient);
}

#[test]
fn a_prefill_loses_its_trailing_whitespace_and_an_empty_one_is_dropped() {
    let body = request(json!({"messages": [
        {"role": "user", "content": "Count to five."},
        {"role": "assistant", "content": "One, two, \n"},
    ]}));
    assert_eq!(body["messages"][1], json!({"role": "assistant", "content": [{"type": "text", "text": "One, two,"}]}));
    let body = request(json!({"messages": [
        {"role": "user", "content": "Count to five."},
        {"role": "assistant", "content": "  "},
    ]}));
    assert_eq!(body["messages"].as_array().unwrap().len(), 1, "{body}");
    // Earlier assistant turns keep their text as it is.
    let body = request(json!({"messages": [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b "},
        {"role": "user", "content": "c"},
    ]}));
    assert_eq!(body["messages"][1]["content"][0]["text"], "b ");
}
