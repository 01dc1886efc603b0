//! The OpenAPI document, generated from the handlers. `openapi/openapi.json` is a committed copy that a test keeps equal.

use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, HeaderBuilder, Object, Ref, RefOr, Response, ResponseBuilder, Type};
use utoipa::{IntoResponses, Modify, OpenApi, ToSchema};

use super::error::ErrorBody;
use super::{alerts, cache, health, keys, models, proxy, responses, surface};

#[derive(OpenApi)]
#[openapi(
    info(title = "reliablegpt", description = "A reliability gateway for LLM apps: point any OpenAI SDK at it."),
    paths(
        health::healthz, health::readyz, proxy::metrics, keys::create, keys::get, keys::update, keys::revoke,
        proxy::chat, proxy::completions, proxy::embeddings, surface::moderations, surface::image_generations,
        surface::speech, surface::transcriptions, responses::create, responses::get, responses::delete,
        responses::cancel, responses::input_items, models::list, models::retrieve, cache::get, cache::lookup,
        cache::store, cache::purge, cache::mint_token, alerts::get_settings, alerts::put_settings, alerts::verify,
        alerts::list, alerts::events
    ),
    components(schemas(
        crate::vault::input::KeyInput, crate::vault::input::ProviderKeyInput, crate::vault::KeyStatus, ErrorBody,
        GatewayBody
    )),
    modifiers(&BearerToken, &SharedResponses),
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

/// The errors of the stored-response routes (`/v1/responses/{id}`, …/cancel, …/input_items) besides the gateway ones.
#[derive(IntoResponses)]
pub enum StoredResponseErrors {
    /// Not created through this key set, or deleted (code `response_not_found`); or the upstream's own 404, unchanged.
    #[response(status = 404)]
    NotFound(ErrorBody),
    /// The provider key that created it was removed from the key set (`pinned_key_removed`), is marked invalid
    /// (`pinned_key_invalid`), or its upstream cannot be called now (`pinned_key_unusable`). No other key is tried.
    #[response(status = 409)]
    Conflict(ErrorBody),
}

/// A gateway request body as reliablegpt reads it: `model` is required, `stream` must be a boolean when present; every
/// other field of the OpenAI request is forwarded as sent.
#[derive(ToSchema)]
#[allow(dead_code)] // documents the accepted shape; parsing goes through `proxy::parse`.
pub struct GatewayBody {
    /// The model asked for first: 1-256 characters, no control characters or commas.
    #[schema(min_length = 1, max_length = 256, example = "gpt-4o-mini")]
    model: String,
    /// `text/event-stream` answer when true (not for embeddings).
    stream: Option<bool>,
}

/// Answers every route can give, added to each operation so the document lists them where they happen: 405 (another
/// method; `Allow` lists the path's), and for operations with a body 408 (body too slow), 413 (too large) and, on the
/// management routes, 415 (not declared JSON); 401 and 429 wherever a token is checked.
struct SharedResponses;

impl SharedResponses {
    fn error(description: &str) -> ResponseBuilder {
        ResponseBuilder::new()
            .description(description)
            .content("application/json", ContentBuilder::new().schema(Some(Ref::from_schema_name("ErrorBody"))).build())
    }

    fn add(op: &mut Operation, status: &str, response: impl FnOnce() -> Response) {
        op.responses.responses.entry(status.to_owned()).or_insert_with(|| RefOr::T(response()));
    }

    fn apply(op: &mut Operation) {
        let header = |kind: Type, description: &str| {
            HeaderBuilder::new().schema(Object::with_type(kind)).description(Some(description)).build()
        };
        Self::add(op, "405", || {
            Self::error("Method not allowed on this path (code `method_not_allowed`).")
                .header("Allow", header(Type::String, "The methods this path serves"))
                .build()
        });
        if op.request_body.is_some() {
            Self::add(op, "408", || {
                Self::error(
                    "The body did not arrive within `RELIABLEGPT_BODY_READ_TIMEOUT_MS` (code `request_timeout`); the \
                     connection is closed.",
                )
                .build()
            });
            Self::add(op, "413", || {
                Self::error("The body exceeds this route's limit (code `payload_too_large`).").build()
            });
            let gateway = op.tags.as_ref().is_some_and(|t| t.iter().any(|t| t == "gateway"));
            if !gateway {
                Self::add(op, "415", || {
                    Self::error(
                        "The body was not sent as `Content-Type: application/json` (code `unsupported_media_type`).",
                    )
                    .build()
                });
            }
        }
        if op.security.is_some() {
            Self::add(op, "401", || Self::error("Missing or invalid token (code `invalid_api_key`).").build());
            Self::add(op, "429", || {
                Self::error("Too many failed authentications from this address (code `rate_limit_exceeded`).")
                    .header("Retry-After", header(Type::Integer, "Seconds to wait before retrying"))
                    .build()
            });
        }
    }
}

impl Modify for SharedResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for item in openapi.paths.paths.values_mut() {
            for op in [&mut item.get, &mut item.put, &mut item.post, &mut item.delete, &mut item.patch] {
                if let Some(op) = op.as_mut() {
                    Self::apply(op);
                }
            }
        }
    }
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
