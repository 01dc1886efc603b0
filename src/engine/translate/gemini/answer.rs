//! The answer: a whole one, stream events, and errors, back in the OpenAI shape.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::Value;

use crate::engine::classify::FailureClass;
use crate::engine::events::Usage;
use crate::engine::translate::openai::{ChunkWriter, Function, ToolCall, completion};
use crate::engine::translate::{Malformed, StreamStatus};

/// The fields of a `GenerateContentResponse` (a whole answer, or one stream event) that the client sees.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Answer<'a> {
    #[serde(borrow, default)]
    candidates: Vec<Candidate<'a>>,
    #[serde(default)]
    usage_metadata: Option<UsageMetadata>,
    #[serde(borrow, default)]
    prompt_feedback: Option<PromptFeedback<'a>>,
    #[serde(default)]
    error: Option<Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Candidate<'a> {
    #[serde(borrow, default)]
    content: Option<CandidateContent<'a>>,
    #[serde(borrow, default)]
    finish_reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct CandidateContent<'a> {
    #[serde(borrow, default)]
    parts: Vec<AnswerPart<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AnswerPart<'a> {
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
    /// A thought summary, not part of the answer.
    #[serde(default)]
    thought: bool,
    #[serde(borrow, default)]
    function_call: Option<AnswerCall<'a>>,
}

#[derive(Deserialize)]
struct AnswerCall<'a> {
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    name: Cow<'a, str>,
    #[serde(default)]
    args: Option<Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PromptFeedback<'a> {
    #[serde(borrow, default)]
    block_reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "camelCase")]
struct UsageMetadata {
    #[serde(default)]
    prompt_token_count: u64,
    #[serde(default)]
    candidates_token_count: u64,
    /// Billed as output, as OpenAI counts reasoning tokens in `completion_tokens`.
    #[serde(default)]
    thoughts_token_count: u64,
}

impl From<UsageMetadata> for Usage {
    fn from(u: UsageMetadata) -> Self {
        Usage {
            prompt_tokens: u.prompt_token_count,
            completion_tokens: u.candidates_token_count.saturating_add(u.thoughts_token_count),
        }
    }
}

/// `finishReason` → `finish_reason`; Gemini says `STOP` after function calls too.
fn finish_reason(reason: &str, called: bool) -> &'static str {
    match reason {
        "MAX_TOKENS" => "length",
        "SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII" | "IMAGE_SAFETY" => "content_filter",
        _ if called => "tool_calls",
        _ => "stop",
    }
}

/// A call id: Gemini's own when it sends one, else one made from the answer's id and the call's position (unique in
/// the conversation, which is all a client needs to pair results with calls).
fn call_id(call: &AnswerCall<'_>, answer_id: &str, index: usize) -> String {
    match &call.id {
        Some(id) if !id.is_empty() => id.clone().into_owned(),
        _ => format!("call_{answer_id}_{index}"),
    }
}

fn arguments(call: &AnswerCall<'_>) -> String {
    call.args.as_ref().map_or_else(|| "{}".to_owned(), Value::to_string)
}

/// A `generateContent` answer as a `chat.completion` (the first candidate; thought summaries left out). A prompt
/// Gemini blocked answers with no candidates: that is a `content_filter` finish with empty content.
pub fn gemini_response(body: &[u8], model: &str, id: &str, created: u64) -> Result<Vec<u8>, Malformed> {
    let answer: Answer<'_> = serde_json::from_slice(body).map_err(|e| Malformed::json(&e))?;
    if answer.error.is_some() {
        return Err(Malformed("an error object where an answer was expected".into()));
    }
    let candidate = answer.candidates.first();
    let parts = candidate.and_then(|c| c.content.as_ref()).map_or(&[][..], |c| &c.parts[..]);
    let mut text: Option<Cow<'_, str>> = None;
    let mut calls = Vec::new();
    for part in parts.iter().filter(|p| !p.thought) {
        if let Some(piece) = &part.text {
            match &mut text {
                None => text = Some(Cow::Borrowed(piece)),
                Some(t) => t.to_mut().push_str(piece),
            }
        }
        if let Some(call) = &part.function_call {
            calls.push((call_id(call, id, calls.len()), call, arguments(call)));
        }
    }
    let tool_calls: Vec<ToolCall<'_>> = calls
        .iter()
        .map(|(call_id, call, arguments)| ToolCall {
            id: call_id,
            kind: "function",
            function: Function { name: &call.name, arguments },
        })
        .collect();
    let finish = match candidate.and_then(|c| c.finish_reason.as_deref()) {
        Some(reason) => finish_reason(reason, !tool_calls.is_empty()),
        None if candidate.is_none() && answer.prompt_feedback.as_ref().is_some_and(|f| f.block_reason.is_some()) => {
            "content_filter"
        }
        None if candidate.is_none() => return Err(Malformed("an answer without candidates".into())),
        None => finish_reason("STOP", !tool_calls.is_empty()),
    };
    let usage = Usage::from(answer.usage_metadata.unwrap_or_default());
    completion(id, created, model, text.as_deref(), tool_calls, finish, usage)
}

/// Gemini's `alt=sse` events (each a whole `GenerateContentResponse` with the next parts) → `chat.completion.chunk`
/// events. Gemini ends its stream without a marker: the event with a `finishReason` finishes the answer.
#[derive(Debug)]
pub struct GeminiStream {
    writer: ChunkWriter,
    id: String,
    calls: u32,
    usage: Usage,
    started: bool,
    done: bool,
}

impl GeminiStream {
    pub fn new(model: &str, id: &str, created: u64, include_usage: bool) -> Self {
        Self {
            writer: ChunkWriter::new(model, id, created, include_usage),
            id: id.to_owned(),
            calls: 0,
            usage: Usage::default(),
            started: false,
            done: false,
        }
    }

    /// Translates one event's `data` (Gemini names no events), appending complete SSE events to `out`.
    pub fn event(&mut self, data: &str, out: &mut Vec<u8>) -> Result<StreamStatus, Malformed> {
        if self.done {
            return Ok(StreamStatus::Finished);
        }
        let answer: Answer<'_> = serde_json::from_str(data).map_err(|e| Malformed::json(&e))?;
        if let Some(error) = &answer.error {
            let (class, message) = error_class(error, 0);
            return Ok(StreamStatus::Failed {
                class,
                message: message.unwrap_or_else(|| "Gemini reported an error".into()),
            });
        }
        if !self.started {
            self.started = true;
            self.writer.role(out);
        }
        if let Some(usage) = answer.usage_metadata {
            self.usage = usage.into();
        }
        let Some(candidate) = answer.candidates.first() else {
            if answer.prompt_feedback.as_ref().is_some_and(|f| f.block_reason.is_some()) {
                return Ok(self.finish(out, "content_filter"));
            }
            return Ok(StreamStatus::Continue);
        };
        for part in candidate.content.iter().flat_map(|c| &c.parts).filter(|p| !p.thought) {
            if let Some(piece) = &part.text {
                self.writer.text(out, piece);
            }
            if let Some(call) = &part.function_call {
                let index = self.calls;
                self.calls = self.calls.saturating_add(1);
                let id = call_id(call, &self.id, index as usize);
                self.writer.tool_start(out, index, &id, &call.name);
                self.writer.tool_arguments(out, index, &arguments(call));
            }
        }
        match candidate.finish_reason.as_deref() {
            Some(reason) => Ok(self.finish(out, finish_reason(reason, self.calls > 0))),
            None => Ok(StreamStatus::Continue),
        }
    }

    fn finish(&mut self, out: &mut Vec<u8>, reason: &str) -> StreamStatus {
        self.done = true;
        self.writer.finish(out, reason, self.usage);
        StreamStatus::Finished
    }
}

/// Classifies a Gemini error answer (`{"error": {"code", "message", "status", "details"}}`, or that object in a
/// one-element array): the canonical status and error reason first, the HTTP status second, the message last.
pub fn classify_gemini(status: u16, body: &[u8]) -> FailureClass {
    let parsed: Value = serde_json::from_slice(body).unwrap_or_default();
    let error = match &parsed {
        Value::Array(items) => items.first().and_then(|i| i.get("error")),
        other => other.get("error"),
    };
    error_class(error.unwrap_or(&Value::Null), status).0
}

/// `status` is 0 for an error inside a stream (its `code` then stands in for it).
fn error_class(error: &Value, status: u16) -> (FailureClass, Option<String>) {
    let field = |name: &str| error.get(name).and_then(Value::as_str);
    let message = field("message").map(str::to_owned);
    let lower = message.as_deref().unwrap_or_default().to_ascii_lowercase();
    let status = match status {
        0 => error.get("code").and_then(Value::as_u64).and_then(|c| u16::try_from(c).ok()).unwrap_or(0),
        s => s,
    };
    let reason_is = |reason: &str| {
        error
            .get("details")
            .and_then(Value::as_array)
            .is_some_and(|d| d.iter().any(|x| x.get("reason").and_then(Value::as_str) == Some(reason)))
    };
    let key_invalid = reason_is("API_KEY_INVALID")
        || reason_is("API_KEY_EXPIRED")
        || lower.contains("api key not valid")
        || lower.contains("api key expired")
        || lower.contains("api key is invalid");
    let too_long = lower.contains("input token count")
        || lower.contains("exceeds the maximum number of tokens")
        || lower.contains("too many tokens");
    let class = match field("status").unwrap_or_default() {
        _ if key_invalid => FailureClass::Credential,
        "RESOURCE_EXHAUSTED" => FailureClass::RateLimited,
        "UNAVAILABLE" | "INTERNAL" | "DEADLINE_EXCEEDED" => FailureClass::Transient,
        "PERMISSION_DENIED" | "UNAUTHENTICATED" => FailureClass::Credential,
        // Billing not enabled, or the API not offered where the key's project is: this key cannot serve.
        "FAILED_PRECONDITION" => FailureClass::Credential,
        "NOT_FOUND" => FailureClass::ModelNotFound,
        _ if too_long => FailureClass::ContextTooLong,
        "INVALID_ARGUMENT" => FailureClass::CallerFault,
        _ => match status {
            401 | 403 => FailureClass::Credential,
            404 => FailureClass::ModelNotFound,
            429 => FailureClass::RateLimited,
            408 | 409 | 500..=599 => FailureClass::Transient,
            // An error inside a stream without a status: the stream broke, another attempt may do better.
            0 => FailureClass::Transient,
            _ => FailureClass::CallerFault,
        },
    };
    (class, message)
}
