//! `GET /v1/models/{model}`: OpenAI's "retrieve model" over the models of the token's key set.

use serde_json::{Value, json};

use crate::helpers::{error_of, spawn_gateway};

const K1: &str = "sk-test-key-one-000000000000000000000001";
const FINE_TUNE: &str = "ft:gpt-4o-mini:acme:support:abc123";

#[tokio::test]
async fn a_model_of_the_key_set_is_retrieved_and_any_other_is_openais_404() {
    let gw = spawn_gateway().await;
    let azure = json!({"provider": "azure", "key": "0123456789abcdef0123456789abcdef", "endpoint": gw.mock.azure_endpoint(),
                       "api_version": "2024-10-21", "deployments": {"acme/gpt-4o-eu": "prod-eu"}});
    let token = gw.key_set_with(json!([azure, K1]), json!({"fallback_strategy": [FINE_TUNE]})).await;
    let get = |path: &str| gw.app.client.get(gw.app.url(path)).bearer_auth(&token).send();
    let model = |id: &str, owner: &str| json!({"id": id, "object": "model", "created": 0, "owned_by": owner});

    // From the shipped catalog (an OpenAI key), mapped by an Azure deployment, and a fine-tune in the policy. SDKs
    // send ids raw or percent-encoded (`/` as %2F, `:` as %3A).
    for (path, want) in [
        ("/v1/models/gpt-4o", model("gpt-4o", "openai")),
        ("/v1/models/acme/gpt-4o-eu", model("acme/gpt-4o-eu", "azure")),
        ("/v1/models/acme%2Fgpt-4o-eu", model("acme/gpt-4o-eu", "azure")),
        (format!("/v1/models/{FINE_TUNE}").as_str(), model(FINE_TUNE, "openai")),
        ("/v1/models/ft%3Agpt-4o-mini%3Aacme%3Asupport%3Aabc123", model(FINE_TUNE, "openai")),
    ] {
        let res = get(path).await.unwrap();
        assert_eq!(res.status(), 200, "{path}");
        assert_eq!(res.json::<Value>().await.unwrap(), want, "{path}");
    }

    // Every listed model can be retrieved, as the list shows it.
    let list: Value = get("/v1/models").await.unwrap().json().await.unwrap();
    for listed in list["data"].as_array().unwrap() {
        let res = get(&format!("/v1/models/{}", listed["id"].as_str().unwrap())).await.unwrap();
        assert_eq!(res.status(), 200, "{listed}");
        assert_eq!(&res.json::<Value>().await.unwrap(), listed);
    }

    for unknown in ["gpt-9", "acme/gpt-4o", "prod-eu"] {
        let error = error_of(get(&format!("/v1/models/{unknown}")).await.unwrap(), 404).await;
        assert_eq!(error["code"], "model_not_found");
        assert_eq!(error["type"], "invalid_request_error");
        assert_eq!(error["message"], format!("The model `{unknown}` does not exist or you do not have access to it."));
    }
    assert!(gw.mock.requests().is_empty(), "listing and retrieving never call an upstream");
}

#[tokio::test]
async fn retrieving_a_model_needs_a_valid_token() {
    let gw = spawn_gateway().await;
    let url = gw.app.url("/v1/models/gpt-4o");
    let error = error_of(gw.app.client.get(&url).send().await.unwrap(), 401).await;
    assert_eq!(error["code"], "invalid_api_key");
    let res = gw.app.client.get(&url).bearer_auth("rgpt_not-a-real-token").send().await.unwrap();
    assert_eq!(error_of(res, 401).await["code"], "invalid_api_key");
}
