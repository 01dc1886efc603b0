//! Typed settings, read once at start from the environment and an optional TOML file (the environment wins).
//!
//! Each module declares its own settings with [`settings!`] (one line per setting: variable, type, rule, default);
//! [`Settings`] nests them. Secrets have no defaults: a missing or malformed secret stops the service with a one-line
//! reason.

pub mod declare;
pub mod egress;
pub mod parse;
mod secret;

use std::collections::HashMap;
use std::path::Path;

use secrecy::SecretString;

pub use crate::alerts::AlertSettings;
pub use crate::api::rate_limit::AbuseLimits;
pub use crate::cache::settings::CacheSettings;
use crate::egress::EgressPolicy;
pub use crate::engine::settings::EngineSettings;
pub use declare::{Group, Source};
pub(crate) use declare::{setting, settings};
pub use secret::{Keyring, MasterKeyring, Secret32};

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

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

settings! {
    /// Everything the service reads at start. `env` lists every variable, nested groups' included.
    #[derive(Debug)]
    pub struct Settings {
        pub database_url: SecretString [DATABASE_URL = "DATABASE_URL", parse::secret_text, required],
        /// `BASE64` or `v1:BASE64,v2:BASE64`; the highest version is active. Or a file: `RELIABLEGPT_MASTER_KEY_FILE`.
        pub master_keys: MasterKeyring [
            MASTER_KEY = "RELIABLEGPT_MASTER_KEY" or file MASTER_KEY_FILE = "RELIABLEGPT_MASTER_KEY_FILE",
            parse::keyring, required
        ],
        /// Same keyring format: tokens hashed under an older pepper still authenticate and are re-hashed under the
        /// highest version on use. Or a file: `RELIABLEGPT_TOKEN_PEPPER_FILE`.
        pub token_peppers: Keyring [
            TOKEN_PEPPER = "RELIABLEGPT_TOKEN_PEPPER" or file TOKEN_PEPPER_FILE = "RELIABLEGPT_TOKEN_PEPPER_FILE",
            parse::keyring, required
        ],
        pub listen: String [LISTEN = "RELIABLEGPT_LISTEN", parse::host_port, default DEFAULT_LISTEN.to_owned()],
        /// A second listener (host:port) that serves only `/metrics`; the main listener then answers 404 there, so
        /// metrics need not be reachable from where clients are. Default: unset (`/metrics` on the main listener).
        pub metrics_listen: Option<String> [
            METRICS_LISTEN = "RELIABLEGPT_METRICS_LISTEN", parse::host_port, optional
        ],
        /// Longest a client may take to send a request body, from the end of its headers; then it gets 408
        /// `request_timeout` and the connection is closed (a client trickling bytes would otherwise hold a worker slot).
        pub body_read_timeout: std::time::Duration [
            BODY_READ_TIMEOUT_MS = "RELIABLEGPT_BODY_READ_TIMEOUT_MS", parse::millis, default std::time::Duration::from_secs(10)
        ],
        pub egress: EgressPolicy [group crate::config::egress],
        pub engine: EngineSettings [group crate::engine::settings],
        pub cache: CacheSettings [group crate::cache::settings],
        pub db_max_connections: u32 [
            DB_MAX_CONNECTIONS = "RELIABLEGPT_DB_MAX_CONNECTIONS", parse::positive, default 16
        ],
        /// HTTP worker threads; default: one per CPU.
        pub workers: Option<u32> [WORKERS = "RELIABLEGPT_WORKERS", parse::positive, optional],
        pub limits: AbuseLimits [group crate::api::rate_limit],
        pub alerts: AlertSettings [group crate::alerts::settings],
    }
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
        <Self as Group>::load(&Source::new(file, &env))
    }

    /// Every environment variable the service reads, in declaration order.
    pub fn env_names() -> Vec<&'static str> {
        declare::names::<Self>()
    }
}

fn parse_toml(text: &str) -> Result<HashMap<String, String>, ConfigError> {
    let file_error = |reason: String| ConfigError::File { path: "--config".into(), reason };
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| file_error(e.message().to_owned()))?;
    let known: Vec<String> = Settings::env_names().into_iter().map(declare::file_key).collect();
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

/// `export` lines with a freshly generated master key and token pepper (for `reliablegpt secrets`).
pub fn generate_secrets() -> String {
    format!(
        "export {}=v1:{}\nexport {}=v1:{}\n",
        env::MASTER_KEY,
        Secret32::random().to_base64(),
        env::TOKEN_PEPPER,
        Secret32::random().to_base64()
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD as BASE64;
    use secrecy::ExposeSecret;

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
    fn keyring_highest_version_is_active_wherever_listed() {
        let ring =
            MasterKeyring::parse(env::MASTER_KEY, &format!("v7:{},v1:{},v3:{}", key(7), key(1), key(3))).unwrap();
        assert_eq!(ring.versions(), vec![7, 3, 1]);
        assert_eq!(ring.active().0, 7);
        assert_eq!(ring.active().1.expose(), &[7u8; 32]);
        assert_eq!(ring.get(1).unwrap().expose(), &[1u8; 32]);
        assert!(ring.get(2).is_none());
    }

    #[test]
    fn the_token_pepper_is_a_keyring_too() {
        let mut vars = minimal();
        vars[2].1 = format!("v1:{},v2:{}", key(2), key(9));
        let s = Settings::from_sources(None, env_of(&vars)).unwrap();
        assert_eq!(s.token_peppers.versions(), vec![2, 1]);
        assert_eq!(s.token_peppers.active().1.expose(), &[9u8; 32]);
        // A bare value (how it was set before) is version 1.
        let s = Settings::from_sources(None, env_of(&minimal())).unwrap();
        assert_eq!(s.token_peppers.versions(), vec![1]);
        vars[2].1 = format!("v1:{},v1:{}", key(2), key(9));
        let err = Settings::from_sources(None, env_of(&vars)).unwrap_err().to_string();
        assert!(err.starts_with(env::TOKEN_PEPPER), "{err}");
    }

    #[test]
    fn secrets_can_come_from_files() {
        let dir = std::env::temp_dir().join(format!("reliablegpt-secrets-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let (master_file, pepper_file) = (dir.join("master_key"), dir.join("token_pepper"));
        std::fs::write(&master_file, format!("v1:{},v2:{}\n", key(1), key(2))).unwrap();
        std::fs::write(&pepper_file, key(5)).unwrap();
        let path = |p: &std::path::Path| p.display().to_string();
        let vars = vec![
            (env::DATABASE_URL, "postgres://u:p@localhost/db".to_string()),
            (env::MASTER_KEY_FILE, path(&master_file)),
            (env::TOKEN_PEPPER_FILE, path(&pepper_file)),
        ];
        let s = Settings::from_sources(None, env_of(&vars)).unwrap();
        assert_eq!(s.master_keys.active().1.expose(), &[2u8; 32]);
        assert_eq!(s.token_peppers.active().1.expose(), &[5u8; 32]);
        assert!(s.alerts.smtp_password.is_none());

        let smtp_file = dir.join("smtp_password");
        std::fs::write(&smtp_file, "s3cret\r\n").unwrap();
        let mut smtp = vars.clone();
        smtp.extend([
            (env::SMTP_URL, "smtp://alerts@mail.example.com:587".into()),
            (env::SMTP_PASSWORD_FILE, path(&smtp_file)),
        ]);
        let s = Settings::from_sources(None, env_of(&smtp)).unwrap();
        let url = s.alerts.smtp_connect_url().unwrap().unwrap();
        assert_eq!(url.expose_secret(), "smtp://alerts:s3cret@mail.example.com:587");

        // Both the value and the file: refused, naming both, echoing neither.
        let mut both = vars.clone();
        both.push((env::MASTER_KEY, key(3)));
        let err = Settings::from_sources(None, env_of(&both)).unwrap_err().to_string();
        assert!(err.contains(env::MASTER_KEY_FILE) && !err.contains(&key(3)), "{err}");
        // A missing file names its path and variable; a malformed one never echoes its content.
        let mut missing = vars.clone();
        missing[2].1 = path(&dir.join("nope"));
        let err = Settings::from_sources(None, env_of(&missing)).unwrap_err().to_string();
        assert!(err.contains("nope") && err.contains(env::TOKEN_PEPPER_FILE), "{err}");
        std::fs::write(&pepper_file, "not-base64-secret!!").unwrap();
        let err = Settings::from_sources(None, env_of(&vars)).unwrap_err().to_string();
        assert!(err.starts_with(env::TOKEN_PEPPER) && !err.contains("not-base64-secret"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
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
        assert_ne!(s.master_keys.active().1.expose(), s.token_peppers.active().1.expose());
    }

    /// The variables named in README.md's Configuration table. A cell like `` `RELIABLEGPT_A_MS` / `_B_MS` `` names
    /// `RELIABLEGPT_A_MS` and `RELIABLEGPT_B_MS`.
    fn readme_variables() -> (Vec<String>, Vec<String>) {
        let readme = include_str!("../../README.md");
        let section = readme.split("\n## Configuration\n").nth(1).unwrap().split("\n## ").next().unwrap();
        let rows: Vec<&str> = section.lines().filter(|l| l.starts_with('|')).skip(2).collect();
        assert!(rows.len() > 10, "no Configuration table in README.md");
        let names_in = |text: &str| -> Vec<String> {
            text.split('`')
                .skip(1)
                .step_by(2)
                .filter_map(|code| {
                    let code = code.trim();
                    let name = match code.strip_prefix('_') {
                        Some(rest) => format!("RELIABLEGPT_{rest}"),
                        None => code.to_owned(),
                    };
                    let is_name = !name.is_empty()
                        && name.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
                    is_name.then_some(name)
                })
                .collect()
        };
        let listed = rows.iter().flat_map(|row| names_in(row.split('|').nth(1).unwrap_or(""))).collect();
        let mentioned = rows.iter().flat_map(|row| names_in(row)).collect();
        (listed, mentioned)
    }

    #[test]
    fn readme_configuration_table_is_the_list_of_settings() {
        let declared = Settings::env_names();
        let (listed, mentioned) = readme_variables();
        for name in &declared {
            assert!(
                listed.iter().any(|l| l == name),
                "{name} is declared but has no row in README.md's Configuration table"
            );
        }
        for name in mentioned.iter().filter(|n| n.starts_with("RELIABLEGPT_")) {
            assert!(
                declared.contains(&name.as_str()),
                "README.md's Configuration table names {name}, which is not a setting"
            );
        }
    }

    #[test]
    fn every_setting_has_its_own_name_and_file_key() {
        let names = Settings::env_names();
        assert!(names.len() >= 24, "{names:?}");
        let keys: std::collections::HashSet<String> = names.iter().map(|n| declare::file_key(n)).collect();
        assert_eq!(keys.len(), names.len(), "two settings share a TOML key: {names:?}");
        for name in &names {
            assert!(*name == env::DATABASE_URL || name.starts_with("RELIABLEGPT_"), "{name}");
        }
    }

    #[test]
    fn nested_settings_are_read_from_the_file_and_the_environment_wins() {
        let toml = "max_retries = 7\nbreaker_open_ms = 1500\nkey_sets_per_minute = 3\nallow_private_upstreams = true\n";
        let mut vars = minimal();
        vars.push((env::MAX_RETRIES, "1".to_string()));
        let s = Settings::from_sources(Some(toml), env_of(&vars)).unwrap();
        assert_eq!(s.engine.max_retries, 1);
        assert_eq!(s.engine.breaker_open, Duration::from_millis(1500));
        assert_eq!(s.limits.key_sets_per_minute, 3);
        assert!(s.egress.allow_private());
    }

    #[test]
    fn default_impls_match_an_empty_environment() {
        let s = Settings::from_sources(None, env_of(&minimal())).unwrap();
        assert_eq!(format!("{:?}", s.engine), format!("{:?}", EngineSettings::default()));
        assert_eq!(format!("{:?}", s.limits), format!("{:?}", AbuseLimits::default()));
        assert_eq!(s.db_max_connections, 16);
        assert_eq!(s.workers, None);
    }
}
