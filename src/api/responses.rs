//! OpenAI's Responses API: `POST /v1/responses` through the engine like chat, and the calls about stored responses.
//!
//! A response lives in the provider account that created it, so the gateway records which provider key answered each
//! stored response (ids only) and sends everything about it later (`previous_response_id`, `GET`, `DELETE`, cancel,
//! input items) with that key alone. When that key cannot be used, the answer says why; another account is never
//! tried, because it would not know the response (or, worse, would answer without its context).

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::Value;
use uuid::Uuid;

use super::auth::Gateway;
use super::openapi::{GatewayErrors, StoredResponseErrors};
use super::{ApiError, AppState, GATEWAY_BODY_LIMIT, proxy};
use crate::engine::responses::SUBSTITUTE_ID_PREFIX;
use crate::engine::responses::{
    StoredCall, StoredCallError, response_id_of_body, response_id_of_event, valid_response_id,
};
use crate::engine::{Endpoint, Reply};
use crate::vault::{OpenKeySet, Provider};

/// Responses API: fallbacks, key rotation, retries, breakers, hedging and pacing as for chat. A request continuing a
/// stored response (`previous_response_id`) is sent only with the key that created it.
#[utoipa::path(
    post, path = "/v1/responses", tag = "gateway", security(("token" = [])),
    request_body(content = super::openapi::GatewayBody, description = "OpenAI Responses API request, forwarded as sent (only `model` changes on fallback)."),
    params(
        ("x-reliablegpt-fallback" = Option<String>, Header, description = "Comma list of models overriding the policy's fallback_strategy"),
        ("x-reliablegpt-instance" = Option<String>, Header, description = "Customer instance id, carried on every engine event"),
        ("x-reliablegpt-caching" = Option<bool>, Header, description = "Override the policy's caching for this request"),
        ("x-reliablegpt-timeout-ms" = Option<u64>, Header, description = "Deadline in ms (1-600000): of the whole answer, or of a stream's first event"),
        ("x-reliablegpt-hedge-ms" = Option<u64>, Header, description = "Start the next target in parallel if the first has sent nothing after this long"),
    ),
    responses(
        (status = 200, description = "The answering upstream's response object, or its typed events (`text/event-stream`) when `stream` is true; a stream broken after its first event ends with an `error` event, never `response.completed`. Headers as for chat."),
        (status = 404, description = "`previous_response_id` was not created through this key set (`response_not_found`)", body = super::error::ErrorBody),
        (status = 409, description = "The key that created `previous_response_id` was removed or is invalid (`pinned_key_removed`, `pinned_key_invalid`)", body = super::error::ErrorBody),
        GatewayErrors,
    )
)]
pub async fn create(gw: Gateway, req: HttpRequest, body: web::Payload) -> Result<HttpResponse, ApiError> {
    let Gateway(set, state) = gw;
    let (raw, body) = proxy::read_json(&req, body, GATEWAY_BODY_LIMIT).await?;
    let previous = match body.get("previous_response_id") {
        None | Some(Value::Null) => None,
        Some(Value::String(id)) if valid_response_id(id) => Some(id.clone()),
        Some(_) => {
            return Err(ApiError::invalid("previous_response_id", "must be a response id (1-128 of A-Z a-z 0-9 _ -)"));
        }
    };
    // `store: false` responses are not kept upstream: nothing to pin.
    let stored = body.get("store") != Some(&Value::Bool(false));
    let mut request = proxy::parse(&req, raw, &body, Endpoint::Responses)?.with_body(body);
    if !set.keys.iter().any(|k| k.provider == Provider::Openai) {
        return Err(ApiError::invalid(
            "model",
            "this key set has only Azure OpenAI keys, and reliablegpt does not send the Responses API to Azure yet; \
             add an OpenAI or OpenAI-compatible key",
        ));
    }
    if let Some(id) = &previous {
        request.pinned_key = Some(pinned_key(&state, &set, id, Some("previous_response_id")).await?);
    }
    let reply = state.engine.serve(set.clone(), request).await;
    if stored {
        record(&state, &set, &reply).await;
    }
    Ok(proxy::respond(reply))
}

/// The longest an answer waits for its pin to be recorded.
const RECORD_WITHIN: std::time::Duration = std::time::Duration::from_secs(2);

/// Remembers which key created the answered response, before the client can ask about it.
async fn record(state: &AppState, set: &OpenKeySet, reply: &Reply) {
    let (key_id, id) = match reply {
        Reply::Upstream { status: 200, body, served } => (served.key_id, response_id_of_body(body)),
        Reply::Stream { first, served, .. } => (served.key_id, response_id_of_event(first)),
        _ => return,
    };
    let (Some(key_id), Some(id)) = (key_id, id) else { return };
    // The answer still goes out when this fails; follow-ups to this response are then refused as unknown.
    match tokio::time::timeout(RECORD_WITHIN, state.vault.record_response_key(set.key_set_id, &id, key_id)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "could not record which key created a response"),
        Err(_) => tracing::warn!("recording which key created a response took too long; answering without it"),
    }
}

/// The key that created `id`, when it can still be used; otherwise the error saying why.
async fn pinned_key(state: &AppState, set: &OpenKeySet, id: &str, param: Option<&str>) -> Result<Uuid, ApiError> {
    let refuse = |status: u16, code: &'static str, why: String| {
        Err(ApiError::stored_response(
            status,
            code,
            format!(
                "Response '{id}' {why} A stored response lives in the provider account that created it, so the \
                 gateway sends it only with that key and never to another account."
            ),
            param,
        ))
    };
    match state.vault.response_key(set.key_set_id, id).await? {
        // Substitutes (cache, graceful_string) carry ids the gateway made up; no provider stores them.
        None if id.starts_with(SUBSTITUTE_ID_PREFIX) => refuse(
            404,
            "response_not_found",
            "was answered by the gateway itself (a cached answer or the graceful_string), so no provider stores it."
                .into(),
        ),
        None => refuse(
            404,
            "response_not_found",
            "was not created through this key set (or was deleted), so the gateway does not know which provider key \
             holds it."
                .into(),
        ),
        Some(None) => refuse(
            409,
            "pinned_key_removed",
            "was created with a provider key that has since been removed from this key set.".into(),
        ),
        Some(Some(key_id)) => match set.keys.iter().find(|k| k.id == key_id) {
            None => {
                refuse(409, "pinned_key_unusable", "was created with a provider key that cannot be used now.".into())
            }
            Some(key) if key.invalid_since.is_some() => {
                let masked = crate::vault::input::mask(secrecy::ExposeSecret::expose_secret(&key.secret));
                refuse(
                    409,
                    "pinned_key_invalid",
                    format!(
                        "was created with provider key {masked}, which is marked invalid because the provider \
                         refused it. Fix or revive that key (PATCH /v1/keys) to use this response again."
                    ),
                )
            }
            Some(_) => Ok(key_id),
        },
    }
}

/// `GET /v1/responses/{id}`: the stored response, from the account that created it.
#[utoipa::path(
    get, path = "/v1/responses/{response_id}", tag = "gateway", security(("token" = [])),
    params(("response_id" = String, Path, description = "A response id created through this key set")),
    responses(
        (status = 200, description = "The upstream's answer, unchanged (its errors too)"),
        StoredResponseErrors,
        GatewayErrors,
    )
)]
pub async fn get(gw: Gateway, req: HttpRequest, id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    stored(gw, &req, &id, StoredCall::Get).await
}

/// `DELETE /v1/responses/{id}`, with the key that created it.
#[utoipa::path(
    delete, path = "/v1/responses/{response_id}", tag = "gateway", security(("token" = [])),
    params(("response_id" = String, Path, description = "A response id created through this key set")),
    responses((status = 200, description = "The upstream's answer, unchanged (its errors too)"), StoredResponseErrors, GatewayErrors)
)]
pub async fn delete(gw: Gateway, req: HttpRequest, id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    stored(gw, &req, &id, StoredCall::Delete).await
}

/// `POST /v1/responses/{id}/cancel` (background responses), with the key that created it.
#[utoipa::path(
    post, path = "/v1/responses/{response_id}/cancel", tag = "gateway", security(("token" = [])),
    params(("response_id" = String, Path, description = "A response id created through this key set")),
    responses((status = 200, description = "The upstream's answer, unchanged (its errors too)"), StoredResponseErrors, GatewayErrors)
)]
pub async fn cancel(gw: Gateway, req: HttpRequest, id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    stored(gw, &req, &id, StoredCall::Cancel).await
}

/// `GET /v1/responses/{id}/input_items`, with the key that created it (query parameters are passed on).
#[utoipa::path(
    get, path = "/v1/responses/{response_id}/input_items", tag = "gateway", security(("token" = [])),
    params(("response_id" = String, Path, description = "A response id created through this key set")),
    responses((status = 200, description = "The upstream's answer, unchanged (its errors too)"), StoredResponseErrors, GatewayErrors)
)]
pub async fn input_items(gw: Gateway, req: HttpRequest, id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    stored(gw, &req, &id, StoredCall::InputItems).await
}

async fn stored(gw: Gateway, req: &HttpRequest, id: &str, call: StoredCall) -> Result<HttpResponse, ApiError> {
    let Gateway(set, state) = gw;
    if !valid_response_id(id) {
        return Err(ApiError::invalid("response_id", "must be a response id (1-128 of A-Z a-z 0-9 _ -)"));
    }
    let query = req.query_string();
    if call == StoredCall::Get && query.split('&').any(|pair| pair == "stream=true") {
        return Err(ApiError::invalid("stream", "streaming a stored response is not supported by the gateway"));
    }
    let key_id = pinned_key(&state, &set, id, None).await?;
    let answer = match state.engine.stored_response_call(&set, key_id, call, id, query).await {
        Ok(answer) => answer,
        Err(StoredCallError::KeyGone) => {
            return Err(ApiError::stored_response(
                409,
                "pinned_key_removed",
                format!("Response '{id}' was created with a provider key that is no longer in this key set."),
                None,
            ));
        }
        Err(StoredCallError::Unusable) => {
            return Err(ApiError::stored_response(
                409,
                "pinned_key_unusable",
                format!("Response '{id}' was created with a provider key whose upstream cannot be called now."),
                None,
            ));
        }
        Err(StoredCallError::BadQuery) => {
            return Err(ApiError::invalid("query", "is not valid in a URL, so it cannot be passed on"));
        }
        Err(StoredCallError::Upstream(detail)) => {
            tracing::warn!(detail = %detail, "a call about a stored response failed");
            return Err(ApiError::stored_response(
                502,
                "upstream_failed",
                format!("The provider holding response '{id}' did not answer: {detail}."),
                None,
            ));
        }
    };
    if call == StoredCall::Delete
        && answer.status == 200
        && let Err(e) = state.vault.forget_response(set.key_set_id, id).await
    {
        tracing::warn!(error = %e, "could not forget a deleted response");
    }
    Ok(HttpResponse::build(StatusCode::from_u16(answer.status).unwrap_or(StatusCode::BAD_GATEWAY))
        .content_type("application/json")
        .body(answer.body))
}
