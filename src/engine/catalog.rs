//! The model catalog (context windows, kinds, embedding dimensions) and the pre-flight token estimate.

use std::collections::HashMap;

use serde::Deserialize;

const SHIPPED: &str = include_str!("models.toml");

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    Chat,
    Completion,
    Embedding,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelInfo {
    pub context_window: u32,
    pub kind: ModelKind,
    pub dimensions: Option<u32>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Catalog {
    models: HashMap<String, ModelInfo>,
}

impl Catalog {
    pub fn shipped() -> Self {
        // The shipped file is checked by a unit test; an unreadable one would only disable catalog-based skipping.
        Self::parse(SHIPPED).unwrap_or_else(|_| Self { models: HashMap::new() })
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        let catalog: Self = toml::from_str(text).map_err(|e| e.message().to_owned())?;
        for (name, info) in &catalog.models {
            if info.kind == ModelKind::Embedding && info.dimensions.is_none() {
                return Err(format!("embedding model `{name}` needs `dimensions`"));
            }
        }
        Ok(catalog)
    }

    /// Looks a model up by exact name, then by its dated snapshot's base (`gpt-4o-2024-08-06` → `gpt-4o`).
    pub fn get(&self, model: &str) -> Option<&ModelInfo> {
        if let Some(info) = self.models.get(model) {
            return Some(info);
        }
        let base = strip_snapshot(model)?;
        self.models.get(base)
    }

    /// Model names, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.models.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    pub fn context_window(&self, model: &str) -> Option<u32> {
        self.get(model).map(|m| m.context_window)
    }
}

fn strip_snapshot(model: &str) -> Option<&str> {
    // `-YYYY-MM-DD` suffix.
    let (base, date) = model.split_at(model.len().checked_sub(11)?);
    let b = date.as_bytes();
    let dated = b.len() == 11
        && b[0] == b'-'
        && b[5] == b'-'
        && b[8] == b'-'
        && b.iter().enumerate().all(|(i, c)| matches!(i, 0 | 5 | 8) || c.is_ascii_digit());
    dated.then_some(base)
}

/// A cheap upper-leaning estimate of prompt tokens: ~4 characters a token plus a few per message. Good enough to skip a
/// model that cannot possibly fit; the upstream still has the final word.
pub fn estimate_prompt_tokens(body: &serde_json::Value) -> u32 {
    let mut chars: usize = 0;
    let mut messages: usize = 0;
    if let Some(list) = body.get("messages").and_then(|m| m.as_array()) {
        for message in list {
            messages += 1;
            match message.get("content") {
                Some(serde_json::Value::String(s)) => chars += s.len(),
                Some(serde_json::Value::Array(parts)) => {
                    for part in parts {
                        if let Some(text) = part.get("text").and_then(|t| t.as_str()) {
                            chars += text.len();
                        }
                    }
                }
                _ => {}
            }
        }
    }
    for field in ["prompt", "input"] {
        match body.get(field) {
            Some(serde_json::Value::String(s)) => chars += s.len(),
            Some(serde_json::Value::Array(items)) => {
                chars += items.iter().filter_map(|i| i.as_str()).map(str::len).sum::<usize>();
            }
            _ => {}
        }
    }
    u32::try_from(chars.div_ceil(4) + messages * 4).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn shipped_catalog_parses_and_knows_current_models() {
        let c = Catalog::parse(SHIPPED).unwrap();
        assert_eq!(c.context_window("gpt-4o"), Some(128_000));
        assert_eq!(c.context_window("gpt-4o-2024-08-06"), Some(128_000));
        assert_eq!(c.context_window("gpt-3.5-turbo"), Some(16_385));
        assert_eq!(c.get("text-embedding-3-large").unwrap().dimensions, Some(3072));
        assert_eq!(c.get("gpt-3.5-turbo-instruct").unwrap().kind, ModelKind::Completion);
        assert!(c.get("my-finetune").is_none());
    }

    #[test]
    fn operator_catalogs_are_checked() {
        assert!(Catalog::parse("[models.x]\ncontext_window = 10\nkind = \"embedding\"\n").is_err());
        assert!(Catalog::parse("[models.x]\ncontext_window = 10\nkind = \"chat\"\nsurprise = 1\n").is_err());
        let c = Catalog::parse("[models.small]\ncontext_window = 100\nkind = \"chat\"\n").unwrap();
        assert_eq!(c.context_window("small"), Some(100));
    }

    #[test]
    fn estimate_counts_every_text_part() {
        let body = json!({"messages": [
            {"role": "system", "content": "x".repeat(400)},
            {"role": "user", "content": [{"type": "text", "text": "y".repeat(400)}, {"type": "image_url", "image_url": {"url": "u"}}]}
        ]});
        assert_eq!(estimate_prompt_tokens(&body), 200 + 8);
        assert_eq!(estimate_prompt_tokens(&json!({"input": ["abcd", "efgh"]})), 2);
        assert_eq!(estimate_prompt_tokens(&json!({"prompt": "abcdefgh"})), 2);
    }
}
