//! Where the upstream client may connect: never through a proxy it was not told about.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use reliablegpt::config::env;
use serde_json::json;

use crate::helpers::{RunningService, TestDatabase, base_env, chat_body, token_of};

/// A TCP listener that only counts who connects to it, standing in for an HTTP proxy.
async fn counting_listener() -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            seen.fetch_add(1, Ordering::SeqCst);
            drop(socket);
        }
    });
    (url, count)
}

#[tokio::test]
async fn proxy_variables_in_the_environment_are_ignored_by_the_upstream_client() {
    let mock = reliablegpt::mock_upstream::MockUpstream::start("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let (proxy, proxied) = counting_listener().await;
    let db = TestDatabase::create().await;
    reliablegpt::db::migrate(&db.pool().await).await.unwrap();
    let mut vars = base_env(&db);
    vars.insert(env::OPENAI_BASE_URL.into(), mock.base_url());
    vars.insert(env::ALLOW_PRIVATE_UPSTREAMS.into(), "true".into());
    vars.insert(env::ALLOWED_UPSTREAM_HOSTS.into(), "127.0.0.1,api.openai.com".into());
    // A proxy resolves names itself, so it would bypass the guarded resolver: the service must not use one.
    for name in ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"] {
        vars.insert(name.into(), proxy.clone());
    }
    let service = RunningService::start(&vars, "info");
    let created = service.post_keys(&json!({"user_email": "dev@example.com", "keys": ["sk-proxytest"]})).await;
    let token = token_of(&created);
    let res = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .post(format!("{}/v1/chat/completions", service.base))
        .bearer_auth(&token)
        .json(&chat_body("gpt-4o"))
        .send()
        .await
        .unwrap();
    let status = res.status();
    let logs = service.stop();
    assert_eq!(status, 200, "{logs}");
    assert_eq!(mock.requests().len(), 1);
    assert_eq!(proxied.load(Ordering::SeqCst), 0, "the upstream call went through the environment's proxy");
}

#[tokio::test]
async fn a_host_resolving_to_a_private_address_is_refused_once_not_retried() {
    let gw = crate::helpers::spawn_gateway_with(|e| {
        e.insert(env::ALLOW_PRIVATE_UPSTREAMS.into(), "false".into());
        e.insert(env::ALLOWED_UPSTREAM_HOSTS.into(), "localhost,api.openai.com".into());
    })
    .await;
    // `localhost` passes the allowlist and the https/443 rules when stored; it resolves to loopback, which the guarded
    // resolver refuses. That is a policy decision: final for this target, so the next key serves at once.
    let token = gw
        .key_set_with(
            json!([{"provider": "openai", "key": "sk-private-host", "base_url": "https://localhost/v1"}, "sk-public"]),
            json!({}),
        )
        .await;
    let a = gw.chat(&token, "gpt-4o").await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.header("x-reliablegpt-attempts"), Some("2"));
    assert_eq!(gw.keys_seen(), vec!["sk-public"]);
}
