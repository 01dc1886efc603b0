//! Two real service processes (the `reliablegpt serve` binary, not in-process apps) on one database: what one
//! replica learns, the other acts on.

use reliablegpt::config::env;
use serde_json::json;

use crate::helpers::{RunningService, TestDatabase, base_env, chat_at, token_of};

async fn chat(base: &str, token: &str) -> u16 {
    chat_at(&reqwest::Client::new(), base, token, "gpt-4o").await.status().as_u16()
}

#[tokio::test]
async fn a_revocation_on_one_process_stops_the_token_on_the_other_at_once() {
    let db = TestDatabase::create().await;
    reliablegpt::db::migrate(&db.pool().await).await.unwrap();
    let mock = reliablegpt::mock_upstream::MockUpstream::start("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let mut vars = base_env(&db);
    vars.insert(env::OPENAI_BASE_URL.into(), mock.base_url());
    vars.insert(env::ALLOW_PRIVATE_UPSTREAMS.into(), "true".into());
    vars.insert(env::ALLOWED_UPSTREAM_HOSTS.into(), "127.0.0.1".into());
    // Long enough that only a notification can evict the other process's copy in time.
    vars.insert(env::KEY_SET_CACHE_SECS.into(), "300".into());
    let a = RunningService::start(&vars, "info");
    let b = RunningService::start(&vars, "info");

    let token = token_of(&a.post_keys(&json!({"user_email": "ops@example.com", "keys": ["sk-replica-test"]})).await);
    // Both serve it; B now holds the opened key set in memory.
    assert_eq!(chat(&a.base, &token).await, 200);
    assert_eq!(chat(&b.base, &token).await, 200);

    let res = reqwest::Client::new().delete(format!("{}/v1/keys", a.base)).bearer_auth(&token).send().await.unwrap();
    assert_eq!(res.status(), 204);
    let started = std::time::Instant::now();
    let mut status = chat(&b.base, &token).await;
    while status != 401 && started.elapsed() < std::time::Duration::from_secs(3) {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        status = chat(&b.base, &token).await;
    }
    let (logs_a, logs_b) = (a.stop(), b.stop());
    assert_eq!(status, 401, "the other process still serves a revoked token\n{logs_b}");
    assert!(started.elapsed() < std::time::Duration::from_secs(3));
    assert!(!logs_a.contains("sk-replica-test") && !logs_b.contains("sk-replica-test"));
}
