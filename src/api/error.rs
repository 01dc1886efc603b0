//! The one place errors become HTTP: every failure answers in OpenAI's error shape
//! `{"error": {"message", "type", "code", "param"}}`. Internal errors are logged with their cause chain and answered
//! generically.

use std::fmt;

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, ResponseError};
use serde::Serialize;
use utoipa::ToSchema;

use crate::alerts::AlertsError;
use crate::cache::CacheError;
use crate::vault::VaultError;
use crate::vault::input::describe_serde_error;

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    pub message: String,
    #[serde(rename = "type")]
    #[schema(example = "invalid_request_error")]
    pub kind: &'static str,
    #[schema(example = "invalid_value")]
    pub code: Option<&'static str>,
    /// The request field at fault, as a JSON path (`keys[2].endpoint`).
    pub param: Option<String>,
}

#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    detail: ErrorDetail,
    retry_after_secs: Option<u64>,
    /// The `Allow` header of a 405.
    allow: Option<&'static str>,
}

const INVALID_REQUEST: &str = "invalid_request_error";

/// `Retry-After` of a `503` for an unreachable database: the change listener retries every second.
const DATABASE_RETRY_AFTER_SECS: u64 = 2;

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            detail: ErrorDetail { message: message.into(), kind, code: Some(code), param: None },
            retry_after_secs: None,
            allow: None,
        }
    }

    pub fn invalid(param: impl Into<String>, message: impl fmt::Display) -> Self {
        let param = param.into();
        let mut e = Self::new(StatusCode::BAD_REQUEST, INVALID_REQUEST, "invalid_value", format!("{param}: {message}"));
        e.detail.param = Some(param);
        e
    }

    pub fn bad_json(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, INVALID_REQUEST, "invalid_json", message)
    }

    /// The single answer for every authentication failure: missing, malformed, mutated, unknown or revoked token.
    pub fn unauthenticated() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            INVALID_REQUEST,
            "invalid_api_key",
            "Invalid or missing reliablegpt token. Send it as `Authorization: Bearer rgpt_...`.",
        )
    }

    /// Authenticated, but this credential may not do this (a scoped token used beyond its scope).
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "permission_error", "forbidden", message)
    }

    pub fn rate_limited(retry_after_secs: u64) -> Self {
        let mut e = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            "rate_limit_exceeded",
            format!("Too many requests from this address. Retry after {retry_after_secs} s."),
        );
        e.retry_after_secs = Some(retry_after_secs);
        e
    }

    pub fn payload_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            INVALID_REQUEST,
            "payload_too_large",
            format!("Request body exceeds the limit of {limit} bytes."),
        )
    }

    /// The client did not send its body within `RELIABLEGPT_BODY_READ_TIMEOUT_MS`; the connection is closed after this.
    pub fn request_timeout() -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            INVALID_REQUEST,
            "request_timeout",
            "The request body was not received in time.",
        )
    }

    pub fn not_found(req: &HttpRequest) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            INVALID_REQUEST,
            "unknown_url",
            format!("Invalid URL ({} {})", req.method(), req.path()),
        )
    }

    /// OpenAI's answer, word for word, so SDKs and apps that match on it behave the same.
    pub fn model_not_found(model: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            INVALID_REQUEST,
            "model_not_found",
            format!("The model `{model}` does not exist or you do not have access to it."),
        )
    }

    /// 405; `allow` becomes the `Allow` header (RFC 9110).
    pub fn method_not_allowed(req: &HttpRequest, allow: &'static str) -> Self {
        let mut e = Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            INVALID_REQUEST,
            "method_not_allowed",
            format!("Method {} is not allowed on {} (allowed: {allow})", req.method(), req.path()),
        );
        e.allow = Some(allow);
        e
    }

    pub fn unsupported_media_type() -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            INVALID_REQUEST,
            "unsupported_media_type",
            "Send the body as JSON with `Content-Type: application/json`.",
        )
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", "not_ready", message)
    }

    /// The database cannot be reached: the client may retry shortly (OpenAI SDKs honour `Retry-After`).
    pub fn database_unavailable() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "service_unavailable",
            "reliablegpt cannot reach its database right now. Retry shortly.",
        )
        .with_retry_after(DATABASE_RETRY_AFTER_SECS)
    }

    /// Logs the error with its whole cause chain; the client learns only that something failed on our side.
    pub fn internal(error: &(dyn std::error::Error + 'static)) -> Self {
        let mut chain = Vec::new();
        let mut source = error.source();
        while let Some(cause) = source {
            chain.push(cause.to_string());
            source = cause.source();
        }
        tracing::error!(error = %error, causes = ?chain, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "internal_error",
            "Internal error. Quote this response's x-request-id when reporting it.",
        )
    }

    /// Adds a `Retry-After` header.
    pub fn with_retry_after(mut self, secs: u64) -> Self {
        self.retry_after_secs = Some(secs.max(1));
        self
    }

    /// A stored Responses API response that cannot be reached with the key that created it (and no other key is
    /// tried): 404 unknown, 409 its key removed or invalid, 502 its upstream did not answer.
    pub fn stored_response(status: u16, code: &'static str, message: String, param: Option<&str>) -> Self {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::CONFLICT);
        let kind = if status.is_server_error() { "upstream_error" } else { INVALID_REQUEST };
        let mut e = Self::new(status, kind, code, message);
        e.detail.param = param.map(str::to_owned);
        e
    }

    /// Every upstream failed; `message` lists the attempts (models, providers, masked keys, classes).
    pub fn upstream(status: u16, code: &'static str, message: String) -> Self {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
        let kind = if status == StatusCode::TOO_MANY_REQUESTS { "rate_limit_error" } else { "upstream_error" };
        Self::new(status, kind, code, message)
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.status.as_u16(), self.detail.message)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut res = HttpResponse::build(self.status);
        if let Some(secs) = self.retry_after_secs {
            res.insert_header((header::RETRY_AFTER, HeaderValue::from(secs)));
        }
        if let Some(allow) = self.allow {
            res.insert_header((header::ALLOW, allow));
        }
        // The rest of a body that came too slowly must not be read as the next request.
        if self.status == StatusCode::REQUEST_TIMEOUT {
            res.force_close();
        }
        res.json(ErrorBody {
            error: ErrorDetail {
                message: self.detail.message.clone(),
                kind: self.detail.kind,
                code: self.detail.code,
                param: self.detail.param.clone(),
            },
        })
    }
}

impl From<VaultError> for ApiError {
    fn from(e: VaultError) -> Self {
        match e {
            VaultError::Unauthenticated => Self::unauthenticated(),
            VaultError::Invalid(i) => Self::invalid(i.param, i.message),
            other if other.is_unavailable() => {
                tracing::warn!(error = %other, "database unreachable");
                Self::database_unavailable()
            }
            other => Self::internal(&other),
        }
    }
}

impl From<CacheError> for ApiError {
    fn from(e: CacheError) -> Self {
        match e {
            CacheError::Database(d) if crate::db::is_unreachable(&d) => {
                tracing::warn!(error = %d, "database unreachable");
                Self::database_unavailable()
            }
            other => Self::internal(&other),
        }
    }
}

impl From<AlertsError> for ApiError {
    fn from(e: AlertsError) -> Self {
        match e {
            AlertsError::Vault(v) => v.into(),
            other => Self::internal(&other),
        }
    }
}

/// Maps body-parsing failures of `web::Json` to our error shape.
pub fn json_error(err: actix_web::error::JsonPayloadError, limit: usize) -> ApiError {
    use actix_web::error::JsonPayloadError as E;
    match err {
        E::Overflow { .. } | E::OverflowKnownLength { .. } => ApiError::payload_too_large(limit),
        E::Deserialize(e) if e.is_data() => {
            ApiError::bad_json(format!("Invalid request body: {}", describe_serde_error(&e)))
        }
        E::Deserialize(e) => ApiError::bad_json(format!(
            "Malformed JSON at line {} column {}: {}",
            e.line(),
            e.column(),
            match e.classify() {
                serde_json::error::Category::Eof => "unexpected end of input",
                _ => "syntax error",
            }
        )),
        E::ContentType => ApiError::unsupported_media_type(),
        E::Payload(e) if super::body_timed_out(&e) => ApiError::request_timeout(),
        other => ApiError::bad_json(format!("Could not read the request body: {other}")),
    }
}
