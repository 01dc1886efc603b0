//! The OpenAI-compatible gateway endpoints: parse at the edge, hand to the engine, translate its reply to HTTP.

use std::convert::Infallible;
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::http::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, HttpResponseBuilder, web};
use serde_json::Value;

use super::auth::Gateway;
use super::openapi::GatewayErrors;
use super::request_context::UpstreamTime;
use super::{ApiError, AppState, GATEWAY_BODY_LIMIT};
use crate::engine::substitute::SubstituteSource;
use crate::engine::surface::BodyBroken;
use crate::engine::{DEFAULT_INSTANCE, Endpoint, GatewayRequest, Reply, Served, valid_instance};
use actix_web::web::Bytes;

const MAX_FALLBACKS: usize = 16;
/// The top-level fields [`parse`] reads.
const HEAD_FIELDS: &[&str] = &["model", "stream", "stream_options"];
const MAX_TIMEOUT_MS: u64 = 600_000;

// Header names as constants: a `&str` name is parsed and validated on every lookup or insert.
const FALLBACK: HeaderName = HeaderName::from_static("x-reliablegpt-fallback");
const INSTANCE: HeaderName = HeaderName::from_static("x-reliablegpt-instance");
const CACHING: HeaderName = HeaderName::from_static("x-reliablegpt-caching");
const TIMEOUT_MS: HeaderName = HeaderName::from_static("x-reliablegpt-timeout-ms");
const HEDGE_MS: HeaderName = HeaderName::from_static("x-reliablegpt-hedge-ms");
const MODEL: HeaderName = HeaderName::from_static("x-reliablegpt-model");
const PROVIDER: HeaderName = HeaderName::from_static("x-reliablegpt-provider");
const ATTEMPTS: HeaderName = HeaderName::from_static("x-reliablegpt-attempts");
const CACHE: HeaderName = HeaderName::from_static("x-reliablegpt-cache");
const FALLBACK_REASON: HeaderName = HeaderName::from_static("x-reliablegpt-fallback-reason");

/// Chat completions with fallbacks, key rotation, retries and stream rescue. OpenAI's request and response format.
#[utoipa::path(
    post, path = "/v1/chat/completions", tag = "gateway", security(("token" = [])),
    request_body(content = super::openapi::GatewayBody, description = "OpenAI chat completion request, forwarded as sent (only `model` changes on fallback)."),
    params(
        ("x-reliablegpt-fallback" = Option<String>, Header, description = "Comma list of models overriding the policy's fallback_strategy"),
        ("x-reliablegpt-instance" = Option<String>, Header, description = "Customer instance id (1-128 of A-Z a-z 0-9 . _ : -; default `default`), carried on every engine event"),
        ("x-reliablegpt-caching" = Option<bool>, Header, description = "Override the policy's caching for this request: write-through of the answer, and a cached answer when every upstream fails or the key set is overloaded"),
        ("x-reliablegpt-timeout-ms" = Option<u64>, Header, description = "Deadline in ms (1-600000): of the whole answer for a plain request; of the first event for a stream (then the idle timeout bounds the gap between events)"),
        ("x-reliablegpt-hedge-ms" = Option<u64>, Header, description = "Start the next target in parallel if the first has sent nothing after this long"),
    ),
    responses(
        (status = 200, description = "The answering upstream's body, or a cached answer in the same shape; headers x-reliablegpt-model, -provider, -attempts, -fallback-reason, -cache (miss, hit, overload-hit), -cache-similarity. `text/event-stream` when `stream` is true."),
        GatewayErrors,
    )
)]
pub async fn chat(gw: Gateway, req: HttpRequest, body: web::Payload) -> Result<HttpResponse, ApiError> {
    forward(gw, &req, body, Endpoint::Chat).await
}

/// Legacy completions, same engine.
#[utoipa::path(
    post, path = "/v1/completions", tag = "gateway", security(("token" = [])),
    request_body(content = super::openapi::GatewayBody, description = "OpenAI completion request; other fields are forwarded as sent."),
    responses((status = 200, description = "The answering upstream's body"), GatewayErrors)
)]
pub async fn completions(gw: Gateway, req: HttpRequest, body: web::Payload) -> Result<HttpResponse, ApiError> {
    forward(gw, &req, body, Endpoint::Completions).await
}

/// Embeddings; fallbacks only between models of the same dimension.
#[utoipa::path(
    post, path = "/v1/embeddings", tag = "gateway", security(("token" = [])),
    request_body(content = super::openapi::GatewayBody, description = "OpenAI embeddings request; other fields are forwarded as sent."),
    responses((status = 200, description = "The answering upstream's body"), GatewayErrors)
)]
pub async fn embeddings(gw: Gateway, req: HttpRequest, body: web::Payload) -> Result<HttpResponse, ApiError> {
    forward(gw, &req, body, Endpoint::Embeddings).await
}

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", tag = "health", responses((status = 200, description = "OpenMetrics text format")))]
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    let (open, half) = state.engine.breakers().counts();
    HttpResponse::Ok()
        .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
        .body(state.engine.metrics.render(open, half))
}

async fn forward(
    gw: Gateway,
    http: &HttpRequest,
    payload: web::Payload,
    endpoint: Endpoint,
) -> Result<HttpResponse, ApiError> {
    let Gateway(set, state) = gw;
    let raw = read_body(http, payload, GATEWAY_BODY_LIMIT).await?;
    // Write-through reads the whole conversation: build its tree now. Otherwise only the top-level fields the edge
    // reads are built, and the rest is checked without building it (the engine builds the tree if a fallback needs it).
    let caching = match http.headers().get(&CACHING).map(|v| v.to_str().map(str::trim)) {
        Some(Ok(header)) => header == "true",
        _ => set.policy.caching,
    };
    let request = if caching && endpoint.generates_text() {
        let body = parse_json(&raw, GATEWAY_BODY_LIMIT)?;
        parse(http, raw, &body, endpoint)?.with_body(body)
    } else {
        let head = crate::object::unique_keys_keeping(&raw, HEAD_FIELDS).map_err(|e| {
            super::error::json_error(actix_web::error::JsonPayloadError::Deserialize(e), GATEWAY_BODY_LIMIT)
        })?;
        parse(http, raw, &Value::Object(head), endpoint)?
    };
    let reply = state.engine.serve(set, request).await;
    Ok(respond(reply))
}

/// The engine's reply as HTTP.
pub(super) fn respond(reply: Reply) -> HttpResponse {
    let (mut res, upstream_time) = match reply {
        Reply::Upstream { status, body, served } => {
            let mut res = HttpResponse::build(StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY));
            served_headers(&mut res, &served);
            (res.content_type("application/json").body(body), served.upstream_time)
        }
        Reply::Stream { first, rest, served, done: _ } => {
            let mut res = HttpResponse::Ok();
            served_headers(&mut res, &served);
            let first = futures_util::stream::once(async move { Ok::<_, Infallible>(first) });
            let rest = futures_util::stream::unfold(rest, |mut rx| async move {
                rx.recv().await.map(|bytes| (Ok::<_, Infallible>(bytes), rx))
            });
            let res = sse_headers(&mut res).streaming(futures_util::StreamExt::chain(first, rest));
            (res, served.upstream_time)
        }
        Reply::Bytes { status, content_type, first, rest, served } => {
            let mut res = HttpResponse::build(StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY));
            served_headers(&mut res, &served);
            // actix and reqwest use different versions of `http`: the value is copied over.
            let content_type = content_type
                .and_then(|v| HeaderValue::from_bytes(v.as_bytes()).ok())
                .unwrap_or_else(|| HeaderValue::from_static("application/octet-stream"));
            res.insert_header((CONTENT_TYPE, content_type));
            let first = futures_util::stream::once(async move { Ok::<_, BodyBroken>(first) });
            let rest =
                futures_util::stream::unfold(rest, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
            (res.streaming(futures_util::StreamExt::chain(first, rest)), served.upstream_time)
        }
        Reply::Substitute { body, stream, source, served } => {
            let mut res = HttpResponse::Ok();
            served_headers(&mut res, &served);
            match source {
                SubstituteSource::Graceful => {
                    res.insert_header(("x-reliablegpt-graceful", "true"));
                }
                SubstituteSource::Cache { similarity, overload } => {
                    res.insert_header(("x-reliablegpt-cache", if overload { "overload-hit" } else { "hit" }))
                        .insert_header(("x-reliablegpt-cache-similarity", format!("{similarity:.3}")));
                }
            }
            let res =
                if stream { sse_headers(&mut res).body(body) } else { res.content_type("application/json").body(body) };
            (res, served.upstream_time)
        }
        Reply::Failed { status, code, message, retry_after, served } => {
            let mut error = ApiError::upstream(status, code, message);
            if let Some(wait) = retry_after {
                error = error.with_retry_after(wait.as_secs_f64().ceil() as u64);
            }
            let mut res = actix_web::ResponseError::error_response(&error);
            if let Ok(attempts) = HeaderValue::from_str(&served.attempts.to_string()) {
                res.headers_mut().insert(ATTEMPTS, attempts);
            }
            (res, served.upstream_time)
        }
    };
    res.extensions_mut().insert(UpstreamTime(upstream_time));
    res
}

fn sse_headers(res: &mut HttpResponseBuilder) -> &mut HttpResponseBuilder {
    res.insert_header((CONTENT_TYPE, "text/event-stream"))
        .insert_header(("cache-control", "no-cache"))
        .insert_header(("x-accel-buffering", "no"))
}

fn served_headers(res: &mut HttpResponseBuilder, served: &Served) {
    if let Ok(model) = HeaderValue::from_str(&served.model) {
        res.insert_header((MODEL, model));
    }
    if let Some(provider) = served.provider {
        res.insert_header((PROVIDER, HeaderValue::from_static(provider.as_str())));
    }
    res.insert_header((ATTEMPTS, HeaderValue::from(served.attempts)))
        .insert_header((CACHE, HeaderValue::from_static("miss")));
    if let Some(reason) = served.fallback_reason {
        res.insert_header((FALLBACK_REASON, HeaderValue::from_static(reason.as_str())));
    }
}

/// Reads the body within `limit` and parses it, keeping the raw bytes to forward unchanged.
pub(super) async fn read_json(
    http: &HttpRequest,
    payload: web::Payload,
    limit: usize,
) -> Result<(Bytes, Value), ApiError> {
    let raw = read_body(http, payload, limit).await?;
    let value = parse_json(&raw, limit)?;
    Ok((raw, value))
}

/// The body as a tree: a JSON object with distinct top-level keys.
fn parse_json(raw: &[u8], limit: usize) -> Result<Value, ApiError> {
    let value = serde_json::from_slice::<crate::object::UniqueKeys>(raw)
        .map_err(|e| super::error::json_error(actix_web::error::JsonPayloadError::Deserialize(e), limit))?;
    Ok(Value::Object(value.0))
}

/// Reads the body within `limit` (413 past it, 408 when the client is too slow).
pub(super) async fn read_body(http: &HttpRequest, mut payload: web::Payload, limit: usize) -> Result<Bytes, ApiError> {
    let declared = http
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::payload_too_large(limit));
    }
    let mut buffer = web::BytesMut::with_capacity(declared.unwrap_or(1024));
    while let Some(chunk) = futures_util::StreamExt::next(&mut payload).await {
        let chunk = chunk.map_err(|e| {
            if super::body_timed_out(&e) {
                ApiError::request_timeout()
            } else {
                ApiError::bad_json("Could not read the request body.")
            }
        })?;
        if buffer.len() + chunk.len() > limit {
            return Err(ApiError::payload_too_large(limit));
        }
        buffer.extend_from_slice(&chunk);
    }
    Ok(buffer.freeze())
}

/// The request from its headers and the body's top-level fields (`body` may hold only `model`, `stream` and
/// `stream_options`). The tree of the whole body is built from `raw` when the engine needs it, unless the caller
/// hands it over with [`GatewayRequest::with_body`].
pub(super) fn parse(
    http: &HttpRequest,
    raw: Bytes,
    body: &Value,
    endpoint: Endpoint,
) -> Result<GatewayRequest, ApiError> {
    let Value::Object(map) = body else {
        return Err(ApiError::bad_json("The request body must be a JSON object."));
    };
    let model = match map.get("model") {
        Some(Value::String(m)) if valid_model(m) => m.clone(),
        Some(_) => return Err(ApiError::invalid("model", "must be a model name of 1-256 characters")),
        None => return Err(ApiError::invalid("model", "is required")),
    };
    let stream = match map.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(ApiError::invalid("stream", "must be a boolean")),
    };
    if stream && endpoint == Endpoint::Embeddings {
        return Err(ApiError::invalid("stream", "embeddings cannot be streamed"));
    }
    let header = |name: &HeaderName| -> Result<Option<&str>, ApiError> {
        match http.headers().get(name) {
            None => Ok(None),
            Some(v) => {
                v.to_str().map(|s| Some(s.trim())).map_err(|_| ApiError::invalid(name.as_str(), "must be ASCII"))
            }
        }
    };
    let fallbacks = match header(&FALLBACK)? {
        None => None,
        Some(list) => {
            let models: Vec<String> =
                list.split(',').map(str::trim).filter(|m| !m.is_empty()).map(str::to_owned).collect();
            if models.len() > MAX_FALLBACKS || !models.iter().all(|m| valid_model(m)) {
                return Err(ApiError::invalid(
                    "x-reliablegpt-fallback",
                    format!("must be a comma list of at most {MAX_FALLBACKS} model names"),
                ));
            }
            Some(models)
        }
    };
    let instance = match header(&INSTANCE)? {
        None => DEFAULT_INSTANCE.to_owned(),
        Some(id) if valid_instance(id) => id.to_owned(),
        Some(_) => {
            return Err(ApiError::invalid("x-reliablegpt-instance", "must be 1-128 letters, digits or `-_.:`"));
        }
    };
    let caching = match header(&CACHING)? {
        None => None,
        Some("true") => Some(true),
        Some("false") => Some(false),
        Some(_) => return Err(ApiError::invalid("x-reliablegpt-caching", "must be true or false")),
    };
    let timeout = match header(&TIMEOUT_MS)? {
        None => None,
        Some(ms) => match ms.parse::<u64>() {
            Ok(ms) if (1..=MAX_TIMEOUT_MS).contains(&ms) => Some(Duration::from_millis(ms)),
            _ => return Err(ApiError::invalid("x-reliablegpt-timeout-ms", format!("must be 1-{MAX_TIMEOUT_MS}"))),
        },
    };
    let hedge = match header(&HEDGE_MS)? {
        None => None,
        Some(ms) => match ms.parse::<u64>() {
            Ok(ms) if (1..=60_000).contains(&ms) => Some(Duration::from_millis(ms)),
            _ => return Err(ApiError::invalid("x-reliablegpt-hedge-ms", "must be 1-60000")),
        },
    };
    Ok(GatewayRequest {
        endpoint,
        tree: std::sync::OnceLock::new(),
        estimate: std::sync::OnceLock::new(),
        include_usage: crate::engine::include_usage(body),
        raw,
        model,
        stream,
        fallbacks,
        instance,
        timeout,
        hedge,
        caching,
        pinned_key: None,
        form: None,
    })
}

fn valid_model(m: &str) -> bool {
    !m.is_empty() && m.len() <= 256 && m.chars().all(|c| !c.is_control() && c != ',')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tree_is_built_from_the_raw_body_only_when_asked_for() {
        let http = actix_web::test::TestRequest::default().to_http_request();
        let raw = Bytes::from_static(
            br#"{"model": "gpt-4o", "stream": true, "stream_options": {"include_usage": true},
                "messages": [{"role": "user", "content": "hi"}], "temperature": 0.5}"#,
        );
        let head = crate::object::unique_keys_keeping(&raw, HEAD_FIELDS).unwrap();
        assert_eq!(head.len(), 3);
        let req = parse(&http, raw, &Value::Object(head), Endpoint::Chat).unwrap();
        assert_eq!((req.model.as_str(), req.stream, req.include_usage), ("gpt-4o", true, true));
        assert!(req.tree.get().is_none());
        // "hi": one token, plus four for the message.
        assert_eq!(req.prompt_estimate(), 5);
        assert_eq!(req.body()["messages"][0]["content"], "hi");
        assert_eq!(req.body()["temperature"], 0.5);
    }
}
