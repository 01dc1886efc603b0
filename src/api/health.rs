use actix_web::{HttpResponse, web};
use serde::Serialize;
use utoipa::ToSchema;

use super::{ApiError, AppState};
use crate::db;

#[derive(Serialize, ToSchema)]
pub struct Health {
    #[schema(example = "ok")]
    pub status: &'static str,
    /// `/readyz` only: whether alert emails can go out (`enabled`, or why not).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "enabled")]
    pub alert_email: Option<&'static str>,
}

/// Liveness: the process is up and serving.
#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200, body = Health)))]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(Health { status: "ok", alert_email: None })
}

/// Readiness: the database answers and its schema is the one this build expects.
#[utoipa::path(
    get, path = "/readyz", tag = "health",
    responses((status = 200, body = Health), (status = 503, body = super::error::ErrorBody))
)]
pub async fn readyz(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    match db::check_ready(&state.pool).await {
        Ok(()) => {
            // Ready either way: alerts are still recorded, only not mailed.
            let alert_email =
                if state.alerts.mail_enabled() { "enabled" } else { "disabled: RELIABLEGPT_SMTP_URL is not set" };
            Ok(HttpResponse::Ok().json(Health { status: "ready", alert_email: Some(alert_email) }))
        }
        Err(db::SchemaError::Database(e)) => {
            tracing::warn!(error = %e, "readiness check: database unreachable");
            Err(ApiError::unavailable("The database is unreachable."))
        }
        Err(e) => Err(ApiError::unavailable(e.to_string())),
    }
}
