//! Anthropic Messages (`POST /v1/messages`, `anthropic-version: 2023-06-01`, key in `x-api-key`).

use std::borrow::Cow;
use std::sync::LazyLock;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::openai::{ChunkWriter, Completion, Function, Message, ToolCall, write_json};
use super::{Malformed, Unsupported, common_field, data_url, fields, max_tokens, number, stop_sequences, str_field};
use super::{StreamStatus, text_parts, unknown};
use crate::engine::classify::FailureClass;
use crate::engine::events::Usage;

const PROVIDER: &str = "Anthropic";

#[derive(Serialize)]
struct Request<'a> {
    model: &'a str,
    max_tokens: u64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    system: Vec<Text<'a>>,
    messages: Vec<Turn<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stop_sequences: Option<Vec<&'a str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<&'a Value>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    stream: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<Tool<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<ToolChoice<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<Metadata<'a>>,
}

#[derive(Serialize)]
struct Text<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    text: &'a str,
}

fn text(text: &str) -> Text<'_> {
    Text { kind: "text", text }
}

#[derive(Serialize)]
struct Turn<'a> {
    role: &'static str,
    content: Vec<Block<'a>>,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Block<'a> {
    Text { text: &'a str },
    Image { source: ImageSource<'a> },
    ToolUse { id: &'a str, name: &'a str, input: Value },
    ToolResult { tool_use_id: &'a str, content: Vec<Text<'a>> },
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ImageSource<'a> {
    Base64 { media_type: &'a str, data: &'a str },
    Url { url: &'a str },
}

#[derive(Serialize)]
struct Tool<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a str>,
    input_schema: &'a Value,
}

#[derive(Serialize)]
struct ToolChoice<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    disable_parallel_tool_use: bool,
}

#[derive(Serialize)]
struct Metadata<'a> {
    user_id: &'a str,
}

/// A function without `parameters` takes no arguments; Anthropic requires a schema.
static NO_PARAMETERS: LazyLock<Value> = LazyLock::new(|| serde_json::json!({"type": "object", "properties": {}}));

const IMAGE_TYPES: &[&str] = &["image/jpeg", "image/png", "image/gif", "image/webp"];

/// The Messages request body for a chat completions request. Anthropic requires `max_tokens`: without one in the
/// request, `default_max_tokens` is sent.
pub fn anthropic_request(
    chat: &Value,
    model: &str,
    default_max_tokens: u32,
    stream: bool,
) -> Result<Vec<u8>, Unsupported> {
    let mut req = Request {
        model,
        max_tokens: max_tokens(chat)?.unwrap_or(u64::from(default_max_tokens)),
        system: Vec::new(),
        messages: Vec::new(),
        stop_sequences: None,
        temperature: None,
        top_p: None,
        stream,
        tools: Vec::new(),
        tool_choice: None,
        metadata: None,
    };
    let (mut messages, mut tool_choice, mut parallel) = (None, None, true);
    for (key, value) in fields(chat)? {
        if common_field(key, value, PROVIDER)? {
            continue;
        }
        match key {
            "messages" => messages = Some(value),
            "max_tokens" | "max_completion_tokens" => {}
            "temperature" => {
                let t = number(key, value)?;
                if !(0.0..=1.0).contains(&t) {
                    return Err(Unsupported::new(key, "Anthropic accepts a `temperature` from 0 to 1"));
                }
                req.temperature = Some(value);
            }
            "top_p" => {
                number(key, value)?;
                req.top_p = Some(value);
            }
            "stop" => req.stop_sequences = Some(stop_sequences(value)?),
            "tools" => req.tools = tools(value)?,
            "tool_choice" => tool_choice = Some(value),
            "parallel_tool_calls" => {
                parallel =
                    value.as_bool().ok_or_else(|| Unsupported::new(key, "`parallel_tool_calls` must be a boolean"))?
            }
            "user" => {
                let user_id = value.as_str().ok_or_else(|| Unsupported::new(key, "`user` must be a string"))?;
                req.metadata = Some(Metadata { user_id });
            }
            "response_format" => match value.get("type").and_then(Value::as_str) {
                Some("text") => {}
                _ => {
                    return Err(Unsupported::new(
                        "response_format",
                        "Anthropic has no JSON response format (`json_object` / `json_schema`)",
                    ));
                }
            },
            "presence_penalty" | "frequency_penalty" if value.as_f64() == Some(0.0) => {}
            "presence_penalty" | "frequency_penalty" | "seed" => {
                return Err(Unsupported::new(key, format!("`{key}` has no Anthropic equivalent")));
            }
            _ => return Err(unknown(key, PROVIDER)),
        }
    }
    req.tool_choice = choice(tool_choice, parallel, !req.tools.is_empty())?;
    let messages = messages
        .and_then(Value::as_array)
        .ok_or_else(|| Unsupported::new("messages", "`messages` must be an array"))?;
    turns(messages, &mut req)?;
    if req.messages.is_empty() {
        return Err(Unsupported::new("messages", "Anthropic needs at least one user or assistant message"));
    }
    let mut out = Vec::with_capacity(256);
    serde_json::to_writer(&mut out, &req).map_err(|e| Unsupported::new("", format!("could not encode: {e}")))?;
    Ok(out)
}

fn tools(value: &Value) -> Result<Vec<Tool<'_>>, Unsupported> {
    let list = value.as_array().ok_or_else(|| Unsupported::new("tools", "`tools` must be an array"))?;
    list.iter()
        .enumerate()
        .map(|(i, t)| {
            let at = || format!("tools[{i}]");
            if t.get("type").and_then(Value::as_str) != Some("function") {
                return Err(Unsupported::new(
                    format!("{}.type", at()),
                    "only `function` tools have an Anthropic equivalent",
                ));
            }
            let f = t.get("function").ok_or_else(|| Unsupported::new(format!("{}.function", at()), "missing"))?;
            if f.get("strict").and_then(Value::as_bool) == Some(true) {
                return Err(Unsupported::new(
                    format!("{}.function.strict", at()),
                    "Anthropic cannot guarantee arguments that match the schema (`strict: true`)",
                ));
            }
            Ok(Tool {
                name: str_field(f, "name", &|| format!("{}.function", at()))?,
                description: f.get("description").and_then(Value::as_str),
                input_schema: f.get("parameters").filter(|p| !p.is_null()).unwrap_or(&NO_PARAMETERS),
            })
        })
        .collect()
}

fn choice(value: Option<&Value>, parallel: bool, has_tools: bool) -> Result<Option<ToolChoice<'_>>, Unsupported> {
    let bad = || Unsupported::new("tool_choice", "`tool_choice` must be none, auto, required or a named function");
    let (kind, name) = match value {
        None => ("auto", None),
        Some(Value::String(s)) => match s.as_str() {
            "none" => ("none", None),
            "auto" => ("auto", None),
            "required" => ("any", None),
            _ => return Err(bad()),
        },
        Some(v) if v.get("type").and_then(Value::as_str) == Some("function") => {
            ("tool", Some(v.pointer("/function/name").and_then(Value::as_str).ok_or_else(bad)?))
        }
        Some(_) => return Err(bad()),
    };
    if !has_tools {
        return match value {
            Some(_) if kind != "none" => Err(Unsupported::new("tool_choice", "`tool_choice` needs `tools`")),
            // Without tools, "none" and parallelism mean nothing.
            _ => Ok(None),
        };
    }
    let disable_parallel_tool_use = !parallel && kind != "none";
    if value.is_none() && !disable_parallel_tool_use {
        return Ok(None);
    }
    Ok(Some(ToolChoice { kind, name, disable_parallel_tool_use }))
}

/// Messages to turns. System and developer messages lead the conversation (Anthropic's top-level `system`); tool
/// results are user turns; consecutive turns of one role are merged, as Anthropic expects.
fn turns<'a>(messages: &'a [Value], req: &mut Request<'a>) -> Result<(), Unsupported> {
    for (i, m) in messages.iter().enumerate() {
        let at = || format!("messages[{i}]");
        for (key, value) in m.as_object().ok_or_else(|| Unsupported::new(at(), "a message must be an object"))? {
            match key.as_str() {
                "role" | "content" | "tool_calls" | "tool_call_id" => {}
                _ if value.is_null() => {}
                "name" => {
                    return Err(Unsupported::new(format!("{}.name", at()), "Anthropic has no participant names"));
                }
                _ => {
                    return Err(Unsupported::new(
                        format!("{}.{key}", at()),
                        format!("`{key}` has no Anthropic equivalent"),
                    ));
                }
            }
        }
        let content = m.get("content").unwrap_or(&Value::Null);
        let content_at = format!("{}.content", at());
        let (role, mut blocks) = match m.get("role").and_then(Value::as_str) {
            Some("system" | "developer") => {
                if !req.messages.is_empty() {
                    return Err(Unsupported::new(
                        format!("{}.role", at()),
                        "Anthropic takes system instructions only before the conversation",
                    ));
                }
                req.system.extend(
                    text_parts(content, &content_at, PROVIDER)?.into_iter().filter(|t| !t.is_empty()).map(text),
                );
                continue;
            }
            Some("user") => ("user", user_blocks(content, &content_at)?),
            Some("assistant") => {
                let mut blocks: Vec<Block<'a>> = text_parts(content, &content_at, PROVIDER)?
                    .into_iter()
                    .filter(|t| !t.is_empty())
                    .map(|text| Block::Text { text })
                    .collect();
                if let Some(calls) = m.get("tool_calls").filter(|c| !c.is_null()) {
                    tool_uses(calls, &at(), &mut blocks)?;
                }
                ("assistant", blocks)
            }
            Some("tool") => {
                let id = str_field(m, "tool_call_id", &at)?;
                let content = text_parts(content, &content_at, PROVIDER)?
                    .into_iter()
                    .filter(|t| !t.is_empty())
                    .map(text)
                    .collect();
                ("user", vec![Block::ToolResult { tool_use_id: id, content }])
            }
            _ => {
                return Err(Unsupported::new(
                    format!("{}.role", at()),
                    "the role must be system, developer, user, assistant or tool",
                ));
            }
        };
        match req.messages.last_mut() {
            _ if blocks.is_empty() => {}
            Some(last) if last.role == role => last.content.append(&mut blocks),
            _ => req.messages.push(Turn { role, content: blocks }),
        }
    }
    Ok(())
}

fn user_blocks<'a>(content: &'a Value, at: &str) -> Result<Vec<Block<'a>>, Unsupported> {
    let Value::Array(parts) = content else {
        return Ok(text_parts(content, at, PROVIDER)?
            .into_iter()
            .filter(|t| !t.is_empty())
            .map(|text| Block::Text { text })
            .collect());
    };
    let mut blocks = Vec::with_capacity(parts.len());
    for (i, part) in parts.iter().enumerate() {
        let at = || format!("{at}[{i}]");
        match part.get("type").and_then(Value::as_str) {
            Some("text") => {
                let text = str_field(part, "text", &at)?;
                if !text.is_empty() {
                    blocks.push(Block::Text { text });
                }
            }
            Some("image_url") => {
                let url_at = || format!("{}.image_url", at());
                let url = part.get("image_url").map_or(Ok(""), |i| str_field(i, "url", &url_at))?;
                blocks.push(Block::Image { source: image(url, &format!("{}.url", url_at()))? });
            }
            Some(other) => {
                return Err(Unsupported::new(at(), format!("a `{other}` part has no Anthropic equivalent")));
            }
            None => return Err(Unsupported::new(format!("{}.type", at()), "a content part needs a `type`")),
        }
    }
    Ok(blocks)
}

fn image<'a>(url: &'a str, at: &str) -> Result<ImageSource<'a>, Unsupported> {
    if let Some((media_type, data)) = data_url(url) {
        if !IMAGE_TYPES.contains(&media_type) {
            return Err(Unsupported::new(
                at,
                format!("Anthropic takes JPEG, PNG, GIF or WebP images, not `{media_type}`"),
            ));
        }
        return Ok(ImageSource::Base64 { media_type, data });
    }
    if url.starts_with("https://") || url.starts_with("http://") {
        return Ok(ImageSource::Url { url });
    }
    Err(Unsupported::new(at, "an image must be a base64 data URL or an http(s) URL"))
}

fn tool_uses<'a>(calls: &'a Value, at: &str, blocks: &mut Vec<Block<'a>>) -> Result<(), Unsupported> {
    let calls = calls.as_array().ok_or_else(|| Unsupported::new(format!("{at}.tool_calls"), "must be an array"))?;
    for (j, call) in calls.iter().enumerate() {
        let at = || format!("{at}.tool_calls[{j}]");
        if call.get("type").and_then(Value::as_str).is_some_and(|t| t != "function") {
            return Err(Unsupported::new(format!("{}.type", at()), "only function calls have an Anthropic equivalent"));
        }
        let f = call.get("function").ok_or_else(|| Unsupported::new(format!("{}.function", at()), "missing"))?;
        let f_at = || format!("{}.function", at());
        let arguments = str_field(f, "arguments", &f_at)?;
        let input = match serde_json::from_str::<Value>(if arguments.trim().is_empty() { "{}" } else { arguments }) {
            Ok(v @ Value::Object(_)) => v,
            _ => {
                return Err(Unsupported::new(
                    format!("{}.arguments", f_at()),
                    "Anthropic needs a tool call's arguments as a JSON object",
                ));
            }
        };
        blocks.push(Block::ToolUse { id: str_field(call, "id", &at)?, name: str_field(f, "name", &f_at)?, input });
    }
    Ok(())
}

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
    let content = match (&text, tool_calls.is_empty()) {
        (None, false) => None,
        (t, _) => Some(t.as_deref().unwrap_or_default()),
    };
    write_json(&Completion {
        id,
        object: "chat.completion",
        created,
        model,
        choices: [super::openai::Choice {
            index: 0,
            message: Message { role: "assistant", content, refusal: None, tool_calls },
            logprobs: None,
            finish_reason: finish_reason(answer.stop_reason.as_deref()),
        }],
        usage: usage.into(),
    })
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

#[cfg(test)]
mod tests;
