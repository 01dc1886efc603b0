//! Parsing and validation of what customers send to `/v1/keys`: raw JSON in, domain values out. Every violation names the
//! field it is about and never echoes a secret.

use std::collections::{BTreeMap, HashSet};
use std::fmt;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use url::Url;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::cache::Guards;
use crate::egress::EgressPolicy;

pub const MAX_KEYS: usize = 32;
pub const MAX_KEY_LEN: usize = 512;
const MAX_EMAIL_LEN: usize = 254;
const MAX_MODEL_LIST: usize = 16;
const MAX_NAME_LEN: usize = 128;
const MAX_GRACEFUL_LEN: usize = 4096;
const MAX_DEPLOYMENTS: usize = 64;

/// A violation of the request contract, with the JSON path of the offending field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{param}: {message}")]
pub struct Invalid {
    pub param: String,
    pub message: String,
}

pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> Invalid {
    Invalid { param: param.into(), message: message.into() }
}

// ---------------------------------------------------------------------------------------------------------------------
// Wire types
// ---------------------------------------------------------------------------------------------------------------------

/// Body of `POST /v1/keys`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKeySetRequest {
    /// Contact address for alerts. It authorises nothing; mail goes only to a verified address.
    #[schema(example = "dev@example.com")]
    pub user_email: String,
    /// 1–32 provider keys, tried in this order. A bare string is an OpenAI key.
    #[schema(value_type = Vec<KeyInput>)]
    pub keys: Vec<serde_json::Value>,
    /// Optional; every field has a default.
    #[serde(default, deserialize_with = "crate::object::optional_object")]
    pub policy: Option<Policy>,
}

/// Body of `PATCH /v1/keys`. Every field is optional; all changes apply atomically or not at all.
#[derive(Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateKeySetRequest {
    /// New contact address (it must be verified again).
    pub user_email: Option<String>,
    /// Keys to append (after `order` is applied), validated like `POST /v1/keys`.
    #[serde(default)]
    #[schema(value_type = Vec<KeyInput>)]
    pub add_keys: Vec<serde_json::Value>,
    /// Ids of keys to remove.
    #[serde(default)]
    pub remove_keys: Vec<Uuid>,
    /// The new order of the remaining existing keys: every one of them exactly once.
    pub order: Option<Vec<Uuid>>,
    /// Ids of keys marked `invalid` to put back into rotation at once.
    #[serde(default)]
    pub revive_keys: Vec<Uuid>,
    /// Replaces the whole policy.
    #[serde(default, deserialize_with = "crate::object::optional_object")]
    pub policy: Option<Policy>,
}

/// A provider key: a bare string (an OpenAI key) or an object.
#[derive(ToSchema)]
#[allow(dead_code)] // documents the accepted shapes in the OpenAPI spec; parsing goes through `parse_key`.
#[serde(untagged)]
pub enum KeyInput {
    Bare(String),
    Detailed(ProviderKeyInput),
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProviderKeyInput {
    /// `openai` (also any OpenAI-compatible server via `base_url`), `azure`, `anthropic` or `gemini`.
    #[schema(example = "openai")]
    pub provider: String,
    /// The secret. Stored encrypted; never returned.
    #[schema(pattern = r"^\s*[!-~]{1,512}\s*$")]
    pub key: String,
    /// `openai`, `anthropic`, `gemini`: the API's base URL (https, allowlisted host), as the provider's SDK takes it.
    /// Default: the provider's own (`https://api.openai.com/v1`, `https://api.anthropic.com`,
    /// `https://generativelanguage.googleapis.com`); for `openai`, any OpenAI-compatible server.
    pub base_url: Option<String>,
    /// Azure only: `https://NAME.openai.azure.com`.
    pub endpoint: Option<String>,
    /// Azure only: API version, e.g. `2024-10-21`.
    pub api_version: Option<String>,
    /// Azure only: model name → deployment name.
    pub deployments: Option<BTreeMap<String, String>>,
}

/// How requests made with this key set are served. Every field is optional.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Models to try, in order, after the requested one. A repeated model means "try it again". Default: `[]`.
    #[serde(default)]
    #[schema(example = json!(["gpt-4o", "gpt-4o-mini"]), max_items = 16)]
    pub fallback_strategy: Vec<String>,
    /// Azure deployment names to try, in order, before any OpenAI key. Default: `[]` (the deployment mapped to the
    /// requested model).
    #[serde(default)]
    #[schema(max_items = 16)]
    pub azure_fallback_strategy: Vec<String>,
    /// The semantic cache: store every successful answer (write-through) and answer from it when every upstream
    /// fails, when the key set is busy (≥ 80 % of `max_concurrency`) or would shed a request. Header
    /// `x-reliablegpt-caching` overrides it per request. Default: `false`.
    #[serde(default)]
    pub caching: bool,
    /// With `caching`: serve a cache hit before calling any upstream (cost saving). Default: `false`.
    #[serde(default)]
    pub cache_first: bool,
    /// Least cosine similarity (0.5-1.0) for a semantic cache hit. Default: `null` (0.78, chosen with
    /// `reliablegpt cache-eval`).
    #[serde(default)]
    #[schema(minimum = 0.5, maximum = 1.0)]
    pub cache_threshold: Option<f32>,
    /// Hit guards: a candidate whose question differs from the query in numbers or dates, negation, named entities or
    /// scope words is not served. Default: all `true`.
    #[serde(default)]
    pub cache_guards: Guards,
    /// Lifetime of stored answers in seconds (60-31536000). Default: `null` (604800, 7 days).
    #[serde(default)]
    #[schema(minimum = 60, maximum = 31536000)]
    pub cache_ttl_seconds: Option<u32>,
    /// Most cache entries for this key set (1-10000000); the oldest are evicted. Default: `null` (100000).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 10000000)]
    pub cache_max_entries: Option<u32>,
    /// Most requests in flight for this key set, across the process; beyond it requests wait up to `max_queue_ms`,
    /// then get 503 `overloaded` with `Retry-After`. Default: `null` (no limit).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 100000)]
    pub max_concurrency: Option<u32>,
    /// Returned as a normal completion when everything failed, instead of an error. Default: `null` (return the error).
    #[serde(default)]
    #[schema(min_length = 1, max_length = 4096)]
    pub graceful_string: Option<String>,
    /// Treat a slow upstream as failed: when the first target has sent no byte after this many milliseconds, start the
    /// next one in parallel; the first to answer wins. Default: `null` (no hedging). Header `x-reliablegpt-hedge-ms`
    /// overrides it per request.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 60000)]
    pub hedge_ms: Option<u32>,
    /// Per-model budgets, e.g. `{"gpt-4o": {"rpm": 500, "tpm": 300000}}`. Requests beyond a budget wait in a bounded
    /// queue instead of collecting 429s; past `max_queue_ms` the next model is tried. Default: `{}` (no pacing).
    #[serde(default)]
    pub model_limits: BTreeMap<String, ModelLimit>,
    /// Longest a request waits in a queue: for a slot under `max_concurrency`, or for a model's budget (then the next
    /// model is tried). Default: `null` (2000 ms).
    #[serde(default)]
    #[schema(minimum = 0, maximum = 600000)]
    pub max_queue_ms: Option<u32>,
}

/// A model's request (`rpm`) and token (`tpm`) budget per minute; either may be omitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelLimit {
    #[schema(minimum = 1)]
    pub rpm: Option<u32>,
    #[schema(minimum = 1)]
    pub tpm: Option<u32>,
}

pub const DEFAULT_MAX_QUEUE_MS: u32 = 2_000;

impl Policy {
    /// How the cache matches for this key set.
    pub fn cache_matching(&self) -> crate::cache::Matching {
        crate::cache::Matching {
            threshold: self.cache_threshold.unwrap_or(crate::cache::DEFAULT_THRESHOLD),
            guards: self.cache_guards,
        }
    }

    /// How long and how much the cache keeps for this key set.
    pub fn cache_retention(&self) -> crate::cache::Retention {
        crate::cache::Retention {
            ttl_seconds: self.cache_ttl_seconds.unwrap_or(crate::cache::DEFAULT_TTL_SECONDS),
            max_entries: self.cache_max_entries.unwrap_or(crate::cache::DEFAULT_MAX_ENTRIES),
        }
    }
    /// `max_queue_ms` or its default.
    pub fn max_queue(&self) -> std::time::Duration {
        std::time::Duration::from_millis(u64::from(self.max_queue_ms.unwrap_or(DEFAULT_MAX_QUEUE_MS)))
    }
}

impl fmt::Debug for CreateKeySetRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CreateKeySetRequest")
            .field("user_email", &self.user_email)
            .field("keys", &format_args!("[{} REDACTED]", self.keys.len()))
            .field("policy", &self.policy)
            .finish()
    }
}

impl fmt::Debug for UpdateKeySetRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpdateKeySetRequest")
            .field("user_email", &self.user_email)
            .field("add_keys", &format_args!("[{} REDACTED]", self.add_keys.len()))
            .field("remove_keys", &self.remove_keys)
            .field("order", &self.order)
            .field("revive_keys", &self.revive_keys)
            .field("policy", &self.policy)
            .finish()
    }
}

impl fmt::Debug for ProviderKeyInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProviderKeyInput")
            .field("provider", &self.provider)
            .field("key", &"[REDACTED]")
            .field("base_url", &self.base_url)
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

// ---------------------------------------------------------------------------------------------------------------------
// Domain values
// ---------------------------------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    Openai,
    Azure,
    /// Anthropic's Messages API (the engine translates chat completions to it).
    Anthropic,
    /// Google's Gemini API (`generateContent`; the engine translates chat completions to it).
    Gemini,
}

impl Provider {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Openai => "openai",
            Self::Azure => "azure",
            Self::Anthropic => "anthropic",
            Self::Gemini => "gemini",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "openai" => Some(Self::Openai),
            "azure" => Some(Self::Azure),
            "anthropic" => Some(Self::Anthropic),
            "gemini" => Some(Self::Gemini),
            _ => None,
        }
    }
}

/// Non-secret settings of a provider key (stored in clear, returned to the owner).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct KeyTarget {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deployments: Option<BTreeMap<String, String>>,
}

impl KeyTarget {
    /// SHA-256 of an unambiguous encoding of every routing field (each present/absent, length-prefixed; deployments in
    /// key order). Bound into a provider key's ciphertext, so a row whose target was changed in the database no longer
    /// decrypts.
    pub fn digest(&self) -> [u8; 32] {
        use sha2::{Digest, Sha256};
        fn field(h: &mut Sha256, value: Option<&str>) {
            match value {
                None => h.update([0u8]),
                Some(text) => {
                    h.update([1u8]);
                    h.update((text.len() as u64).to_be_bytes());
                    h.update(text.as_bytes());
                }
            }
        }
        let mut h = Sha256::new();
        h.update(b"reliablegpt/v2/key-target\0");
        field(&mut h, self.base_url.as_deref());
        field(&mut h, self.endpoint.as_deref());
        field(&mut h, self.api_version.as_deref());
        match &self.deployments {
            None => h.update([0u8]),
            Some(map) => {
                h.update([1u8]);
                h.update((map.len() as u64).to_be_bytes());
                for (model, deployment) in map {
                    field(&mut h, Some(model));
                    field(&mut h, Some(deployment));
                }
            }
        }
        h.finalize().into()
    }
}

/// A validated provider key, secret held in a zeroizing type.
#[derive(Debug)]
pub struct ProviderKeySpec {
    pub provider: Provider,
    pub secret: SecretString,
    pub target: KeyTarget,
}

impl ProviderKeySpec {
    /// What the owner sees instead of the key: at most a quarter of it, never less than 24 hidden characters.
    pub fn masked(&self) -> String {
        mask(self.secret.expose_secret())
    }
}

pub fn mask(secret: &str) -> String {
    let chars: Vec<char> = secret.chars().collect();
    if chars.len() >= 28 {
        let head: String = chars[..3].iter().collect();
        let tail: String = chars[chars.len() - 4..].iter().collect();
        format!("{head}...{tail}")
    } else {
        "...".to_owned()
    }
}

/// An email address: trimmed, at most 254 characters, domain lower-cased.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmailAddress(String);

impl EmailAddress {
    pub fn parse(param: &str, text: &str) -> Result<Self, Invalid> {
        let bad = || invalid(param, "must be a valid email address of at most 254 characters");
        let text = text.trim();
        if text.is_empty() || text.len() > MAX_EMAIL_LEN {
            return Err(bad());
        }
        let (local, domain) = text.rsplit_once('@').ok_or_else(bad)?;
        let local_ok = !local.is_empty()
            && local.len() <= 64
            && !local.starts_with('.')
            && !local.ends_with('.')
            && !local.contains("..")
            && local.chars().all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~.".contains(c));
        let domain = domain.to_ascii_lowercase();
        let labels: Vec<&str> = domain.split('.').collect();
        let domain_ok = labels.len() >= 2
            && labels.iter().all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && !l.starts_with('-')
                    && !l.ends_with('-')
                    && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            })
            && labels.last().is_some_and(|tld| tld.len() >= 2 && tld.chars().all(|c| c.is_ascii_alphabetic()));
        if !local_ok || !domain_ok {
            return Err(bad());
        }
        Ok(Self(format!("{local}@{domain}")))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[derive(Debug)]
pub struct NewKeySet {
    pub user_email: EmailAddress,
    pub keys: Vec<ProviderKeySpec>,
    pub policy: Policy,
}

#[derive(Debug, Default)]
pub struct KeySetChanges {
    pub user_email: Option<EmailAddress>,
    pub add_keys: Vec<ProviderKeySpec>,
    pub remove_keys: Vec<Uuid>,
    pub order: Option<Vec<Uuid>>,
    pub revive_keys: Vec<Uuid>,
    pub policy: Option<Policy>,
}

impl NewKeySet {
    pub fn parse(req: CreateKeySetRequest, egress: &EgressPolicy) -> Result<Self, Invalid> {
        let user_email = EmailAddress::parse("user_email", &req.user_email)?;
        if req.keys.is_empty() || req.keys.len() > MAX_KEYS {
            return Err(invalid("keys", format!("must hold between 1 and {MAX_KEYS} keys")));
        }
        let keys = parse_keys("keys", req.keys, egress)?;
        let policy = req.policy.unwrap_or_default();
        validate_policy(&policy)?;
        check_policy_against_keys(&policy, keys.iter().map(|k| &k.target))?;
        Ok(Self { user_email, keys, policy })
    }
}

impl KeySetChanges {
    /// Checks each field on its own; checks that need the stored key set happen in the vault's transaction.
    pub fn parse(req: UpdateKeySetRequest, egress: &EgressPolicy) -> Result<Self, Invalid> {
        let user_email = req.user_email.map(|e| EmailAddress::parse("user_email", &e)).transpose()?;
        if req.add_keys.len() > MAX_KEYS {
            return Err(invalid("add_keys", format!("must hold at most {MAX_KEYS} keys")));
        }
        let add_keys = parse_keys("add_keys", req.add_keys, egress)?;
        if let Some(policy) = &req.policy {
            validate_policy(policy)?;
        }
        for (name, ids) in [("remove_keys", &req.remove_keys), ("revive_keys", &req.revive_keys)] {
            no_duplicates(name, ids)?;
        }
        if let Some(order) = &req.order {
            no_duplicates("order", order)?;
        }
        Ok(Self {
            user_email,
            add_keys,
            remove_keys: req.remove_keys,
            order: req.order,
            revive_keys: req.revive_keys,
            policy: req.policy,
        })
    }
}

fn no_duplicates(name: &str, ids: &[Uuid]) -> Result<(), Invalid> {
    let mut seen = HashSet::new();
    for (i, id) in ids.iter().enumerate() {
        if !seen.insert(id) {
            return Err(invalid(format!("{name}[{i}]"), "appears twice"));
        }
    }
    Ok(())
}

fn parse_keys(
    name: &str,
    values: Vec<serde_json::Value>,
    egress: &EgressPolicy,
) -> Result<Vec<ProviderKeySpec>, Invalid> {
    let mut keys = Vec::with_capacity(values.len());
    for (i, value) in values.into_iter().enumerate() {
        let key = parse_key(&format!("{name}[{i}]"), value, egress)?;
        let duplicate = keys.iter().any(|k: &ProviderKeySpec| {
            k.provider == key.provider
                && k.target == key.target
                && k.secret.expose_secret() == key.secret.expose_secret()
        });
        if duplicate {
            return Err(invalid(format!("{name}[{i}]"), "duplicates an earlier key"));
        }
        keys.push(key);
    }
    Ok(keys)
}

fn parse_key(param: &str, value: serde_json::Value, egress: &EgressPolicy) -> Result<ProviderKeySpec, Invalid> {
    let input = match value {
        serde_json::Value::String(key) => ProviderKeyInput {
            provider: "openai".into(),
            key,
            base_url: None,
            endpoint: None,
            api_version: None,
            deployments: None,
        },
        serde_json::Value::Object(_) => {
            serde_json::from_value::<ProviderKeyInput>(value).map_err(|e| invalid(param, describe_serde_error(&e)))?
        }
        _ => {
            return Err(invalid(param, "must be a string (an OpenAI key) or an object with `provider` and `key`"));
        }
    };
    let provider = Provider::parse(&input.provider)
        .ok_or_else(|| invalid(format!("{param}.provider"), "must be `openai`, `azure`, `anthropic` or `gemini`"))?;
    let secret = parse_secret(&format!("{param}.key"), input.key)?;
    let url = |field: &str, text: &str| {
        egress
            .check_url(text)
            .map(|u| normalise_base(&u))
            .map_err(|e| invalid(format!("{param}.{field}"), e.to_string()))
    };
    let target = match provider {
        Provider::Openai | Provider::Anthropic | Provider::Gemini => {
            for (field, present) in [
                ("endpoint", input.endpoint.is_some()),
                ("api_version", input.api_version.is_some()),
                ("deployments", input.deployments.is_some()),
            ] {
                if present {
                    return Err(invalid(format!("{param}.{field}"), "is only allowed for provider `azure`"));
                }
            }
            KeyTarget {
                base_url: input.base_url.as_deref().map(|b| url("base_url", b)).transpose()?,
                ..Default::default()
            }
        }
        Provider::Azure => {
            if input.base_url.is_some() {
                return Err(invalid(
                    format!("{param}.base_url"),
                    "is not allowed for provider `azure`; use `endpoint`",
                ));
            }
            let endpoint = input
                .endpoint
                .ok_or_else(|| invalid(format!("{param}.endpoint"), "is required for provider `azure`"))?;
            let api_version = input
                .api_version
                .ok_or_else(|| invalid(format!("{param}.api_version"), "is required for provider `azure`"))?;
            if !is_api_version(&api_version) {
                return Err(invalid(format!("{param}.api_version"), "must look like 2024-10-21 or 2025-01-01-preview"));
            }
            let deployments = input
                .deployments
                .ok_or_else(|| invalid(format!("{param}.deployments"), "is required for provider `azure`"))?;
            if deployments.is_empty() || deployments.len() > MAX_DEPLOYMENTS {
                return Err(invalid(
                    format!("{param}.deployments"),
                    format!("must map between 1 and {MAX_DEPLOYMENTS} models to deployment names"),
                ));
            }
            for (model, deployment) in &deployments {
                if !is_name(model) {
                    return Err(invalid(
                        format!("{param}.deployments"),
                        "model names must be 1-128 characters of letters, digits, `.`, `_`, `-`, `:`, `/`",
                    ));
                }
                if !is_deployment_name(deployment) {
                    return Err(invalid(
                        format!("{param}.deployments.{model}"),
                        "deployment names must be 1-128 characters of letters, digits, `.`, `_`, `-`, without `..`",
                    ));
                }
            }
            KeyTarget {
                base_url: None,
                endpoint: Some(url("endpoint", &endpoint)?),
                api_version: Some(api_version),
                deployments: Some(deployments),
            }
        }
    };
    Ok(ProviderKeySpec { provider, secret, target })
}

fn normalise_base(url: &Url) -> String {
    url.as_str().trim_end_matches('/').to_owned()
}

fn parse_secret(param: &str, raw: String) -> Result<SecretString, Invalid> {
    let raw = zeroize::Zeroizing::new(raw);
    let trimmed = raw.trim();
    if trimmed.is_empty() || trimmed.len() > MAX_KEY_LEN || !trimmed.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid(param, format!("must be 1-{MAX_KEY_LEN} printable ASCII characters without spaces")));
    }
    Ok(SecretString::from(trimmed.to_owned()))
}

/// Serde's message for a value of the wrong shape, with any quoted string value removed (it could be a secret sent in
/// the wrong field) and without the position suffix, which means nothing inside an already-parsed value.
pub fn describe_serde_error(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let text = match text.rfind(" at line ") {
        Some(i) => &text[..i],
        None => text.as_str(),
    };
    redact_quoted_strings(text)
}

/// `invalid type: string "sk-...", expected a sequence` → `invalid type: a string, expected a sequence`.
pub fn redact_quoted_strings(text: &str) -> String {
    match (text.find("string \""), text.rfind("\", ")) {
        (Some(start), Some(end)) if end > start => {
            format!("{}a string{}", &text[..start], &text[end + 1..])
        }
        (Some(start), _) => format!("{}a string", &text[..start]),
        _ => text.to_owned(),
    }
}

fn is_name(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= MAX_NAME_LEN
        && text.chars().all(|c| c.is_ascii_alphanumeric() || "._-:/".contains(c))
}

/// An Azure deployment name: one URL path segment (`/openai/deployments/{name}`), so no `/`, no `..` and nothing that
/// needs escaping.
pub fn is_deployment_name(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= MAX_NAME_LEN
        && !text.contains("..")
        && text.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
}

fn is_api_version(text: &str) -> bool {
    // Checked: byte 10 may fall inside a multi-byte character (then it is no version anyway).
    let Some((date, suffix)) = text.split_at_checked(text.len().min(10)) else {
        return false;
    };
    let b = date.as_bytes();
    date.len() == 10
        && b.iter().enumerate().all(|(i, c)| if i == 4 || i == 7 { *c == b'-' } else { c.is_ascii_digit() })
        && (suffix.is_empty() || suffix == "-preview")
}

pub fn validate_policy(policy: &Policy) -> Result<(), Invalid> {
    for (name, list) in [
        ("policy.fallback_strategy", &policy.fallback_strategy),
        ("policy.azure_fallback_strategy", &policy.azure_fallback_strategy),
    ] {
        if list.len() > MAX_MODEL_LIST {
            return Err(invalid(name, format!("must hold at most {MAX_MODEL_LIST} entries")));
        }
        for (i, model) in list.iter().enumerate() {
            if !is_name(model) {
                return Err(invalid(
                    format!("{name}[{i}]"),
                    "must be 1-128 characters of letters, digits, `.`, `_`, `-`, `:`, `/`",
                ));
            }
        }
    }
    if let Some(n) = policy.max_concurrency
        && (n == 0 || n > 100_000)
    {
        return Err(invalid("policy.max_concurrency", "must be between 1 and 100000, or null"));
    }
    if let Some(text) = &policy.graceful_string
        && (text.is_empty() || text.chars().count() > MAX_GRACEFUL_LEN)
    {
        return Err(invalid("policy.graceful_string", format!("must be 1-{MAX_GRACEFUL_LEN} characters, or null")));
    }
    if let Some(ms) = policy.hedge_ms
        && !(1..=60_000).contains(&ms)
    {
        return Err(invalid("policy.hedge_ms", "must be between 1 and 60000, or null"));
    }
    if let Some(ms) = policy.max_queue_ms
        && ms > 600_000
    {
        return Err(invalid("policy.max_queue_ms", "must be at most 600000, or null"));
    }
    if let Some(t) = policy.cache_threshold
        && !(0.5..=1.0).contains(&t)
    {
        return Err(invalid("policy.cache_threshold", "must be between 0.5 and 1.0, or null"));
    }
    if let Some(ttl) = policy.cache_ttl_seconds
        && !(60..=crate::cache::MAX_TTL_SECONDS).contains(&ttl)
    {
        return Err(invalid("policy.cache_ttl_seconds", "must be between 60 and 31536000, or null"));
    }
    if let Some(n) = policy.cache_max_entries
        && !(1..=10_000_000).contains(&n)
    {
        return Err(invalid("policy.cache_max_entries", "must be between 1 and 10000000, or null"));
    }
    if policy.model_limits.len() > MAX_MODEL_LIST * 2 {
        return Err(invalid("policy.model_limits", format!("must hold at most {} models", MAX_MODEL_LIST * 2)));
    }
    for (model, limit) in &policy.model_limits {
        let param = format!("policy.model_limits.{model}");
        if !is_name(model) {
            return Err(invalid(param, "is not a valid model name"));
        }
        if limit.rpm.is_none() && limit.tpm.is_none() {
            return Err(invalid(param, "needs `rpm`, `tpm` or both"));
        }
        if limit.rpm == Some(0) || limit.tpm == Some(0) {
            return Err(invalid(param, "budgets must be positive"));
        }
    }
    Ok(())
}

/// `azure_fallback_strategy` may only name deployments that some Azure key of the set defines.
pub fn check_policy_against_keys<'a>(
    policy: &Policy,
    targets: impl Iterator<Item = &'a KeyTarget>,
) -> Result<(), Invalid> {
    if policy.azure_fallback_strategy.is_empty() {
        return Ok(());
    }
    let known: HashSet<&String> = targets.filter_map(|t| t.deployments.as_ref()).flat_map(|d| d.values()).collect();
    for (i, deployment) in policy.azure_fallback_strategy.iter().enumerate() {
        if !known.contains(deployment) {
            return Err(invalid(
                format!("policy.azure_fallback_strategy[{i}]"),
                "names no deployment of any Azure key in this key set",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::egress::HostPattern;
    use serde_json::json;

    fn egress() -> EgressPolicy {
        EgressPolicy::new(
            ["api.openai.com", "*.openai.azure.com", "generativelanguage.googleapis.com"]
                .into_iter()
                .map(|h| HostPattern::parse(h).unwrap())
                .collect(),
            false,
        )
    }

    fn create(body: serde_json::Value) -> Result<NewKeySet, Invalid> {
        let req: CreateKeySetRequest = serde_json::from_value(body).map_err(|e| invalid("body", e.to_string()))?;
        NewKeySet::parse(req, &egress())
    }

    fn param_of(body: serde_json::Value) -> String {
        create(body).unwrap_err().param
    }

    const KEY: &str = "sk-test-0123456789abcdef0123456789abcdef";

    #[test]
    fn full_example_parses() {
        let set = create(json!({
            "user_email": "  Dev@Example.COM ",
            "keys": [KEY,
                     {"provider": "openai", "key": "sk-other-key-000000000000000000000", "base_url": "https://api.openai.com/v1/"},
                     {"provider": "azure", "key": "0123456789abcdef0123456789abcdef", "endpoint": "https://name.openai.azure.com",
                      "api_version": "2024-10-21", "deployments": {"gpt-4o": "prod-gpt4o"}}],
            "policy": {"fallback_strategy": ["gpt-4o", "gpt-4o-mini"], "azure_fallback_strategy": ["prod-gpt4o"]}
        }))
        .unwrap();
        assert_eq!(set.user_email.as_str(), "Dev@example.com");
        assert_eq!(set.keys.len(), 3);
        assert_eq!(set.keys[0].provider, Provider::Openai);
        assert_eq!(set.keys[1].target.base_url.as_deref(), Some("https://api.openai.com/v1"));
        assert_eq!(set.keys[2].provider, Provider::Azure);
        let more = create(json!({"user_email": "a@b.co", "keys": [
            {"provider": "anthropic", "key": KEY},
            {"provider": "gemini", "key": KEY, "base_url": "https://generativelanguage.googleapis.com/"},
        ]}))
        .unwrap();
        assert_eq!((more.keys[0].provider, more.keys[1].provider), (Provider::Anthropic, Provider::Gemini));
        assert_eq!(more.keys[1].target.base_url.as_deref(), Some("https://generativelanguage.googleapis.com"));
        assert_eq!(set.keys[2].target.endpoint.as_deref(), Some("https://name.openai.azure.com"));
        assert_eq!(set.keys[0].masked(), "sk-...cdef");
        assert_eq!(set.policy.fallback_strategy, vec!["gpt-4o", "gpt-4o-mini"]);
        assert!(!set.policy.caching);
    }

    #[test]
    fn each_violation_names_its_field() {
        let azure = |extra: serde_json::Value| {
            let mut k = json!({"provider": "azure", "key": KEY, "endpoint": "https://n.openai.azure.com",
                               "api_version": "2024-10-21", "deployments": {"gpt-4o": "d1"}});
            for (name, value) in extra.as_object().unwrap() {
                if value.is_null() {
                    k.as_object_mut().unwrap().remove(name);
                } else {
                    k[name] = value.clone();
                }
            }
            json!({"user_email": "a@b.co", "keys": [k]})
        };
        let cases = [
            (json!({"user_email": "nope", "keys": [KEY]}), "user_email"),
            (json!({"user_email": format!("{}@b.co", "a".repeat(260)), "keys": [KEY]}), "user_email"),
            (json!({"user_email": "a@b", "keys": [KEY]}), "user_email"),
            (json!({"user_email": "a@b.co", "keys": []}), "keys"),
            (json!({"user_email": "a@b.co", "keys": vec![KEY; 33]}), "keys"),
            (json!({"user_email": "a@b.co", "keys": [KEY, "x".repeat(513)]}), "keys[1].key"),
            (json!({"user_email": "a@b.co", "keys": ["has space inside"]}), "keys[0].key"),
            (json!({"user_email": "a@b.co", "keys": [""]}), "keys[0].key"),
            (json!({"user_email": "a@b.co", "keys": [42]}), "keys[0]"),
            (json!({"user_email": "a@b.co", "keys": [KEY, KEY]}), "keys[1]"),
            (json!({"user_email": "a@b.co", "keys": [{"provider": "cohere", "key": KEY}]}), "keys[0].provider"),
            (
                json!({"user_email": "a@b.co", "keys": [{"provider": "gemini", "key": KEY, "api_version": "2024-10-21"}]}),
                "keys[0].api_version",
            ),
            (
                json!({"user_email": "a@b.co", "keys": [{"provider": "anthropic", "key": KEY, "base_url": "http://api.anthropic.com"}]}),
                "keys[0].base_url",
            ),
            (json!({"user_email": "a@b.co", "keys": [{"provider": "openai", "key": KEY, "extra": 1}]}), "keys[0]"),
            (
                json!({"user_email": "a@b.co", "keys": [{"provider": "openai", "key": KEY, "base_url": "http://api.openai.com"}]}),
                "keys[0].base_url",
            ),
            (
                json!({"user_email": "a@b.co", "keys": [{"provider": "openai", "key": KEY, "base_url": "https://169.254.169.254"}]}),
                "keys[0].base_url",
            ),
            (
                json!({"user_email": "a@b.co", "keys": [{"provider": "openai", "key": KEY, "endpoint": "https://n.openai.azure.com"}]}),
                "keys[0].endpoint",
            ),
            (azure(json!({"endpoint": "https://evil.example.com"})), "keys[0].endpoint"),
            (azure(json!({"endpoint": null})), "keys[0].endpoint"),
            (azure(json!({"api_version": "latest"})), "keys[0].api_version"),
            (azure(json!({"deployments": {}})), "keys[0].deployments"),
            (azure(json!({"deployments": {"gpt 4o": "d"}})), "keys[0].deployments"),
            (
                json!({"user_email": "a@b.co", "keys": [KEY], "policy": {"fallback_strategy": [""]}}),
                "policy.fallback_strategy[0]",
            ),
            (
                json!({"user_email": "a@b.co", "keys": [KEY], "policy": {"max_concurrency": 0}}),
                "policy.max_concurrency",
            ),
            (
                json!({"user_email": "a@b.co", "keys": [KEY], "policy": {"graceful_string": ""}}),
                "policy.graceful_string",
            ),
            (
                json!({"user_email": "a@b.co", "keys": [KEY], "policy": {"azure_fallback_strategy": ["nope"]}}),
                "policy.azure_fallback_strategy[0]",
            ),
        ];
        for (body, param) in cases {
            assert_eq!(param_of(body.clone()), param, "{body}");
        }
    }

    #[test]
    fn errors_never_echo_the_key() {
        let secret = "sk-secret with-a-space-0123456789";
        let err = create(json!({"user_email": "a@b.co", "keys": [secret]})).unwrap_err();
        assert!(!err.to_string().contains("sk-secret"), "{err}");
        let err = create(json!({"user_email": "a@b.co", "keys": [{"provider": "nope", "key": secret}]})).unwrap_err();
        assert!(!err.to_string().contains("sk-secret"), "{err}");
    }

    #[test]
    fn serde_messages_lose_quoted_values() {
        let e = serde_json::from_str::<Vec<u8>>("\"sk-secret-value\"").unwrap_err();
        let text = describe_serde_error(&e);
        assert_eq!(text, "invalid type: a string, expected a sequence");
        let e = serde_json::from_value::<ProviderKeyInput>(
            json!({"provider": "openai", "key": "k", "deployments": "sk-secret-value"}),
        )
        .unwrap_err();
        let text = describe_serde_error(&e);
        assert!(!text.contains("sk-secret"), "{text}");
        assert!(text.contains("expected a map"), "{text}");
    }

    #[test]
    fn debug_of_every_request_and_key_type_is_redacted() {
        let secret = "sk-debug-canary-0123456789abcdef0123";
        let create: CreateKeySetRequest = serde_json::from_value(json!({
            "user_email": "a@b.co",
            "keys": [secret, {"provider": "azure", "key": secret, "endpoint": "https://r.openai.azure.com",
                              "api_version": "2024-10-21", "deployments": {"gpt-4o": "d"}}]
        }))
        .unwrap();
        let update: UpdateKeySetRequest = serde_json::from_value(json!({"add_keys": [secret]})).unwrap();
        let input: ProviderKeyInput = serde_json::from_value(json!({"provider": "openai", "key": secret})).unwrap();
        let parsed = NewKeySet::parse(
            serde_json::from_value(json!({"user_email": "a@b.co", "keys": [secret]})).unwrap(),
            &egress(),
        )
        .unwrap();
        let changes =
            KeySetChanges::parse(serde_json::from_value(json!({"add_keys": [secret]})).unwrap(), &egress()).unwrap();
        let all = format!("{create:?} {update:?} {input:?} {parsed:?} {changes:?} {:?}", parsed.keys[0]);
        assert!(!all.contains("sk-debug-canary"), "{all}");
        assert!(all.contains("REDACTED"), "{all}");
    }

    #[test]
    fn masking_hides_short_keys_entirely() {
        assert_eq!(mask("short-key"), "...");
        assert_eq!(mask(&"k".repeat(27)), "...");
        assert_eq!(mask("0123456789abcdef0123456789abcdef"), "012...cdef");
    }

    #[test]
    fn api_versions() {
        assert!(is_api_version("2024-10-21"));
        assert!(is_api_version("2025-01-01-preview"));
        for bad in ["2024-1-21", "latest", "2024-10-21-beta", "", "2024/10/21"] {
            assert!(!is_api_version(bad), "{bad}");
        }
    }

    #[test]
    fn patch_rejects_duplicate_ids() {
        let id = Uuid::new_v4();
        let req = UpdateKeySetRequest { remove_keys: vec![id, id], ..Default::default() };
        assert_eq!(KeySetChanges::parse(req, &egress()).unwrap_err().param, "remove_keys[1]");
        let empty = KeySetChanges::parse(UpdateKeySetRequest::default(), &egress()).unwrap();
        assert!(empty.add_keys.is_empty() && empty.policy.is_none() && empty.order.is_none());
    }

    #[test]
    fn target_digest_changes_with_every_routing_field() {
        let base = KeyTarget {
            base_url: None,
            endpoint: Some("https://a.openai.azure.com".into()),
            api_version: Some("2024-10-21".into()),
            deployments: Some(BTreeMap::from([("gpt-4o".into(), "d1".into())])),
        };
        let mut variants = vec![KeyTarget::default()];
        let mut t = base.clone();
        t.endpoint = Some("https://b.openai.azure.com".into());
        variants.push(t);
        let mut t = base.clone();
        t.api_version = Some("2025-01-01-preview".into());
        variants.push(t);
        let mut t = base.clone();
        t.deployments = Some(BTreeMap::from([("gpt-4o".into(), "d2".into())]));
        variants.push(t);
        let mut t = base.clone();
        t.deployments = Some(BTreeMap::from([("gpt-4od".into(), "1".into())]));
        variants.push(t);
        let mut t = base.clone();
        t.base_url = t.endpoint.take();
        variants.push(t);
        for v in &variants {
            assert_ne!(v.digest(), base.digest(), "{v:?}");
        }
        assert_eq!(base.clone().digest(), base.digest());
    }

    use proptest::collection::{btree_map, vec};
    use proptest::prelude::{BoxedStrategy, Just, Strategy, any, prop_oneof};
    use proptest::strategy::ValueTree as _;
    use serde_json::Value;

    /// Any JSON value: nulls, numbers at the edges, unicode and huge strings, nested arrays and objects.
    fn junk() -> BoxedStrategy<Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            prop_oneof![Just(0i64), Just(-1), Just(1), Just(60), Just(600_001)].prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            text().prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 32, 6, |inner| {
            prop_oneof![
                vec(inner.clone(), 0..6).prop_map(Value::from),
                vec((field_name(), inner), 0..6).prop_map(|fields| Value::Object(fields.into_iter().collect())),
            ]
        })
        .boxed()
    }

    fn text() -> BoxedStrategy<String> {
        prop_oneof![
            any::<String>(),
            "[a-z0-9._:/@ -]{0,20}",
            "[\u{e9}\u{1F600}\u{202e}\u{0}]{1,8}",
            ("[a-z ]{1,3}", 1usize..5_000).prop_map(|(s, n)| s.repeat(n)),
        ]
        .boxed()
    }

    fn field_name() -> BoxedStrategy<String> {
        let mut names: Vec<String> = ["user_email", "keys", "policy", "provider", "key", "base_url", "endpoint"]
            .into_iter()
            .chain(["api_version", "deployments", "add_keys", "remove_keys", "order", "revive_keys", "rpm", "tpm"])
            .map(String::from)
            .collect();
        names.extend(policy_fields());
        prop_oneof![4 => proptest::sample::select(names), 1 => text()].boxed()
    }

    fn policy_fields() -> Vec<String> {
        match serde_json::to_value(Policy::default()) {
            Ok(Value::Object(fields)) => fields.keys().cloned().collect(),
            _ => unreachable!("a policy serialises to an object"),
        }
    }

    /// Mostly plausible, sometimes junk.
    fn or_junk(plausible: BoxedStrategy<Value>) -> BoxedStrategy<Value> {
        prop_oneof![6 => plausible, 1 => junk()].boxed()
    }

    fn strings(pattern: &'static [&'static str]) -> BoxedStrategy<Value> {
        proptest::sample::select(pattern).prop_map(Value::from).boxed()
    }

    fn name() -> BoxedStrategy<String> {
        prop_oneof![4 => "[a-z0-9.-]{1,12}", 1 => "[a-z]{127,130}", 1 => "[a-z./:_ ]{0,6}", 1 => text()].boxed()
    }

    fn secret() -> BoxedStrategy<Value> {
        prop_oneof![
            4 => "sk-[A-Za-z0-9]{20,40}".prop_map(Value::from),
            1 => " {0,2}[!-~]{1,8} {0,2}".prop_map(Value::from),
            1 => (505usize..520).prop_map(|n| Value::from("k".repeat(n))),
            1 => text().prop_map(Value::from),
        ]
        .boxed()
    }

    /// An object with some of `fields` (each plausible or junk) and sometimes an unknown field.
    fn object_of(present: f64, fields: Vec<(&'static str, BoxedStrategy<Value>)>) -> BoxedStrategy<Value> {
        let picks: Vec<_> = fields
            .into_iter()
            .map(|(name, value)| proptest::option::weighted(present, value).prop_map(move |v| (name, v)))
            .collect();
        let extra = proptest::option::weighted(0.05, (field_name(), junk()));
        (picks, extra)
            .prop_map(|(picks, extra)| {
                let mut object = serde_json::Map::new();
                for (name, value) in picks {
                    if let Some(value) = value {
                        object.insert(name.to_owned(), value);
                    }
                }
                if let Some((name, value)) = extra {
                    object.insert(name, value);
                }
                Value::Object(object)
            })
            .boxed()
    }

    fn key_input() -> BoxedStrategy<Value> {
        let urls = &[
            "https://api.openai.com/v1",
            "https://api.openai.com/v1/",
            "https://r1.openai.azure.com",
            "https://R1.OpenAI.Azure.com.",
            "http://api.openai.com",
            "https://10.0.0.1",
            "https://api.openai.com:8443",
            "https://user@api.openai.com",
            "https://evil.example.com",
            "https://api.openai.com/v1?x=1",
            "",
        ];
        let deployments = btree_map(name(), name().prop_map(Value::from), 0..5)
            .prop_map(|m| Value::Object(m.into_iter().collect()))
            .boxed();
        let many_deployments = (60usize..70)
            .prop_map(|n| Value::Object((0..n).map(|i| (format!("m{i}"), Value::from(format!("d{i}")))).collect()))
            .boxed();
        let deployments = prop_oneof![4 => deployments, 1 => many_deployments].boxed();
        let version = strings(&["2024-10-21", "2025-01-01-preview", "2024-1-21", "latest"]);
        let openai = (secret(), proptest::option::of(strings(urls))).prop_map(|(key, url)| {
            let mut k = json!({"provider": "openai", "key": key});
            if let Some(url) = url {
                k["base_url"] = url;
            }
            k
        });
        let azure = (secret(), strings(urls), version.clone(), deployments.clone()).prop_map(|(key, url, v, d)| {
            json!({"provider": "azure", "key": key, "endpoint": url, "api_version": v, "deployments": d})
        });
        let anything = object_of(
            0.5,
            vec![
                ("provider", or_junk(strings(&["openai", "azure", "anthropic", "gemini", "cohere", "OpenAI"]))),
                ("key", secret()),
                ("base_url", or_junk(strings(urls))),
                ("endpoint", or_junk(strings(urls))),
                ("api_version", or_junk(version)),
                ("deployments", or_junk(deployments)),
            ],
        );
        prop_oneof![3 => secret(), 2 => openai, 2 => azure, 2 => anything, 1 => junk()].boxed()
    }

    fn number() -> BoxedStrategy<Value> {
        prop_oneof![
            2 => any::<u32>().prop_map(Value::from),
            4 => (1u32..1000).prop_map(Value::from),
            4 => (60u32..700_000).prop_map(Value::from),
            2 => (-2i64..70_000).prop_map(Value::from),
            1 => prop_oneof![Just(0.49), Just(0.5), Just(1.0), Just(1.01), Just(1e300)].prop_map(Value::from),
        ]
        .boxed()
    }

    fn policy() -> BoxedStrategy<Value> {
        let models = vec(name().prop_map(Value::from), 0..18).prop_map(Value::from).boxed();
        let limit = object_of(0.7, vec![("rpm", number()), ("tpm", number())]);
        let limits = btree_map(name(), limit, 0..4).prop_map(|m| Value::Object(m.into_iter().collect())).boxed();
        let guards = object_of(0.7, vec![("numbers", or_junk(any::<bool>().prop_map(Value::from).boxed()))]);
        let fields = object_of(
            0.15,
            vec![
                ("fallback_strategy", or_junk(models.clone())),
                ("azure_fallback_strategy", or_junk(models)),
                ("caching", or_junk(any::<bool>().prop_map(Value::from).boxed())),
                ("cache_threshold", or_junk(number())),
                ("cache_guards", or_junk(guards)),
                ("cache_ttl_seconds", or_junk(number())),
                ("cache_max_entries", or_junk(number())),
                ("max_concurrency", or_junk(number())),
                (
                    "graceful_string",
                    or_junk(
                        prop_oneof![text(), (4090usize..4100).prop_map(|n| "é".repeat(n))]
                            .prop_map(Value::from)
                            .boxed(),
                    ),
                ),
                ("hedge_ms", or_junk(number())),
                ("model_limits", or_junk(limits)),
                ("max_queue_ms", or_junk(number())),
            ],
        );
        prop_oneof![2 => Just(Value::Null), 3 => fields, 1 => junk()].boxed()
    }

    fn key_list() -> BoxedStrategy<Value> {
        prop_oneof![
            6 => vec(key_input(), 1..4).prop_map(Value::from),
            1 => Just(json!([])),
            1 => (31usize..34).prop_map(|n| Value::from((0..n).map(|i| format!("sk-key-{i:04}")).collect::<Vec<_>>())),
        ]
        .boxed()
    }

    fn email() -> BoxedStrategy<Value> {
        let plausible = prop_oneof![
            6 => " ?[a-z0-9]{1,10}(\\.[a-z0-9+]{1,5})?@[a-zA-Z0-9]{1,10}\\.[a-z]{2,4} ?",
            1 => "[A-Za-z0-9.+]{1,10}@[a-zA-Z0-9-]{1,10}\\.[a-z]{2,4}",
            1 => " ?[a-z]{1,4}@[a-z]{1,4}(\\.[a-z]{0,3}){0,3} ?",
            1 => (60usize..70, 180usize..200).prop_map(|(l, d)| format!("{}@{}.com", "a".repeat(l), "b".repeat(d))),
        ];
        or_junk(plausible.prop_map(Value::from).boxed())
    }

    /// Keys and addresses that pass, so the policy and the limits are reached often.
    fn valid_keys() -> BoxedStrategy<Value> {
        let key = "sk-[A-Za-z0-9]{20,40}";
        let openai = (key, proptest::option::of(Just("https://api.openai.com/v1"))).prop_map(|(key, url)| match url {
            Some(url) => json!({"provider": "openai", "key": key, "base_url": url}),
            None => json!(key),
        });
        let azure = (key, btree_map("[a-z0-9.-]{1,12}", "[a-z0-9_-]{1,12}", 1..4)).prop_map(|(key, deployments)| {
            json!({"provider": "azure", "key": key, "endpoint": "https://r.openai.azure.com",
                   "api_version": "2024-10-21", "deployments": deployments})
        });
        vec(prop_oneof![openai, azure], 1..4).prop_map(Value::from).boxed()
    }

    fn valid_email() -> BoxedStrategy<Value> {
        "[a-z0-9]{1,10}@[a-z0-9]{1,10}\\.[a-z]{2,4}".prop_map(Value::from).boxed()
    }

    fn create_body() -> BoxedStrategy<Value> {
        prop_oneof![
            4 => object_of(0.99, vec![("user_email", valid_email()), ("keys", valid_keys()), ("policy", policy())]),
            8 => object_of(0.9, vec![("user_email", email()), ("keys", or_junk(key_list())), ("policy", policy())]),
            1 => junk(),
        ]
        .boxed()
    }

    fn update_body() -> BoxedStrategy<Value> {
        let ids = vec(prop_oneof![Just(Uuid::nil()), any::<u128>().prop_map(Uuid::from_u128)], 0..4)
            .prop_map(|ids| Value::from(ids.iter().map(Uuid::to_string).collect::<Vec<_>>()))
            .boxed();
        prop_oneof![
            4 => object_of(0.5, vec![("user_email", valid_email()), ("add_keys", valid_keys()), ("policy", policy())]),
            8 => object_of(0.7, vec![
                ("user_email", email()),
                ("add_keys", or_junk(key_list())),
                ("remove_keys", or_junk(ids.clone())),
                ("order", or_junk(ids.clone())),
                ("revive_keys", or_junk(ids)),
                ("policy", policy()),
            ]),
            1 => junk(),
        ]
        .boxed()
    }

    /// Whether `param` is the path of a field of `body`, or of a field a key object or the policy may have (an
    /// absent required field is named too). `keys` is the name of the key list (`keys` or `add_keys`).
    fn names_a_field(param: &str, body: &Value, keys: &str) -> bool {
        let index = |path: &str, list: &Value| -> Option<(usize, String)> {
            let (i, rest) = path.strip_prefix('[')?.split_once(']')?;
            let i: usize = i.parse().ok()?;
            (i < list.as_array()?.len()).then(|| (i, rest.to_owned()))
        };
        let top = ["user_email", "policy", "remove_keys", "order", "revive_keys"];
        if param == keys || top.contains(&param) {
            return true;
        }
        if let Some(rest) = param.strip_prefix(keys) {
            let Some((i, rest)) = index(rest, &body[keys]) else { return false };
            let key = &body[keys][i];
            return match rest.strip_prefix('.') {
                None => rest.is_empty(),
                Some(field) => match field.strip_prefix("deployments.") {
                    Some(model) => key["deployments"].get(model).is_some(),
                    None => ["provider", "key", "base_url", "endpoint", "api_version", "deployments"].contains(&field),
                },
            };
        }
        for list in ["remove_keys", "order", "revive_keys"] {
            if let Some(rest) = param.strip_prefix(list) {
                return index(rest, &body[list]).is_some_and(|(_, rest)| rest.is_empty());
            }
        }
        let Some(field) = param.strip_prefix("policy.") else { return false };
        let policy = &body["policy"];
        if let Some(model) = field.strip_prefix("model_limits.") {
            return policy["model_limits"].get(model).is_some();
        }
        for list in ["fallback_strategy", "azure_fallback_strategy"] {
            if let Some(rest) = field.strip_prefix(list)
                && rest.starts_with('[')
            {
                return index(rest, &policy[list]).is_some_and(|(_, rest)| rest.is_empty());
            }
        }
        policy.get(field).is_some()
    }

    /// Secrets of a body that look like keys: none may appear in an error.
    fn key_like_strings(body: &Value) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![body];
        while let Some(v) = stack.pop() {
            match v {
                Value::String(s) if s.starts_with("sk-") && s.len() >= 20 => out.push(s.clone()),
                Value::Array(items) => stack.extend(items),
                Value::Object(fields) => stack.extend(fields.values()),
                _ => {}
            }
        }
        out
    }

    /// The documented limits of every accepted key.
    fn check_keys(keys: &[ProviderKeySpec]) -> Result<(), String> {
        for k in keys {
            let secret = k.secret.expose_secret();
            if secret.is_empty() || secret.len() > MAX_KEY_LEN || !secret.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(format!("secret of {} bytes accepted", secret.len()));
            }
            let urls = [&k.target.base_url, &k.target.endpoint];
            for url in urls.into_iter().flatten() {
                let parsed = egress().check_url(url).map_err(|e| format!("{url}: {e}"))?;
                if parsed.scheme() != "https" || parsed.as_str().trim_end_matches('/') != url {
                    return Err(format!("{url} is not a normalised https URL"));
                }
            }
            match k.provider {
                Provider::Openai if k.target.endpoint.is_some() || k.target.deployments.is_some() => {
                    return Err("azure fields on an openai key".into());
                }
                Provider::Azure => {
                    let deployments = k.target.deployments.as_ref().ok_or("azure key without deployments")?;
                    let version = k.target.api_version.as_deref().ok_or("azure key without api_version")?;
                    if k.target.endpoint.is_none()
                        || !is_api_version(version)
                        || deployments.is_empty()
                        || deployments.len() > MAX_DEPLOYMENTS
                        || !deployments.iter().all(|(m, d)| is_name(m) && is_deployment_name(d))
                    {
                        return Err(format!("azure target out of limits: {:?}", k.target));
                    }
                }
                Provider::Openai => {}
                Provider::Anthropic | Provider::Gemini
                    if k.target.endpoint.is_some() || k.target.deployments.is_some() =>
                {
                    return Err("azure fields on an anthropic or gemini key".into());
                }
                Provider::Anthropic | Provider::Gemini => {}
            }
        }
        Ok(())
    }

    fn check_policy(p: &Policy) -> Result<(), String> {
        let lists = [&p.fallback_strategy, &p.azure_fallback_strategy];
        let ok = lists.iter().all(|l| l.len() <= MAX_MODEL_LIST && l.iter().all(|m| is_name(m)))
            && p.max_concurrency.is_none_or(|n| (1..=100_000).contains(&n))
            && p.hedge_ms.is_none_or(|n| (1..=60_000).contains(&n))
            && p.max_queue_ms.is_none_or(|n| n <= 600_000)
            && p.cache_threshold.is_none_or(|t| (0.5..=1.0).contains(&t))
            && p.cache_ttl_seconds.is_none_or(|n| (60..=31_536_000).contains(&n))
            && p.cache_max_entries.is_none_or(|n| (1..=10_000_000).contains(&n))
            && p.graceful_string.as_ref().is_none_or(|g| (1..=MAX_GRACEFUL_LEN).contains(&g.chars().count()))
            && p.model_limits.len() <= 2 * MAX_MODEL_LIST
            && p.model_limits.iter().all(|(m, l)| {
                is_name(m) && (l.rpm.is_some() || l.tpm.is_some()) && l.rpm != Some(0) && l.tpm != Some(0)
            });
        if ok { Ok(()) } else { Err(format!("policy out of limits: {p:?}")) }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(600))]

        /// `POST /v1/keys` bodies: never a panic; an accepted one is within every documented limit; a refusal names
        /// a field the body has (or a required one it lacks) and never quotes a key.
        #[test]
        fn key_set_input_prop_create(body in create_body()) {
            let Ok(req) = serde_json::from_value::<crate::object::Object<CreateKeySetRequest>>(body.clone()) else {
                return Ok(());
            };
            match NewKeySet::parse(req.into_inner(), &egress()) {
                Ok(set) => {
                    proptest::prop_assert!((1..=MAX_KEYS).contains(&set.keys.len()));
                    let email = set.user_email.as_str();
                    proptest::prop_assert!(email.len() <= MAX_EMAIL_LEN && email.contains('@'));
                    proptest::prop_assert!(!email.contains(char::is_whitespace), "{}", email);
                    check_keys(&set.keys).map_err(proptest::test_runner::TestCaseError::fail)?;
                    check_policy(&set.policy).map_err(proptest::test_runner::TestCaseError::fail)?;
                }
                Err(e) => {
                    proptest::prop_assert!(names_a_field(&e.param, &body, "keys"), "param {:?} for {}", e.param, body);
                    for key in key_like_strings(&body) {
                        proptest::prop_assert!(!e.to_string().contains(&key), "{} quotes a key", e);
                    }
                }
            }
        }

        /// `PATCH /v1/keys` bodies, likewise.
        #[test]
        fn key_set_input_prop_update(body in update_body()) {
            let Ok(req) = serde_json::from_value::<crate::object::Object<UpdateKeySetRequest>>(body.clone()) else {
                return Ok(());
            };
            match KeySetChanges::parse(req.into_inner(), &egress()) {
                Ok(changes) => {
                    proptest::prop_assert!(changes.add_keys.len() <= MAX_KEYS);
                    check_keys(&changes.add_keys).map_err(proptest::test_runner::TestCaseError::fail)?;
                    if let Some(policy) = &changes.policy {
                        check_policy(policy).map_err(proptest::test_runner::TestCaseError::fail)?;
                    }
                    for ids in [&changes.remove_keys, &changes.revive_keys] {
                        proptest::prop_assert_eq!(ids.iter().collect::<HashSet<_>>().len(), ids.len());
                    }
                }
                Err(e) => {
                    proptest::prop_assert!(names_a_field(&e.param, &body, "add_keys"), "param {:?} for {}", e.param, body);
                    for key in key_like_strings(&body) {
                        proptest::prop_assert!(!e.to_string().contains(&key), "{} quotes a key", e);
                    }
                }
            }
        }
    }

    /// The generators above reach both outcomes often, so the properties test acceptance as well as refusal.
    #[test]
    fn key_set_input_prop_generators_reach_acceptance() {
        let mut runner = proptest::test_runner::TestRunner::deterministic();
        let (mut created, mut updated) = (0, 0);
        for _ in 0..200 {
            let body = create_body().new_tree(&mut runner).unwrap().current();
            if let Ok(req) = serde_json::from_value::<crate::object::Object<CreateKeySetRequest>>(body) {
                created += usize::from(NewKeySet::parse(req.into_inner(), &egress()).is_ok());
            }
            let body = update_body().new_tree(&mut runner).unwrap().current();
            if let Ok(req) = serde_json::from_value::<crate::object::Object<UpdateKeySetRequest>>(body) {
                updated += usize::from(KeySetChanges::parse(req.into_inner(), &egress()).is_ok());
            }
        }
        assert!((15..185).contains(&created), "{created} of 200 bodies created a key set");
        assert!((15..185).contains(&updated), "{updated} of 200 bodies were valid changes");
    }
}
