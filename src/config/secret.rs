//! The master keyring and the token peppers: versioned 256-bit secrets whose `Debug` never shows them.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use secrecy::{ExposeSecret, SecretBox};

use super::{ConfigError, malformed};

/// A 256-bit secret. `Debug` never shows the bytes.
pub struct Secret32(SecretBox<[u8; 32]>);

impl Secret32 {
    pub fn new(bytes: [u8; 32]) -> Self {
        Self(SecretBox::new(Box::new(bytes)))
    }

    pub fn random() -> Self {
        let mut bytes = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
        Self::new(bytes)
    }

    pub fn expose(&self) -> &[u8; 32] {
        self.0.expose_secret()
    }

    pub(super) fn parse_base64(name: &'static str, text: &str) -> Result<Self, ConfigError> {
        let decoded =
            zeroize::Zeroizing::new(BASE64.decode(text.trim()).map_err(|_| malformed(name, "not valid base64"))?);
        let bytes: [u8; 32] = decoded
            .as_slice()
            .try_into()
            .map_err(|_| malformed(name, format!("must decode to 32 bytes, got {}", decoded.len())))?;
        Ok(Self::new(bytes))
    }

    pub fn to_base64(&self) -> String {
        BASE64.encode(self.expose())
    }
}

impl fmt::Debug for Secret32 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret32([REDACTED])")
    }
}

/// Versioned 256-bit secrets (the master keys, the token peppers). The highest version is the active one, wherever it
/// is listed; older ones only read what was written under them until it is moved to the active one.
pub struct Keyring {
    /// Sorted by version, highest first.
    keys: Vec<(u32, Secret32)>,
}

/// The master keyring (`RELIABLEGPT_MASTER_KEY`).
pub type MasterKeyring = Keyring;

impl Keyring {
    /// Parses `BASE64` (version 1) or `v1:BASE64,v2:BASE64,...` for the variable `name`.
    pub fn parse(name: &'static str, text: &str) -> Result<Self, ConfigError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(ConfigError::Missing(name));
        }
        let mut keys: Vec<(u32, Secret32)> = Vec::new();
        if !text.contains(':') {
            keys.push((1, Secret32::parse_base64(name, text)?));
        } else {
            for entry in text.split(',') {
                let (version, key) = entry
                    .trim()
                    .split_once(':')
                    .ok_or_else(|| malformed(name, "expected entries of the form vN:BASE64"))?;
                let version: u32 = version
                    .strip_prefix('v')
                    .and_then(|n| n.parse().ok())
                    .filter(|n| *n > 0)
                    .ok_or_else(|| malformed(name, "each entry must start with a version like v1:"))?;
                if keys.iter().any(|(v, _)| *v == version) {
                    return Err(malformed(name, format!("version v{version} appears twice")));
                }
                keys.push((version, Secret32::parse_base64(name, key)?));
            }
        }
        Ok(Self::sorted(keys))
    }

    pub fn from_keys(keys: Vec<(u32, Secret32)>) -> Option<Self> {
        if keys.is_empty() { None } else { Some(Self::sorted(keys)) }
    }

    fn sorted(mut keys: Vec<(u32, Secret32)>) -> Self {
        keys.sort_by_key(|(version, _)| std::cmp::Reverse(*version));
        Self { keys }
    }

    /// The highest version: what new data is written under.
    pub fn active(&self) -> (u32, &Secret32) {
        // `parse`/`from_keys` guarantee at least one entry.
        let (version, key) = &self.keys[0];
        (*version, key)
    }

    pub fn get(&self, version: u32) -> Option<&Secret32> {
        self.keys.iter().find(|(v, _)| *v == version).map(|(_, k)| k)
    }

    /// Every version, highest (active) first.
    pub fn versions(&self) -> Vec<u32> {
        self.keys.iter().map(|(v, _)| *v).collect()
    }

    /// Every `(version, key)`, highest (active) first.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &Secret32)> {
        self.keys.iter().map(|(v, k)| (*v, k))
    }
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring").field("versions", &self.versions()).field("keys", &"[REDACTED]").finish()
    }
}
