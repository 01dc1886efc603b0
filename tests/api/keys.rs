//! The vault API contract: create, read, change and revoke key sets.

use reliablegpt::config::env;
use serde_json::{Value, json};

use crate::helpers::{assert_absent, canary_key, error_of, random_secret, spawn_app, token_of};

fn azure_key(secret: &str) -> Value {
    json!({"provider": "azure", "key": secret, "endpoint": "https://myres.openai.azure.com",
           "api_version": "2024-10-21", "deployments": {"gpt-4o": "prod-gpt4o"}})
}

#[tokio::test]
async fn create_returns_a_token_and_masked_keys_only() {
    let app = spawn_app().await;
    let (k1, k2, k3) = (canary_key(), canary_key(), canary_key());
    let res = app
        .post_keys(&json!({
            "user_email": " Dev@Example.COM ",
            "keys": [k1, {"provider": "openai", "key": k2, "base_url": "https://api.openai.com/v1"}, azure_key(&k3)],
            "policy": {"fallback_strategy": ["gpt-4o", "gpt-4o-mini"], "azure_fallback_strategy": ["prod-gpt4o"]}
        }))
        .await;
    assert_eq!(res.status(), 201);
    assert_eq!(res.headers()["cache-control"], "no-store");
    let text = res.text().await.unwrap();
    for k in [&k1, &k2, &k3] {
        assert_absent(&text, k, "POST /v1/keys response");
    }
    let body: Value = serde_json::from_str(&text).unwrap();
    let token = token_of(&body);
    assert!(token.starts_with("rgpt_") && token.len() == 54, "{token}");
    assert_eq!(body["user_email"], "Dev@example.com");
    assert_eq!(body["email_verified"], false);
    assert!(body["key_set_id"].as_str().unwrap().len() == 36);
    let keys = body["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 3);
    assert_eq!(keys[0]["provider"], "openai");
    assert_eq!(keys[0]["masked"], format!("sk-...{}", &k1[k1.len() - 4..]));
    assert_eq!(keys[0]["status"], "active");
    assert_eq!(keys[1]["base_url"], "https://api.openai.com/v1");
    assert_eq!(keys[2]["provider"], "azure");
    assert_eq!(keys[2]["endpoint"], "https://myres.openai.azure.com");
    assert_eq!(keys[2]["deployments"]["gpt-4o"], "prod-gpt4o");
    assert_eq!(body["policy"]["fallback_strategy"], json!(["gpt-4o", "gpt-4o-mini"]));
    assert_eq!(body["policy"]["caching"], false);
    assert_eq!(body["policy"]["max_concurrency"], Value::Null);
    assert_eq!(app.count("vault_key_sets").await, 1);
    assert_eq!(app.count("vault_provider_keys").await, 3);
}

#[tokio::test]
async fn get_lists_the_key_set_without_the_token() {
    let app = spawn_app().await;
    let k = canary_key();
    let created = app.create_key_set(json!([k])).await;
    let res = app.get_keys(&token_of(&created)).await;
    assert_eq!(res.status(), 200);
    let text = res.text().await.unwrap();
    assert_absent(&text, &k, "GET /v1/keys response");
    let body: Value = serde_json::from_str(&text).unwrap();
    assert!(body.get("token").is_none());
    assert_eq!(body["key_set_id"], created["key_set_id"]);
    let key = &body["keys"][0];
    assert_eq!(key["status"], "active");
    assert_eq!(key["last_error"], Value::Null);
    assert_eq!(key["last_used_at"], Value::Null);
    assert_eq!(key["masked"], created["keys"][0]["masked"]);
}

#[tokio::test]
async fn invalid_bodies_name_the_field_and_store_nothing() {
    let app = spawn_app().await;
    let k = canary_key();
    let cases = [
        (json!({"user_email": "not-an-email", "keys": [k]}), "user_email"),
        (json!({"user_email": "a@example.com", "keys": []}), "keys"),
        (json!({"user_email": "a@example.com", "keys": vec![k.clone(); 33]}), "keys"),
        (json!({"user_email": "a@example.com", "keys": [k, "x".repeat(513)]}), "keys[1].key"),
        (
            json!({"user_email": "a@example.com", "keys": [{"provider": "azure", "key": k, "endpoint": "http://myres.openai.azure.com",
            "api_version": "2024-10-21", "deployments": {"gpt-4o": "d"}}]}),
            "keys[0].endpoint",
        ),
        (
            json!({"user_email": "a@example.com", "keys": [{"provider": "openai", "key": k, "base_url": "https://169.254.169.254/v1"}]}),
            "keys[0].base_url",
        ),
        (
            json!({"user_email": "a@example.com", "keys": [{"provider": "openai", "key": k, "base_url": "https://evil.example.com/v1"}]}),
            "keys[0].base_url",
        ),
        (
            json!({"user_email": "a@example.com", "keys": [k], "policy": {"max_concurrency": 0}}),
            "policy.max_concurrency",
        ),
        // A deployment name is one path segment: these would send the key to another path on the host.
        (
            json!({"user_email": "a@example.com", "keys": [{"provider": "azure", "key": k, "endpoint": "https://myres.openai.azure.com",
            "api_version": "2024-10-21", "deployments": {"gpt-4o": "../../v1"}}]}),
            "keys[0].deployments.gpt-4o",
        ),
        (
            json!({"user_email": "a@example.com", "keys": [{"provider": "azure", "key": k, "endpoint": "https://myres.openai.azure.com",
            "api_version": "2024-10-21", "deployments": {"gpt-4o": "prod/chat"}}]}),
            "keys[0].deployments.gpt-4o",
        ),
        // Upstreams listen on 443 unless the operator's allowlist entry names another port.
        (
            json!({"user_email": "a@example.com", "keys": [{"provider": "openai", "key": k, "base_url": "https://api.openai.com:22/v1"}]}),
            "keys[0].base_url",
        ),
    ];
    for (body, param) in cases {
        let res = app.post_keys(&body).await;
        let text_status = res.status();
        let error = error_of(res, 400).await;
        assert_eq!(error["param"], param, "{body} -> {text_status} {error}");
        assert_eq!(error["type"], "invalid_request_error");
        assert_absent(&error.to_string(), &k, "validation error");
    }

    // Refusing http or a private address names the operator's switch for local demos, and warns it off production.
    for url in ["http://api.openai.com/v1", "https://10.0.0.5/v1"] {
        let body = json!({"user_email": "a@example.com", "keys": [{"provider": "openai", "key": k, "base_url": url}]});
        let error = error_of(app.post_keys(&body).await, 400).await;
        assert_eq!(error["param"], "keys[0].base_url");
        let message = error["message"].as_str().unwrap();
        assert!(message.contains(&format!("{}=true", env::ALLOW_PRIVATE_UPSTREAMS)), "{message}");
        assert!(message.contains("never in production"), "{message}");
    }
    // serde would read a struct from an array of its fields; a key set must be an object.
    let error = error_of(app.post_keys(&json!(["a@example.com", [k]])).await, 400).await;
    assert!(error["message"].as_str().unwrap().contains("JSON object"), "{error}");
    assert_eq!(app.count("vault_key_sets").await, 0);
    assert_eq!(app.count("vault_provider_keys").await, 0);
}

#[tokio::test]
async fn a_policy_must_be_an_object_and_patch_with_an_array_changes_nothing() {
    let app = spawn_app().await;
    let created = app
        .post_keys(&json!({"user_email": "a@example.com", "keys": [canary_key()], "policy": {"fallback_strategy": ["gpt-4o-mini"]}}))
        .await;
    let token = token_of(&created.json().await.unwrap());
    for policy in [json!([]), json!(["gpt-4o"]), json!("default")] {
        let error = error_of(app.patch_keys(&token, &json!({"policy": policy})).await, 400).await;
        assert!(error["message"].as_str().unwrap().contains("JSON object"), "{policy}: {error}");
    }
    let listed: Value = app.get_keys(&token).await.json().await.unwrap();
    assert_eq!(listed["policy"]["fallback_strategy"], json!(["gpt-4o-mini"]));
    let res = app.post_keys(&json!({"user_email": "a@example.com", "keys": [canary_key()], "policy": []})).await;
    error_of(res, 400).await;
}

#[tokio::test]
async fn patch_adds_removes_reorders_and_replaces_policy() {
    let app = spawn_app().await;
    let (k1, k2, k3) = (canary_key(), canary_key(), canary_key());
    let created = app.create_key_set(json!([k1, k2])).await;
    let token = token_of(&created);
    let id1 = created["keys"][0]["id"].as_str().unwrap().to_owned();
    let id2 = created["keys"][1]["id"].as_str().unwrap().to_owned();

    let res = app
        .patch_keys(
            &token,
            &json!({"order": [id2, id1], "add_keys": [azure_key(&k3)],
                    "policy": {"fallback_strategy": ["gpt-4o-mini"], "azure_fallback_strategy": ["prod-gpt4o"], "caching": true}}),
        )
        .await;
    assert_eq!(res.status(), 200);
    let text = res.text().await.unwrap();
    assert_absent(&text, &k3, "PATCH response");
    let body: Value = serde_json::from_str(&text).unwrap();
    let ids: Vec<&str> = body["keys"].as_array().unwrap().iter().map(|k| k["id"].as_str().unwrap()).collect();
    assert_eq!(ids[..2], [id2.as_str(), id1.as_str()]);
    assert_eq!(body["keys"][2]["provider"], "azure");
    assert_eq!(body["policy"]["caching"], true);
    assert_eq!(body["policy"]["fallback_strategy"], json!(["gpt-4o-mini"]));

    let res = app.patch_keys(&token, &json!({"remove_keys": [id2]})).await;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["keys"].as_array().unwrap().len(), 2);
    assert_eq!(body["keys"][0]["id"], id1.as_str());

    // The stored state is what GET reports.
    let listed: Value = app.get_keys(&token).await.json().await.unwrap();
    assert_eq!(listed, body);
}

#[tokio::test]
async fn failed_patch_changes_nothing() {
    let app = spawn_app().await;
    let created = app.create_key_set(json!([canary_key(), canary_key()])).await;
    let token = token_of(&created);
    let before: Value = app.get_keys(&token).await.json().await.unwrap();
    let id1 = created["keys"][0]["id"].as_str().unwrap();
    let id2 = created["keys"][1]["id"].as_str().unwrap();
    let cases = [
        (json!({"remove_keys": [id1, id2]}), "keys"),
        (json!({"remove_keys": [uuid::Uuid::new_v4()]}), "remove_keys[0]"),
        (json!({"order": [id1]}), "order"),
        (json!({"order": [id1, id2], "add_keys": ["bad key"]}), "add_keys[0].key"),
        (json!({"policy": {"azure_fallback_strategy": ["nope"]}}), "policy.azure_fallback_strategy[0]"),
        (json!({"user_email": "nope", "remove_keys": [id1]}), "user_email"),
    ];
    for (body, param) in cases {
        let error = error_of(app.patch_keys(&token, &body).await, 400).await;
        assert_eq!(error["param"], param, "{body}");
    }
    let error = error_of(app.patch_keys(&token, &json!({"surprise": 1})).await, 400).await;
    assert!(error["message"].as_str().unwrap().contains("unknown field `surprise`"), "{error}");
    let after: Value = app.get_keys(&token).await.json().await.unwrap();
    assert_eq!(before, after);
}

#[tokio::test]
async fn invalid_key_is_visible_and_a_patch_revives_it() {
    let app = spawn_app().await;
    let created = app.create_key_set(json!([canary_key()])).await;
    let token = token_of(&created);
    let set_id = created["key_set_id"].as_str().unwrap().parse().unwrap();
    let key_id = created["keys"][0]["id"].as_str().unwrap().parse().unwrap();
    let vault = reliablegpt::vault::Vault::new(
        app.pool.clone(),
        std::sync::Arc::new(
            reliablegpt::config::Keyring::parse("RELIABLEGPT_MASTER_KEY", &app.env["RELIABLEGPT_MASTER_KEY"]).unwrap(),
        ),
        &reliablegpt::config::Keyring::parse("RELIABLEGPT_TOKEN_PEPPER", &random_secret()).unwrap(),
    );
    assert!(vault.mark_key_invalid(set_id, key_id, "invalid_api_key: Incorrect API key provided").await.unwrap());
    let listed: Value = app.get_keys(&token).await.json().await.unwrap();
    assert_eq!(listed["keys"][0]["status"], "invalid");
    assert_eq!(listed["keys"][0]["last_error"], "invalid_api_key: Incorrect API key provided");

    let res = app.patch_keys(&token, &json!({"revive_keys": [key_id]})).await;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["keys"][0]["status"], "active");
    assert_eq!(body["keys"][0]["last_error"], Value::Null);
}

#[tokio::test]
async fn delete_revokes_at_once_and_destroys_everything() {
    let app = spawn_app().await;
    let created = app.create_key_set(json!([canary_key(), canary_key()])).await;
    let token = token_of(&created);
    let other = app.create_key_set(json!([canary_key()])).await;

    let res = app.delete_keys(&token).await;
    assert_eq!(res.status(), 204);
    error_of(app.get_keys(&token).await, 401).await;
    error_of(app.delete_keys(&token).await, 401).await;
    error_of(app.patch_keys(&token, &json!({"add_keys": [canary_key()]})).await, 401).await;

    let id: uuid::Uuid = created["key_set_id"].as_str().unwrap().parse().unwrap();
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM vault_key_sets WHERE id = $1")
        .bind(id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(left, 0, "wrapped data key survived revocation");
    let keys_left: i64 = sqlx::query_scalar("SELECT count(*) FROM vault_provider_keys WHERE key_set_id = $1")
        .bind(id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(keys_left, 0, "ciphertexts survived revocation");
    // The other tenant is untouched.
    assert_eq!(app.get_keys(&token_of(&other)).await.status(), 200);
}

#[tokio::test]
async fn one_token_can_neither_read_nor_change_another_key_set() {
    let app = spawn_app().await;
    let a = app.create_key_set(json!([canary_key()])).await;
    let b = app.create_key_set(json!([canary_key(), canary_key()])).await;
    let (token_a, token_b) = (token_of(&a), token_of(&b));
    let b_key = b["keys"][0]["id"].as_str().unwrap();

    let seen: Value = app.get_keys(&token_a).await.json().await.unwrap();
    assert_eq!(seen["key_set_id"], a["key_set_id"]);
    assert!(!seen.to_string().contains(b_key));

    for body in [json!({"remove_keys": [b_key]}), json!({"revive_keys": [b_key]}), json!({"order": [b_key]})] {
        assert_eq!(app.patch_keys(&token_a, &body).await.status(), 400, "{body}");
    }
    let b_after: Value = app.get_keys(&token_b).await.json().await.unwrap();
    assert_eq!(b_after["keys"].as_array().unwrap().len(), 2);
    assert_eq!(b_after["keys"][0]["id"], b_key);
}

#[tokio::test]
async fn a_busy_token_is_read_again_in_the_background_before_its_set_expires() {
    let app = spawn_app().await;
    let token = token_of(&app.create_key_set(json!([canary_key()])).await);
    let ring = |name: &'static str| reliablegpt::config::Keyring::parse(name, &app.env[name]).unwrap();
    let ttl = std::time::Duration::from_secs(3);
    let vault = reliablegpt::vault::Vault::with_cache(
        app.pool.clone(),
        std::sync::Arc::new(ring("RELIABLEGPT_MASTER_KEY")),
        &ring("RELIABLEGPT_TOKEN_PEPPER"),
        ttl,
        std::time::Duration::ZERO,
    );
    let first = vault.open_for_request(&token).await.unwrap();
    assert!(std::sync::Arc::ptr_eq(&first, &vault.open_for_request(&token).await.unwrap()), "served from memory");
    // In the last quarter of its TTL: this request is still answered from memory and starts a background read.
    tokio::time::sleep(ttl * 4 / 5).await;
    let during = vault.open_for_request(&token).await.unwrap();
    assert!(std::sync::Arc::ptr_eq(&first, &during), "the request did not wait for the read");
    let mut refreshed = None;
    for _ in 0..50 {
        let now = vault.open_for_request(&token).await.unwrap();
        if !std::sync::Arc::ptr_eq(&now, &first) {
            refreshed = Some(now);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let refreshed = refreshed.expect("the refreshed set replaced the old one");
    assert!(
        refreshed.loaded_at < first.loaded_at + ttl,
        "read before the old set expired (a reload after expiry would have been read later)"
    );
    assert_eq!(refreshed.key_set_id, first.key_set_id);
}
