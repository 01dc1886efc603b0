//! Anthropic's Messages API (`POST /v1/messages`) as the mock speaks it: the request checks, the `message` object,
//! the typed stream events (`event: <type>` + `data: <json>`) and `{"type":"error","error":{..}}` bodies.

use std::borrow::Cow;

use serde_json::{Value, json};

use super::answers;
use super::dialect::{Invalid, Stop, TOOL_INPUT_PIECES, cut, output_tokens, text_chars};

pub(super) const MISSING_KEY: &str = "x-api-key header is required";
pub(super) const INVALID_KEY: &str = "invalid x-api-key";
pub(super) const NO_CREDIT: &str = "Your credit balance is too low to access the Anthropic API. Please go to Plans & \
                                    Billing to upgrade or purchase credits.";
pub(super) const VERSION_REQUIRED: &str = "anthropic-version: header is required";
pub(super) const BAD_JSON: &str = "There was an issue with the request body: it is not valid JSON.";
pub(super) const MODEL_REQUIRED: &str = "model: Field required";
pub(super) const OVERLOADED: &str = "Overloaded";
pub(super) const NOT_FOUND: &str = "Not found";

/// Anthropic's error types; a scripted error's `type` is kept when it is one of these.
const ERROR_TYPES: [&str; 10] = [
    "invalid_request_error",
    "authentication_error",
    "billing_error",
    "permission_error",
    "not_found_error",
    "request_too_large",
    "rate_limit_error",
    "api_error",
    "timeout_error",
    "overloaded_error",
];

/// The error type Anthropic sends with `status`.
pub(super) fn error_type(status: u16) -> &'static str {
    match status {
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        504 => "timeout_error",
        503 | 529 => "overloaded_error",
        500..=599 => "api_error",
        _ => "invalid_request_error",
    }
}

pub(super) fn default_message(status: u16) -> &'static str {
    match status {
        401 => INVALID_KEY,
        403 => "Your API key does not have permission to use the specified resource.",
        404 => "model: {model}",
        413 => "Request exceeds the maximum allowed number of bytes.",
        429 => {
            "This request would exceed the rate limit for your organization of 50 requests per minute. For details, \
                refer to: https://docs.claude.com/en/api/rate-limits."
        }
        503 | 529 => OVERLOADED,
        504 => "Request timed out",
        500..=599 => "Internal server error",
        _ => "Invalid request",
    }
}

fn error_value(status: u16, kind: Option<&str>, message: &str) -> Value {
    let r#type = kind.filter(|k| ERROR_TYPES.contains(k)).unwrap_or_else(|| error_type(status));
    json!({"type": "error", "error": {"type": r#type, "message": message}})
}

/// `{"type":"error","error":{"type","message"}}`.
pub(super) fn write_error(out: &mut Vec<u8>, status: u16, kind: Option<&str>, message: &str) {
    let _ = serde_json::to_writer(&mut *out, &error_value(status, kind, message));
}

/// What a Messages request asks for.
#[derive(Debug)]
pub(super) struct Request {
    pub prompt_tokens: u32,
    pub last_is_assistant: bool,
    pub answer: &'static str,
    pub stop: Stop,
}

fn message_role(message: &Value) -> Option<&str> {
    message.get("role").and_then(Value::as_str)
}

fn has_block(content: &Value, r#type: &str) -> bool {
    content
        .as_array()
        .is_some_and(|blocks| blocks.iter().any(|b| b.get("type").and_then(Value::as_str) == Some(r#type)))
}

fn strings(value: Option<&Value>, field: &'static str) -> Result<Vec<String>, Invalid> {
    match value {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| i.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .ok_or(Cow::Owned(format!("{field}: Input should be a valid list of strings"))),
        Some(_) => Err(Cow::Owned(format!("{field}: Input should be a valid list"))),
    }
}

/// The tool a request forces with `tool_choice` (`{"type":"tool","name"}` or `{"type":"any"}`), if any.
fn forced_tool(body: &Value) -> Result<Option<String>, Invalid> {
    let tools = match body.get("tools") {
        None | Some(Value::Null) => &[][..],
        Some(Value::Array(tools)) => tools.as_slice(),
        Some(_) => return Err("tools: Input should be a valid list".into()),
    };
    let Some(choice) = body.get("tool_choice").filter(|c| !c.is_null()) else { return Ok(None) };
    let forced = match choice.get("type").and_then(Value::as_str) {
        Some("auto" | "none") => return Ok(None),
        Some("tool") => match choice.get("name").and_then(Value::as_str) {
            Some(name) => name.to_owned(),
            None => return Err("tool_choice.tool.name: Field required".into()),
        },
        Some("any") => match tools.first().and_then(|t| t.get("name")).and_then(Value::as_str) {
            Some(name) => name.to_owned(),
            None => String::new(),
        },
        _ => {
            return Err(
                "tool_choice: Input tag does not match any of the expected tags: 'auto', 'any', 'tool', 'none'".into(),
            );
        }
    };
    if tools.is_empty() {
        return Err("tool_choice may only be specified while providing tools.".into());
    }
    Ok(Some(forced))
}

/// Checks a Messages request body (its `model` was checked before) and works out the answer.
pub(super) fn parse(body: &Value) -> Result<Request, Invalid> {
    let max_tokens = match body.get("max_tokens") {
        None | Some(Value::Null) => return Err("max_tokens: Field required".into()),
        Some(v) => match (v.as_u64(), v.as_i64()) {
            (Some(n), _) if n >= 1 => n,
            (_, Some(_)) => return Err("max_tokens: Input should be greater than or equal to 1".into()),
            _ => return Err("max_tokens: Input should be a valid integer".into()),
        },
    };
    let messages = match body.get("messages") {
        None | Some(Value::Null) => return Err("messages: Field required".into()),
        Some(Value::Array(messages)) if messages.is_empty() => {
            return Err("messages: at least one message is required".into());
        }
        Some(Value::Array(messages)) => messages,
        Some(_) => return Err("messages: Input should be a valid list".into()),
    };
    for (i, message) in messages.iter().enumerate() {
        if !matches!(message_role(message), Some("user" | "assistant")) {
            return Err(format!("messages.{i}.role: Input should be 'user' or 'assistant'").into());
        }
        match message.get("content") {
            Some(Value::String(_) | Value::Array(_)) => {}
            None | Some(Value::Null) => return Err(format!("messages.{i}.content: Field required").into()),
            Some(_) => return Err(format!("messages.{i}.content: Input should be a valid list").into()),
        }
    }
    let system = match body.get("system") {
        None | Some(Value::Null) => 0,
        Some(system @ (Value::String(_) | Value::Array(_))) => text_chars(system),
        Some(_) => return Err("system: Input should be a valid list".into()),
    };
    let stop_sequences = strings(body.get("stop_sequences"), "stop_sequences")?;
    let forced = forced_tool(body)?;

    let chars = system + messages.iter().filter_map(|m| m.get("content")).map(text_chars).sum::<usize>();
    let mut request = Request {
        prompt_tokens: answers::tokens_of_chars(chars),
        last_is_assistant: false,
        answer: answers::FULL_ANSWER,
        stop: Stop::End,
    };
    let last = messages.last();
    let content = last.and_then(|m| m.get("content")).unwrap_or(&Value::Null);
    let text = answers::content_text(content);
    if last.and_then(message_role) == Some("assistant") {
        if text.as_deref().is_some_and(|t| t.ends_with(char::is_whitespace)) {
            return Err("messages: final assistant content cannot end with trailing whitespace".into());
        }
        request.last_is_assistant = true;
        request.answer = answers::answer_after(text.as_deref());
    } else if has_block(content, "tool_result") {
        // A tool's result: the model answers in text.
    } else if let Some(tool) = forced {
        request.stop = Stop::Tool(tool);
        return Ok(request);
    } else if let Some(answer) = text.as_deref().and_then(answers::answer_to_instruction) {
        request.answer = answer;
    }
    (request.answer, request.stop) = cut(request.answer, &stop_sequences, Some(max_tokens));
    Ok(request)
}

fn stop_reason(stop: &Stop) -> &'static str {
    match stop {
        Stop::End => "end_turn",
        Stop::MaxTokens => "max_tokens",
        Stop::Sequence(_) => "stop_sequence",
        Stop::Tool(_) => "tool_use",
    }
}

fn stop_sequence(stop: &Stop) -> Value {
    match stop {
        Stop::Sequence(s) => Value::String(s.clone()),
        _ => Value::Null,
    }
}

pub(super) fn message_id(n: u64) -> String {
    format!("msg_mock{n:016}")
}

fn tool_use_id(n: u64) -> String {
    format!("toolu_mock{n:014}")
}

fn usage(input_tokens: u32, output_tokens: usize) -> Value {
    json!({"input_tokens": input_tokens, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
           "output_tokens": output_tokens})
}

/// A `message` object answering with `text` (or the forced tool call).
pub(super) fn write_message(out: &mut Vec<u8>, n: u64, model: &str, text: &str, stop: &Stop, input_tokens: u32) {
    let content = match stop {
        Stop::Tool(name) => json!([{"type": "tool_use", "id": tool_use_id(n), "name": name, "input": {"mock": true}}]),
        _ if text.is_empty() => json!([]),
        _ => json!([{"type": "text", "text": text}]),
    };
    let message = json!({
        "id": message_id(n), "type": "message", "role": "assistant", "model": model, "content": content,
        "stop_reason": stop_reason(stop), "stop_sequence": stop_sequence(stop),
        "usage": usage(input_tokens, output_tokens(text, stop)),
    });
    let _ = serde_json::to_writer(&mut *out, &message);
}

fn event(ev: &mut Vec<u8>, kind: &str, data: &Value) {
    ev.extend_from_slice(b"event: ");
    ev.extend_from_slice(kind.as_bytes());
    ev.extend_from_slice(b"\ndata: ");
    let _ = serde_json::to_writer(&mut *ev, data);
    ev.extend_from_slice(b"\n\n");
}

/// Anthropic's keep-alive event.
pub(super) const PING_EVENT: &[u8] = b"event: ping\ndata: {\"type\": \"ping\"}\n\n";
pub(super) const MALFORMED_EVENT: &[u8] = b"event: content_block_delta\ndata: {not json\n\n";

/// The events of a streamed message: `message_start`, `content_block_start`, `ping`, one `content_block_delta` per
/// piece, `content_block_stop`, `message_delta`, `message_stop`.
pub(super) struct Events {
    n: u64,
    model: String,
    input_tokens: u32,
    stop: Stop,
    /// A content block was opened (an empty answer has none).
    block: bool,
}

impl Events {
    pub(super) fn new(n: u64, model: &str, input_tokens: u32, stop: Stop) -> Self {
        Self { n, model: model.to_owned(), input_tokens, stop, block: false }
    }

    /// The streamed pieces: the answer's words, or the tool input's JSON fragments.
    pub(super) fn pieces(&self, text: &'static str) -> Vec<&'static str> {
        match self.stop {
            Stop::Tool(_) => TOOL_INPUT_PIECES.to_vec(),
            _ => answers::pieces(text).collect(),
        }
    }

    /// `message_start`, the content block's start (when there are `pieces`), `ping`.
    pub(super) fn start(&mut self, ev: &mut Vec<u8>, pieces: usize) {
        let message = json!({
            "id": message_id(self.n), "type": "message", "role": "assistant", "model": self.model, "content": [],
            "stop_reason": null, "stop_sequence": null, "usage": usage(self.input_tokens, 1),
        });
        event(ev, "message_start", &json!({"type": "message_start", "message": message}));
        let block = match &self.stop {
            Stop::Tool(name) => json!({"type": "tool_use", "id": tool_use_id(self.n), "name": name, "input": {}}),
            _ if pieces == 0 => Value::Null,
            _ => json!({"type": "text", "text": ""}),
        };
        if !block.is_null() {
            self.block = true;
            event(
                ev,
                "content_block_start",
                &json!({"type": "content_block_start", "index": 0, "content_block": block}),
            );
        }
        ev.extend_from_slice(PING_EVENT);
    }

    pub(super) fn piece(&self, ev: &mut Vec<u8>, piece: &str) {
        let delta = match self.stop {
            Stop::Tool(_) => json!({"type": "input_json_delta", "partial_json": piece}),
            _ => json!({"type": "text_delta", "text": piece}),
        };
        event(ev, "content_block_delta", &json!({"type": "content_block_delta", "index": 0, "delta": delta}));
    }

    /// `content_block_stop`, then (unless `missing_done`) `message_delta` and `message_stop`.
    pub(super) fn finish(&self, ev: &mut Vec<u8>, output_tokens: usize, missing_done: bool) {
        if self.block {
            event(ev, "content_block_stop", &json!({"type": "content_block_stop", "index": 0}));
        }
        if missing_done {
            return;
        }
        let delta = json!({"stop_reason": stop_reason(&self.stop), "stop_sequence": stop_sequence(&self.stop)});
        event(
            ev,
            "message_delta",
            &json!({"type": "message_delta", "delta": delta, "usage": {"output_tokens": output_tokens}}),
        );
        event(ev, "message_stop", &json!({"type": "message_stop"}));
    }

    /// The in-band `event: error` Anthropic sends when a stream fails midway.
    pub(super) fn error(&self, ev: &mut Vec<u8>, status: u16, message: &str) {
        event(ev, "error", &error_value(status, None, message));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_checked_like_anthropic_does() {
        let ok = json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]});
        let r = parse(&ok).unwrap();
        assert_eq!((r.answer, &r.stop), ("alpha bravo charlie delta echo", &Stop::MaxTokens));
        for (body, message) in [
            (json!({"messages": []}), "max_tokens: Field required"),
            (json!({"max_tokens": 0}), "max_tokens: Input should be greater than or equal to 1"),
            (json!({"max_tokens": "5"}), "max_tokens: Input should be a valid integer"),
            (json!({"max_tokens": 5}), "messages: Field required"),
            (json!({"max_tokens": 5, "messages": []}), "messages: at least one message is required"),
            (json!({"max_tokens": 5, "messages": [{"role": "system", "content": "x"}]}), "messages.0.role"),
            (json!({"max_tokens": 5, "messages": [{"role": "user"}]}), "messages.0.content: Field required"),
            (
                json!({"max_tokens": 5, "messages": [{"role": "user", "content": "x"},
                                                     {"role": "assistant", "content": "alpha "}]}),
                "trailing whitespace",
            ),
            (
                json!({"max_tokens": 5, "messages": [{"role": "user", "content": "x"}], "tool_choice": {"type": "any"}}),
                "tool_choice may only be specified while providing tools.",
            ),
        ] {
            let error = parse(&body).unwrap_err();
            assert!(error.contains(message), "{body}: {error}");
        }
    }

    #[test]
    fn tools_are_called_when_forced_and_results_answered() {
        let tools = json!([{"name": "get_weather", "input_schema": {"type": "object"}}]);
        let mut body = json!({"max_tokens": 99, "messages": [{"role": "user", "content": "weather?"}], "tools": tools,
                              "tool_choice": {"type": "any"}});
        assert_eq!(parse(&body).unwrap().stop, Stop::Tool("get_weather".to_owned()));
        body["tool_choice"] = json!({"type": "auto"});
        assert_eq!(parse(&body).unwrap().stop, Stop::End);
        body["tool_choice"] = json!({"type": "tool", "name": "other"});
        body["messages"] = json!([{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t",
                                                                 "content": "sunny"}]}]);
        assert_eq!(parse(&body).unwrap().stop, Stop::End);
    }
}
