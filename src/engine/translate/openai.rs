//! What the client gets back: `chat.completion` bodies and `chat.completion.chunk` events, serialised straight into
//! the output buffer.

use serde::Serialize;

use super::Malformed;
use crate::engine::events::Usage;

#[derive(Serialize)]
pub(super) struct Completion<'a> {
    pub id: &'a str,
    pub object: &'static str,
    pub created: u64,
    pub model: &'a str,
    pub choices: [Choice<'a>; 1],
    pub usage: UsageOut,
}

#[derive(Serialize)]
pub(super) struct Choice<'a> {
    pub index: u32,
    pub message: Message<'a>,
    pub logprobs: Option<()>,
    pub finish_reason: &'a str,
}

#[derive(Serialize)]
pub(super) struct Message<'a> {
    pub role: &'static str,
    /// `null` when the answer is only tool calls.
    pub content: Option<&'a str>,
    pub refusal: Option<()>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall<'a>>,
}

#[derive(Serialize)]
pub(super) struct ToolCall<'a> {
    pub id: &'a str,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub function: Function<'a>,
}

#[derive(Serialize)]
pub(super) struct Function<'a> {
    pub name: &'a str,
    pub arguments: &'a str,
}

#[derive(Serialize, Clone, Copy)]
pub(super) struct UsageOut {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
}

impl From<Usage> for UsageOut {
    fn from(u: Usage) -> Self {
        Self {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            total_tokens: u.prompt_tokens.saturating_add(u.completion_tokens),
        }
    }
}

/// A whole answer as a `chat.completion`: `text` absent and tool calls present means `content: null`, as OpenAI
/// answers a turn that only calls tools.
pub(super) fn completion(
    id: &str,
    created: u64,
    model: &str,
    text: Option<&str>,
    tool_calls: Vec<ToolCall<'_>>,
    finish_reason: &str,
    usage: Usage,
) -> Result<Vec<u8>, Malformed> {
    let content = match (text, tool_calls.is_empty()) {
        (None, false) => None,
        (t, _) => Some(t.unwrap_or_default()),
    };
    write_json(&Completion {
        id,
        object: "chat.completion",
        created,
        model,
        choices: [Choice {
            index: 0,
            message: Message { role: "assistant", content, refusal: None, tool_calls },
            logprobs: None,
            finish_reason,
        }],
        usage: usage.into(),
    })
}

pub(super) fn write_json(value: &impl Serialize) -> Result<Vec<u8>, Malformed> {
    let mut out = Vec::with_capacity(512);
    serde_json::to_writer(&mut out, value).map_err(|e| Malformed::json(&e))?;
    Ok(out)
}

#[derive(Serialize)]
struct Chunk<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: &'a [ChunkChoice<'a>],
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<UsageOut>,
}

#[derive(Serialize)]
struct ChunkChoice<'a> {
    index: u32,
    delta: Delta<'a>,
    logprobs: Option<()>,
    finish_reason: Option<&'a str>,
}

#[derive(Serialize, Default)]
struct Delta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_calls: Option<[ToolCallDelta<'a>; 1]>,
}

#[derive(Serialize)]
struct ToolCallDelta<'a> {
    index: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    kind: Option<&'static str>,
    function: FunctionDelta<'a>,
}

#[derive(Serialize)]
struct FunctionDelta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    arguments: &'a str,
}

pub(super) const DONE: &[u8] = b"data: [DONE]\n\n";

/// Writes `chat.completion.chunk` events for one answer.
#[derive(Debug)]
pub(super) struct ChunkWriter {
    id: String,
    model: String,
    created: u64,
    pub include_usage: bool,
}

impl ChunkWriter {
    pub fn new(model: &str, id: &str, created: u64, include_usage: bool) -> Self {
        Self { id: id.to_owned(), model: model.to_owned(), created, include_usage }
    }

    fn write(&self, out: &mut Vec<u8>, choices: &[ChunkChoice<'_>], usage: Option<UsageOut>) {
        let chunk = Chunk {
            id: &self.id,
            object: "chat.completion.chunk",
            created: self.created,
            model: &self.model,
            choices,
            usage,
        };
        let start = out.len();
        out.extend_from_slice(b"data: ");
        // Plain structs of strings and numbers: serialising them cannot fail, but never leave half an event behind.
        if serde_json::to_writer(&mut *out, &chunk).is_err() {
            out.truncate(start);
            return;
        }
        out.extend_from_slice(b"\n\n");
    }

    fn delta(&self, out: &mut Vec<u8>, delta: Delta<'_>, finish_reason: Option<&str>) {
        self.write(out, &[ChunkChoice { index: 0, delta, logprobs: None, finish_reason }], None);
    }

    /// The first chunk: the assistant role and empty content, as OpenAI starts its streams.
    pub fn role(&self, out: &mut Vec<u8>) {
        self.delta(out, Delta { role: Some("assistant"), content: Some(""), tool_calls: None }, None);
    }

    pub fn text(&self, out: &mut Vec<u8>, text: &str) {
        if !text.is_empty() {
            self.delta(out, Delta { content: Some(text), ..Delta::default() }, None);
        }
    }

    /// A tool call begins: its id and name, with empty arguments.
    pub fn tool_start(&self, out: &mut Vec<u8>, index: u32, id: &str, name: &str) {
        let call = ToolCallDelta {
            index,
            id: Some(id),
            kind: Some("function"),
            function: FunctionDelta { name: Some(name), arguments: "" },
        };
        self.delta(out, Delta { tool_calls: Some([call]), ..Delta::default() }, None);
    }

    pub fn tool_arguments(&self, out: &mut Vec<u8>, index: u32, piece: &str) {
        if piece.is_empty() {
            return;
        }
        let call =
            ToolCallDelta { index, id: None, kind: None, function: FunctionDelta { name: None, arguments: piece } };
        self.delta(out, Delta { tool_calls: Some([call]), ..Delta::default() }, None);
    }

    /// The finish chunk, then (when asked for) the usage chunk, then `[DONE]`.
    pub fn finish(&self, out: &mut Vec<u8>, reason: &str, usage: Usage) {
        self.delta(out, Delta::default(), Some(reason));
        if self.include_usage {
            self.write(out, &[], Some(usage.into()));
        }
        out.extend_from_slice(DONE);
    }
}
