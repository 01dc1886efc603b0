//! Typed settings, read once at start from the environment and an optional TOML file (the environment wins).
//!
//! Secrets have no defaults: a missing or malformed secret stops the service with a one-line reason.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use secrecy::{ExposeSecret, SecretBox, SecretString};

use crate::egress::{EgressPolicy, HostPattern};

/// Names of the environment variables. They are a contract with tooling outside the code.
pub mod env {
    pub const DATABASE_URL: &str = "DATABASE_URL";
    pub const LISTEN: &str = "RELIABLEGPT_LISTEN";
    pub const MASTER_KEY: &str = "RELIABLEGPT_MASTER_KEY";
    pub const TOKEN_PEPPER: &str = "RELIABLEGPT_TOKEN_PEPPER";
    pub const ALLOWED_UPSTREAM_HOSTS: &str = "RELIABLEGPT_ALLOWED_UPSTREAM_HOSTS";
    pub const ALLOW_PRIVATE_UPSTREAMS: &str = "RELIABLEGPT_ALLOW_PRIVATE_UPSTREAMS";
    pub const DB_MAX_CONNECTIONS: &str = "RELIABLEGPT_DB_MAX_CONNECTIONS";
    pub const KEY_SETS_PER_MINUTE: &str = "RELIABLEGPT_KEY_SETS_PER_MINUTE";
    pub const AUTH_FAILURES_PER_MINUTE: &str = "RELIABLEGPT_AUTH_FAILURES_PER_MINUTE";
}

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_ALLOWED_UPSTREAM_HOSTS: &str = "api.openai.com,*.openai.azure.com";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0} is not set")]
    Missing(&'static str),
    #[error("{name} is malformed: {reason}")]
    Malformed { name: &'static str, reason: String },
    #[error("cannot read config file {path}: {reason}")]
    File { path: String, reason: String },
}

fn malformed(name: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Malformed { name, reason: reason.into() }
}

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

    fn parse_base64(name: &'static str, text: &str) -> Result<Self, ConfigError> {
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

/// Master keys by version. The last entry is the active one; older ones only unwrap data keys until they are re-wrapped.
pub struct MasterKeyring {
    keys: Vec<(u32, Secret32)>,
}

impl MasterKeyring {
    /// Parses `BASE64` (version 1) or `v1:BASE64,v2:BASE64,...`.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let name = env::MASTER_KEY;
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
        Ok(Self { keys })
    }

    pub fn from_keys(keys: Vec<(u32, Secret32)>) -> Option<Self> {
        if keys.is_empty() { None } else { Some(Self { keys }) }
    }

    /// The key new data keys are wrapped under.
    pub fn active(&self) -> (u32, &Secret32) {
        // `parse`/`from_keys` guarantee at least one entry.
        let (version, key) = &self.keys[self.keys.len() - 1];
        (*version, key)
    }

    pub fn get(&self, version: u32) -> Option<&Secret32> {
        self.keys.iter().find(|(v, _)| *v == version).map(|(_, k)| k)
    }

    pub fn versions(&self) -> Vec<u32> {
        self.keys.iter().map(|(v, _)| *v).collect()
    }
}

impl fmt::Debug for MasterKeyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MasterKeyring").field("versions", &self.versions()).field("keys", &"[REDACTED]").finish()
    }
}

/// Per-client-IP abuse limits.
#[derive(Debug, Clone, Copy)]
pub struct AbuseLimits {
    /// `POST /v1/keys` per client IP per minute (burst of the same size).
    pub key_sets_per_minute: u32,
    /// Failed authentications per client IP per minute before further attempts get 429.
    pub auth_failures_per_minute: u32,
}

impl Default for AbuseLimits {
    fn default() -> Self {
        Self { key_sets_per_minute: 20, auth_failures_per_minute: 30 }
    }
}

#[derive(Debug)]
pub struct Settings {
    pub database_url: SecretString,
    pub listen: String,
    pub master_keys: MasterKeyring,
    pub token_pepper: Secret32,
    pub egress: EgressPolicy,
    pub db_max_connections: u32,
    pub limits: AbuseLimits,
}

impl Settings {
    /// Reads the process environment, layered over the TOML file if one is given.
    pub fn load(config_file: Option<&Path>) -> Result<Self, ConfigError> {
        let file =
            match config_file {
                Some(path) => Some(std::fs::read_to_string(path).map_err(|e| ConfigError::File {
                    path: path.display().to_string(),
                    reason: e.kind().to_string(),
                })?),
                None => None,
            };
        Self::from_sources(file.as_deref(), |name| std::env::var(name).ok())
    }

    /// Builds settings from TOML text (keys are the variable names in lower case without the `RELIABLEGPT_` prefix, e.g.
    /// `master_key`, `database_url`) and an environment lookup, which wins.
    pub fn from_sources(toml_text: Option<&str>, env: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let file = match toml_text {
            Some(text) => parse_toml(text)?,
            None => HashMap::new(),
        };
        let get = |name: &'static str| -> Option<String> { env(name).or_else(|| file.get(&file_key(name)).cloned()) };

        let database_url =
            get(env::DATABASE_URL).filter(|s| !s.trim().is_empty()).ok_or(ConfigError::Missing(env::DATABASE_URL))?;
        let master_keys = MasterKeyring::parse(&get(env::MASTER_KEY).ok_or(ConfigError::Missing(env::MASTER_KEY))?)?;
        let pepper_text =
            get(env::TOKEN_PEPPER).filter(|s| !s.trim().is_empty()).ok_or(ConfigError::Missing(env::TOKEN_PEPPER))?;
        let token_pepper = Secret32::parse_base64(env::TOKEN_PEPPER, &pepper_text)?;

        let listen = get(env::LISTEN).unwrap_or_else(|| DEFAULT_LISTEN.to_owned());
        if listen.parse::<SocketAddr>().is_err() && !listen.contains(':') {
            return Err(malformed(env::LISTEN, "expected host:port"));
        }

        let hosts_text = get(env::ALLOWED_UPSTREAM_HOSTS).unwrap_or_else(|| DEFAULT_ALLOWED_UPSTREAM_HOSTS.to_owned());
        let allowed_hosts = hosts_text
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| HostPattern::parse(s).map_err(|reason| malformed(env::ALLOWED_UPSTREAM_HOSTS, reason)))
            .collect::<Result<Vec<_>, _>>()?;
        let allow_private = match get(env::ALLOW_PRIVATE_UPSTREAMS) {
            None => false,
            Some(v) => parse_bool(env::ALLOW_PRIVATE_UPSTREAMS, &v)?,
        };

        let defaults = AbuseLimits::default();
        Ok(Self {
            database_url: SecretString::from(database_url),
            listen,
            master_keys,
            token_pepper,
            egress: EgressPolicy::new(allowed_hosts, allow_private),
            db_max_connections: parse_number(env::DB_MAX_CONNECTIONS, get(env::DB_MAX_CONNECTIONS), 16)?,
            limits: AbuseLimits {
                key_sets_per_minute: parse_number(
                    env::KEY_SETS_PER_MINUTE,
                    get(env::KEY_SETS_PER_MINUTE),
                    defaults.key_sets_per_minute,
                )?,
                auth_failures_per_minute: parse_number(
                    env::AUTH_FAILURES_PER_MINUTE,
                    get(env::AUTH_FAILURES_PER_MINUTE),
                    defaults.auth_failures_per_minute,
                )?,
            },
        })
    }
}

fn file_key(env_name: &str) -> String {
    env_name.trim_start_matches("RELIABLEGPT_").to_ascii_lowercase()
}

fn parse_toml(text: &str) -> Result<HashMap<String, String>, ConfigError> {
    let file_error = |reason: String| ConfigError::File { path: "--config".into(), reason };
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| file_error(e.message().to_owned()))?;
    let known: Vec<String> = [
        env::DATABASE_URL,
        env::LISTEN,
        env::MASTER_KEY,
        env::TOKEN_PEPPER,
        env::ALLOWED_UPSTREAM_HOSTS,
        env::ALLOW_PRIVATE_UPSTREAMS,
        env::DB_MAX_CONNECTIONS,
        env::KEY_SETS_PER_MINUTE,
        env::AUTH_FAILURES_PER_MINUTE,
    ]
    .iter()
    .map(|n| file_key(n))
    .collect();
    let mut out = HashMap::new();
    for (key, value) in table {
        if !known.contains(&key) {
            return Err(file_error(format!("unknown setting `{key}`")));
        }
        let text = match value {
            toml::Value::String(s) => s,
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            toml::Value::Array(items) => items
                .iter()
                .map(|v| v.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| file_error(format!("`{key}` must be a list of strings")))?
                .join(","),
            _ => return Err(file_error(format!("`{key}` has an unsupported type"))),
        };
        out.insert(key, text);
    }
    Ok(out)
}

fn parse_bool(name: &'static str, value: &str) -> Result<bool, ConfigError> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" | "" => Ok(false),
        _ => Err(malformed(name, "expected true or false")),
    }
}

fn parse_number(name: &'static str, value: Option<String>, default: u32) -> Result<u32, ConfigError> {
    match value {
        None => Ok(default),
        Some(v) => v
            .trim()
            .parse::<u32>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| malformed(name, "expected a positive integer")),
    }
}

/// `export` lines with a freshly generated master key and token pepper (for `reliablegpt secrets`).
pub fn generate_secrets() -> String {
    format!(
        "export {}=v1:{}\nexport {}={}\n",
        env::MASTER_KEY,
        Secret32::random().to_base64(),
        env::TOKEN_PEPPER,
        Secret32::random().to_base64()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> String {
        BASE64.encode([byte; 32])
    }

    fn env_of(pairs: &[(&str, String)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
        move |name| map.get(name).cloned()
    }

    fn minimal() -> Vec<(&'static str, String)> {
        vec![
            (env::DATABASE_URL, "postgres://u:p@localhost/db".into()),
            (env::MASTER_KEY, key(1)),
            (env::TOKEN_PEPPER, key(2)),
        ]
    }

    #[test]
    fn minimal_environment_gives_documented_defaults() {
        let s = Settings::from_sources(None, env_of(&minimal())).unwrap();
        assert_eq!(s.listen, "127.0.0.1:8080");
        assert_eq!(s.master_keys.versions(), vec![1]);
        assert!(!s.egress.allow_private());
        assert!(s.egress.host_allowed("api.openai.com"));
        assert!(s.egress.host_allowed("myres.openai.azure.com"));
        assert!(!s.egress.host_allowed("evil.example.com"));
    }

    #[test]
    fn each_missing_secret_fails_closed_with_its_name() {
        for missing in [env::DATABASE_URL, env::MASTER_KEY, env::TOKEN_PEPPER] {
            let vars: Vec<_> = minimal().into_iter().filter(|(k, _)| *k != missing).collect();
            let err = Settings::from_sources(None, env_of(&vars)).unwrap_err();
            assert_eq!(err.to_string(), format!("{missing} is not set"));
        }
    }

    #[test]
    fn malformed_secrets_are_refused_without_echoing_them() {
        for bad in ["not base64!!", &BASE64.encode([7u8; 16]), "v1:", "vx:AAAA", "v1:{k},v1:{k}"] {
            let bad = bad.replace("{k}", &key(3));
            let mut vars = minimal();
            vars[1].1 = bad.clone();
            let err = Settings::from_sources(None, env_of(&vars)).unwrap_err().to_string();
            assert!(err.starts_with("RELIABLEGPT_MASTER_KEY"), "{err}");
            if bad.len() > 4 {
                assert!(!err.contains(&bad), "error echoes the secret: {err}");
            }
        }
    }

    #[test]
    fn keyring_last_entry_is_active() {
        let ring = MasterKeyring::parse(&format!("v1:{},v7:{}", key(1), key(7))).unwrap();
        assert_eq!(ring.versions(), vec![1, 7]);
        assert_eq!(ring.active().0, 7);
        assert_eq!(ring.active().1.expose(), &[7u8; 32]);
        assert_eq!(ring.get(1).unwrap().expose(), &[1u8; 32]);
        assert!(ring.get(2).is_none());
    }

    #[test]
    fn toml_file_is_overridden_by_environment() {
        let toml = format!(
            "database_url = \"postgres://file/db\"\nmaster_key = \"{}\"\ntoken_pepper = \"{}\"\nlisten = \"0.0.0.0:9000\"\nallowed_upstream_hosts = [\"api.openai.com\", \"*.example.net\"]\n",
            key(4),
            key(5)
        );
        let s = Settings::from_sources(Some(&toml), env_of(&[(env::LISTEN, "127.0.0.1:7000".into())])).unwrap();
        assert_eq!(s.listen, "127.0.0.1:7000");
        assert_eq!(s.database_url.expose_secret(), "postgres://file/db");
        assert!(s.egress.host_allowed("x.example.net"));
        let err = Settings::from_sources(Some("surprise = 1"), env_of(&minimal())).unwrap_err();
        assert!(err.to_string().contains("unknown setting `surprise`"), "{err}");
    }

    #[test]
    fn debug_output_is_redacted() {
        let s = Settings::from_sources(None, env_of(&minimal())).unwrap();
        let debug = format!("{s:?}");
        for secret in [key(1), key(2), "u:p@localhost".to_string()] {
            assert!(!debug.contains(&secret), "{debug}");
        }
        assert!(!debug.contains("[1, 1, 1"), "{debug}");
    }

    #[test]
    fn generated_secrets_parse_back() {
        let text = generate_secrets();
        let mut vars = vec![(env::DATABASE_URL, "postgres://x/y".to_string())];
        for line in text.lines() {
            let (name, value) = line.trim_start_matches("export ").split_once('=').unwrap();
            let name = if name == env::MASTER_KEY { env::MASTER_KEY } else { env::TOKEN_PEPPER };
            vars.push((name, value.to_string()));
        }
        let s = Settings::from_sources(None, env_of(&vars)).unwrap();
        assert_ne!(s.master_keys.active().1.expose(), s.token_pepper.expose());
    }
}
