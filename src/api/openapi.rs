//! The OpenAPI document, generated from the handlers. `openapi/openapi.json` is a committed copy that a test keeps equal.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{health, keys, proxy};

#[derive(OpenApi)]
#[openapi(
    info(title = "reliablegpt", description = "A reliability gateway for LLM apps: point any OpenAI SDK at it."),
    paths(
        health::healthz, health::readyz, proxy::metrics, keys::create, keys::get, keys::update, keys::revoke,
        proxy::chat, proxy::completions, proxy::embeddings, proxy::models
    ),
    components(schemas(crate::vault::input::KeyInput, crate::vault::input::ProviderKeyInput, crate::vault::KeyStatus)),
    modifiers(&BearerToken),
    tags(
        (name = "gateway", description = "OpenAI-compatible endpoints with fallbacks"),
        (name = "keys", description = "The key vault"),
        (name = "health", description = "Probes and metrics")
    )
)]
pub struct ApiDoc;

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
