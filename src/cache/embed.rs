//! Sentence embeddings for the cache: all-MiniLM-L6-v2 run in-process with candle, or an OpenAI-compatible
//! `/v1/embeddings` endpoint.

use std::future::Future;
use std::pin::Pin;

/// Every embedding the cache stores or searches has this many dimensions (`halfvec(384)`).
pub const DIMENSIONS: usize = 384;

/// A unit-length vector of [`DIMENSIONS`] floats.
pub type Embedding = Vec<f32>;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    #[error("embedding model files are unusable: {0}")]
    Model(String),
    #[error("embedding failed: {0}")]
    Failed(String),
    #[error("the embedder is busy")]
    Busy,
}

/// Turns texts into unit-length embeddings. CPU work runs off the async executor.
pub trait Embedder: Send + Sync + 'static {
    /// One embedding per text, in order.
    fn embed<'a>(&'a self, texts: &'a [String]) -> BoxFuture<'a, Result<Vec<Embedding>, EmbedError>>;
    /// A short name for logs and the cache-eval report.
    fn name(&self) -> &str;
}
