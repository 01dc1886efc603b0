//! What the native dialects (Anthropic Messages, Gemini generateContent) share: how an answer ends (token limit,
//! stop sequence, a forced tool call), their error bodies by status, and their stock messages.

use std::borrow::Cow;

use super::answers;
use super::{anthropic, gemini};

/// The wire format a request spoke, chosen by its route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Dialect {
    OpenAi,
    Azure,
    Anthropic,
    Gemini,
}

impl Dialect {
    /// Anthropic or Gemini: errors and answers in their own shapes.
    pub(super) fn is_native(self) -> bool {
        matches!(self, Dialect::Anthropic | Dialect::Gemini)
    }
}

/// How a native answer ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Stop {
    /// The whole answer (`end_turn`, `STOP`).
    End,
    /// Cut at the request's output token limit (`max_tokens`, `MAX_TOKENS`).
    MaxTokens,
    /// Stopped just before this stop sequence (`stop_sequence`, `STOP`).
    Sequence(String),
    /// A call of this tool instead of text (`tool_use`, `STOP` with a `functionCall` part).
    Tool(String),
}

/// What a native answer needs beyond the shared call: how it ends.
#[derive(Debug)]
pub(super) struct Turn {
    pub stop: Stop,
}

/// The arguments of every mock tool call, `{"mock": true}`, as Anthropic streams them in `input_json_delta` pieces.
pub(super) const TOOL_INPUT_PIECES: [&str; 2] = ["{\"mock\"", ": true}"];

/// Cuts `answer` just before the first of `stop_sequences` it contains, then to at most `max_tokens` pieces (see
/// [`answers::pieces`]); says which limit, if any, ended it.
pub(super) fn cut(answer: &'static str, stop_sequences: &[String], max_tokens: Option<u64>) -> (&'static str, Stop) {
    let first = stop_sequences
        .iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| answer.find(s.as_str()).map(|at| (at, s)))
        .min_by_key(|(at, _)| *at);
    let (text, mut stop) = match first {
        Some((at, sequence)) => (answer.get(..at).unwrap_or(answer), Stop::Sequence(sequence.clone())),
        None => (answer, Stop::End),
    };
    let Some(max) = max_tokens else { return (text, stop) };
    let mut end = 0;
    for (n, piece) in answers::pieces(text).enumerate() {
        if n as u64 >= max {
            stop = Stop::MaxTokens;
            return (text.get(..end).unwrap_or(text), stop);
        }
        end += piece.len();
    }
    (text, stop)
}

/// Output tokens of an answer: its pieces, or the pieces of the tool input.
pub(super) fn output_tokens(text: &str, stop: &Stop) -> usize {
    match stop {
        Stop::Tool(_) => TOOL_INPUT_PIECES.len(),
        _ => answers::pieces(text).count(),
    }
}

/// Characters of the text anywhere in a native message `content`: strings, `text` fields, nested `content`
/// (Anthropic tool results), `parts` (Gemini), and tool inputs or function arguments as JSON.
pub(super) fn text_chars(value: &serde_json::Value) -> usize {
    use serde_json::Value;
    match value {
        Value::String(s) => s.chars().count(),
        Value::Array(items) => items.iter().map(text_chars).sum(),
        Value::Object(map) => {
            let text = map.get("text").map_or(0, text_chars);
            let nested = ["content", "parts"].iter().filter_map(|k| map.get(*k)).map(text_chars).sum::<usize>();
            let args = ["input", "args", "response", "functionCall", "functionResponse"]
                .iter()
                .filter_map(|k| map.get(*k))
                .map(|v| v.to_string().chars().count())
                .sum::<usize>();
            text + nested + args
        }
        _ => 0,
    }
}

/// A 400 for a request the real API would refuse, with its message.
pub(super) type Invalid = Cow<'static, str>;

/// Writes a native error body for `status`. `kind` (a scripted error's `type`) is kept when it is one of the
/// dialect's own error types (Anthropic) or statuses (Gemini), else the dialect's one for `status` is used.
/// `retry_after` (seconds) adds Gemini's `RetryInfo` detail.
pub(super) fn write_error(
    out: &mut Vec<u8>,
    dialect: Dialect,
    status: u16,
    kind: Option<&str>,
    message: &str,
    retry_after: Option<&str>,
) {
    match dialect {
        Dialect::Gemini => gemini::write_error(out, status, kind, message, retry_after),
        _ => anthropic::write_error(out, status, kind, message),
    }
}

/// The stock message of a scripted error without one.
pub(super) fn default_message(dialect: Dialect, status: u16) -> &'static str {
    match dialect {
        Dialect::Gemini => gemini::default_message(status),
        _ => anthropic::default_message(status),
    }
}

/// The 400 of a context limit: `prompt_tokens` over `max_tokens`.
pub(super) fn context_limit_message(dialect: Dialect, prompt_tokens: u32, max_tokens: u32) -> String {
    match dialect {
        Dialect::Gemini => format!(
            "The input token count ({prompt_tokens}) exceeds the maximum number of tokens allowed ({max_tokens})."
        ),
        _ => format!("prompt is too long: {prompt_tokens} tokens > {max_tokens} maximum"),
    }
}

/// The 400 of a model that refuses an assistant (model) prefill.
pub(super) fn prefill_rejected_message(dialect: Dialect) -> &'static str {
    match dialect {
        Dialect::Gemini => gemini::PREFILL_REJECTED,
        _ => super::behavior::PREFILL_REJECTED_MESSAGE,
    }
}

/// What an overloaded model answers: Anthropic's 529 `overloaded_error`, Gemini's 503 `UNAVAILABLE`.
pub(super) fn overloaded(dialect: Dialect) -> (u16, &'static str) {
    match dialect {
        Dialect::Gemini => (503, gemini::OVERLOADED),
        _ => (529, anthropic::OVERLOADED),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mock_upstream::FULL_ANSWER;

    #[test]
    fn cuts_at_stop_sequences_then_at_the_token_limit() {
        assert_eq!(cut(FULL_ANSWER, &[], None), (FULL_ANSWER, Stop::End));
        assert_eq!(cut(FULL_ANSWER, &[], Some(24)), (FULL_ANSWER, Stop::End));
        assert_eq!(cut(FULL_ANSWER, &[], Some(2)), ("alpha bravo", Stop::MaxTokens));
        assert_eq!(cut(FULL_ANSWER, &[], Some(0)), ("", Stop::MaxTokens));
        let stops = vec!["delta".to_owned(), "charlie".to_owned(), String::new()];
        assert_eq!(cut(FULL_ANSWER, &stops, None), ("alpha bravo ", Stop::Sequence("charlie".to_owned())));
        assert_eq!(cut(FULL_ANSWER, &stops, Some(1)), ("alpha", Stop::MaxTokens));
        assert_eq!(cut(FULL_ANSWER, &["zulu".to_owned()], Some(99)), (FULL_ANSWER, Stop::End));
        assert_eq!(cut("", &stops, Some(3)), ("", Stop::End));
    }

    #[test]
    fn text_is_counted_wherever_it_is() {
        let content = serde_json::json!([{"type": "text", "text": "abcd"}, {"type": "tool_result", "content": "ef"},
                                         {"parts": [{"text": "gh"}]}, 5]);
        assert_eq!(text_chars(&content), 8);
        assert_eq!(text_chars(&serde_json::json!({"input": {}})), 2);
        let input: serde_json::Value = serde_json::from_str(&TOOL_INPUT_PIECES.concat()).unwrap();
        assert_eq!(input, serde_json::json!({"mock": true}));
    }
}
