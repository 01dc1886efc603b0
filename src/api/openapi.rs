//! The OpenAPI document, generated from the handlers. `openapi/openapi.json` is a committed copy that a test keeps equal.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{IntoResponses, Modify, OpenApi};

use super::error::ErrorBody;
use super::{alerts, cache, health, keys, models, proxy};

#[derive(OpenApi)]
#[openapi(
    info(title = "reliablegpt", description = "A reliability gateway for LLM apps: point any OpenAI SDK at it."),
    paths(
        health::healthz, health::readyz, proxy::metrics, keys::create, keys::get, keys::update, keys::revoke,
        proxy::chat, proxy::completions, proxy::embeddings, models::list, models::retrieve, cache::get, cache::lookup,
        cache::store, cache::purge, cache::mint_token, alerts::get_settings, alerts::put_settings, alerts::verify,
        alerts::list, alerts::events
    ),
    components(schemas(
        crate::vault::input::KeyInput, crate::vault::input::ProviderKeyInput, crate::vault::KeyStatus, ErrorBody
    )),
    modifiers(&BearerToken),
    tags(
        (name = "gateway", description = "OpenAI-compatible endpoints with fallbacks"),
        (name = "keys", description = "The key vault"),
        (name = "cache", description = "The semantic cache and scoped tokens"),
        (name = "alerts", description = "Error-spike alerts by email and per-minute event counts"),
        (name = "health", description = "Probes and metrics")
    )
)]
pub struct ApiDoc;

/// The error answers shared by the gateway routes (`/v1/chat/completions`, `/v1/completions`, `/v1/embeddings`).
/// Each variant's doc comment is its description.
#[derive(IntoResponses)]
pub enum GatewayErrors {
    /// Invalid request (`param` names the field), or the upstream's own 4xx returned unchanged.
    #[response(status = 400)]
    BadRequest(ErrorBody),
    /// Missing or invalid reliablegpt token (code `invalid_api_key`), or every upstream refused its key (code
    /// `upstream_credentials_invalid`).
    #[response(status = 401)]
    Unauthorized(ErrorBody),
    /// The body exceeds 32 MiB (code `payload_too_large`).
    #[response(status = 413)]
    PayloadTooLarge(ErrorBody),
    /// Every upstream rate-limited the request (code `upstream_rate_limited`), or too many failed authentications came
    /// from this client's address (code `rate_limit_exceeded`).
    #[response(status = 429, headers(("Retry-After" = u64, description = "Seconds to wait before retrying, when known")))]
    TooManyRequests(ErrorBody),
    /// Every upstream failed; the message lists each attempt (model, provider, masked key, failure class).
    #[response(status = 502)]
    BadGateway(ErrorBody),
    /// Overloaded: the key set's `max_concurrency` requests are in flight and this one waited `max_queue_ms` in the
    /// queue (code `overloaded`, with Retry-After); or no upstream is available (codes `no_available_upstream`,
    /// `upstream_unavailable`).
    #[response(status = 503, headers(("Retry-After" = u64, description = "Seconds to wait before retrying, when known")))]
    Unavailable(ErrorBody),
    /// The request's deadline passed (code `deadline_exceeded`) or every upstream timed out (code `upstream_timeout`).
    #[response(status = 504)]
    GatewayTimeout(ErrorBody),
}

struct BearerToken;

impl Modify for BearerToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        if let Some(components) = openapi.components.as_mut() {
            components.add_security_scheme(
                "token",
                SecurityScheme::Http(
                    HttpBuilder::new().scheme(HttpAuthScheme::Bearer).bearer_format("rgpt_ special token").build(),
                ),
            );
        }
    }
}

/// The document as committed: pretty JSON with a trailing newline.
pub fn document() -> String {
    let mut text = ApiDoc::openapi().to_pretty_json().unwrap_or_default();
    text.push('\n');
    text
}
