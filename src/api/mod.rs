//! HTTP handlers. They translate HTTP to module calls and back; no SQL and no business rules live here.

mod alerts;
mod auth;
mod cache;
pub mod client;
pub mod error;
mod health;
mod keys;
mod models;
pub mod openapi;
mod proxy;
pub mod rate_limit;
mod request_context;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{Method, header};
use actix_web::middleware::Next;
use actix_web::{HttpResponse, web};

use crate::egress::EgressPolicy;
use crate::engine::Engine;
use crate::vault::Vault;
pub use error::ApiError;
use rate_limit::ClientLimiter;
pub use request_context::request_context;

/// Largest body accepted on the vault endpoints (32 keys of 512 characters plus settings fit easily).
pub const KEYS_BODY_LIMIT: usize = 64 * 1024;

/// Largest body accepted on the cache endpoints (a 1 MiB answer, its escaping, and a 32 KiB conversation).
pub const CACHE_BODY_LIMIT: usize = 4 * 1024 * 1024;

/// Largest body accepted on the gateway endpoints (long prompts with inline images).
pub const GATEWAY_BODY_LIMIT: usize = 32 * 1024 * 1024;

/// Shared by every worker.
pub struct AppState {
    pub vault: Vault,
    pub pool: sqlx::PgPool,
    pub egress: EgressPolicy,
    pub key_set_limiter: ClientLimiter,
    pub auth_failure_limiter: ClientLimiter,
    /// How the client's address is found (behind trusted proxies: from their forwarding header).
    pub clients: client::ClientIdentity,
    pub engine: std::sync::Arc<Engine>,
    pub cache: std::sync::Arc<crate::cache::SemanticCache>,
    pub scoped_tokens: crate::vault::scoped::ScopedTokens,
    pub alerts: crate::alerts::Alerts,
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    let keys_json = web::JsonConfig::default()
        .limit(KEYS_BODY_LIMIT)
        .content_type_required(false)
        .error_handler(|err, _req| error::json_error(err, KEYS_BODY_LIMIT).into());
    let cache_json = web::JsonConfig::default()
        .limit(CACHE_BODY_LIMIT)
        .content_type_required(false)
        .error_handler(|err, _req| error::json_error(err, CACHE_BODY_LIMIT).into());
    cfg.route("/healthz", web::get().to(health::healthz))
        .route("/readyz", web::get().to(health::readyz))
        .route("/metrics", web::get().to(proxy::metrics))
        .route("/docs", web::get().to(docs_slash))
        .service(
            web::resource("/v1/keys")
                .app_data(keys_json.clone())
                .route(web::post().to(keys::create))
                .route(web::get().to(keys::get))
                .route(web::patch().to(keys::update))
                .route(web::delete().to(keys::revoke))
                .default_service(web::to(method_not_allowed)),
        )
        .service(
            web::resource("/v1/cache")
                .app_data(cache_json.clone())
                .route(web::get().to(cache::get))
                .route(web::post().to(cache::store))
                .route(web::delete().to(cache::purge))
                .default_service(web::to(method_not_allowed)),
        )
        .service(
            web::resource("/v1/cache/lookup")
                .app_data(cache_json.clone())
                .route(web::post().to(cache::lookup))
                .default_service(web::to(method_not_allowed)),
        )
        .service(
            web::resource("/v1/tokens")
                .app_data(cache_json)
                .route(web::post().to(cache::mint_token))
                .default_service(web::to(method_not_allowed)),
        )
        .service(
            web::resource("/v1/alerts/settings")
                .app_data(keys_json.clone())
                .route(web::get().to(alerts::get_settings))
                .route(web::put().to(alerts::put_settings))
                .default_service(web::to(method_not_allowed)),
        )
        .service(web::resource("/v1/alerts/verify").route(web::get().to(alerts::verify)))
        .service(web::resource("/v1/alerts").route(web::get().to(alerts::list)))
        .service(web::resource("/v1/events").route(web::get().to(alerts::events)))
        .service(
            web::scope("/v1")
                .route("/chat/completions", web::post().to(proxy::chat))
                .route("/completions", web::post().to(proxy::completions))
                .route("/embeddings", web::post().to(proxy::embeddings))
                .route("/models", web::get().to(models::list))
                // Fine-tuned and custom model ids contain `/` and `:`; SDKs may also send them percent-encoded.
                .route("/models/{model:.+}", web::get().to(models::retrieve)),
        );
}

pub async fn not_found(req: actix_web::HttpRequest) -> Result<actix_web::HttpResponse, ApiError> {
    Err(ApiError::not_found(&req))
}

async fn method_not_allowed(req: actix_web::HttpRequest) -> Result<actix_web::HttpResponse, ApiError> {
    Err(ApiError::method_not_allowed(&req))
}

/// Swagger UI is served under `/docs/` (its page links its assets relatively), so the bare path redirects there.
async fn docs_slash() -> HttpResponse {
    HttpResponse::PermanentRedirect().insert_header((header::LOCATION, "/docs/")).finish()
}

/// HEAD is answered as GET on every route, Swagger UI's included (RFC 9110 requires it wherever GET is served). The
/// HTTP layer remembers the method it parsed and sends the response's status and headers, Content-Length included,
/// without the body. Register it inside the access log so the log still shows HEAD.
pub async fn head_as_get(
    mut req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    if req.method() == Method::HEAD {
        req.head_mut().method = Method::GET;
    }
    next.call(req).await
}
