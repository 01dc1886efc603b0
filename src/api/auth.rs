//! Bearer-token authentication, with a per-client budget for failures so tokens cannot be guessed at speed.
//!
//! The budget only ever refuses failures: a client over it still gets a valid token served (a shared address, such as a
//! NAT or an office, must not lock out its honest users), but its checks go one at a time through a small lane so that
//! nobody can turn guessing into database load. Its wrong tokens get 429 instead of 401.

use std::sync::Arc;

use actix_web::dev::Payload;
use actix_web::http::header::AUTHORIZATION;
use actix_web::{FromRequest, HttpRequest, web};
use futures_util::future::LocalBoxFuture;

use super::rate_limit::retry_after_secs;
use super::{ApiError, AppState};
use crate::vault::{KeySetSession, OpenKeySet, Policy, VaultError};
use uuid::Uuid;

/// An authenticated key set owner (`/v1/keys`). Extracting it answers 401 (always the same body) or 429 on its own.
pub struct Authenticated(pub KeySetSession);

/// An app calling the gateway: its key set, opened (from the in-memory cache when fresh).
pub struct Gateway(pub Arc<OpenKeySet>, pub web::Data<AppState>);

/// Who reads the cache: the key set's owner (special token, any instance) or a scoped token (one instance).
pub enum CacheReader {
    Owner(Arc<OpenKeySet>),
    Scoped { key_set_id: Uuid, instance_id: String, policy: Policy },
}

/// A JWT's first segment is base64url of `{"...`, so it always starts with `eyJ`; special tokens start with `rgpt_`.
fn looks_like_jwt(token: &str) -> bool {
    token.starts_with("eyJ") && token.bytes().filter(|b| *b == b'.').count() == 2
}

pub use super::client::client_ip;

/// Token checks of clients over their failure budget, at once across the process.
pub(super) static OVER_BUDGET_LANE: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

/// The token from `Authorization: Bearer ...`, or from Azure SDKs' `api-key` header.
fn bearer(req: &HttpRequest) -> Option<String> {
    if let Some(value) = req.headers().get(AUTHORIZATION) {
        let (scheme, token) = value.to_str().ok()?.trim().split_once(' ')?;
        return scheme.eq_ignore_ascii_case("bearer").then(|| token.trim().to_owned());
    }
    req.headers().get("api-key").and_then(|v| v.to_str().ok()).map(|v| v.trim().to_owned())
}

/// Runs `check` on the request's token under the failed-authentication budget of the client's address.
fn guarded<T: 'static, F, Fut>(req: &HttpRequest, check: F) -> LocalBoxFuture<'static, Result<T, ApiError>>
where
    F: FnOnce(web::Data<AppState>, String) -> Fut + 'static,
    Fut: std::future::Future<Output = Result<T, VaultError>>,
{
    let state = req.app_data::<web::Data<AppState>>().cloned();
    let token = bearer(req);
    let ip = client_ip(req);
    Box::pin(async move {
        let Some(state) = state else {
            return Err(ApiError::internal(&std::io::Error::other("AppState is not registered")));
        };
        let over_budget = state.auth_failure_limiter.peek(ip).err();
        let Some(token) = token else {
            return Err(match over_budget {
                Some(wait) => ApiError::rate_limited(retry_after_secs(wait)),
                None => failed(&state, ip),
            });
        };
        let limiter_state = state.clone();
        let result = match over_budget {
            None => check(state, token).await,
            Some(_) => {
                let _lane = OVER_BUDGET_LANE.acquire().await.map_err(|e| ApiError::internal(&e))?;
                check(state, token).await
            }
        };
        match result {
            Ok(value) => Ok(value),
            Err(VaultError::Unauthenticated) => match limiter_state.auth_failure_limiter.peek(ip) {
                Err(wait) => Err(ApiError::rate_limited(retry_after_secs(wait))),
                Ok(()) => Err(failed(&limiter_state, ip)),
            },
            Err(other) => Err(other.into()),
        }
    })
}

/// Counts a failed authentication against the client's budget.
fn failed(state: &AppState, ip: std::net::IpAddr) -> ApiError {
    let _ = state.auth_failure_limiter.check(ip);
    tracing::info!(client = %ip, "authentication failed");
    ApiError::unauthenticated()
}

impl FromRequest for Authenticated {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        guarded(req, |state, token| async move { state.vault.authenticate(&token).await.map(Authenticated) })
    }
}

impl FromRequest for Gateway {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        guarded(req, |state, token| async move {
            let set = state.vault.open_for_request(&token).await?;
            Ok(Gateway(set, state))
        })
    }
}

impl FromRequest for CacheReader {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        guarded(req, |state, token| async move {
            if !looks_like_jwt(&token) {
                return Ok(CacheReader::Owner(state.vault.open_for_request(&token).await?));
            }
            let scope = state.scoped_tokens.verify(&token).ok_or(VaultError::Unauthenticated)?;
            // A revoked key set's scoped tokens die with it.
            let policy = state.vault.policy(scope.key_set_id).await?.ok_or(VaultError::Unauthenticated)?;
            Ok(CacheReader::Scoped { key_set_id: scope.key_set_id, instance_id: scope.instance_id, policy })
        })
    }
}
