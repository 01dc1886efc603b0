//! Health probes, error shape, body limits, request ids.

use serde_json::{Value, json};

use crate::helpers::{canary_key, error_of, spawn_app, token_of};

#[tokio::test]
async fn health_and_readiness() {
    let app = spawn_app().await;
    let res = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.json::<Value>().await.unwrap()["status"], "ok");
    let res = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.json::<Value>().await.unwrap()["status"], "ready");

    // A schema change behind the service's back makes it unready, in the error shape.
    sqlx::query("DELETE FROM _sqlx_migrations WHERE version = (SELECT max(version) FROM _sqlx_migrations)")
        .execute(&app.pool)
        .await
        .unwrap();
    let error = error_of(app.client.get(app.url("/readyz")).send().await.unwrap(), 503).await;
    assert!(error["message"].as_str().unwrap().contains("reliablegpt migrate"), "{error}");
}

#[tokio::test]
async fn malformed_json_is_a_400_naming_the_problem() {
    let app = spawn_app().await;
    let send = |body: &'static str| {
        app.client.post(app.url("/v1/keys")).header("content-type", "application/json").body(body).send()
    };
    let error = error_of(send("{\"user_email\": ").await.unwrap(), 400).await;
    assert_eq!(error["code"], "invalid_json");
    assert!(error["message"].as_str().unwrap().contains("line 1"), "{error}");
    let error =
        error_of(send("{\"user_email\": \"a@b.co\", \"keys\": [\"k\"], \"colour\": 1}").await.unwrap(), 400).await;
    assert!(error["message"].as_str().unwrap().contains("unknown field `colour`"), "{error}");
    let error = error_of(send("{\"user_email\": \"a@b.co\", \"keys\": \"sk-looks-secret\"}").await.unwrap(), 400).await;
    assert!(!error["message"].as_str().unwrap().contains("sk-looks-secret"), "{error}");
    let error = error_of(send("[]").await.unwrap(), 400).await;
    assert_eq!(error["code"], "invalid_json");
    // curl -d sends a form content type; the body is still JSON and is accepted.
    let res = app
        .client
        .post(app.url("/v1/keys"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(json!({"user_email": "a@b.co", "keys": ["sk-0123456789012345678901234567890"]}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
}

#[tokio::test]
async fn oversized_bodies_get_413_in_the_error_shape() {
    let app = spawn_app().await;
    let huge = json!({"user_email": "a@b.co", "keys": ["k".repeat(100 * 1024)]});
    let error = error_of(app.post_keys(&huge).await, 413).await;
    assert_eq!(error["code"], "payload_too_large");
    assert_eq!(app.count("vault_key_sets").await, 0);
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_in_the_error_shape() {
    let app = spawn_app().await;
    let error = error_of(app.client.get(app.url("/v1/nope")).send().await.unwrap(), 404).await;
    assert_eq!(error["code"], "unknown_url");
    let error = error_of(app.client.put(app.url("/v1/keys")).send().await.unwrap(), 405).await;
    assert_eq!(error["code"], "method_not_allowed");
}

#[tokio::test]
async fn head_answers_like_get_without_a_body() {
    let app = spawn_app().await;
    let token = token_of(&app.create_key_set(json!([canary_key()])).await);
    for (path, authenticated) in [
        ("/healthz", false),
        ("/readyz", false),
        ("/metrics", false),
        ("/openapi.json", false),
        ("/docs/", false),
        ("/docs", false),
        ("/v1/keys", true),
        ("/v1/models", true),
        ("/v1/models/gpt-4o", true),
    ] {
        let auth = |req: reqwest::RequestBuilder| if authenticated { req.bearer_auth(&token) } else { req };
        let get = auth(app.client.get(app.url(path))).send().await.unwrap();
        let head = auth(app.client.head(app.url(path))).send().await.unwrap();
        assert!(get.status().is_success() || get.status().is_redirection(), "GET {path}: {}", get.status());
        assert_eq!(head.status(), get.status(), "{path}");
        for name in ["content-type", "content-length", "location"] {
            assert_eq!(head.headers().get(name), get.headers().get(name), "{path}: {name}");
        }
        assert!(head.headers().contains_key("x-request-id"), "{path}");
        assert!(head.bytes().await.unwrap().is_empty(), "HEAD {path} has no body");
    }

    // Without a token HEAD is the same 401 as GET, headers only.
    for path in ["/v1/keys", "/v1/models", "/v1/models/gpt-4o"] {
        let res = app.client.head(app.url(path)).send().await.unwrap();
        assert_eq!(res.status(), 401, "{path}");
        assert_eq!(res.headers()["content-type"], "application/json", "{path}");
        assert!(res.bytes().await.unwrap().is_empty(), "{path}");
    }

    // Routes without GET keep answering as before: HEAD is no way in.
    for path in ["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/nope"] {
        let get = app.client.get(app.url(path)).send().await.unwrap().status();
        let head = app.client.head(app.url(path)).send().await.unwrap();
        assert_eq!((get.as_u16(), head.status().as_u16()), (404, 404), "{path}");
        assert!(head.bytes().await.unwrap().is_empty(), "{path}");
    }
    for path in ["/healthz", "/v1/models", "/v1/models/gpt-4o", "/docs"] {
        let error = error_of(app.client.post(app.url(path)).send().await.unwrap(), 404).await;
        assert_eq!(error["code"], "unknown_url", "{path}");
    }
    let error = error_of(app.client.put(app.url("/v1/keys")).send().await.unwrap(), 405).await;
    assert_eq!(error["code"], "method_not_allowed");
}

#[tokio::test]
async fn request_ids_are_echoed_or_generated() {
    let app = spawn_app().await;
    let res = app.client.get(app.url("/healthz")).header("x-request-id", "abc-123").send().await.unwrap();
    assert_eq!(res.headers()["x-request-id"], "abc-123");
    let res = app.client.get(app.url("/v1/keys")).send().await.unwrap();
    let generated = res.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(generated.len(), 36);
    assert_eq!(res.status(), 401);
    // An id we would not want in our logs is replaced.
    let res = app.client.get(app.url("/healthz")).header("x-request-id", "a b\tc").send().await.unwrap();
    assert_ne!(res.headers()["x-request-id"], "a b\tc");
}
