//! The semantic cache: per key set and customer instance, encrypted at rest, served when every upstream fails, when
//! the key set is overloaded, or first (`cache_first`), and filled by write-through off the request path.
//!
//! Lookup: the exact path first (an HMAC of the whole canonical conversation, no embedding needed), then the nearest
//! neighbours of the question among entries with the same context, threshold applied after the search, and the hit
//! guards on the decrypted candidate. Keys: a per-key-set seal key and MAC key derived from each master key version,
//! so rotation keeps old entries readable (their version is stored) and findable (hashes of every version are tried).

pub mod canonical;
pub mod embed;
pub mod eval;
pub mod guard;
mod queries;
pub mod settings;
mod source;
mod writer;

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use secrecy::ExposeSecret;
use sha2::Sha256;
use sqlx::PgPool;
use uuid::Uuid;

use crate::bounded::SharedMap;
use crate::config::MasterKeyring;
use crate::engine::metrics::Metrics;
use crate::vault::crypto::{CacheKeys, Purpose, derive_cache_keys, scoped_aad};
pub use canonical::{CanonicalError, Conversation};
use embed::Embedder;
pub use guard::Guards;
pub use writer::WriteJob;

/// Longest cached answer, in bytes.
pub const MAX_RESPONSE_BYTES: usize = 1024 * 1024;
/// Default least cosine similarity for a semantic hit (chosen with `reliablegpt cache-eval`, see the README).
pub const DEFAULT_THRESHOLD: f32 = 0.78;
pub const DEFAULT_TTL_SECONDS: u32 = 7 * 24 * 60 * 60;
pub const MAX_TTL_SECONDS: u32 = 365 * 24 * 60 * 60;
pub const DEFAULT_MAX_ENTRIES: u32 = 100_000;
/// Nearest neighbours fetched per semantic lookup; the guards may reject the nearest ones.
const CANDIDATES: i64 = 5;

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("database error")]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Embed(#[from] embed::EmbedError),
}

/// Whose cache: a key set and one of its customer instances.
#[derive(Debug, Clone, Copy)]
pub struct Scope<'a> {
    pub key_set_id: Uuid,
    pub instance: &'a str,
}

/// How a lookup decides what counts as a hit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Matching {
    pub threshold: f32,
    pub guards: Guards,
}

impl Default for Matching {
    fn default() -> Self {
        Self { threshold: DEFAULT_THRESHOLD, guards: Guards::default() }
    }
}

/// A cached answer.
#[derive(Debug, Clone)]
pub struct CacheHit {
    pub response: String,
    pub similarity: f32,
    pub cached_at: DateTime<Utc>,
    pub model: Option<String>,
}

/// How long and how many: a key set's limits for what it stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub ttl_seconds: u32,
    pub max_entries: u32,
}

impl Default for Retention {
    fn default() -> Self {
        Self { ttl_seconds: DEFAULT_TTL_SECONDS, max_entries: DEFAULT_MAX_ENTRIES }
    }
}

/// Operator tuning (`RELIABLEGPT_CACHE_WRITE_QUEUE`, `RELIABLEGPT_CACHE_EF_SEARCH`).
#[derive(Debug, Clone, Copy)]
pub struct CacheOptions {
    pub write_queue: usize,
    pub ef_search: u32,
}

impl Default for CacheOptions {
    fn default() -> Self {
        Self { write_queue: 1024, ef_search: 100 }
    }
}

/// Hashes that find a conversation's entries: one per master key version.
struct Hashes {
    exact: Vec<Vec<u8>>,
    context: Vec<Vec<u8>>,
}

/// When a key set's quota is next checked.
struct TrimState {
    inserts: u32,
    idle_until: Instant,
}

impl crate::bounded::Expires for TrimState {
    fn expires_at(&self) -> Instant {
        self.idle_until
    }
}

pub struct SemanticCache {
    pool: PgPool,
    keyring: Arc<MasterKeyring>,
    embedder: Option<Arc<dyn Embedder>>,
    metrics: Arc<Metrics>,
    ef_search: u32,
    writes: writer::WriteQueue,
    trims: SharedMap<Uuid, TrimState>,
    /// Conversations queued for write-through lately (hashed), so repeats are not embedded again.
    recent: SharedMap<u64, Instant>,
}

impl std::fmt::Debug for SemanticCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SemanticCache")
            .field("embedder", &self.embedder.as_ref().map(|e| e.name().to_owned()))
            .finish_non_exhaustive()
    }
}

impl SemanticCache {
    /// The cache and its background worker (write-through and expiry); `embedder: None` serves exact matches only.
    pub fn start(
        pool: PgPool,
        keyring: Arc<MasterKeyring>,
        embedder: Option<Arc<dyn Embedder>>,
        metrics: Arc<Metrics>,
        options: CacheOptions,
    ) -> (Arc<Self>, tokio::task::JoinHandle<()>) {
        let (writes, jobs) = writer::WriteQueue::new(options.write_queue);
        let cache = Arc::new(Self {
            pool,
            keyring,
            embedder,
            metrics,
            ef_search: options.ef_search,
            writes,
            trims: SharedMap::new(7 * 1024, crate::bounded::SWEEP_EVERY),
            recent: SharedMap::new(7 * 8 * 1024, crate::bounded::SWEEP_EVERY),
        });
        let worker = tokio::spawn(writer::run(cache.clone(), jobs));
        (cache, worker)
    }

    pub fn semantic(&self) -> bool {
        self.embedder.is_some()
    }

    fn keys_for(&self, key_set_id: Uuid, version: u32) -> Option<CacheKeys> {
        self.keyring.get(version).map(|master| derive_cache_keys(master.expose(), key_set_id))
    }

    fn hashes(&self, scope: Scope<'_>, conversation: &Conversation) -> Hashes {
        let exact_text = conversation.exact_text();
        let mut hashes = Hashes { exact: Vec::new(), context: Vec::new() };
        for version in self.keyring.versions() {
            if let Some(keys) = self.keys_for(scope.key_set_id, version) {
                hashes.exact.push(mac(&keys, &[b"exact", scope.instance.as_bytes(), exact_text.as_bytes()]));
                hashes
                    .context
                    .push(mac(&keys, &[b"context", scope.instance.as_bytes(), conversation.context.as_bytes()]));
            }
        }
        hashes
    }

    /// The cached answer for this conversation, if one is close enough and passes the guards.
    pub async fn lookup(
        &self,
        scope: Scope<'_>,
        conversation: &Conversation,
        matching: Matching,
    ) -> Result<Option<CacheHit>, CacheError> {
        let result = self.lookup_inner(scope, conversation, matching).await;
        self.metrics.cache_lookup(match &result {
            Ok(Some(hit)) if hit.similarity >= 1.0 => "exact_hit",
            Ok(Some(_)) => "semantic_hit",
            Ok(None) => "miss",
            Err(CacheError::Embed(embed::EmbedError::Busy)) => "busy",
            Err(_) => "error",
        });
        result
    }

    async fn lookup_inner(
        &self,
        scope: Scope<'_>,
        conversation: &Conversation,
        matching: Matching,
    ) -> Result<Option<CacheHit>, CacheError> {
        let hashes = self.hashes(scope, conversation);
        if let Some(row) = queries::find_exact(&self.pool, scope.key_set_id, scope.instance, &hashes.exact).await?
            && let Some(hit) = self.open_hit(scope, &row, 1.0)
        {
            return Ok(Some(hit));
        }
        let Some(embedder) = &self.embedder else { return Ok(None) };
        let question = [conversation.question.clone()];
        let vector = embedder.embed(&question).await?.pop().unwrap_or_default();
        let rows = queries::find_nearest(
            &self.pool,
            scope.key_set_id,
            scope.instance,
            &hashes.context,
            &vector,
            CANDIDATES,
            self.ef_search,
        )
        .await?;
        for row in rows {
            let similarity = row.similarity as f32;
            if similarity < matching.threshold {
                break;
            }
            let Some(candidate) = self.open_text(scope, &row, Purpose::CacheQuestion, &row.question) else { continue };
            if let Err(rejected) = guard::check(&conversation.question, &candidate, matching.guards) {
                self.metrics.cache_guard_rejected(rejected.as_str());
                continue;
            }
            if let Some(hit) = self.open_hit(scope, &row, similarity) {
                return Ok(Some(hit));
            }
        }
        Ok(None)
    }

    fn open_text(&self, scope: Scope<'_>, row: &queries::StoredEntry, purpose: Purpose, blob: &[u8]) -> Option<String> {
        let version = u32::try_from(row.master_key_version).ok()?;
        let Some(keys) = self.keys_for(scope.key_set_id, version) else {
            tracing::warn!(version, "a cache entry's master key version is not in RELIABLEGPT_MASTER_KEY; skipped");
            return None;
        };
        match keys.seal.open(blob, &scoped_aad(purpose, scope.key_set_id, row.id, scope.instance)) {
            Ok(plain) => String::from_utf8(plain.to_vec()).ok(),
            Err(e) => {
                tracing::warn!(entry = %row.id, error = %e, "a cache entry failed to decrypt; skipped");
                None
            }
        }
    }

    fn open_hit(&self, scope: Scope<'_>, row: &queries::StoredEntry, similarity: f32) -> Option<CacheHit> {
        let response = self.open_text(scope, row, Purpose::CacheResponse, &row.response)?;
        Some(CacheHit {
            response,
            similarity: similarity.min(1.0),
            cached_at: row.created_at,
            model: row.model.clone(),
        })
    }

    /// Stores an answer now (the embedding included): `POST /v1/cache`.
    pub async fn store(
        &self,
        scope: Scope<'_>,
        conversation: &Conversation,
        response: &str,
        model: Option<&str>,
        retention: Retention,
    ) -> Result<(), CacheError> {
        let embedding = match &self.embedder {
            Some(embedder) => embedder.embed(std::slice::from_ref(&conversation.question)).await?.pop(),
            None => None,
        };
        self.store_embedded(scope, conversation, embedding.as_deref(), response, model, retention).await
    }

    /// Stores an answer whose question is already embedded (write-through batches, benchmarks).
    pub async fn store_embedded(
        &self,
        scope: Scope<'_>,
        conversation: &Conversation,
        embedding: Option<&[f32]>,
        response: &str,
        model: Option<&str>,
        retention: Retention,
    ) -> Result<(), CacheError> {
        let (version, master) = self.keyring.active();
        let keys = derive_cache_keys(master.expose(), scope.key_set_id);
        let exact_text = conversation.exact_text();
        let id = Uuid::new_v4();
        let exact = mac(&keys, &[b"exact", scope.instance.as_bytes(), exact_text.as_bytes()]);
        let context = mac(&keys, &[b"context", scope.instance.as_bytes(), conversation.context.as_bytes()]);
        let question = keys.seal.seal(
            conversation.question.as_bytes(),
            &scoped_aad(Purpose::CacheQuestion, scope.key_set_id, id, scope.instance),
        );
        let sealed_response = keys
            .seal
            .seal(response.as_bytes(), &scoped_aad(Purpose::CacheResponse, scope.key_set_id, id, scope.instance));
        let row = queries::NewRow {
            id,
            key_set_id: scope.key_set_id,
            instance_id: scope.instance,
            context_hash: &context,
            exact_hash: &exact,
            embedding,
            master_key_version: i32::try_from(version).unwrap_or(i32::MAX),
            question: &question,
            response: &sealed_response,
            model,
            ttl_seconds: i64::from(retention.ttl_seconds),
        };
        queries::upsert(&self.pool, &row).await?;
        if self.trim_due(scope.key_set_id, retention.max_entries) {
            let evicted = queries::trim(&self.pool, scope.key_set_id, i64::from(retention.max_entries)).await?;
            if evicted > 0 {
                tracing::debug!(evicted, "cache quota reached; oldest entries evicted");
            }
        }
        Ok(())
    }

    /// Whether this insert should check the quota: every insert for small quotas, every 1 % of the quota for large
    /// ones (so a full key set may overshoot by at most 1 % between checks), and the first after a quiet minute.
    fn trim_due(&self, key_set_id: Uuid, max_entries: u32) -> bool {
        let now = Instant::now();
        let every = (max_entries / 100).max(1);
        let mut trims = self.trims.lock();
        let state = trims.get_or_insert_with(key_set_id, now, || TrimState { inserts: 0, idle_until: now });
        state.inserts = state.inserts.wrapping_add(1);
        state.idle_until = now + Duration::from_secs(60);
        state.inserts == 1 || state.inserts.is_multiple_of(every)
    }

    /// Deletes one instance's entries, or the whole key set's.
    pub async fn purge(&self, key_set_id: Uuid, instance: Option<&str>) -> Result<u64, CacheError> {
        Ok(queries::purge(&self.pool, key_set_id, instance).await?)
    }

    /// Queues a write-through; never waits. False when the queue was full (the job is dropped and counted).
    pub fn store_later(&self, job: WriteJob) -> bool {
        let queued = self.writes.offer(job);
        self.metrics.cache_write(if queued { "queued" } else { "dropped" });
        queued
    }
}

/// The embedder the settings ask for; `None` (exact matches only) when the local model's folder is not configured.
/// A configured embedder that cannot start stops the service with the reason.
/// The OpenAI-compatible endpoint is operator configuration (not customer input), so it is not held to the customers'
/// egress policy: an embedding server on the operator's private network is normal.
pub fn build_embedder(settings: &settings::CacheSettings) -> Result<Option<Arc<dyn Embedder>>, String> {
    let threads = settings.embedding_threads as usize;
    match settings.embedder {
        settings::EmbedderKind::Local => match &settings.model_dir {
            None => {
                tracing::warn!("RELIABLEGPT_EMBEDDING_MODEL_DIR is not set: the cache serves exact matches only");
                Ok(None)
            }
            Some(dir) => {
                // candle spreads each matrix product over rayon's global pool; sized to the embedding threads, the
                // model never takes more cores than configured. Only the first build in a process counts (tests start
                // many services in one process).
                let _ = rayon::ThreadPoolBuilder::new().num_threads(threads).build_global();
                let embedder = embed::LocalEmbedder::load(std::path::Path::new(dir), threads)
                    .map_err(|e| format!("{}: {e}", settings::env::MODEL_DIR))?;
                tracing::info!(threads, "embedding model loaded (all-MiniLM-L6-v2)");
                Ok(Some(Arc::new(embedder)))
            }
        },
        settings::EmbedderKind::OpenAi => {
            let url = settings.embedding_url.as_deref().ok_or_else(|| {
                format!("{} is required with RELIABLEGPT_EMBEDDER=openai", settings::env::EMBEDDING_URL)
            })?;
            let url = url::Url::parse(url).map_err(|e| format!("{}: {e}", settings::env::EMBEDDING_URL))?;
            let key = settings.embedding_api_key.clone().ok_or_else(|| {
                format!("{} is required with RELIABLEGPT_EMBEDDER=openai", settings::env::EMBEDDING_API_KEY)
            })?;
            let client = reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(10))
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .map_err(|e| e.to_string())?;
            Ok(Some(Arc::new(embed::OpenAiEmbedder::new(client, url, key, settings.embedding_model.clone()))))
        }
    }
}

/// HMAC-SHA256 under the key set's cache MAC key, over length-prefixed parts (so part boundaries cannot shift).
fn mac(keys: &CacheKeys, parts: &[&[u8]]) -> Vec<u8> {
    let mut mac = match Hmac::<Sha256>::new_from_slice(keys.mac.expose_secret()) {
        Ok(mac) => mac,
        // HMAC accepts keys of any length.
        Err(_) => return Vec::new(),
    };
    for part in parts {
        mac.update(&(part.len() as u64).to_be_bytes());
        mac.update(part);
    }
    mac.finalize().into_bytes().to_vec()
}
