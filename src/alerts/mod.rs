//! Error-spike alerts by email.
//!
//! The engine's events are counted per key set in buckets ([`buckets`]), flushed to PostgreSQL every few seconds; an
//! evaluator compares each key set's window with its thresholds and own baseline ([`rules`], [`evaluate`]), opens one
//! alert per spike and resolves it when the window is normal again; emails wait in an outbox that a worker sends over
//! SMTP ([`outbox`]). Only addresses that confirmed a single-use link receive anything ([`verify`]).

mod buckets;
pub mod digest;
mod evaluate;
pub mod input;
mod outbox;
mod queries;
pub mod rules;
pub mod settings;
mod verify;

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::vault::{Vault, VaultError};
pub use buckets::EventCounter;
pub use digest::Summary;
pub use input::{AlertSettingsRequest, NewAlertSettings, Thresholds};
use outbox::Mailer;
pub use settings::AlertSettings;

/// Most alerts `GET /v1/alerts` returns.
const RECENT_ALERTS: i64 = 50;
/// Most rows `GET /v1/events` returns.
const MAX_EVENT_ROWS: i64 = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum AlertsError {
    #[error("database error")]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Vault(#[from] VaultError),
}

/// Handle shared by the handlers and the background tasks.
#[derive(Clone)]
pub struct Alerts {
    pool: PgPool,
    vault: Vault,
    settings: Arc<AlertSettings>,
    mailer: Option<Mailer>,
}

/// An address that receives a key set's alerts once confirmed.
#[derive(Debug, Serialize, ToSchema)]
pub struct RecipientView {
    pub email: String,
    pub verified: bool,
    /// The key set's `user_email` (change it with `PATCH /v1/keys`).
    pub owner: bool,
}

/// `GET /v1/alerts/settings`.
#[derive(Debug, Serialize, ToSchema)]
pub struct AlertSettingsView {
    #[serde(flatten)]
    pub thresholds: Thresholds,
    /// The extra recipients set with `PUT`.
    pub emails: Vec<String>,
    /// Everyone who may receive alerts, with their confirmation state; only confirmed addresses do.
    pub recipients: Vec<RecipientView>,
    /// False when the service has no SMTP server: alerts are recorded but not mailed.
    pub mail_enabled: bool,
}

/// One email about an alert.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryView {
    /// `spike` (the digest) or `resolved`.
    pub kind: String,
    pub recipient: String,
    /// `pending` (retrying), `sent`, `capped` (the address reached its hourly cap) or `expired` (gave up after 24 h).
    pub state: String,
    pub attempts: i32,
    pub sent_at: Option<DateTime<Utc>>,
}

/// `GET /v1/alerts`: one alert.
#[derive(Debug, Serialize, ToSchema)]
pub struct AlertView {
    pub id: Uuid,
    pub opened_at: DateTime<Utc>,
    pub resolved_at: Option<DateTime<Utc>>,
    /// `error_spike` or `total_failure`.
    pub trigger: String,
    /// The digest's figures: counts by class, model, instance and masked key, rate vs baseline, what reliablegpt did.
    #[schema(value_type = Object)]
    pub summary: serde_json::Value,
    /// Confirmed addresses when it opened.
    pub recipients: Vec<String>,
    pub delivery: Vec<DeliveryView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AlertList {
    pub mail_enabled: bool,
    pub data: Vec<AlertView>,
}

/// `GET /v1/events`: one count.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventCount {
    /// Start of the bucket (a minute by default).
    pub at: DateTime<Utc>,
    /// `attempt` (class = the attempt's result) or `outcome` (class = the request's outcome).
    #[schema(example = "attempt")]
    pub kind: String,
    #[schema(example = "rate_limited")]
    pub class: String,
    pub model: String,
    pub provider: String,
    pub instance: String,
    pub count: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EventCounts {
    pub bucket_seconds: u64,
    pub since: DateTime<Utc>,
    pub data: Vec<EventCount>,
}

impl Alerts {
    pub fn new(pool: PgPool, vault: Vault, settings: AlertSettings) -> Result<Self, String> {
        let mailer = match settings.smtp_connect_url()? {
            Some(url) => Some(Mailer::new(&url, &settings.from)?),
            None => None,
        };
        Ok(Self { pool, vault, settings: Arc::new(settings), mailer })
    }

    pub fn mail_enabled(&self) -> bool {
        self.mailer.is_some()
    }

    /// The engine's event consumer and the background tasks: count flusher, evaluator, and (with SMTP) the mailer.
    pub fn start(&self) -> (EventCounter, Vec<tokio::task::JoinHandle<()>>) {
        let s = &self.settings;
        let (counter, flusher) = buckets::start(self.pool.clone(), s.bucket, s.flush_every);
        let mut tasks = vec![flusher, evaluate::spawn(self.clone())];
        match &self.mailer {
            Some(mailer) => tasks.push(outbox::spawn_worker(
                self.pool.clone(),
                self.vault.clone(),
                mailer.clone(),
                s.outbox_poll,
                s.retry_base,
                s.max_emails_per_hour,
            )),
            None => tracing::warn!("RELIABLEGPT_SMTP_URL is not set: alerts are recorded but not mailed"),
        }
        (counter, tasks)
    }

    /// Current recipients: the owner's address and the extra ones, with their confirmation state.
    async fn recipients(&self, key_set_id: Uuid, emails: &[String]) -> Result<Vec<RecipientView>, AlertsError> {
        let Some((owner, owner_verified)) = self.vault.contact(key_set_id).await? else {
            return Ok(Vec::new());
        };
        let confirmed = queries::verified_emails(&self.pool, key_set_id).await?;
        let is_confirmed = |e: &str| confirmed.iter().any(|c| c.eq_ignore_ascii_case(e));
        let mut out =
            vec![RecipientView { verified: owner_verified || is_confirmed(&owner), email: owner, owner: true }];
        for email in emails {
            if !out.iter().any(|r| r.email.eq_ignore_ascii_case(email)) {
                out.push(RecipientView { email: email.clone(), verified: is_confirmed(email), owner: false });
            }
        }
        Ok(out)
    }

    /// The addresses an alert opened now would go to.
    async fn verified_recipients(&self, key_set_id: Uuid) -> Result<Vec<String>, AlertsError> {
        let emails = queries::settings(&self.pool, key_set_id).await?.map(|(_, e)| e).unwrap_or_default();
        Ok(self.recipients(key_set_id, &emails).await?.into_iter().filter(|r| r.verified).map(|r| r.email).collect())
    }

    pub async fn settings(&self, key_set_id: Uuid) -> Result<AlertSettingsView, AlertsError> {
        let (thresholds, emails) = queries::settings(&self.pool, key_set_id).await?.unwrap_or_default();
        let recipients = self.recipients(key_set_id, &emails).await?;
        Ok(AlertSettingsView { thresholds, emails, recipients, mail_enabled: self.mail_enabled() })
    }

    /// Replaces the thresholds and extra recipients; every unconfirmed address without a valid link gets one.
    pub async fn put_settings(
        &self,
        key_set_id: Uuid,
        new: NewAlertSettings,
    ) -> Result<AlertSettingsView, AlertsError> {
        let emails: Vec<String> = new.emails.iter().map(|e| e.as_str().to_owned()).collect();
        queries::put_settings(&self.pool, key_set_id, &new.thresholds, &emails).await?;
        let view = self.settings(key_set_id).await?;
        let unconfirmed: Vec<String> =
            view.recipients.iter().filter(|r| !r.verified).map(|r| r.email.clone()).collect();
        verify::request(self, key_set_id, &unconfirmed).await?;
        if let Some(owner) = view.recipients.iter().find(|r| r.owner && r.verified) {
            // Confirmed in the vault before alerts existed (or through another path): remember it here too.
            queries::insert_verified(&self.pool, key_set_id, &owner.email).await?;
        }
        Ok(view)
    }

    /// Sends one address its verification link unless it is confirmed or holds a valid one (mail configured only).
    pub async fn request_verification(&self, key_set_id: Uuid, email: &str) -> Result<(), AlertsError> {
        verify::request(self, key_set_id, &[email.to_owned()]).await
    }

    /// Uses a verification link's token; true when it confirmed an address.
    pub async fn verify(&self, token: &str) -> Result<bool, AlertsError> {
        verify::confirm(self, token).await
    }

    pub async fn recent(&self, key_set_id: Uuid) -> Result<AlertList, AlertsError> {
        let rows = queries::recent_alerts(&self.pool, key_set_id, RECENT_ALERTS).await?;
        let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
        let mut deliveries: std::collections::HashMap<Uuid, Vec<DeliveryView>> = std::collections::HashMap::new();
        for d in queries::deliveries(&self.pool, &ids).await? {
            deliveries.entry(d.alert_id).or_default().push(DeliveryView {
                kind: d.kind,
                recipient: d.recipient,
                state: d.state,
                attempts: d.attempts,
                sent_at: d.sent_at,
            });
        }
        let data = rows
            .into_iter()
            .map(|r| AlertView {
                delivery: deliveries.remove(&r.id).unwrap_or_default(),
                id: r.id,
                opened_at: r.opened_at,
                resolved_at: r.resolved_at,
                trigger: r.trigger,
                summary: r.summary.0,
                recipients: r.recipients,
            })
            .collect();
        Ok(AlertList { mail_enabled: self.mail_enabled(), data })
    }

    /// Counts per bucket, class, model, provider and instance since `since` (default: the last hour).
    pub async fn events(&self, key_set_id: Uuid, since: Option<DateTime<Utc>>) -> Result<EventCounts, AlertsError> {
        let since = since.unwrap_or_else(|| Utc::now() - chrono::TimeDelta::hours(1));
        let rows = queries::event_rows(&self.pool, key_set_id, since, MAX_EVENT_ROWS).await?;
        Ok(EventCounts {
            bucket_seconds: self.settings.bucket.as_secs(),
            since,
            data: rows
                .into_iter()
                .map(|r| EventCount {
                    at: r.bucket,
                    kind: r.kind,
                    class: r.class,
                    model: r.model,
                    provider: r.provider,
                    instance: r.instance,
                    count: r.count,
                })
                .collect(),
        })
    }
}
