//! Chat completions ⇄ other providers' dialects (Anthropic Messages, Gemini `generateContent`), as pure functions:
//! request bodies out, answers and stream events back in the OpenAI shape. Whatever has no equivalent upstream is
//! refused with the field it came from ([`Unsupported`]), never dropped; fields that cannot change the answer
//! (`user`, `store`, `metadata`, …) are the only ones ignored.

pub mod anthropic;
pub mod gemini;
mod openai;

use serde_json::{Map, Value};

use crate::engine::classify::FailureClass;

/// What one provider stream event meant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamStatus {
    /// More to come.
    Continue,
    /// The answer is complete: its finish chunk (and usage chunk) and `data: [DONE]` have been written. Later events
    /// are ignored.
    Finished,
    /// The provider reported an error inside the stream: nothing was written for it and no `[DONE]` will be, so the
    /// engine can treat it like a chat stream's in-band error (rescue, or end with its own error event).
    Failed { class: FailureClass, message: String },
}

/// A chat request field (or value) the provider has no equivalent for. Rendered by the caller as an OpenAI-style 400
/// with `param`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsupported {
    /// Where the field is, as a path into the request (`messages[2].content[0].image_url.url`).
    pub param: String,
    pub message: String,
}

impl Unsupported {
    fn new(param: impl Into<String>, message: impl Into<String>) -> Self {
        Self { param: param.into(), message: message.into() }
    }
}

/// A provider answer or stream event that is not what its API documents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed(pub String);

impl Malformed {
    fn json(e: &serde_json::Error) -> Self {
        // Where and what kind, not serde's message: that can quote the answer's text, which must not reach the logs.
        Self(format!("not a valid answer ({:?} error at line {}, column {})", e.classify(), e.line(), e.column()))
    }
}

/// Fields that cannot change what the model answers: accepted and not sent on.
const IGNORED: &[&str] = &[
    "model",
    "stream",
    "stream_options",
    "store",
    "metadata",
    "service_tier",
    "prompt_cache_key",
    "safety_identifier",
    "prediction",
];

/// One `function` tool of the request, as every provider declares it.
struct FunctionTool<'a> {
    name: &'a str,
    description: Option<&'a str>,
    /// The JSON Schema of its arguments; `None` when the tool takes none.
    parameters: Option<&'a Value>,
}

/// The request's `tools`: only `function` tools, and none with `strict: true` (no provider can guarantee arguments
/// that match the schema).
fn function_tools<'a>(value: &'a Value, provider: &str) -> Result<Vec<FunctionTool<'a>>, Unsupported> {
    let list = value.as_array().ok_or_else(|| Unsupported::new("tools", "`tools` must be an array"))?;
    list.iter()
        .enumerate()
        .map(|(i, t)| {
            let at = || format!("tools[{i}]");
            if t.get("type").and_then(Value::as_str) != Some("function") {
                let message = format!("only `function` tools have {} {provider} equivalent", article(provider));
                return Err(Unsupported::new(format!("{}.type", at()), message));
            }
            let f = t.get("function").ok_or_else(|| Unsupported::new(format!("{}.function", at()), "missing"))?;
            if f.get("strict").and_then(Value::as_bool) == Some(true) {
                return Err(Unsupported::new(
                    format!("{}.function.strict", at()),
                    format!("{provider} cannot guarantee arguments that match the schema (`strict: true`)"),
                ));
            }
            Ok(FunctionTool {
                name: str_field(f, "name", &|| format!("{}.function", at()))?,
                description: f.get("description").and_then(Value::as_str),
                parameters: f.get("parameters").filter(|p| !p.is_null()),
            })
        })
        .collect()
}

fn article(word: &str) -> &'static str {
    if word.starts_with(['A', 'E', 'I', 'O', 'U']) { "an" } else { "a" }
}

/// The request as an object, with `null` fields treated as absent.
fn fields(chat: &Value) -> Result<impl Iterator<Item = (&str, &Value)>, Unsupported> {
    let map: &Map<String, Value> =
        chat.as_object().ok_or_else(|| Unsupported::new("", "the request must be a JSON object"))?;
    Ok(map.iter().filter(|(_, v)| !v.is_null()).map(|(k, v)| (k.as_str(), v)))
}

/// Refusals shared by both providers; `Ok(true)` when `key` was fully handled here (accepted as a no-op).
fn common_field(key: &str, value: &Value, provider: &str) -> Result<bool, Unsupported> {
    let no = |what: &str| Err(Unsupported::new(key, format!("{what} has no {provider} equivalent")));
    match key {
        k if IGNORED.contains(&k) => Ok(true),
        "n" if value.as_u64() == Some(1) => Ok(true),
        "n" => no("`n` other than 1 (several choices)"),
        "logprobs" if value == &Value::Bool(false) => Ok(true),
        "logprobs" => no("`logprobs`"),
        "top_logprobs" if value.as_u64() == Some(0) => Ok(true),
        "top_logprobs" => no("`top_logprobs`"),
        "logit_bias" if value.as_object().is_some_and(Map::is_empty) => Ok(true),
        "logit_bias" => no("`logit_bias`"),
        "audio" => no("audio output (`audio`)"),
        "modalities" if value.as_array().is_some_and(|m| m.iter().all(|x| x == "text")) => Ok(true),
        "modalities" => no("an output modality other than text"),
        "functions" | "function_call" => {
            Err(Unsupported::new(key, format!("legacy `{key}` is not translated to {provider}: use `tools`")))
        }
        "reasoning_effort" => no("`reasoning_effort`"),
        "verbosity" => no("`verbosity`"),
        "web_search_options" => no("`web_search_options`"),
        _ => Ok(false),
    }
}

fn unknown(key: &str, provider: &str) -> Unsupported {
    Unsupported::new(key, format!("`{key}` is not a chat completions field this gateway can translate to {provider}"))
}

fn number(key: &str, value: &Value) -> Result<f64, Unsupported> {
    value.as_f64().ok_or_else(|| Unsupported::new(key, format!("`{key}` must be a number")))
}

/// `max_completion_tokens`, else `max_tokens`.
fn max_tokens(chat: &Value) -> Result<Option<u64>, Unsupported> {
    for key in ["max_completion_tokens", "max_tokens"] {
        match chat.get(key) {
            None | Some(Value::Null) => {}
            Some(v) => {
                return v
                    .as_u64()
                    .filter(|n| *n > 0)
                    .map(Some)
                    .ok_or_else(|| Unsupported::new(key, format!("`{key}` must be a positive integer")));
            }
        }
    }
    Ok(None)
}

/// `stop`: one string or up to a few strings.
fn stop_sequences(value: &Value) -> Result<Vec<&str>, Unsupported> {
    let bad = || Unsupported::new("stop", "`stop` must be a string or an array of strings");
    match value {
        Value::String(s) => Ok(vec![s.as_str()]),
        Value::Array(items) => items.iter().map(|s| s.as_str().ok_or_else(bad)).collect(),
        _ => Err(bad()),
    }
}

fn str_field<'a>(v: &'a Value, key: &str, at: &dyn Fn() -> String) -> Result<&'a str, Unsupported> {
    v.get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| Unsupported::new(format!("{}.{key}", at()), format!("`{key}` must be a string")))
}

/// A message's text parts: a string, or an array of `{type: "text"}` parts (others are refused). `at` names the
/// content in a refusal; it is only built for one.
fn text_parts<'a>(content: &'a Value, at: &dyn Fn() -> String, provider: &str) -> Result<Vec<&'a str>, Unsupported> {
    match content {
        Value::Null => Ok(Vec::new()),
        Value::String(s) => Ok(vec![s.as_str()]),
        Value::Array(parts) => parts
            .iter()
            .enumerate()
            .map(|(i, p)| match p.get("type").and_then(Value::as_str) {
                Some("text") => str_field(p, "text", &|| format!("{}[{i}]", at())),
                Some(other) => Err(Unsupported::new(
                    format!("{}[{i}]", at()),
                    format!("a `{other}` part has no {provider} equivalent in this message"),
                )),
                None => Err(Unsupported::new(format!("{}[{i}].type", at()), "a content part needs a `type`")),
            })
            .collect(),
        _ => Err(Unsupported::new(at(), "`content` must be a string or an array of parts")),
    }
}

/// An image given as a data URL: (media type, base64 payload).
fn data_url(url: &str) -> Option<(&str, &str)> {
    let rest = url.strip_prefix("data:")?;
    let (meta, data) = rest.split_once(',')?;
    let media = meta.strip_suffix(";base64")?;
    Some((media, data))
}

/// One function call of an assistant message's `tool_calls`, its arguments parsed.
struct AssistantCall<'a> {
    id: Option<&'a str>,
    name: &'a str,
    /// A JSON object (empty arguments are `{}`).
    arguments: Value,
    /// Where the call is in the request (`messages[1].tool_calls[0]`).
    at: String,
}

/// An assistant message's `tool_calls` (at `at`): function calls only, each with a name and arguments that are a
/// JSON object, as every provider takes them.
fn assistant_calls<'a>(
    calls: &'a Value,
    at: &dyn Fn() -> String,
    provider: &str,
) -> Result<Vec<AssistantCall<'a>>, Unsupported> {
    let calls = calls.as_array().ok_or_else(|| Unsupported::new(format!("{}.tool_calls", at()), "must be an array"))?;
    calls
        .iter()
        .enumerate()
        .map(|(j, call)| {
            let at = || format!("{}.tool_calls[{j}]", at());
            if call.get("type").and_then(Value::as_str).is_some_and(|t| t != "function") {
                let message = format!("only function calls have {} {provider} equivalent", article(provider));
                return Err(Unsupported::new(format!("{}.type", at()), message));
            }
            let f = call.get("function").ok_or_else(|| Unsupported::new(format!("{}.function", at()), "missing"))?;
            let f_at = || format!("{}.function", at());
            let text = str_field(f, "arguments", &f_at)?;
            let arguments = match serde_json::from_str::<Value>(if text.trim().is_empty() { "{}" } else { text }) {
                Ok(v @ Value::Object(_)) => v,
                _ => {
                    return Err(Unsupported::new(
                        format!("{}.arguments", f_at()),
                        format!("{provider} needs a tool call's arguments as a JSON object"),
                    ));
                }
            };
            let name = str_field(f, "name", &f_at)?;
            Ok(AssistantCall { id: call.get("id").and_then(Value::as_str), name, arguments, at: at() })
        })
        .collect()
}

/// The name of the tool call `id` in the assistant messages before message `before` (Gemini answers by name).
fn tool_name<'a>(messages: &'a [Value], before: usize, id: &str) -> Option<&'a str> {
    messages.get(..before)?.iter().rev().find_map(|m| {
        m.get("tool_calls")?
            .as_array()?
            .iter()
            .find(|c| c.get("id").and_then(Value::as_str) == Some(id))?
            .pointer("/function/name")?
            .as_str()
    })
}

#[cfg(test)]
mod tests;
