//! Google's Gemini API (`POST /v1beta/models/{model}:generateContent`, `…:streamGenerateContent?alt=sse`) as the
//! mock speaks it: the request checks, `GenerateContentResponse` objects (whole, or one per piece as
//! `data: <json>\r\n\r\n` events, the last carrying `finishReason` and `usageMetadata`) and
//! `{"error":{"code","message","status"}}` bodies.

use serde_json::{Value, json};

use super::answers;
use super::dialect::{Invalid, Stop, cut, output_tokens, text_chars};

pub(super) const MISSING_KEY: &str = "Method doesn't allow unregistered callers (callers without established identity). \
                                      Please use API Key or other form of API consumer identity to call this API.";
pub(super) const INVALID_KEY: &str = "API key not valid. Please pass a valid API key.";
pub(super) const NO_QUOTA: &str = "You exceeded your current quota, please check your plan and billing details. For \
                                   more information on this error, head to: \
                                   https://ai.google.dev/gemini-api/docs/rate-limits.";
pub(super) const BAD_JSON: &str = "Invalid JSON payload received. Unexpected token.";
pub(super) const OVERLOADED: &str = "The model is overloaded. Please try again later.";
/// What Gemini answers a conversation that may not end with a model turn.
pub(super) const PREFILL_REJECTED: &str =
    "Please ensure that multiturn requests end with a user role or a function response.";
pub(super) const NOT_FOUND: &str = "Method not found.";
pub(super) const ARRAY_STREAM_UNSUPPORTED: &str =
    "The mock upstream streams only as server-sent events: add ?alt=sse (the JSON array stream is not implemented).";

/// Google's canonical statuses; a scripted error's `type` is kept when it is one of these.
const STATUSES: [&str; 16] = [
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// The status Google sends with an HTTP `code`.
pub(super) fn status_name(code: u16) -> &'static str {
    match code {
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        409 => "ABORTED",
        429 => "RESOURCE_EXHAUSTED",
        499 => "CANCELLED",
        501 => "UNIMPLEMENTED",
        503 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        500..=599 => "INTERNAL",
        _ => "INVALID_ARGUMENT",
    }
}

pub(super) fn default_message(code: u16) -> &'static str {
    match code {
        401 => {
            "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid \
             authentication credential."
        }
        403 => "The caller does not have permission",
        404 => {
            "models/{model} is not found for API version v1beta, or is not supported for generateContent. Call \
             ListModels to see the list of available models and their supported methods."
        }
        429 => "Resource has been exhausted (e.g. check quota).",
        503 => OVERLOADED,
        504 => "Deadline expired before operation could complete.",
        500..=599 => {
            "An internal error has occurred. Please retry or report in \
                      https://developers.generativeai.google/guide/troubleshooting"
        }
        _ => "Request contains an invalid argument.",
    }
}

fn error_value(code: u16, kind: Option<&str>, message: &str, retry_after: Option<&str>) -> Value {
    let status = kind.filter(|k| STATUSES.contains(k)).unwrap_or_else(|| status_name(code));
    let mut error = json!({"code": code, "message": message, "status": status});
    if let Some(seconds) = retry_after.and_then(|r| r.trim().parse::<u64>().ok()) {
        error["details"] =
            json!([{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": format!("{seconds}s")}]);
    }
    json!({"error": error})
}

/// `{"error":{"code","message","status"}}`, with a `RetryInfo` detail when `retry_after` is whole seconds.
pub(super) fn write_error(out: &mut Vec<u8>, code: u16, kind: Option<&str>, message: &str, retry_after: Option<&str>) {
    let _ = serde_json::to_writer(&mut *out, &error_value(code, kind, message, retry_after));
}

/// The 400 of an invalid key, with its `API_KEY_INVALID` detail.
pub(super) fn write_invalid_key(out: &mut Vec<u8>) {
    let body = json!({"error": {"code": 400, "message": INVALID_KEY, "status": "INVALID_ARGUMENT", "details": [
        {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID", "domain": "googleapis.com",
         "metadata": {"service": "generativelanguage.googleapis.com"}},
        {"@type": "type.googleapis.com/google.rpc.LocalizedMessage", "locale": "en-US", "message": INVALID_KEY}
    ]}});
    let _ = serde_json::to_writer(&mut *out, &body);
}

/// What a generateContent request asks for.
#[derive(Debug)]
pub(super) struct Request {
    pub prompt_tokens: u32,
    /// The last turn is the model's (a prefill).
    pub last_is_model: bool,
    pub answer: &'static str,
    pub stop: Stop,
}

fn has_part(parts: &Value, key: &str) -> bool {
    parts.as_array().is_some_and(|parts| parts.iter().any(|p| p.get(key).is_some()))
}

fn object<'a>(body: &'a Value, field: &'static str) -> Result<Option<&'a Value>, Invalid> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v @ Value::Object(_)) => Ok(Some(v)),
        Some(_) => Err(format!("Invalid JSON payload received. Unknown name \"{field}\": expected an object.").into()),
    }
}

/// The function a request forces (`toolConfig.functionCallingConfig.mode: ANY`), if any.
fn forced_function(body: &Value) -> Result<Option<String>, Invalid> {
    let declared: Vec<&str> = match body.get("tools") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(tools)) => tools
            .iter()
            .filter_map(|t| t.get("functionDeclarations").and_then(Value::as_array))
            .flatten()
            .filter_map(|d| d.get("name").and_then(Value::as_str))
            .collect(),
        Some(_) => return Err("Invalid JSON payload received. Unknown name \"tools\": expected a list.".into()),
    };
    let config = object(body, "toolConfig")?.and_then(|c| c.get("functionCallingConfig"));
    let mode = config.and_then(|c| c.get("mode")).and_then(Value::as_str).unwrap_or("AUTO");
    if mode != "ANY" {
        return Ok(None);
    }
    if declared.is_empty() {
        return Err("* GenerateContentRequest.tool_config.function_calling_config.mode: function calling config is \
                    set without function_declarations.\n"
            .into());
    }
    let allowed = config.and_then(|c| c.get("allowedFunctionNames")).and_then(Value::as_array);
    let name = allowed.and_then(|a| a.first()).and_then(Value::as_str).or(declared.first().copied());
    Ok(name.map(str::to_owned))
}

/// Checks a generateContent request body and works out the answer.
pub(super) fn parse(body: &Value) -> Result<Request, Invalid> {
    const NO_CONTENTS: &str = "* GenerateContentRequest.contents: contents is not specified\n";
    let contents = match body.get("contents") {
        None | Some(Value::Null) => return Err(NO_CONTENTS.into()),
        Some(Value::Array(contents)) if contents.is_empty() => return Err(NO_CONTENTS.into()),
        Some(Value::Array(contents)) => contents,
        Some(_) => return Err("Invalid JSON payload received. \"contents\" must be a list of Content.".into()),
    };
    for (i, content) in contents.iter().enumerate() {
        match content.get("role") {
            None | Some(Value::Null) => {}
            Some(Value::String(role)) if role == "user" || role == "model" => {}
            Some(_) => return Err("Please use a valid role: user, model.".into()),
        }
        if content.get("parts").and_then(Value::as_array).is_none_or(|p| p.is_empty()) {
            return Err(
                format!("* GenerateContentRequest.contents[{i}].parts: contents.parts must not be empty.\n").into()
            );
        }
    }
    let system = object(body, "systemInstruction")?.map_or(0, text_chars);
    let config = object(body, "generationConfig")?;
    let max_tokens = match config.and_then(|c| c.get("maxOutputTokens")) {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_u64() {
            Some(0) => None,
            Some(n) => Some(n),
            None => {
                return Err(format!("Invalid value at 'generation_config.max_output_tokens' (TYPE_INT32), {v}").into());
            }
        },
    };
    let stop_sequences: Vec<String> = match config.and_then(|c| c.get("stopSequences")) {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => match items.iter().map(|i| i.as_str().map(str::to_owned)).collect() {
            Some(s) => s,
            None => return Err("Invalid value at 'generation_config.stop_sequences' (TYPE_STRING)".into()),
        },
        Some(_) => return Err("Invalid value at 'generation_config.stop_sequences' (TYPE_STRING)".into()),
    };
    let forced = forced_function(body)?;

    let chars = system + contents.iter().filter_map(|c| c.get("parts")).map(text_chars).sum::<usize>();
    let mut request = Request {
        prompt_tokens: answers::tokens_of_chars(chars),
        last_is_model: false,
        answer: answers::FULL_ANSWER,
        stop: Stop::End,
    };
    let last = contents.last();
    let parts = last.and_then(|c| c.get("parts")).unwrap_or(&Value::Null);
    let text = answers::content_text(parts);
    if last.and_then(|c| c.get("role")).and_then(Value::as_str) == Some("model") {
        request.last_is_model = true;
        request.answer = answers::answer_after(text.as_deref());
    } else if has_part(parts, "functionResponse") {
        // A function's result: the model answers in text.
    } else if let Some(name) = forced {
        request.stop = Stop::Tool(name);
        return Ok(request);
    } else if let Some(answer) = text.as_deref().and_then(answers::answer_to_instruction) {
        request.answer = answer;
    }
    (request.answer, request.stop) = cut(request.answer, &stop_sequences, max_tokens);
    Ok(request)
}

fn finish_reason(stop: &Stop) -> &'static str {
    match stop {
        Stop::MaxTokens => "MAX_TOKENS",
        _ => "STOP",
    }
}

pub(super) fn response_id(n: u64) -> String {
    format!("mockresp{n:012}")
}

/// A `GenerateContentResponse`: `piece` as the candidate's one part (the function call when the answer is a tool
/// call); `finish` adds `finishReason` and `usageMetadata`.
fn response(n: u64, model: &str, piece: &str, stop: &Stop, finish: Option<(u32, usize)>) -> Value {
    let part = match stop {
        Stop::Tool(name) => json!({"functionCall": {"name": name, "args": {"mock": true}}}),
        _ => json!({"text": piece}),
    };
    let mut candidate = json!({"content": {"parts": [part], "role": "model"}, "index": 0});
    let mut response = json!({"candidates": [candidate.clone()]});
    if let Some((prompt_tokens, output_tokens)) = finish {
        candidate["finishReason"] = json!(finish_reason(stop));
        response["candidates"] = json!([candidate]);
        response["usageMetadata"] = json!({
            "promptTokenCount": prompt_tokens, "candidatesTokenCount": output_tokens,
            "totalTokenCount": prompt_tokens as usize + output_tokens,
            "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt_tokens}],
        });
    }
    response["modelVersion"] = json!(model);
    response["responseId"] = json!(response_id(n));
    response
}

/// A whole `GenerateContentResponse` answering with `text` (or the forced function call).
pub(super) fn write_response(out: &mut Vec<u8>, n: u64, model: &str, text: &str, stop: &Stop, prompt_tokens: u32) {
    let body = response(n, model, text, stop, Some((prompt_tokens, output_tokens(text, stop))));
    let _ = serde_json::to_writer(&mut *out, &body);
}

pub(super) const KEEP_ALIVE_EVENT: &[u8] = b": keep-alive\r\n\r\n";
pub(super) const MALFORMED_EVENT: &[u8] = b"data: {not json\r\n\r\n";

fn data(ev: &mut Vec<u8>, value: &Value) {
    ev.extend_from_slice(b"data: ");
    let _ = serde_json::to_writer(&mut *ev, value);
    ev.extend_from_slice(b"\r\n\r\n");
}

/// The events of `streamGenerateContent?alt=sse`: one response per piece; the last also carries `finishReason` and
/// `usageMetadata`. No `[DONE]`: the body just ends.
pub(super) struct Events {
    n: u64,
    model: String,
    prompt_tokens: u32,
    stop: Stop,
}

impl Events {
    pub(super) fn new(n: u64, model: &str, prompt_tokens: u32, stop: Stop) -> Self {
        Self { n, model: model.to_owned(), prompt_tokens, stop }
    }

    /// The streamed pieces: the answer's words, or one for the whole function call (Gemini sends it in one piece).
    pub(super) fn pieces(&self, text: &'static str) -> Vec<&'static str> {
        match self.stop {
            Stop::Tool(_) => vec![""],
            _ => answers::pieces(text).collect(),
        }
    }

    /// One piece; `last` (of `total`) carries the finish.
    pub(super) fn piece(&self, ev: &mut Vec<u8>, piece: &str, last: Option<usize>) {
        let finish = last.map(|total| (self.prompt_tokens, self.output_tokens(total)));
        data(ev, &response(self.n, &self.model, piece, &self.stop, finish));
    }

    fn output_tokens(&self, pieces: usize) -> usize {
        match self.stop {
            Stop::Tool(_) => output_tokens("", &self.stop),
            _ => pieces,
        }
    }

    /// An empty answer still gets one response with its finish (unless `missing_done`).
    pub(super) fn finish(&self, ev: &mut Vec<u8>, pieces: usize, missing_done: bool) {
        if pieces == 0 && !missing_done {
            self.piece(ev, "", Some(0));
        }
    }

    /// The in-band error Gemini ends a failing stream with: one more event holding `{"error":{..}}`.
    pub(super) fn error(&self, ev: &mut Vec<u8>, code: u16, message: &str) {
        data(ev, &error_value(code, None, message, None));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(text: &str) -> Value {
        json!({"role": "user", "parts": [{"text": text}]})
    }

    #[test]
    fn requests_are_checked_like_gemini_does() {
        let r = parse(&json!({"contents": [user("hi")], "generationConfig": {"maxOutputTokens": 2}})).unwrap();
        assert_eq!((r.answer, &r.stop), ("alpha bravo", &Stop::MaxTokens));
        for (body, message) in [
            (json!({}), "contents is not specified"),
            (json!({"contents": []}), "contents is not specified"),
            (json!({"contents": [{"role": "assistant", "parts": [{"text": "x"}]}]}), "valid role: user, model"),
            (json!({"contents": [{"role": "user", "parts": []}]}), "contents[0].parts"),
            (json!({"contents": [user("x")], "generationConfig": {"maxOutputTokens": "x"}}), "max_output_tokens"),
            (json!({"contents": [user("x")], "toolConfig": {"functionCallingConfig": {"mode": "ANY"}}}), "without"),
            (json!({"contents": [user("x")], "generationConfig": 3}), "generationConfig"),
        ] {
            let error = parse(&body).unwrap_err();
            assert!(error.contains(message), "{body}: {error}");
        }
    }

    #[test]
    fn functions_are_called_in_mode_any_and_prefill_continues() {
        let tools = json!([{"functionDeclarations": [{"name": "get_weather"}, {"name": "other"}]}]);
        let mut body = json!({"contents": [user("weather?")], "tools": tools,
                              "toolConfig": {"functionCallingConfig": {"mode": "ANY"}}});
        assert_eq!(parse(&body).unwrap().stop, Stop::Tool("get_weather".to_owned()));
        body["toolConfig"]["functionCallingConfig"]["allowedFunctionNames"] = json!(["other"]);
        assert_eq!(parse(&body).unwrap().stop, Stop::Tool("other".to_owned()));
        body["contents"] = json!([user("x"), {"role": "model", "parts": [{"text": "alpha bravo"}]}]);
        let r = parse(&body).unwrap();
        assert!(r.last_is_model);
        assert_eq!(format!("alpha bravo{}", r.answer), answers::FULL_ANSWER);
    }
}
