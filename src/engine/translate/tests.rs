//! Helpers shared by the providers' tests, and properties of the whole layer.

use actix_web::web::Bytes;
use serde_json::Value;

use super::anthropic::anthropic_request;
use super::gemini::gemini_request;
use crate::engine::upstream::SseReader;

/// `(event name, data)` of each event of a well-formed SSE text (the fixtures).
pub fn sse_events(text: &str) -> Vec<(Option<String>, String)> {
    text.split("\n\n").filter(|e| !e.trim().is_empty()).map(|e| event_parts(e.as_bytes())).collect()
}

fn event_parts(raw: &[u8]) -> (Option<String>, String) {
    let text = String::from_utf8_lossy(raw);
    let mut name = None;
    let mut data = Vec::new();
    for line in text.lines() {
        if let Some(n) = line.strip_prefix("event:") {
            name = Some(n.trim().to_owned());
        } else if let Some(d) = line.strip_prefix("data:") {
            data.push(d.strip_prefix(' ').unwrap_or(d));
        }
    }
    (name, data.join("\n"))
}

/// The events the engine's own SSE reader finds in `bytes` delivered in pieces cut at `cuts`.
pub async fn through_sse_reader(bytes: &[u8], cuts: &[usize]) -> Vec<(Option<String>, String)> {
    let mut pieces = Vec::new();
    let mut at = 0;
    for &cut in cuts.iter().chain(std::iter::once(&bytes.len())) {
        let cut = cut.clamp(at, bytes.len());
        pieces.push(Ok::<_, reqwest::Error>(Bytes::copy_from_slice(&bytes[at..cut])));
        at = cut;
    }
    let mut reader = SseReader::new(futures_util::stream::iter(pieces), 1 << 20);
    let mut events = Vec::new();
    while let Some(event) = reader.next_event().await.unwrap() {
        let (name, _) = event_parts(&event.raw);
        events.push((name, event.data.to_string()));
    }
    events
}

/// The `chat.completion.chunk`s of translated output, checking its SSE framing: `data: {json}\n\n` events, then
/// `data: [DONE]\n\n` at most once and only at the end.
pub fn chunks(out: &[u8]) -> Vec<Value> {
    let text = std::str::from_utf8(out).unwrap();
    assert!(text.is_empty() || text.ends_with("\n\n"), "an event is incomplete: {text}");
    let events: Vec<&str> = text.split_terminator("\n\n").collect();
    let mut chunks = Vec::new();
    for (i, event) in events.iter().enumerate() {
        let data = event.strip_prefix("data: ").unwrap_or_else(|| panic!("not a data event: {event}"));
        assert!(!data.contains('\n'));
        if data == "[DONE]" {
            assert_eq!(i, events.len() - 1, "[DONE] before the end");
            continue;
        }
        chunks.push(serde_json::from_str(data).unwrap());
    }
    chunks
}

/// What a client's SDK would build from the chunks.
#[derive(Debug, Default, PartialEq)]
pub struct Assembled {
    pub text: String,
    /// (id, name, arguments) by index.
    pub tool_calls: Vec<(String, String, String)>,
    pub finish_reason: Option<String>,
    pub usage: Option<Value>,
    pub done: bool,
}

pub fn assemble(out: &[u8]) -> Assembled {
    let mut whole = Assembled { done: out.ends_with(b"data: [DONE]\n\n"), ..Assembled::default() };
    for chunk in chunks(out) {
        if let Some(usage) = chunk.get("usage").filter(|u| !u.is_null()) {
            assert!(whole.usage.is_none(), "usage twice");
            whole.usage = Some(usage.clone());
        }
        let Some(choice) = chunk["choices"].get(0) else { continue };
        assert_eq!(choice["index"], 0);
        if let Some(reason) = choice["finish_reason"].as_str() {
            assert!(whole.finish_reason.is_none(), "finish_reason twice");
            whole.finish_reason = Some(reason.to_owned());
        }
        let delta = &choice["delta"];
        if let Some(text) = delta["content"].as_str() {
            whole.text.push_str(text);
        }
        for call in delta["tool_calls"].as_array().into_iter().flatten() {
            let index = call["index"].as_u64().unwrap() as usize;
            if let Some(id) = call["id"].as_str() {
                assert_eq!(index, whole.tool_calls.len(), "tool calls start in order");
                assert_eq!(call["type"], "function");
                let name = call["function"]["name"].as_str().unwrap();
                whole.tool_calls.push((id.to_owned(), name.to_owned(), String::new()));
            }
            let piece = call["function"]["arguments"].as_str().unwrap();
            whole.tool_calls[index].2.push_str(piece);
        }
    }
    whole
}

mod arbitrary {
    use proptest::prelude::{BoxedStrategy, Just, Strategy, any, prop_oneof};
    use serde_json::{Map, Value, json};

    /// Keys the translators look at, so that arbitrary requests reach deep into them.
    const KEYS: &[&str] = &[
        "messages",
        "role",
        "content",
        "type",
        "text",
        "image_url",
        "url",
        "tool_calls",
        "tool_call_id",
        "id",
        "function",
        "name",
        "arguments",
        "tools",
        "parameters",
        "tool_choice",
        "stop",
        "temperature",
        "top_p",
        "max_tokens",
        "max_completion_tokens",
        "n",
        "response_format",
        "json_schema",
        "schema",
        "user",
        "seed",
        "parallel_tool_calls",
        "strict",
        "description",
        "logprobs",
        "modalities",
    ];
    const STRINGS: &[&str] = &[
        "user",
        "assistant",
        "system",
        "developer",
        "tool",
        "function",
        "text",
        "image_url",
        "auto",
        "none",
        "required",
        "json_object",
        "json_schema",
        "data:image/png;base64,AAAA",
        "data:,x",
        "gs://b/o.png",
        "https://x/y.jpg",
        "{\"a\":1}",
        "[",
        "",
        "text",
    ];

    fn leaf() -> BoxedStrategy<Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
            proptest::sample::select(STRINGS).prop_map(|s| json!(s)),
            "\\PC{0,8}".prop_map(Value::String),
        ]
        .boxed()
    }

    pub fn json() -> BoxedStrategy<Value> {
        leaf()
            .prop_recursive(5, 64, 6, |inner| {
                prop_oneof![
                    proptest::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                    proptest::collection::vec((proptest::sample::select(KEYS), inner), 0..6).prop_map(|kv| {
                        Value::Object(kv.into_iter().map(|(k, v)| (k.to_owned(), v)).collect::<Map<_, _>>())
                    }),
                ]
            })
            .boxed()
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(3000))]
    /// Whatever a client sends, the request translators answer with a body or a refusal; a body is JSON.
    #[test]
    fn request_translators_never_panic(chat in arbitrary::json()) {
        if let Ok(body) = anthropic_request(&chat, "m", 64, true) {
            proptest::prop_assert!(serde_json::from_slice::<Value>(&body).is_ok());
        }
        if let Ok(body) = gemini_request(&chat, false) {
            proptest::prop_assert!(serde_json::from_slice::<Value>(&body).is_ok());
        }
    }
}
