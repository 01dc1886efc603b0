//! Mail delivery. Emails wait in `alerts_outbox`; each replica's worker claims one due row at a time with
//! `FOR UPDATE SKIP LOCKED` and keeps it locked while it talks to the SMTP server, so two replicas never send the same
//! row. A failed send is retried with doubling delays for up to 24 hours. Nothing here runs on the request path.
//!
//! Delivery is at least once: a crash between the server's acceptance and the commit sends that email again.
//! Subjects and bodies wait sealed (they name instances and keys, and verification links are credentials).

use std::time::Duration;

use chrono::Utc;
use lettre::message::{Mailbox, MultiPart};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::queries::{self, DueMail, NewMail};
use crate::vault::Vault;

/// What is sealed in an outbox row.
#[derive(Serialize, Deserialize)]
struct Content {
    subject: String,
    text: String,
    html: String,
}

/// Queues a mail, sealed at rest.
pub(super) async fn enqueue(conn: &mut PgConnection, vault: &Vault, mail: &NewMail) -> sqlx::Result<()> {
    let id = Uuid::new_v4();
    let content = Content { subject: mail.subject.clone(), text: mail.text.clone(), html: mail.html.clone() };
    let plain = zeroize::Zeroizing::new(serde_json::to_vec(&content).unwrap_or_default());
    let (version, sealed) = vault.seal_at_rest(id, &plain);
    queries::enqueue(conn, id, mail, version, &sealed).await
}

fn open(vault: &Vault, mail: &DueMail) -> Result<Content, String> {
    let (Some(sealed), Some(version)) = (&mail.sealed, mail.master_key_version) else {
        return Err("the queued mail has no content".into());
    };
    let plain = vault.open_at_rest(mail.id, version, sealed).map_err(|e| e.to_string())?;
    serde_json::from_slice(&plain).map_err(|_| "the queued mail's content is malformed".into())
}

const GIVE_UP_AFTER: chrono::TimeDelta = chrono::TimeDelta::hours(24);
const MAX_RETRY_DELAY: Duration = Duration::from_secs(3600);
const SMTP_TIMEOUT: Duration = Duration::from_secs(20);

/// The SMTP connection settings (the URL may hold a password: never printed).
#[derive(Clone)]
pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

impl std::fmt::Debug for Mailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mailer").field("from", &self.from.to_string()).finish_non_exhaustive()
    }
}

impl Mailer {
    pub fn new(url: &SecretString, from: &str) -> Result<Self, String> {
        // lettre's own error could quote the URL; ours never does.
        let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(url.expose_secret())
            .map_err(|_| "RELIABLEGPT_SMTP_URL cannot be used (scheme, host or tls parameter)".to_owned())?
            .timeout(Some(SMTP_TIMEOUT))
            .build();
        let from = from.parse().map_err(|_| "RELIABLEGPT_ALERT_FROM is not an email address".to_owned())?;
        Ok(Self { transport, from })
    }

    async fn send(&self, mail: &DueMail, content: Content) -> Result<(), String> {
        let to: Mailbox = mail.recipient.parse().map_err(|_| "recipient is not an email address".to_owned())?;
        let message = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(content.subject)
            .multipart(MultiPart::alternative_plain_html(content.text, content.html))
            .map_err(|e| format!("cannot build the message: {e}"))?;
        self.transport.send(message).await.map(|_| ()).map_err(|e| short_error(&e))
    }
}

/// The SMTP error without the server's whole transcript, short enough for a column.
fn short_error(e: &lettre::transport::smtp::Error) -> String {
    let text = e.to_string();
    text.chars().take(300).collect()
}

/// Polls the outbox every `poll` and sends everything due.
pub fn spawn_worker(
    pool: PgPool,
    vault: Vault,
    mailer: Mailer,
    poll: Duration,
    retry_base: Duration,
    per_hour: u32,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(poll);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            loop {
                match send_one(&pool, &vault, &mailer, retry_base, per_hour).await {
                    Ok(true) => continue,
                    Ok(false) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "alert outbox: database error");
                        break;
                    }
                }
            }
        }
    })
}

/// Handles one due email; false when none is due.
async fn send_one(
    pool: &PgPool,
    vault: &Vault,
    mailer: &Mailer,
    retry_base: Duration,
    per_hour: u32,
) -> sqlx::Result<bool> {
    let mut tx = pool.begin().await?;
    let Some(mail) = queries::claim_due(&mut tx).await? else {
        tx.commit().await?;
        return Ok(false);
    };
    if Utc::now() - mail.created_at > GIVE_UP_AFTER {
        queries::finish(&mut tx, mail.id, "expired").await?;
        tx.commit().await?;
        tracing::warn!(mail_id = %mail.id, attempts = mail.attempts, "alert email given up after 24 h");
        return Ok(true);
    }
    queries::lock_recipient(&mut tx, &mail.recipient).await?;
    if queries::sent_within_hour(&mut tx, &mail.recipient).await? >= i64::from(per_hour) {
        queries::finish(&mut tx, mail.id, "capped").await?;
        tx.commit().await?;
        tracing::warn!(mail_id = %mail.id, per_hour, "alert email dropped: the address reached its hourly cap");
        return Ok(true);
    }
    let content = match open(vault, &mail) {
        Ok(content) => content,
        Err(error) => {
            // A master key version dropped from the keyring, or a damaged row: it can never be sent.
            queries::finish(&mut tx, mail.id, "expired").await?;
            tx.commit().await?;
            tracing::warn!(mail_id = %mail.id, error, "alert email cannot be opened; given up");
            return Ok(true);
        }
    };
    match mailer.send(&mail, content).await {
        Ok(()) => {
            queries::finish(&mut tx, mail.id, "sent").await?;
            tracing::info!(mail_id = %mail.id, "alert email sent");
        }
        Err(error) => {
            let delay = retry_delay(retry_base, mail.attempts);
            queries::retry_later(&mut tx, mail.id, delay, &error).await?;
            tracing::warn!(mail_id = %mail.id, error, retry_in_ms = delay.as_millis() as u64, "alert email not sent");
        }
    }
    tx.commit().await?;
    Ok(true)
}

/// `base` doubled per earlier failure, at most an hour.
fn retry_delay(base: Duration, attempts: i32) -> Duration {
    let doublings = u32::try_from(attempts).unwrap_or(0).min(20);
    base.saturating_mul(1 << doublings).min(MAX_RETRY_DELAY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_to_an_hour() {
        let base = Duration::from_secs(30);
        assert_eq!(retry_delay(base, 0), base);
        assert_eq!(retry_delay(base, 3), Duration::from_secs(240));
        assert_eq!(retry_delay(base, 50), MAX_RETRY_DELAY);
    }

    #[test]
    fn a_bad_url_is_refused_without_echoing_it() {
        let err = Mailer::new(&SecretString::from("ftp://user:hunter2@host"), "a@b.co").unwrap_err();
        assert!(!err.contains("hunter2"), "{err}");
        assert!(Mailer::new(&SecretString::from("smtp://127.0.0.1:2525"), "reliablegpt <a@b.co>").is_ok());
        assert!(Mailer::new(&SecretString::from("smtps://u:p@mail.example.com:465"), "a@b.co").is_ok());
        assert!(Mailer::new(&SecretString::from("smtp://u:p@mail.example.com:587?tls=required"), "a@b.co").is_ok());
    }
}
