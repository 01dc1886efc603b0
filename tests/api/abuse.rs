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
    // The budget refuses failures only: a valid token from the same address is still served.
    assert_eq!(app.get_keys(&token).await.status(), 200);
    assert_eq!(error_of(app.get_keys("rgpt_wrong").await, 429).await["code"], "rate_limit_exceeded");
}

async fn get_keys_from(app: &crate::helpers::TestApp, token: &str, forwarded_for: &str) -> reqwest::Response {
    reqwest::Client::new()
        .get(app.url("/v1/keys"))
        .bearer_auth(token)
        .header("x-forwarded-for", forwarded_for)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn behind_a_trusted_load_balancer_each_client_has_its_own_budget() {
    let app = spawn_app_with(|e| {
        e.insert(env::AUTH_FAILURES_PER_MINUTE.into(), "3".into());
        e.insert(env::TRUSTED_PROXIES.into(), "127.0.0.0/8, ::1".into());
    })
    .await;
    let token = token_of(&app.create_key_set(json!([canary_key()])).await);
    // The attacker forges a leftmost address; the load balancer (the test client, at 127.0.0.1) appends the real one.
    for forged in ["198.51.100.1", "198.51.100.2", "198.51.100.3"] {
        error_of(get_keys_from(&app, "rgpt_wrong", &format!("{forged}, 203.0.113.66")).await, 401).await;
    }
    let res = get_keys_from(&app, "rgpt_wrong", "198.51.100.4, 203.0.113.66").await;
    assert_eq!(error_of(res, 429).await["code"], "rate_limit_exceeded");
    // Every other client behind the same balancer is untouched: valid tokens pass, wrong ones are plain 401s.
    assert_eq!(get_keys_from(&app, &token, "203.0.113.77").await.status(), 200);
    error_of(get_keys_from(&app, "rgpt_wrong", "203.0.113.77").await, 401).await;
    assert_eq!(app.get_keys(&token).await.status(), 200);
}

#[tokio::test]
async fn forwarding_headers_from_untrusted_peers_are_ignored() {
    let app = spawn_app_with(|e| {
        e.insert(env::AUTH_FAILURES_PER_MINUTE.into(), "3".into());
        e.insert(env::TRUSTED_PROXIES.into(), "10.0.0.0/8".into());
    })
    .await;
    // A client cannot buy fresh budgets by inventing addresses: the peer (127.0.0.1) is not a trusted proxy.
    for n in 1..=3 {
        error_of(get_keys_from(&app, "rgpt_wrong", &format!("203.0.113.{n}")).await, 401).await;
    }
    let res = get_keys_from(&app, "rgpt_wrong", "203.0.113.99").await;
    assert_eq!(error_of(res, 429).await["code"], "rate_limit_exceeded");
}

#[tokio::test]
async fn a_malformed_trusted_proxy_list_stops_the_service_with_a_reason() {
    let mut vars = crate::helpers::base_env(&*crate::helpers::TestDatabase::create().await);
    vars.insert(env::TRUSTED_PROXIES.into(), "10.0.0.0/8, 10.0.0.0/40".into());
    let err = reliablegpt::config::Settings::from_sources(None, |k| vars.get(k).cloned()).unwrap_err().to_string();
    assert!(err.contains("RELIABLEGPT_TRUSTED_PROXIES") && err.contains("prefix"), "{err}");
}
