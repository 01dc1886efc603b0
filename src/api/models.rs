//! `/v1/models` and `/v1/models/{model}`: the models a key set can reach, in OpenAI's shape.

use actix_web::{HttpResponse, web};
use serde::Serialize;
use utoipa::ToSchema;

use super::auth::Gateway;
use super::error::ErrorBody;
use super::{ApiError, AppState};
use crate::engine::catalog::ModelProvider;
use crate::vault::{OpenKeySet, Provider};

/// OpenAI's model object.
#[derive(Debug, Serialize, ToSchema)]
pub struct Model {
    #[schema(example = "gpt-4o")]
    pub id: String,
    #[schema(example = "model")]
    pub object: &'static str,
    /// Always 0: the gateway does not know when the provider published the model.
    pub created: u64,
    /// `openai`, `azure` (a deployment mapped in an Azure key), `custom` (a `fallback_strategy` model
    /// reached through a key's custom base URL), `anthropic` or `gemini` (models of those providers, for their keys).
    #[schema(example = "openai")]
    pub owned_by: &'static str,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ModelList {
    #[schema(example = "list")]
    pub object: &'static str,
    pub data: Vec<Model>,
}

/// The models this key set can reach.
#[utoipa::path(
    get, path = "/v1/models", operation_id = "models", tag = "gateway", security(("token" = [])),
    responses(
        (status = 200, description = "OpenAI model list", body = ModelList),
        (status = 401, body = ErrorBody),
        (status = 429, description = "Too many failed authentications from this address; see Retry-After.", body = ErrorBody),
    )
)]
pub async fn list(gw: Gateway) -> HttpResponse {
    HttpResponse::Ok().json(ModelList { object: "list", data: reachable(&gw.0, &gw.1) })
}

/// One model this key set can reach (OpenAI's "retrieve model").
#[utoipa::path(
    get, path = "/v1/models/{model}", operation_id = "model", tag = "gateway", security(("token" = [])),
    params(("model" = String, Path, description = "Model id; may contain `/` and `:` (`ft:gpt-4o:org:x:id`)")),
    responses(
        (status = 200, body = Model),
        (status = 401, body = ErrorBody),
        (status = 404, description = "Not a model of this key set (code `model_not_found`)", body = ErrorBody),
        (status = 429, description = "Too many failed authentications from this address; see Retry-After.", body = ErrorBody),
    )
)]
pub async fn retrieve(gw: Gateway, model: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let id = model.into_inner();
    match reachable(&gw.0, &gw.1).into_iter().find(|m| m.id == id) {
        Some(model) => Ok(HttpResponse::Ok().json(model)),
        None => Err(ApiError::model_not_found(&id)),
    }
}

/// Every (model, owner) pair once, in key order. A model reachable two ways (an Azure deployment and an OpenAI key)
/// is listed once per owner; retrieving it answers the first.
fn reachable(set: &OpenKeySet, state: &AppState) -> Vec<Model> {
    let mut models: Vec<Model> = Vec::new();
    let mut add = |id: &str, owned_by: &'static str| {
        if !models.iter().any(|m| m.id == id && m.owned_by == owned_by) {
            models.push(Model { id: id.to_owned(), object: "model", created: 0, owned_by });
        }
    };
    for key in &set.keys {
        match (key.provider, &key.target.base_url) {
            (Provider::Azure, _) => {
                for model in key.target.deployments.iter().flat_map(|d| d.keys()) {
                    add(model, "azure");
                }
            }
            (Provider::Openai, None) => {
                let catalog = state.engine.catalog();
                for model in catalog.names().into_iter().filter(|m| catalog.provider(m) == ModelProvider::Openai) {
                    add(model, "openai");
                }
                for model in &set.policy.fallback_strategy {
                    add(model, "openai");
                }
            }
            (Provider::Openai, Some(_)) => {
                for model in &set.policy.fallback_strategy {
                    add(model, "custom");
                }
            }
            (Provider::Anthropic | Provider::Gemini, _) => {
                let (own, owner) = match key.provider {
                    Provider::Anthropic => (ModelProvider::Anthropic, "anthropic"),
                    _ => (ModelProvider::Gemini, "gemini"),
                };
                let catalog = state.engine.catalog();
                let models = catalog.names().into_iter().chain(set.policy.fallback_strategy.iter().map(String::as_str));
                for model in models.filter(|m| catalog.provider(m) == own) {
                    add(model, owner);
                }
            }
        }
    }
    models
}
