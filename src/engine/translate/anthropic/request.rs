//! The request: chat completions in, Messages body out.

use std::sync::LazyLock;

use serde::Serialize;
use serde_json::Value;

use crate::engine::translate::{
    Unsupported, common_field, data_url, fields, max_tokens, number, stop_sequences, str_field,
};
use crate::engine::translate::{text_parts, unknown};

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
    // A final assistant turn is a prefill, which Anthropic refuses when it ends with whitespace.
    if let Some(last) = req.messages.last_mut().filter(|t| t.role == "assistant") {
        if let Some(Block::Text { text }) = last.content.last_mut() {
            *text = text.trim_end();
        }
        last.content.retain(|b| !matches!(b, Block::Text { text } if text.is_empty()));
        if last.content.is_empty() {
            req.messages.pop();
        }
    }
    if req.messages.is_empty() {
        return Err(Unsupported::new("messages", "Anthropic needs at least one user or assistant message"));
    }
    let mut out = Vec::with_capacity(256);
    serde_json::to_writer(&mut out, &req).map_err(|e| Unsupported::new("", format!("could not encode: {e}")))?;
    Ok(out)
}

fn tools(value: &Value) -> Result<Vec<Tool<'_>>, Unsupported> {
    Ok(super::super::function_tools(value, "Anthropic")?
        .into_iter()
        .map(|f| Tool {
            name: f.name,
            description: f.description,
            input_schema: f.parameters.unwrap_or(&NO_PARAMETERS),
        })
        .collect())
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
        let content_at = || format!("{}.content", at());
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
                    tool_uses(calls, &at, &mut blocks)?;
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

fn user_blocks<'a>(content: &'a Value, at: &dyn Fn() -> String) -> Result<Vec<Block<'a>>, Unsupported> {
    let Value::Array(parts) = content else {
        return Ok(text_parts(content, at, PROVIDER)?
            .into_iter()
            .filter(|t| !t.is_empty())
            .map(|text| Block::Text { text })
            .collect());
    };
    let mut blocks = Vec::with_capacity(parts.len());
    for (i, part) in parts.iter().enumerate() {
        let at = || format!("{}[{i}]", at());
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
                blocks.push(Block::Image { source: image(url, &|| format!("{}.url", url_at()))? });
            }
            Some(other) => {
                return Err(Unsupported::new(at(), format!("a `{other}` part has no Anthropic equivalent")));
            }
            None => return Err(Unsupported::new(format!("{}.type", at()), "a content part needs a `type`")),
        }
    }
    Ok(blocks)
}

fn image<'a>(url: &'a str, at: &dyn Fn() -> String) -> Result<ImageSource<'a>, Unsupported> {
    if let Some((media_type, data)) = data_url(url) {
        if !IMAGE_TYPES.contains(&media_type) {
            return Err(Unsupported::new(
                at(),
                format!("Anthropic takes JPEG, PNG, GIF or WebP images, not `{media_type}`"),
            ));
        }
        return Ok(ImageSource::Base64 { media_type, data });
    }
    if url.starts_with("https://") || url.starts_with("http://") {
        return Ok(ImageSource::Url { url });
    }
    Err(Unsupported::new(at(), "an image must be a base64 data URL or an http(s) URL"))
}

fn tool_uses<'a>(calls: &'a Value, at: &dyn Fn() -> String, blocks: &mut Vec<Block<'a>>) -> Result<(), Unsupported> {
    for call in super::super::assistant_calls(calls, at, PROVIDER)? {
        let id = call.id.ok_or_else(|| Unsupported::new(format!("{}.id", call.at), "`id` must be a string"))?;
        blocks.push(Block::ToolUse { id, name: call.name, input: call.arguments });
    }
    Ok(())
}
