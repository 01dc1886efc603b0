//! `/v1/keys`: create, read, change and revoke a key set.

use crate::object::Object;
use actix_web::{HttpRequest, HttpResponse, web};

use super::auth::{Authenticated, client_ip};
use super::error::ErrorBody;
use super::rate_limit::retry_after_secs;
use super::{ApiError, AppState};
use crate::vault::{CreateKeySetRequest, CreatedKeySet, KeySetChanges, KeySetView, NewKeySet, UpdateKeySetRequest};

/// Store a key set and get its special token (shown only this once).
#[utoipa::path(
    post, path = "/v1/keys", tag = "keys",
    request_body = CreateKeySetRequest,
    responses(
        (status = 201, description = "Created. Keep the token: it is never shown again.", body = CreatedKeySet),
        (status = 400, description = "Invalid input; `param` names the field. Nothing was stored.", body = ErrorBody),
        (status = 413, body = ErrorBody),
        (status = 429, description = "Too many key sets from this address; see Retry-After.", body = ErrorBody),
    )
)]
pub async fn create(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Json<Object<CreateKeySetRequest>>,
) -> Result<HttpResponse, ApiError> {
    if let Err(wait) = state.key_set_limiter.check(client_ip(&req)) {
        return Err(ApiError::rate_limited(retry_after_secs(wait)));
    }
    let new = NewKeySet::parse(body.into_inner().into_inner(), &state.egress)
        .map_err(|i| ApiError::invalid(i.param, i.message))?;
    let created = state.vault.create_key_set(new).await?;
    welcome(&state, &created.key_set).await;
    // The body holds the token: no cache (browser, proxy, CDN) may keep it.
    Ok(HttpResponse::Created().insert_header(("cache-control", "no-store")).json(created))
}

/// The key set of the bearer token: masked keys with their status, and the policy.
#[utoipa::path(
    get, path = "/v1/keys", tag = "keys",
    security(("token" = [])),
    responses((status = 200, body = KeySetView), (status = 401, body = ErrorBody), (status = 429, body = ErrorBody))
)]
pub async fn get(state: web::Data<AppState>, auth: Authenticated) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(state.vault.describe(&auth.0).await?))
}

/// Add, remove, reorder or revive keys and replace the policy, all at once or not at all.
#[utoipa::path(
    patch, path = "/v1/keys", tag = "keys",
    security(("token" = [])),
    request_body = UpdateKeySetRequest,
    responses(
        (status = 200, body = KeySetView),
        (status = 400, description = "Invalid input; `param` names the field. Nothing changed.", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 429, body = ErrorBody),
    )
)]
pub async fn update(
    state: web::Data<AppState>,
    auth: Authenticated,
    body: web::Json<Object<UpdateKeySetRequest>>,
) -> Result<HttpResponse, ApiError> {
    let changes = KeySetChanges::parse(body.into_inner().into_inner(), &state.egress)
        .map_err(|i| ApiError::invalid(i.param, i.message))?;
    let view = state.vault.update(&auth.0, changes).await?;
    welcome(&state, &view).await;
    Ok(HttpResponse::Ok().json(view))
}

/// The owner's address is an alert recipient from the start: unless confirmed (or holding a valid link), it gets its
/// verification link now, not only when alert settings are first saved. A mail problem never fails the key set call.
async fn welcome(state: &AppState, view: &KeySetView) {
    if view.email_verified {
        return;
    }
    if let Err(e) = state.alerts.request_verification(view.key_set_id, &view.user_email).await {
        tracing::warn!(error = %e, "could not queue the owner's verification email");
    }
}

/// Revoke the token and destroy the key set (its data key and every ciphertext). Later calls with it get 401.
#[utoipa::path(
    delete, path = "/v1/keys", tag = "keys",
    security(("token" = [])),
    responses((status = 204, description = "Revoked and destroyed."), (status = 401, body = ErrorBody), (status = 429, body = ErrorBody))
)]
pub async fn revoke(state: web::Data<AppState>, auth: Authenticated) -> Result<HttpResponse, ApiError> {
    state.vault.revoke(&auth.0).await?;
    Ok(HttpResponse::NoContent().finish())
}
