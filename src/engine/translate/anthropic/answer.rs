//! The answer: a whole one, stream events, and errors, back in the OpenAI shape.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::Value;

use crate::engine::classify::FailureClass;
use crate::engine::events::Usage;
use crate::engine::translate::openai::{ChunkWriter, Function, ToolCall, completion};
use crate::engine::translate::{Malformed, StreamStatus};

/// The fields of a Messages answer that the client sees.
#[derive(Deserialize)]
struct Answer<'a> {
    #[serde(borrow)]
    content: Vec<ContentBlock<'a>>,
    #[serde(borrow, default)]
    stop_reason: Option<Cow<'a, str>>,
    #[serde(default)]
    usage: Option<AnthropicUsage>,
}

#[derive(Deserialize)]
struct ContentBlock<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(default)]
    input: Option<Value>,
}

#[derive(Deserialize, Default, Clone, Copy)]
struct AnthropicUsage {
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
    #[serde(default)]
    cache_creation_input_tokens: Option<u64>,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
}

impl AnthropicUsage {
    /// OpenAI's `prompt_tokens` counts cached tokens too; Anthropic's `input_tokens` leaves both cache kinds out.
    fn prompt(&self) -> Option<u64> {
        let parts = [self.input_tokens, self.cache_creation_input_tokens, self.cache_read_input_tokens];
        parts.iter().any(Option::is_some).then(|| parts.iter().flatten().fold(0u64, |a, b| a.saturating_add(*b)))
    }
}

/// `stop_reason` → `finish_reason`. `refusal` (a safety stop) reads as OpenAI's content filter.
fn finish_reason(stop: Option<&str>) -> &'static str {
    match stop {
        Some("max_tokens" | "model_context_window_exceeded") => "length",
        Some("tool_use") => "tool_calls",
        Some("refusal") => "content_filter",
        // end_turn, stop_sequence, pause_turn (only with server tools, which are never sent).
        _ => "stop",
    }
}

/// A Messages answer as a `chat.completion`: text blocks joined, `tool_use` blocks as tool calls (thinking blocks are
/// not part of a chat answer).
pub fn anthropic_response(body: &[u8], model: &str, id: &str, created: u64) -> Result<Vec<u8>, Malformed> {
    let answer: Answer<'_> = serde_json::from_slice(body).map_err(|e| Malformed::json(&e))?;
    let mut text: Option<Cow<'_, str>> = None;
    let mut calls = Vec::new();
    for block in &answer.content {
        match block.kind.as_ref() {
            "text" => {
                let piece = block.text.as_deref().unwrap_or_default();
                match &mut text {
                    None => text = Some(Cow::Borrowed(piece)),
                    Some(t) => t.to_mut().push_str(piece),
                }
            }
            "tool_use" => {
                let arguments = block.input.as_ref().map_or_else(|| "{}".to_owned(), Value::to_string);
                calls.push((block, arguments));
            }
            _ => {}
        }
    }
    let tool_calls = calls
        .iter()
        .map(|(block, arguments)| {
            Ok(ToolCall {
                id: block.id.as_deref().ok_or_else(|| Malformed("a tool_use block without an id".into()))?,
                kind: "function",
                function: Function {
                    name: block.name.as_deref().ok_or_else(|| Malformed("a tool_use block without a name".into()))?,
                    arguments,
                },
            })
        })
        .collect::<Result<Vec<_>, Malformed>>()?;
    let usage = answer.usage.unwrap_or_default();
    let usage =
        Usage { prompt_tokens: usage.prompt().unwrap_or(0), completion_tokens: usage.output_tokens.unwrap_or(0) };
    let finish = finish_reason(answer.stop_reason.as_deref());
    completion(id, created, model, text.as_deref(), tool_calls, finish, usage)
}

/// One Messages stream event, read for what the client sees.
#[derive(Deserialize)]
struct Event<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Cow<'a, str>>,
    #[serde(default)]
    index: Option<u64>,
    #[serde(default)]
    message: Option<StartMessage>,
    #[serde(borrow, default)]
    content_block: Option<ContentBlock<'a>>,
    #[serde(borrow, default)]
    delta: Option<EventDelta<'a>>,
    #[serde(default)]
    usage: Option<AnthropicUsage>,
    #[serde(borrow, default)]
    error: Option<ErrorBody<'a>>,
}

#[derive(Deserialize)]
struct StartMessage {
    #[serde(default)]
    usage: Option<AnthropicUsage>,
}

#[derive(Deserialize)]
struct EventDelta<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    partial_json: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    stop_reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize, Default)]
struct ErrorBody<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    message: Option<Cow<'a, str>>,
}

/// Anthropic's stream events → `chat.completion.chunk` events, one event at a time.
#[derive(Debug)]
pub struct AnthropicStream {
    writer: ChunkWriter,
    /// (content block index, tool call index) of the answer's `tool_use` blocks.
    tools: Vec<(u64, u32)>,
    usage: Usage,
    stop_reason: Option<&'static str>,
    started: bool,
    done: bool,
}

impl AnthropicStream {
    pub fn new(model: &str, id: &str, created: u64, include_usage: bool) -> Self {
        Self {
            writer: ChunkWriter::new(model, id, created, include_usage),
            tools: Vec::new(),
            usage: Usage::default(),
            stop_reason: None,
            started: false,
            done: false,
        }
    }

    /// Translates one event (`event_type` is the SSE `event:` name, used only when the data has no `type`),
    /// appending complete SSE events to `out`.
    pub fn event(
        &mut self,
        event_type: Option<&str>,
        data: &str,
        out: &mut Vec<u8>,
    ) -> Result<StreamStatus, Malformed> {
        if self.done {
            return Ok(StreamStatus::Finished);
        }
        let event: Event<'_> = serde_json::from_str(data).map_err(|e| Malformed::json(&e))?;
        let kind = event.kind.as_deref().or(event_type).unwrap_or_default();
        if !self.started
            && matches!(kind, "content_block_start" | "content_block_delta" | "message_delta" | "message_stop")
        {
            // A stream that skipped `message_start` still begins with the role chunk.
            self.started = true;
            self.writer.role(out);
        }
        match kind {
            "message_start" => {
                if let Some(u) = event.message.as_ref().and_then(|m| m.usage) {
                    self.note_usage(u);
                }
                if !self.started {
                    self.started = true;
                    self.writer.role(out);
                }
            }
            "content_block_start" => {
                let block =
                    event.content_block.ok_or_else(|| Malformed("content_block_start without a block".into()))?;
                match block.kind.as_ref() {
                    "text" => self.writer.text(out, block.text.as_deref().unwrap_or_default()),
                    "tool_use" => {
                        let index = u32::try_from(self.tools.len()).unwrap_or(u32::MAX);
                        let block_index =
                            event.index.ok_or_else(|| Malformed("a block event without an index".into()))?;
                        self.tools.push((block_index, index));
                        let id =
                            block.id.as_deref().ok_or_else(|| Malformed("a tool_use block without an id".into()))?;
                        let name =
                            block.name.as_deref().ok_or_else(|| Malformed("a tool_use block without a name".into()))?;
                        self.writer.tool_start(out, index, id, name);
                        // The input arrives as `input_json_delta` pieces; a block that starts with some carries them.
                        if let Some(input) =
                            block.input.as_ref().filter(|i| i.as_object().is_some_and(|o| !o.is_empty()))
                        {
                            self.writer.tool_arguments(out, index, &input.to_string());
                        }
                    }
                    _ => {}
                }
            }
            "content_block_delta" => {
                let delta = event.delta.ok_or_else(|| Malformed("content_block_delta without a delta".into()))?;
                match delta.kind.as_deref() {
                    Some("text_delta") => self.writer.text(out, delta.text.as_deref().unwrap_or_default()),
                    Some("input_json_delta") => {
                        let block = event.index.ok_or_else(|| Malformed("a block event without an index".into()))?;
                        let tool = self.tools.iter().find(|(b, _)| *b == block).map(|(_, t)| *t);
                        let tool = tool
                            .ok_or_else(|| Malformed("input_json_delta for a block that is not a tool_use".into()))?;
                        self.writer.tool_arguments(out, tool, delta.partial_json.as_deref().unwrap_or_default());
                    }
                    // thinking, signature and citation deltas are not part of a chat answer.
                    _ => {}
                }
            }
            "message_delta" => {
                if let Some(u) = event.usage {
                    self.note_usage(u);
                }
                if let Some(stop) = event.delta.as_ref().and_then(|d| d.stop_reason.as_deref()) {
                    self.stop_reason = Some(finish_reason(Some(stop)));
                }
            }
            "message_stop" => {
                self.done = true;
                self.writer.finish(out, self.stop_reason.unwrap_or("stop"), self.usage);
                return Ok(StreamStatus::Finished);
            }
            "error" => {
                let error = event.error.unwrap_or_default();
                let class = class_of(
                    error.kind.as_deref().unwrap_or_default(),
                    error.message.as_deref().unwrap_or_default(),
                    0,
                );
                let message = error.message.map_or_else(|| "Anthropic reported an error".to_owned(), Cow::into_owned);
                return Ok(StreamStatus::Failed { class, message });
            }
            // ping, content_block_stop, and event types added later.
            _ => {}
        }
        Ok(StreamStatus::Continue)
    }

    /// `message_start` carries the input tokens, `message_delta` the (cumulative) output tokens and sometimes the
    /// input again: the latest value of each wins.
    fn note_usage(&mut self, u: AnthropicUsage) {
        if let Some(prompt) = u.prompt() {
            self.usage.prompt_tokens = prompt;
        }
        if let Some(output) = u.output_tokens {
            self.usage.completion_tokens = output;
        }
    }
}

/// Classifies an Anthropic error answer (`{"type": "error", "error": {"type", "message"}}`): the error type first,
/// the status second, the message last. Retry-After is read from the headers by the caller, as for OpenAI.
pub fn classify_anthropic(status: u16, body: &[u8]) -> FailureClass {
    #[derive(Deserialize, Default)]
    struct Body<'a> {
        #[serde(borrow, default)]
        error: Option<ErrorBody<'a>>,
    }
    let body: Body<'_> = serde_json::from_slice(body).unwrap_or_default();
    let error = body.error.unwrap_or_default();
    class_of(error.kind.as_deref().unwrap_or_default(), error.message.as_deref().unwrap_or_default(), status)
}

/// `status` is 0 for an in-band stream error (there is none).
fn class_of(kind: &str, message: &str, status: u16) -> FailureClass {
    let message = message.to_ascii_lowercase();
    match kind {
        "overloaded_error" | "api_error" | "timeout_error" => return FailureClass::Transient,
        "rate_limit_error" => return FailureClass::RateLimited,
        "authentication_error" | "permission_error" | "billing_error" => return FailureClass::Credential,
        "not_found_error" => return FailureClass::ModelNotFound,
        "invalid_request_error" => {
            if message.contains("prompt is too long") || message.contains("exceed context limit") {
                return FailureClass::ContextTooLong;
            }
            // An account without credit answers 400, not 402.
            if message.contains("credit balance") {
                return FailureClass::Credential;
            }
            return FailureClass::CallerFault;
        }
        "request_too_large" => return FailureClass::CallerFault,
        _ => {}
    }
    match status {
        401..=403 => FailureClass::Credential,
        404 if message.contains("model") => FailureClass::ModelNotFound,
        429 => FailureClass::RateLimited,
        408 | 409 | 500..=599 => FailureClass::Transient,
        // An in-band error of an unknown type: the stream broke, another attempt may do better.
        0 => FailureClass::Transient,
        _ if message.contains("prompt is too long") => FailureClass::ContextTooLong,
        _ => FailureClass::CallerFault,
    }
}
