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
}

#[tokio::test]
async fn management_bodies_must_be_declared_json() {
    let app = spawn_app().await;
    let body = json!({"user_email": "a@b.co", "keys": ["sk-0123456789012345678901234567890"]}).to_string();
    // A browser form (or curl -d without a header) could otherwise create key sets cross-site without a preflight.
    for content_type in [Some("application/x-www-form-urlencoded"), Some("text/plain"), Some(";;;"), None] {
        let mut req = app.client.post(app.url("/v1/keys")).body(body.clone());
        if let Some(value) = content_type {
            req = req.header("content-type", value);
        }
        let error = error_of(req.send().await.unwrap(), 415).await;
        assert_eq!(error["code"], "unsupported_media_type", "{content_type:?}");
    }
    assert_eq!(app.count("vault_key_sets").await, 0);
    for content_type in ["application/json", "application/json; charset=utf-8", "application/merge-patch+json"] {
        let res = app.client.post(app.url("/v1/keys")).header("content-type", content_type).body(body.clone());
        assert_eq!(res.send().await.unwrap().status(), 201, "{content_type}");
    }
}

#[tokio::test]
async fn duplicate_model_fields_are_refused_not_guessed() {
    let gw = crate::helpers::spawn_gateway().await;
    let token = gw.key_set(&["sk-dup"], &[]).await;
    let res = gw
        .app
        .client
        .post(gw.app.url("/v1/chat/completions"))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body(r#"{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "model": "gpt-4o"}"#)
        .send()
        .await
        .unwrap();
    let error = error_of(res, 400).await;
    assert!(error["message"].as_str().unwrap().contains("duplicate field `model`"), "{error}");
    assert!(gw.mock.requests().is_empty());
}

/// Without caching the edge only builds the body's top-level fields and checks the rest without building it; with
/// caching it builds the whole tree. Both refuse the same malformed bodies with the same error, and send nothing.
#[tokio::test]
async fn malformed_json_deep_in_the_body_is_refused_whether_or_not_its_tree_is_built() {
    let gw = crate::helpers::spawn_gateway().await;
    let token = gw.key_set(&["sk-deep"], &[]).await;
    let bodies: [&[u8]; 5] = [
        br#"{"model": "gpt-4o", "messages": [{"role": "user", "content": "\ud800"}]}"#,
        br#"{"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "temperature": 1e400}"#,
        br#"{"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"},]}"#,
        b"{\"model\": \"gpt-4o\", \"messages\": [{\"role\": \"user\", \"content\": \"\xff\"}]}",
        br#"{"model": "gpt-4o", "messages": [{"role": "user", "content": "a\qb"}]}"#,
    ];
    let post = |caching: &'static str, body: Vec<u8>| {
        gw.app
            .client
            .post(gw.app.url("/v1/chat/completions"))
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .header("x-reliablegpt-caching", caching)
            .body(body)
            .send()
    };
    for body in bodies {
        let mut errors = Vec::new();
        for caching in ["false", "true"] {
            errors.push(error_of(post(caching, body.to_vec()).await.unwrap(), 400).await);
        }
        assert_eq!(errors[0], errors[1], "{}", String::from_utf8_lossy(body));
    }
    assert!(gw.mock.requests().is_empty());
    // A well-formed body still goes through on both paths.
    let valid = json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi \u{e9}"}]});
    for caching in ["false", "true"] {
        assert_eq!(post(caching, valid.to_string().into_bytes()).await.unwrap().status(), 200);
    }
    assert_eq!(gw.mock.requests().len(), 2);
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
    let res = app.client.put(app.url("/v1/keys")).send().await.unwrap();
    assert_eq!(res.headers()["allow"], "GET, HEAD, POST, PATCH, DELETE");
    assert_eq!(error_of(res, 405).await["code"], "method_not_allowed");
    // Every route, the gateway's included, answers other methods (TRACE too) with 405 and `Allow`.
    for (path, allow) in [
        ("/v1/chat/completions", "POST"),
        ("/v1/embeddings", "POST"),
        ("/v1/models", "GET, HEAD"),
        ("/v1/models/gpt-4o", "GET, HEAD"),
        ("/v1/cache/lookup", "POST"),
        ("/healthz", "GET, HEAD"),
        ("/v1/keys", "GET, HEAD, POST, PATCH, DELETE"),
    ] {
        for method in ["TRACE", "PUT", "OPTIONS"] {
            let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
            let res = app.client.request(method.clone(), app.url(path)).send().await.unwrap();
            assert_eq!(res.headers().get("allow").map(|v| v.to_str().unwrap()), Some(allow), "{method} {path}");
            assert_eq!(error_of(res, 405).await["code"], "method_not_allowed", "{method} {path}");
        }
    }
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

    // Routes without GET answer GET and HEAD alike (405 with `Allow`): HEAD is no way in.
    for (path, status) in
        [("/v1/chat/completions", 405), ("/v1/completions", 405), ("/v1/embeddings", 405), ("/v1/nope", 404)]
    {
        let get = app.client.get(app.url(path)).send().await.unwrap().status();
        let head = app.client.head(app.url(path)).send().await.unwrap();
        assert_eq!((get.as_u16(), head.status().as_u16()), (status, status), "{path}");
        assert!(head.bytes().await.unwrap().is_empty(), "{path}");
    }
    for path in ["/healthz", "/v1/models", "/v1/models/gpt-4o", "/docs"] {
        let res = app.client.post(app.url(path)).send().await.unwrap();
        assert_eq!(res.headers()["allow"], "GET, HEAD", "{path}");
        assert_eq!(error_of(res, 405).await["code"], "method_not_allowed", "{path}");
    }
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
