//! The committed OpenAPI document, the live one and the Swagger UI.

use serde_json::{Value, json};

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

/// A value of `schema`'s type at (`past == false`) or just past (`past == true`) a bound.
fn at_bound(schema: &Value, keyword: &str, past: bool) -> Value {
    let bound = &schema[keyword];
    let upper = keyword.starts_with("max");
    let kind = schema["type"].as_array().map_or(schema["type"].clone(), |t| t[0].clone());
    match keyword {
        "minimum" | "maximum" if kind == "integer" => {
            let n = bound.as_i64().unwrap();
            json!(if !past {
                n
            } else if upper {
                n + 1
            } else {
                n - 1
            })
        }
        "minimum" | "maximum" => {
            let n = bound.as_f64().unwrap();
            json!(if !past {
                n
            } else if upper {
                n + 0.01
            } else {
                n - 0.01
            })
        }
        "minLength" | "maxLength" => {
            let n = bound.as_u64().unwrap() as usize;
            json!("a".repeat(if !past {
                n
            } else if upper {
                n + 1
            } else {
                n - 1
            }))
        }
        "maxItems" => {
            let n = bound.as_u64().unwrap() as usize + usize::from(past);
            json!((0..n).map(|i| format!("model-{i}")).collect::<Vec<_>>())
        }
        other => panic!("no test values for `{other}`"),
    }
}

#[tokio::test]
async fn documented_policy_bounds_are_the_ones_validation_enforces() {
    let app = spawn_app().await;
    let doc: Value = app.client.get(app.url("/openapi.json")).send().await.unwrap().json().await.unwrap();
    let schemas = &doc["components"]["schemas"];
    let post = |policy: Value| {
        let app = &app;
        async move {
            let body =
                json!({"user_email": "a@b.co", "keys": ["sk-0123456789012345678901234567890"], "policy": policy});
            let res = app.post_keys(&body).await;
            let status = res.status().as_u16();
            (status, res.json::<Value>().await.unwrap())
        }
    };
    // Every numeric setting is bounded on both sides in the document, as in `validate_policy`.
    let properties = schemas["Policy"]["properties"].as_object().unwrap();
    for (name, schema) in properties {
        if schema["type"].to_string().contains("integer") || schema["type"].to_string().contains("number") {
            assert!(schema["minimum"].is_number() && schema["maximum"].is_number(), "policy.{name}: {schema}");
        }
    }
    let mut checked = Vec::new();
    for (name, schema) in properties {
        for keyword in ["minimum", "maximum", "minLength", "maxLength", "maxItems"] {
            if schema[keyword].is_null() {
                continue;
            }
            let (status, body) = post(json!({ name: at_bound(schema, keyword, false) })).await;
            // Azure deployments must also exist among the set's Azure keys; the list's length is checked first.
            if name != "azure_fallback_strategy" {
                assert_eq!(status, 201, "policy.{name} at its documented {keyword} is refused: {body}");
            } else {
                assert_ne!(body["error"]["param"], format!("policy.{name}"), "{body}");
            }
            let past = at_bound(schema, keyword, true);
            if past.as_i64().is_some_and(|n| n < 0) {
                continue; // an unsigned field: a negative number is not JSON of its type
            }
            let (status, body) = post(json!({ name: past })).await;
            assert_eq!(status, 400, "policy.{name} just past its documented {keyword} is accepted: {body}");
            assert_eq!(body["error"]["param"], format!("policy.{name}"), "{body}");
            checked.push(format!("{name}.{keyword}"));
        }
    }
    for expected in ["max_concurrency.minimum", "hedge_ms.minimum", "hedge_ms.maximum", "graceful_string.maxLength"] {
        assert!(checked.iter().any(|c| c == expected), "{expected} is not documented: {checked:?}");
    }
    // Per-model budgets: positive.
    let limit = &schemas["ModelLimit"]["properties"];
    for field in ["rpm", "tpm"] {
        assert_eq!(limit[field]["minimum"], 1, "{field}");
        let (status, body) = post(json!({"model_limits": {"gpt-4o": {field: 1}}})).await;
        assert_eq!(status, 201, "{body}");
        let (status, body) = post(json!({"model_limits": {"gpt-4o": {field: 0}}})).await;
        assert_eq!(status, 400, "{body}");
    }
    // The gateway's `model` is required in the document, as in the handler.
    assert_eq!(schemas["GatewayBody"]["required"], json!(["model"]));
    for path in ["/v1/chat/completions", "/v1/completions", "/v1/embeddings"] {
        let body = &doc["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"];
        assert_eq!(body["$ref"], "#/components/schemas/GatewayBody", "{path}");
    }
}

#[tokio::test]
async fn refusals_the_service_gives_are_documented_where_they_happen() {
    let app = spawn_app().await;
    let doc: Value = app.client.get(app.url("/openapi.json")).send().await.unwrap().json().await.unwrap();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let responses = &op["responses"];
            let has = |status: &str| responses[status]["content"]["application/json"]["schema"].is_object();
            assert!(has("405") && responses["405"]["headers"]["Allow"].is_object(), "{method} {path}: 405");
            if op["requestBody"].is_object() {
                for status in ["408", "413"] {
                    assert!(has(status), "{method} {path}: {status}");
                }
                let gateway = op["tags"].as_array().unwrap().iter().any(|t| t == "gateway");
                assert_eq!(has("415"), !gateway, "{method} {path}: 415 only where Content-Type is checked");
            }
            if op["security"].is_array() {
                assert!(has("401") && has("429"), "{method} {path}: 401/429");
            }
        }
    }
    // And the service really answers so.
    let res = app.client.put(app.url("/v1/keys")).send().await.unwrap();
    assert_eq!(res.status(), 405);
    assert!(res.headers().contains_key("allow"));
}

#[test]
fn parameters_are_documented_where_they_are_read() {
    let doc: Value = serde_json::from_str(&reliablegpt::api::openapi::document()).unwrap();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            for param in op["parameters"].as_array().into_iter().flatten() {
                let name = param["name"].as_str().unwrap();
                let in_template = path.contains(&format!("{{{name}}}"));
                assert_eq!(
                    param["in"] == "path",
                    in_template,
                    "{method} {path}: parameter {name} is `in: {}`",
                    param["in"]
                );
            }
        }
    }
}
