//! Bearer-token authentication, with a per-IP budget for failures so tokens cannot be guessed at speed.

use std::net::{IpAddr, Ipv4Addr};
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

pub fn client_ip(req: &HttpRequest) -> IpAddr {
    req.peer_addr().map(|a| a.ip()).unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
}

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
        if let Err(wait) = state.auth_failure_limiter.peek(ip) {
            return Err(ApiError::rate_limited(retry_after_secs(wait)));
        }
        let limiter_state = state.clone();
        let result = match token {
            Some(token) => check(state, token).await,
            None => Err(VaultError::Unauthenticated),
        };
        match result {
            Ok(value) => Ok(value),
            Err(VaultError::Unauthenticated) => {
                let _ = limiter_state.auth_failure_limiter.check(ip);
                tracing::info!(client = %ip, "authentication failed");
                Err(ApiError::unauthenticated())
            }
            Err(other) => Err(other.into()),
        }
    })
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
