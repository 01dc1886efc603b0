//! The alerts module's settings: where mail goes out, and its timing. Production defaults suit minute buckets; tests
//! shorten every interval.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

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
        /// Replaces the password of `RELIABLEGPT_SMTP_URL` (which then names only the user), so the password can come
        /// from a file: `RELIABLEGPT_SMTP_PASSWORD_FILE`.
        pub smtp_password: Option<SecretString> [
            SMTP_PASSWORD = "RELIABLEGPT_SMTP_PASSWORD" or file SMTP_PASSWORD_FILE = "RELIABLEGPT_SMTP_PASSWORD_FILE",
            parse::secret_text, optional
        ],
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

impl AlertSettings {
    /// The URL the mailer connects with: `smtp_url`, its password replaced by `smtp_password` when that is set.
    pub fn smtp_connect_url(&self) -> Result<Option<SecretString>, String> {
        let Some(url) = &self.smtp_url else { return Ok(None) };
        let Some(password) = &self.smtp_password else { return Ok(Some(url.clone())) };
        let needs_user = "RELIABLEGPT_SMTP_PASSWORD needs a user name in RELIABLEGPT_SMTP_URL (smtp://user@host:587)";
        let mut parsed = url::Url::parse(url.expose_secret()).map_err(|_| needs_user.to_owned())?;
        if parsed.username().is_empty() {
            return Err(needs_user.to_owned());
        }
        parsed.set_password(Some(password.expose_secret())).map_err(|_| needs_user.to_owned())?;
        Ok(Some(SecretString::from(String::from(parsed))))
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

    #[test]
    fn a_separate_smtp_password_replaces_the_urls() {
        let url = |text| Some(smtp_url("X", text).unwrap());
        let password = Some(SecretString::from("p@ss:w/rd"));
        let settings = AlertSettings {
            smtp_url: url("smtp://alerts@mail.example.com:587"),
            smtp_password: password,
            ..Default::default()
        };
        let connect = settings.smtp_connect_url().unwrap().unwrap();
        let parsed = url::Url::parse(connect.expose_secret()).unwrap();
        assert_eq!(parsed.username(), "alerts");
        assert_eq!(parsed.password(), Some("p%40ss%3Aw%2Frd"));
        assert!(!format!("{settings:?}").contains("p@ss"));
        let no_user = AlertSettings { smtp_url: url("smtp://mail.example.com:587"), ..settings.clone() };
        let err = no_user.smtp_connect_url().unwrap_err();
        assert!(err.contains("user name") && !err.contains("p@ss"), "{err}");
        // Without it the URL is used as given.
        let plain = AlertSettings { smtp_password: None, ..settings };
        assert_eq!(plain.smtp_connect_url().unwrap().unwrap().expose_secret(), "smtp://alerts@mail.example.com:587");
    }
}
