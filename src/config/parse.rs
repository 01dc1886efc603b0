//! Parsing rules for [`settings!`](crate::config::settings): `(variable name, text) → value`. Errors start with the
//! variable's name and never repeat the text, so a secret is never echoed.

use std::net::SocketAddr;
use std::time::Duration;

use secrecy::SecretString;

use super::{ConfigError, Keyring, malformed};
use crate::egress::HostPattern;

/// Any text, as given.
pub fn text(_name: &'static str, text: &str) -> Result<String, ConfigError> {
    Ok(text.to_owned())
}

/// A secret text; blank counts as not set.
pub fn secret_text(name: &'static str, text: &str) -> Result<SecretString, ConfigError> {
    if text.trim().is_empty() {
        return Err(ConfigError::Missing(name));
    }
    Ok(SecretString::from(text))
}

/// A keyring: `BASE64` (version 1) or `v1:BASE64,v2:BASE64` (see [`Keyring::parse`]).
pub fn keyring(name: &'static str, text: &str) -> Result<Keyring, ConfigError> {
    Keyring::parse(name, text)
}

/// `host:port`.
pub fn host_port(name: &'static str, text: &str) -> Result<String, ConfigError> {
    if text.parse::<SocketAddr>().is_err() && !text.contains(':') {
        return Err(malformed(name, "expected host:port"));
    }
    Ok(text.to_owned())
}

/// An http(s) URL, without trailing slashes.
pub fn http_url(name: &'static str, text: &str) -> Result<String, ConfigError> {
    let url = text.trim_end_matches('/');
    if url::Url::parse(url).map(|u| !matches!(u.scheme(), "http" | "https")).unwrap_or(true) {
        return Err(malformed(name, "expected an http(s) URL"));
    }
    Ok(url.to_owned())
}

/// `true`/`1`/`yes` or `false`/`0`/`no`/blank.
pub fn flag(name: &'static str, text: &str) -> Result<bool, ConfigError> {
    match text.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" | "" => Ok(false),
        _ => Err(malformed(name, "expected true or false")),
    }
}

/// A whole number, zero included.
pub fn count(name: &'static str, text: &str) -> Result<u32, ConfigError> {
    text.trim().parse().map_err(|_| malformed(name, "expected a whole number"))
}

/// A whole number above zero.
pub fn positive(name: &'static str, text: &str) -> Result<u32, ConfigError> {
    text.trim().parse::<u32>().ok().filter(|n| *n > 0).ok_or_else(|| malformed(name, "expected a positive integer"))
}

/// Milliseconds, above zero.
pub fn millis(name: &'static str, text: &str) -> Result<Duration, ConfigError> {
    positive(name, text).map(|n| Duration::from_millis(u64::from(n)))
}

/// Seconds, above zero.
pub fn secs(name: &'static str, text: &str) -> Result<Duration, ConfigError> {
    positive(name, text).map(|n| Duration::from_secs(u64::from(n)))
}

/// Seconds, zero included (zero turns the feature off).
pub fn secs_or_zero(name: &'static str, text: &str) -> Result<Duration, ConfigError> {
    count(name, text).map(|n| Duration::from_secs(u64::from(n)))
}

/// A comma list of host names or `*.domain` patterns (a TOML list of strings works too).
pub fn host_patterns(name: &'static str, text: &str) -> Result<Vec<HostPattern>, ConfigError> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| HostPattern::parse(s).map_err(|reason| malformed(name, reason)))
        .collect()
}

/// A size in bytes, at least 1 KiB (smaller limits would refuse ordinary answers).
pub fn byte_count(name: &'static str, text: &str) -> Result<usize, ConfigError> {
    match text.trim().parse::<usize>() {
        Ok(n) if n >= 1024 => Ok(n),
        _ => Err(malformed(name, "must be a number of bytes, at least 1024")),
    }
}
