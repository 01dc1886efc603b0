//! The bodies the mock sends: deterministic healthy answers (JSON and SSE), embeddings, the model list and errors,
//! all in OpenAI's (or Azure's) exact wire format.

use std::io::Write;

use base64::Engine as _;
use serde_json::Value;

/// The 24 words of every healthy answer.
pub const ANSWER_WORDS: [&str; 24] = [
    "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliett", "kilo", "lima",
    "mike", "november", "oscar", "papa", "quebec", "romeo", "sierra", "tango", "uniform", "victor", "whiskey", "xray",
];

/// [`ANSWER_WORDS`] joined by single spaces, plus a final ".".
pub const FULL_ANSWER: &str = "alpha bravo charlie delta echo foxtrot golf hotel india juliett kilo lima mike november \
                               oscar papa quebec romeo sierra tango uniform victor whiskey xray.";

/// The answer text for a request whose last message may be an assistant prefill: the rest of [`FULL_ANSWER`] after
/// the prefill when the prefill (or the prefill without trailing whitespace) is a prefix of it, else the full answer.
pub(crate) fn answer_after(prefill: Option<&str>) -> &'static str {
    let Some(prefill) = prefill else { return FULL_ANSWER };
    if let Some(rest) = FULL_ANSWER.strip_prefix(prefill) {
        return rest;
    }
    FULL_ANSWER.strip_prefix(prefill.trim_end()).unwrap_or(FULL_ANSWER)
}

/// The shortest start of [`FULL_ANSWER`] that counts as quoted in an instruction: shorter ones ("a", "alp") turn up
/// in ordinary prompts.
const MIN_QUOTE: usize = 5;

/// The longest start of [`FULL_ANSWER`], at least [`MIN_QUOTE`] long, that `text` contains followed by a character
/// that is not alphanumeric (or by its end), so that "Say the alphabet." does not quote "alpha".
pub(crate) fn longest_quoted_prefix(text: &str) -> Option<&'static str> {
    let full = FULL_ANSWER.as_bytes();
    let first = *full.first()?;
    let mut best = 0;
    for (i, _) in text.bytes().enumerate().filter(|&(_, b)| b == first) {
        let Some(from_here) = text.as_bytes().get(i..) else { continue };
        let common = full.iter().zip(from_here).take_while(|(a, b)| a == b).count();
        if common <= best {
            continue;
        }
        // All matched bytes are ASCII, so `i + common` is a char boundary.
        let ends_word =
            text.get(i + common..).and_then(|rest| rest.chars().next()).is_none_or(|c| !c.is_alphanumeric());
        // A shorter match is followed by the answer's own next character: it must not be alphanumeric.
        let len = if ends_word {
            common
        } else {
            (0..common).rev().find(|&l| full.get(l).is_some_and(|b| !b.is_ascii_alphanumeric())).unwrap_or(0)
        };
        if len >= MIN_QUOTE && len > best {
            best = len;
        }
    }
    FULL_ANSWER.get(..best).filter(|p| !p.is_empty())
}

/// The answer to a user turn that quotes a cut-off answer and asks for the rest: like a real model, it repeats the
/// last word it was shown (which may be a word cut in the middle), then writes the rest of [`FULL_ANSWER`]. `None` when
/// `text` quotes no start of the answer (see [`longest_quoted_prefix`]).
pub(crate) fn answer_to_instruction(text: &str) -> Option<&'static str> {
    let quoted = longest_quoted_prefix(text)?;
    let last_word = quoted.trim_end().rfind(' ').map_or(0, |space| space + 1);
    FULL_ANSWER.get(last_word..)
}

/// Splits `text` into streamed tokens: each is its leading spaces plus one word, so they concatenate to `text`.
pub(crate) fn pieces(text: &str) -> impl Iterator<Item = &str> {
    let bytes = text.as_bytes();
    let mut start = 0;
    std::iter::from_fn(move || {
        if start >= bytes.len() {
            return None;
        }
        let mut end = start;
        while end < bytes.len() && bytes[end] == b' ' {
            end += 1;
        }
        while end < bytes.len() && bytes[end] != b' ' {
            end += 1;
        }
        let piece = text.get(start..end)?;
        start = end;
        Some(piece)
    })
}

/// Estimated tokens of `chars` characters: one per four, rounded up.
pub(crate) fn tokens_of_chars(chars: usize) -> u32 {
    u32::try_from(chars.div_ceil(4)).unwrap_or(u32::MAX)
}

/// Characters of the text in a message `content` (a string or an array of `{"type":"text","text":...}` parts).
pub(crate) fn content_chars(content: &Value) -> usize {
    match content {
        Value::String(s) => s.chars().count(),
        Value::Array(parts) => {
            parts.iter().filter_map(|p| p.get("text").and_then(Value::as_str)).map(|s| s.chars().count()).sum()
        }
        _ => 0,
    }
}

/// The text of a message `content`, when it is a string or text parts.
pub(crate) fn content_text(content: &Value) -> Option<String> {
    match content {
        Value::String(s) => Some(s.clone()),
        Value::Array(parts) => {
            Some(parts.iter().filter_map(|p| p.get("text").and_then(Value::as_str)).collect::<Vec<_>>().concat())
        }
        _ => None,
    }
}

/// What a completion model would write after `prompt`: if the prompt ends with the first 5 or more characters of
/// [`FULL_ANSWER`], the rest of it; otherwise the whole answer.
pub(crate) fn continuation_of_prompt(prompt: &str) -> &'static str {
    let longest = (0..prompt.len())
        .filter(|&i| prompt.is_char_boundary(i))
        .map(|i| &prompt[i..])
        .find(|tail| tail.len() >= 5 && FULL_ANSWER.starts_with(tail));
    match longest {
        Some(tail) => &FULL_ANSWER[tail.len()..],
        None => FULL_ANSWER,
    }
}

/// Characters of a completions `prompt` or embeddings `input`: a string, strings, or token arrays (4 per token).
pub(crate) fn input_chars(input: &Value) -> usize {
    match input {
        Value::String(s) => s.chars().count(),
        Value::Number(_) => 4,
        Value::Array(items) => items.iter().map(input_chars).sum(),
        _ => 0,
    }
}

fn write_json_str(out: &mut Vec<u8>, s: &str) {
    let _ = serde_json::to_writer(&mut *out, s);
}

/// A `chat.completion` body.
pub(crate) fn write_chat(out: &mut Vec<u8>, id: u64, created: u64, model: &str, text: &str, prompt_tokens: u32) {
    let completion = pieces(text).count();
    let _ =
        write!(out, "{{\"id\":\"chatcmpl-mock-{id}\",\"object\":\"chat.completion\",\"created\":{created},\"model\":");
    write_json_str(out, model);
    out.extend_from_slice(b",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":");
    write_json_str(out, text);
    let _ = write!(
        out,
        ",\"refusal\":null}},\"logprobs\":null,\"finish_reason\":\"stop\"}}],\"usage\":{{\"prompt_tokens\":{prompt_tokens},\
         \"completion_tokens\":{completion},\"total_tokens\":{}}},\"system_fingerprint\":\"fp_mock\"}}",
        prompt_tokens as usize + completion
    );
}

/// A legacy `text_completion` body.
pub(crate) fn write_completion(out: &mut Vec<u8>, id: u64, created: u64, model: &str, text: &str, prompt_tokens: u32) {
    let completion = pieces(text).count();
    let _ = write!(out, "{{\"id\":\"cmpl-mock-{id}\",\"object\":\"text_completion\",\"created\":{created},\"model\":");
    write_json_str(out, model);
    out.extend_from_slice(b",\"system_fingerprint\":\"fp_mock\",\"choices\":[{\"text\":");
    write_json_str(out, text);
    let _ = write!(
        out,
        ",\"index\":0,\"logprobs\":null,\"finish_reason\":\"stop\"}}],\"usage\":{{\"prompt_tokens\":{prompt_tokens},\
         \"completion_tokens\":{completion},\"total_tokens\":{}}}}}",
        prompt_tokens as usize + completion
    );
}

/// Builds the `data: ...\n\n` events of a streamed chat completion or legacy completion.
pub(crate) struct StreamEvents {
    /// `{"id":..,"object":..,"created":..,"model":..,"system_fingerprint":"fp_mock","choices":[`
    prefix: Vec<u8>,
    chat: bool,
    include_usage: bool,
}

impl StreamEvents {
    pub(crate) fn new(chat: bool, id: u64, created: u64, model: &str, include_usage: bool) -> StreamEvents {
        let mut prefix = Vec::with_capacity(160);
        if chat {
            let _ = write!(prefix, "{{\"id\":\"chatcmpl-mock-{id}\",\"object\":\"chat.completion.chunk\",");
        } else {
            let _ = write!(prefix, "{{\"id\":\"cmpl-mock-{id}\",\"object\":\"text_completion\",");
        }
        let _ = write!(prefix, "\"created\":{created},\"model\":");
        write_json_str(&mut prefix, model);
        prefix.extend_from_slice(b",\"system_fingerprint\":\"fp_mock\",\"choices\":[");
        StreamEvents { prefix, chat, include_usage }
    }

    fn open(&self, ev: &mut Vec<u8>) {
        ev.extend_from_slice(b"data: ");
        ev.extend_from_slice(&self.prefix);
    }

    fn close(&self, ev: &mut Vec<u8>) {
        // With include_usage, OpenAI sends `"usage":null` on every chunk but the last.
        ev.extend_from_slice(if self.include_usage { b"],\"usage\":null}\n\n" } else { b"]}\n\n" });
    }

    /// The first chat chunk: `delta: {role: "assistant", content: ""}`. Nothing for legacy completions.
    pub(crate) fn role(&self, ev: &mut Vec<u8>) {
        if self.chat {
            self.open(ev);
            ev.extend_from_slice(
                b"{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"logprobs\":null,\"finish_reason\":null}",
            );
            self.close(ev);
        }
    }

    pub(crate) fn content(&self, ev: &mut Vec<u8>, piece: &str) {
        self.open(ev);
        if self.chat {
            ev.extend_from_slice(b"{\"index\":0,\"delta\":{\"content\":");
            write_json_str(ev, piece);
            ev.extend_from_slice(b"},\"logprobs\":null,\"finish_reason\":null}");
        } else {
            ev.extend_from_slice(b"{\"text\":");
            write_json_str(ev, piece);
            ev.extend_from_slice(b",\"index\":0,\"logprobs\":null,\"finish_reason\":null}");
        }
        self.close(ev);
    }

    pub(crate) fn finish(&self, ev: &mut Vec<u8>) {
        self.open(ev);
        if self.chat {
            ev.extend_from_slice(b"{\"index\":0,\"delta\":{},\"logprobs\":null,\"finish_reason\":\"stop\"}");
        } else {
            ev.extend_from_slice(b"{\"text\":\"\",\"index\":0,\"logprobs\":null,\"finish_reason\":\"stop\"}");
        }
        self.close(ev);
    }

    /// The `choices: []` chunk with usage (only sent when `stream_options.include_usage` is true).
    pub(crate) fn usage(&self, ev: &mut Vec<u8>, prompt_tokens: u32, completion_tokens: usize) {
        if self.include_usage {
            self.open(ev);
            let _ = write!(
                ev,
                "],\"usage\":{{\"prompt_tokens\":{prompt_tokens},\"completion_tokens\":{completion_tokens},\
                 \"total_tokens\":{}}}}}\n\n",
                prompt_tokens as usize + completion_tokens
            );
        }
    }
}

pub(crate) const DONE_EVENT: &[u8] = b"data: [DONE]\n\n";
pub(crate) const MALFORMED_EVENT: &[u8] = b"data: {not json\n\n";

/// The native dimension of an embedding model.
pub(crate) fn embedding_dimension(model: &str) -> usize {
    if model.contains("3-large") {
        3072
    } else if model.contains("mistral-embed") {
        1024
    } else {
        // text-embedding-3-small, text-embedding-ada-002 and anything else.
        1536
    }
}

/// FNV-1a, 64 bits.
fn fnv1a(bytes: &[u8], mut hash: u64) -> u64 {
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// The seeds of an embeddings `input`: one per string (or token array).
pub(crate) fn embedding_seeds(input: &Value) -> Option<Vec<u64>> {
    fn seed_of(item: &Value) -> Option<u64> {
        match item {
            Value::String(s) => Some(fnv1a(s.as_bytes(), FNV_OFFSET)),
            Value::Array(tokens) if tokens.iter().all(Value::is_number) => {
                Some(tokens.iter().fold(FNV_OFFSET, |h, t| fnv1a(t.to_string().as_bytes(), fnv1a(b",", h))))
            }
            _ => None,
        }
    }
    match input {
        Value::String(_) => seed_of(input).map(|s| vec![s]),
        Value::Array(items) if items.is_empty() => None,
        Value::Array(items) if items.iter().all(Value::is_number) => seed_of(input).map(|s| vec![s]),
        Value::Array(items) => items.iter().map(seed_of).collect(),
        _ => None,
    }
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A deterministic unit vector of `dims` values from `seed`; the first `d` values of a longer vector are the
/// same before normalisation, as with OpenAI's shortened embeddings.
pub(crate) fn embedding_vector(seed: u64, dims: usize, values: &mut Vec<f32>) {
    values.clear();
    let mut state = seed;
    for _ in 0..dims {
        let bits = splitmix64(&mut state) >> 40; // 24 bits
        values.push((bits as f32 / (1u32 << 23) as f32) - 1.0);
    }
    let norm = values.iter().map(|v| f64::from(*v) * f64::from(*v)).sum::<f64>().sqrt();
    if norm > 0.0 {
        for v in values.iter_mut() {
            *v = (f64::from(*v) / norm) as f32;
        }
    } else if let Some(first) = values.first_mut() {
        *first = 1.0;
    }
}

/// An embeddings `list` body.
pub(crate) fn write_embeddings(
    out: &mut Vec<u8>,
    model: &str,
    seeds: &[u64],
    dims: usize,
    base64: bool,
    prompt_tokens: u32,
) {
    let mut values = Vec::with_capacity(dims);
    let mut raw = Vec::new();
    out.extend_from_slice(b"{\"object\":\"list\",\"data\":[");
    for (i, seed) in seeds.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        embedding_vector(*seed, dims, &mut values);
        let _ = write!(out, "{{\"object\":\"embedding\",\"index\":{i},\"embedding\":");
        if base64 {
            raw.clear();
            for v in &values {
                raw.extend_from_slice(&v.to_le_bytes());
            }
            out.push(b'"');
            out.extend_from_slice(base64::engine::general_purpose::STANDARD.encode(&raw).as_bytes());
            out.push(b'"');
        } else {
            out.push(b'[');
            for (j, v) in values.iter().enumerate() {
                if j > 0 {
                    out.push(b',');
                }
                let _ = serde_json::to_writer(&mut *out, v);
            }
            out.push(b']');
        }
        out.push(b'}');
    }
    out.extend_from_slice(b"],\"model\":");
    write_json_str(out, model);
    let _ = write!(out, ",\"usage\":{{\"prompt_tokens\":{prompt_tokens},\"total_tokens\":{prompt_tokens}}}}}");
}

/// `GET /v1/models`.
pub(crate) const MODELS_BODY: &[u8] = b"{\"object\":\"list\",\"data\":[\
{\"id\":\"gpt-4o\",\"object\":\"model\",\"created\":0,\"owned_by\":\"mock\"},\
{\"id\":\"gpt-4o-mini\",\"object\":\"model\",\"created\":0,\"owned_by\":\"mock\"},\
{\"id\":\"gpt-4.1\",\"object\":\"model\",\"created\":0,\"owned_by\":\"mock\"},\
{\"id\":\"gpt-3.5-turbo-instruct\",\"object\":\"model\",\"created\":0,\"owned_by\":\"mock\"},\
{\"id\":\"text-embedding-3-small\",\"object\":\"model\",\"created\":0,\"owned_by\":\"mock\"},\
{\"id\":\"text-embedding-3-large\",\"object\":\"model\",\"created\":0,\"owned_by\":\"mock\"},\
{\"id\":\"text-embedding-ada-002\",\"object\":\"model\",\"created\":0,\"owned_by\":\"mock\"}]}";

/// `{"error":{"message","type","param","code"}}`.
pub(crate) fn write_openai_error(
    out: &mut Vec<u8>,
    message: &str,
    r#type: &str,
    param: Option<&str>,
    code: Option<&str>,
) {
    let body = serde_json::json!({"error": {"message": message, "type": r#type, "param": param, "code": code}});
    let _ = serde_json::to_writer(&mut *out, &body);
}

/// Azure's own shape: `{"error":{"code":"401","message":...}}`.
pub(crate) fn write_azure_error(out: &mut Vec<u8>, code: &str, message: &str) {
    let body = serde_json::json!({"error": {"code": code, "message": message}});
    let _ = serde_json::to_writer(&mut *out, &body);
}

/// A key as OpenAI shows it in errors: never whole, at most its last four characters.
pub(crate) fn mask_key(key: &str) -> String {
    let n = key.chars().count();
    if n < 12 {
        return "***".to_owned();
    }
    let last4: String = key.chars().skip(n - 4).collect();
    if key.starts_with("sk-") { format!("sk-...{last4}") } else { format!("...{last4}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_answer_is_the_words_and_needs_no_json_escaping() {
        assert_eq!(FULL_ANSWER, format!("{}.", ANSWER_WORDS.join(" ")));
        assert!(FULL_ANSWER.bytes().all(|b| b.is_ascii_graphic() || b == b' '));
        assert!(!FULL_ANSWER.contains(['"', '\\']));
    }

    #[test]
    fn pieces_concatenate_to_the_text() {
        for text in [FULL_ANSWER, answer_after(Some("alpha bra")), answer_after(Some("alpha bravo ")), ""] {
            assert_eq!(pieces(text).collect::<String>(), text);
        }
        assert_eq!(pieces(FULL_ANSWER).count(), 24);
        assert_eq!(pieces(FULL_ANSWER).nth(1), Some(" bravo"));
        assert_eq!(pieces(answer_after(Some("alpha bra"))).next(), Some("vo"));
    }

    #[test]
    fn completion_prompts_are_continued() {
        assert_eq!(continuation_of_prompt("Say the alphabet."), FULL_ANSWER);
        assert_eq!(continuation_of_prompt("Give me a"), FULL_ANSWER, "short overlaps are not continuations");
        assert_eq!(format!("alpha bravo{}", continuation_of_prompt("Say: alpha bravo")), FULL_ANSWER);
    }

    #[test]
    fn prefill_continues_the_answer() {
        for prefill in ["alpha bravo", "alpha bravo  \n", "al", ""] {
            assert_eq!(format!("{}{}", prefill.trim_end(), answer_after(Some(prefill))), FULL_ANSWER);
        }
        assert_eq!(format!("alpha bravo{}", answer_after(Some("alpha bravo"))), FULL_ANSWER);
        assert_eq!(format!("alpha bravo {}", answer_after(Some("alpha bravo "))), FULL_ANSWER);
        assert_eq!(answer_after(Some("bravo")), FULL_ANSWER);
    }

    const INSTRUCTION: &str = "Your previous answer was cut off. This is exactly what you had written so far:\n\n\
                               <partial_answer>\n{partial}\n</partial_answer>\n\nContinue from exactly where it \
                               stops. Do not repeat any of it and add no preamble: reply with only the missing rest.";

    fn instruction(partial: &str) -> String {
        INSTRUCTION.replace("{partial}", partial)
    }

    #[test]
    fn the_longest_quoted_prefix_ends_a_word() {
        let cases = [
            ("Say the alphabet.", None),
            ("Say the alphabet", None),
            ("alpha", Some("alpha")),
            ("alph", None),
            ("alpha bravo", Some("alpha bravo")),
            ("alphabet soup alpha bravo", Some("alpha bravo")),
            ("alpha bravo charlie, then alpha bravo charlie delta echo", Some("alpha bravo charlie delta echo")),
            // Followed by a letter: only the part that ends a word counts.
            ("alpha bravo charliex", Some("alpha bravo")),
            ("alpha bravos", Some("alpha")),
            ("alpha bravo charlieé", Some("alpha bravo")),
            ("«alpha bravo char»", Some("alpha bravo char")),
            ("alpha bravo ", Some("alpha bravo ")),
            ("alpha  bravo", Some("alpha ")),
            ("ALPHA BRAVO", None),
            ("", None),
        ];
        for (text, expected) in cases {
            assert_eq!(longest_quoted_prefix(text), expected, "{text:?}");
        }
        assert_eq!(longest_quoted_prefix(&instruction(FULL_ANSWER)), Some(FULL_ANSWER));
        assert_eq!(longest_quoted_prefix(&instruction("alpha bravo charlie delta")), Some("alpha bravo charlie delta"));
    }

    #[test]
    fn an_instruction_gets_the_last_word_again_then_the_rest() {
        assert_eq!(answer_to_instruction("Say the alphabet."), None);
        assert_eq!(answer_to_instruction("hi"), None);
        let answer = answer_to_instruction(&instruction("alpha bravo charlie delta"));
        assert_eq!(answer, FULL_ANSWER.strip_prefix("alpha bravo charlie "));
        assert_eq!(answer.map(|a| a.split(' ').next()), Some(Some("delta")));
        for (partial, overlap) in [
            ("alpha bravo charlie delta", "delta"),
            ("alpha bravo char", "char"),
            ("alpha bravo ", "bravo "),
            ("alpha", "alpha"),
            (FULL_ANSWER, "xray."),
        ] {
            let answer = answer_to_instruction(&instruction(partial)).unwrap();
            assert!(answer.starts_with(overlap), "{partial:?} → {answer:?}");
            let kept = partial.strip_suffix(overlap).unwrap();
            assert_eq!(format!("{kept}{answer}"), FULL_ANSWER, "{partial:?}");
            assert_eq!(format!("{partial}{}", &answer[overlap.len()..]), FULL_ANSWER, "{partial:?}");
        }
    }

    #[test]
    fn embeddings_are_unit_and_deterministic() {
        let mut a = Vec::new();
        let mut b = Vec::new();
        embedding_vector(7, 1536, &mut a);
        embedding_vector(7, 1536, &mut b);
        assert_eq!(a, b);
        let norm: f64 = a.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5);
        assert_eq!(embedding_seeds(&serde_json::json!(["a", "b"])).map(|s| s.len()), Some(2));
        assert_eq!(embedding_seeds(&serde_json::json!([1, 2, 3])).map(|s| s.len()), Some(1));
        assert_eq!(embedding_seeds(&serde_json::json!([[1, 2], [3]])).map(|s| s.len()), Some(2));
        assert_eq!(embedding_seeds(&serde_json::json!({})), None);
    }

    #[test]
    fn keys_are_masked() {
        assert_eq!(mask_key("sk-0123456789abcd"), "sk-...abcd");
        assert_eq!(mask_key("0123456789abcdef"), "...cdef");
        assert_eq!(mask_key("short"), "***");
    }
}
