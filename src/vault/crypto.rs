//! The vault's cryptographic core: AES-256-GCM sealing with versioned blobs, and the key derivations that bind a key
//! set's data key to both the master key and the customer's token.
//!
//! Blob layout: `version || nonce (12 bytes) || ciphertext || tag (16 bytes)`. Version 1 authenticates the caller's AAD
//! as given; version 2 (written since) authenticates `version || AAD`, so a blob cannot be relabelled as another
//! format. Both still read.
//!
//! Data keys, format 2 (two layers): the data key is sealed under a key derived from the token alone (inner), and that
//! blob is sealed again under a key derived from one master key version (outer). A database dump plus the master key
//! still opens nothing without the token, and rotating the master key re-seals only the outer layer, without any token.
//! Format 1 (older rows): one layer under HKDF(master key, token); upgraded when its token next authenticates.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use hkdf::Hkdf;
use rand::RngCore;
use secrecy::{ExposeSecret, SecretBox};
use sha2::Sha256;
use uuid::Uuid;
use zeroize::Zeroizing;

pub const BLOB_V1: u8 = 1;
/// The version byte is part of the authenticated data.
pub const BLOB_V2: u8 = 2;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    #[error("sealed blob is too short")]
    Truncated,
    #[error("sealed blob has unknown version {0}")]
    UnknownVersion(u8),
    #[error("sealed blob failed authentication")]
    Forged,
}

/// What a sealed blob is for. Part of the AAD, so a blob cannot be replayed in another role.
#[derive(Debug, Clone, Copy)]
pub enum Purpose {
    DataKey,
    ProviderKey,
    CacheQuestion,
    CacheResponse,
    /// Queued mail (alerts' outbox).
    Outbox,
    /// The outer layer of a format-2 wrapped data key (under a master key version).
    MasterWrap,
}

impl Purpose {
    fn label(self) -> &'static [u8] {
        match self {
            Self::DataKey => b"data-key",
            Self::ProviderKey => b"provider-key",
            Self::CacheQuestion => b"cache-question",
            Self::CacheResponse => b"cache-response",
            Self::Outbox => b"outbox",
            Self::MasterWrap => b"master-wrap",
        }
    }
}

/// Associated data binding a blob to its key set, its record and its purpose: a blob copied to another row fails to open.
pub fn aad(purpose: Purpose, key_set_id: Uuid, record_id: Uuid) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(b"reliablegpt/v1/");
    out.extend_from_slice(purpose.label());
    out.push(0);
    out.extend_from_slice(key_set_id.as_bytes());
    out.extend_from_slice(record_id.as_bytes());
    out
}

/// [`aad`] plus a scope string (a cache entry's customer instance): a blob moved to another instance fails to open.
pub fn scoped_aad(purpose: Purpose, key_set_id: Uuid, record_id: Uuid, scope: &str) -> Vec<u8> {
    let mut out = aad(purpose, key_set_id, record_id);
    out.extend_from_slice(scope.as_bytes());
    out
}

/// A 256-bit AES key (a key set's data key, or a key-encryption key). Zeroized on drop, redacted in `Debug`.
pub struct AeadKey(SecretBox<[u8; 32]>);

impl AeadKey {
    pub fn random() -> Self {
        let mut bytes = Box::new([0u8; 32]);
        rand::rngs::OsRng.fill_bytes(bytes.as_mut());
        Self(SecretBox::new(bytes))
    }

    fn from_bytes(bytes: &[u8; 32]) -> Self {
        Self(SecretBox::new(Box::new(*bytes)))
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new(self.0.expose_secret().into())
    }

    /// Seals with a fresh random nonce. 2^32 seals per key keep the nonce collision risk negligible; a data key seals at
    /// most a few dozen provider keys in its life.
    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        self.seal_with_nonce(BLOB_V2, &nonce, plaintext, aad)
    }

    fn seal_with_nonce(&self, version: u8, nonce: &[u8; NONCE_LEN], plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + NONCE_LEN + plaintext.len() + TAG_LEN);
        out.push(version);
        out.extend_from_slice(nonce);
        let aad = versioned_aad(version, aad);
        // Encryption with a valid key and in-memory buffers cannot fail; an empty body would only make `open` fail loudly.
        let sealed =
            self.cipher().encrypt(Nonce::from_slice(nonce), Payload { msg: plaintext, aad: &aad }).unwrap_or_default();
        out.extend_from_slice(&sealed);
        out
    }

    /// Opens a blob of either version.
    pub fn open(&self, blob: &[u8], aad: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let (&version, rest) = blob.split_first().ok_or(CryptoError::Truncated)?;
        if version != BLOB_V1 && version != BLOB_V2 {
            return Err(CryptoError::UnknownVersion(version));
        }
        if rest.len() < NONCE_LEN + TAG_LEN {
            return Err(CryptoError::Truncated);
        }
        let (nonce, body) = rest.split_at(NONCE_LEN);
        let aad = versioned_aad(version, aad);
        self.cipher()
            .decrypt(Nonce::from_slice(nonce), Payload { msg: body, aad: &aad })
            .map(Zeroizing::new)
            .map_err(|_| CryptoError::Forged)
    }

    /// Wraps (seals) this key under a key-encryption key (one layer: format 1, and the inner layer of format 2).
    pub fn wrap(&self, kek: &AeadKey, key_set_id: Uuid) -> Vec<u8> {
        kek.seal(self.0.expose_secret(), &aad(Purpose::DataKey, key_set_id, key_set_id))
    }

    pub fn unwrap(wrapped: &[u8], kek: &AeadKey, key_set_id: Uuid) -> Result<Self, CryptoError> {
        let plain = kek.open(wrapped, &aad(Purpose::DataKey, key_set_id, key_set_id))?;
        let bytes: &[u8; 32] = plain.as_slice().try_into().map_err(|_| CryptoError::Forged)?;
        Ok(Self::from_bytes(bytes))
    }
}

impl std::fmt::Debug for AeadKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AeadKey([REDACTED])")
    }
}

fn versioned_aad(version: u8, aad: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    if version == BLOB_V1 {
        return aad.into();
    }
    let mut out = Vec::with_capacity(1 + aad.len());
    out.push(version);
    out.extend_from_slice(aad);
    out.into()
}

/// The format (version byte) of a sealed blob.
pub fn blob_version(blob: &[u8]) -> Option<u8> {
    blob.first().copied()
}

/// Seals a provider key under its key set's data key, bound to its key set, record, provider and routing target
/// (`target_digest`, see `KeyTarget::digest`): a row pointed at another provider or host no longer opens.
pub fn seal_provider_key(
    dek: &AeadKey,
    secret: &[u8],
    key_set_id: Uuid,
    key_id: Uuid,
    provider: &str,
    target_digest: &[u8; 32],
) -> Vec<u8> {
    dek.seal(secret, &provider_key_aad(key_set_id, key_id, provider, target_digest))
}

/// Opens a provider key sealed by [`seal_provider_key`]; a version-1 blob (bound to key set and record only) opens
/// only when `legacy_allowed` (a key set not yet upgraded), so an old blob replayed into an upgraded set is refused.
pub fn open_provider_key(
    dek: &AeadKey,
    blob: &[u8],
    key_set_id: Uuid,
    key_id: Uuid,
    provider: &str,
    target_digest: &[u8; 32],
    legacy_allowed: bool,
) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    match blob_version(blob) {
        Some(BLOB_V1) if legacy_allowed => dek.open(blob, &aad(Purpose::ProviderKey, key_set_id, key_id)),
        Some(BLOB_V1) => Err(CryptoError::Forged),
        _ => dek.open(blob, &provider_key_aad(key_set_id, key_id, provider, target_digest)),
    }
}

fn provider_key_aad(key_set_id: Uuid, key_id: Uuid, provider: &str, target_digest: &[u8; 32]) -> Vec<u8> {
    let mut out = aad(Purpose::ProviderKey, key_set_id, key_id);
    out.extend_from_slice(provider.as_bytes());
    out.push(0);
    out.extend_from_slice(target_digest);
    out
}

/// Format-2 inner key-encryption key: from the token alone (256 random bits, so HKDF needs no salt). The master key
/// comes in through the outer layer.
fn token_kek(token: &[u8], key_set_id: Uuid) -> AeadKey {
    expand_key(token, b"reliablegpt/v2/token-kek", key_set_id)
}

/// Format-2 outer key: from one master key version, per key set.
fn master_kek(master_key: &[u8; 32], key_set_id: Uuid) -> AeadKey {
    expand_key(master_key, b"reliablegpt/v2/master-kek", key_set_id)
}

fn expand_key(ikm: &[u8], label: &[u8], key_set_id: Uuid) -> AeadKey {
    let hk = Hkdf::<Sha256>::new(None, ikm);
    let mut info = Vec::with_capacity(label.len() + 16);
    info.extend_from_slice(label);
    info.extend_from_slice(key_set_id.as_bytes());
    let mut okm = Zeroizing::new([0u8; 32]);
    // 32 bytes is far below HKDF-SHA256's 8160-byte limit, so expand cannot fail.
    let _ = hk.expand(&info, okm.as_mut());
    AeadKey::from_bytes(&okm)
}

fn outer_aad(key_set_id: Uuid, master_version: u32) -> Vec<u8> {
    let mut out = aad(Purpose::MasterWrap, key_set_id, key_set_id);
    out.extend_from_slice(&master_version.to_be_bytes());
    out
}

/// Format 2: the data key under the token (inner), then under master key `master_version` (outer).
pub fn wrap_two_layers(
    dek: &AeadKey,
    token: &[u8],
    master_key: &[u8; 32],
    master_version: u32,
    key_set_id: Uuid,
) -> Vec<u8> {
    let inner = dek.wrap(&token_kek(token, key_set_id), key_set_id);
    seal_outer(&inner, master_key, master_version, key_set_id)
}

pub fn unwrap_two_layers(
    wrapped: &[u8],
    token: &[u8],
    master_key: &[u8; 32],
    master_version: u32,
    key_set_id: Uuid,
) -> Result<AeadKey, CryptoError> {
    let inner = open_outer(wrapped, master_key, master_version, key_set_id)?;
    AeadKey::unwrap(&inner, &token_kek(token, key_set_id), key_set_id)
}

/// Moves a format-2 wrapped data key to another master key version without the token: only the outer layer changes.
pub fn rewrap_outer(
    wrapped: &[u8],
    key_set_id: Uuid,
    from: (u32, &[u8; 32]),
    to: (u32, &[u8; 32]),
) -> Result<Vec<u8>, CryptoError> {
    let inner = open_outer(wrapped, from.1, from.0, key_set_id)?;
    Ok(seal_outer(&inner, to.1, to.0, key_set_id))
}

fn seal_outer(inner: &[u8], master_key: &[u8; 32], master_version: u32, key_set_id: Uuid) -> Vec<u8> {
    master_kek(master_key, key_set_id).seal(inner, &outer_aad(key_set_id, master_version))
}

fn open_outer(
    wrapped: &[u8],
    master_key: &[u8; 32],
    master_version: u32,
    key_set_id: Uuid,
) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    master_kek(master_key, key_set_id).open(wrapped, &outer_aad(key_set_id, master_version))
}

/// Format 1 (older rows): the key-encryption key for one key set, HKDF-SHA256 with the token as salt and the master
/// key as input keying material. Neither alone (a database dump plus the master key, or a stolen token) yields it.
pub fn derive_kek(master_key: &[u8; 32], token: &[u8], key_set_id: Uuid) -> AeadKey {
    let hk = Hkdf::<Sha256>::new(Some(token), master_key);
    let mut info = Vec::with_capacity(48);
    info.extend_from_slice(b"reliablegpt/v1/kek");
    info.extend_from_slice(key_set_id.as_bytes());
    let mut okm = Zeroizing::new([0u8; 32]);
    // 32 bytes is far below HKDF-SHA256's 8160-byte limit, so expand cannot fail.
    let _ = hk.expand(&info, okm.as_mut());
    AeadKey::from_bytes(&okm)
}

/// A key set's cache keys: one seals cached texts, one keys the lookup hashes. Derived from the master key alone (not
/// the token): scoped JWTs read the cache without the special token. Revocation deletes the rows themselves.
pub struct CacheKeys {
    pub seal: AeadKey,
    pub mac: SecretBox<[u8; 32]>,
}

impl std::fmt::Debug for CacheKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CacheKeys([REDACTED])")
    }
}

pub fn derive_cache_keys(master_key: &[u8; 32], key_set_id: Uuid) -> CacheKeys {
    let hk = Hkdf::<Sha256>::new(None, master_key);
    let expand = |label: &[u8]| {
        let mut info = Vec::with_capacity(48);
        info.extend_from_slice(label);
        info.extend_from_slice(key_set_id.as_bytes());
        let mut okm = Zeroizing::new([0u8; 32]);
        // 32 bytes is far below HKDF-SHA256's 8160-byte limit, so expand cannot fail.
        let _ = hk.expand(&info, okm.as_mut());
        okm
    };
    let seal = expand(b"reliablegpt/v1/cache-seal");
    let mac = expand(b"reliablegpt/v1/cache-mac");
    CacheKeys { seal: AeadKey::from_bytes(&seal), mac: SecretBox::new(Box::new(*mac)) }
}

impl AeadKey {
    /// A key derived from the master key for one purpose (data the service keeps for itself, e.g. queued mail).
    pub fn derived(master_key: &[u8; 32], purpose: &[u8]) -> Self {
        Self::from_bytes(&derive_purpose_key(master_key, purpose))
    }
}

/// A key derived from the master key for one purpose (e.g. signing scoped JWTs).
pub fn derive_purpose_key(master_key: &[u8; 32], purpose: &[u8]) -> Zeroizing<[u8; 32]> {
    let hk = Hkdf::<Sha256>::new(None, master_key);
    let mut okm = Zeroizing::new([0u8; 32]);
    let _ = hk.expand(purpose, okm.as_mut());
    okm
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    fn key_of(s: &str) -> AeadKey {
        AeadKey::from_bytes(&hex(s).try_into().unwrap())
    }

    /// NIST SP 800-38D / GCM specification test cases 13–16 (AES-256).
    #[test]
    fn known_answer_vectors() {
        let k2 = "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308";
        let p = "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a721c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39";
        let c = "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662";
        let cases = [
            (
                "00".repeat(32),
                "00".repeat(12),
                String::new(),
                String::new(),
                String::new(),
                "530f8afbc74536b9a963b4f1c4cb738b",
            ),
            (
                "00".repeat(32),
                "00".repeat(12),
                "00".repeat(16),
                String::new(),
                "cea7403d4d606b6e074ec5d3baf39d18".into(),
                "d0d1c8a799996bf0265b98b5d48ab919",
            ),
            (
                k2.into(),
                "cafebabefacedbaddecaf888".into(),
                format!("{p}1aafd255"),
                String::new(),
                format!("{c}898015ad"),
                "b094dac5d93471bdec1a502270e3cc6c",
            ),
            (
                k2.into(),
                "cafebabefacedbaddecaf888".into(),
                p.into(),
                "feedfacedeadbeeffeedfacedeadbeefabaddad2".into(),
                c.into(),
                "76fc6ece0f4e1768cddf8853bb2d551b",
            ),
        ];
        for (key, nonce, plain, aad, cipher, tag) in cases {
            let key = key_of(&key);
            let nonce: [u8; 12] = hex(&nonce).try_into().unwrap();
            let blob = key.seal_with_nonce(BLOB_V1, &nonce, &hex(&plain), &hex(&aad));
            let mut expected = vec![BLOB_V1];
            expected.extend(nonce);
            expected.extend(hex(&cipher));
            expected.extend(hex(tag));
            assert_eq!(blob, expected);
            assert_eq!(key.open(&blob, &hex(&aad)).unwrap().as_slice(), hex(&plain).as_slice());
        }
    }

    #[test]
    fn sealed_bytes_differ_from_plaintext_and_between_seals() {
        let key = AeadKey::random();
        let plain = b"sk-canary-0123456789abcdef0123456789";
        let a = key.seal(plain, b"aad");
        let b = key.seal(plain, b"aad");
        assert_ne!(a, b, "two seals of one plaintext must differ (random nonce)");
        assert!(!a.windows(plain.len()).any(|w| w == plain));
        assert_eq!(key.open(&a, b"aad").unwrap().as_slice(), plain);
        assert_eq!(key.open(&b, b"aad").unwrap().as_slice(), plain);
    }

    #[test]
    fn every_flipped_byte_fails() {
        let key = AeadKey::random();
        let blob = key.seal(b"provider key material", b"aad");
        for i in 0..blob.len() {
            for bit in [0x01u8, 0x80] {
                let mut tampered = blob.clone();
                tampered[i] ^= bit;
                assert!(key.open(&tampered, b"aad").is_err(), "flip at byte {i} bit {bit:#x} went unnoticed");
            }
        }
    }

    #[test]
    fn blob_moved_to_another_record_or_purpose_fails() {
        let key = AeadKey::random();
        let (set_a, set_b, key_1, key_2) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let blob = key.seal(b"secret", &aad(Purpose::ProviderKey, set_a, key_1));
        assert!(key.open(&blob, &aad(Purpose::ProviderKey, set_a, key_1)).is_ok());
        assert_eq!(key.open(&blob, &aad(Purpose::ProviderKey, set_b, key_1)).unwrap_err(), CryptoError::Forged);
        assert_eq!(key.open(&blob, &aad(Purpose::ProviderKey, set_a, key_2)).unwrap_err(), CryptoError::Forged);
        assert_eq!(key.open(&blob, &aad(Purpose::DataKey, set_a, key_1)).unwrap_err(), CryptoError::Forged);
    }

    #[test]
    fn short_and_garbage_blobs_error_without_panicking() {
        let key = AeadKey::random();
        assert_eq!(key.open(&[], b"").unwrap_err(), CryptoError::Truncated);
        assert_eq!(key.open(&[BLOB_V1], b"").unwrap_err(), CryptoError::Truncated);
        assert_eq!(key.open(&[BLOB_V1; 28], b"").unwrap_err(), CryptoError::Truncated);
        assert_eq!(key.open(&[BLOB_V1; 29], b"").unwrap_err(), CryptoError::Forged);
        assert_eq!(key.open(&[9u8; 64], b"").unwrap_err(), CryptoError::UnknownVersion(9));
        let mut x: u64 = 0x9e3779b97f4a7c15;
        for len in 0..200 {
            let garbage: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            assert!(key.open(&garbage, b"").is_err());
            assert!(AeadKey::unwrap(&garbage, &key, Uuid::nil()).is_err());
        }
    }

    #[test]
    fn kek_needs_both_master_key_and_token() {
        let set = Uuid::new_v4();
        let master = [7u8; 32];
        let dek = AeadKey::random();
        let wrapped = dek.wrap(&derive_kek(&master, b"rgpt_token_a", set), set);
        let reopened = AeadKey::unwrap(&wrapped, &derive_kek(&master, b"rgpt_token_a", set), set).unwrap();
        assert_eq!(reopened.0.expose_secret(), dek.0.expose_secret());
        for kek in [
            derive_kek(&master, b"rgpt_token_b", set),
            derive_kek(&master, b"", set),
            derive_kek(&[8u8; 32], b"rgpt_token_a", set),
            derive_kek(&master, b"rgpt_token_a", Uuid::new_v4()),
        ] {
            assert!(AeadKey::unwrap(&wrapped, &kek, set).is_err());
        }
    }

    #[test]
    fn cache_keys_are_per_key_set_and_master_key() {
        let set = Uuid::new_v4();
        let keys = derive_cache_keys(&[7u8; 32], set);
        let blob = keys.seal.seal(b"cached answer", &scoped_aad(Purpose::CacheResponse, set, set, "default"));
        let same = derive_cache_keys(&[7u8; 32], set);
        assert_eq!(same.mac.expose_secret(), keys.mac.expose_secret());
        assert_ne!(keys.mac.expose_secret(), &[0u8; 32]);
        let aad = scoped_aad(Purpose::CacheResponse, set, set, "default");
        assert_eq!(same.seal.open(&blob, &aad).unwrap().as_slice(), b"cached answer");
        // Another instance, purpose, key set or master key cannot open it.
        assert!(same.seal.open(&blob, &scoped_aad(Purpose::CacheResponse, set, set, "other")).is_err());
        assert!(same.seal.open(&blob, &scoped_aad(Purpose::CacheQuestion, set, set, "default")).is_err());
        assert!(derive_cache_keys(&[7u8; 32], Uuid::new_v4()).seal.open(&blob, &aad).is_err());
        assert!(derive_cache_keys(&[8u8; 32], set).seal.open(&blob, &aad).is_err());
        assert_eq!(format!("{keys:?}"), "CacheKeys([REDACTED])");
    }

    #[test]
    fn a_version_2_blob_relabelled_as_version_1_fails() {
        let key = AeadKey::random();
        let mut blob = key.seal(b"secret", b"aad");
        assert_eq!(blob_version(&blob), Some(BLOB_V2));
        blob[0] = BLOB_V1;
        assert_eq!(key.open(&blob, b"aad").unwrap_err(), CryptoError::Forged);
        // Version 1 blobs (older rows) still open.
        let old = key.seal_with_nonce(BLOB_V1, &[3u8; 12], b"secret", b"aad");
        assert_eq!(key.open(&old, b"aad").unwrap().as_slice(), b"secret");
    }

    #[test]
    fn a_provider_key_is_bound_to_its_provider_and_target() {
        let dek = AeadKey::random();
        let (set, id) = (Uuid::new_v4(), Uuid::new_v4());
        let (target, other) = ([1u8; 32], [2u8; 32]);
        let blob = seal_provider_key(&dek, b"sk-1", set, id, "openai", &target);
        let open =
            |blob: &[u8], provider, digest, legacy| open_provider_key(&dek, blob, set, id, provider, digest, legacy);
        assert_eq!(open(&blob, "openai", &target, false).unwrap().as_slice(), b"sk-1");
        assert_eq!(open(&blob, "openai", &other, false).unwrap_err(), CryptoError::Forged);
        assert_eq!(open(&blob, "azure", &target, false).unwrap_err(), CryptoError::Forged);
        assert!(open_provider_key(&dek, &blob, set, Uuid::new_v4(), "openai", &target, false).is_err());

        // A format-1 blob (bound to set and record only) opens only while its key set is not upgraded.
        let legacy = dek.seal_with_nonce(BLOB_V1, &[5u8; 12], b"sk-1", &aad(Purpose::ProviderKey, set, id));
        assert_eq!(open(&legacy, "openai", &other, true).unwrap().as_slice(), b"sk-1");
        assert_eq!(open(&legacy, "openai", &target, false).unwrap_err(), CryptoError::Forged);
    }

    #[test]
    fn two_layers_need_token_and_master_key_and_rotate_without_the_token() {
        let set = Uuid::new_v4();
        let (v1, v2) = ([1u8; 32], [2u8; 32]);
        let dek = AeadKey::random();
        let wrapped = wrap_two_layers(&dek, b"rgpt_token_a", &v1, 1, set);
        let back = unwrap_two_layers(&wrapped, b"rgpt_token_a", &v1, 1, set).unwrap();
        assert_eq!(back.0.expose_secret(), dek.0.expose_secret());
        assert!(unwrap_two_layers(&wrapped, b"rgpt_token_b", &v1, 1, set).is_err());
        assert!(unwrap_two_layers(&wrapped, b"rgpt_token_a", &v2, 1, set).is_err());
        assert!(unwrap_two_layers(&wrapped, b"rgpt_token_a", &v1, 2, set).is_err(), "version is bound");
        assert!(unwrap_two_layers(&wrapped, b"rgpt_token_a", &v1, 1, Uuid::new_v4()).is_err());

        // Rotation: no token involved; afterwards only the new master key version opens it.
        let rotated = rewrap_outer(&wrapped, set, (1, &v1), (2, &v2)).unwrap();
        let back = unwrap_two_layers(&rotated, b"rgpt_token_a", &v2, 2, set).unwrap();
        assert_eq!(back.0.expose_secret(), dek.0.expose_secret());
        assert!(unwrap_two_layers(&rotated, b"rgpt_token_a", &v1, 1, set).is_err());
        assert!(rewrap_outer(&wrapped, set, (1, &v2), (2, &v2)).is_err(), "wrong old master key");
        // The outer layer alone (master key, no token) is not the data key.
        let inner = open_outer(&rotated, &v2, 2, set).unwrap();
        assert!(!inner.windows(32).any(|w| w == dek.0.expose_secret()));
    }

    #[test]
    fn debug_is_redacted() {
        assert_eq!(format!("{:?}", key_of(&"ab".repeat(32))), "AeadKey([REDACTED])");
    }

    use proptest::collection::vec;
    use proptest::prelude::{Strategy as _, any, prop_oneof};

    /// How a stored blob may have been damaged.
    #[derive(Debug, Clone)]
    enum Damage {
        Truncate(usize),
        Flip(usize, u8),
        Append(Vec<u8>),
        Version(u8),
    }

    fn damage() -> impl proptest::prelude::Strategy<Value = Damage> {
        prop_oneof![
            any::<usize>().prop_map(Damage::Truncate),
            (any::<usize>(), 0u8..8).prop_map(|(i, bit)| Damage::Flip(i, 1 << bit)),
            vec(any::<u8>(), 1..20).prop_map(Damage::Append),
            any::<u8>().prop_map(Damage::Version),
        ]
    }

    /// The damaged blob, or `None` when this damage would leave it unchanged.
    fn damaged(blob: &[u8], how: &Damage) -> Option<Vec<u8>> {
        let mut out = blob.to_vec();
        match how {
            Damage::Truncate(n) => out.truncate(n % blob.len()),
            Damage::Flip(i, bit) => out[i % blob.len()] ^= bit,
            Damage::Append(extra) => out.extend_from_slice(extra),
            Damage::Version(v) => out[0] = *v,
        }
        (out != blob).then_some(out)
    }

    fn uuid(bytes: [u8; 16]) -> Uuid {
        Uuid::from_bytes(bytes)
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

        /// Arbitrary bytes never panic and never open, as a blob, a wrapped data key of either format or a provider key.
        #[test]
        fn blob_open_prop_arbitrary_bytes(
            key in any::<[u8; 32]>(),
            blob in prop_oneof![
                vec(any::<u8>(), 0..80),
                (1u8..=2, vec(any::<u8>(), 0..80)).prop_map(|(v, rest)| [vec![v], rest].concat()),
            ],
            aad in vec(any::<u8>(), 0..40),
            ids in any::<([u8; 16], [u8; 16])>(),
            legacy in any::<bool>(),
        ) {
            let kek = AeadKey::from_bytes(&key);
            let (set, id) = (uuid(ids.0), uuid(ids.1));
            proptest::prop_assert!(kek.open(&blob, &aad).is_err());
            proptest::prop_assert!(AeadKey::unwrap(&blob, &kek, set).is_err());
            proptest::prop_assert!(unwrap_two_layers(&blob, &aad, &key, 1, set).is_err());
            proptest::prop_assert!(open_provider_key(&kek, &blob, set, id, "openai", &key, legacy).is_err());
            if let Some(&version) = blob.first()
                && version != BLOB_V1
                && version != BLOB_V2
            {
                proptest::prop_assert_eq!(kek.open(&blob, &aad).unwrap_err(), CryptoError::UnknownVersion(version));
            }
        }

        /// A real blob of each version opens as sealed; any truncation, bit flip, appended byte, changed version
        /// byte or other AAD makes it fail.
        #[test]
        fn blob_open_prop_damaged_blobs_never_open(
            key in any::<[u8; 32]>(),
            nonce in any::<[u8; 12]>(),
            plain in vec(any::<u8>(), 0..64),
            aad in vec(any::<u8>(), 0..40),
            other_aad in vec(any::<u8>(), 0..40),
            v1 in any::<bool>(),
            how in damage(),
        ) {
            let key = AeadKey::from_bytes(&key);
            let blob = if v1 { key.seal_with_nonce(BLOB_V1, &nonce, &plain, &aad) } else { key.seal(&plain, &aad) };
            proptest::prop_assert_eq!(key.open(&blob, &aad).map(|p| p.to_vec()), Ok(plain.clone()));
            if other_aad != aad {
                proptest::prop_assert_eq!(key.open(&blob, &other_aad).unwrap_err(), CryptoError::Forged);
            }
            if let Some(bad) = damaged(&blob, &how) {
                proptest::prop_assert!(key.open(&bad, &aad).is_err(), "{:?} opened", how);
            }
        }

    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(500))]

        /// Format 2 (two layers) and provider keys: damaged blobs, or the wrong token, master key version, key set,
        /// record, provider or target never open.
        #[test]
        fn blob_open_prop_wrapped_keys_and_provider_keys(
            master in any::<[u8; 32]>(),
            token in vec(any::<u8>(), 1..60),
            other_token in vec(any::<u8>(), 1..60),
            version in 1u32..5,
            ids in any::<([u8; 16], [u8; 16], [u8; 16])>(),
            target in any::<[u8; 32]>(),
            secret in vec(any::<u8>(), 1..64),
            how in damage(),
        ) {
            let (set, id, other_id) = (uuid(ids.0), uuid(ids.1), uuid(ids.2));
            let dek = AeadKey::random();
            let wrapped = wrap_two_layers(&dek, &token, &master, version, set);
            let back = unwrap_two_layers(&wrapped, &token, &master, version, set);
            proptest::prop_assert!(back.is_ok_and(|k| k.0.expose_secret() == dek.0.expose_secret()));
            if let Some(bad) = damaged(&wrapped, &how) {
                proptest::prop_assert!(unwrap_two_layers(&bad, &token, &master, version, set).is_err());
                proptest::prop_assert!(rewrap_outer(&bad, set, (version, &master), (version + 1, &master)).is_err());
            }
            if other_token != token {
                proptest::prop_assert!(unwrap_two_layers(&wrapped, &other_token, &master, version, set).is_err());
            }
            proptest::prop_assert!(unwrap_two_layers(&wrapped, &token, &master, version + 1, set).is_err());
            if other_id != set {
                proptest::prop_assert!(unwrap_two_layers(&wrapped, &token, &master, version, other_id).is_err());
            }

            let blob = seal_provider_key(&dek, &secret, set, id, "azure", &target);
            let opened = open_provider_key(&dek, &blob, set, id, "azure", &target, false);
            proptest::prop_assert_eq!(opened.map(|p| p.to_vec()), Ok(secret.clone()));
            if let Some(bad) = damaged(&blob, &how) {
                proptest::prop_assert!(open_provider_key(&dek, &bad, set, id, "azure", &target, true).is_err());
            }
            let mut moved = target;
            moved[0] ^= 1;
            proptest::prop_assert!(open_provider_key(&dek, &blob, set, id, "azure", &moved, true).is_err());
            proptest::prop_assert!(open_provider_key(&dek, &blob, set, id, "openai", &target, true).is_err());
            if other_id != id {
                proptest::prop_assert!(open_provider_key(&dek, &blob, set, other_id, "azure", &target, true).is_err());
            }
            // A format-1 blob of the same key is refused once the key set is upgraded.
            let legacy = dek.seal_with_nonce(BLOB_V1, &[0; 12], &secret, &aad(Purpose::ProviderKey, set, id));
            proptest::prop_assert!(open_provider_key(&dek, &legacy, set, id, "azure", &target, true).is_ok());
            proptest::prop_assert_eq!(
                open_provider_key(&dek, &legacy, set, id, "azure", &target, false).unwrap_err(),
                CryptoError::Forged
            );
        }
    }
}
