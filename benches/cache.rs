//! Semantic cache benchmark: lookup latency (exact path and vector path), HNSW build time and recall@1 of the index
//! against an exact search, on synthetic clustered 384-dimension vectors in a real PostgreSQL + pgvector
//! (DATABASE_URL, as for the tests). It times the real `SemanticCache::lookup`, with a fixed-vector embedder so the
//! model is not part of the vector path. Reported, not asserted.
//!
//! Scenarios: one key set and instance holding every entry (10k, 100k, and 1M with `--large`), and 100 key sets of
//! 1,000 entries sharing the table (the filter keeps 1 %). Each: ~200 entries stored through `store_embedded`, the rest
//! COPYed in with the HNSW index dropped, then the index rebuilt as in the migration. Measured: `lookup` p50/p99 on the
//! exact path and the vector path (paraphrases at cos ≈ 0.97), the hit rate, recall@1 of the nearest-neighbour
//! statement against an exact search (with the planner's plan and with the HNSW scan forced), and the plans.
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
use reliablegpt::cache::embed::{BoxFuture, DIMENSIONS, EmbedError, Embedder, Embedding};
use reliablegpt::cache::{Conversation, Matching, Retention, Scope, SemanticCache};
use reliablegpt::config::{MasterKeyring, Secret32};
use reliablegpt::engine::metrics::Metrics;
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection, PgPool, Row};
use uuid::Uuid;

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
/// `hnsw.ef_search` of `find_nearest`.
const EF_SEARCH: u32 = 64;
const EF_SWEEP: [u32; 4] = [40, 100, 200, 400];

const COLUMNS: &str = "id, master_key_version, question, response, model, created_at";
/// The statement of `find_nearest` in src/cache/queries.rs (run there with the same two `SET LOCAL`s).
const NEAREST_WHERE: &str = "FROM cache_entries
         WHERE key_set_id = $1 AND instance_id = $2 AND context_hash = ANY($3) AND expires_at > now()
           AND embedding IS NOT NULL
         ORDER BY embedding <=> $4::real[]::halfvec(384)
         LIMIT $5";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|a| a == "--bench") {
        return;
    }
    let mut sizes = vec![10_000, 100_000];
    if args.iter().any(|a| a == "--large") {
        sizes.push(1_000_000);
    }
    // `--sizes 2000,5000`: other sizes for the one-key-set scenario (a quick check of the bench itself).
    if let Some(list) = args.iter().position(|a| a == "--sizes").and_then(|i| args.get(i + 1)) {
        sizes = list.split(',').map(|n| n.trim().replace('_', "").parse().expect("--sizes: numbers")).collect();
    }
    // `--maintenance-work-mem 2GB`: for the index builds (default 1GB; a build whose graph outgrows it goes on on disk).
    let maintenance_work_mem = args
        .iter()
        .position(|a| a == "--maintenance-work-mem")
        .and_then(|i| args.get(i + 1))
        .cloned()
        .unwrap_or_else(|| "1GB".to_owned());
    assert!(maintenance_work_mem.chars().all(|c| c.is_ascii_alphanumeric()), "--maintenance-work-mem: e.g. 2GB");
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(run(sizes, maintenance_work_mem));
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
}

impl Vectors {
    fn new(seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut centres = Vec::with_capacity(CENTRES * DIM);
        for _ in 0..CENTRES {
            let mut c: Vec<f32> = (0..DIM).map(|_| gauss(&mut rng)).collect();
            normalise(&mut c);
            centres.extend_from_slice(&c);
        }
        Self { rng, centres }
    }

    /// A new entry: a random centre plus noise, unit length.
    fn entry(&mut self) -> Vec<f32> {
        let c = self.rng.gen_range(0..CENTRES);
        let centre = self.centres[c * DIM..(c + 1) * DIM].to_vec();
        self.near(&centre, ENTRY_NOISE)
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
    index: HashMap<Uuid, usize>,
}

impl Visible {
    fn push(&mut self, id: Uuid, v: &[f32]) {
        self.index.insert(id, self.ids.len());
        self.ids.push(id);
        self.vecs.extend_from_slice(v);
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
    real: &[Vec<f32>],
    visible: &mut Visible,
) -> Vec<u8> {
    let scope = Scope { key_set_id, instance: INSTANCE };
    for (i, v) in real.iter().enumerate() {
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
        visible.push(id, v);
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
            let v = vectors.entry();
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
                visible.push(id, &v);
            }
        }
        copy.send(buf.into_bytes()).await.unwrap();
    }
    copy.finish().await.unwrap();
}

async fn drop_index(pool: &PgPool) {
    sqlx::query("DROP INDEX IF EXISTS cache_entries_embedding").execute(pool).await.unwrap();
}

/// Recreates the HNSW index exactly as the migration does; returns the build time and the index size.
async fn build_index(pool: &PgPool, maintenance_work_mem: &str) -> (Duration, i64) {
    let mut conn = pool.acquire().await.unwrap();
    sqlx::query(&format!("SET maintenance_work_mem = '{maintenance_work_mem}'")).execute(&mut *conn).await.unwrap();
    let started = Instant::now();
    sqlx::query("CREATE INDEX cache_entries_embedding ON cache_entries USING hnsw (embedding halfvec_cosine_ops)")
        .execute(&mut *conn)
        .await
        .unwrap();
    let took = started.elapsed();
    sqlx::query("RESET maintenance_work_mem").execute(&mut *conn).await.unwrap();
    sqlx::query("ANALYZE cache_entries").execute(&mut *conn).await.unwrap();
    let size: i64 =
        sqlx::query_scalar("SELECT pg_relation_size('cache_entries_embedding')").fetch_one(&mut *conn).await.unwrap();
    (took, size)
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
async fn explain(
    pool: &PgPool,
    key_set_id: Uuid,
    context: &[u8],
    query: &[f32],
    plan: Plan,
) -> (Vec<String>, Vec<String>) {
    let mut tx = pool.begin().await.unwrap();
    set_locals(&mut tx, plan, EF_SEARCH).await;
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
    pool: &PgPool,
    key_set_id: Uuid,
    context: &[u8],
    visible: &Visible,
    vectors: &mut Vectors,
    started: Instant,
) -> (Measured, Duration, Duration) {
    let scope = Scope { key_set_id, instance: INSTANCE };
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM cache_entries").fetch_one(pool).await.unwrap();

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
    let plans_after = lookup_plan_counts(pool).await;
    let lookup_plans =
        format!("{} generic / {} custom", plans_after.0 - plans_before.0, plans_after.1 - plans_before.1);
    progress(started, "vector lookups done");

    // Recall@1 of the index (the lookup's statement) against an exact search over the visible entries: near-duplicates
    // of stored questions (what a hit is), and fresh draws from the same clusters (harder: many near-equal neighbours).
    let recall_started = Instant::now();
    let near_duplicates: Vec<Vec<f32>> = (0..RECALL_QUERIES)
        .map(|_| {
            let source = vectors.rng.gen_range(0..visible.len());
            vectors.near(visible.vec(source), RECALL_NOISE)
        })
        .collect();
    let fresh: Vec<Vec<f32>> = (0..RECALL_QUERIES).map(|_| vectors.entry()).collect();
    let searched = Searched { pool, key_set_id, context, visible };
    let mut recalls = Vec::new();
    for queries in [&near_duplicates, &fresh] {
        let exact_top = visible.exact_top1(queries);
        for plan in [Plan::Planner, Plan::ForceIndex] {
            recalls.push(recall(searched, queries, &exact_top, plan, EF_SEARCH).await);
        }
    }
    // The same near-duplicates, HNSW scan forced, at other `hnsw.ef_search` values (the lookups use 64).
    let exact_top = visible.exact_top1(&near_duplicates);
    let mut ef_sweep = Vec::new();
    for ef_search in EF_SWEEP {
        let r = recall(searched, &near_duplicates, &exact_top, Plan::ForceIndex, ef_search);
        ef_sweep.push((ef_search, r.await));
    }
    let recall_time = recall_started.elapsed();
    progress(started, "recall done");

    let probe = vectors.near(visible.vec(0), PARAPHRASE_NOISE);
    let (custom, generic) = explain(pool, key_set_id, context, &probe, Plan::Planner).await;
    let (forced, _) = explain(pool, key_set_id, context, &probe, Plan::ForceIndex).await;

    let row = Measured {
        scenario: String::new(),
        rows,
        visible: visible.len(),
        fill: Duration::ZERO,
        build: Duration::ZERO,
        index_bytes: 0,
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

/// The real all-MiniLM-L6-v2 embedder, when `RELIABLEGPT_EMBEDDING_MODEL_DIR` names its files (one thread, as the
/// service's default `RELIABLEGPT_EMBEDDING_THREADS`).
fn real_embedder() -> Option<Arc<dyn Embedder>> {
    let dir = std::env::var_os("RELIABLEGPT_EMBEDDING_MODEL_DIR")?;
    let _ = rayon::ThreadPoolBuilder::new().num_threads(1).build_global();
    Some(Arc::new(reliablegpt::cache::embed::LocalEmbedder::load(std::path::Path::new(&dir), 1).unwrap()))
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

async fn run(sizes: Vec<usize>, maintenance_work_mem: String) {
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
    progress(started, &format!("database {name} migrated (PostgreSQL {server}, pgvector {version})"));

    let mut vectors = Vectors::new(SEED);
    let real: Vec<Vec<f32>> = (0..REAL).map(|_| vectors.entry()).collect();
    let mut fixed = HashMap::new();
    for (i, v) in real.iter().enumerate() {
        fixed.insert(paraphrase(i).question, vectors.near(v, PARAPHRASE_NOISE));
    }
    let embedder: Arc<dyn Embedder> = Arc::new(FixedEmbedder(fixed));
    let keyring = Arc::new(MasterKeyring::from_keys(vec![(1, Secret32::random())]).unwrap());
    let metrics = Arc::new(Metrics::new(&[]));
    let (cache, worker) = SemanticCache::start(pool.clone(), keyring, Some(embedder), metrics, Default::default());

    let mut results = Vec::new();
    let mut phases: Vec<(String, Duration)> = Vec::new();

    // One key set, one instance: every entry passes the filter.
    let key_set = new_key_set(&pool).await;
    let mut visible = Visible::default();
    let t = Instant::now();
    let context = store_real(&cache, &pool, key_set, &real, &mut visible).await;
    phases.push((format!("store {REAL} real entries through store_embedded"), t.elapsed()));
    for size in sizes {
        progress(started, &format!("one key set, {size} entries: filling"));
        drop_index(&pool).await;
        let t = Instant::now();
        let more = size.saturating_sub(visible.len());
        fill(&pool, key_set, &context, more, &mut vectors, Some(&mut visible)).await;
        let fill_time = t.elapsed();
        phases.push((format!("{size}: COPY {more} filler rows"), fill_time));
        progress(started, &format!("one key set, {size} entries: building the index"));
        let (build, index_bytes) = build_index(&pool, &maintenance_work_mem).await;
        phases.push((format!("{size}: CREATE INDEX (hnsw) + ANALYZE"), build));
        progress(started, &format!("one key set, {size} entries: index built in {:.1}s", build.as_secs_f64()));
        let t = Instant::now();
        let (mut row, vector_time, recall_time) =
            measure(&cache, &pool, key_set, &context, &visible, &mut vectors, started).await;
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
        row.build = build;
        row.index_bytes = index_bytes;
        results.push(row);
    }
    drop(visible);

    // 100 key sets sharing the table, 1,000 entries each; measured on one (the filter keeps 1 %).
    progress(started, "100 key sets: filling");
    sqlx::query("TRUNCATE cache_entries").execute(&pool).await.unwrap();
    drop_index(&pool).await;
    let key_set = new_key_set(&pool).await;
    let mut visible = Visible::default();
    let context = store_real(&cache, &pool, key_set, &real, &mut visible).await;
    let t = Instant::now();
    fill(&pool, key_set, &context, 1_000 - REAL, &mut vectors, Some(&mut visible)).await;
    for _ in 0..99 {
        let other = new_key_set(&pool).await;
        let other_context: [u8; 32] = vectors.rng.r#gen();
        fill(&pool, other, &other_context, 1_000, &mut vectors, None).await;
    }
    let fill_time = t.elapsed();
    phases.push(("100 key sets: COPY 99,800 filler rows".to_owned(), fill_time));
    let (build, index_bytes) = build_index(&pool, &maintenance_work_mem).await;
    phases.push(("100 key sets: CREATE INDEX (hnsw) + ANALYZE".to_owned(), build));
    progress(started, &format!("100 key sets: index built in {:.1}s", build.as_secs_f64()));
    let t = Instant::now();
    let (mut row, _, _) = measure(&cache, &pool, key_set, &context, &visible, &mut vectors, started).await;
    phases.push(("100 key sets: measurements".to_owned(), t.elapsed()));
    row.scenario = "100 key sets × 1,000".to_owned();
    row.fill = fill_time;
    row.build = build;
    row.index_bytes = index_bytes;
    results.push(row);

    println!();
    println!(
        "Semantic cache, {DIM}-dim clustered unit vectors ({CENTRES} centres), PostgreSQL {server}, pgvector {version}; \
         {LOOKUPS} timed lookups per path (after {WARMUP} warm-up) cycling through {REAL} stored questions; \
         hnsw.ef_search = {EF_SEARCH}, iterative_scan = relaxed_order, threshold {}; HNSW built with \
         maintenance_work_mem = {maintenance_work_mem}.",
        reliablegpt::cache::DEFAULT_THRESHOLD
    );
    println!();
    println!(
        "| scenario | rows | in filter | COPY fill | index build | index size | exact p50 | exact p99 | exact hits | vector p50 | vector p99 | vector hit rate (right answer) | mean hit similarity | recall@1 |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in &results {
        println!(
            "| {} | {} | {} | {:.1} s | {:.1} s | {:.0} MB | {} | {} | {}/{LOOKUPS} | {} | {} | {:.1} % ({:.1} %) | {:.3} | {:.1} %{} |",
            r.scenario,
            r.rows,
            r.visible,
            r.fill.as_secs_f64(),
            r.build.as_secs_f64(),
            r.index_bytes as f64 / 1e6,
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
    println!();
    println!(
        "Recall@1 against an exact search over the entries in the filter ({RECALL_QUERIES} queries each; in brackets the \
         statement's p50 / p99, BEGIN to COMMIT). Near-duplicates: a stored vector plus noise (cos ≈ 0.94); fresh: a new \
         draw from the clusters (nearest neighbour cos ≈ 0.7, many near-ties). Forced: `SET LOCAL enable_sort = off`, \
         which leaves the HNSW index scan as the only way to the order."
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
    print!("| scenario | rows | {EF_SEARCH} (as the lookups) |");
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

    match real_embedder() {
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
