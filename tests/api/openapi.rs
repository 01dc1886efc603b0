//! The committed OpenAPI document, the live one and the Swagger UI.

use serde_json::Value;

use crate::helpers::spawn_app;

#[test]
fn committed_openapi_document_is_current() {
    let committed = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi/openapi.json"))
        .expect("openapi/openapi.json exists");
    let generated = reliablegpt::api::openapi::document();
    assert!(
        committed == generated,
        "openapi/openapi.json is stale: run `cargo run -- openapi > openapi/openapi.json` and commit it"
    );
}

#[tokio::test]
async fn live_spec_and_offline_swagger_ui_are_served() {
    let app = spawn_app().await;
    let res = app.client.get(app.url("/openapi.json")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let live: Value = res.json().await.unwrap();
    let generated: Value = serde_json::from_str(&reliablegpt::api::openapi::document()).unwrap();
    assert_eq!(live, generated);
    assert!(live["paths"]["/v1/keys"]["post"].is_object());
    assert!(live["paths"]["/v1/models/{model}"]["get"].is_object());
    for path in ["/v1/chat/completions", "/v1/completions", "/v1/embeddings"] {
        let responses = &live["paths"][path]["post"]["responses"];
        for status in ["429", "503"] {
            assert!(responses[status]["headers"]["Retry-After"].is_object(), "{path} {status}");
            assert_eq!(
                responses[status]["content"]["application/json"]["schema"]["$ref"], "#/components/schemas/ErrorBody",
                "{path} {status}"
            );
        }
        assert!(responses["503"]["description"].as_str().unwrap().contains("`overloaded`"), "{path}");
        assert!(responses["429"]["description"].as_str().unwrap().contains("`upstream_rate_limited`"), "{path}");
    }

    let res = app.client.get(app.url("/docs/")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.text().await.unwrap().contains("swagger-ui"));
    // The bare path is one permanent redirect away.
    let res = app.client.get(app.url("/docs")).send().await.unwrap();
    assert_eq!(res.status(), 308);
    assert_eq!(res.headers()["location"], "/docs/");
    let res = app.client.get(app.url("/docs/swagger-ui-bundle.js")).send().await.unwrap();
    assert_eq!(res.status(), 200, "the UI's assets are vendored into the binary");
}
