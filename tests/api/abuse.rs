//! Per-client-IP rate limits.

use reliablegpt::config::env;
use serde_json::json;

use crate::helpers::{canary_key, error_of, spawn_app_with, token_of};

#[tokio::test]
async fn key_set_creation_is_rate_limited_per_ip() {
    let app = spawn_app_with(|e| {
        e.insert(env::KEY_SETS_PER_MINUTE.into(), "2".into());
    })
    .await;
    let body = json!({"user_email": "dev@example.com", "keys": [canary_key()]});
    assert_eq!(app.post_keys(&body).await.status(), 201);
    assert_eq!(app.post_keys(&body).await.status(), 201);
    let res = app.post_keys(&body).await;
    let retry_after: u64 = res.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=30).contains(&retry_after), "{retry_after}");
    let error = error_of(res, 429).await;
    assert_eq!(error["code"], "rate_limit_exceeded");
    assert_eq!(app.count("vault_key_sets").await, 2);
}

#[tokio::test]
async fn repeated_authentication_failures_are_rate_limited() {
    let app = spawn_app_with(|e| {
        e.insert(env::AUTH_FAILURES_PER_MINUTE.into(), "3".into());
    })
    .await;
    let token = token_of(&app.create_key_set(json!([canary_key()])).await);
    // Successes do not count against the budget.
    for _ in 0..5 {
        assert_eq!(app.get_keys(&token).await.status(), 200);
    }
    for _ in 0..3 {
        error_of(app.get_keys("rgpt_wrong").await, 401).await;
    }
    let res = app.get_keys("rgpt_wrong").await;
    assert!(res.headers().contains_key("retry-after"));
    assert_eq!(error_of(res, 429).await["code"], "rate_limit_exceeded");
    // While blocked, even a valid token from this address waits: guessing gains nothing from interleaving.
    assert_eq!(app.get_keys(&token).await.status(), 429);
}
