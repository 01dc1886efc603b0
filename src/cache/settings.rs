//! The cache's settings: which embedder runs and how much work it may queue.

use secrecy::SecretString;

use crate::config::{ConfigError, parse, settings};

/// Which embedder turns questions into vectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmbedderKind {
    /// all-MiniLM-L6-v2 in-process (files from `RELIABLEGPT_EMBEDDING_MODEL_DIR`).
    Local,
    /// An OpenAI-compatible `/v1/embeddings` endpoint.
    OpenAi,
}

pub fn embedder_kind(name: &'static str, text: &str) -> Result<EmbedderKind, ConfigError> {
    match text.trim() {
        "local" => Ok(EmbedderKind::Local),
        "openai" => Ok(EmbedderKind::OpenAi),
        _ => Err(ConfigError::Malformed { name, reason: "must be `local` or `openai`".into() }),
    }
}

settings! {
    /// The semantic cache.
    #[derive(Debug)]
    pub struct CacheSettings: Default {
        pub embedder: EmbedderKind [EMBEDDER = "RELIABLEGPT_EMBEDDER", embedder_kind, default EmbedderKind::Local],
        /// Folder with all-MiniLM-L6-v2's `config.json`, `tokenizer.json` and `model.safetensors` (`scripts/model`
        /// fetches them). Unset with the local embedder: the cache serves exact matches only.
        pub model_dir: Option<String> [MODEL_DIR = "RELIABLEGPT_EMBEDDING_MODEL_DIR", parse::text, optional],
        /// Embeddings computed at once (each takes one CPU core while it runs).
        pub embedding_threads: u32 [EMBEDDING_THREADS = "RELIABLEGPT_EMBEDDING_THREADS", parse::positive, default 1],
        /// `RELIABLEGPT_EMBEDDER=openai`: the endpoint's base URL (…/v1), its key and model.
        pub embedding_url: Option<String> [EMBEDDING_URL = "RELIABLEGPT_EMBEDDING_URL", parse::http_url, optional],
        pub embedding_api_key: Option<SecretString> [
            EMBEDDING_API_KEY = "RELIABLEGPT_EMBEDDING_API_KEY", parse::secret_text, optional
        ],
        pub embedding_model: String [
            EMBEDDING_MODEL = "RELIABLEGPT_EMBEDDING_MODEL", parse::text, default "text-embedding-3-small".to_owned()
        ],
        /// HNSW candidate list per semantic lookup (`hnsw.ef_search`): higher finds near neighbours more reliably in
        /// large key sets, at some latency (see the cache benchmark).
        pub ef_search: u32 [CACHE_EF_SEARCH = "RELIABLEGPT_CACHE_EF_SEARCH", parse::positive, default 100],
        /// Write-through jobs waiting for an embedding; beyond it new jobs are dropped (and counted).
        pub write_queue: u32 [CACHE_WRITE_QUEUE = "RELIABLEGPT_CACHE_WRITE_QUEUE", parse::positive, default 1024],
    }
}
