//! The alerts module's settings: where mail goes out, and its timing. Production defaults suit minute buckets; tests
//! shorten every interval.

use std::time::Duration;

use secrecy::SecretString;

use crate::config::{ConfigError, parse, settings};

/// `smtp://host:port` (plain, for local servers), `smtp://user:pass@host:587?tls=required` (STARTTLS) or
/// `smtps://user:pass@host:465`. The error never repeats the text (it may hold a password).
pub fn smtp_url(name: &'static str, text: &str) -> Result<SecretString, ConfigError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(ConfigError::Missing(name));
    }
    match url::Url::parse(text) {
        Ok(u) if matches!(u.scheme(), "smtp" | "smtps") && u.host_str().is_some() => Ok(SecretString::from(text)),
        _ => Err(ConfigError::Malformed { name, reason: "expected smtp://host:port or smtps://host:port".into() }),
    }
}

/// An email address for the From header.
pub fn mailbox(name: &'static str, text: &str) -> Result<String, ConfigError> {
    text.trim()
        .parse::<lettre::message::Mailbox>()
        .map(|m| m.to_string())
        .map_err(|_| ConfigError::Malformed { name, reason: "expected an email address".into() })
}

settings! {
    /// Error-spike alerts and their mail.
    #[derive(Debug, Clone)]
    pub struct AlertSettings: Default {
        /// Without it alerts are recorded (`GET /v1/alerts`) but not mailed, and `/readyz` says so.
        pub smtp_url: Option<SecretString> [SMTP_URL = "RELIABLEGPT_SMTP_URL", smtp_url, optional],
        pub from: String [
            ALERT_FROM = "RELIABLEGPT_ALERT_FROM", mailbox, default "reliablegpt <alerts@localhost>".to_owned()
        ],
        /// Base of the links in emails (verification, `GET /v1/alerts`).
        pub public_url: String [
            PUBLIC_URL = "RELIABLEGPT_PUBLIC_URL", parse::http_url, default "http://localhost:8080".to_owned()
        ],
        /// Width of an event-count bucket (`GET /v1/events` rows); windows are rounded up to whole buckets.
        pub bucket: Duration [
            ALERT_BUCKET_SECS = "RELIABLEGPT_ALERT_BUCKET_SECS", parse::secs, default Duration::from_secs(60)
        ],
        /// How often each replica adds its in-memory counts to the database.
        pub flush_every: Duration [
            ALERT_FLUSH_MS = "RELIABLEGPT_ALERT_FLUSH_MS", parse::millis, default Duration::from_secs(5)
        ],
        /// How often spike rules are evaluated.
        pub evaluate_every: Duration [
            ALERT_EVALUATE_MS = "RELIABLEGPT_ALERT_EVALUATE_MS", parse::millis, default Duration::from_secs(15)
        ],
        /// How often the outbox is polled for due mail.
        pub outbox_poll: Duration [
            ALERT_OUTBOX_POLL_MS = "RELIABLEGPT_ALERT_OUTBOX_POLL_MS", parse::millis, default Duration::from_secs(5)
        ],
        /// First retry delay after a failed send; it doubles up to an hour, and mail is given up after 24 h.
        pub retry_base: Duration [
            ALERT_RETRY_BASE_MS = "RELIABLEGPT_ALERT_RETRY_BASE_MS", parse::millis, default Duration::from_secs(30)
        ],
        /// Emails one address may receive per hour, across all key sets (anti-spam).
        pub max_emails_per_hour: u32 [
            ALERT_MAX_EMAILS_PER_HOUR = "RELIABLEGPT_ALERT_MAX_EMAILS_PER_HOUR", parse::positive, default 20
        ],
        /// How long event counts are kept.
        pub retention: Duration [
            ALERT_RETENTION_HOURS = "RELIABLEGPT_ALERT_RETENTION_HOURS", hours, default Duration::from_secs(7 * 86400)
        ],
    }
}

fn hours(name: &'static str, text: &str) -> Result<Duration, ConfigError> {
    parse::positive(name, text).map(|h| Duration::from_secs(u64::from(h) * 3600))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_smtp_password_stays_out_of_debug_and_errors() {
        let url = smtp_url("X", "smtps://user:hunter2@mail.example.com:465").unwrap();
        let settings = AlertSettings { smtp_url: Some(url), ..AlertSettings::default() };
        assert!(!format!("{settings:?}").contains("hunter2"));
        let err = smtp_url("X", "http://user:hunter2@x").unwrap_err().to_string();
        assert!(!err.contains("hunter2"), "{err}");
        assert!(mailbox("X", "not an address").is_err());
        assert_eq!(mailbox("X", "alerts@example.com").unwrap(), "alerts@example.com");
    }
}
