//! Typed settings, read once at start from the environment and an optional TOML file (the environment wins).
//!
//! Secrets have no defaults: a missing or malformed secret stops the service with a one-line reason.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

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
    pub const OPENAI_BASE_URL: &str = "RELIABLEGPT_OPENAI_BASE_URL";
    pub const MODEL_CATALOG: &str = "RELIABLEGPT_MODEL_CATALOG";
    pub const MAX_RETRIES: &str = "RELIABLEGPT_MAX_RETRIES";
    pub const RETRY_BASE_MS: &str = "RELIABLEGPT_RETRY_BASE_MS";
    pub const RETRY_AFTER_CAP_MS: &str = "RELIABLEGPT_RETRY_AFTER_CAP_MS";
    pub const CONNECT_TIMEOUT_MS: &str = "RELIABLEGPT_CONNECT_TIMEOUT_MS";
    pub const FIRST_BYTE_TIMEOUT_MS: &str = "RELIABLEGPT_FIRST_BYTE_TIMEOUT_MS";
    pub const STREAM_IDLE_TIMEOUT_MS: &str = "RELIABLEGPT_STREAM_IDLE_TIMEOUT_MS";
    pub const REQUEST_TIMEOUT_MS: &str = "RELIABLEGPT_REQUEST_TIMEOUT_MS";
    pub const KEY_RETRY_AFTER_SECS: &str = "RELIABLEGPT_KEY_RETRY_AFTER_SECS";
    pub const BREAKER_FAILURES: &str = "RELIABLEGPT_BREAKER_FAILURES";
    pub const BREAKER_OPEN_MS: &str = "RELIABLEGPT_BREAKER_OPEN_MS";
    pub const RATE_LIMIT_COOLDOWN_MS: &str = "RELIABLEGPT_RATE_LIMIT_COOLDOWN_MS";
    pub const KEY_SET_CACHE_SECS: &str = "RELIABLEGPT_KEY_SET_CACHE_SECS";
    pub const WORKERS: &str = "RELIABLEGPT_WORKERS";
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

/// How the engine treats upstreams. Every duration has a default that suits production; tests shorten them.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    /// OpenAI's base URL (tests, demos and benchmarks point it at the mock upstream).
    pub openai_base_url: String,
    /// Operator's model catalog (TOML) replacing the shipped one.
    pub model_catalog: Option<String>,
    pub max_retries: u32,
    pub retry_base: Duration,
    pub retry_after_cap: Duration,
    pub connect_timeout: Duration,
    pub first_byte_timeout: Duration,
    pub stream_idle_timeout: Duration,
    pub request_timeout: Duration,
    /// How long a key marked invalid is skipped before one request may try it again.
    pub key_retry_after: Duration,
    pub breaker_failures: u32,
    pub breaker_open: Duration,
    /// Cooldown of a target that answered 429 without Retry-After.
    pub rate_limit_cooldown: Duration,
    /// How long an opened key set stays in memory (revocation evicts it at once on every replica).
    pub key_set_cache: Duration,
}

impl Default for EngineSettings {
    fn default() -> Self {
        Self {
            openai_base_url: DEFAULT_OPENAI_BASE_URL.to_owned(),
            model_catalog: None,
            max_retries: 2,
            retry_base: Duration::from_millis(250),
            retry_after_cap: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(3),
            first_byte_timeout: Duration::from_secs(10),
            stream_idle_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(60),
            key_retry_after: Duration::from_secs(600),
            breaker_failures: 5,
            breaker_open: Duration::from_secs(30),
            rate_limit_cooldown: Duration::from_secs(10),
            key_set_cache: Duration::from_secs(30),
        }
    }
}

pub const DEFAULT_OPENAI_BASE_URL: &str = "https://api.openai.com/v1";

#[derive(Debug)]
pub struct Settings {
    pub database_url: SecretString,
    pub listen: String,
    pub master_keys: MasterKeyring,
    pub token_pepper: Secret32,
    pub egress: EgressPolicy,
    pub db_max_connections: u32,
    /// HTTP worker threads; default: one per CPU.
    pub workers: Option<u32>,
    pub limits: AbuseLimits,
    pub engine: EngineSettings,
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
        let d = EngineSettings::default();
        let ms = |name: &'static str, default: Duration| -> Result<Duration, ConfigError> {
            let default_ms = u32::try_from(default.as_millis()).unwrap_or(u32::MAX);
            Ok(Duration::from_millis(u64::from(parse_number(name, get(name), default_ms)?)))
        };
        let secs = |name: &'static str, default: Duration| -> Result<Duration, ConfigError> {
            let default_secs = u32::try_from(default.as_secs()).unwrap_or(u32::MAX);
            Ok(Duration::from_secs(u64::from(parse_number(name, get(name), default_secs)?)))
        };
        let openai_base_url = get(env::OPENAI_BASE_URL).unwrap_or(d.openai_base_url).trim_end_matches('/').to_owned();
        if url::Url::parse(&openai_base_url).map(|u| !matches!(u.scheme(), "http" | "https")).unwrap_or(true) {
            return Err(malformed(env::OPENAI_BASE_URL, "expected an http(s) URL"));
        }
        let engine = EngineSettings {
            openai_base_url,
            model_catalog: get(env::MODEL_CATALOG),
            max_retries: match get(env::MAX_RETRIES) {
                None => d.max_retries,
                Some(v) => v.trim().parse().map_err(|_| malformed(env::MAX_RETRIES, "expected a whole number"))?,
            },
            retry_base: ms(env::RETRY_BASE_MS, d.retry_base)?,
            retry_after_cap: ms(env::RETRY_AFTER_CAP_MS, d.retry_after_cap)?,
            connect_timeout: ms(env::CONNECT_TIMEOUT_MS, d.connect_timeout)?,
            first_byte_timeout: ms(env::FIRST_BYTE_TIMEOUT_MS, d.first_byte_timeout)?,
            stream_idle_timeout: ms(env::STREAM_IDLE_TIMEOUT_MS, d.stream_idle_timeout)?,
            request_timeout: ms(env::REQUEST_TIMEOUT_MS, d.request_timeout)?,
            key_retry_after: secs(env::KEY_RETRY_AFTER_SECS, d.key_retry_after)?,
            breaker_failures: parse_number(env::BREAKER_FAILURES, get(env::BREAKER_FAILURES), d.breaker_failures)?,
            breaker_open: ms(env::BREAKER_OPEN_MS, d.breaker_open)?,
            rate_limit_cooldown: ms(env::RATE_LIMIT_COOLDOWN_MS, d.rate_limit_cooldown)?,
            key_set_cache: secs(env::KEY_SET_CACHE_SECS, d.key_set_cache)?,
        };
        Ok(Self {
            database_url: SecretString::from(database_url),
            listen,
            master_keys,
            token_pepper,
            egress: EgressPolicy::new(allowed_hosts, allow_private),
            db_max_connections: parse_number(env::DB_MAX_CONNECTIONS, get(env::DB_MAX_CONNECTIONS), 16)?,
            workers: get(env::WORKERS).map(|v| parse_number(env::WORKERS, Some(v), 1)).transpose()?,
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
            engine,
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
        env::OPENAI_BASE_URL,
        env::MODEL_CATALOG,
        env::MAX_RETRIES,
        env::RETRY_BASE_MS,
        env::RETRY_AFTER_CAP_MS,
        env::CONNECT_TIMEOUT_MS,
        env::FIRST_BYTE_TIMEOUT_MS,
        env::STREAM_IDLE_TIMEOUT_MS,
        env::REQUEST_TIMEOUT_MS,
        env::KEY_RETRY_AFTER_SECS,
        env::BREAKER_FAILURES,
        env::BREAKER_OPEN_MS,
        env::RATE_LIMIT_COOLDOWN_MS,
        env::KEY_SET_CACHE_SECS,
        env::WORKERS,
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
    fn engine_settings_have_defaults_and_overrides() {
        let s = Settings::from_sources(None, env_of(&minimal())).unwrap();
        assert_eq!(s.engine.openai_base_url, "https://api.openai.com/v1");
        assert_eq!(s.engine.max_retries, 2);
        assert_eq!(s.engine.first_byte_timeout, Duration::from_secs(10));
        assert_eq!(s.engine.key_retry_after, Duration::from_secs(600));
        let mut vars = minimal();
        vars.extend([
            (env::OPENAI_BASE_URL, "http://127.0.0.1:9090/v1/".to_string()),
            (env::MAX_RETRIES, "0".to_string()),
            (env::FIRST_BYTE_TIMEOUT_MS, "250".to_string()),
            (env::KEY_SET_CACHE_SECS, "5".to_string()),
        ]);
        let s = Settings::from_sources(None, env_of(&vars)).unwrap();
        assert_eq!(s.engine.openai_base_url, "http://127.0.0.1:9090/v1");
        assert_eq!(s.engine.max_retries, 0);
        assert_eq!(s.engine.first_byte_timeout, Duration::from_millis(250));
        assert_eq!(s.engine.key_set_cache, Duration::from_secs(5));
        for (name, bad) in
            [(env::OPENAI_BASE_URL, "ftp://x"), (env::FIRST_BYTE_TIMEOUT_MS, "-1"), (env::MAX_RETRIES, "many")]
        {
            let mut vars = minimal();
            vars.push((name, bad.to_string()));
            let err = Settings::from_sources(None, env_of(&vars)).unwrap_err().to_string();
            assert!(err.starts_with(name), "{err}");
        }
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
