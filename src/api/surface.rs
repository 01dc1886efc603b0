//! The rest of OpenAI's surface as pass-through with the engine's protection: moderations, image generation and text
//! to speech. Same token, headers, error shape and engine as chat; the upstream's answer is forwarded as it is (speech
//! as binary audio, streamed). See `engine::surface` for what differs from chat.

use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::Value;

use super::auth::Gateway;
use super::openapi::GatewayErrors;
use super::{ApiError, GATEWAY_BODY_LIMIT, proxy};
use crate::engine::{Endpoint, Form, multipart};
use crate::vault::Provider;
use serde_json::json;

/// OpenAI's default when a moderation request names no model.
pub const DEFAULT_MODERATION_MODEL: &str = "omni-moderation-latest";
/// OpenAI's default when an image request names no model.
pub const DEFAULT_IMAGE_MODEL: &str = "dall-e-2";

/// Moderations: classify text (and images) for policy categories. Fallbacks only to moderation models.
#[utoipa::path(
    post, path = "/v1/moderations", tag = "gateway", security(("token" = [])),
    request_body(content = super::openapi::GatewayBody, description = "OpenAI moderation request (`input` required; `model` defaults to `omni-moderation-latest`), forwarded as sent (only `model` changes on fallback)."),
    params(
        ("x-reliablegpt-fallback" = Option<String>, Header, description = "Comma list of models overriding the policy's fallback_strategy (only catalog moderation models are used)"),
        ("x-reliablegpt-instance" = Option<String>, Header, description = "Customer instance id, carried on every engine event"),
        ("x-reliablegpt-timeout-ms" = Option<u64>, Header, description = "Deadline of the whole answer in ms (1-600000)"),
        ("x-reliablegpt-hedge-ms" = Option<u64>, Header, description = "Start the next target in parallel if the first has sent nothing after this long"),
    ),
    responses(
        (status = 200, description = "The answering upstream's moderation object, unchanged; headers x-reliablegpt-model, -provider, -attempts, -fallback-reason."),
        GatewayErrors,
    )
)]
pub async fn moderations(gw: Gateway, req: HttpRequest, body: web::Payload) -> Result<HttpResponse, ApiError> {
    forward(gw, &req, body, Endpoint::Moderations).await
}

/// Image generation. Fallbacks only to image models; Azure deployments of image models are used.
#[utoipa::path(
    post, path = "/v1/images/generations", tag = "gateway", security(("token" = [])),
    request_body(content = super::openapi::GatewayBody, description = "OpenAI image generation request (`prompt` required; `model` defaults to `dall-e-2`; `stream` is not supported), forwarded as sent (only `model` changes on fallback)."),
    params(
        ("x-reliablegpt-fallback" = Option<String>, Header, description = "Comma list of models overriding the policy's fallback_strategy (only catalog image models are used)"),
        ("x-reliablegpt-instance" = Option<String>, Header, description = "Customer instance id, carried on every engine event"),
        ("x-reliablegpt-timeout-ms" = Option<u64>, Header, description = "Deadline of the whole answer in ms (1-600000); default the request timeout, at least 180 s. No first-byte limit applies: image APIs answer when the image is done."),
        ("x-reliablegpt-hedge-ms" = Option<u64>, Header, description = "Start the next target in parallel if the first has sent nothing after this long (each attempt may be billed)"),
    ),
    responses(
        (status = 200, description = "The answering upstream's image object (`data[].url` or `data[].b64_json`), unchanged; gateway headers as for chat."),
        GatewayErrors,
    )
)]
pub async fn image_generations(gw: Gateway, req: HttpRequest, body: web::Payload) -> Result<HttpResponse, ApiError> {
    forward(gw, &req, body, Endpoint::ImageGenerations).await
}

/// Text to speech: binary audio, streamed to the client as it arrives. Fallbacks only to speech models.
#[utoipa::path(
    post, path = "/v1/audio/speech", tag = "gateway", security(("token" = [])),
    request_body(content = super::openapi::GatewayBody, description = "OpenAI speech request (`model`, `input` and `voice` required), forwarded as sent (only `model` changes on fallback)."),
    params(
        ("x-reliablegpt-fallback" = Option<String>, Header, description = "Comma list of models overriding the policy's fallback_strategy (only catalog speech models are used)"),
        ("x-reliablegpt-instance" = Option<String>, Header, description = "Customer instance id, carried on every engine event"),
        ("x-reliablegpt-timeout-ms" = Option<u64>, Header, description = "Deadline of the first audio bytes in ms (1-600000); then the idle timeout bounds each gap"),
        ("x-reliablegpt-hedge-ms" = Option<u64>, Header, description = "Start the next target in parallel if the first has sent nothing after this long"),
    ),
    responses(
        (status = 200, description = "The audio bytes as the upstream sends them, with its `Content-Type` (e.g. `audio/mpeg`); gateway headers as for chat. A body broken after its first bytes is aborted (never ended cleanly)."),
        GatewayErrors,
    )
)]
pub async fn speech(gw: Gateway, req: HttpRequest, body: web::Payload) -> Result<HttpResponse, ApiError> {
    forward(gw, &req, body, Endpoint::Speech).await
}

/// Largest transcription upload: OpenAI takes audio files up to 25 MB; the rest is room for the other form fields.
pub const TRANSCRIPTION_BODY_LIMIT: usize = 26 * 1024 * 1024;

/// Speech to text: the `multipart/form-data` upload is forwarded byte for byte (same boundary and parts); a fallback
/// changes only the `model` part. Fallbacks only to transcription models.
#[utoipa::path(
    post, path = "/v1/audio/transcriptions", tag = "gateway", security(("token" = [])),
    request_body(content = String, content_type = "multipart/form-data", description = "OpenAI transcription form: `file` (the audio) and `model` required, other fields passed on. At most 26 MiB."),
    params(
        ("x-reliablegpt-fallback" = Option<String>, Header, description = "Comma list of models overriding the policy's fallback_strategy (only catalog transcription models are used)"),
        ("x-reliablegpt-instance" = Option<String>, Header, description = "Customer instance id, carried on every engine event"),
        ("x-reliablegpt-timeout-ms" = Option<u64>, Header, description = "Deadline of the answer's first bytes in ms (1-600000); default the request timeout, at least 180 s"),
        ("x-reliablegpt-hedge-ms" = Option<u64>, Header, description = "Start the next target in parallel if the first has sent nothing after this long"),
    ),
    responses(
        (status = 200, description = "The upstream's answer as it is, with its Content-Type (`{\"text\": …}` JSON, or text, SRT, VTT, events); gateway headers as for chat."),
        GatewayErrors,
    )
)]
pub async fn transcriptions(gw: Gateway, req: HttpRequest, body: web::Payload) -> Result<HttpResponse, ApiError> {
    let Gateway(set, state) = gw;
    let content_type = req
        .headers()
        .get(actix_web::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let Some(boundary) = multipart::boundary(&content_type) else {
        return Err(ApiError::invalid("content-type", "must be multipart/form-data with a boundary"));
    };
    let boundary = boundary.to_owned();
    let raw = proxy::read_body(&req, body, TRANSCRIPTION_BODY_LIMIT).await?;
    let parts = multipart::parts(&raw, &boundary)
        .map_err(|why| ApiError::bad_json(format!("The multipart form could not be read: {why}.")))?;
    if !parts.iter().any(|p| p.name == "file" && p.filename.is_some()) {
        return Err(ApiError::invalid("file", "is required (a file part)"));
    }
    let mut models = parts.iter().filter(|p| p.name == "model");
    let (Some(part), None) = (models.next(), models.next()) else {
        return Err(ApiError::invalid("model", "is required, once"));
    };
    let Ok(model) = std::str::from_utf8(&raw[part.value.clone()]) else {
        return Err(ApiError::invalid("model", "must be a model name of 1-256 characters"));
    };
    let range = part.value.clone();
    // The headers are parsed as for chat; the engine plans with the model and forwards the form.
    let fields = json!({"model": model});
    let mut request = proxy::parse(&req, raw.clone(), &fields, Endpoint::Transcriptions)?.with_body(fields);
    request.form = Some(Form { content_type, model: range });
    let reply = state.engine.serve(set, request).await;
    Ok(proxy::respond(reply))
}

async fn forward(
    gw: Gateway,
    http: &HttpRequest,
    payload: web::Payload,
    endpoint: Endpoint,
) -> Result<HttpResponse, ApiError> {
    let Gateway(set, state) = gw;
    let (raw, mut body) = proxy::read_json(http, payload, GATEWAY_BODY_LIMIT).await?;
    check(endpoint, &mut body)?;
    if endpoint == Endpoint::Moderations && !set.keys.iter().any(|k| k.provider == Provider::Openai) {
        return Err(ApiError::invalid(
            "model",
            "this key set has only Azure OpenAI keys, and Azure OpenAI has no moderation endpoint; add an OpenAI or \
             OpenAI-compatible key",
        ));
    }
    // `check` may have set the default model: the tree is handed over, not parsed again from the client's bytes.
    let mut request = proxy::parse(http, raw, &body, endpoint)?.with_body(body);
    // Speech is streamed as bytes whatever the body says; the others are plain JSON answers.
    request.stream = false;
    let reply = state.engine.serve(set, request).await;
    Ok(proxy::respond(reply))
}

/// The edge checks of each endpoint: the fields without which the upstream would refuse the request anyway, and the
/// default model (planned with; the client's bytes still go out without it, and the upstream applies the same
/// default).
fn check(endpoint: Endpoint, body: &mut Value) -> Result<(), ApiError> {
    let Value::Object(map) = body else { return Err(ApiError::bad_json("The request body must be a JSON object.")) };
    let default_model = match endpoint {
        Endpoint::Moderations => Some(DEFAULT_MODERATION_MODEL),
        Endpoint::ImageGenerations => Some(DEFAULT_IMAGE_MODEL),
        _ => None,
    };
    if let Some(model) = default_model
        && matches!(map.get("model"), None | Some(Value::Null))
    {
        map.insert("model".to_owned(), Value::String(model.to_owned()));
    }
    match endpoint {
        Endpoint::Moderations => match map.get("input") {
            Some(Value::String(_)) => {}
            Some(Value::Array(items)) if !items.is_empty() && items.iter().all(|i| i.is_string() || i.is_object()) => {}
            Some(_) => {
                return Err(ApiError::invalid("input", "must be a string, or a non-empty array of strings or objects"));
            }
            None => return Err(ApiError::invalid("input", "is required")),
        },
        Endpoint::ImageGenerations => {
            match map.get("prompt") {
                Some(Value::String(p)) if !p.is_empty() => {}
                Some(_) => return Err(ApiError::invalid("prompt", "must be a non-empty string")),
                None => return Err(ApiError::invalid("prompt", "is required")),
            }
            if map.get("stream") == Some(&Value::Bool(true)) {
                return Err(ApiError::invalid("stream", "streamed image generation is not supported by the gateway"));
            }
        }
        Endpoint::Speech => {
            match map.get("input") {
                Some(Value::String(p)) if !p.is_empty() => {}
                Some(_) => return Err(ApiError::invalid("input", "must be a non-empty string")),
                None => return Err(ApiError::invalid("input", "is required")),
            }
            if matches!(map.get("voice"), None | Some(Value::Null)) {
                return Err(ApiError::invalid("voice", "is required"));
            }
            if map.get("stream").is_some_and(|s| !s.is_null()) {
                return Err(ApiError::invalid("stream", "is not a speech parameter (see `stream_format`)"));
            }
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn edge_checks_name_the_field_and_fill_in_default_models() {
        let mut ok = json!({"input": "hello"});
        check(Endpoint::Moderations, &mut ok).unwrap();
        assert_eq!(ok["model"], DEFAULT_MODERATION_MODEL);
        let mut named = json!({"input": ["a", {"type": "text", "text": "b"}], "model": "text-moderation-latest"});
        check(Endpoint::Moderations, &mut named).unwrap();
        assert_eq!(named["model"], "text-moderation-latest");
        let mut image = json!({"prompt": "a cat"});
        check(Endpoint::ImageGenerations, &mut image).unwrap();
        assert_eq!(image["model"], DEFAULT_IMAGE_MODEL);
        check(Endpoint::Speech, &mut json!({"model": "tts-1", "input": "hi", "voice": "alloy"})).unwrap();
        for (endpoint, mut body, param) in [
            (Endpoint::Moderations, json!({}), "input"),
            (Endpoint::Moderations, json!({"input": []}), "input"),
            (Endpoint::Moderations, json!({"input": 3}), "input"),
            (Endpoint::ImageGenerations, json!({"prompt": ""}), "prompt"),
            (Endpoint::ImageGenerations, json!({"n": 1}), "prompt"),
            (Endpoint::ImageGenerations, json!({"prompt": "x", "stream": true}), "stream"),
            (Endpoint::Speech, json!({"model": "tts-1", "voice": "alloy"}), "input"),
            (Endpoint::Speech, json!({"model": "tts-1", "input": "hi"}), "voice"),
            (Endpoint::Speech, json!({"model": "tts-1", "input": "hi", "voice": "a", "stream": true}), "stream"),
        ] {
            let e = check(endpoint, &mut body).unwrap_err();
            assert!(e.to_string().starts_with(&format!("400 {param}: ")), "{body}: {e}");
        }
        assert!(check(Endpoint::Moderations, &mut json!([1])).is_err());
    }
}
