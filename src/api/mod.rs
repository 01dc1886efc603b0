//! HTTP handlers. They translate HTTP to module calls and back; no SQL and no business rules live here.

mod auth;
pub mod error;
mod health;
mod keys;
pub mod openapi;
mod proxy;
pub mod rate_limit;
mod request_context;

use actix_web::web;

use crate::egress::EgressPolicy;
use crate::engine::Engine;
use crate::vault::Vault;
pub use error::ApiError;
use rate_limit::ClientLimiter;
pub use request_context::request_context;

/// Largest body accepted on the vault endpoints (32 keys of 512 characters plus settings fit easily).
pub const KEYS_BODY_LIMIT: usize = 64 * 1024;

/// Largest body accepted on the gateway endpoints (long prompts with inline images).
pub const GATEWAY_BODY_LIMIT: usize = 32 * 1024 * 1024;

/// Shared by every worker.
pub struct AppState {
    pub vault: Vault,
    pub pool: sqlx::PgPool,
    pub egress: EgressPolicy,
    pub key_set_limiter: ClientLimiter,
    pub auth_failure_limiter: ClientLimiter,
    pub engine: std::sync::Arc<Engine>,
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    let keys_json = web::JsonConfig::default()
        .limit(KEYS_BODY_LIMIT)
        .content_type_required(false)
        .error_handler(|err, _req| error::json_error(err, KEYS_BODY_LIMIT).into());
    cfg.route("/healthz", web::get().to(health::healthz))
        .route("/readyz", web::get().to(health::readyz))
        .route("/metrics", web::get().to(proxy::metrics))
        .service(
            web::resource("/v1/keys")
                .app_data(keys_json)
                .route(web::post().to(keys::create))
                .route(web::get().to(keys::get))
                .route(web::patch().to(keys::update))
                .route(web::delete().to(keys::revoke))
                .default_service(web::to(method_not_allowed)),
        )
        .service(
            web::scope("/v1")
                .route("/chat/completions", web::post().to(proxy::chat))
                .route("/completions", web::post().to(proxy::completions))
                .route("/embeddings", web::post().to(proxy::embeddings))
                .route("/models", web::get().to(proxy::models)),
        );
}

pub async fn not_found(req: actix_web::HttpRequest) -> Result<actix_web::HttpResponse, ApiError> {
    Err(ApiError::not_found(&req))
}

async fn method_not_allowed(req: actix_web::HttpRequest) -> Result<actix_web::HttpResponse, ApiError> {
    Err(ApiError::method_not_allowed(&req))
}
