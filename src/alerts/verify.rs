//! Address verification: an address receives alerts only after it opened a single-use link, valid for 24 hours, sent
//! to it. Email is a contact, never an identity: anyone can type a stranger's address, so the stranger gets one link
//! (and the per-address hourly cap bounds even that) and nothing else unless they click it.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::Utc;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::{Alerts, AlertsError, digest, queries};

pub const LINK_VALIDITY: chrono::TimeDelta = chrono::TimeDelta::hours(24);

fn hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Sends a link to each address that is neither confirmed nor holding a valid link. Without mail, nothing is stored:
/// the next settings change after mail is configured sends the links.
pub(super) async fn request(alerts: &Alerts, key_set_id: Uuid, addresses: &[String]) -> Result<(), AlertsError> {
    if alerts.mailer.is_none() {
        return Ok(());
    }
    for address in addresses {
        let token = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
        let mut tx = alerts.pool.begin().await?;
        if !queries::issue_token(&mut tx, key_set_id, address, &hash(&token), Utc::now() + LINK_VALIDITY).await? {
            continue;
        }
        let link = format!("{}/v1/alerts/verify?token={token}", alerts.settings.public_url);
        let mail = digest::verification(key_set_id, &link);
        let new = queries::NewMail {
            key_set_id,
            alert_id: None,
            kind: "verification",
            recipient: address.clone(),
            subject: mail.subject,
            text: mail.text,
            html: mail.html,
        };
        super::outbox::enqueue(&mut tx, &alerts.vault, &new).await?;
        tx.commit().await?;
        tracing::info!(%key_set_id, "verification email queued");
    }
    Ok(())
}

/// Uses a link's token. True when it confirmed an address (once; expired, used and unknown tokens are all false).
pub(super) async fn confirm(alerts: &Alerts, token: &str) -> Result<bool, AlertsError> {
    if token.is_empty() || token.len() > 128 {
        return Ok(false);
    }
    let Some((key_set_id, email)) = queries::consume_token(&alerts.pool, &hash(token)).await? else {
        return Ok(false);
    };
    // The owner's address is the vault's: it records the confirmation too (`GET /v1/keys` shows it).
    alerts.vault.mark_email_verified(key_set_id, &email).await?;
    tracing::info!(%key_set_id, "alert address confirmed");
    Ok(true)
}
