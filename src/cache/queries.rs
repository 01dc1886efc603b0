//! Every SQL statement on `cache_entries`. Nobody else touches the table.

use chrono::{DateTime, Utc};
use sqlx::{FromRow, PgPool};
use uuid::Uuid;

/// A stored row as the lookup reads it.
#[derive(Debug, FromRow)]
pub struct StoredEntry {
    pub id: Uuid,
    pub master_key_version: i32,
    pub question: Vec<u8>,
    pub response: Vec<u8>,
    pub model: Option<String>,
    pub created_at: DateTime<Utc>,
    /// Cosine similarity to the query (1 for the exact path).
    pub similarity: f64,
}

pub struct NewRow<'a> {
    pub id: Uuid,
    pub key_set_id: Uuid,
    pub instance_id: &'a str,
    pub context_hash: &'a [u8],
    pub exact_hash: &'a [u8],
    pub embedding: Option<&'a [f32]>,
    pub master_key_version: i32,
    pub question: &'a [u8],
    pub response: &'a [u8],
    pub model: Option<&'a str>,
    pub ttl_seconds: i64,
}

const COLUMNS: &str = "id, master_key_version, question, response, model, created_at";

/// The live entry whose whole conversation hashes to one of `exact_hashes` (one per master key version).
pub async fn find_exact(
    pool: &PgPool,
    key_set_id: Uuid,
    instance_id: &str,
    exact_hashes: &[Vec<u8>],
) -> Result<Option<StoredEntry>, sqlx::Error> {
    sqlx::query_as::<_, StoredEntry>(&format!(
        "SELECT {COLUMNS}, 1.0::float8 AS similarity FROM cache_entries
         WHERE key_set_id = $1 AND instance_id = $2 AND exact_hash = ANY($3) AND expires_at > now()
         LIMIT 1"
    ))
    .bind(key_set_id)
    .bind(instance_id)
    .bind(exact_hashes)
    .fetch_optional(pool)
    .await
}

/// The `limit` nearest live entries with the same context, nearest first. The key set, instance and context filter
/// runs inside the HNSW scan (`hnsw.iterative_scan`), so one tenant's entries never crowd out another's results.
pub async fn find_nearest(
    pool: &PgPool,
    key_set_id: Uuid,
    instance_id: &str,
    context_hashes: &[Vec<u8>],
    embedding: &[f32],
    limit: i64,
    ef_search: u32,
) -> Result<Vec<StoredEntry>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    // Both for this transaction only, in one round trip.
    sqlx::query(
        "SELECT set_config('hnsw.iterative_scan', 'relaxed_order', true), set_config('hnsw.ef_search', $1, true)",
    )
    .bind(ef_search.to_string())
    .execute(&mut *tx)
    .await?;
    let mut rows = sqlx::query_as::<_, StoredEntry>(&format!(
        "SELECT {COLUMNS}, 1 - (embedding <=> $4::real[]::halfvec(384)) AS similarity FROM cache_entries
         WHERE key_set_id = $1 AND instance_id = $2 AND context_hash = ANY($3) AND expires_at > now()
           AND embedding IS NOT NULL
         ORDER BY embedding <=> $4::real[]::halfvec(384)
         LIMIT $5"
    ))
    .bind(key_set_id)
    .bind(instance_id)
    .bind(context_hashes)
    .bind(embedding)
    .bind(limit)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    // Relaxed order: the iterative scan may return neighbours slightly out of order.
    rows.sort_by(|a, b| b.similarity.total_cmp(&a.similarity));
    Ok(rows)
}

/// Inserts, or replaces the answer of the same conversation (and restarts its TTL).
pub async fn upsert(pool: &PgPool, row: &NewRow<'_>) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO cache_entries (id, key_set_id, instance_id, context_hash, exact_hash, embedding, master_key_version,
                                    question, response, model, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6::real[]::halfvec(384), $7, $8, $9, $10, now() + make_interval(secs => $11))
         ON CONFLICT (key_set_id, instance_id, exact_hash) DO UPDATE
           SET id = EXCLUDED.id, context_hash = EXCLUDED.context_hash, embedding = EXCLUDED.embedding,
               master_key_version = EXCLUDED.master_key_version, question = EXCLUDED.question,
               response = EXCLUDED.response, model = EXCLUDED.model, created_at = now(),
               expires_at = EXCLUDED.expires_at",
    )
    .bind(row.id)
    .bind(row.key_set_id)
    .bind(row.instance_id)
    .bind(row.context_hash)
    .bind(row.exact_hash)
    .bind(row.embedding)
    .bind(row.master_key_version)
    .bind(row.question)
    .bind(row.response)
    .bind(row.model)
    .bind(row.ttl_seconds as f64)
    .execute(pool)
    .await?;
    Ok(())
}

/// Deletes a key set's entries beyond its newest `keep`.
pub async fn trim(pool: &PgPool, key_set_id: Uuid, keep: i64) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "DELETE FROM cache_entries WHERE id IN (
             SELECT id FROM cache_entries WHERE key_set_id = $1 ORDER BY created_at DESC OFFSET $2)",
    )
    .bind(key_set_id)
    .bind(keep)
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

/// Deletes a key set's entries, or one instance's.
pub async fn purge(pool: &PgPool, key_set_id: Uuid, instance_id: Option<&str>) -> Result<u64, sqlx::Error> {
    let done =
        sqlx::query("DELETE FROM cache_entries WHERE key_set_id = $1 AND ($2::text IS NULL OR instance_id = $2)")
            .bind(key_set_id)
            .bind(instance_id)
            .execute(pool)
            .await?;
    Ok(done.rows_affected())
}

/// Deletes up to `batch` expired entries.
pub async fn delete_expired(pool: &PgPool, batch: i64) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "DELETE FROM cache_entries WHERE id IN (
             SELECT id FROM cache_entries WHERE expires_at <= now() LIMIT $1 FOR UPDATE SKIP LOCKED)",
    )
    .bind(batch)
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}
