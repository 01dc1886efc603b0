//! Semantic cache benchmark: lookup latency (exact path and vector path), HNSW build time and recall@1 of the index
//! against an exact search, in a real PostgreSQL + pgvector (DATABASE_URL, as for the tests). It times the real
//! `SemanticCache::lookup`, with a fixed-vector embedder so the model is not part of the vector path. Reported, not
//! asserted.
//!
//! Scenarios: one key set and instance holding every entry (10k, 100k, and 1M with `--large`), and 100 key sets
//! sharing the table (100k rows in all, or `--shared 100000,1000000`; the filter keeps 1 %). Each: ~200 entries
//! stored through `store_embedded`, the rest COPYed in with the HNSW index dropped, then the index rebuilt as the
//! migrations define it (or `--hnsw m=24,ef_construction=100`). Measured: `lookup` p50/p99 on the exact path and the
//! vector path (paraphrases at cos ≈ 0.97), the hit rate, recall@1 of the nearest-neighbour statement against an exact
//! search (with the planner's plan and with the HNSW scan forced), the plans, and the load average meanwhile.
//!
//! Vectors: `--vectors synthetic` (default) draws clustered unit vectors; `--vectors sentences` stores real
//! all-MiniLM-L6-v2 embeddings of generated questions (benches/sentences; the first 10k, or `--sentences N`,
//! embedded once and kept under target/cache-bench/), and beyond those, blends of two of them plus a little noise;
//! its recall queries are real paraphrases of stored questions and real unseen questions. It needs
//! RELIABLEGPT_EMBEDDING_MODEL_DIR.
//!
//! `--ef-search N` sets the lookups' `hnsw.ef_search` (default: the service's, `RELIABLEGPT_CACHE_EF_SEARCH`);
//! `--prewarm` loads the table and its indexes into shared_buffers (pg_prewarm) after each build. The server's
//! shared_buffers is printed, with a warning when the HNSW index does not fit (scripts/dev-db sizes it).
//!
//!     DATABASE_URL=$(scripts/dev-db) cargo bench --bench cache -- --bench            # 10k and 100k entries
//!     DATABASE_URL=$(scripts/dev-db) cargo bench --bench cache -- --bench --large    # also 1M (long: index build)
//!     DATABASE_URL=$(scripts/dev-db) cargo bench --bench cache -- --bench --sizes 2000,5000
//!     DATABASE_URL=$(scripts/dev-db) cargo bench --bench cache -- --bench --sizes 1000000 --maintenance-work-mem 2GB
//!
//! Without `--bench` (as under `cargo test --all-targets`) it exits at once.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout, clippy::panic)]

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reliablegpt::cache::embed::{BoxFuture, DIMENSIONS, EmbedError, Embedder, Embedding, LocalEmbedder};
use reliablegpt::cache::{CacheOptions, Conversation, Matching, Retention, Scope, SemanticCache};
use reliablegpt::config::{MasterKeyring, Secret32};
use reliablegpt::engine::metrics::Metrics;
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection, PgPool, Row};
use uuid::Uuid;

mod sentences;

const DIM: usize = DIMENSIONS;
const SEED: u64 = 20_261_203;
/// Cluster centres the entries are drawn around.
const CENTRES: usize = 2_000;
/// Entries stored through `store_embedded` (sealed, so hits decrypt); the rest is filler written with COPY.
const REAL: usize = 200;
const WARMUP: usize = 200;
const LOOKUPS: usize = 1_000;
const RECALL_QUERIES: usize = 200;
const INSTANCE: &str = "bench";
/// Per-component spread of an entry around its centre: |noise| ≈ 0.63, cos(entry, centre) ≈ 0.85, and two entries
/// of one cluster ≈ 0.72.
const ENTRY_NOISE: f32 = 0.032;
/// A paraphrase of a stored question: cos(query, entry) ≈ 0.97, above the 0.90 default threshold.
const PARAPHRASE_NOISE: f32 = 0.0128;
/// Recall queries: cos(query, source entry) ≈ 0.94.
const RECALL_NOISE: f32 = 0.018;
/// A top-1 whose similarity is within this of the exact top-1's counts as correct (halfvec rounding).
const TIE: f32 = 1e-3;
const COPY_BATCH: usize = 5_000;
const EF_SWEEP: [u32; 4] = [40, 100, 200, 400];
/// `--vectors sentences`: questions embedded for real (the rest are blends of them).
const SENTENCES: usize = 10_000;
/// A blend: `a + β (b - a)` with β up to this, plus noise of `BLEND_NOISE` per component (|noise| ≈ 0.2).
const BLEND: f32 = 0.3;
const BLEND_NOISE: f32 = 0.01;

const COLUMNS: &str = "id, master_key_version, question, response, model, created_at";
/// The statement of `find_nearest` in src/cache/queries.rs (run there with the same two `SET LOCAL`s).
const NEAREST_WHERE: &str = "FROM cache_entries
         WHERE key_set_id = $1 AND instance_id = $2 AND context_hash = ANY($3) AND expires_at > now()
           AND embedding IS NOT NULL
         ORDER BY embedding <=> $4::real[]::halfvec(384)
         LIMIT $5";

/// What to run, from the command line.
struct Options {
    /// Rows of the one-key-set scenarios.
    sizes: Vec<usize>,
    /// Rows in all of the 100-key-set scenarios.
    shared: Vec<usize>,
    /// For the index builds (a build whose graph outgrows it goes on on disk).
    maintenance_work_mem: String,
    /// The lookups' `hnsw.ef_search`.
    ef_search: u32,
    /// `WITH (...)` for the HNSW index instead of the migrations' parameters.
    hnsw: Option<String>,
    /// `--vectors sentences`: how many questions are embedded for real.
    sentences: Option<usize>,
    prewarm: bool,
}

impl Options {
    fn parse(args: &[String]) -> Self {
        let value = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
        let numbers = |name: &str, list: String| -> Vec<usize> {
            list.split(',')
                .map(|n| n.trim().replace('_', "").parse().unwrap_or_else(|_| panic!("{name}: numbers")))
                .collect()
        };
        let mut sizes = vec![10_000, 100_000];
        if args.iter().any(|a| a == "--large") {
            sizes.push(1_000_000);
        }
        // `--sizes 2000,5000`: other sizes for the one-key-set scenario (a quick check of the bench itself).
        if let Some(list) = value("--sizes") {
            sizes = numbers("--sizes", list);
        }
        let shared = value("--shared").map_or(vec![100_000], |list| numbers("--shared", list));
        assert!(shared.iter().all(|&n| n >= 100 * REAL), "--shared: at least {} rows", 100 * REAL);
        let maintenance_work_mem = value("--maintenance-work-mem").unwrap_or_else(|| "1GB".to_owned());
        assert!(maintenance_work_mem.chars().all(|c| c.is_ascii_alphanumeric()), "--maintenance-work-mem: e.g. 2GB");
        let ef_search = value("--ef-search")
            .map_or(CacheOptions::default().ef_search, |n| n.parse().expect("--ef-search: a number"));
        let hnsw = value("--hnsw");
        if let Some(with) = &hnsw {
            assert!(
                with.chars().all(|c| c.is_ascii_alphanumeric() || "=,_".contains(c)),
                "--hnsw: e.g. m=24,ef_construction=100"
            );
        }
        let sentences = match value("--vectors").as_deref() {
            None | Some("synthetic") => None,
            Some("sentences") => {
                let n = value("--sentences").map_or(SENTENCES, |n| n.parse().expect("--sentences: a number"));
                assert!(
                    (1_000..=sentences::COUNT - 10_000).contains(&n),
                    "--sentences: 1000 to {}",
                    sentences::COUNT - 10_000
                );
                Some(n)
            }
            Some(other) => panic!("--vectors {other}: synthetic or sentences"),
        };
        let prewarm = args.iter().any(|a| a == "--prewarm");
        Self { sizes, shared, maintenance_work_mem, ef_search, hnsw, sentences, prewarm }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|a| a == "--bench") {
        return;
    }
    let options = Options::parse(&args);
    // One thread for the model's matrix products, so the embedding latency is one core's.
    let _ = rayon::ThreadPoolBuilder::new().num_threads(1).build_global();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(run(options));
}

fn progress(started: Instant, what: &str) {
    eprintln!("cache bench [{:>7.1}s] {what}", started.elapsed().as_secs_f64());
}

// ---------------------------------------------------------------------------------------------------------------
// Synthetic vectors
// ---------------------------------------------------------------------------------------------------------------

struct Vectors {
    rng: StdRng,
    centres: Vec<f32>,
    sentences: Option<Sentences>,
}

/// `--vectors sentences`: real embeddings of generated questions.
struct Sentences {
    embedder: Arc<LocalEmbedder>,
    /// Questions `0..count`, embedded, row-major.
    real: Vec<f32>,
    count: usize,
    /// The next entry: question `next` while `next < count`, a blend after.
    next: usize,
}

impl Sentences {
    fn vec(&self, i: usize) -> &[f32] {
        &self.real[i * DIM..(i + 1) * DIM]
    }
}

impl Vectors {
    fn new(seed: u64, sentences: Option<Sentences>) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut centres = Vec::with_capacity(CENTRES * DIM);
        for _ in 0..CENTRES {
            let mut c: Vec<f32> = (0..DIM).map(|_| gauss(&mut rng)).collect();
            normalise(&mut c);
            centres.extend_from_slice(&c);
        }
        Self { rng, centres, sentences }
    }

    fn describe(&self) -> String {
        match &self.sentences {
            None => format!("synthetic clustered unit vectors ({CENTRES} centres)"),
            Some(s) => format!(
                "all-MiniLM-L6-v2 embeddings of {} generated questions, beyond them blends of two (β ≤ {BLEND}, noise \
                 {BLEND_NOISE}/component)",
                s.count
            ),
        }
    }

    /// A new entry, unit length, and the generated question it embeds (if it is one): a random centre plus noise, or
    /// the next question's embedding, or a blend of two questions' embeddings plus noise.
    fn entry(&mut self) -> (Vec<f32>, Option<usize>) {
        let Some(s) = &mut self.sentences else {
            let c = self.rng.gen_range(0..CENTRES);
            let centre = self.centres[c * DIM..(c + 1) * DIM].to_vec();
            return (self.near(&centre, ENTRY_NOISE), None);
        };
        let i = s.next;
        s.next += 1;
        if i < s.count {
            return (s.vec(i).to_vec(), Some(i));
        }
        let (a, b) = (self.rng.gen_range(0..s.count), self.rng.gen_range(0..s.count));
        let beta = self.rng.gen_range(0.0..BLEND);
        let blend: Vec<f32> = s.vec(a).iter().zip(s.vec(b)).map(|(x, y)| x + beta * (y - x)).collect();
        (self.near(&blend, BLEND_NOISE), None)
    }

    /// The next entries start again at question `i` (the 100-key-set scenario's own entries are questions too).
    fn restart_at(&mut self, i: usize) {
        if let Some(s) = &mut self.sentences {
            s.next = i;
        }
    }

    /// Recall queries near stored entries: a stored vector plus noise (cos ≈ 0.94), or the embedding of a real
    /// paraphrase of a stored question.
    async fn near_duplicates(&mut self, visible: &Visible, n: usize) -> Vec<Vec<f32>> {
        let Some(embedder) = self.sentences.as_ref().map(|s| s.embedder.clone()) else {
            return (0..n)
                .map(|_| {
                    let source = self.rng.gen_range(0..visible.len());
                    self.near(visible.vec(source), RECALL_NOISE)
                })
                .collect();
        };
        let stored: Vec<usize> = visible.questions.iter().flatten().copied().collect();
        let texts = (0..n).map(|_| sentences::paraphrase(stored[self.rng.gen_range(0..stored.len())])).collect();
        embed_all(&embedder, texts).await
    }

    /// Recall queries that are new: a fresh draw from the clusters, or the embedding of a question never stored.
    async fn fresh(&mut self, n: usize) -> Vec<Vec<f32>> {
        let Some((embedder, count)) = self.sentences.as_ref().map(|s| (s.embedder.clone(), s.count)) else {
            return (0..n).map(|_| self.entry().0).collect();
        };
        let texts = (0..n).map(|_| sentences::question(self.rng.gen_range(count..sentences::COUNT))).collect();
        embed_all(&embedder, texts).await
    }

    /// `v` plus gaussian noise of `sigma` per component, unit length.
    fn near(&mut self, v: &[f32], sigma: f32) -> Vec<f32> {
        let mut out: Vec<f32> = v.iter().map(|x| x + sigma * gauss(&mut self.rng)).collect();
        normalise(&mut out);
        out
    }
}

/// Box–Muller.
fn gauss(rng: &mut StdRng) -> f32 {
    let u1: f64 = rng.gen_range(f64::MIN_POSITIVE..1.0);
    let u2: f64 = rng.gen_range(0.0..1.0);
    ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
}

/// Embeds `texts` one at a time (batches are slower per question on one rayon thread) on two threads.
async fn embed_all(embedder: &Arc<LocalEmbedder>, texts: Vec<String>) -> Vec<Vec<f32>> {
    let embedder = embedder.clone();
    tokio::task::spawn_blocking(move || {
        let half = texts.len().div_ceil(2).max(1);
        std::thread::scope(|s| {
            let handles: Vec<_> = texts
                .chunks(half)
                .map(|chunk| {
                    let embedder = &embedder;
                    s.spawn(move || {
                        chunk
                            .iter()
                            .map(|t| embedder.embed_blocking(std::slice::from_ref(t)).unwrap().remove(0))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
        })
    })
    .await
    .unwrap()
}

/// Embeds questions `0..count`, or reads them from target/cache-bench/ where an earlier run left them.
async fn load_sentences(embedder: Arc<LocalEmbedder>, count: usize, started: Instant) -> Sentences {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/cache-bench");
    // The file's name changes with the questions' generator and the model.
    let path = dir.join(format!("sentences-{}-{count}-{}.f32", sentences::COUNT, embedder.name().replace('/', "_")));
    if let Ok(bytes) = std::fs::read(&path)
        && bytes.len() == count * DIM * 4
    {
        let real = bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        progress(started, &format!("{count} question embeddings read from {}", path.display()));
        return Sentences { embedder, real, count, next: 0 };
    }
    let mut real = Vec::with_capacity(count * DIM);
    let t = Instant::now();
    for first in (0..count).step_by(1_000) {
        let texts: Vec<String> = (first..(first + 1_000).min(count)).map(sentences::question).collect();
        for v in embed_all(&embedder, texts).await {
            real.extend_from_slice(&v);
        }
        progress(started, &format!("embedded {} of {count} questions", (first + 1_000).min(count)));
    }
    progress(started, &format!("{count} questions embedded in {:.0}s", t.elapsed().as_secs_f64()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(&path, real.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>()).unwrap();
    Sentences { embedder, real, count, next: 0 }
}

fn normalise(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    for x in v {
        *x /= norm;
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    for (ca, cb) in a.chunks_exact(8).zip(b.chunks_exact(8)) {
        for k in 0..8 {
            acc[k] += ca[k] * cb[k];
        }
    }
    let tail: f32 = a.chunks_exact(8).remainder().iter().zip(b.chunks_exact(8).remainder()).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}

/// The entries a measured scope can see (its key set, instance and context), as inserted.
#[derive(Default)]
struct Visible {
    ids: Vec<Uuid>,
    vecs: Vec<f32>,
    /// The generated question each entry embeds, if it is one (`--vectors sentences`).
    questions: Vec<Option<usize>>,
    index: HashMap<Uuid, usize>,
}

impl Visible {
    fn push(&mut self, id: Uuid, v: &[f32], question: Option<usize>) {
        self.index.insert(id, self.ids.len());
        self.ids.push(id);
        self.vecs.extend_from_slice(v);
        self.questions.push(question);
    }

    fn len(&self) -> usize {
        self.ids.len()
    }

    fn vec(&self, i: usize) -> &[f32] {
        &self.vecs[i * DIM..(i + 1) * DIM]
    }

    /// Exact top-1 (index, cosine) for each query, over every visible entry; the queries split across the cores.
    fn exact_top1(&self, queries: &[Vec<f32>]) -> Vec<(usize, f32)> {
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        let per = queries.len().div_ceil(threads).max(1);
        std::thread::scope(|s| {
            let handles: Vec<_> = queries
                .chunks(per)
                .map(|chunk| {
                    s.spawn(move || {
                        chunk
                            .iter()
                            .map(|q| {
                                let mut best = (usize::MAX, f32::NEG_INFINITY);
                                for (i, v) in self.vecs.chunks_exact(DIM).enumerate() {
                                    let sim = dot(q, v);
                                    if sim > best.1 {
                                        best = (i, sim);
                                    }
                                }
                                best
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
        })
    }
}

// ---------------------------------------------------------------------------------------------------------------
// The embedder: known questions to fixed vectors
// ---------------------------------------------------------------------------------------------------------------

struct FixedEmbedder(HashMap<String, Embedding>);

impl Embedder for FixedEmbedder {
    fn embed<'a>(&'a self, texts: &'a [String]) -> BoxFuture<'a, Result<Vec<Embedding>, EmbedError>> {
        Box::pin(async move {
            texts
                .iter()
                .map(|t| self.0.get(t).cloned().ok_or_else(|| EmbedError::Failed(format!("no fixed vector for {t:?}"))))
                .collect()
        })
    }

    fn name(&self) -> &str {
        "bench-fixed-vectors"
    }
}

fn stored_question(i: usize) -> Conversation {
    Conversation::from_query(&format!("tell me about item {i}")).unwrap()
}

fn paraphrase(i: usize) -> Conversation {
    Conversation::from_query(&format!("what is item {i}")).unwrap()
}

fn answer(i: usize) -> String {
    format!("the answer about item {i}")
}

// ---------------------------------------------------------------------------------------------------------------
// Database set-up
// ---------------------------------------------------------------------------------------------------------------

async fn new_key_set(pool: &PgPool) -> Uuid {
    let id = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO vault_key_sets (id, token_hash, wrapped_dek, master_key_version, user_email, policy)
         VALUES ($1, sha256(gen_random_uuid()::text::bytea), $2, 1, 'bench@example.com', '{}')",
    )
    .bind(id)
    .bind(vec![0u8; 60])
    .execute(pool)
    .await
    .unwrap();
    id
}

/// Stores the real entries through the cache; returns the context hash they share.
async fn store_real(
    cache: &SemanticCache,
    pool: &PgPool,
    key_set_id: Uuid,
    real: &[(Vec<f32>, Option<usize>)],
    visible: &mut Visible,
) -> Vec<u8> {
    let scope = Scope { key_set_id, instance: INSTANCE };
    for (i, (v, question)) in real.iter().enumerate() {
        cache
            .store_embedded(scope, &stored_question(i), Some(v), &answer(i), Some("gpt-4o"), Retention::default())
            .await
            .unwrap();
        let id: Uuid = sqlx::query_scalar("SELECT id FROM cache_entries WHERE key_set_id = $1 AND NOT (id = ANY($2))")
            .bind(key_set_id)
            .bind(&visible.ids)
            .fetch_one(pool)
            .await
            .unwrap();
        visible.push(id, v, *question);
    }
    sqlx::query_scalar("SELECT context_hash FROM cache_entries WHERE key_set_id = $1 LIMIT 1")
        .bind(key_set_id)
        .fetch_one(pool)
        .await
        .unwrap()
}

fn push_hex(buf: &mut String, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    buf.push_str("\\\\x");
    for b in bytes {
        buf.push(HEX[usize::from(b >> 4)] as char);
        buf.push(HEX[usize::from(b & 15)] as char);
    }
}

/// Writes `count` filler rows for one key set and context with COPY (garbage ciphertexts: never decrypted unless a
/// lookup's candidates include them, when they are skipped as undecryptable). Their vectors join `visible`, if given.
async fn fill(
    pool: &PgPool,
    key_set_id: Uuid,
    context: &[u8],
    count: usize,
    vectors: &mut Vectors,
    mut visible: Option<&mut Visible>,
) {
    let expires = (chrono::Utc::now() + chrono::Duration::days(7)).to_rfc3339();
    let mut conn = pool.acquire().await.unwrap();
    let mut copy = conn
        .copy_in_raw(
            "COPY cache_entries (id, key_set_id, instance_id, context_hash, exact_hash, embedding, master_key_version,
                                 question, response, model, expires_at) FROM STDIN",
        )
        .await
        .unwrap();
    let mut left = count;
    while left > 0 {
        let n = left.min(COPY_BATCH);
        left -= n;
        let mut buf = String::with_capacity(n * (DIM * 9 + 400));
        for _ in 0..n {
            let id = Uuid::new_v4();
            let (v, question) = vectors.entry();
            let exact: [u8; 32] = vectors.rng.r#gen();
            let garbage: [u8; 32] = vectors.rng.r#gen();
            write!(buf, "{id}\t{key_set_id}\t{INSTANCE}\t").unwrap();
            push_hex(&mut buf, context);
            buf.push('\t');
            push_hex(&mut buf, &exact);
            buf.push_str("\t[");
            for (k, x) in v.iter().enumerate() {
                if k > 0 {
                    buf.push(',');
                }
                write!(buf, "{x:.5}").unwrap();
            }
            buf.push_str("]\t1\t");
            push_hex(&mut buf, &garbage);
            buf.push('\t');
            push_hex(&mut buf, &garbage);
            writeln!(buf, "\tgpt-4o\t{expires}").unwrap();
            if let Some(visible) = visible.as_deref_mut() {
                visible.push(id, &v, question);
            }
        }
        copy.send(buf.into_bytes()).await.unwrap();
    }
    copy.finish().await.unwrap();
}

async fn drop_index(pool: &PgPool) {
    sqlx::query("DROP INDEX IF EXISTS cache_entries_embedding").execute(pool).await.unwrap();
}

/// The HNSW index's definition as the migrations left it, or with `--hnsw`'s parameters instead.
async fn index_definition(pool: &PgPool, hnsw: Option<&str>) -> String {
    let migrated: String = sqlx::query_scalar("SELECT pg_get_indexdef('cache_entries_embedding'::regclass)")
        .fetch_one(pool)
        .await
        .unwrap();
    match hnsw {
        None => migrated,
        Some(with) => format!("{} WITH ({with})", migrated.split(" WITH (").next().unwrap_or(&migrated)),
    }
}

/// Sizes after a build: the HNSW index, and the table (heap + TOAST).
struct Built {
    took: Duration,
    index_bytes: i64,
    table_bytes: i64,
}

/// Recreates the HNSW index with `definition`, analyzes, and (`--prewarm`) loads the table and its indexes into
/// shared_buffers.
async fn build_index(pool: &PgPool, definition: &str, maintenance_work_mem: &str, prewarm: bool) -> Built {
    let mut conn = pool.acquire().await.unwrap();
    sqlx::query(&format!("SET maintenance_work_mem = '{maintenance_work_mem}'")).execute(&mut *conn).await.unwrap();
    let started = Instant::now();
    sqlx::query(definition).execute(&mut *conn).await.unwrap();
    let took = started.elapsed();
    sqlx::query("RESET maintenance_work_mem").execute(&mut *conn).await.unwrap();
    sqlx::query("ANALYZE cache_entries").execute(&mut *conn).await.unwrap();
    if prewarm {
        sqlx::query(
            "SELECT pg_prewarm('cache_entries'), pg_prewarm('cache_entries_exact'), pg_prewarm('cache_entries_embedding')",
        )
        .execute(&mut *conn)
        .await
        .unwrap();
    }
    let (index_bytes, table_bytes): (i64, i64) =
        sqlx::query_as("SELECT pg_relation_size('cache_entries_embedding'), pg_table_size('cache_entries')")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
    Built { took, index_bytes, table_bytes }
}

/// The share of the HNSW index's pages in shared_buffers (pg_buffercache), when the extension is there.
async fn index_cached(pool: &PgPool) -> Option<f64> {
    sqlx::query_scalar(
        "SELECT count(*)::float8 * current_setting('block_size')::float8
                / greatest(pg_relation_size('cache_entries_embedding'), 1)
         FROM pg_buffercache
         WHERE relfilenode = pg_relation_filenode('cache_entries_embedding')
           AND reldatabase = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .fetch_one(pool)
    .await
    .ok()
}

/// The 1-minute load average of the machine (other work competes for its cores).
fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().and_then(|x| x.parse().ok()))
        .unwrap_or(f64::NAN)
}

// ---------------------------------------------------------------------------------------------------------------
// Measurements
// ---------------------------------------------------------------------------------------------------------------

struct Measured {
    scenario: String,
    rows: i64,
    visible: usize,
    fill: Duration,
    build: Duration,
    index_bytes: i64,
    table_bytes: i64,
    /// The 1-minute load average before the exact lookups and after the vector lookups.
    load: (f64, f64),
    /// The share of the HNSW index in shared_buffers, before and after the lookups.
    cached: Option<(f64, f64)>,
    /// `SELECT 1` through the pool, p50 and p99.
    round_trip: (Duration, Duration),
    exact_explain: Vec<String>,
    exact: (Duration, Duration),
    exact_hits: usize,
    vector: (Duration, Duration),
    vector_hits: usize,
    vector_correct: usize,
    vector_similarity: f64,
    /// Near-duplicate queries with the planner's plan, then forced onto the HNSW index; fresh queries likewise.
    recalls: [Recall; 4],
    /// Near-duplicates, HNSW forced, by `hnsw.ef_search`.
    ef_sweep: Vec<(u32, Recall)>,
    plan: String,
    generic_plan: String,
    forced_plan: String,
    lookup_plans: String,
    explain: Vec<String>,
}

impl Measured {
    fn set_built(&mut self, built: &Built) {
        self.build = built.took;
        self.index_bytes = built.index_bytes;
        self.table_bytes = built.table_bytes;
    }
}

/// The server's memory settings that decide whether the index stays in memory.
struct ServerMemory {
    shared_buffers: String,
    shared_buffers_bytes: i64,
    effective_cache_size: String,
}

impl ServerMemory {
    async fn read(pool: &PgPool) -> Self {
        let (shared_buffers, shared_buffers_bytes, effective_cache_size): (String, i64, String) = sqlx::query_as(
            "SELECT current_setting('shared_buffers'),
                    (SELECT setting::int8 FROM pg_settings WHERE name = 'shared_buffers')
                        * current_setting('block_size')::int8,
                    current_setting('effective_cache_size')",
        )
        .fetch_one(pool)
        .await
        .unwrap();
        Self { shared_buffers, shared_buffers_bytes, effective_cache_size }
    }

    fn describe(&self) -> String {
        format!("shared_buffers = {}, effective_cache_size = {}", self.shared_buffers, self.effective_cache_size)
    }
}

fn percentiles(mut latencies: Vec<Duration>) -> (Duration, Duration) {
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    (pct(0.50), pct(0.99))
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

/// The top plan node under the `Limit`, without its costs.
fn top_node(plan: &[String]) -> String {
    plan.iter()
        .find(|l| l.trim_start().starts_with("->"))
        .or(plan.first())
        .map(|l| {
            let l = l.trim_start().trim_start_matches("->").trim();
            l.split("  (").next().unwrap_or(l).to_owned()
        })
        .unwrap_or_default()
}

/// How the recall queries are planned.
#[derive(Clone, Copy, PartialEq)]
enum Plan {
    /// Whatever the planner picks (as for the lookups).
    Planner,
    /// `enable_sort = off`: only the HNSW index scan yields the order without a sort, so the planner takes it.
    ForceIndex,
}

/// The settings `find_nearest` runs with, inside the caller's transaction.
async fn set_locals(conn: &mut PgConnection, plan: Plan, ef_search: u32) {
    sqlx::query("SET LOCAL hnsw.iterative_scan = relaxed_order").execute(&mut *conn).await.unwrap();
    sqlx::query(&format!("SET LOCAL hnsw.ef_search = {ef_search}")).execute(&mut *conn).await.unwrap();
    if plan == Plan::ForceIndex {
        sqlx::query("SET LOCAL enable_sort = off").execute(&mut *conn).await.unwrap();
    }
}

async fn nearest_ids(
    pool: &PgPool,
    key_set_id: Uuid,
    context: &[u8],
    query: &[f32],
    plan: Plan,
    ef_search: u32,
) -> Vec<(Uuid, f64)> {
    let mut tx = pool.begin().await.unwrap();
    set_locals(&mut tx, plan, ef_search).await;
    let sql = format!("SELECT id, 1 - (embedding <=> $4::real[]::halfvec(384)) AS similarity {NEAREST_WHERE}");
    let mut rows: Vec<(Uuid, f64)> = nearest(&sql, key_set_id, context, query)
        .fetch_all(&mut *tx)
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.get::<Uuid, _>(0), r.get::<f64, _>(1)))
        .collect();
    tx.commit().await.unwrap();
    rows.sort_by(|a, b| b.1.total_cmp(&a.1));
    rows
}

/// A statement of the lookup's shape (`NEAREST_WHERE`) with its five parameters bound.
fn nearest<'q>(
    sql: &'q str,
    key_set_id: Uuid,
    context: &[u8],
    query: &'q [f32],
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    sqlx::query(sql).bind(key_set_id).bind(INSTANCE).bind(vec![context.to_vec()]).bind(query).bind(5i64)
}

/// A plan line with its 384-number vector literals shortened.
fn elide_vectors(line: &str) -> String {
    let mut out = String::with_capacity(line.len().min(400));
    let mut rest = line;
    while let Some(start) = rest.find("'[") {
        let Some(len) = rest[start..].find("]'") else { break };
        out.push_str(&rest[..start]);
        out.push_str("'[…]'");
        rest = &rest[start + len + 2..];
    }
    out.push_str(rest);
    out
}

/// EXPLAIN ANALYZE of one vector lookup's statement (custom plan), and the generic plan of the same statement.
async fn explain(searched: Searched<'_>, query: &[f32], plan: Plan, ef_search: u32) -> (Vec<String>, Vec<String>) {
    let Searched { pool, key_set_id, context, .. } = searched;
    let mut tx = pool.begin().await.unwrap();
    set_locals(&mut tx, plan, ef_search).await;
    let select =
        format!("SELECT {COLUMNS}, 1 - (embedding <=> $4::real[]::halfvec(384)) AS similarity {NEAREST_WHERE}");
    let explain_sql = format!("EXPLAIN (ANALYZE, BUFFERS) {select}");
    let custom: Vec<String> = nearest(&explain_sql, key_set_id, context, query)
        .fetch_all(&mut *tx)
        .await
        .unwrap()
        .into_iter()
        .map(|r| elide_vectors(&r.get::<String, _>(0)))
        .collect();
    let generic = match sqlx::raw_sql(&format!("EXPLAIN (GENERIC_PLAN) {select}")).fetch_all(&mut *tx).await {
        Ok(rows) => rows.into_iter().map(|r| r.get::<String, _>(0)).collect(),
        Err(e) => vec![format!("(no generic plan: {e})")],
    };
    tx.commit().await.unwrap();
    (custom, generic)
}

/// EXPLAIN (ANALYZE, BUFFERS) of the exact path's statement (`find_exact`) for the first stored question, as a
/// generic plan (what a prepared statement settles on).
async fn explain_exact(searched: Searched<'_>) -> Vec<String> {
    let Searched { pool, key_set_id, visible, .. } = searched;
    let exact_hash: Vec<u8> = sqlx::query_scalar("SELECT exact_hash FROM cache_entries WHERE id = $1")
        .bind(visible.ids[0])
        .fetch_one(pool)
        .await
        .unwrap();
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("SET LOCAL plan_cache_mode = force_generic_plan").execute(&mut *tx).await.unwrap();
    let plan = sqlx::query(&format!(
        "EXPLAIN (ANALYZE, BUFFERS) SELECT {COLUMNS}, 1.0::float8 AS similarity FROM cache_entries
         WHERE key_set_id = $1 AND instance_id = $2 AND exact_hash = ANY($3) AND expires_at > now()
         LIMIT 1"
    ))
    .bind(key_set_id)
    .bind(INSTANCE)
    .bind(vec![exact_hash])
    .fetch_all(&mut *tx)
    .await
    .unwrap()
    .into_iter()
    .map(|r| r.get::<String, _>(0))
    .collect();
    tx.commit().await.unwrap();
    plan
}

/// How often the lookups' prepared nearest-neighbour statement (`find_nearest`) was planned generic and custom so far,
/// over the pool's connections.
async fn lookup_plan_counts(pool: &PgPool) -> (i64, i64) {
    let mut conns = Vec::new();
    let (mut generic, mut custom) = (0i64, 0i64);
    for _ in 0..pool.options().get_max_connections() {
        let Ok(mut conn) = pool.acquire().await else { break };
        let row = sqlx::query(
            "SELECT coalesce(sum(generic_plans), 0)::int8, coalesce(sum(custom_plans), 0)::int8
             FROM pg_prepared_statements WHERE statement LIKE 'SELECT id, master_key_version%ORDER BY embedding <=>%'",
        )
        .fetch_one(&mut *conn)
        .await
        .unwrap();
        generic += row.get::<i64, _>(0);
        custom += row.get::<i64, _>(1);
        conns.push(conn);
    }
    (generic, custom)
}

#[derive(Clone, Copy, Default)]
struct Recall {
    correct: usize,
    /// Queries the statement answered with no row at all.
    empty: usize,
    /// The statement's latency (BEGIN, the SET LOCALs, the SELECT, COMMIT).
    p50: Duration,
    p99: Duration,
}

impl Recall {
    fn cell(&self) -> String {
        let empty = if self.empty > 0 { format!(", {} empty", self.empty) } else { String::new() };
        format!(
            "{:.1} % ({} / {}{empty})",
            100.0 * self.correct as f64 / RECALL_QUERIES as f64,
            ms(self.p50),
            ms(self.p99)
        )
    }
}

/// Whose entries a recall measurement searches.
#[derive(Clone, Copy)]
struct Searched<'a> {
    pool: &'a PgPool,
    key_set_id: Uuid,
    context: &'a [u8],
    visible: &'a Visible,
}

async fn recall(
    Searched { pool, key_set_id, context, visible }: Searched<'_>,
    queries: &[Vec<f32>],
    exact_top: &[(usize, f32)],
    plan: Plan,
    ef_search: u32,
) -> Recall {
    let mut result = Recall::default();
    let mut latencies = Vec::with_capacity(queries.len());
    for (q, &(best, best_sim)) in queries.iter().zip(exact_top) {
        let t = Instant::now();
        let found = nearest_ids(pool, key_set_id, context, q, plan, ef_search).await;
        latencies.push(t.elapsed());
        let Some((top, _)) = found.first() else {
            result.empty += 1;
            continue;
        };
        let Some(&i) = visible.index.get(top) else { panic!("the index returned an entry outside the filter") };
        if i == best || best_sim - dot(visible.vec(i), q) <= TIE {
            result.correct += 1;
        }
    }
    (result.p50, result.p99) = percentiles(latencies);
    result
}

fn execution_time(plan: &[String]) -> String {
    plan.iter().find_map(|l| l.strip_prefix("Execution Time: ")).unwrap_or("?").to_owned()
}

async fn measure(
    cache: &SemanticCache,
    searched: Searched<'_>,
    vectors: &mut Vectors,
    ef_search: u32,
    started: Instant,
) -> (Measured, Duration, Duration) {
    let Searched { pool, key_set_id, visible, .. } = searched;
    let scope = Scope { key_set_id, instance: INSTANCE };
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM cache_entries").fetch_one(pool).await.unwrap();
    let load_before = load_average();
    let cached_before = index_cached(pool).await;

    // The floor under any lookup on this machine: a `SELECT 1` round trip through the same pool.
    let mut latencies = Vec::with_capacity(LOOKUPS);
    for i in 0..WARMUP + LOOKUPS {
        let t = Instant::now();
        sqlx::query("SELECT 1").execute(pool).await.unwrap();
        if i >= WARMUP {
            latencies.push(t.elapsed());
        }
    }
    let round_trip = percentiles(latencies);

    // Exact path.
    let exact_questions: Vec<Conversation> = (0..REAL).map(stored_question).collect();
    for i in 0..WARMUP {
        cache.lookup(scope, &exact_questions[i % REAL], Matching::default()).await.unwrap();
    }
    let mut latencies = Vec::with_capacity(LOOKUPS);
    let mut exact_hits = 0;
    for i in 0..LOOKUPS {
        let t = Instant::now();
        let hit = cache.lookup(scope, &exact_questions[i % REAL], Matching::default()).await.unwrap();
        latencies.push(t.elapsed());
        if let Some(hit) = hit
            && hit.similarity >= 1.0
            && hit.response == answer(i % REAL)
        {
            exact_hits += 1;
        }
    }
    let exact = percentiles(latencies);
    progress(started, "exact lookups done");

    // Vector path: paraphrases miss the exact path and are embedded (fixed vectors) and searched.
    let paraphrases: Vec<Conversation> = (0..REAL).map(paraphrase).collect();
    for i in 0..WARMUP {
        cache.lookup(scope, &paraphrases[i % REAL], Matching::default()).await.unwrap();
    }
    let plans_before = lookup_plan_counts(pool).await;
    let mut latencies = Vec::with_capacity(LOOKUPS);
    let (mut vector_hits, mut vector_correct, mut similarity) = (0, 0, 0f64);
    let vector_started = Instant::now();
    for i in 0..LOOKUPS {
        let t = Instant::now();
        let hit = cache.lookup(scope, &paraphrases[i % REAL], Matching::default()).await.unwrap();
        latencies.push(t.elapsed());
        if let Some(hit) = hit {
            vector_hits += 1;
            similarity += f64::from(hit.similarity);
            if hit.response == answer(i % REAL) {
                vector_correct += 1;
            }
        }
    }
    let vector_time = vector_started.elapsed();
    let vector = percentiles(latencies);
    let load_after = load_average();
    let cached_after = index_cached(pool).await;
    let plans_after = lookup_plan_counts(pool).await;
    let lookup_plans =
        format!("{} generic / {} custom", plans_after.0 - plans_before.0, plans_after.1 - plans_before.1);
    progress(started, "vector lookups done");

    // Recall@1 of the index (the lookup's statement) against an exact search over the visible entries: near-duplicates
    // of stored questions (what a hit is), and fresh questions (harder: many near-equal neighbours).
    let recall_started = Instant::now();
    let near_duplicates = vectors.near_duplicates(visible, RECALL_QUERIES).await;
    let fresh = vectors.fresh(RECALL_QUERIES).await;
    let mut recalls = Vec::new();
    for queries in [&near_duplicates, &fresh] {
        let exact_top = visible.exact_top1(queries);
        for plan in [Plan::Planner, Plan::ForceIndex] {
            recalls.push(recall(searched, queries, &exact_top, plan, ef_search).await);
        }
    }
    // The same near-duplicates, HNSW scan forced, at other `hnsw.ef_search` values.
    let exact_top = visible.exact_top1(&near_duplicates);
    let mut ef_sweep = Vec::new();
    for ef_search in EF_SWEEP {
        let r = recall(searched, &near_duplicates, &exact_top, Plan::ForceIndex, ef_search);
        ef_sweep.push((ef_search, r.await));
    }
    let recall_time = recall_started.elapsed();
    progress(started, "recall done");

    let probe = vectors.near(visible.vec(0), PARAPHRASE_NOISE);
    let (custom, generic) = explain(searched, &probe, Plan::Planner, ef_search).await;
    let (forced, _) = explain(searched, &probe, Plan::ForceIndex, ef_search).await;

    let row = Measured {
        scenario: String::new(),
        rows,
        visible: visible.len(),
        fill: Duration::ZERO,
        build: Duration::ZERO,
        index_bytes: 0,
        table_bytes: 0,
        load: (load_before, load_after),
        round_trip,
        exact_explain: explain_exact(searched).await,
        cached: cached_before.zip(cached_after),
        exact,
        exact_hits,
        vector,
        vector_hits,
        vector_correct,
        vector_similarity: if vector_hits > 0 { similarity / vector_hits as f64 } else { 0.0 },
        ef_sweep,
        recalls: recalls.try_into().unwrap_or_else(|_| panic!("four recall measurements")),
        plan: top_node(&custom),
        generic_plan: top_node(&generic),
        forced_plan: format!("{} ({})", top_node(&forced), execution_time(&forced)),
        lookup_plans,
        explain: custom,
    };
    (row, vector_time, recall_time)
}

// ---------------------------------------------------------------------------------------------------------------
// Part 4: a real embedder's latency
// ---------------------------------------------------------------------------------------------------------------

/// The real all-MiniLM-L6-v2 embedder, when `RELIABLEGPT_EMBEDDING_MODEL_DIR` names its files (one call at a time, as
/// the service's default `RELIABLEGPT_EMBEDDING_THREADS`; `main` gives rayon one thread).
fn real_embedder() -> Option<Arc<LocalEmbedder>> {
    let dir = std::env::var_os("RELIABLEGPT_EMBEDDING_MODEL_DIR")?;
    Some(Arc::new(LocalEmbedder::load(std::path::Path::new(&dir), 1).unwrap()))
}

/// Embedding latency p50/p99 of a ~12-word question, alone and in a batch of 16.
async fn embedding_latency(embedder: &dyn Embedder) {
    const SINGLES: usize = 200;
    const BATCHES: usize = 30;
    let question = "How do I rotate the API keys of my production deployment without any downtime?".to_owned();
    let batch: Vec<String> = (0..16)
        .map(|i| format!("How do I rotate the API keys of production deployment number {i} without any downtime?"))
        .collect();
    let single = std::slice::from_ref(&question);
    for _ in 0..10 {
        embedder.embed(single).await.unwrap();
    }
    let mut singles = Vec::with_capacity(SINGLES);
    for _ in 0..SINGLES {
        let t = Instant::now();
        embedder.embed(single).await.unwrap();
        singles.push(t.elapsed());
    }
    embedder.embed(&batch).await.unwrap();
    let mut batches = Vec::with_capacity(BATCHES);
    for _ in 0..BATCHES {
        let t = Instant::now();
        embedder.embed(&batch).await.unwrap();
        batches.push(t.elapsed());
    }
    let (s50, s99) = percentiles(singles);
    let (b50, b99) = percentiles(batches);
    println!();
    println!("Embedding latency ({}):", embedder.name());
    println!();
    println!("| input | p50 | p99 | p50 per question |");
    println!("|---|---|---|---|");
    println!("| 1 question (~12 words) | {} | {} | {} |", ms(s50), ms(s99), ms(s50));
    println!("| batch of 16 | {} | {} | {} |", ms(b50), ms(b99), ms(b50 / 16));
}

// ---------------------------------------------------------------------------------------------------------------

async fn run(options: Options) {
    let started = Instant::now();
    let admin = std::env::var("DATABASE_URL").expect("DATABASE_URL (run scripts/dev-db)");
    let name = format!("bench_{}", Uuid::new_v4().simple());
    let mut admin_conn = PgConnection::connect(&admin).await.unwrap();
    sqlx::query(&format!(r#"CREATE DATABASE "{name}""#)).execute(&mut admin_conn).await.unwrap();
    let mut url = url::Url::parse(&admin).unwrap();
    url.set_path(&name);
    let pool = PgPoolOptions::new().max_connections(4).connect(url.as_str()).await.unwrap();
    reliablegpt::db::migrate(&pool).await.unwrap();
    let version: String = sqlx::query_scalar("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
        .fetch_one(&pool)
        .await
        .unwrap();
    let server: String = sqlx::query_scalar("SHOW server_version").fetch_one(&pool).await.unwrap();
    let server_memory = ServerMemory::read(&pool).await;
    progress(
        started,
        &format!("database {name} migrated (PostgreSQL {server}, pgvector {version}, {})", server_memory.describe()),
    );
    if options.prewarm {
        sqlx::query("CREATE EXTENSION IF NOT EXISTS pg_prewarm").execute(&pool).await.unwrap();
    }
    // For the index's share in shared_buffers; reported only where the server has it.
    let _ = sqlx::query("CREATE EXTENSION IF NOT EXISTS pg_buffercache").execute(&pool).await;
    let definition = index_definition(&pool, options.hnsw.as_deref()).await;

    let model = real_embedder();
    let sentences = match options.sentences {
        None => None,
        Some(count) => {
            let embedder = model.clone().expect("--vectors sentences needs RELIABLEGPT_EMBEDDING_MODEL_DIR");
            Some(load_sentences(embedder, count, started).await)
        }
    };
    let mut vectors = Vectors::new(SEED, sentences);
    let real: Vec<(Vec<f32>, Option<usize>)> = (0..REAL).map(|_| vectors.entry()).collect();
    let mut fixed = HashMap::new();
    for (i, (v, _)) in real.iter().enumerate() {
        fixed.insert(paraphrase(i).question, vectors.near(v, PARAPHRASE_NOISE));
    }
    let embedder: Arc<dyn Embedder> = Arc::new(FixedEmbedder(fixed));
    let keyring = Arc::new(MasterKeyring::from_keys(vec![(1, Secret32::random())]).unwrap());
    let metrics = Arc::new(Metrics::new(&[]));
    let cache_options = CacheOptions { ef_search: options.ef_search, ..CacheOptions::default() };
    let (cache, worker) = SemanticCache::start(pool.clone(), keyring, Some(embedder), metrics, cache_options);

    let mut results = Vec::new();
    let mut phases: Vec<(String, Duration)> = Vec::new();

    // One key set, one instance: every entry passes the filter.
    let key_set = new_key_set(&pool).await;
    let mut visible = Visible::default();
    let t = Instant::now();
    let context = store_real(&cache, &pool, key_set, &real, &mut visible).await;
    phases.push((format!("store {REAL} real entries through store_embedded"), t.elapsed()));
    for &size in &options.sizes {
        progress(started, &format!("one key set, {size} entries: filling"));
        drop_index(&pool).await;
        let t = Instant::now();
        let more = size.saturating_sub(visible.len());
        fill(&pool, key_set, &context, more, &mut vectors, Some(&mut visible)).await;
        let fill_time = t.elapsed();
        phases.push((format!("{size}: COPY {more} filler rows"), fill_time));
        progress(started, &format!("one key set, {size} entries: building the index"));
        let built = build_index(&pool, &definition, &options.maintenance_work_mem, options.prewarm).await;
        phases.push((format!("{size}: CREATE INDEX (hnsw) + ANALYZE"), built.took));
        progress(started, &format!("one key set, {size} entries: index built in {:.1}s", built.took.as_secs_f64()));
        let t = Instant::now();
        let searched = Searched { pool: &pool, key_set_id: key_set, context: &context, visible: &visible };
        let (mut row, vector_time, recall_time) =
            measure(&cache, searched, &mut vectors, options.ef_search, started).await;
        phases.push((
            format!(
                "{size}: measurements (vector lookups {:.1}s, recall {:.1}s)",
                vector_time.as_secs_f64(),
                recall_time.as_secs_f64()
            ),
            t.elapsed(),
        ));
        row.scenario = "one key set".to_owned();
        row.fill = fill_time;
        row.set_built(&built);
        results.push(row);
    }
    drop(visible);

    // 100 key sets sharing the table, equally full; measured on one (the filter keeps 1 %).
    for &total in &options.shared {
        let each = total / 100;
        progress(started, &format!("100 key sets × {each}: filling"));
        sqlx::query("TRUNCATE cache_entries").execute(&pool).await.unwrap();
        drop_index(&pool).await;
        let key_set = new_key_set(&pool).await;
        let mut visible = Visible::default();
        let context = store_real(&cache, &pool, key_set, &real, &mut visible).await;
        let t = Instant::now();
        vectors.restart_at(REAL);
        fill(&pool, key_set, &context, each - REAL, &mut vectors, Some(&mut visible)).await;
        for _ in 0..99 {
            let other = new_key_set(&pool).await;
            let other_context: [u8; 32] = vectors.rng.r#gen();
            fill(&pool, other, &other_context, each, &mut vectors, None).await;
        }
        let fill_time = t.elapsed();
        phases.push((format!("100 key sets × {each}: COPY {} filler rows", 100 * each - REAL), fill_time));
        let built = build_index(&pool, &definition, &options.maintenance_work_mem, options.prewarm).await;
        phases.push((format!("100 key sets × {each}: CREATE INDEX (hnsw) + ANALYZE"), built.took));
        progress(started, &format!("100 key sets × {each}: index built in {:.1}s", built.took.as_secs_f64()));
        let t = Instant::now();
        let searched = Searched { pool: &pool, key_set_id: key_set, context: &context, visible: &visible };
        let (mut row, _, _) = measure(&cache, searched, &mut vectors, options.ef_search, started).await;
        phases.push((format!("100 key sets × {each}: measurements"), t.elapsed()));
        row.scenario = format!("100 key sets × {each}");
        row.fill = fill_time;
        row.set_built(&built);
        results.push(row);
    }

    let ef_search = options.ef_search;
    println!();
    println!(
        "Semantic cache, {DIM}-dim {}, PostgreSQL {server}, pgvector {version}, {}{}; {LOOKUPS} timed lookups per \
         path (after {WARMUP} warm-up) cycling through {REAL} stored questions; hnsw.ef_search = {ef_search}, \
         iterative_scan = relaxed_order, threshold {}; `{definition}` built with maintenance_work_mem = {}.",
        vectors.describe(),
        server_memory.describe(),
        if options.prewarm { ", tables and indexes prewarmed (pg_prewarm) after each build" } else { "" },
        reliablegpt::cache::DEFAULT_THRESHOLD,
        options.maintenance_work_mem,
    );
    println!();
    println!(
        "| scenario | rows | in filter | COPY fill | index build | index size | table size | load avg (1 min) | HNSW index in shared_buffers | SELECT 1 p50 / p99 | exact p50 | exact p99 | exact hits | vector p50 | vector p99 | vector hit rate (right answer) | mean hit similarity | recall@1 |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in &results {
        println!(
            "| {} | {} | {} | {:.1} s | {:.1} s | {:.0} MB | {:.0} MB | {:.2} → {:.2} | {} | {} / {} | {} | {} | {}/{LOOKUPS} | {} | {} | {:.1} % ({:.1} %) | {:.3} | {:.1} %{} |",
            r.scenario,
            r.rows,
            r.visible,
            r.fill.as_secs_f64(),
            r.build.as_secs_f64(),
            r.index_bytes as f64 / 1e6,
            r.table_bytes as f64 / 1e6,
            r.load.0,
            r.load.1,
            r.cached.map_or("?".to_owned(), |(a, b)| format!("{:.0} % → {:.0} %", 100.0 * a, 100.0 * b)),
            ms(r.round_trip.0),
            ms(r.round_trip.1),
            ms(r.exact.0),
            ms(r.exact.1),
            r.exact_hits,
            ms(r.vector.0),
            ms(r.vector.1),
            100.0 * r.vector_hits as f64 / LOOKUPS as f64,
            100.0 * r.vector_correct as f64 / LOOKUPS as f64,
            r.vector_similarity,
            100.0 * r.recalls[0].correct as f64 / RECALL_QUERIES as f64,
            if r.recalls[0].empty > 0 { format!(" ({} empty)", r.recalls[0].empty) } else { String::new() },
        );
    }
    for r in &results {
        if r.index_bytes + r.table_bytes > server_memory.shared_buffers_bytes {
            println!();
            println!(
                "Warning: at {} rows ({}) the HNSW index ({:.0} MB) and the table ({:.0} MB) do not fit in \
                 shared_buffers ({}): lookups evict and re-read pages (from the OS cache at best). \
                 RELIABLEGPT_DEV_SHARED_BUFFERS sizes the dev server (scripts/dev-db).",
                r.rows,
                r.scenario,
                r.index_bytes as f64 / 1e6,
                r.table_bytes as f64 / 1e6,
                server_memory.shared_buffers
            );
        }
    }
    println!();
    println!(
        "Recall@1 against an exact search over the entries in the filter ({RECALL_QUERIES} queries each; in brackets the \
         statement's p50 / p99, BEGIN to COMMIT). {} Forced: `SET LOCAL enable_sort = off`, which leaves the HNSW \
         index scan as the only way to the order.",
        if vectors.sentences.is_some() {
            "Near-duplicates: the embedding of a real paraphrase of a stored question; fresh: the embedding of a \
             generated question never stored."
        } else {
            "Near-duplicates: a stored vector plus noise (cos ≈ 0.94); fresh: a new draw from the clusters (nearest \
             neighbour cos ≈ 0.7, many near-ties)."
        }
    );
    println!();
    println!(
        "| scenario | rows | in filter | near-duplicates, planner's plan | near-duplicates, HNSW forced | fresh, planner's plan | fresh, HNSW forced |"
    );
    println!("|---|---|---|---|---|---|---|");
    for r in &results {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} |",
            r.scenario,
            r.rows,
            r.visible,
            r.recalls[0].cell(),
            r.recalls[1].cell(),
            r.recalls[2].cell(),
            r.recalls[3].cell()
        );
    }
    println!();
    println!("Recall@1 of near-duplicates with the HNSW scan forced, by `hnsw.ef_search` (statement p50 / p99):");
    println!();
    print!("| scenario | rows | {ef_search} (as the lookups) |");
    for ef in EF_SWEEP {
        print!(" {ef} |");
    }
    println!();
    println!("|---|---|---|{}", "---|".repeat(EF_SWEEP.len()));
    for r in &results {
        print!("| {} | {} | {} |", r.scenario, r.rows, r.recalls[1].cell());
        for (_, sweep) in &r.ef_sweep {
            print!(" {} |", sweep.cell());
        }
        println!();
    }
    println!();
    println!("Plans of the nearest-neighbour statement (top node under the Limit):");
    println!();
    println!(
        "| scenario | rows | EXPLAIN ANALYZE (custom plan) | generic plan | plans of the timed vector lookups | with enable_sort = off |"
    );
    println!("|---|---|---|---|---|---|");
    for r in &results {
        println!(
            "| {} | {} | {} ({}) | {} | {} | {} |",
            r.scenario,
            r.rows,
            r.plan,
            execution_time(&r.explain),
            r.generic_plan,
            r.lookup_plans,
            r.forced_plan
        );
    }
    for r in &results {
        println!();
        println!("EXPLAIN (ANALYZE, BUFFERS) of the exact path (generic plan), {} at {} rows:", r.scenario, r.rows);
        println!();
        println!("```");
        for line in &r.exact_explain {
            println!("{line}");
        }
        println!("```");
        println!();
        println!("EXPLAIN (ANALYZE, BUFFERS), {} at {} rows:", r.scenario, r.rows);
        println!();
        println!("```");
        for line in &r.explain {
            println!("{line}");
        }
        println!("```");
    }
    println!();
    println!("| phase | time |");
    println!("|---|---|");
    for (phase, took) in &phases {
        println!("| {phase} | {:.1} s |", took.as_secs_f64());
    }

    match model {
        Some(embedder) => embedding_latency(embedder.as_ref()).await,
        None => {
            println!();
            println!(
                "Embedding latency: skipped (no real embedder in this build, or RELIABLEGPT_EMBEDDING_MODEL_DIR unset)."
            );
        }
    }
    progress(started, "done");

    worker.abort();
    drop(cache);
    pool.close().await;
    sqlx::query(&format!(r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#)).execute(&mut admin_conn).await.unwrap();
}
