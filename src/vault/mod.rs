//! The key vault: special tokens, envelope encryption, key sets and their provider keys.
//!
//! A key set is a tenant. Its provider keys are sealed with a random per-set data key (AES-256-GCM, AAD = set + key +
//! purpose + provider + target digest); the data key is wrapped under a key derived from the token, and that under a key
//! derived from the master key (see `crypto`), so the database plus the master key decrypt nothing without the
//! customer's token, and the master key rotates without tokens (`rotation`). Revocation deletes the wrapped data key
//! and every ciphertext, by token hash alone.

mod cache;
pub mod crypto;
pub mod input;
mod queries;
mod rotation;
pub mod scoped;
pub mod token;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tracing::Instrument;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::config::{Keyring, MasterKeyring};
use crypto::{AeadKey, BLOB_V1, CryptoError, Purpose, aad, blob_version, derive_kek};
pub use input::{
    CreateKeySetRequest, Invalid, KeySetChanges, KeyTarget, NewKeySet, Policy, Provider, UpdateKeySetRequest,
};
use input::{MAX_KEYS, ProviderKeySpec, check_policy_against_keys, invalid};
use queries::SealedKey;
pub use rotation::RotationReport;
pub use token::Token;
use token::{Peppers, TokenHash};

/// PostgreSQL NOTIFY channel carrying the id of each changed or revoked key set, so every replica drops what it cached.
const AT_REST_PURPOSE: &[u8] = b"reliablegpt/v1/at-rest";

pub const CHANGE_CHANNEL: &str = "reliablegpt_vault_changed";

/// PostgreSQL NOTIFY channel carrying rate-limit cooldowns (a target that answered 429), so every replica stops
/// sending to it, not only the one that saw the 429. The payload is the engine's; the vault only carries it.
pub const COOLDOWN_CHANNEL: &str = "reliablegpt_cooldowns";

#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// Missing, malformed, mutated, unknown or revoked token. Deliberately one variant: callers must not tell them apart.
    #[error("authentication failed")]
    Unauthenticated,
    #[error(transparent)]
    Invalid(#[from] Invalid),
    #[error("master key version v{0} is not in RELIABLEGPT_MASTER_KEY")]
    MasterKeyMissing(u32),
    #[error("stored key material failed to decrypt")]
    Crypto(#[from] CryptoError),
    #[error("database error")]
    Database(#[from] sqlx::Error),
    /// The database cannot be reached, or did not answer in time while the change listener knew it was gone.
    #[error("the database is unreachable")]
    Unavailable,
}

impl VaultError {
    /// The database is down or unreachable (answered `503` with `Retry-After`), rather than a request or data fault.
    pub fn is_unavailable(&self) -> bool {
        match self {
            VaultError::Unavailable => true,
            VaultError::Database(e) => crate::db::is_unreachable(e),
            _ => false,
        }
    }
}

/// How long a request's database work may take while the change listener knows the database is gone: enough for a
/// database that is back but the listener has not noticed yet, short enough that the caller gets its `503` at once.
const OUTAGE_DEADLINE: Duration = Duration::from_millis(500);

/// Pause between the change listener's attempts to get its connection back.
const RECONNECT_EVERY: Duration = Duration::from_secs(1);

/// The change listener has lost the database (`/readyz` reports it).
#[derive(Debug, Clone, Copy)]
pub struct DatabaseOutage {
    /// How long ago the listener lost its connection.
    pub lasted: Duration,
    /// How much longer cached key sets keep serving (zero: requests that need the database get `503`).
    pub grace_left: Duration,
}

/// Status of a provider key as the owner sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum KeyStatus {
    Active,
    Invalid,
    CoolingDown,
    /// The stored key cannot be decrypted, or failed its integrity check (its row was changed outside the service): it
    /// is never used. `last_error` says which; remove it and add it again.
    Error,
}

/// A provider key as shown to its owner: never the key itself.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct KeyView {
    pub id: Uuid,
    pub provider: Provider,
    /// At most the first 3 and last 4 characters.
    #[schema(example = "sk-...abcd")]
    pub masked: String,
    pub status: KeyStatus,
    pub last_error: Option<String>,
    pub last_used_at: Option<DateTime<Utc>>,
    #[serde(flatten)]
    pub target: KeyTarget,
}

/// A key set as shown to its owner (`GET /v1/keys`).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct KeySetView {
    pub key_set_id: Uuid,
    pub user_email: String,
    pub email_verified: bool,
    pub keys: Vec<KeyView>,
    pub policy: Policy,
}

/// The result of `POST /v1/keys`: the only time the token is ever shown.
#[derive(Serialize, ToSchema)]
pub struct CreatedKeySet {
    /// The special token. Shown once; we store only a keyed hash of it.
    #[schema(value_type = String, example = "rgpt_...")]
    #[serde(serialize_with = "expose_token")]
    pub token: Token,
    #[serde(flatten)]
    pub key_set: KeySetView,
}

fn expose_token<S: serde::Serializer>(token: &Token, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(token.expose())
}

/// An authenticated caller (its token's hash matched): the key set id and its unwrapped data key (zeroized on drop), or
/// why the data key could not be unwrapped: revoking and reading the key set need no data key.
#[derive(Debug)]
pub struct KeySetSession {
    pub key_set_id: Uuid,
    dek: Result<AeadKey, Locked>,
}

/// Why a session has no data key.
#[derive(Debug, Clone, Copy)]
enum Locked {
    MasterKeyMissing(u32),
    Crypto(CryptoError),
}

impl KeySetSession {
    fn dek(&self) -> Result<&AeadKey, VaultError> {
        match &self.dek {
            Ok(dek) => Ok(dek),
            Err(Locked::MasterKeyMissing(version)) => Err(VaultError::MasterKeyMissing(*version)),
            Err(Locked::Crypto(e)) => Err(VaultError::Crypto(*e)),
        }
    }
}

/// A decrypted provider key, for the engine's use while serving one request.
#[derive(Debug)]
pub struct ProviderKey {
    pub id: Uuid,
    pub provider: Provider,
    pub secret: SecretString,
    pub target: KeyTarget,
    /// Set while the key is marked invalid (after a credential error).
    pub invalid_since: Option<DateTime<Utc>>,
}

impl ProviderKey {
    /// A copy for a concurrent attempt (hedging); the secret stays in a zeroize-on-drop type.
    pub fn clone_for_attempt(&self) -> ProviderKey {
        ProviderKey {
            id: self.id,
            provider: self.provider,
            secret: SecretString::from(self.secret.expose_secret().to_owned()),
            target: self.target.clone(),
            invalid_since: self.invalid_since,
        }
    }
}

#[derive(Debug)]
pub struct OpenKeySet {
    pub key_set_id: Uuid,
    pub policy: Policy,
    pub keys: Vec<ProviderKey>,
    /// When this was read from the database.
    pub loaded_at: std::time::Instant,
    /// The engine's plans for this key set, built once while it stays open (a change reopens it).
    pub plans: crate::engine::plan::PlanMemo,
}

impl OpenKeySet {
    pub fn new(key_set_id: Uuid, policy: Policy, keys: Vec<ProviderKey>) -> Self {
        Self { key_set_id, policy, keys, loaded_at: std::time::Instant::now(), plans: Default::default() }
    }
}

#[derive(Clone)]
pub struct Vault {
    pool: PgPool,
    keyring: Arc<MasterKeyring>,
    peppers: Arc<Peppers>,
    cache: Arc<cache::KeySetCache>,
    /// Payloads heard on [`COOLDOWN_CHANNEL`], for the engine (other replicas' rate-limit cooldowns).
    cooldowns: tokio::sync::broadcast::Sender<String>,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault").field("keyring", &self.keyring).finish_non_exhaustive()
    }
}

impl Vault {
    pub fn new(pool: PgPool, keyring: Arc<MasterKeyring>, peppers: &Keyring) -> Self {
        Self::with_cache(pool, keyring, peppers, Duration::ZERO, Duration::ZERO)
    }

    /// A vault that keeps opened key sets in memory for `ttl` (zero disables the cache), and for `outage_grace` after
    /// the change listener lost the database (zero: not at all).
    pub fn with_cache(
        pool: PgPool,
        keyring: Arc<MasterKeyring>,
        peppers: &Keyring,
        ttl: Duration,
        outage_grace: Duration,
    ) -> Self {
        let peppers = Arc::new(Peppers::new(peppers));
        let (cooldowns, _) = tokio::sync::broadcast::channel(1024);
        Self { pool, keyring, peppers, cache: Arc::new(cache::KeySetCache::new(ttl, outage_grace)), cooldowns }
    }

    /// The request path: the token's key set with its provider keys decrypted, from memory when fresh. Concurrent
    /// misses on one token share one database read.
    pub async fn open_for_request(&self, token_text: &str) -> Result<Arc<OpenKeySet>, VaultError> {
        let token = Token::parse(token_text).map_err(|_| VaultError::Unauthenticated)?;
        let (_, hash) = self.peppers.active(&token);
        let opened = {
            let (token, hash) = (&token, &hash);
            self.cache
                // The database read is boxed: inline, its future would be moved with every request's, cache hit or not.
                .get_or_load(hash.0, || Box::pin(self.read_key_set(token, hash)))
                .await?
        };
        let now = Instant::now();
        if self.cache.refresh_may_be_due(&opened, now)
            && let Some(flight) = self.cache.refresh_flight(&hash.0, now)
        {
            let vault = self.clone();
            tokio::spawn(
                async move {
                    let result = vault.read_key_set(&token, &hash).await.map(Arc::new);
                    if let Err(e) = &result {
                        tracing::debug!(error = %e, "background refresh of a key set failed");
                    }
                    flight.land(&result);
                }
                .in_current_span(),
            );
        }
        Ok(opened)
    }

    /// One database read of the key set `token` opens (see [`Self::while_reachable`]).
    ///
    /// The common case (hash under the active pepper, format 2 under the active master key) is two queries on one
    /// connection: one pool check instead of three, and the policy comes with the token's row. Anything else takes
    /// [`Self::unlock`]'s path, which moves the set to the active pepper, master key and format.
    async fn read_key_set(&self, token: &Token, hash: &TokenHash) -> Result<OpenKeySet, VaultError> {
        self.while_reachable(async move {
            // Taken before the reads: a key mark made after this instant is newer than what we read.
            let loaded_at = std::time::Instant::now();
            let mut conn = self.pool.acquire().await?;
            let found = queries::find_for_opening(&mut *conn, &hash.0).await?;
            let current = |row: &queries::KeySetSecretRow| {
                row.format == 2 && row.master_key_version == version_i32(self.keyring.active().0)
            };
            match found {
                Some(found) if current(&found.secret) => {
                    if let Ok(dek) = self.unwrap_dek(&found.secret, token) {
                        let id = found.secret.id;
                        let rows = queries::ciphertexts(&mut *conn, id).await?;
                        drop(conn);
                        return Ok(open_rows(&dek, id, found.policy.0, rows, loaded_at));
                    }
                }
                None if self.peppers.older(token).is_empty() => return Err(VaultError::Unauthenticated),
                _ => {}
            }
            drop(conn);
            let session = self.unlock(token, hash).await?;
            self.open_key_set(&session).await
        })
        .await
    }

    /// Runs a request's database work. While the change listener knows the database is gone, the work gets
    /// [`OUTAGE_DEADLINE`] (work already waiting when the loss is noticed too), so the caller gets `503` at once
    /// instead of waiting out the pool's acquire timeout. Connection failures become [`VaultError::Unavailable`].
    async fn while_reachable<T>(&self, work: impl Future<Output = Result<T, VaultError>>) -> Result<T, VaultError> {
        let as_unavailable = |e: VaultError| if e.is_unavailable() { VaultError::Unavailable } else { e };
        let mut outage = self.cache.watch_outage();
        let mut work = std::pin::pin!(work);
        if outage.borrow_and_update().is_none() {
            tokio::select! {
                result = &mut work => return result.map_err(as_unavailable),
                _ = outage.wait_for(Option::is_some) => {}
            }
        }
        tokio::time::timeout(OUTAGE_DEADLINE, work)
            .await
            .unwrap_or(Err(VaultError::Unavailable))
            .map_err(as_unavailable)
    }

    /// While the change listener has lost the database: since when, and how long cached key sets keep serving.
    pub fn database_outage(&self) -> Option<DatabaseOutage> {
        let (since, until) = self.cache.outage()?;
        let now = Instant::now();
        Some(DatabaseOutage { lasted: now.duration_since(since), grace_left: until.saturating_duration_since(now) })
    }

    /// Seals data the service keeps for itself (queued mail) under a key derived from the active master key; returns the
    /// master key version to store with it.
    pub fn seal_at_rest(&self, record_id: Uuid, plaintext: &[u8]) -> (i32, Vec<u8>) {
        let (version, master) = self.keyring.active();
        let key = AeadKey::derived(master.expose(), AT_REST_PURPOSE);
        let blob = key.seal(plaintext, &aad(Purpose::Outbox, Uuid::nil(), record_id));
        (i32::try_from(version).unwrap_or(i32::MAX), blob)
    }

    pub fn open_at_rest(
        &self,
        record_id: Uuid,
        version: i32,
        blob: &[u8],
    ) -> Result<zeroize::Zeroizing<Vec<u8>>, VaultError> {
        let version = u32::try_from(version).map_err(|_| VaultError::Crypto(CryptoError::Forged))?;
        let master = self.keyring.get(version).ok_or(VaultError::MasterKeyMissing(version))?;
        let key = AeadKey::derived(master.expose(), AT_REST_PURPOSE);
        Ok(key.open(blob, &aad(Purpose::Outbox, Uuid::nil(), record_id))?)
    }

    /// A key set's policy without its token (scoped tokens), or `None` once it is revoked.
    pub async fn policy(&self, key_set_id: Uuid) -> Result<Option<Policy>, VaultError> {
        self.while_reachable(async { Ok(queries::policy(&self.pool, key_set_id).await?) }).await
    }

    /// Drops cached key sets past their TTL, so decrypted keys leave memory even when nobody asks for them again.
    pub fn sweep_cache(&self) {
        self.cache.sweep();
    }

    /// Evicts key sets from this replica's cache when any replica changes or revokes them. Returns once listening (so
    /// no change is missed after start); the task runs until the process ends. When its connection is lost, cached key
    /// sets keep serving for the outage grace (nobody can revoke a token meanwhile), and once it reconnects the whole
    /// cache is dropped (notifications may have been missed).
    pub async fn start_change_listener(&self) -> Result<tokio::task::JoinHandle<()>, VaultError> {
        let listener = self.listen_for_changes().await?;
        Ok(tokio::spawn(self.clone().follow_changes(listener)))
    }

    async fn listen_for_changes(&self) -> Result<PgListener, sqlx::Error> {
        let mut listener = PgListener::connect_with(&self.pool).await?;
        // `recv()` reconnects behind the caller's back; without eager reconnection `try_recv()` reports every loss.
        listener.eager_reconnect(false);
        listener.listen_all([CHANGE_CHANNEL, COOLDOWN_CHANNEL]).await?;
        Ok(listener)
    }

    async fn follow_changes(self, mut listener: PgListener) {
        loop {
            let reason = loop {
                match listener.try_recv().await {
                    Ok(Some(note)) if note.channel() == COOLDOWN_CHANNEL => {
                        // Nobody listening (no engine) is fine.
                        let _ = self.cooldowns.send(note.payload().to_owned());
                    }
                    Ok(Some(note)) => match note.payload().parse::<Uuid>() {
                        Ok(id) => self.cache.evict_key_set(id),
                        Err(_) => self.cache.clear(),
                    },
                    Ok(None) => break "connection lost".to_owned(),
                    Err(e) => break e.to_string(),
                }
            };
            // A fresh listener below, never a silent reconnect of this one.
            drop(listener);
            let lost_at = Instant::now();
            let kept = self.cache.begin_outage(lost_at);
            tracing::warn!(%reason, kept, "vault change listener lost the database; cached key sets serve for the grace");
            let mut first = true;
            listener = loop {
                if !first {
                    tokio::time::sleep(RECONNECT_EVERY).await;
                }
                first = false;
                match self.listen_for_changes().await {
                    Ok(listener) => break listener,
                    Err(e) => tracing::debug!(error = %e, "vault change listener cannot reconnect yet"),
                }
            };
            self.cache.end_outage();
            tracing::info!(
                outage_ms = u64::try_from(lost_at.elapsed().as_millis()).unwrap_or(u64::MAX),
                "vault change listener reconnected; cached key sets dropped (changes may have been missed)"
            );
        }
    }

    pub async fn create_key_set(&self, new: NewKeySet) -> Result<CreatedKeySet, VaultError> {
        let key_set_id = Uuid::new_v4();
        let token = Token::generate();
        let dek = AeadKey::random();
        let (version, master) = self.keyring.active();
        let wrapped = crypto::wrap_two_layers(&dek, token.expose().as_bytes(), master.expose(), version, key_set_id);
        let (pepper_version, token_hash) = self.peppers.active(&token);

        let mut tx = self.pool.begin().await?;
        let row = queries::NewKeySetRow {
            id: key_set_id,
            token_hash: &token_hash.0,
            pepper_version: version_i32(pepper_version),
            wrapped_dek: &wrapped,
            master_key_version: version_i32(version),
            user_email: new.user_email.as_str(),
            policy: &new.policy,
        };
        queries::insert_key_set(&mut tx, row).await?;
        queries::insert_keys(&mut tx, key_set_id, 0, seal_keys(&dek, key_set_id, new.keys)).await?;
        let key_set = describe_in(&mut tx, key_set_id).await?.ok_or(VaultError::Unauthenticated)?;
        tx.commit().await?;
        tracing::info!(%key_set_id, keys = key_set.keys.len(), "key set created");
        Ok(CreatedKeySet { token, key_set })
    }

    /// Checks a bearer token (shape and checksum first, with no database access) and unwraps the key set's data key.
    /// A token hashed under an older pepper is re-hashed under the active one; a data key under an older master key
    /// version is re-wrapped under the active one; a format-1 key set is upgraded to format 2. The session is returned
    /// even when the data key cannot be unwrapped (revoking needs only the token's hash).
    pub async fn authenticate(&self, token_text: &str) -> Result<KeySetSession, VaultError> {
        let token = Token::parse(token_text).map_err(|_| VaultError::Unauthenticated)?;
        let (_, token_hash) = self.peppers.active(&token);
        self.while_reachable(self.unlock(&token, &token_hash)).await
    }

    async fn unlock(&self, token: &Token, token_hash: &TokenHash) -> Result<KeySetSession, VaultError> {
        let row = self.find_token(token, token_hash).await?;
        let dek = self.unwrap_dek(&row, token);
        match &dek {
            Ok(dek) if row.format == 1 => self.upgrade(row.id, token, dek).await?,
            Ok(_) => self.rewrap_if_old(&row).await?,
            Err(locked) => {
                tracing::error!(key_set_id = %row.id, reason = ?locked, "a key set's data key cannot be unwrapped")
            }
        }
        Ok(KeySetSession { key_set_id: row.id, dek })
    }

    /// One indexed query under the active pepper; only on a miss, one more for the older peppers' hashes (then the
    /// row moves to the active pepper).
    async fn find_token(&self, token: &Token, token_hash: &TokenHash) -> Result<queries::KeySetSecretRow, VaultError> {
        if let Some(row) = queries::find_by_token_hash(&self.pool, &token_hash.0).await? {
            return Ok(row);
        }
        let older = self.peppers.older(token);
        if older.is_empty() {
            return Err(VaultError::Unauthenticated);
        }
        let hashes: Vec<Vec<u8>> = older.iter().map(|(_, h)| h.0.to_vec()).collect();
        let mut row = queries::find_by_any_token_hash(&self.pool, &hashes).await?.ok_or(VaultError::Unauthenticated)?;
        let (active_version, _) = self.peppers.active(token);
        if queries::rehash_token(&self.pool, row.id, &row.token_hash, &token_hash.0, version_i32(active_version))
            .await?
        {
            tracing::info!(key_set_id = %row.id, to = active_version, "token re-hashed under the active pepper");
        }
        row.token_hash = token_hash.0.to_vec();
        Ok(row)
    }

    fn unwrap_dek(&self, row: &queries::KeySetSecretRow, token: &Token) -> Result<AeadKey, Locked> {
        let version = u32::try_from(row.master_key_version).map_err(|_| Locked::Crypto(CryptoError::Forged))?;
        let master = self.keyring.get(version).ok_or(Locked::MasterKeyMissing(version))?;
        let token = token.expose().as_bytes();
        let dek = match row.format {
            1 => AeadKey::unwrap(&row.wrapped_dek, &derive_kek(master.expose(), token, row.id), row.id),
            2 => crypto::unwrap_two_layers(&row.wrapped_dek, token, master.expose(), version, row.id),
            _ => Err(CryptoError::Forged),
        };
        dek.map_err(Locked::Crypto)
    }

    /// Format 2 under an older master key version: moves the outer layer to the active version.
    async fn rewrap_if_old(&self, row: &queries::KeySetSecretRow) -> Result<(), VaultError> {
        let (active_version, active) = self.keyring.active();
        let Ok(version) = u32::try_from(row.master_key_version) else { return Ok(()) };
        let Some(old) = self.keyring.get(version).filter(|_| version != active_version) else { return Ok(()) };
        let rewrapped =
            crypto::rewrap_outer(&row.wrapped_dek, row.id, (version, old.expose()), (active_version, active.expose()))?;
        if queries::rewrap(&self.pool, row.id, row.master_key_version, version_i32(active_version), &rewrapped).await? {
            tracing::info!(key_set_id = %row.id, from = version, to = active_version, "data key re-wrapped");
        }
        Ok(())
    }

    /// Format 1 → 2, once, while the token is at hand: the data key in two layers under the active master key, and
    /// every provider key re-sealed with its current provider and target bound. A key that fails to open is left as it
    /// is: format 2 refuses it, so it shows as an error and is never used.
    async fn upgrade(&self, id: Uuid, token: &Token, dek: &AeadKey) -> Result<(), VaultError> {
        let mut tx = self.pool.begin().await?;
        if queries::lock_format(&mut tx, id).await? != Some(1) {
            return Ok(());
        }
        let mut ids = Vec::new();
        let mut resealed = Vec::new();
        for row in queries::ciphertexts(&mut *tx, id).await? {
            if blob_version(&row.ciphertext) != Some(BLOB_V1) {
                continue;
            }
            match dek.open(&row.ciphertext, &aad(Purpose::ProviderKey, id, row.id)) {
                Ok(plain) => {
                    ids.push(row.id);
                    let digest = row.target.0.digest();
                    resealed.push(crypto::seal_provider_key(dek, &plain, id, row.id, &row.provider, &digest));
                }
                Err(_) => {
                    tracing::error!(key_set_id = %id, key_id = %row.id, "a stored provider key failed to decrypt")
                }
            }
        }
        queries::reseal_keys(&mut tx, id, &ids, &resealed).await?;
        let (version, master) = self.keyring.active();
        let wrapped = crypto::wrap_two_layers(dek, token.expose().as_bytes(), master.expose(), version, id);
        queries::set_two_layer_wrap(&mut tx, id, &wrapped, version_i32(version)).await?;
        tx.commit().await?;
        tracing::info!(key_set_id = %id, keys = ids.len(), master_key_version = version, "key set upgraded to format 2");
        Ok(())
    }

    /// The key set as its owner sees it; a key that cannot be decrypted, or fails its integrity check, shows as `error`.
    pub async fn describe(&self, session: &KeySetSession) -> Result<KeySetView, VaultError> {
        let mut conn = self.pool.acquire().await?;
        let mut view = describe_in(&mut conn, session.key_set_id).await?.ok_or(VaultError::Unauthenticated)?;
        let unusable: Vec<(Uuid, &str)> = match session.dek() {
            Ok(dek) => queries::ciphertexts(&mut *conn, session.key_set_id)
                .await?
                .iter()
                .filter(|row| open_provider_key(dek, session.key_set_id, row).is_err())
                .map(|row| (row.id, "the stored key failed its integrity check; it is not used"))
                .collect(),
            Err(_) => view.keys.iter().map(|k| (k.id, "the key set's data key cannot be unwrapped")).collect(),
        };
        for key in view.keys.iter_mut() {
            if let Some((_, reason)) = unusable.iter().find(|(id, _)| *id == key.id) {
                key.status = KeyStatus::Error;
                key.last_error = Some((*reason).to_owned());
            }
        }
        Ok(view)
    }

    /// Applies a PATCH atomically: on any violation nothing changes.
    pub async fn update(&self, session: &KeySetSession, changes: KeySetChanges) -> Result<KeySetView, VaultError> {
        let id = session.key_set_id;
        let mut tx = self.pool.begin().await?;
        let current = queries::key_set(&mut *tx, id, true).await?.ok_or(VaultError::Unauthenticated)?;
        let existing = queries::provider_keys(&mut *tx, id).await?;
        let existing_ids: Vec<Uuid> = existing.iter().map(|k| k.id).collect();

        for (i, key_id) in changes.remove_keys.iter().enumerate() {
            if !existing_ids.contains(key_id) {
                return Err(invalid(format!("remove_keys[{i}]"), "is not a key of this key set").into());
            }
        }
        let removed: HashSet<Uuid> = changes.remove_keys.iter().copied().collect();
        for (i, key_id) in changes.revive_keys.iter().enumerate() {
            if !existing_ids.contains(key_id) || removed.contains(key_id) {
                return Err(invalid(format!("revive_keys[{i}]"), "is not a remaining key of this key set").into());
            }
        }
        let remaining: Vec<Uuid> = existing_ids.iter().copied().filter(|k| !removed.contains(k)).collect();
        let ordered = match &changes.order {
            None => remaining.clone(),
            Some(order) => {
                let same_set = order.len() == remaining.len() && order.iter().all(|k| remaining.contains(k));
                if !same_set {
                    return Err(invalid("order", "must list every remaining key id exactly once").into());
                }
                order.clone()
            }
        };
        let total = ordered.len() + changes.add_keys.len();
        if total == 0 || total > MAX_KEYS {
            return Err(invalid("keys", format!("a key set must keep between 1 and {MAX_KEYS} keys")).into());
        }

        let policy = changes.policy.clone().unwrap_or(current.policy.0);
        let final_targets = existing
            .iter()
            .filter(|k| !removed.contains(&k.id))
            .map(|k| &k.target.0)
            .chain(changes.add_keys.iter().map(|k| &k.target));
        check_policy_against_keys(&policy, final_targets)?;

        if !changes.remove_keys.is_empty() {
            queries::delete_keys(&mut tx, id, &changes.remove_keys).await?;
        }
        queries::set_positions(&mut tx, id, &ordered).await?;
        if !changes.add_keys.is_empty() {
            let first = i32::try_from(ordered.len()).unwrap_or(i32::MAX);
            queries::insert_keys(&mut tx, id, first, seal_keys(session.dek()?, id, changes.add_keys)).await?;
        }
        if !changes.revive_keys.is_empty() {
            queries::revive_keys(&mut tx, id, &changes.revive_keys).await?;
        }
        let (email, verified) = match &changes.user_email {
            Some(e) if e.as_str() != current.user_email => (e.as_str().to_owned(), false),
            _ => (current.user_email, current.email_verified),
        };
        queries::update_key_set(&mut tx, id, &email, verified, &policy).await?;
        let view = describe_in(&mut tx, id).await?.ok_or(VaultError::Unauthenticated)?;
        queries::notify_change(&mut tx, id).await?;
        tx.commit().await?;
        self.cache.evict_key_set(id);
        tracing::info!(key_set_id = %id, "key set updated");
        Ok(view)
    }

    /// Crypto-shredding: the wrapped data key and every ciphertext are deleted; the token stops working at once. Needs
    /// only the token's hash (the session), not the data key: it works when the master key version is gone.
    pub async fn revoke(&self, session: &KeySetSession) -> Result<(), VaultError> {
        let mut tx = self.pool.begin().await?;
        let deleted = queries::delete_key_set(&mut tx, session.key_set_id).await?;
        tx.commit().await?;
        self.cache.evict_key_set(session.key_set_id);
        if !deleted {
            return Err(VaultError::Unauthenticated);
        }
        tracing::info!(key_set_id = %session.key_set_id, "key set revoked");
        Ok(())
    }

    /// Decrypts every provider key of the set (for the engine, while it serves a request carrying the token).
    pub async fn open_key_set(&self, session: &KeySetSession) -> Result<OpenKeySet, VaultError> {
        let id = session.key_set_id;
        // Taken before the reads: a key mark made after this instant is newer than what we read.
        let loaded_at = std::time::Instant::now();
        let policy = queries::key_set(&self.pool, id, false).await?.ok_or(VaultError::Unauthenticated)?.policy.0;
        let dek = session.dek()?;
        let rows = queries::ciphertexts(&self.pool, id).await?;
        Ok(open_rows(dek, id, policy, rows, loaded_at))
    }

    /// Takes a key out of rotation after a genuine credential error; `reason` is shown to the owner.
    /// Every replica then reloads the set and skips the key.
    pub async fn mark_key_invalid(&self, key_set_id: Uuid, key_id: Uuid, reason: &str) -> Result<bool, VaultError> {
        let marked = self.write_key_invalid(key_set_id, key_id, reason).await?;
        if marked {
            self.announce_change(key_set_id).await?;
        }
        Ok(marked)
    }

    /// [`Self::mark_key_invalid`] without telling anyone: the caller notes the moment the mark is stored (see
    /// `KeyHealth::stored`), then calls [`Self::announce_change`] when this returns true.
    pub async fn write_key_invalid(&self, key_set_id: Uuid, key_id: Uuid, reason: &str) -> Result<bool, VaultError> {
        Ok(queries::mark_key_invalid(&self.pool, key_set_id, key_id, reason).await?)
    }

    /// Puts a key that answered again back into rotation, on every replica.
    pub async fn mark_key_active(&self, key_set_id: Uuid, key_id: Uuid) -> Result<(), VaultError> {
        queries::mark_key_active(&self.pool, key_set_id, key_id).await?;
        self.announce_change(key_set_id).await
    }

    /// After a key's stored status changed: drops this replica's copy at once and tells the others. Only after a
    /// successful write, so a failed one (the database is down) leaves warm sets serving.
    pub async fn announce_change(&self, key_set_id: Uuid) -> Result<(), VaultError> {
        self.cache.evict_key_set(key_set_id);
        let mut conn = self.pool.acquire().await?;
        Ok(queries::notify_change(&mut conn, key_set_id).await?)
    }

    pub async fn touch_keys(&self, used: &[(Uuid, DateTime<Utc>)]) -> Result<(), VaultError> {
        let (ids, at): (Vec<Uuid>, Vec<DateTime<Utc>>) = used.iter().copied().unzip();
        Ok(queries::touch_keys(&self.pool, &ids, &at).await?)
    }

    pub async fn set_cooldown(&self, key_id: Uuid, until: Option<DateTime<Utc>>) -> Result<(), VaultError> {
        Ok(queries::set_cooldown(&self.pool, key_id, until).await?)
    }

    /// Tells every replica (this one included) about a cooldown: `payload` arrives on [`Vault::cooldown_notes`].
    pub async fn announce_cooldown(&self, payload: &str) -> Result<(), VaultError> {
        Ok(queries::notify(&self.pool, COOLDOWN_CHANNEL, payload).await?)
    }

    /// Cooldowns announced by any replica, as their payloads.
    pub fn cooldown_notes(&self) -> tokio::sync::broadcast::Receiver<String> {
        self.cooldowns.subscribe()
    }

    /// Records that provider key `key_id` created stored response `response_id` (ids only, never content), so calls
    /// about it and follow-ups go to the account that holds it. The one write on a request's path: it must land before
    /// the client can name the response in its next request (possibly on another replica).
    pub async fn record_response_key(
        &self,
        key_set_id: Uuid,
        response_id: &str,
        key_id: Uuid,
    ) -> Result<(), VaultError> {
        self.while_reachable(async {
            Ok(queries::record_response_key(&self.pool, key_set_id, response_id, key_id).await?)
        })
        .await
    }

    /// Which key created `response_id`: `None` when unknown to this key set, `Some(None)` when that key was removed.
    pub async fn response_key(&self, key_set_id: Uuid, response_id: &str) -> Result<Option<Option<Uuid>>, VaultError> {
        self.while_reachable(async { Ok(queries::response_key(&self.pool, key_set_id, response_id).await?) }).await
    }

    /// Forgets which key created responses older than `kept` (providers keep stored responses 30 days by default).
    pub async fn prune_response_keys(&self, kept: Duration) -> Result<u64, VaultError> {
        let before = Utc::now() - chrono::Duration::from_std(kept).unwrap_or(chrono::Duration::MAX);
        Ok(queries::prune_response_keys(&self.pool, before).await?)
    }

    /// Forgets a response its upstream deleted.
    pub async fn forget_response(&self, key_set_id: Uuid, response_id: &str) -> Result<(), VaultError> {
        self.while_reachable(async { Ok(queries::forget_response(&self.pool, key_set_id, response_id).await?) }).await
    }

    /// A key set's provider keys as `(id, provider, masked key)`, for alert digests (which carry key ids, never keys).
    pub async fn masked_keys(&self, key_set_id: Uuid) -> Result<Vec<(Uuid, String, String)>, VaultError> {
        Ok(queries::masked_keys(&self.pool, key_set_id).await?)
    }

    /// The key set's `user_email` and whether it confirmed a verification link; `None` once revoked.
    pub async fn contact(&self, key_set_id: Uuid) -> Result<Option<(String, bool)>, VaultError> {
        Ok(queries::contact(&self.pool, key_set_id).await?)
    }

    /// Records that `email` confirmed a verification link, if it is still the key set's `user_email`.
    pub async fn mark_email_verified(&self, key_set_id: Uuid, email: &str) -> Result<bool, VaultError> {
        Ok(queries::mark_email_verified(&self.pool, key_set_id, email).await?)
    }

    /// Per master key version: `(version, two-layer key sets, one-layer key sets)`. A version with none left can be
    /// removed from the keyring; `rotate-master-key` moves the two-layer ones.
    pub async fn master_key_usage(&self) -> Result<Vec<(u32, u64, u64)>, VaultError> {
        let n = |n: i64| u64::try_from(n).unwrap_or(0);
        Ok(queries::master_key_usage(&self.pool)
            .await?
            .into_iter()
            .map(|(v, two, one)| (u32::try_from(v).unwrap_or(0), n(two), n(one)))
            .collect())
    }

    /// Tokens per pepper version: `(version, key sets)`. A version with none left can be removed.
    pub async fn pepper_usage(&self) -> Result<Vec<(u32, u64)>, VaultError> {
        Ok(queries::pepper_usage(&self.pool)
            .await?
            .into_iter()
            .map(|(v, n)| (u32::try_from(v).unwrap_or(0), u64::try_from(n).unwrap_or(0)))
            .collect())
    }
}

fn version_i32(version: u32) -> i32 {
    i32::try_from(version).unwrap_or(i32::MAX)
}

/// Opens one stored provider key of a format-2 key set (which every session's key set is: `unlock` upgrades older ones).
/// The set's provider keys decrypted; a key whose provider or target was changed outside the service fails its
/// integrity check here and is never sent anywhere.
fn open_rows(
    dek: &AeadKey,
    id: Uuid,
    policy: Policy,
    rows: Vec<queries::CiphertextRow>,
    loaded_at: std::time::Instant,
) -> OpenKeySet {
    let mut keys = Vec::with_capacity(rows.len());
    for row in rows {
        let Ok((provider, secret)) = open_provider_key(dek, id, &row) else {
            tracing::error!(key_set_id = %id, key_id = %row.id, "a stored provider key failed its integrity check; not used");
            continue;
        };
        keys.push(ProviderKey { id: row.id, provider, secret, target: row.target.0, invalid_since: row.invalid_since });
    }
    let mut opened = OpenKeySet::new(id, policy, keys);
    opened.loaded_at = loaded_at;
    opened
}

fn open_provider_key(
    dek: &AeadKey,
    key_set_id: Uuid,
    row: &queries::CiphertextRow,
) -> Result<(Provider, SecretString), CryptoError> {
    let digest = row.target.0.digest();
    let plain = crypto::open_provider_key(dek, &row.ciphertext, key_set_id, row.id, &row.provider, &digest, false)?;
    let provider = Provider::parse(&row.provider).ok_or(CryptoError::Forged)?;
    let secret = std::str::from_utf8(&plain).map_err(|_| CryptoError::Forged)?;
    Ok((provider, SecretString::from(secret.to_owned())))
}

fn seal_keys(dek: &AeadKey, key_set_id: Uuid, keys: Vec<ProviderKeySpec>) -> Vec<SealedKey> {
    keys.into_iter()
        .map(|key| {
            let id = Uuid::new_v4();
            let (provider, digest) = (key.provider.as_str(), key.target.digest());
            SealedKey {
                id,
                provider,
                ciphertext: crypto::seal_provider_key(
                    dek,
                    key.secret.expose_secret().as_bytes(),
                    key_set_id,
                    id,
                    provider,
                    &digest,
                ),
                masked: key.masked(),
                target: key.target,
            }
        })
        .collect()
}

async fn describe_in(conn: &mut sqlx::PgConnection, id: Uuid) -> Result<Option<KeySetView>, VaultError> {
    let Some(set) = queries::key_set(&mut *conn, id, false).await? else {
        return Ok(None);
    };
    let keys = queries::provider_keys(&mut *conn, id)
        .await?
        .into_iter()
        .map(|row| KeyView {
            id: row.id,
            provider: Provider::parse(&row.provider).unwrap_or(Provider::Openai),
            masked: row.masked,
            status: match (row.status.as_str(), row.cooling_down) {
                ("invalid", _) => KeyStatus::Invalid,
                (_, true) => KeyStatus::CoolingDown,
                _ => KeyStatus::Active,
            },
            last_error: row.last_error,
            last_used_at: row.last_used_at,
            target: row.target.0,
        })
        .collect();
    Ok(Some(KeySetView {
        key_set_id: id,
        user_email: set.user_email,
        email_verified: set.email_verified,
        keys,
        policy: set.policy.0,
    }))
}
