//! The fallback plan: which (provider endpoint, model, keys) to try, in which order.
//!
//! Order: Azure deployments first (the policy's `azure_fallback_strategy`, or the deployments mapped to the requested
//! model and its fallbacks), then the requested model and the fallback strategy on OpenAI keys. A repeated model means
//! "try it again". Keys of one endpoint are alternatives for the same step: the engine rotates through them only on
//! credential errors.

use std::sync::{Arc, Mutex};

use uuid::Uuid;

use super::breaker::TargetKey;
use super::catalog::{Catalog, ModelKind, ModelProvider};
use crate::vault::{OpenKeySet, Provider};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Completions,
    Embeddings,
    /// OpenAI's Responses API: chat models, typed stream events, answers stored upstream under the creating account.
    Responses,
    /// The pass-through surface (see [`super::surface`]): the upstream's answer is forwarded as it is, fallbacks only to
    /// catalog models of the endpoint's kind, no cache and no `graceful_string`.
    Moderations,
    ImageGenerations,
    /// Binary audio out, streamed to the client as it arrives.
    Speech,
    /// A `multipart/form-data` upload forwarded byte for byte (only the `model` part changes on fallback); the answer
    /// (JSON, text, SRT, VTT or events) is passed through like speech.
    Transcriptions,
}

impl Endpoint {
    pub fn path(self) -> &'static str {
        match self {
            Self::Chat => "/chat/completions",
            Self::Completions => "/completions",
            Self::Embeddings => "/embeddings",
            Self::Responses => "/responses",
            Self::Moderations => "/moderations",
            Self::ImageGenerations => "/images/generations",
            Self::Speech => "/audio/speech",
            Self::Transcriptions => "/audio/transcriptions",
        }
    }

    pub fn kind(self) -> ModelKind {
        match self {
            Self::Chat => ModelKind::Chat,
            Self::Completions => ModelKind::Completion,
            Self::Embeddings => ModelKind::Embedding,
            Self::Responses => ModelKind::Chat,
            Self::Moderations => ModelKind::Moderation,
            Self::ImageGenerations => ModelKind::Image,
            Self::Speech => ModelKind::Speech,
            Self::Transcriptions => ModelKind::Transcription,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Chat => "chat",
            Self::Completions => "completions",
            Self::Embeddings => "embeddings",
            Self::Responses => "responses",
            Self::Moderations => "moderations",
            Self::ImageGenerations => "images",
            Self::Speech => "speech",
            Self::Transcriptions => "transcriptions",
        }
    }

    /// Text-generation endpoints: answers from elsewhere (cache, `graceful_string`) and fallbacks to models the catalog
    /// does not know apply to them only.
    pub fn generates_text(self) -> bool {
        matches!(self, Self::Chat | Self::Completions | Self::Responses)
    }

    /// Whether Azure deployments are planned: Azure serves these under `/openai/deployments/{d}{path}`. Not the
    /// Responses API (another path shape) nor moderations (Azure has no moderation endpoint).
    fn on_azure(self) -> bool {
        !matches!(self, Self::Responses | Self::Moderations)
    }
}

/// Which kind of upstream answered (the `x-reliablegpt-provider` header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderKind {
    Openai,
    Azure,
    Custom,
    /// Anthropic's Messages API: chat completions translated to it and back.
    Anthropic,
    /// Google's Gemini API: chat completions translated to `generateContent` and back.
    Gemini,
}

/// Anthropic's API, where a key without `base_url` is sent.
pub const ANTHROPIC_BASE_URL: &str = "https://api.anthropic.com";
/// Gemini's API, where a key without `base_url` is sent.
pub const GEMINI_BASE_URL: &str = "https://generativelanguage.googleapis.com";

impl ProviderKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Openai => "openai",
            Self::Azure => "azure",
            Self::Custom => "custom",
            Self::Anthropic => "anthropic",
            Self::Gemini => "gemini",
        }
    }

    /// Whether the engine translates chat completions to this provider's own API.
    pub fn translated(self) -> bool {
        matches!(self, Self::Anthropic | Self::Gemini)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// The model this step asks for (for Azure: the model its deployment serves, or the deployment name).
    pub model: String,
    pub provider: ProviderKind,
    /// Full URL of the call.
    pub url: String,
    /// `url` parsed once when the plan is built (requests reuse it instead of parsing the text each time).
    pub parsed: Option<url::Url>,
    /// Gemini only: the streaming URL (`:streamGenerateContent?alt=sse`), parsed; `url` is the non-streaming one.
    pub stream_url: Option<url::Url>,
    /// Endpoint identity for breakers (base URL or Azure endpoint + deployment).
    pub endpoint: String,
    /// Indexes into the key set's keys, in the set's order.
    pub keys: Vec<usize>,
}

/// One (step, key) pair the engine may try, in plan order, with its breaker identity computed once.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub step: usize,
    pub key: usize,
    pub breaker: TargetKey,
}

/// The ordered targets of one kind of request on one opened key set. Built once and shared by every request that
/// asks for the same thing while the key set stays open (see [`PlanMemo`]).
#[derive(Debug, Default)]
pub struct Plan {
    pub steps: Vec<Step>,
    /// Every (step, key) in order: the main loop, hedging and stream rescue walk this one list.
    pub candidates: Vec<Candidate>,
}

impl Plan {
    fn new(steps: Vec<Step>, set: &OpenKeySet) -> Self {
        let candidates = steps
            .iter()
            .enumerate()
            .flat_map(|(i, step)| {
                step.keys.iter().filter_map(move |&k| {
                    let key = set.keys.get(k)?;
                    let breaker =
                        TargetKey { endpoint: step.endpoint.clone(), model: step.model.clone(), key_id: key.id };
                    Some(Candidate { step: i, key: k, breaker })
                })
            })
            .collect();
        Self { steps, candidates }
    }

    /// The first candidate of the step after the one holding candidate `pos`.
    pub fn next_step(&self, pos: usize) -> usize {
        let Some(step) = self.candidates.get(pos).map(|c| c.step) else { return self.candidates.len() };
        pos + self.candidates[pos..].iter().take_while(|c| c.step == step).count()
    }
}

/// What a request asks for: a plan depends on nothing else.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PlanKey {
    endpoint: Endpoint,
    model: String,
    fallbacks: Option<Vec<String>>,
    only_key: Option<Uuid>,
}

/// Plans already built for one opened key set. Small and bounded: clients asking for many distinct models get plans
/// built per request beyond the first few.
#[derive(Debug, Default)]
pub struct PlanMemo(Mutex<Vec<(PlanKey, Arc<Plan>)>>);

const MEMO_PLANS: usize = 32;

impl PlanMemo {
    pub fn get_or_build(&self, input: &PlanInput<'_>, build: impl FnOnce() -> Plan) -> Arc<Plan> {
        let matches = |k: &PlanKey| {
            k.endpoint == input.endpoint
                && k.model == input.model
                && k.fallbacks.as_deref() == input.fallbacks
                && k.only_key == input.only_key
        };
        if let Some((_, plan)) = self.lock().iter().find(|(k, _)| matches(k)) {
            return plan.clone();
        }
        let plan = Arc::new(build());
        let mut memo = self.lock();
        if memo.len() < MEMO_PLANS && !memo.iter().any(|(k, _)| matches(k)) {
            let key = PlanKey {
                endpoint: input.endpoint,
                model: input.model.to_owned(),
                fallbacks: input.fallbacks.map(<[String]>::to_vec),
                only_key: input.only_key,
            };
            memo.push((key, plan.clone()));
        }
        plan
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(PlanKey, Arc<Plan>)>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub struct PlanInput<'a> {
    pub endpoint: Endpoint,
    pub model: &'a str,
    /// Overrides the policy's fallback strategy (`x-reliablegpt-fallback`).
    pub fallbacks: Option<&'a [String]>,
    pub openai_base_url: &'a str,
    /// Only this key of the set may be used (a Responses request continuing a response stored under that key's
    /// account): fallbacks go to other models on the same key, never to another account.
    pub only_key: Option<Uuid>,
}

/// Builds the plan. `allowed` filters steps whose URL the egress policy refuses (Azure endpoints and custom base URLs
/// are customer data, checked against the operator's current settings before a key is ever sent there).
pub fn plan(set: &OpenKeySet, input: &PlanInput<'_>, catalog: &Catalog, allowed: impl Fn(&Step) -> bool) -> Plan {
    let mut steps = ordered_steps(set, input, catalog);
    steps.retain(|s| allowed(s));
    for step in &mut steps {
        step.parsed = url::Url::parse(&step.url).ok();
        if step.provider == ProviderKind::Gemini {
            let streaming = step.url.replace(":generateContent", ":streamGenerateContent?alt=sse");
            step.stream_url = url::Url::parse(&streaming).ok();
        }
    }
    Plan::new(steps, set)
}

fn ordered_steps(set: &OpenKeySet, input: &PlanInput<'_>, catalog: &Catalog) -> Vec<Step> {
    let fallbacks = input.fallbacks.unwrap_or(&set.policy.fallback_strategy);
    let mut models: Vec<&str> = vec![input.model];
    models.extend(fallbacks.iter().map(String::as_str).filter(|m| compatible(catalog, input, m)));

    let mut steps = Vec::new();
    let usable = |key: &crate::vault::ProviderKey| input.only_key.is_none_or(|only| only == key.id);
    // Azure first. Azure serves the Responses API on another path shape (not per deployment) and has no moderations,
    // so it is not planned for those.
    let azure: Vec<(usize, &crate::vault::ProviderKey)> = set
        .keys
        .iter()
        .enumerate()
        .filter(|(_, k)| k.provider == Provider::Azure && usable(k) && input.endpoint.on_azure())
        .collect();
    if !azure.is_empty() {
        let deployments: Vec<String> = if set.policy.azure_fallback_strategy.is_empty() {
            let mut out: Vec<String> = Vec::new();
            for model in &models {
                for (_, key) in &azure {
                    if let Some(d) = key.target.deployments.as_ref().and_then(|d| d.get(*model))
                        && !out.contains(d)
                    {
                        out.push(d.clone());
                    }
                }
            }
            out
        } else {
            set.policy.azure_fallback_strategy.clone()
        };
        // Checked when stored; checked again here because the row may predate the rule or have been changed in the
        // database: a name is a single path segment, never a way to another path on the host.
        for deployment in deployments.into_iter().filter(|d| crate::vault::input::is_deployment_name(d)) {
            push_grouped(
                &mut steps,
                azure.iter().filter_map(|(i, key)| {
                    let served = key.target.deployments.as_ref()?.iter().find(|(_, d)| **d == deployment)?.0.clone();
                    // A deployment of another kind (a chat deployment in `azure_fallback_strategy`) cannot serve an
                    // image or audio request: only the requested model's deployment and those of catalog models of the
                    // endpoint's kind are used.
                    if !input.endpoint.generates_text()
                        && served != input.model
                        && !same_kind(catalog, input.endpoint, &served)
                    {
                        return None;
                    }
                    let endpoint = key.target.endpoint.as_deref()?;
                    let version = key.target.api_version.as_deref()?;
                    Some(Step {
                        model: served,
                        provider: ProviderKind::Azure,
                        url: format!(
                            "{endpoint}/openai/deployments/{deployment}{}?api-version={version}",
                            input.endpoint.path()
                        ),
                        endpoint: format!("{endpoint}/openai/deployments/{deployment}"),
                        parsed: None,
                        stream_url: None,
                        keys: vec![*i],
                    })
                }),
            );
        }
    }
    // Then, model by model, the keys of the API that serves it: Anthropic and Gemini models on the set's keys of that
    // provider (chat completions only: the engine translates them), everything else on OpenAI and OpenAI-compatible
    // keys. A key set without keys of a model's provider tries it on its OpenAI-compatible keys, as before providers
    // were known by name.
    for model in models {
        let translated = match catalog.provider(model) {
            ModelProvider::Anthropic => Some(Provider::Anthropic),
            ModelProvider::Gemini => Some(Provider::Gemini),
            ModelProvider::Openai => None,
        };
        if let Some(provider) = translated
            && set.keys.iter().any(|k| k.provider == provider)
        {
            if input.endpoint == Endpoint::Chat {
                push_grouped(&mut steps, translated_steps(set, provider, model, &usable));
            }
            continue;
        }
        push_grouped(
            &mut steps,
            set.keys.iter().enumerate().filter(|(_, k)| k.provider == Provider::Openai && usable(k)).map(|(i, key)| {
                let (base, provider) = match &key.target.base_url {
                    Some(b) => (b.as_str(), ProviderKind::Custom),
                    None => (input.openai_base_url, ProviderKind::Openai),
                };
                Step {
                    model: model.to_owned(),
                    provider,
                    url: format!("{base}{}", input.endpoint.path()),
                    endpoint: base.to_owned(),
                    parsed: None,
                    stream_url: None,
                    keys: vec![i],
                }
            }),
        );
    }
    steps
}

/// Steps for `model` on the set's Anthropic or Gemini keys. Gemini names the model in the URL: a name that is not one
/// plain path segment is never planned there.
fn translated_steps<'s>(
    set: &'s OpenKeySet,
    provider: Provider,
    model: &'s str,
    usable: &'s impl Fn(&crate::vault::ProviderKey) -> bool,
) -> impl Iterator<Item = Step> + 's {
    let plain_segment = crate::vault::input::is_deployment_name(model);
    set.keys.iter().enumerate().filter(move |(_, k)| k.provider == provider && usable(k)).filter_map(move |(i, key)| {
        let (kind, default) = match provider {
            Provider::Anthropic => (ProviderKind::Anthropic, ANTHROPIC_BASE_URL),
            _ => (ProviderKind::Gemini, GEMINI_BASE_URL),
        };
        let base = key.target.base_url.as_deref().unwrap_or(default);
        let url = match kind {
            ProviderKind::Anthropic => format!("{base}/v1/messages"),
            _ if plain_segment => format!("{base}/v1beta/models/{model}:generateContent"),
            _ => return None,
        };
        Some(Step {
            model: model.to_owned(),
            provider: kind,
            url,
            endpoint: base.to_owned(),
            parsed: None,
            stream_url: None,
            keys: vec![i],
        })
    })
}

/// Appends one step per distinct (url, model) among `candidates`, merging their keys in order.
fn push_grouped(steps: &mut Vec<Step>, candidates: impl Iterator<Item = Step>) {
    let mut group: Vec<Step> = Vec::new();
    for c in candidates {
        match group.iter_mut().find(|s| s.url == c.url && s.model == c.model) {
            Some(s) => s.keys.extend(c.keys),
            None => group.push(c),
        }
    }
    steps.extend(group);
}

fn same_kind(catalog: &Catalog, endpoint: Endpoint, model: &str) -> bool {
    catalog.get(model).is_some_and(|info| info.kind == endpoint.kind())
}

/// A fallback must be of the request's kind, and embeddings only fall back between models of the same dimension.
/// Models the catalog does not know are tried only as fallbacks of text generation (chat, completions, responses).
fn compatible(catalog: &Catalog, input: &PlanInput<'_>, fallback: &str) -> bool {
    let Some(info) = catalog.get(fallback) else { return input.endpoint.generates_text() };
    if info.kind != input.endpoint.kind() {
        return false;
    }
    if input.endpoint == Endpoint::Embeddings {
        return match catalog.get(input.model) {
            Some(requested) => requested.dimensions == info.dimensions,
            None => false,
        };
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vault::{KeyTarget, Policy, ProviderKey};
    use secrecy::SecretString;
    use std::collections::BTreeMap;
    use uuid::Uuid;

    fn key(provider: Provider, target: KeyTarget) -> ProviderKey {
        ProviderKey { id: Uuid::new_v4(), provider, secret: SecretString::from("k"), target, invalid_since: None }
    }

    fn azure(endpoint: &str, deployments: &[(&str, &str)]) -> ProviderKey {
        let map: BTreeMap<String, String> = deployments.iter().map(|(m, d)| (m.to_string(), d.to_string())).collect();
        key(
            Provider::Azure,
            KeyTarget {
                endpoint: Some(endpoint.into()),
                api_version: Some("2024-10-21".into()),
                deployments: Some(map),
                base_url: None,
            },
        )
    }

    fn set(keys: Vec<ProviderKey>, policy: Policy) -> OpenKeySet {
        OpenKeySet::new(Uuid::nil(), policy, keys)
    }

    fn input<'a>(model: &'a str) -> PlanInput<'a> {
        PlanInput {
            endpoint: Endpoint::Chat,
            model,
            fallbacks: None,
            openai_base_url: "https://api.openai.com/v1",
            only_key: None,
        }
    }

    fn summary(steps: &[Step]) -> Vec<(String, &'static str, Vec<usize>)> {
        steps.iter().map(|s| (s.model.clone(), s.provider.as_str(), s.keys.clone())).collect()
    }

    #[test]
    fn requested_model_then_fallbacks_with_repeats_and_rotation_keys_grouped() {
        let policy = Policy { fallback_strategy: vec!["gpt-4o-mini".into(), "gpt-4o".into()], ..Default::default() };
        let s =
            set(vec![key(Provider::Openai, KeyTarget::default()), key(Provider::Openai, KeyTarget::default())], policy);
        let steps = plan(&s, &input("gpt-4o"), &Catalog::shipped(), |_| true).steps;
        assert_eq!(
            summary(&steps),
            vec![
                ("gpt-4o".into(), "openai", vec![0, 1]),
                ("gpt-4o-mini".into(), "openai", vec![0, 1]),
                ("gpt-4o".into(), "openai", vec![0, 1])
            ]
        );
        assert_eq!(steps[0].url, "https://api.openai.com/v1/chat/completions");
    }

    fn keyed(provider: Provider, base_url: Option<&str>) -> ProviderKey {
        key(provider, KeyTarget { base_url: base_url.map(str::to_owned), ..KeyTarget::default() })
    }

    #[test]
    fn a_mixed_fallback_list_goes_to_each_models_provider() {
        let policy = Policy {
            fallback_strategy: vec!["claude-sonnet-4-5".into(), "gemini-2.5-pro".into(), "gpt-4o-mini".into()],
            ..Default::default()
        };
        let s = set(
            vec![
                keyed(Provider::Openai, None),
                keyed(Provider::Anthropic, None),
                keyed(Provider::Gemini, Some("https://gemini.example")),
                keyed(Provider::Anthropic, None),
            ],
            policy,
        );
        let steps = plan(&s, &input("gpt-4o"), &Catalog::shipped(), |_| true).steps;
        assert_eq!(
            summary(&steps),
            vec![
                ("gpt-4o".into(), "openai", vec![0]),
                ("claude-sonnet-4-5".into(), "anthropic", vec![1, 3]),
                ("gemini-2.5-pro".into(), "gemini", vec![2]),
                ("gpt-4o-mini".into(), "openai", vec![0]),
            ]
        );
        assert_eq!(steps[1].url, "https://api.anthropic.com/v1/messages");
        assert_eq!(steps[2].url, "https://gemini.example/v1beta/models/gemini-2.5-pro:generateContent");
        assert_eq!(
            steps[2].stream_url.as_ref().map(url::Url::as_str),
            Some("https://gemini.example/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse")
        );
        assert!(steps.iter().all(|s| s.provider == ProviderKind::Gemini || s.stream_url.is_none()));

        // Only chat completions are translated: the Responses API never plans them.
        let responses = PlanInput { endpoint: Endpoint::Responses, ..input("gpt-4o") };
        let steps = plan(&s, &responses, &Catalog::shipped(), |_| true).steps;
        assert_eq!(
            summary(&steps),
            vec![("gpt-4o".into(), "openai", vec![0]), ("gpt-4o-mini".into(), "openai", vec![0])]
        );
    }

    #[test]
    fn provider_models_without_a_key_of_their_provider_stay_on_openai_compatible_keys() {
        let s = set(vec![keyed(Provider::Openai, Some("https://llm.example/v1"))], Policy::default());
        let steps = plan(&s, &input("claude-sonnet-4-5"), &Catalog::shipped(), |_| true).steps;
        assert_eq!(summary(&steps), vec![("claude-sonnet-4-5".into(), "custom", vec![0])]);
        // A Gemini model name that is not one path segment is never put into a Gemini URL.
        let s = set(vec![keyed(Provider::Gemini, None)], Policy::default());
        assert!(plan(&s, &input("gemini-x/../../v1/files"), &Catalog::shipped(), |_| true).steps.is_empty());
        assert_eq!(plan(&s, &input("gemini-exp-1206"), &Catalog::shipped(), |_| true).steps.len(), 1);
    }

    #[test]
    fn a_stored_deployment_name_that_leaves_its_path_segment_is_never_planned() {
        let s = set(
            vec![
                azure("https://r.openai.azure.com", &[("gpt-4o", "../../v1"), ("gpt-4o-mini", "a/b")]),
                key(Provider::Openai, KeyTarget::default()),
            ],
            Policy { fallback_strategy: vec!["gpt-4o-mini".into()], ..Default::default() },
        );
        let steps = plan(&s, &input("gpt-4o"), &Catalog::shipped(), |_| true).steps;
        assert!(steps.iter().all(|step| step.provider != ProviderKind::Azure), "{:?}", summary(&steps));
        assert!(steps.iter().all(|step| !step.url.contains("..")));
    }

    #[test]
    fn azure_deployments_come_first_then_the_backup_openai_key() {
        let policy =
            Policy { azure_fallback_strategy: vec!["prod-4o".into(), "prod-mini".into()], ..Default::default() };
        let s = set(
            vec![
                key(Provider::Openai, KeyTarget::default()),
                azure("https://a.openai.azure.com", &[("gpt-4o", "prod-4o"), ("gpt-4o-mini", "prod-mini")]),
            ],
            policy,
        );
        let steps = plan(&s, &input("gpt-4o"), &Catalog::shipped(), |_| true).steps;
        assert_eq!(
            summary(&steps),
            vec![
                ("gpt-4o".into(), "azure", vec![1]),
                ("gpt-4o-mini".into(), "azure", vec![1]),
                ("gpt-4o".into(), "openai", vec![0])
            ]
        );
        assert_eq!(
            steps[0].url,
            "https://a.openai.azure.com/openai/deployments/prod-4o/chat/completions?api-version=2024-10-21"
        );
    }

    #[test]
    fn azure_without_strategy_uses_the_deployment_of_each_model() {
        let policy = Policy { fallback_strategy: vec!["gpt-4o-mini".into()], ..Default::default() };
        let s = set(vec![azure("https://a.openai.azure.com", &[("gpt-4o-mini", "mini-dep")])], policy);
        let steps = plan(&s, &input("gpt-4o"), &Catalog::shipped(), |_| true).steps;
        assert_eq!(summary(&steps), vec![("gpt-4o-mini".into(), "azure", vec![0])]);
    }

    #[test]
    fn custom_base_urls_are_their_own_steps_and_header_overrides_policy() {
        let policy = Policy { fallback_strategy: vec!["ignored".into()], ..Default::default() };
        let custom = KeyTarget { base_url: Some("https://llm.example.com/v1".into()), ..Default::default() };
        let s = set(vec![key(Provider::Openai, custom), key(Provider::Openai, KeyTarget::default())], policy);
        let over = vec!["gpt-4o-mini".to_string()];
        let mut i = input("gpt-4o");
        i.fallbacks = Some(&over);
        let steps = plan(&s, &i, &Catalog::shipped(), |_| true).steps;
        assert_eq!(
            summary(&steps),
            vec![
                ("gpt-4o".into(), "custom", vec![0]),
                ("gpt-4o".into(), "openai", vec![1]),
                ("gpt-4o-mini".into(), "custom", vec![0]),
                ("gpt-4o-mini".into(), "openai", vec![1])
            ]
        );
    }

    #[test]
    fn fallbacks_of_the_wrong_kind_or_dimension_are_dropped() {
        let policy = Policy {
            fallback_strategy: vec![
                "text-embedding-3-large".into(),
                "text-embedding-ada-002".into(),
                "gpt-4o".into(),
                "unknown-embedder".into(),
            ],
            ..Default::default()
        };
        let s = set(vec![key(Provider::Openai, KeyTarget::default())], policy);
        let mut i = input("text-embedding-3-small");
        i.endpoint = Endpoint::Embeddings;
        let steps = plan(&s, &i, &Catalog::shipped(), |_| true).steps;
        let models: Vec<&str> = steps.iter().map(|s| s.model.as_str()).collect();
        assert_eq!(models, vec!["text-embedding-3-small", "text-embedding-ada-002"]);
        assert!(steps[0].url.ends_with("/embeddings"));
    }

    #[test]
    fn surface_endpoints_fall_back_only_to_known_models_of_their_kind_and_use_only_fitting_azure_deployments() {
        let policy = Policy {
            fallback_strategy: vec!["gpt-4o".into(), "unknown-model".into(), "tts-1".into(), "dall-e-2".into()],
            azure_fallback_strategy: vec!["chat".into(), "dalle".into(), "mod".into()],
            ..Default::default()
        };
        let s = set(
            vec![
                azure(
                    "https://a.openai.azure.com",
                    &[("gpt-4o", "chat"), ("dall-e-3", "dalle"), ("omni-moderation-latest", "mod")],
                ),
                key(Provider::Openai, KeyTarget::default()),
            ],
            policy,
        );
        let mut i = input("dall-e-3");
        i.endpoint = Endpoint::ImageGenerations;
        let steps = plan(&s, &i, &Catalog::shipped(), |_| true).steps;
        assert_eq!(
            summary(&steps),
            vec![
                ("dall-e-3".into(), "azure", vec![0]),
                ("dall-e-3".into(), "openai", vec![1]),
                ("dall-e-2".into(), "openai", vec![1])
            ]
        );
        assert!(steps[0].url.starts_with("https://a.openai.azure.com/openai/deployments/dalle/images/generations?"));
        assert_eq!(steps[1].url, "https://api.openai.com/v1/images/generations");
        // Azure has no moderations; a requested model unknown to the catalog is still tried.
        let mut i = input("omni-moderation-latest");
        i.endpoint = Endpoint::Moderations;
        let steps = plan(&s, &i, &Catalog::shipped(), |_| true).steps;
        assert_eq!(summary(&steps), vec![("omni-moderation-latest".into(), "openai", vec![1])]);
        let mut i = input("my-tts");
        i.endpoint = Endpoint::Speech;
        let steps = plan(&s, &i, &Catalog::shipped(), |_| true).steps;
        assert_eq!(summary(&steps), vec![("my-tts".into(), "openai", vec![1]), ("tts-1".into(), "openai", vec![1])]);
        assert_eq!(steps[0].url, "https://api.openai.com/v1/audio/speech");
    }

    #[test]
    fn a_pinned_request_plans_only_its_key_and_responses_skip_azure() {
        let policy = Policy { fallback_strategy: vec!["gpt-4o-mini".into()], ..Default::default() };
        let s = set(
            vec![
                azure("https://a.openai.azure.com", &[("gpt-4o", "prod-4o")]),
                key(Provider::Openai, KeyTarget::default()),
                key(Provider::Openai, KeyTarget::default()),
            ],
            policy,
        );
        let mut i = input("gpt-4o");
        i.endpoint = Endpoint::Responses;
        let steps = plan(&s, &i, &Catalog::shipped(), |_| true).steps;
        assert_eq!(
            summary(&steps),
            vec![("gpt-4o".into(), "openai", vec![1, 2]), ("gpt-4o-mini".into(), "openai", vec![1, 2])]
        );
        assert_eq!(steps[0].url, "https://api.openai.com/v1/responses");
        i.only_key = Some(s.keys[2].id);
        let pinned = plan(&s, &i, &Catalog::shipped(), |_| true);
        assert_eq!(
            summary(&pinned.steps),
            vec![("gpt-4o".into(), "openai", vec![2]), ("gpt-4o-mini".into(), "openai", vec![2])]
        );
        let memo = PlanMemo::default();
        let unpinned =
            memo.get_or_build(&input("gpt-4o"), || plan(&s, &input("gpt-4o"), &Catalog::shipped(), |_| true));
        let mut chat_pinned = input("gpt-4o");
        chat_pinned.only_key = Some(s.keys[2].id);
        let other = memo.get_or_build(&chat_pinned, || plan(&s, &chat_pinned, &Catalog::shipped(), |_| true));
        assert!(!Arc::ptr_eq(&unpinned, &other), "the pinned key is part of the plan's identity");
    }

    #[test]
    fn candidates_walk_steps_and_keys_in_order_and_next_step_skips_the_rest_of_a_step() {
        let policy = Policy { fallback_strategy: vec!["gpt-4o-mini".into()], ..Default::default() };
        let s =
            set(vec![key(Provider::Openai, KeyTarget::default()), key(Provider::Openai, KeyTarget::default())], policy);
        let p = plan(&s, &input("gpt-4o"), &Catalog::shipped(), |_| true);
        let order: Vec<(usize, usize)> = p.candidates.iter().map(|c| (c.step, c.key)).collect();
        assert_eq!(order, vec![(0, 0), (0, 1), (1, 0), (1, 1)]);
        assert_eq!(p.candidates[2].breaker.model, "gpt-4o-mini");
        assert_eq!(p.candidates[2].breaker.key_id, s.keys[0].id);
        assert_eq!((p.next_step(0), p.next_step(1), p.next_step(2), p.next_step(3), p.next_step(9)), (2, 2, 4, 4, 4));
    }

    #[test]
    fn refused_steps_are_left_out_and_plans_are_memoised_per_request_shape() {
        let custom = KeyTarget { base_url: Some("https://llm.example.com/v1".into()), ..Default::default() };
        let s =
            set(vec![key(Provider::Openai, custom), key(Provider::Openai, KeyTarget::default())], Policy::default());
        let p = plan(&s, &input("gpt-4o"), &Catalog::shipped(), |step| step.provider != ProviderKind::Custom);
        assert_eq!(summary(&p.steps), vec![("gpt-4o".into(), "openai", vec![1])]);

        let mut builds = 0;
        let memo = PlanMemo::default();
        let mut build = || {
            builds += 1;
            plan(&s, &input("gpt-4o"), &Catalog::shipped(), |_| true)
        };
        let a = memo.get_or_build(&input("gpt-4o"), &mut build);
        let b = memo.get_or_build(&input("gpt-4o"), &mut build);
        let over = vec!["gpt-4o-mini".to_string()];
        let mut other = input("gpt-4o");
        other.fallbacks = Some(&over);
        let c = memo.get_or_build(&other, &mut build);
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &c));
        assert_eq!(builds, 2);
    }
}
