//! Bearer-token authentication, with a per-IP budget for failures so tokens cannot be guessed at speed.

use std::net::{IpAddr, Ipv4Addr};

use actix_web::dev::Payload;
use actix_web::http::header::AUTHORIZATION;
use actix_web::{FromRequest, HttpRequest, web};
use futures_util::future::LocalBoxFuture;

use super::rate_limit::retry_after_secs;
use super::{ApiError, AppState};
use crate::vault::{KeySetSession, VaultError};

/// An authenticated key set. Extracting it answers 401 (always the same body) or 429 on its own.
pub struct Authenticated(pub KeySetSession);

pub fn client_ip(req: &HttpRequest) -> IpAddr {
    req.peer_addr().map(|a| a.ip()).unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
}

fn bearer(req: &HttpRequest) -> Option<String> {
    let value = req.headers().get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim().to_owned())
}

impl FromRequest for Authenticated {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
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
            let result = match token {
                Some(token) => state.vault.authenticate(&token).await,
                None => Err(VaultError::Unauthenticated),
            };
            match result {
                Ok(session) => Ok(Authenticated(session)),
                Err(VaultError::Unauthenticated) => {
                    let _ = state.auth_failure_limiter.check(ip);
                    tracing::info!(client = %ip, "authentication failed");
                    Err(ApiError::unauthenticated())
                }
                Err(other) => Err(other.into()),
            }
        })
    }
}
