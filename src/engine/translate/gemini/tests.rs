use serde_json::{Value, json};

use super::*;
use crate::engine::classify::FailureClass;
use crate::engine::translate::tests::{assemble, chunks, sse_events, through_sse_reader};
use crate::engine::translate::{Malformed, StreamStatus, Unsupported};

fn request(chat: Value) -> Value {
    serde_json::from_slice(&gemini_request(&chat, false).unwrap()).unwrap()
}

fn refused(chat: Value) -> Unsupported {
    gemini_request(&chat, false).unwrap_err()
}

#[test]
fn a_whole_conversation_maps_field_by_field() {
    let chat = json!({
        "model": "gpt-4o",
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "developer", "content": "Answer in French."},
            {"role": "user", "content": [
                {"type": "text", "text": "What is in these images, and the weather in Paris?"},
                {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/4AAQ"}},
                {"type": "image_url", "image_url": {"url": "gs://bucket/photos/cat.PNG"}},
                {"type": "image_url", "image_url": {"url": "gs://bucket/photos/blob"}}
            ]},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"location\":\"Paris\"}"}},
                {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}
            ]},
            {"role": "tool", "tool_call_id": "call_1", "content": "{\"celsius\": 18}"},
            {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "14:00"}]},
            {"role": "assistant", "content": "18°C and 14:00."},
            {"role": "user", "content": "Thanks"}
        ],
        "tools": [
            {"type": "function", "function": {"name": "get_weather", "description": "Weather by city",
                "parameters": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"], "additionalProperties": false}}},
            {"type": "function", "function": {"name": "get_time"}}
        ],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "stop": ["END", "STOP"],
        "temperature": 1.4,
        "top_p": 0.9,
        "max_tokens": 300,
        "presence_penalty": 0.5,
        "frequency_penalty": -0.5,
        "seed": 7,
        "user": "user-42",
        "parallel_tool_calls": true,
        "response_format": {"type": "json_schema", "json_schema": {"name": "weather", "strict": true,
            "schema": {"type": "object", "properties": {"c": {"type": "number"}}, "required": ["c"], "additionalProperties": false}}}
    });
    let expected = json!({
        "contents": [
            {"role": "user", "parts": [
                {"text": "What is in these images, and the weather in Paris?"},
                {"inlineData": {"mimeType": "image/jpeg", "data": "/9j/4AAQ"}},
                {"fileData": {"mimeType": "image/png", "fileUri": "gs://bucket/photos/cat.PNG"}},
                {"fileData": {"fileUri": "gs://bucket/photos/blob"}}
            ]},
            {"role": "model", "parts": [
                {"functionCall": {"name": "get_weather", "args": {"location": "Paris"}}, "thoughtSignature": "skip_thought_signature_validator"},
                {"functionCall": {"name": "get_time", "args": {}}}
            ]},
            {"role": "user", "parts": [
                {"functionResponse": {"name": "get_weather", "response": {"celsius": 18}}},
                {"functionResponse": {"name": "get_time", "response": {"result": "14:00"}}}
            ]},
            {"role": "model", "parts": [{"text": "18°C and 14:00."}]},
            {"role": "user", "parts": [{"text": "Thanks"}]}
        ],
        "systemInstruction": {"parts": [{"text": "You are terse."}, {"text": "Answer in French."}]},
        "tools": [{"functionDeclarations": [
            {"name": "get_weather", "description": "Weather by city",
                "parametersJsonSchema": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"], "additionalProperties": false}},
            {"name": "get_time"}
        ]}],
        "toolConfig": {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}},
        "generationConfig": {
            "stopSequences": ["END", "STOP"], "temperature": 1.4, "topP": 0.9, "maxOutputTokens": 300,
            "presencePenalty": 0.5, "frequencyPenalty": -0.5, "seed": 7,
            "responseMimeType": "application/json",
            "responseJsonSchema": {"type": "object", "properties": {"c": {"type": "number"}}, "required": ["c"], "additionalProperties": false}
        }
    });
    assert_eq!(request(chat), expected);
}

#[test]
fn small_requests_and_tool_choices() {
    let hi = json!([{"role": "user", "content": "Hi"}]);
    assert_eq!(request(json!({"messages": hi})), json!({"contents": [{"role": "user", "parts": [{"text": "Hi"}]}]}));
    let json_mode =
        request(json!({"messages": hi, "response_format": {"type": "json_object"}, "max_completion_tokens": 9}));
    assert_eq!(json_mode["generationConfig"], json!({"responseMimeType": "application/json", "maxOutputTokens": 9}));
    let tools = json!([{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]);
    let mode =
        |choice: Value| request(json!({"messages": hi, "tools": tools, "tool_choice": choice}))["toolConfig"].clone();
    assert_eq!(mode(json!("none")), json!({"functionCallingConfig": {"mode": "NONE"}}));
    assert_eq!(mode(json!("auto")), json!({"functionCallingConfig": {"mode": "AUTO"}}));
    assert_eq!(mode(json!("required")), json!({"functionCallingConfig": {"mode": "ANY"}}));
    assert_eq!(request(json!({"messages": hi, "tools": tools})).get("toolConfig"), None);
}

#[test]
fn whatever_does_not_map_is_refused_naming_its_field() {
    let with = |k: &str, v: Value| {
        let mut chat = json!({"messages": [{"role": "user", "content": "Hi"}]});
        chat[k] = v;
        refused(chat)
    };
    let msgs = |m: Value| with("messages", m);
    let cases = [
        (with("n", json!(3)), "n"),
        (with("logprobs", json!(true)), "logprobs"),
        (with("top_logprobs", json!(2)), "top_logprobs"),
        (with("logit_bias", json!({"1": 1})), "logit_bias"),
        (with("audio", json!({"voice": "alloy"})), "audio"),
        (with("modalities", json!(["audio"])), "modalities"),
        (with("parallel_tool_calls", json!(false)), "parallel_tool_calls"),
        (with("response_format", json!({"type": "grammar"})), "response_format.type"),
        (
            with("response_format", json!({"type": "json_schema", "json_schema": {"name": "x"}})),
            "response_format.json_schema.schema",
        ),
        (with("seed", json!(1.5)), "seed"),
        (with("function_call", json!("auto")), "function_call"),
        (with("what", json!(1)), "what"),
        (
            with("tools", json!([{"type": "function", "function": {"name": "f", "strict": true}}])),
            "tools[0].function.strict",
        ),
        (with("tool_choice", json!({"type": "function", "function": {"name": "f"}})), "tool_choice"),
        (
            msgs(
                json!([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}]),
            ),
            "messages[0].content[0].image_url.url",
        ),
        (
            msgs(
                json!([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/gif;base64,R0lG"}}]}]),
            ),
            "messages[0].content[0].image_url.url",
        ),
        (
            msgs(json!([{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}])),
            "messages[0].content[0]",
        ),
        (msgs(json!([{"role": "tool", "tool_call_id": "nowhere", "content": "x"}])), "messages[0].tool_call_id"),
        (msgs(json!([{"role": "user", "content": "a"}, {"role": "developer", "content": "late"}])), "messages[1].role"),
        (
            msgs(
                json!([{"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "nope"}}]}]),
            ),
            "messages[0].tool_calls[0].function.arguments",
        ),
        (msgs(json!([{"role": "user", "name": "bob", "content": "a"}])), "messages[0].name"),
        (msgs(json!([])), "messages"),
    ];
    for (err, param) in cases {
        assert_eq!(err.param, param, "{err:?}");
        assert!(!err.message.is_empty());
    }
}

/// The documented answer shape.
fn completion(body: Value) -> Value {
    completion_as(body, "chatcmpl-7")
}

fn completion_as(body: Value, id: &str) -> Value {
    let out = gemini_response(body.to_string().as_bytes(), "gemini-2.5-flash", id, 1_700_000_000).unwrap();
    serde_json::from_slice(&out).unwrap()
}

#[test]
fn a_text_answer_becomes_a_chat_completion() {
    let got = completion(json!({
        "candidates": [{"content": {"parts": [{"text": "thinking…", "thought": true}, {"text": "AI learns "}, {"text": "patterns."}], "role": "model"},
                        "finishReason": "STOP", "index": 0, "safetyRatings": []}],
        "usageMetadata": {"promptTokenCount": 8, "candidatesTokenCount": 5, "thoughtsTokenCount": 20, "totalTokenCount": 33},
        "modelVersion": "gemini-2.5-flash", "responseId": "abc"
    }));
    assert_eq!(
        got,
        json!({
            "id": "chatcmpl-7", "object": "chat.completion", "created": 1_700_000_000u64, "model": "gemini-2.5-flash",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "AI learns patterns.", "refusal": null},
                         "logprobs": null, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 8, "completion_tokens": 25, "total_tokens": 33}
        })
    );
}

#[test]
fn function_calls_become_tool_calls() {
    let got = completion(json!({
        "candidates": [{"content": {"role": "model", "parts": [
            {"functionCall": {"name": "get_weather", "args": {"location": "Paris"}}, "thoughtSignature": "c2ln"},
            {"functionCall": {"id": "gem-1", "name": "get_time", "args": {}}}
        ]}, "finishReason": "STOP"}],
        "usageMetadata": {"promptTokenCount": 20, "candidatesTokenCount": 10}
    }));
    let choice = &got["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    assert_eq!(choice["message"]["content"], Value::Null);
    let calls = choice["message"]["tool_calls"].as_array().unwrap();
    assert_eq!(calls[0]["id"], "call_chatcmpl-7_0");
    assert_eq!(calls[1]["id"], "gem-1");
    assert_eq!(calls[0]["function"]["name"], "get_weather");
    assert_eq!(calls[0]["function"]["arguments"], "{\"location\":\"Paris\"}");
    assert_eq!(calls[1]["function"]["arguments"], "{}");
}

#[test]
fn finish_reasons_blocked_prompts_and_malformed_answers() {
    for (reason, finish) in [
        ("STOP", "stop"),
        ("MAX_TOKENS", "length"),
        ("SAFETY", "content_filter"),
        ("RECITATION", "content_filter"),
        ("PROHIBITED_CONTENT", "content_filter"),
        ("OTHER", "stop"),
    ] {
        let got = completion(json!({"candidates": [{"content": {"parts": [{"text": "x"}]}, "finishReason": reason}]}));
        assert_eq!(got["choices"][0]["finish_reason"], finish, "{reason}");
    }
    let blocked =
        completion(json!({"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": {"promptTokenCount": 4}}));
    assert_eq!(blocked["choices"][0]["finish_reason"], "content_filter");
    assert_eq!(blocked["choices"][0]["message"]["content"], "");
    assert_eq!(blocked["usage"]["prompt_tokens"], 4);
    for body in [&b"nope"[..], b"{}", br#"{"candidates": "x"}"#, br#"{"error": {"code": 500}}"#] {
        assert!(gemini_response(body, "m", "id", 0).is_err(), "{}", String::from_utf8_lossy(body));
    }
}

/// A documented `alt=sse` stream: text in pieces, then a function call, usage growing, the finish in the last event.
const TEXT_AND_CALL: &str = "data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"Let me\"}],\"role\": \"model\"},\"index\": 0}],\"usageMetadata\": {\"promptTokenCount\": 12,\"totalTokenCount\": 12},\"modelVersion\": \"gemini-2.5-flash\"}\r\n\r\n\
data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \" check the weather.\"}],\"role\": \"model\"},\"index\": 0}],\"usageMetadata\": {\"promptTokenCount\": 12,\"candidatesTokenCount\": 6,\"totalTokenCount\": 18}}\r\n\r\n\
data: {\"candidates\": [{\"content\": {\"parts\": [{\"functionCall\": {\"name\": \"get_weather\",\"args\": {\"location\": \"Paris, FR\"}}}],\"role\": \"model\"},\"finishReason\": \"STOP\",\"index\": 0}],\"usageMetadata\": {\"promptTokenCount\": 12,\"candidatesTokenCount\": 15,\"thoughtsTokenCount\": 3,\"totalTokenCount\": 30}}\r\n\r\n";

fn run(stream: &mut GeminiStream, events: &[(Option<String>, String)]) -> (Vec<u8>, Vec<StreamStatus>) {
    let mut out = Vec::new();
    let statuses = events.iter().map(|(_, data)| stream.event(data, &mut out).unwrap()).collect();
    (out, statuses)
}

#[test]
fn a_stream_with_text_a_function_call_and_usage() {
    let mut stream = GeminiStream::new("gemini-2.5-flash", "chatcmpl-3", 9, true);
    let events = sse_events(&TEXT_AND_CALL.replace('\r', ""));
    assert_eq!(events.len(), 3);
    let (out, statuses) = run(&mut stream, &events);
    assert_eq!(statuses, [StreamStatus::Continue, StreamStatus::Continue, StreamStatus::Finished]);
    let text = String::from_utf8(out.clone()).unwrap();
    assert_eq!(text.matches("data: [DONE]").count(), 1);
    let all = chunks(&out);
    assert_eq!(all[0]["choices"][0]["delta"], json!({"role": "assistant", "content": ""}));
    assert!(all.iter().all(|c| c["id"] == "chatcmpl-3" && c["object"] == "chat.completion.chunk"));
    let whole = assemble(&out);
    assert!(whole.done);
    assert_eq!(whole.text, "Let me check the weather.");
    assert_eq!(whole.finish_reason.as_deref(), Some("tool_calls"));
    assert_eq!(
        whole.tool_calls,
        [("call_chatcmpl-3_0".to_owned(), "get_weather".to_owned(), "{\"location\":\"Paris, FR\"}".to_owned())]
    );
    assert_eq!(whole.usage, Some(json!({"prompt_tokens": 12, "completion_tokens": 18, "total_tokens": 30})));

    let mut more = Vec::new();
    assert_eq!(stream.event(&events[0].1, &mut more), Ok(StreamStatus::Finished));
    assert!(more.is_empty(), "nothing after the finish");
}

#[test]
fn the_stream_says_what_the_answer_says() {
    let mut stream = GeminiStream::new("m", "chatcmpl-3", 9, true);
    let streamed = assemble(&run(&mut stream, &sse_events(&TEXT_AND_CALL.replace('\r', ""))).0);
    let answered = completion_as(
        json!({
            "candidates": [{"content": {"parts": [{"text": "Let me check the weather."},
                {"functionCall": {"name": "get_weather", "args": {"location": "Paris, FR"}}}]}, "finishReason": "STOP"}],
            "usageMetadata": {"promptTokenCount": 12, "candidatesTokenCount": 15, "thoughtsTokenCount": 3}
        }),
        "chatcmpl-3",
    );
    let message = &answered["choices"][0]["message"];
    assert_eq!(message["content"], streamed.text.as_str());
    assert_eq!(answered["choices"][0]["finish_reason"], streamed.finish_reason.as_deref().unwrap());
    assert_eq!(answered["usage"], streamed.usage.unwrap());
    let call = &message["tool_calls"][0];
    assert_eq!(
        (
            call["id"].as_str().unwrap(),
            call["function"]["name"].as_str().unwrap(),
            call["function"]["arguments"].as_str().unwrap()
        ),
        (streamed.tool_calls[0].0.as_str(), streamed.tool_calls[0].1.as_str(), streamed.tool_calls[0].2.as_str())
    );
}

#[tokio::test]
async fn how_the_bytes_arrive_does_not_change_the_output() {
    let translate = |events: Vec<(Option<String>, String)>| {
        let mut stream = GeminiStream::new("m", "id", 1, false);
        run(&mut stream, &events).0
    };
    let reference = translate(sse_events(&TEXT_AND_CALL.replace('\r', "")));
    assert!(!String::from_utf8_lossy(&reference).contains("\"usage\""), "no usage chunk unless asked");
    let bytes = TEXT_AND_CALL.as_bytes();
    for cuts in
        [vec![1], vec![2, 3, 4, 200, 201, 202], (1..bytes.len()).step_by(11).collect(), (1..bytes.len()).collect()]
    {
        assert_eq!(translate(through_sse_reader(bytes, &cuts).await), reference, "cut at {cuts:?}");
    }
}

#[test]
fn how_gemini_splits_the_text_does_not_change_the_answer() {
    let stream_of = |pieces: &[&str]| {
        let mut stream = GeminiStream::new("m", "id", 1, true);
        let mut out = Vec::new();
        for piece in pieces {
            let event = json!({"candidates": [{"content": {"parts": [{"text": piece}], "role": "model"}}]});
            assert_eq!(stream.event(&event.to_string(), &mut out), Ok(StreamStatus::Continue));
        }
        let last = json!({"candidates": [{"content": {"parts": []}, "finishReason": "MAX_TOKENS"}], "usageMetadata": {"promptTokenCount": 2, "candidatesTokenCount": 4}});
        assert_eq!(stream.event(&last.to_string(), &mut out), Ok(StreamStatus::Finished));
        assemble(&out)
    };
    let a = stream_of(&["Grüß ", "Gott 🙂"]);
    assert_eq!(a, stream_of(&["G", "rüß Go", "tt ", "🙂"]));
    assert_eq!(a, stream_of(&["Grüß Gott 🙂"]));
    assert_eq!(a.finish_reason.as_deref(), Some("length"));
}

#[test]
fn errors_and_blocks_inside_a_stream() {
    let mut stream = GeminiStream::new("m", "id", 1, true);
    let mut out = Vec::new();
    let first = r#"{"candidates": [{"content": {"parts": [{"text": "Hi"}]}}]}"#;
    assert_eq!(stream.event(first, &mut out), Ok(StreamStatus::Continue));
    let written = out.len();
    let error = r#"{"error": {"code": 503, "message": "The model is overloaded. Please try again later.", "status": "UNAVAILABLE"}}"#;
    assert_eq!(
        stream.event(error, &mut out),
        Ok(StreamStatus::Failed {
            class: FailureClass::Transient,
            message: "The model is overloaded. Please try again later.".into()
        })
    );
    assert_eq!(out.len(), written, "nothing written for an error, and no [DONE]");

    let mut blocked = GeminiStream::new("m", "id", 1, false);
    let mut out = Vec::new();
    assert_eq!(
        blocked.event(r#"{"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"}}"#, &mut out),
        Ok(StreamStatus::Finished)
    );
    assert_eq!(assemble(&out).finish_reason.as_deref(), Some("content_filter"));
    assert!(GeminiStream::new("m", "id", 1, false).event("{not json", &mut Vec::new()).is_err());
}

#[test]
fn parallel_calls_in_one_event_get_their_own_indexes() {
    let mut stream = GeminiStream::new("m", "chatcmpl-5", 1, false);
    let mut out = Vec::new();
    let event = json!({"candidates": [{"content": {"role": "model", "parts": [
        {"functionCall": {"name": "a", "args": {"x": 1}}, "thoughtSignature": "c2ln"},
        {"functionCall": {"name": "b", "args": {}}}
    ]}, "finishReason": "STOP"}]});
    assert_eq!(stream.event(&event.to_string(), &mut out), Ok(StreamStatus::Finished));
    let whole = assemble(&out);
    assert_eq!(
        whole.tool_calls,
        [
            ("call_chatcmpl-5_0".to_owned(), "a".to_owned(), "{\"x\":1}".to_owned()),
            ("call_chatcmpl-5_1".to_owned(), "b".to_owned(), "{}".to_owned())
        ]
    );
    assert_eq!(whole.finish_reason.as_deref(), Some("tool_calls"));
    let Malformed(why) = gemini_response(br#"{"candidates": "secret-canary"}"#, "m", "id", 0).unwrap_err();
    assert!(!why.contains("secret-canary"), "{why}");
}

#[test]
fn gemini_errors_are_classified() {
    use FailureClass::*;
    let err =
        |code: u16, status: &str, message: &str| json!({"error": {"code": code, "message": message, "status": status}});
    let invalid_key = json!({"error": {"code": 400, "message": "API key not valid. Please pass a valid API key.", "status": "INVALID_ARGUMENT",
        "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID", "domain": "googleapis.com"}]}});
    let cases = [
        (
            429,
            err(
                429,
                "RESOURCE_EXHAUSTED",
                "You exceeded your current quota, please check your plan and billing details.",
            ),
            RateLimited,
        ),
        (503, err(503, "UNAVAILABLE", "The model is overloaded. Please try again later."), Transient),
        (500, err(500, "INTERNAL", "An internal error has occurred."), Transient),
        (504, err(504, "DEADLINE_EXCEEDED", "Deadline exceeded"), Transient),
        (403, err(403, "PERMISSION_DENIED", "Method doesn't allow unregistered callers."), Credential),
        (401, err(401, "UNAUTHENTICATED", "Request had invalid authentication credentials."), Credential),
        (400, invalid_key, Credential),
        (400, err(400, "INVALID_ARGUMENT", "API key expired. Please renew the API key."), Credential),
        (400, err(400, "FAILED_PRECONDITION", "User location is not supported for the API use."), Credential),
        (404, err(404, "NOT_FOUND", "models/gemini-9 is not found for API version v1beta"), ModelNotFound),
        (
            400,
            err(
                400,
                "INVALID_ARGUMENT",
                "The input token count (1200000) exceeds the maximum number of tokens allowed (1048576).",
            ),
            ContextTooLong,
        ),
        (400, err(400, "INVALID_ARGUMENT", "Invalid JSON payload received. Unknown name \"foo\""), CallerFault),
        (
            429,
            json!([{"error": {"code": 429, "message": "Resource has been exhausted", "status": "RESOURCE_EXHAUSTED"}}]),
            RateLimited,
        ),
        (502, json!("<html>Bad Gateway</html>"), Transient),
        (403, json!({}), Credential),
        (400, json!({}), CallerFault),
    ];
    for (status, body, expected) in cases {
        assert_eq!(classify_gemini(status, body.to_string().as_bytes()), expected, "{status} {body}");
    }
}
