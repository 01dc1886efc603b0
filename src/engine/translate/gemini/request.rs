//! The request: chat completions in, `generateContent` body out.

use serde::Serialize;
use serde_json::Value;

use crate::engine::translate::{
    Unsupported, common_field, data_url, fields, max_tokens, number, stop_sequences, str_field,
};
use crate::engine::translate::{text_parts, tool_name, unknown};

const PROVIDER: &str = "Gemini";

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Request<'a> {
    contents: Vec<Content<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    system_instruction: Option<System<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<Tools<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_config: Option<ToolConfig<'a>>,
    #[serde(skip_serializing_if = "GenerationConfig::is_empty")]
    generation_config: GenerationConfig<'a>,
}

#[derive(Serialize)]
struct System<'a> {
    parts: Vec<Part<'a>>,
}

#[derive(Serialize)]
struct Content<'a> {
    role: &'static str,
    parts: Vec<Part<'a>>,
}

/// One of Gemini's part kinds (exactly one field is set), plus the thought signature a function call may carry.
#[derive(Serialize, Default)]
#[serde(rename_all = "camelCase")]
struct Part<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    inline_data: Option<Blob<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    file_data: Option<FileData<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    function_call: Option<FunctionCall<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    function_response: Option<FunctionResponse<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    thought_signature: Option<&'static str>,
}

fn text(text: &str) -> Part<'_> {
    Part { text: Some(text), ..Part::default() }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Blob<'a> {
    mime_type: &'a str,
    data: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct FileData<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    mime_type: Option<&'static str>,
    file_uri: &'a str,
}

#[derive(Serialize)]
struct FunctionCall<'a> {
    name: &'a str,
    args: Value,
}

#[derive(Serialize)]
struct FunctionResponse<'a> {
    name: &'a str,
    response: Value,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Tools<'a> {
    function_declarations: Vec<Declaration<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Declaration<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a str>,
    /// JSON Schema as OpenAI clients write it (`additionalProperties`, `$defs`, …), not the OpenAPI subset of
    /// `parameters`.
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters_json_schema: Option<&'a Value>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ToolConfig<'a> {
    function_calling_config: CallingConfig<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CallingConfig<'a> {
    mode: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    allowed_function_names: Option<[&'a str; 1]>,
}

#[derive(Serialize, Default)]
#[serde(rename_all = "camelCase")]
struct GenerationConfig<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    stop_sequences: Option<Vec<&'a str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_output_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    presence_penalty: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    frequency_penalty: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seed: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_mime_type: Option<&'static str>,
    /// JSON Schema, as `response_format.json_schema.schema` is (the `responseSchema` alternative takes only an
    /// OpenAPI subset and refuses `additionalProperties`, which every strict OpenAI schema has).
    #[serde(skip_serializing_if = "Option::is_none")]
    response_json_schema: Option<&'a Value>,
}

impl GenerationConfig<'_> {
    fn is_empty(&self) -> bool {
        self.stop_sequences.is_none()
            && self.temperature.is_none()
            && self.top_p.is_none()
            && self.max_output_tokens.is_none()
            && self.presence_penalty.is_none()
            && self.frequency_penalty.is_none()
            && self.seed.is_none()
            && self.response_mime_type.is_none()
    }
}

/// Sent with function calls that came from another provider: Gemini 3 refuses a history whose function calls lack
/// the signature it issued, and documents this value for histories it did not produce.
const FOREIGN_SIGNATURE: &str = "skip_thought_signature_validator";

const IMAGE_TYPES: &[&str] = &["image/png", "image/jpeg", "image/webp", "image/heic", "image/heif"];

/// The `generateContent` (or, for a stream, `streamGenerateContent?alt=sse`) body for a chat completions request.
pub fn gemini_request(chat: &Value, _stream: bool) -> Result<Vec<u8>, Unsupported> {
    let mut config = GenerationConfig { max_output_tokens: max_tokens(chat)?, ..GenerationConfig::default() };
    let (mut messages, mut tools, mut tool_choice) = (None, Vec::new(), None);
    for (key, value) in fields(chat)? {
        if common_field(key, value, PROVIDER)? {
            continue;
        }
        match key {
            "messages" => messages = Some(value),
            "max_tokens" | "max_completion_tokens" => {}
            "temperature" => {
                number(key, value)?;
                config.temperature = Some(value);
            }
            "top_p" => {
                number(key, value)?;
                config.top_p = Some(value);
            }
            "presence_penalty" => {
                number(key, value)?;
                config.presence_penalty = Some(value);
            }
            "frequency_penalty" => {
                number(key, value)?;
                config.frequency_penalty = Some(value);
            }
            "seed" => {
                value.as_i64().ok_or_else(|| Unsupported::new(key, "`seed` must be an integer"))?;
                config.seed = Some(value);
            }
            "stop" => config.stop_sequences = Some(stop_sequences(value)?),
            "tools" => tools = declarations(value)?,
            "tool_choice" => tool_choice = Some(value),
            "parallel_tool_calls" if value == &Value::Bool(true) => {}
            "parallel_tool_calls" => {
                return Err(Unsupported::new(key, "Gemini cannot be kept to one tool call per answer"));
            }
            // Says who the end user is; it cannot change the answer and Gemini has no field for it.
            "user" => {}
            "response_format" => response_format(value, &mut config)?,
            _ => return Err(unknown(key, PROVIDER)),
        }
    }
    let tool_config = calling_config(tool_choice, !tools.is_empty())?;
    let messages = messages
        .and_then(Value::as_array)
        .ok_or_else(|| Unsupported::new("messages", "`messages` must be an array"))?;
    let (system, contents) = contents(messages)?;
    if contents.is_empty() {
        return Err(Unsupported::new("messages", "Gemini needs at least one user or assistant message"));
    }
    let req = Request {
        contents,
        system_instruction: (!system.is_empty()).then_some(System { parts: system }),
        tools: if tools.is_empty() { Vec::new() } else { vec![Tools { function_declarations: tools }] },
        tool_config,
        generation_config: config,
    };
    let mut out = Vec::with_capacity(256);
    serde_json::to_writer(&mut out, &req).map_err(|e| Unsupported::new("", format!("could not encode: {e}")))?;
    Ok(out)
}

fn response_format<'a>(value: &'a Value, config: &mut GenerationConfig<'a>) -> Result<(), Unsupported> {
    match value.get("type").and_then(Value::as_str) {
        Some("text") => {}
        Some("json_object") => config.response_mime_type = Some("application/json"),
        Some("json_schema") => {
            let schema = value.pointer("/json_schema/schema").filter(|s| s.is_object()).ok_or_else(|| {
                Unsupported::new("response_format.json_schema.schema", "a `json_schema` format needs a `schema` object")
            })?;
            config.response_mime_type = Some("application/json");
            config.response_json_schema = Some(schema);
        }
        _ => return Err(Unsupported::new("response_format.type", "the type must be text, json_object or json_schema")),
    }
    Ok(())
}

fn declarations(value: &Value) -> Result<Vec<Declaration<'_>>, Unsupported> {
    Ok(super::super::function_tools(value, "Gemini")?
        .into_iter()
        .map(|f| Declaration { name: f.name, description: f.description, parameters_json_schema: f.parameters })
        .collect())
}

fn calling_config(value: Option<&Value>, has_tools: bool) -> Result<Option<ToolConfig<'_>>, Unsupported> {
    let bad = || Unsupported::new("tool_choice", "`tool_choice` must be none, auto, required or a named function");
    let Some(value) = value else { return Ok(None) };
    let (mode, name) = match value {
        Value::String(s) => match s.as_str() {
            "none" => ("NONE", None),
            "auto" => ("AUTO", None),
            "required" => ("ANY", None),
            _ => return Err(bad()),
        },
        v if v.get("type").and_then(Value::as_str) == Some("function") => {
            ("ANY", Some([v.pointer("/function/name").and_then(Value::as_str).ok_or_else(bad)?]))
        }
        _ => return Err(bad()),
    };
    if !has_tools {
        return if mode == "NONE" {
            Ok(None)
        } else {
            Err(Unsupported::new("tool_choice", "`tool_choice` needs `tools`"))
        };
    }
    Ok(Some(ToolConfig { function_calling_config: CallingConfig { mode, allowed_function_names: name } }))
}

type Parts<'a> = Vec<Part<'a>>;

/// Messages to the system instruction and contents. Assistant turns are `model` turns; tool results are user turns
/// naming the function they answer; consecutive turns of one role are merged (parallel results go together).
fn contents(messages: &[Value]) -> Result<(Parts<'_>, Vec<Content<'_>>), Unsupported> {
    let mut system = Vec::new();
    let mut contents: Vec<Content<'_>> = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        let at = || format!("messages[{i}]");
        for (key, value) in m.as_object().ok_or_else(|| Unsupported::new(at(), "a message must be an object"))? {
            match key.as_str() {
                "role" | "content" | "tool_calls" | "tool_call_id" => {}
                _ if value.is_null() => {}
                "name" => return Err(Unsupported::new(format!("{}.name", at()), "Gemini has no participant names")),
                _ => {
                    return Err(Unsupported::new(
                        format!("{}.{key}", at()),
                        format!("`{key}` has no Gemini equivalent"),
                    ));
                }
            }
        }
        let content = m.get("content").unwrap_or(&Value::Null);
        let content_at = || format!("{}.content", at());
        let (role, mut parts) = match m.get("role").and_then(Value::as_str) {
            Some("system" | "developer") => {
                if !contents.is_empty() {
                    return Err(Unsupported::new(
                        format!("{}.role", at()),
                        "Gemini takes system instructions only before the conversation",
                    ));
                }
                system.extend(
                    text_parts(content, &content_at, PROVIDER)?.into_iter().filter(|t| !t.is_empty()).map(text),
                );
                continue;
            }
            Some("user") => ("user", user_parts(content, &content_at)?),
            Some("assistant") => {
                let mut parts: Parts<'_> = text_parts(content, &content_at, PROVIDER)?
                    .into_iter()
                    .filter(|t| !t.is_empty())
                    .map(text)
                    .collect();
                if let Some(calls) = m.get("tool_calls").filter(|c| !c.is_null()) {
                    function_calls(calls, &at, &mut parts)?;
                }
                ("model", parts)
            }
            Some("tool") => {
                let id = str_field(m, "tool_call_id", &at)?;
                let name = tool_name(messages, i, id).ok_or_else(|| {
                    Unsupported::new(
                        format!("{}.tool_call_id", at()),
                        "Gemini needs the function's name: no earlier assistant message has a tool call with this id",
                    )
                })?;
                let output = text_parts(content, &content_at, PROVIDER)?.concat();
                let response = match serde_json::from_str::<Value>(&output) {
                    Ok(object @ Value::Object(_)) => object,
                    _ => serde_json::json!({ "result": output }),
                };
                ("user", vec![Part { function_response: Some(FunctionResponse { name, response }), ..Part::default() }])
            }
            _ => {
                return Err(Unsupported::new(
                    format!("{}.role", at()),
                    "the role must be system, developer, user, assistant or tool",
                ));
            }
        };
        match contents.last_mut() {
            _ if parts.is_empty() => {}
            Some(last) if last.role == role => last.parts.append(&mut parts),
            _ => contents.push(Content { role, parts }),
        }
    }
    Ok((system, contents))
}

fn user_parts<'a>(content: &'a Value, at: &dyn Fn() -> String) -> Result<Parts<'a>, Unsupported> {
    let Value::Array(items) = content else {
        return Ok(text_parts(content, at, PROVIDER)?.into_iter().filter(|t| !t.is_empty()).map(text).collect());
    };
    let mut parts = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let at = || format!("{}[{i}]", at());
        match item.get("type").and_then(Value::as_str) {
            Some("text") => {
                let t = str_field(item, "text", &at)?;
                if !t.is_empty() {
                    parts.push(text(t));
                }
            }
            Some("image_url") => {
                let url_at = || format!("{}.image_url", at());
                let url = item.get("image_url").map_or(Ok(""), |i| str_field(i, "url", &url_at))?;
                parts.push(image(url, &|| format!("{}.url", url_at()))?);
            }
            Some(other) => return Err(Unsupported::new(at(), format!("a `{other}` part has no Gemini equivalent"))),
            None => return Err(Unsupported::new(format!("{}.type", at()), "a content part needs a `type`")),
        }
    }
    Ok(parts)
}

fn image<'a>(url: &'a str, at: &dyn Fn() -> String) -> Result<Part<'a>, Unsupported> {
    if let Some((mime_type, data)) = data_url(url) {
        if !IMAGE_TYPES.contains(&mime_type) {
            return Err(Unsupported::new(
                at(),
                format!("Gemini takes PNG, JPEG, WebP, HEIC or HEIF images, not `{mime_type}`"),
            ));
        }
        return Ok(Part { inline_data: Some(Blob { mime_type, data }), ..Part::default() });
    }
    if url.starts_with("gs://") {
        return Ok(Part {
            file_data: Some(FileData { mime_type: mime_from_name(url), file_uri: url }),
            ..Part::default()
        });
    }
    Err(Unsupported::new(at(), "Gemini takes images as base64 data URLs or gs:// URIs, not web URLs"))
}

fn mime_from_name(uri: &str) -> Option<&'static str> {
    let ext = uri.rsplit_once('.')?.1.to_ascii_lowercase();
    Some(match ext.as_str() {
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "webp" => "image/webp",
        "heic" => "image/heic",
        "heif" => "image/heif",
        _ => return None,
    })
}

fn function_calls<'a>(calls: &'a Value, at: &dyn Fn() -> String, parts: &mut Parts<'a>) -> Result<(), Unsupported> {
    for (j, call) in super::super::assistant_calls(calls, at, PROVIDER)?.into_iter().enumerate() {
        // Only the first call of a turn carries a signature.
        let thought_signature = (j == 0).then_some(FOREIGN_SIGNATURE);
        parts.push(Part {
            function_call: Some(FunctionCall { name: call.name, args: call.arguments }),
            thought_signature,
            ..Part::default()
        });
    }
    Ok(())
}
