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
mod responses;
mod surface;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::error::PayloadError;
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
    /// Longest a client may take to send its body (see [`bound_body_time`]).
    pub body_read_timeout: std::time::Duration,
}

/// JSON bodies of the management endpoints: `Content-Type: application/json` (or `…+json`) is required, so a browser
/// form cannot post one without a CORS preflight.
fn json_config(limit: usize) -> web::JsonConfig {
    web::JsonConfig::default()
        .limit(limit)
        .content_type_required(true)
        .error_handler(move |err, _req| error::json_error(err, limit).into())
}

/// A route's resource whose other methods get 405 with `Allow` (`HEAD` is served wherever `GET` is).
fn resource(path: &str, allow: &'static str) -> actix_web::Resource {
    web::resource(path).default_service(web::to(move |req: actix_web::HttpRequest| async move {
        Err::<HttpResponse, _>(ApiError::method_not_allowed(&req, allow))
    }))
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    let keys_json = json_config(KEYS_BODY_LIMIT);
    let cache_json = json_config(CACHE_BODY_LIMIT);
    // The router tries resources in this order, one pattern after another: the gateway's hot paths go first.
    cfg.service(resource("/v1/chat/completions", "POST").route(web::post().to(proxy::chat)))
        .service(resource("/v1/completions", "POST").route(web::post().to(proxy::completions)))
        .service(resource("/v1/embeddings", "POST").route(web::post().to(proxy::embeddings)))
        .service(resource("/healthz", "GET, HEAD").route(web::get().to(health::healthz)))
        .service(resource("/readyz", "GET, HEAD").route(web::get().to(health::readyz)))
        .service(resource("/docs", "GET, HEAD").route(web::get().to(docs_slash)))
        .service(
            resource("/v1/keys", "GET, HEAD, POST, PATCH, DELETE")
                .app_data(keys_json.clone())
                .route(web::post().to(keys::create))
                .route(web::get().to(keys::get))
                .route(web::patch().to(keys::update))
                .route(web::delete().to(keys::revoke)),
        )
        .service(
            resource("/v1/cache", "GET, HEAD, POST, DELETE")
                .app_data(cache_json.clone())
                .route(web::get().to(cache::get))
                .route(web::post().to(cache::store))
                .route(web::delete().to(cache::purge)),
        )
        .service(resource("/v1/cache/lookup", "POST").app_data(cache_json.clone()).route(web::post().to(cache::lookup)))
        .service(resource("/v1/tokens", "POST").app_data(cache_json).route(web::post().to(cache::mint_token)))
        .service(
            resource("/v1/alerts/settings", "GET, HEAD, PUT")
                .app_data(keys_json)
                .route(web::get().to(alerts::get_settings))
                .route(web::put().to(alerts::put_settings)),
        )
        .service(resource("/v1/alerts/verify", "GET, HEAD").route(web::get().to(alerts::verify)))
        .service(resource("/v1/alerts", "GET, HEAD").route(web::get().to(alerts::list)))
        .service(resource("/v1/events", "GET, HEAD").route(web::get().to(alerts::events)))
        .service(resource("/v1/moderations", "POST").route(web::post().to(surface::moderations)))
        .service(resource("/v1/images/generations", "POST").route(web::post().to(surface::image_generations)))
        .service(resource("/v1/audio/speech", "POST").route(web::post().to(surface::speech)))
        .service(resource("/v1/audio/transcriptions", "POST").route(web::post().to(surface::transcriptions)))
        .service(resource("/v1/responses", "POST").route(web::post().to(responses::create)))
        .service(
            resource("/v1/responses/{id}", "GET, HEAD, DELETE")
                .route(web::get().to(responses::get))
                .route(web::delete().to(responses::delete)),
        )
        .service(resource("/v1/responses/{id}/cancel", "POST").route(web::post().to(responses::cancel)))
        .service(resource("/v1/responses/{id}/input_items", "GET, HEAD").route(web::get().to(responses::input_items)))
        .service(resource("/v1/models", "GET, HEAD").route(web::get().to(models::list)))
        // Fine-tuned and custom model ids contain `/` and `:`; SDKs may also send them percent-encoded.
        .service(resource("/v1/models/{model:.+}", "GET, HEAD").route(web::get().to(models::retrieve)));
}

/// `/metrics`: on the main listener, or alone on `RELIABLEGPT_METRICS_LISTEN`.
pub fn metrics_route(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/metrics", "GET, HEAD").route(web::get().to(proxy::metrics)));
}

pub async fn not_found(req: actix_web::HttpRequest) -> Result<actix_web::HttpResponse, ApiError> {
    Err(ApiError::not_found(&req))
}

/// Swagger UI is served under `/docs/` (its page links its assets relatively), so the bare path redirects there.
async fn docs_slash() -> HttpResponse {
    HttpResponse::PermanentRedirect().insert_header((header::LOCATION, "/docs/")).finish()
}

/// HEAD is answered as GET on every route, Swagger UI's included (RFC 9110 requires it wherever GET is served). The
/// HTTP layer remembers the method it parsed and sends the response's status and headers, Content-Length included,
/// without the body. On the main listener [`request_context`] does this after logging the method, so the log still
/// shows HEAD; this middleware does it for the metrics listener.
pub async fn head_as_get(
    mut req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    serve_head_as_get(&mut req);
    next.call(req).await
}

fn serve_head_as_get(req: &mut ServiceRequest) {
    if req.method() == Method::HEAD {
        req.head_mut().method = Method::GET;
    }
}

/// Bounds the time a client may take to send its body: past the deadline the body stream ends in a timed-out read,
/// which the JSON readers answer with 408 `request_timeout`. Without it, a client trickling one byte a second holds its
/// request (and the handler's memory) for as long as it likes. Applied by [`request_context`].
fn bound_body_time(req: &mut ServiceRequest) {
    let timeout = req.app_data::<web::Data<AppState>>().map(|s| s.body_read_timeout);
    if let Some(timeout) = timeout {
        let payload = actix_web::HttpMessage::take_payload(req);
        let timed =
            DeadlinePayload { payload, deadline: tokio::time::Instant::now() + timeout, timer: None, ended: false };
        req.set_payload(actix_web::dev::Payload::Stream { payload: Box::pin(timed) });
    }
}

/// A request body that ends in a timed-out read once its deadline passes. The timer is only armed when the body is
/// not all there yet: a small body has usually arrived with the headers, and then no timer is set at all.
struct DeadlinePayload {
    payload: actix_web::dev::Payload,
    deadline: tokio::time::Instant,
    timer: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    ended: bool,
}

impl futures_util::Stream for DeadlinePayload {
    type Item = Result<web::Bytes, PayloadError>;

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::future::Future;
        use std::task::Poll;
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(None);
        }
        if let Poll::Ready(item) = std::pin::Pin::new(&mut this.payload).poll_next(cx) {
            this.ended = item.is_none();
            return Poll::Ready(item);
        }
        let timer = this.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(this.deadline)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => {
                this.ended = true;
                Poll::Ready(Some(Err(PayloadError::Io(std::io::Error::from(std::io::ErrorKind::TimedOut)))))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Whether a body read failed because of [`bound_body_time`].
pub fn body_timed_out(e: &PayloadError) -> bool {
    matches!(e, PayloadError::Io(io) if io.kind() == std::io::ErrorKind::TimedOut)
}
