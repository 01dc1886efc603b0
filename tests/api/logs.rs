//! What the service logs about a request: every line carries the request's id — also the lines written after the
//! response started (stream rescue) and by tasks the request spawned — and a failed rescue says why.

use serde_json::{Value, json};

use crate::helpers::{RunningService, TestDatabase, base_env, token_of};
use reliablegpt::config::env;
use reliablegpt::mock_upstream::{Behavior, MockUpstream};

#[tokio::test]
async fn every_log_line_of_a_request_carries_its_request_id() {
    let db = TestDatabase::create().await;
    reliablegpt::db::migrate(&db.pool().await).await.unwrap();
    let mock = MockUpstream::start("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let mut vars = base_env(&db);
    vars.insert(env::OPENAI_BASE_URL.into(), mock.base_url());
    vars.insert(env::ALLOW_PRIVATE_UPSTREAMS.into(), "true".into());
    vars.insert(env::ALLOWED_UPSTREAM_HOSTS.into(), "127.0.0.1".into());
    vars.insert(env::RETRY_BASE_MS.into(), "5".into());
    let service = RunningService::start(&vars, "info,reliablegpt=debug");
    let client = reqwest::Client::new();
    let (good, dead) = ("sk-logs-good-00000000000000000000000001", "sk-logs-dead-00000000000000000000000002");
    let created = service
        .post_keys(&json!({"user_email": "dev@example.com", "keys": [dead, good],
                           "policy": {"fallback_strategy": ["gpt-4o-mini"]}}))
        .await;
    let token = token_of(&created);
    // A dead key (rotation, a spawned task marks it), then a stream cut midway whose rescue fails.
    mock.set_invalid_key(dead);
    mock.script("gpt-4o", vec![Behavior::StreamCut { after_tokens: 3 }]);
    mock.script("gpt-4o-mini", vec![Behavior::server_error()]);
    let body = json!({"model": "gpt-4o", "stream": true, "messages": [{"role": "user", "content": "hi"}]});
    let res = client
        .post(format!("{}/v1/chat/completions", service.base))
        .bearer_auth(&token)
        .header("x-request-id", "req-logs-1")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(res.text().await.unwrap().contains("stream_interrupted"));
    // The outcome is logged by the stream's pump after the last byte; give it a moment.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let logs = service.stop();

    let engine_lines: Vec<Value> = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["target"].as_str().is_some_and(|t| t.starts_with("reliablegpt::engine")))
        .collect();
    let messages: Vec<&str> = engine_lines.iter().filter_map(|e| e["fields"]["message"].as_str()).collect();
    for expected in [
        "upstream attempt failed",
        "stream died midway; rescuing",
        "stream ended incomplete: no target could continue it",
        "request finished",
    ] {
        assert!(messages.contains(&expected), "no {expected:?} line in {messages:?}");
    }
    for line in &engine_lines {
        assert_eq!(line["span"]["request_id"], "req-logs-1", "a line without its request id: {line}");
    }
    let failed_rescue = engine_lines
        .iter()
        .find(|e| e["fields"]["message"] == "stream ended incomplete: no target could continue it")
        .unwrap();
    assert!(failed_rescue["fields"]["reason"].as_str().unwrap().contains("broke"), "{failed_rescue}");
    assert!(failed_rescue["fields"]["rescue"].as_str().is_some_and(|r| !r.is_empty()), "{failed_rescue}");
    let finished = engine_lines.iter().find(|e| e["fields"]["message"] == "request finished").unwrap();
    assert_eq!(finished["fields"]["outcome"], "partial", "{finished}");
}
