//! Connection pool, migrations, and the start-up check that the schema is exactly what this build expects.

use std::time::Duration;

use secrecy::ExposeSecret;
use sqlx::migrate::Migrator;
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgPool, Row};

use crate::config::Settings;

pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error(
        "the database has no reliablegpt schema: run `reliablegpt migrate` (or start with `reliablegpt serve --migrate`)"
    )]
    Missing,
    #[error(
        "the database schema is older than this build (at {applied}, needs {expected}): run `reliablegpt migrate` (or start with `reliablegpt serve --migrate`)"
    )]
    Outdated { applied: i64, expected: i64 },
    #[error("the database schema ({applied}) is newer than this build ({expected}): deploy the newer reliablegpt")]
    Newer { applied: i64, expected: i64 },
    #[error("migration {0} failed part-way: fix the database, then run `reliablegpt migrate`")]
    Dirty(i64),
    #[error("migration {0} was changed after it was applied")]
    Modified(i64),
    #[error(
        "the pgvector extension is not installed in this database: run `reliablegpt migrate` as a role allowed to CREATE EXTENSION"
    )]
    NoPgvector,
    #[error("cannot query the database")]
    Database(#[from] sqlx::Error),
}

pub async fn connect(settings: &Settings) -> Result<PgPool, sqlx::Error> {
    PgPoolOptions::new()
        .max_connections(settings.db_max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect(settings.database_url.expose_secret())
        .await
}

/// Whether an error says the database cannot be reached (down, restarting, refusing connections, the pool could not
/// connect in time), as opposed to a query that failed: the first kind is answered `503` with `Retry-After`.
pub fn is_unreachable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) | sqlx::Error::Tls(_) => true,
        sqlx::Error::WorkerCrashed => true,
        // Class 08: connection exception; 57P01-57P03: admin/crash shutdown, cannot connect now.
        sqlx::Error::Database(e) => {
            e.code().is_some_and(|c| c.starts_with("08") || matches!(c.as_ref(), "57P01" | "57P02" | "57P03"))
        }
        _ => false,
    }
}

pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    MIGRATOR.run(pool).await
}

pub fn expected_version() -> i64 {
    MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0)
}

/// Full check, run once at start: every migration of this build applied, unmodified, and nothing newer.
pub async fn check_schema(pool: &PgPool) -> Result<(), SchemaError> {
    let table: Option<String> =
        sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations')::text").fetch_one(pool).await?;
    if table.is_none() {
        return Err(SchemaError::Missing);
    }
    let rows =
        sqlx::query("SELECT version, success, checksum FROM _sqlx_migrations ORDER BY version").fetch_all(pool).await?;
    let expected = expected_version();
    if rows.is_empty() {
        return Err(SchemaError::Missing);
    }
    for row in &rows {
        let version: i64 = row.try_get("version")?;
        let success: bool = row.try_get("success")?;
        let checksum: Vec<u8> = row.try_get("checksum")?;
        if !success {
            return Err(SchemaError::Dirty(version));
        }
        match MIGRATOR.iter().find(|m| m.version == version) {
            None => {
                return Err(SchemaError::Newer { applied: version, expected });
            }
            Some(m) if *m.checksum != *checksum => return Err(SchemaError::Modified(version)),
            Some(_) => {}
        }
    }
    let applied = rows.len();
    if applied < MIGRATOR.iter().count() {
        let latest: i64 = rows.last().map(|r| r.try_get("version")).transpose()?.unwrap_or(0);
        return Err(SchemaError::Outdated { applied: latest, expected });
    }
    let pgvector: Option<String> =
        sqlx::query_scalar("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetch_optional(pool).await?;
    if pgvector.is_none() {
        return Err(SchemaError::NoPgvector);
    }
    Ok(())
}

/// The cheap check behind `/readyz`: one round trip comparing the newest applied migration with this build's.
pub async fn check_ready(pool: &PgPool) -> Result<(), SchemaError> {
    let latest: Option<i64> = sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations WHERE success")
        .fetch_one(pool)
        .await
        .map_err(|e| match e {
            sqlx::Error::Database(_) => SchemaError::Missing,
            other => SchemaError::Database(other),
        })?;
    let expected = expected_version();
    match latest {
        None => Err(SchemaError::Missing),
        Some(v) if v < expected => Err(SchemaError::Outdated { applied: v, expected }),
        Some(v) if v > expected => Err(SchemaError::Newer { applied: v, expected }),
        Some(_) => Ok(()),
    }
}
