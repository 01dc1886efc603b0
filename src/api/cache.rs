//! The cache endpoints (`/v1/cache`, `/v1/cache/lookup`) and scoped tokens (`/v1/tokens`).

use crate::object::Object;
use actix_web::{HttpRequest, HttpResponse, web};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::auth::{CacheReader, Gateway};
use super::error::ErrorBody;
use super::{ApiError, AppState};
use crate::cache::canonical::MAX_QUERY_BYTES;
use crate::cache::{CacheHit, Conversation, MAX_RESPONSE_BYTES, MAX_TTL_SECONDS, Matching, Scope};
use crate::engine::{DEFAULT_INSTANCE, valid_instance};
use crate::vault::scoped::{CACHE_READ, DEFAULT_TTL_SECONDS, MAX_TTL_SECONDS as MAX_TOKEN_TTL};

/// `GET /v1/cache` and `DELETE /v1/cache` parameters.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct CacheParams {
    /// Customer instance (1-128 of `A-Z a-z 0-9 . _ : -`). Default `default`; for `DELETE`, absent means every
    /// instance of the key set.
    #[param(pattern = r"^[A-Za-z0-9._:-]{1,128}$")]
    instance_id: Option<String>,
    /// The question (up to 32 KiB).
    #[param(required = true)]
    query: Option<String>,
    /// Least cosine similarity (0.5-1.0) for this lookup. Default: the policy's `cache_threshold`.
    #[param(minimum = 0.5, maximum = 1.0)]
    threshold: Option<f32>,
}

/// `POST /v1/cache/lookup`: a question or a whole conversation.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LookupRequest {
    #[schema(pattern = r"^[A-Za-z0-9._:-]{1,128}$")]
    instance_id: Option<String>,
    /// A lone question; or give `messages`.
    query: Option<String>,
    /// A chat conversation ending with a user message (OpenAI's `messages`).
    #[schema(value_type = Option<Vec<Object>>, min_items = 1)]
    messages: Option<Vec<Value>>,
    #[schema(minimum = 0.5, maximum = 1.0)]
    threshold: Option<f32>,
}

/// `POST /v1/cache`: store an answer.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StoreRequest {
    #[schema(pattern = r"^[A-Za-z0-9._:-]{1,128}$")]
    instance_id: Option<String>,
    query: Option<String>,
    #[schema(value_type = Option<Vec<Object>>, min_items = 1)]
    messages: Option<Vec<Value>>,
    /// The answer (up to 1 MiB).
    response: String,
    /// The model that gave it.
    model: Option<String>,
    /// Lifetime (60-31536000 s). Default: the policy's `cache_ttl_seconds` (7 days).
    #[schema(minimum = 60, maximum = 31536000)]
    ttl_seconds: Option<u32>,
}

/// A lookup's answer: `{"hit": false}`, or the hit.
#[derive(Debug, Serialize, ToSchema)]
pub struct LookupResponse {
    hit: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    response: Option<String>,
    /// Cosine similarity of the questions (1 for an exact match).
    #[serde(skip_serializing_if = "Option::is_none")]
    similarity: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cached_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    model: Option<String>,
}

impl From<Option<CacheHit>> for LookupResponse {
    fn from(hit: Option<CacheHit>) -> Self {
        match hit {
            None => Self { hit: false, response: None, similarity: None, cached_at: None, model: None },
            Some(hit) => Self {
                hit: true,
                response: Some(hit.response),
                // Three decimals: halfvec rounding makes more digits noise.
                similarity: Some((hit.similarity * 1000.0).round() / 1000.0),
                cached_at: Some(hit.cached_at),
                model: hit.model,
            },
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct StoreResponse {
    stored: bool,
    instance_id: String,
    expires_at: DateTime<Utc>,
}

/// `POST /v1/tokens`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    /// The only scope today: `cache:read` (`GET /v1/cache` and `POST /v1/cache/lookup` for one instance).
    #[schema(pattern = "^cache:read$", example = "cache:read")]
    scope: String,
    #[schema(pattern = r"^[A-Za-z0-9._:-]{1,128}$")]
    instance_id: String,
    /// Lifetime in seconds (1-86400). Default 900.
    #[schema(minimum = 1, maximum = 86400)]
    ttl_seconds: Option<u32>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TokenResponse {
    /// A JWT (HS256). Send it as `Authorization: Bearer <token>`.
    token: String,
    expires_at: DateTime<Utc>,
}

fn instance(id: Option<String>) -> Result<String, ApiError> {
    let id = id.unwrap_or_else(|| DEFAULT_INSTANCE.to_owned());
    if !valid_instance(&id) {
        return Err(ApiError::invalid("instance_id", "must be 1-128 characters of A-Z a-z 0-9 . _ : -"));
    }
    Ok(id)
}

fn threshold(value: Option<f32>, default: Matching) -> Result<Matching, ApiError> {
    match value {
        None => Ok(default),
        Some(t) if (0.5..=1.0).contains(&t) => Ok(Matching { threshold: t, ..default }),
        Some(_) => Err(ApiError::invalid("threshold", "must be between 0.5 and 1.0")),
    }
}

/// The conversation from `query` or `messages` (exactly one of them).
fn conversation(query: Option<&str>, messages: Option<&[Value]>) -> Result<Conversation, ApiError> {
    let (param, parsed) = match (query, messages) {
        (Some(q), None) => {
            if q.len() > MAX_QUERY_BYTES {
                return Err(ApiError::invalid("query", format!("must be at most {MAX_QUERY_BYTES} bytes")));
            }
            ("query", Conversation::from_query(q))
        }
        (None, Some(m)) => ("messages", Conversation::from_messages(m)),
        _ => return Err(ApiError::invalid("query", "give exactly one of `query` and `messages`")),
    };
    parsed.map_err(|e| ApiError::invalid(param, e))
}

fn params(req: &HttpRequest) -> Result<CacheParams, ApiError> {
    web::Query::<CacheParams>::from_query(req.query_string())
        .map(web::Query::into_inner)
        // The parser's message may quote a value (customer text); name the problem only.
        .map_err(|_| {
            ApiError::invalid("query_string", "unknown or malformed parameter (allowed: instance_id, query, threshold)")
        })
}

/// Who may read which instance, and with which matching.
fn reader_scope(reader: &CacheReader, instance_id: Option<String>) -> Result<(Uuid, String, Matching), ApiError> {
    match reader {
        CacheReader::Owner(set) => Ok((set.key_set_id, instance(instance_id)?, set.policy.cache_matching())),
        CacheReader::Scoped { key_set_id, instance_id: allowed, policy } => {
            let wanted = instance(instance_id.or_else(|| Some(allowed.clone())))?;
            if &wanted != allowed {
                return Err(ApiError::forbidden("This token may only read the cache of its own instance_id."));
            }
            Ok((*key_set_id, wanted, policy.cache_matching()))
        }
    }
}

async fn answer(
    state: &AppState,
    key_set_id: Uuid,
    instance_id: &str,
    conversation: &Conversation,
    matching: Matching,
) -> Result<HttpResponse, ApiError> {
    let scope = Scope { key_set_id, instance: instance_id };
    let hit = state.cache.lookup(scope, conversation, matching).await.map_err(ApiError::from)?;
    Ok(HttpResponse::Ok().json(LookupResponse::from(hit)))
}

/// Look up the cache with a question. Accepts the special token or a scoped token (`POST /v1/tokens`) for the
/// instance.
#[utoipa::path(
    get, path = "/v1/cache", tag = "cache", security(("token" = [])), params(CacheParams),
    responses(
        (status = 200, body = LookupResponse, description = "`{\"hit\": false}` or the cached answer"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody, description = "A scoped token for another instance"),
        (status = 429, body = ErrorBody)
    )
)]
pub async fn get(state: web::Data<AppState>, reader: CacheReader, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let params = params(&req)?;
    let (key_set_id, instance_id, matching) = reader_scope(&reader, params.instance_id)?;
    let matching = threshold(params.threshold, matching)?;
    let conversation =
        conversation(Some(params.query.as_deref().ok_or_else(|| ApiError::invalid("query", "is required"))?), None)?;
    answer(&state, key_set_id, &instance_id, &conversation, matching).await
}

/// Look up the cache with a question or a whole conversation (for long queries). Same answer and tokens as `GET`.
#[utoipa::path(
    post, path = "/v1/cache/lookup", tag = "cache", security(("token" = [])), request_body = LookupRequest,
    responses(
        (status = 200, body = LookupResponse), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 413, body = ErrorBody), (status = 429, body = ErrorBody)
    )
)]
pub async fn lookup(
    state: web::Data<AppState>,
    reader: CacheReader,
    body: web::Json<Object<LookupRequest>>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner().into_inner();
    let (key_set_id, instance_id, matching) = reader_scope(&reader, body.instance_id)?;
    let matching = threshold(body.threshold, matching)?;
    let conversation = conversation(body.query.as_deref(), body.messages.as_deref())?;
    answer(&state, key_set_id, &instance_id, &conversation, matching).await
}

/// Store an answer for a question or conversation (replacing the same conversation's answer).
#[utoipa::path(
    post, path = "/v1/cache", tag = "cache", security(("token" = [])), request_body = StoreRequest,
    responses(
        (status = 201, body = StoreResponse), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 429, body = ErrorBody)
    )
)]
pub async fn store(gw: Gateway, body: web::Json<Object<StoreRequest>>) -> Result<HttpResponse, ApiError> {
    let Gateway(set, state) = gw;
    let body = body.into_inner().into_inner();
    let instance_id = instance(body.instance_id)?;
    let conversation = conversation(body.query.as_deref(), body.messages.as_deref())?;
    if body.response.is_empty() || body.response.len() > MAX_RESPONSE_BYTES {
        return Err(ApiError::invalid("response", format!("must be 1-{MAX_RESPONSE_BYTES} bytes")));
    }
    if let Some(model) = &body.model
        && (model.is_empty() || model.len() > 256)
    {
        return Err(ApiError::invalid("model", "must be 1-256 characters"));
    }
    let mut retention = set.policy.cache_retention();
    if let Some(ttl) = body.ttl_seconds {
        if !(60..=MAX_TTL_SECONDS).contains(&ttl) {
            return Err(ApiError::invalid("ttl_seconds", format!("must be between 60 and {MAX_TTL_SECONDS}")));
        }
        retention.ttl_seconds = ttl;
    }
    let scope = Scope { key_set_id: set.key_set_id, instance: &instance_id };
    state
        .cache
        .store(scope, &conversation, &body.response, body.model.as_deref(), retention)
        .await
        .map_err(ApiError::from)?;
    let expires_at = Utc::now() + chrono::Duration::seconds(i64::from(retention.ttl_seconds));
    Ok(HttpResponse::Created().json(StoreResponse { stored: true, instance_id, expires_at }))
}

/// Delete one instance's cached answers, or (without `instance_id`) the whole key set's.
#[utoipa::path(
    delete, path = "/v1/cache", tag = "cache", security(("token" = [])),
    params(("instance_id" = Option<String>, Query, pattern = r"^[A-Za-z0-9._:-]{1,128}$",
        description = "Customer instance whose answers to delete; absent: every instance of the key set")),
    responses((status = 204, description = "Deleted"), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody))
)]
pub async fn purge(gw: Gateway, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let Gateway(set, state) = gw;
    let params = params(&req)?;
    if params.query.is_some() || params.threshold.is_some() {
        return Err(ApiError::invalid("query_string", "DELETE /v1/cache takes only instance_id"));
    }
    let instance_id = params.instance_id.map(|id| instance(Some(id))).transpose()?;
    let deleted = state.cache.purge(set.key_set_id, instance_id.as_deref()).await.map_err(ApiError::from)?;
    tracing::info!(deleted, whole_key_set = instance_id.is_none(), "cache purged");
    Ok(HttpResponse::NoContent().finish())
}

/// Mint a short-lived scoped token (a JWT) that can only read one instance's cache: for app front ends that must not
/// hold the special token.
#[utoipa::path(
    post, path = "/v1/tokens", tag = "cache", security(("token" = [])), request_body = TokenRequest,
    responses((status = 200, body = TokenResponse), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody))
)]
pub async fn mint_token(gw: Gateway, body: web::Json<Object<TokenRequest>>) -> Result<HttpResponse, ApiError> {
    let Gateway(set, state) = gw;
    let body = body.into_inner().into_inner();
    if body.scope != CACHE_READ {
        return Err(ApiError::invalid("scope", format!("must be `{CACHE_READ}`")));
    }
    let instance_id = instance(Some(body.instance_id))?;
    let ttl = body.ttl_seconds.unwrap_or(DEFAULT_TTL_SECONDS);
    if !(1..=MAX_TOKEN_TTL).contains(&ttl) {
        return Err(ApiError::invalid("ttl_seconds", format!("must be between 1 and {MAX_TOKEN_TTL}")));
    }
    let (token, expires_at) = state.scoped_tokens.mint(set.key_set_id, &instance_id, ttl);
    Ok(HttpResponse::Ok().insert_header(("cache-control", "no-store")).json(TokenResponse { token, expires_at }))
}
