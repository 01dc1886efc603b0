//! A streamed chunk read for the few things the engine needs from it: its id, the first choice's text piece and
//! finish reason, usage and whether it is an in-band error. Strings without escapes are borrowed from the event and
//! everything else is skipped without building a JSON tree, so the common streaming path costs little per event.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, SeqAccess, Visitor};

use super::events::Usage;

#[derive(Debug, Default, Deserialize)]
pub struct ChunkView<'a> {
    #[serde(borrow, default, deserialize_with = "borrowed")]
    pub id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub choices: First<ChoiceView<'a>>,
    #[serde(default)]
    pub usage: Option<Usage>,
    #[serde(default)]
    pub error: Option<IgnoredAny>,
}

#[derive(Debug, Default, Deserialize)]
pub struct ChoiceView<'a> {
    #[serde(borrow, default)]
    pub delta: Option<DeltaView<'a>>,
    /// Legacy completions stream `text` instead of `delta.content`.
    #[serde(borrow, default, deserialize_with = "borrowed")]
    pub text: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "borrowed")]
    pub finish_reason: Option<Cow<'a, str>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct DeltaView<'a> {
    #[serde(borrow, default, deserialize_with = "borrowed")]
    pub content: Option<Cow<'a, str>>,
}

/// `Option<Cow<str>>` that borrows when the string has no escapes (serde's own impl always copies inside `Option`).
fn borrowed<'de: 'a, 'a, D: Deserializer<'de>>(d: D) -> Result<Option<Cow<'a, str>>, D::Error> {
    #[derive(Deserialize)]
    struct Text<'a>(#[serde(borrow)] Cow<'a, str>);
    Ok(Option::<Text<'a>>::deserialize(d)?.map(|t| t.0))
}

impl<'a> ChunkView<'a> {
    /// `None` when the data is not a chunk this view can read; the caller then falls back to a full parse.
    pub fn parse(data: &'a str) -> Option<Self> {
        serde_json::from_str(data).ok()
    }

    pub fn choice(&self) -> Option<&ChoiceView<'a>> {
        self.choices.0.as_ref()
    }

    /// The content piece of the first choice: `delta.content`, or `text`.
    pub fn piece(&self) -> Option<&str> {
        let choice = self.choice()?;
        choice.delta.as_ref().and_then(|d| d.content.as_deref()).or(choice.text.as_deref())
    }
}

/// The first element of a JSON array (the rest are skipped); `null` or `[]` is `None`.
#[derive(Debug)]
pub struct First<T>(pub Option<T>);

impl<T> Default for First<T> {
    fn default() -> Self {
        Self(None)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for First<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = First<T>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array or null")
            }

            fn visit_unit<E: de::Error>(self) -> Result<First<T>, E> {
                Ok(First(None))
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<First<T>, A::Error> {
                let first = seq.next_element()?;
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(First(first))
            }
        }
        d.deserialize_any(V(PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    /// What the full-tree path reads from the same data.
    fn by_tree(data: &str) -> (Option<String>, Option<String>, bool, Option<Usage>, bool) {
        let v: Value = serde_json::from_str(data).unwrap();
        let choice = v.get("choices").and_then(|c| c.get(0));
        let piece = choice
            .and_then(|c| c.pointer("/delta/content").or_else(|| c.get("text")))
            .and_then(Value::as_str)
            .map(str::to_owned);
        let finished = choice.and_then(|c| c.get("finish_reason")).is_some_and(|f| !f.is_null());
        let usage = v.get("usage").filter(|u| !u.is_null()).map(|u| serde_json::from_value(u.clone()).unwrap());
        let error = v.get("error").is_some_and(|e| !e.is_null());
        (v.get("id").and_then(Value::as_str).map(str::to_owned), piece, finished, usage, error)
    }

    fn by_view(data: &str) -> (Option<String>, Option<String>, bool, Option<Usage>, bool) {
        let c = ChunkView::parse(data).unwrap();
        let finished = c.choice().is_some_and(|c| c.finish_reason.is_some());
        (c.id.as_deref().map(str::to_owned), c.piece().map(str::to_owned), finished, c.usage, c.error.is_some())
    }

    #[test]
    fn reads_what_the_tree_reads() {
        let cases = [
            json!({"id": "c1", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}]}),
            json!({"id": "c1", "choices": [{"index": 0, "delta": {"content": "Hello \"quoted\" \\ é 😀\n"}, "logprobs": null, "finish_reason": null}]}),
            json!({"id": "c1", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}, {"index": 1, "delta": {"content": "x"}}]}),
            json!({"id": "c1", "choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 12, "total_tokens": 21, "prompt_tokens_details": {"cached_tokens": 0}}}),
            json!({"id": "c1", "choices": [{"index": 0, "text": "legacy", "finish_reason": null}]}),
            json!({"choices": null, "usage": null}),
            json!({"error": {"message": "overloaded", "type": "server_error"}}),
            json!({"id": "c1", "choices": [{"delta": {"tool_calls": [{"index": 0, "function": {"arguments": "{\"a\":1}"}}]}}]}),
        ];
        for case in cases {
            let data = case.to_string();
            assert_eq!(by_view(&data), by_tree(&data), "{data}");
        }
    }

    #[test]
    fn plain_strings_are_borrowed() {
        let data = r#"{"id":"c1","choices":[{"delta":{"content":"plain"}}]}"#;
        let c = ChunkView::parse(data).unwrap();
        assert!(matches!(c.choice().unwrap().delta.as_ref().unwrap().content, Some(Cow::Borrowed("plain"))));
    }

    #[test]
    fn unusual_shapes_are_left_to_the_full_parse() {
        for data in [r#"{"id": 5}"#, r#"{"choices": {"a": 1}}"#, "[1]", "not json"] {
            assert!(ChunkView::parse(data).is_none(), "{data}");
        }
    }
}
