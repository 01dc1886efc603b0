//! The Responses API as the mock speaks it: response objects, the typed stream events, stored responses (kept per
//! key, as OpenAI keeps them per account) and the calls about them.

use serde_json::{Value, json};

use super::answers;

/// A response the mock created and keeps (unless the request said `store: false`).
#[derive(Clone, Debug)]
pub(crate) struct Stored {
    /// The key that created it: only that key can see it (another gets 404, as another OpenAI account would).
    pub key: String,
    pub model: String,
    pub created: u64,
    pub input: Value,
    pub text: String,
    pub prompt_tokens: u32,
    pub status: &'static str,
    pub previous: Option<String>,
}

pub(crate) fn response_id(n: u64) -> String {
    format!("resp_mock{n:012}")
}

fn item_id(response_id: &str) -> String {
    format!("msg_{}", response_id.trim_start_matches("resp_"))
}

fn usage(prompt_tokens: u32, output_tokens: usize) -> Value {
    json!({"input_tokens": prompt_tokens, "input_tokens_details": {"cached_tokens": 0},
           "output_tokens": output_tokens, "output_tokens_details": {"reasoning_tokens": 0},
           "total_tokens": prompt_tokens as usize + output_tokens})
}

fn output_text(text: &str) -> Value {
    json!({"type": "output_text", "text": text, "annotations": [], "logprobs": []})
}

fn message(id: &str, status: &str, content: Vec<Value>) -> Value {
    json!({"id": id, "type": "message", "status": status, "role": "assistant", "content": content})
}

/// The response object; `text: None` for one still in progress (no output yet).
pub(crate) fn object(id: &str, stored: &Stored, text: Option<&str>, with_usage: bool) -> Value {
    let output = match text {
        Some(text) => vec![message(&item_id(id), "completed", vec![output_text(text)])],
        None => Vec::new(),
    };
    let usage = if with_usage {
        usage(stored.prompt_tokens, text.map_or(0, |t| answers::pieces(t).count()))
    } else {
        Value::Null
    };
    let status = if text.is_none() && stored.status == "completed" { "in_progress" } else { stored.status };
    json!({
        "id": id, "object": "response", "created_at": stored.created, "status": status, "background": false,
        "error": null, "incomplete_details": null, "instructions": null, "max_output_tokens": null,
        "model": stored.model, "output": output, "parallel_tool_calls": true,
        "previous_response_id": stored.previous, "reasoning": {"effort": null, "summary": null},
        "store": true, "temperature": 1.0, "text": {"format": {"type": "text"}}, "tool_choice": "auto",
        "tools": [], "top_p": 1.0, "truncation": "disabled", "usage": usage, "user": null, "metadata": {}
    })
}

pub(crate) fn write_response(out: &mut Vec<u8>, id: &str, stored: &Stored) {
    let _ = serde_json::to_writer(&mut *out, &object(id, stored, Some(&stored.text), true));
}

/// The typed events of a streamed response, numbered in order.
pub(crate) struct ResponsesEvents {
    id: String,
    item: String,
    stored: Stored,
    seq: u64,
}

impl ResponsesEvents {
    pub(crate) fn new(id: String, stored: Stored) -> Self {
        let item = item_id(&id);
        Self { id, item, stored, seq: 0 }
    }

    fn event(&mut self, ev: &mut Vec<u8>, kind: &str, mut data: Value) {
        if let Some(map) = data.as_object_mut() {
            map.insert("type".to_owned(), Value::String(kind.to_owned()));
            map.insert("sequence_number".to_owned(), json!(self.seq));
        }
        self.seq += 1;
        ev.extend_from_slice(b"event: ");
        ev.extend_from_slice(kind.as_bytes());
        ev.extend_from_slice(b"\ndata: ");
        let _ = serde_json::to_writer(&mut *ev, &data);
        ev.extend_from_slice(b"\n\n");
    }

    /// `response.created`, `response.in_progress`, `response.output_item.added`, `response.content_part.added`.
    pub(crate) fn start(&mut self, ev: &mut Vec<u8>) {
        let response = object(&self.id, &self.stored, None, false);
        self.event(ev, "response.created", json!({"response": response}));
        self.event(ev, "response.in_progress", json!({"response": response}));
        let item = message(&self.item, "in_progress", Vec::new());
        self.event(ev, "response.output_item.added", json!({"output_index": 0, "item": item}));
        let part = output_text("");
        let item_id = self.item.clone();
        self.event(
            ev,
            "response.content_part.added",
            json!({"item_id": item_id, "output_index": 0, "content_index": 0, "part": part}),
        );
    }

    pub(crate) fn delta(&mut self, ev: &mut Vec<u8>, piece: &str) {
        let item_id = self.item.clone();
        self.event(
            ev,
            "response.output_text.delta",
            json!({"item_id": item_id, "output_index": 0, "content_index": 0, "delta": piece, "logprobs": []}),
        );
    }

    /// The `error` event of a stream that fails midway.
    pub(crate) fn error(&mut self, ev: &mut Vec<u8>, code: &str, message: &str) {
        self.event(ev, "error", json!({"code": code, "message": message, "param": null}));
    }

    /// The `.done` events and `response.completed`.
    pub(crate) fn finish(&mut self, ev: &mut Vec<u8>) {
        let text = self.stored.text.clone();
        let item_id = self.item.clone();
        self.event(
            ev,
            "response.output_text.done",
            json!({"item_id": item_id, "output_index": 0, "content_index": 0, "text": text, "logprobs": []}),
        );
        self.event(
            ev,
            "response.content_part.done",
            json!({"item_id": item_id, "output_index": 0, "content_index": 0, "part": output_text(&text)}),
        );
        let item = message(&item_id, "completed", vec![output_text(&text)]);
        self.event(ev, "response.output_item.done", json!({"output_index": 0, "item": item}));
        let response = object(&self.id, &self.stored, Some(&text), true);
        self.event(ev, "response.completed", json!({"response": response}));
    }
}

/// `GET /v1/responses/{id}/input_items`: the request's input as items, newest first (OpenAI's default order).
pub(crate) fn write_input_items(out: &mut Vec<u8>, id: &str, input: &Value) {
    let mut items: Vec<Value> = match input {
        Value::String(text) => vec![json!({"type": "message", "role": "user", "status": "completed",
                                           "content": [{"type": "input_text", "text": text}]})],
        Value::Array(items) => items.clone(),
        _ => Vec::new(),
    };
    for (n, item) in items.iter_mut().enumerate() {
        if let Some(map) = item.as_object_mut() {
            map.entry("id").or_insert_with(|| json!(format!("msg_in_{}_{n}", id.trim_start_matches("resp_"))));
            map.entry("type").or_insert_with(|| json!("message"));
        }
    }
    items.reverse();
    let first = items.first().and_then(|i| i.get("id")).cloned().unwrap_or(Value::Null);
    let last = items.last().and_then(|i| i.get("id")).cloned().unwrap_or(Value::Null);
    let body = json!({"object": "list", "data": items, "first_id": first, "last_id": last, "has_more": false});
    let _ = serde_json::to_writer(&mut *out, &body);
}

pub(crate) fn write_deleted(out: &mut Vec<u8>, id: &str) {
    let _ = serde_json::to_writer(&mut *out, &json!({"id": id, "object": "response.deleted", "deleted": true}));
}

/// Characters of a Responses `input`: a string, or items whose `content` is a string or parts.
pub(crate) fn input_chars(input: &Value) -> usize {
    match input {
        Value::String(s) => s.chars().count(),
        Value::Array(items) => items.iter().filter_map(|i| i.get("content")).map(answers::content_chars).sum(),
        _ => 0,
    }
}
