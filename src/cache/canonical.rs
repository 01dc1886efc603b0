//! What the cache keys on: the whole conversation in a canonical form. Everything before the last user turn (system
//! prompt, earlier turns, and request options that change the kind of answer, such as tools or a response format) is
//! the *context* and must match exactly; the last user turn is the *question*, matched by meaning. So a follow-up such
//! as "and in French?" only ever matches the same follow-up of the same conversation.

use serde_json::Value;

/// Longest question or conversation the cache accepts, in bytes of canonical text.
pub const MAX_QUERY_BYTES: usize = 32 * 1024;

/// A conversation in canonical form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conversation {
    /// Canonical text of everything before the question (empty for a lone question).
    pub context: String,
    /// The last user turn, whitespace-normalised.
    pub question: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CanonicalError {
    #[error("must not be empty")]
    Empty,
    #[error("must be at most {MAX_QUERY_BYTES} bytes")]
    TooLong,
    #[error("must end with a user message")]
    NoQuestion,
    #[error("{0}")]
    Malformed(&'static str),
}

impl Conversation {
    /// A lone question: the same as a conversation of one user message.
    pub fn from_query(query: &str) -> Result<Self, CanonicalError> {
        let question = normalise(query);
        if question.is_empty() {
            return Err(CanonicalError::Empty);
        }
        Self { context: String::new(), question }.checked()
    }

    /// A chat `messages` array (as clients send it to `/v1/chat/completions`).
    pub fn from_messages(messages: &[Value]) -> Result<Self, CanonicalError> {
        Self::build(messages, &[])
    }

    /// A gateway request body: chat (`messages`) or legacy completions (`prompt`, a string). Options that change the
    /// kind of answer (`tools`, `functions`, `response_format`, `n`, `logprobs`, …) join the context.
    pub fn from_request(body: &Value) -> Result<Self, CanonicalError> {
        let options: Vec<(&str, &Value)> =
            SHAPING_OPTIONS.iter().filter_map(|name| body.get(*name).map(|v| (*name, v))).collect();
        if let Some(messages) = body.get("messages") {
            let messages = messages.as_array().ok_or(CanonicalError::Malformed("messages must be an array"))?;
            return Self::build(messages, &options);
        }
        match body.get("prompt") {
            Some(Value::String(prompt)) => {
                let mut conversation = Self::from_query(prompt)?;
                conversation.context = options_text(&options);
                conversation.checked()
            }
            _ => Err(CanonicalError::Malformed("needs messages or a string prompt")),
        }
    }

    /// A Responses API body (`input` as a string or message items, `instructions` and other shaping options in the
    /// context). One continuing a stored response (`previous_response_id`) depends on state the cache cannot see, and
    /// items other than messages (tool calls and their outputs) are not cached.
    pub fn from_responses_request(body: &Value) -> Result<Self, CanonicalError> {
        if body.get("previous_response_id").is_some_and(|v| !v.is_null()) {
            return Err(CanonicalError::Malformed("continues a stored response"));
        }
        let options: Vec<(&str, &Value)> =
            RESPONSES_SHAPING_OPTIONS.iter().filter_map(|name| body.get(*name).map(|v| (*name, v))).collect();
        match body.get("input") {
            Some(Value::String(input)) => {
                let mut conversation = Self::from_query(input)?;
                conversation.context = options_text(&options);
                conversation.checked()
            }
            Some(Value::Array(items)) => {
                let messages = items.iter().map(responses_message).collect::<Result<Vec<Value>, _>>()?;
                Self::build(&messages, &options)
            }
            _ => Err(CanonicalError::Malformed("needs input as a string or message items")),
        }
    }

    /// The canonical text of the whole conversation: what the exact-match hash covers.
    pub fn exact_text(&self) -> String {
        let mut out = String::with_capacity(self.context.len() + self.question.len() + 8);
        out.push_str(&self.context);
        out.push_str("\u{1e}user\u{1f}");
        out.push_str(&self.question);
        out
    }

    fn build(messages: &[Value], options: &[(&str, &Value)]) -> Result<Self, CanonicalError> {
        let (last, earlier) = messages.split_last().ok_or(CanonicalError::Empty)?;
        if last.get("role").and_then(Value::as_str) != Some("user") {
            return Err(CanonicalError::NoQuestion);
        }
        let question = match turn_text(last)? {
            Turn::Text(text) => text,
            // A question with images or audio is only the same question when it is byte for byte the same.
            Turn::Structured(_) => return Err(CanonicalError::Malformed("the last user message must be text")),
        };
        if question.is_empty() {
            return Err(CanonicalError::Empty);
        }
        let mut context = options_text(options);
        for message in earlier {
            let role = message
                .get("role")
                .and_then(Value::as_str)
                .ok_or(CanonicalError::Malformed("every message needs a role"))?;
            context.push('\u{1e}');
            context.push_str(role);
            context.push('\u{1f}');
            match turn_text(message)? {
                Turn::Text(text) => context.push_str(&text),
                Turn::Structured(json) => context.push_str(&json),
            }
        }
        Self { context, question }.checked()
    }

    fn checked(self) -> Result<Self, CanonicalError> {
        if self.context.len() + self.question.len() > MAX_QUERY_BYTES {
            return Err(CanonicalError::TooLong);
        }
        Ok(self)
    }
}

/// Request options that change what kind of answer comes back; sampling options (temperature, …) do not.
const SHAPING_OPTIONS: [&str; 8] =
    ["tools", "functions", "tool_choice", "function_call", "response_format", "n", "logprobs", "modalities"];

/// The Responses API's options that change the kind of answer.
const RESPONSES_SHAPING_OPTIONS: [&str; 6] = ["instructions", "tools", "tool_choice", "text", "reasoning", "include"];

/// A Responses input item as a chat message: `input_text`/`output_text` parts read as text parts.
fn responses_message(item: &Value) -> Result<Value, CanonicalError> {
    if item.get("type").and_then(Value::as_str).is_some_and(|t| t != "message") {
        return Err(CanonicalError::Malformed("only message items are cached"));
    }
    let role = item.get("role").cloned().ok_or(CanonicalError::Malformed("every message needs a role"))?;
    let content = match item.get("content") {
        Some(Value::Array(parts)) => Value::Array(
            parts
                .iter()
                .map(|part| match (part.get("type").and_then(Value::as_str), part.get("text")) {
                    (Some("input_text" | "output_text"), Some(text)) => {
                        serde_json::json!({"type": "text", "text": text})
                    }
                    _ => part.clone(),
                })
                .collect(),
        ),
        Some(other) => other.clone(),
        None => Value::Null,
    };
    Ok(serde_json::json!({"role": role, "content": content}))
}

enum Turn {
    Text(String),
    Structured(String),
}

/// A message's text: its string content, or its text parts joined. Anything else (images, tool calls, …) is kept as
/// canonical JSON so that it must match exactly.
fn turn_text(message: &Value) -> Result<Turn, CanonicalError> {
    let extra = message.get("tool_calls").or_else(|| message.get("function_call"));
    let text = match message.get("content") {
        Some(Value::String(text)) => normalise(text),
        None | Some(Value::Null) => String::new(),
        Some(Value::Array(parts)) => {
            let mut texts = Vec::with_capacity(parts.len());
            for part in parts {
                match (part.get("type").and_then(Value::as_str), part.get("text").and_then(Value::as_str)) {
                    (Some("text"), Some(text)) => texts.push(normalise(text)),
                    _ => return Ok(Turn::Structured(canonical_json(message))),
                }
            }
            texts.join("\n")
        }
        Some(_) => return Err(CanonicalError::Malformed("message content must be a string or an array of parts")),
    };
    if extra.is_some() || message.get("tool_call_id").is_some() || message.get("name").is_some() {
        return Ok(Turn::Structured(canonical_json(message)));
    }
    Ok(Turn::Text(text))
}

fn options_text(options: &[(&str, &Value)]) -> String {
    let mut out = String::new();
    for (name, value) in options {
        out.push('\u{1e}');
        out.push_str(name);
        out.push('\u{1f}');
        out.push_str(&canonical_json(value));
    }
    out
}

/// JSON with object keys sorted (serde_json's map is a BTreeMap without `preserve_order`), so key order never matters.
fn canonical_json(value: &Value) -> String {
    value.to_string()
}

/// Trims and collapses every run of whitespace to one space.
pub fn normalise(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for word in text.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_query_is_a_one_message_conversation() {
        let q = Conversation::from_query("  What is   the capital\nof France? ").unwrap();
        let m = Conversation::from_messages(&[json!({"role": "user", "content": "What is the capital of France?"})])
            .unwrap();
        assert_eq!(q, m);
        assert_eq!(q.question, "What is the capital of France?");
        assert_eq!(q.exact_text(), m.exact_text());
        let body = json!({"model": "gpt-4o", "temperature": 0.3, "messages": [{"role": "user", "content": "What is the capital of France?"}]});
        assert_eq!(Conversation::from_request(&body).unwrap(), q);
        let legacy = json!({"model": "gpt-3.5-turbo-instruct", "prompt": "What is the capital of France?"});
        assert_eq!(Conversation::from_request(&legacy).unwrap(), q);
    }

    #[test]
    fn follow_ups_carry_their_conversation() {
        let a = Conversation::from_messages(&[
            json!({"role": "user", "content": "Summarise our refund policy."}),
            json!({"role": "assistant", "content": "Refunds within 30 days."}),
            json!({"role": "user", "content": "and in French?"}),
        ])
        .unwrap();
        let b = Conversation::from_messages(&[
            json!({"role": "user", "content": "Summarise our shipping policy."}),
            json!({"role": "assistant", "content": "Ships in 2 days."}),
            json!({"role": "user", "content": "and in French?"}),
        ])
        .unwrap();
        assert_eq!(a.question, b.question);
        assert_ne!(a.context, b.context);
        assert_ne!(a.exact_text(), b.exact_text());
        // A system prompt is context too.
        let c = Conversation::from_messages(&[
            json!({"role": "system", "content": "Answer as a pirate."}),
            json!({"role": "user", "content": "and in French?"}),
        ])
        .unwrap();
        assert_ne!(c.context, Conversation::from_query("and in French?").unwrap().context);
    }

    #[test]
    fn options_that_shape_the_answer_join_the_context() {
        let plain = json!({"messages": [{"role": "user", "content": "List three colours"}]});
        let json_mode = json!({"messages": [{"role": "user", "content": "List three colours"}], "response_format": {"type": "json_object"}});
        let hot = json!({"messages": [{"role": "user", "content": "List three colours"}], "temperature": 1.5});
        let a = Conversation::from_request(&plain).unwrap();
        assert_ne!(a, Conversation::from_request(&json_mode).unwrap());
        assert_eq!(a, Conversation::from_request(&hot).unwrap());
    }

    #[test]
    fn text_parts_equal_a_string() {
        let parts =
            Conversation::from_messages(&[json!({"role": "user", "content": [{"type": "text", "text": "Hi there"}]})])
                .unwrap();
        assert_eq!(parts, Conversation::from_query("Hi there").unwrap());
        let image = Conversation::from_messages(&[
            json!({"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}),
        ]);
        assert!(image.is_err());
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        assert_eq!(Conversation::from_query("   "), Err(CanonicalError::Empty));
        assert_eq!(Conversation::from_query(&"a".repeat(MAX_QUERY_BYTES + 1)), Err(CanonicalError::TooLong));
        assert_eq!(Conversation::from_messages(&[]), Err(CanonicalError::Empty));
        assert_eq!(
            Conversation::from_messages(&[json!({"role": "assistant", "content": "hi"})]),
            Err(CanonicalError::NoQuestion)
        );
        assert!(Conversation::from_messages(&[json!({"role": "user", "content": 5})]).is_err());
        assert!(
            Conversation::from_messages(&[json!({"content": "x"}), json!({"role": "user", "content": "q"})]).is_err()
        );
        assert!(Conversation::from_request(&json!({"messages": "x"})).is_err());
        assert!(Conversation::from_request(&json!({"prompt": ["a", "b"]})).is_err());
    }

    #[test]
    fn responses_bodies_read_like_chat_and_stored_state_is_not_cached() {
        let chat =
            json!({"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]});
        let items = json!({"input": [{"role": "system", "content": "Be brief."},
                                     {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hi  there"}]}]});
        assert_eq!(Conversation::from_responses_request(&items).unwrap(), Conversation::from_request(&chat).unwrap());
        let plain = Conversation::from_responses_request(&json!({"input": "Hi there"})).unwrap();
        assert_eq!((plain.context.as_str(), plain.question.as_str()), ("", "Hi there"));
        let instructed =
            Conversation::from_responses_request(&json!({"input": "Hi there", "instructions": "Rhyme."})).unwrap();
        assert_ne!(instructed.context, plain.context, "instructions shape the answer");
        for body in [
            json!({"input": "Hi", "previous_response_id": "resp_1"}),
            json!({"input": [{"type": "function_call_output", "call_id": "c", "output": "1"}]}),
            json!({"input": 5}),
            json!({}),
        ] {
            assert!(Conversation::from_responses_request(&body).is_err(), "{body}");
        }
    }
}
