//! Offline master key rotation (`reliablegpt rotate-master-key`): every two-layer (format 2) key set's outer layer moves
//! to the active master key version, without any token. One-layer (format 1) key sets cannot move without their token:
//! they are counted, and move when their token next authenticates.

use uuid::Uuid;

use super::{Vault, VaultError, crypto, queries, version_i32};

/// Key sets fetched per round trip.
const PAGE: i64 = 500;

/// What `rotate-master-key` did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RotationReport {
    pub active_version: u32,
    /// Outer layers moved to the active version.
    pub rewrapped: u64,
    /// Format-2 key sets whose version is not in the keyring (left as they are: only their owner can revoke them).
    pub missing_version: u64,
    /// Format-2 key sets whose outer layer failed to open (tampered or corrupt; left as they are).
    pub failed: u64,
    /// Format-1 key sets still under an older version, by version: they need their token (one authenticated request).
    pub needs_token: Vec<(u32, u64)>,
}

impl RotationReport {
    /// True when no key set is left under an older master key version, so older versions can leave the keyring.
    pub fn complete(&self) -> bool {
        self.missing_version == 0 && self.failed == 0 && self.needs_token.is_empty()
    }

    pub fn render(&self) -> String {
        let mut text = format!(
            "active master key version: v{}\nre-wrapped: {}\nversion not in keyring: {}\nfailed to open: {}\n",
            self.active_version, self.rewrapped, self.missing_version, self.failed
        );
        for (version, count) in &self.needs_token {
            text.push_str(&format!("one-layer key sets under v{version} (move on their next request): {count}\n"));
        }
        text.push_str(if self.complete() {
            "every key set is under the active version: older versions can be removed from RELIABLEGPT_MASTER_KEY\n"
        } else {
            "keep the older versions listed above in RELIABLEGPT_MASTER_KEY for now\n"
        });
        text.push_str(
            "semantic cache entries sealed under a removed version become misses (they expire by TTL); \
             queued alert mail under it is given up (it is short-lived: rotate when the outbox is empty)\n",
        );
        text
    }
}

impl Vault {
    /// Re-wraps every two-layer key set under the active master key version. Safe to run while replicas serve (each row
    /// is replaced only if its version is still the one read) and to run again.
    pub async fn rotate_master_key(&self) -> Result<RotationReport, VaultError> {
        let (active_version, active) = self.keyring.active();
        let mut report = RotationReport { active_version, ..Default::default() };
        let mut after = Uuid::nil();
        loop {
            let page = queries::wrapped_not_under(&self.pool, version_i32(active_version), after, PAGE).await?;
            let Some(last) = page.last() else { break };
            after = last.id;
            for row in page {
                let Some((version, old)) =
                    u32::try_from(row.master_key_version).ok().and_then(|v| self.keyring.get(v).map(|k| (v, k)))
                else {
                    report.missing_version += 1;
                    continue;
                };
                let Ok(rewrapped) = crypto::rewrap_outer(
                    &row.wrapped_dek,
                    row.id,
                    (version, old.expose()),
                    (active_version, active.expose()),
                ) else {
                    tracing::error!(key_set_id = %row.id, version, "a wrapped data key failed to open; left as it is");
                    report.failed += 1;
                    continue;
                };
                let new_version = version_i32(active_version);
                if queries::rewrap(&self.pool, row.id, row.master_key_version, new_version, &rewrapped).await? {
                    report.rewrapped += 1;
                }
            }
        }
        report.needs_token = self
            .master_key_usage()
            .await?
            .into_iter()
            .filter(|(version, _, one_layer)| *version != active_version && *one_layer > 0)
            .map(|(version, _, one_layer)| (version, one_layer))
            .collect();
        tracing::info!(?report, "master key rotation finished");
        Ok(report)
    }
}
