use std::time::Duration;

use actix_web::{HttpResponse, web};
use serde::Serialize;
use utoipa::ToSchema;

use super::{ApiError, AppState};
use crate::db;

/// The longest `/readyz` waits for the database before it answers that it is unreachable.
const READY_CHECK_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Serialize, ToSchema)]
pub struct Health {
    /// `ok` (`/healthz`), `ready`, or `degraded`: the database is unreachable and cached key sets still serve.
    #[schema(example = "ok")]
    pub status: &'static str,
    /// `/readyz` only: whether alert emails can go out (`enabled`, or why not).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "enabled")]
    pub alert_email: Option<&'static str>,
    /// `/readyz` only: `reachable`, or `unreachable` during an outage.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "reachable")]
    pub database: Option<&'static str>,
    /// During an outage: seconds since the database was lost.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outage_secs: Option<u64>,
    /// During an outage: seconds cached key sets keep serving (`RELIABLEGPT_DB_OUTAGE_GRACE_SECS` minus the outage).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grace_left_secs: Option<u64>,
}

/// Liveness: the process is up and serving.
#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200, body = Health)))]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(Health {
        status: "ok",
        alert_email: None,
        database: None,
        outage_secs: None,
        grace_left_secs: None,
    })
}

/// Readiness: the database answers and its schema is the one this build expects. During a database outage: `200`
/// `degraded` while cached key sets still serve (taking every replica out of a load balancer would stop them too),
/// then `503`. Answers within about a second either way.
#[utoipa::path(
    get, path = "/readyz", tag = "health",
    responses((status = 200, body = Health), (status = 503, body = super::error::ErrorBody))
)]
pub async fn readyz(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    if let Some(outage) = state.vault.database_outage() {
        let outage_secs = outage.lasted.as_secs();
        if outage.grace_left.is_zero() {
            return Err(ApiError::unavailable(format!(
                "The database has been unreachable for {outage_secs} s; only requests that need no database are served."
            ))
            .with_retry_after(2));
        }
        return Ok(HttpResponse::Ok().json(Health {
            status: "degraded",
            alert_email: None,
            database: Some("unreachable"),
            outage_secs: Some(outage_secs),
            grace_left_secs: Some(outage.grace_left.as_secs()),
        }));
    }
    match tokio::time::timeout(READY_CHECK_TIMEOUT, db::check_ready(&state.pool)).await {
        Ok(Ok(())) => {
            // Ready either way: alerts are still recorded, only not mailed.
            let alert_email =
                if state.alerts.mail_enabled() { "enabled" } else { "disabled: RELIABLEGPT_SMTP_URL is not set" };
            Ok(HttpResponse::Ok().json(Health {
                status: "ready",
                alert_email: Some(alert_email),
                database: Some("reachable"),
                outage_secs: None,
                grace_left_secs: None,
            }))
        }
        Ok(Err(db::SchemaError::Database(e))) => {
            tracing::warn!(error = %e, "readiness check: database unreachable");
            Err(ApiError::unavailable("The database is unreachable."))
        }
        Err(_) => {
            tracing::warn!("readiness check: the database did not answer within a second");
            Err(ApiError::unavailable("The database did not answer within a second."))
        }
        Ok(Err(e)) => Err(ApiError::unavailable(e.to_string())),
    }
}
