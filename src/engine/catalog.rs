//! The model catalog (context windows, kinds, embedding dimensions, prefill support, context upgrades) and the
//! pre-flight token estimate.

use std::collections::HashMap;

use serde::Deserialize;

const SHIPPED: &str = include_str!("models.toml");

/// The metric label of a model the catalog does not know (labels stay a bounded set).
pub const OTHER: &str = "other";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    Chat,
    Completion,
    Embedding,
    /// `/v1/moderations`.
    Moderation,
    /// `/v1/images/generations`.
    Image,
    /// `/v1/audio/speech` (text to speech).
    Speech,
    /// `/v1/audio/transcriptions`.
    Transcription,
}

impl ModelKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Chat => "chat",
            Self::Completion => "completion",
            Self::Embedding => "embedding",
            Self::Moderation => "moderation",
            Self::Image => "image",
            Self::Speech => "speech",
            Self::Transcription => "transcription",
        }
    }
}

/// Which API serves a model: OpenAI's (and every OpenAI-compatible server, Azure included), or one the engine translates
/// chat completions to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelProvider {
    Openai,
    Anthropic,
    Gemini,
}

/// `max_tokens` sent to a provider that requires one (Anthropic) when neither the request nor the catalog gives one.
pub const FALLBACK_MAX_TOKENS: u32 = 4096;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelInfo {
    pub context_window: u32,
    pub kind: ModelKind,
    /// Which API serves it; absent = by name (`claude-` → Anthropic, `gemini-` → Gemini, else OpenAI).
    pub provider: Option<ModelProvider>,
    /// `max_tokens` sent when a request gives none to a provider that requires one (Anthropic).
    pub default_max_tokens: Option<u32>,
    pub dimensions: Option<u32>,
    /// Whether the model continues a trailing assistant message; `None` = unknown.
    pub assistant_prefill: Option<bool>,
    /// The larger-context model to switch to when a prompt does not fit.
    pub context_upgrade: Option<String>,
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

    /// The shipped catalog, extended by the operator's file if one is given: its entries are added, and replace
    /// shipped entries of the same name whole. The result is checked as one catalog, so an operator's
    /// `context_upgrade` may name a shipped model and the other way round.
    pub fn load(path: Option<&str>) -> Result<Self, String> {
        let mut catalog = Self::unchecked(SHIPPED).map_err(|reason| format!("shipped catalog: {reason}"))?;
        if let Some(path) = path {
            let text = std::fs::read_to_string(path).map_err(|e| e.kind().to_string())?;
            catalog.models.extend(Self::unchecked(&text)?.models);
        }
        catalog.check()?;
        Ok(catalog)
    }

    /// One complete catalog, checked.
    pub fn parse(text: &str) -> Result<Self, String> {
        let catalog = Self::unchecked(text)?;
        catalog.check()?;
        Ok(catalog)
    }

    fn unchecked(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.message().to_owned())
    }

    fn check(&self) -> Result<(), String> {
        // Sorted, so that of several mistakes the same one is reported every time.
        for name in self.names() {
            let Some(info) = self.models.get(name) else { continue };
            if info.kind == ModelKind::Embedding && info.dimensions.is_none() {
                return Err(format!("embedding model `{name}` needs `dimensions`"));
            }
            let Some(upgrade) = info.context_upgrade.as_deref() else { continue };
            let Some(target) = self.models.get(upgrade) else {
                return Err(format!("`{name}`: context_upgrade `{upgrade}` is not in the catalog"));
            };
            if target.kind != info.kind {
                return Err(format!(
                    "`{name}`: context_upgrade `{upgrade}` is a {} model, not {}",
                    target.kind.as_str(),
                    info.kind.as_str()
                ));
            }
            // Windows strictly grow along a chain of upgrades, so no chain can come back to where it started.
            if target.context_window <= info.context_window {
                return Err(format!(
                    "`{name}`: context_upgrade `{upgrade}` has a context window of {}, not larger than {}",
                    target.context_window, info.context_window
                ));
            }
        }
        Ok(())
    }

    /// A model's catalog name and entry: by exact name, then by its dated snapshot's base (`gpt-4o-2024-08-06` →
    /// `gpt-4o`).
    fn resolve(&self, model: &str) -> Option<(&str, &ModelInfo)> {
        let (name, info) = match self.models.get_key_value(model) {
            Some(found) => found,
            None => self.models.get_key_value(strip_snapshot(model)?)?,
        };
        Some((name.as_str(), info))
    }

    /// Looks a model up by exact name, then by its dated snapshot's base (`gpt-4o-2024-08-06` → `gpt-4o`).
    pub fn get(&self, model: &str) -> Option<&ModelInfo> {
        self.resolve(model).map(|(_, info)| info)
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

    /// Whether the model continues a trailing assistant message; `None` when the catalog does not say.
    pub fn assistant_prefill(&self, model: &str) -> Option<bool> {
        self.get(model)?.assistant_prefill
    }

    /// The larger-context model to switch to when a prompt does not fit this one.
    pub fn context_upgrade(&self, model: &str) -> Option<&str> {
        self.get(model)?.context_upgrade.as_deref()
    }

    /// Which API serves `model`: the catalog's `provider`, else by name (`claude-…` → Anthropic, `gemini-…` → Gemini,
    /// anything else → OpenAI or an OpenAI-compatible server).
    pub fn provider(&self, model: &str) -> ModelProvider {
        if let Some(provider) = self.get(model).and_then(|m| m.provider) {
            return provider;
        }
        if model.starts_with("claude-") {
            ModelProvider::Anthropic
        } else if model.starts_with("gemini-") {
            ModelProvider::Gemini
        } else {
            ModelProvider::Openai
        }
    }

    /// `max_tokens` for a request that gives none, to a provider that requires one.
    pub fn default_max_tokens(&self, model: &str) -> u32 {
        self.get(model).and_then(|m| m.default_max_tokens).unwrap_or(FALLBACK_MAX_TOKENS)
    }

    /// The model's name for metric labels: the catalog's name (a snapshot counts as its base), or [`OTHER`], so that
    /// callers cannot grow the label set.
    pub fn label(&self, model: &str) -> &str {
        self.resolve(model).map_or(OTHER, |(name, _)| name)
    }
}

fn strip_snapshot(model: &str) -> Option<&str> {
    // Anthropic's `-YYYYMMDD` suffix (`claude-sonnet-4-5-20250929`).
    if let Some((base, date)) = model.rsplit_once('-')
        && date.len() == 8
        && date.starts_with("20")
        && date.bytes().all(|c| c.is_ascii_digit())
    {
        return Some(base);
    }
    // `-YYYY-MM-DD` suffix. Checked: eleven bytes from the end may fall inside a multi-byte character.
    let (base, date) = model.split_at_checked(model.len().checked_sub(11)?)?;
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

    /// Loads the shipped catalog extended by `overlay`.
    fn load_with(overlay: &str) -> Result<Catalog, String> {
        let path = std::env::temp_dir().join(format!("reliablegpt-catalog-{}.toml", uuid::Uuid::new_v4()));
        std::fs::write(&path, overlay).unwrap();
        let result = Catalog::load(path.to_str());
        std::fs::remove_file(&path).unwrap();
        result
    }

    #[test]
    fn an_operator_catalog_extends_the_shipped_one_and_overrides_same_names() {
        let c = load_with(concat!(
            "[models.\"my-finetune\"]\ncontext_window = 16000\nkind = \"chat\"\nassistant_prefill = true\n",
            "context_upgrade = \"gpt-4.1\"\n",
            "[models.\"gpt-4o\"]\ncontext_window = 64000\nkind = \"chat\"\n",
        ))
        .unwrap();
        assert_eq!(c.context_window("my-finetune"), Some(16_000));
        assert_eq!(c.context_upgrade("my-finetune"), Some("gpt-4.1"));
        assert_eq!(c.assistant_prefill("my-finetune"), Some(true));
        // The override replaces the entry whole: its prefill and upgrade are gone too.
        assert_eq!(c.context_window("gpt-4o-2024-08-06"), Some(64_000));
        assert_eq!(c.assistant_prefill("gpt-4o"), None);
        assert_eq!(c.context_upgrade("gpt-4o"), None);
        // Everything else is still shipped.
        assert_eq!(c.context_window("gpt-4o-mini"), Some(128_000));
        assert_eq!(c.names().len(), Catalog::shipped().names().len() + 1);
        assert_eq!(Catalog::load(None).unwrap().names(), Catalog::shipped().names());
    }

    #[test]
    fn operator_catalog_errors_name_the_problem() {
        let err = Catalog::load(Some("/nonexistent/reliablegpt-models.toml")).unwrap_err();
        assert!(err.contains("not found"), "{err}");
        let chat = |name: &str, window: u32, upgrade: &str| {
            format!(
                "[models.\"{name}\"]\ncontext_window = {window}\nkind = \"chat\"\ncontext_upgrade = \"{upgrade}\"\n"
            )
        };
        for (overlay, expected) in [
            (chat("a", 1000, "nowhere"), "`a`: context_upgrade `nowhere` is not in the catalog"),
            (chat("a", 1000, "davinci-002"), "`a`: context_upgrade `davinci-002` is a completion model, not chat"),
            (chat("a", 1000, "a"), "`a`: context_upgrade `a` has a context window of 1000, not larger than 1000"),
            (
                chat("a", 500_000, "gpt-4o"),
                "`a`: context_upgrade `gpt-4o` has a context window of 128000, not larger than 500000",
            ),
            (
                chat("a", 1000, "b") + &chat("b", 2000, "a"),
                "`b`: context_upgrade `a` has a context window of 1000, not larger than 2000",
            ),
            // Overriding a model can break a shipped model's upgrade: the merged catalog is what is checked.
            (
                "[models.\"gpt-4.1\"]\ncontext_window = 1000\nkind = \"chat\"\n".to_owned(),
                "context_upgrade `gpt-4.1` has a context window of 1000",
            ),
            (
                "[models.x]\ncontext_window = 10\nkind = \"chat\"\nassistant_prefill = \"yes\"\n".to_owned(),
                "invalid type",
            ),
        ] {
            let err = load_with(&overlay).unwrap_err();
            assert!(err.contains(expected), "{overlay}: {err}");
        }
    }

    #[test]
    fn shipped_prefill_and_upgrades_resolve_snapshots() {
        let c = Catalog::shipped();
        assert_eq!(c.assistant_prefill("gpt-4o-2024-08-06"), Some(true));
        assert_eq!(c.assistant_prefill("gpt-3.5-turbo"), Some(true));
        assert_eq!(c.assistant_prefill("o3-mini-2025-01-31"), Some(false));
        assert_eq!(c.assistant_prefill("gpt-5"), Some(false));
        assert_eq!(c.assistant_prefill("text-embedding-3-small"), None);
        assert_eq!(c.assistant_prefill("davinci-002"), None);
        assert_eq!(c.assistant_prefill("my-finetune"), None);
        assert_eq!(c.context_upgrade("gpt-4o-mini-2024-07-18"), Some("gpt-4.1-mini"));
        assert_eq!(c.context_upgrade("gpt-4"), Some("gpt-4-turbo"));
        assert_eq!(c.context_upgrade("o1"), Some("gpt-5"));
        assert_eq!(c.context_upgrade("gpt-3.5-turbo-instruct"), Some("davinci-002"));
        assert_eq!(c.context_upgrade("gpt-4.1"), None);
        assert_eq!(c.context_upgrade("my-finetune"), None);
        // Every chat model says whether it takes a prefill; no other kind does.
        for name in c.names() {
            let info = c.get(name).unwrap();
            assert_eq!(info.assistant_prefill.is_some(), info.kind == ModelKind::Chat, "{name}");
        }
    }

    #[test]
    fn providers_by_catalog_then_by_name_and_anthropic_snapshots() {
        let c = Catalog::shipped();
        assert_eq!(c.provider("claude-sonnet-4-5"), ModelProvider::Anthropic);
        assert_eq!(c.provider("claude-sonnet-4-5-20250929"), ModelProvider::Anthropic);
        assert_eq!(c.label("claude-sonnet-4-5-20250929"), "claude-sonnet-4-5");
        assert_eq!(c.provider("claude-future-9"), ModelProvider::Anthropic, "unknown, by prefix");
        assert_eq!(c.provider("gemini-2.5-pro"), ModelProvider::Gemini);
        assert_eq!(c.provider("gemini-next"), ModelProvider::Gemini);
        assert_eq!(c.provider("gpt-4o"), ModelProvider::Openai);
        assert_eq!(c.provider("llama-3-70b"), ModelProvider::Openai);
        assert_eq!(c.default_max_tokens("claude-haiku-4-5"), 8192);
        assert_eq!(c.default_max_tokens("claude-future-9"), FALLBACK_MAX_TOKENS);
        // The catalog's word wins over the name.
        let own =
            load_with("[models.\"claude-proxy\"]\ncontext_window = 1000\nkind = \"chat\"\nprovider = \"openai\"\n")
                .unwrap();
        assert_eq!(own.provider("claude-proxy"), ModelProvider::Openai);
    }

    #[test]
    fn labels_are_catalog_names_or_other() {
        let c = Catalog::shipped();
        assert_eq!(c.label("gpt-4o"), "gpt-4o");
        assert_eq!(c.label("gpt-4o-2024-08-06"), "gpt-4o");
        assert_eq!(c.label("text-embedding-3-large"), "text-embedding-3-large");
        assert_eq!(c.label("my-finetune"), OTHER);
        assert_eq!(c.label("gpt-4o-2024-13"), OTHER);
        assert_eq!(c.label(""), OTHER);
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
