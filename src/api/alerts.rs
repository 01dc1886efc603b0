//! `/v1/alerts`, `/v1/alerts/settings`, `/v1/alerts/verify` and `/v1/events`.

use crate::object::Object;
use actix_web::http::header::ContentType;
use actix_web::{HttpResponse, web};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use utoipa::IntoParams;

use super::auth::{Authenticated, OVER_BUDGET_LANE, client_ip};
use super::error::ErrorBody;
use super::{ApiError, AppState};
use crate::alerts::digest::escape;
use crate::alerts::{AlertList, AlertSettingsRequest, AlertSettingsView, EventCounts, NewAlertSettings};

/// The key set's alert thresholds and recipients (with their confirmation state).
#[utoipa::path(
    get, path = "/v1/alerts/settings", tag = "alerts",
    security(("token" = [])),
    responses((status = 200, body = AlertSettingsView), (status = 401, body = ErrorBody), (status = 429, body = ErrorBody))
)]
pub async fn get_settings(state: web::Data<AppState>, auth: Authenticated) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(state.alerts.settings(auth.0.key_set_id).await?))
}

/// Replace the thresholds and extra recipients. Every address that has not confirmed gets one verification email.
#[utoipa::path(
    put, path = "/v1/alerts/settings", tag = "alerts",
    security(("token" = [])),
    request_body = AlertSettingsRequest,
    responses(
        (status = 200, body = AlertSettingsView),
        (status = 400, description = "Invalid input; `param` names the field. Nothing changed.", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 429, body = ErrorBody),
    )
)]
pub async fn put_settings(
    state: web::Data<AppState>,
    auth: Authenticated,
    body: web::Json<Object<AlertSettingsRequest>>,
) -> Result<HttpResponse, ApiError> {
    let new =
        NewAlertSettings::parse(body.into_inner().into_inner()).map_err(|i| ApiError::invalid(i.param, i.message))?;
    Ok(HttpResponse::Ok().json(state.alerts.put_settings(auth.0.key_set_id, new).await?))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct VerifyQuery {
    /// The token from the verification email.
    #[param(required = true)]
    token: Option<String>,
}

/// Confirm an address from its verification email (a single-use link, valid for 24 hours). Answers a small HTML page.
#[utoipa::path(
    get, path = "/v1/alerts/verify", tag = "alerts",
    params(VerifyQuery),
    responses(
        (status = 200, description = "Confirmed.", content_type = "text/html"),
        (status = 400, description = "Unknown, used or expired link.", content_type = "text/html"),
    )
)]
pub async fn verify(
    state: web::Data<AppState>,
    req: actix_web::HttpRequest,
    query: web::Query<VerifyQuery>,
) -> Result<HttpResponse, ApiError> {
    // Links are 256-bit secrets, but wrong ones share the failed-authentication budget so nobody hammers the table.
    // As with tokens, a valid link is never refused: over the budget, checks go through the narrow lane.
    let ip = client_ip(&req);
    let over_budget = state.auth_failure_limiter.peek(ip).err();
    let token = query.into_inner().token.unwrap_or_default();
    let confirmed = match over_budget {
        None => state.alerts.verify(&token).await?,
        Some(_) => {
            let _lane = OVER_BUDGET_LANE.acquire().await.map_err(|e| ApiError::internal(&e))?;
            state.alerts.verify(&token).await?
        }
    };
    if !confirmed && let Err(wait) = state.auth_failure_limiter.check(ip) {
        return Err(ApiError::rate_limited(super::rate_limit::retry_after_secs(wait)));
    }
    let (mut res, title, text) = if confirmed {
        (
            HttpResponse::Ok(),
            "Address confirmed",
            "This address will now receive reliablegpt error alerts for the key set.",
        )
    } else {
        (
            HttpResponse::BadRequest(),
            "Link not valid",
            "This link is unknown, was already used, or expired (links are valid for 24 hours). Ask the key set's \
             owner to save the alert settings again for a new one.",
        )
    };
    let page = format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{0}</title></head>\
         <body><h1>{0}</h1><p>{1}</p></body></html>\n",
        escape(title),
        escape(text)
    );
    Ok(res.content_type(ContentType::html()).insert_header(("cache-control", "no-store")).body(page))
}

/// Recent alerts (newest first): trigger, figures, recipients and the delivery state of each email.
#[utoipa::path(
    get, path = "/v1/alerts", tag = "alerts",
    security(("token" = [])),
    responses((status = 200, body = AlertList), (status = 401, body = ErrorBody), (status = 429, body = ErrorBody))
)]
pub async fn list(state: web::Data<AppState>, auth: Authenticated) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(state.alerts.recent(auth.0.key_set_id).await?))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// RFC 3339 time; default: an hour ago.
    since: Option<String>,
}

/// Per-minute counts of attempts (by result class) and requests (by outcome), per model, provider and instance.
#[utoipa::path(
    get, path = "/v1/events", tag = "alerts",
    security(("token" = [])),
    params(EventsQuery),
    responses(
        (status = 200, body = EventCounts),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 429, body = ErrorBody),
    )
)]
pub async fn events(
    state: web::Data<AppState>,
    auth: Authenticated,
    query: web::Query<EventsQuery>,
) -> Result<HttpResponse, ApiError> {
    let since = match query.into_inner().since {
        None => None,
        Some(text) => Some(
            DateTime::parse_from_rfc3339(&text)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|_| ApiError::invalid("since", "must be an RFC 3339 time such as 2026-12-03T10:00:00Z"))?,
        ),
    };
    Ok(HttpResponse::Ok().json(state.alerts.events(auth.0.key_set_id, since).await?))
}
