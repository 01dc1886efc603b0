//! The cache inside the gateway: write-through of upstream answers, answers when every upstream fails, when the key set
//! is overloaded, and first (`cache_first`).

use std::time::Duration;

use reliablegpt::config::env;
use reliablegpt::mock_upstream::{Behavior, full_answer};
use serde_json::json;

use crate::helpers::{GatewayTest, chat_body, spawn_gateway, spawn_gateway_with, streamed_text};

const K1: &str = "sk-test-key-one-000000000000000000000001";

/// Waits until the write-through worker has stored `n` entries.
async fn wait_for_entries(gw: &GatewayTest, n: i64) {
    for _ in 0..200 {
        if gw.app.count("cache_entries").await >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("write-through stored {} entries, expected {n}", gw.app.count("cache_entries").await);
}

#[tokio::test]
async fn answers_are_written_through_and_served_when_every_upstream_fails() {
    let gw = spawn_gateway_with(|e| {
        e.insert(env::MAX_RETRIES.into(), "0".into());
    })
    .await;
    let token = gw.key_set_with(json!([K1]), json!({"caching": true, "fallback_strategy": ["gpt-4o-mini"]})).await;
    let first = gw.chat(&token, "gpt-4o").await;
    assert_eq!(first.status, 200, "{}", first.text);
    assert_eq!(first.header("x-reliablegpt-cache"), Some("miss"));
    wait_for_entries(&gw, 1).await;

    gw.mock.script("gpt-4o", vec![Behavior::server_error()]);
    gw.mock.script("gpt-4o-mini", vec![Behavior::server_error()]);
    let calls_before = gw.mock.requests().len();
    let cached = gw.chat(&token, "gpt-4o").await;
    assert_eq!(cached.status, 200, "{}", cached.text);
    assert_eq!(cached.header("x-reliablegpt-cache"), Some("hit"));
    assert_eq!(cached.header("x-reliablegpt-cache-similarity"), Some("1.000"));
    assert_eq!(cached.body["object"], "chat.completion");
    assert_eq!(cached.body["choices"][0]["message"]["content"], full_answer());
    assert_eq!(cached.body["model"], "gpt-4o", "attributed to the model that gave the answer");
    assert_eq!(gw.mock.requests().len(), calls_before + 2, "the upstreams were tried first");

    // The same as a stream: a proper SSE answer.
    let mut body = chat_body("gpt-4o");
    body["stream"] = json!(true);
    let streamed = gw.post("/v1/chat/completions", &token, body, &[]).await;
    assert_eq!(streamed.status, 200);
    assert_eq!(streamed.header("x-reliablegpt-cache"), Some("hit"));
    assert!(streamed.header("content-type").unwrap().starts_with("text/event-stream"));
    assert_eq!(streamed_text(&streamed.text), full_answer());
    assert!(streamed.text.trim_end().ends_with("data: [DONE]"), "{}", streamed.text);

    // Another question, another instance: no cached answer, so the error comes back.
    let other = json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "Something never asked"}]});
    assert_eq!(gw.post("/v1/chat/completions", &token, other, &[]).await.status, 503);
    let other_instance =
        gw.post("/v1/chat/completions", &token, chat_body("gpt-4o"), &[("x-reliablegpt-instance", "b")]).await;
    assert_eq!(other_instance.status, 503, "{}", other_instance.text);

    let metrics = gw.app.client.get(gw.app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    for line in [
        r#"reliablegpt_cache_lookups_total{result="exact_hit"} 2"#,
        r#"reliablegpt_cache_writes_total{result="stored"} 1"#,
        r#"reliablegpt_requests_total{outcome="cached",model="gpt-4o",provider="none"} 2"#,
    ] {
        assert!(metrics.contains(line), "missing {line} in {metrics}");
    }
}

#[tokio::test]
async fn without_caching_nothing_is_stored_or_served_and_the_header_turns_it_on() {
    let gw = spawn_gateway_with(|e| {
        e.insert(env::MAX_RETRIES.into(), "0".into());
    })
    .await;
    let token = gw.key_set(&[K1], &[]).await;
    assert_eq!(gw.chat(&token, "gpt-4o").await.status, 200);
    // Stored directly, yet not served: caching is off for this key set.
    let res = gw
        .app
        .client
        .post(gw.app.url("/v1/cache"))
        .bearer_auth(&token)
        .json(&json!({"query": "Say the alphabet.", "response": "A B C"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    gw.mock.script("gpt-4o", vec![Behavior::server_error()]);
    assert_eq!(gw.chat(&token, "gpt-4o").await.status, 503);
    // The header turns it on per request.
    let a = gw.post("/v1/chat/completions", &token, chat_body("gpt-4o"), &[("x-reliablegpt-caching", "true")]).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.body["choices"][0]["message"]["content"], "A B C");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(gw.app.count("cache_entries").await, 1, "nothing was written through with caching off");
}

#[tokio::test]
async fn cache_first_serves_hits_without_calling_an_upstream() {
    let gw = spawn_gateway().await;
    let token = gw.key_set_with(json!([K1]), json!({"caching": true, "cache_first": true})).await;
    let first = gw.chat(&token, "gpt-4o").await;
    assert_eq!(first.header("x-reliablegpt-cache"), Some("miss"));
    wait_for_entries(&gw, 1).await;
    let calls = gw.mock.requests().len();
    let second = gw.chat(&token, "gpt-4o").await;
    assert_eq!(second.status, 200);
    assert_eq!(second.header("x-reliablegpt-cache"), Some("hit"));
    assert_eq!(second.body["choices"][0]["message"]["content"], full_answer());
    assert_eq!(gw.mock.requests().len(), calls, "no upstream call");
    // Embeddings are never cached.
    let emb = json!({"model": "text-embedding-3-small", "input": "hello"});
    let a = gw.post("/v1/embeddings", &token, emb.clone(), &[]).await;
    assert_eq!(a.status, 200);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(gw.app.count("cache_entries").await, 1);
}

#[tokio::test]
async fn an_overloaded_key_set_answers_from_the_cache_instead_of_shedding() {
    let gw = spawn_gateway_with(|e| {
        e.insert(env::FIRST_BYTE_TIMEOUT_MS.into(), "10000".into());
    })
    .await;
    let token = gw.key_set_with(json!([K1]), json!({"caching": true, "max_concurrency": 1, "max_queue_ms": 50})).await;
    let res = gw
        .app
        .client
        .post(gw.app.url("/v1/cache"))
        .bearer_auth(&token)
        .json(&json!({"query": "Say the alphabet.", "response": "A B C (cached)", "model": "gpt-4o"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    // One slow request holds the only slot; the others would be shed.
    gw.mock.script("gpt-4o", vec![Behavior::ok_after(1_500), Behavior::ok()]);
    let slow_body = json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "A slow question"}]});
    let slow = gw.post("/v1/chat/completions", &token, slow_body, &[]);
    let quick = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let cached = gw.chat(&token, "gpt-4o").await;
        let unknown = json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "Never cached"}]});
        let shed = gw.post("/v1/chat/completions", &token, unknown, &[]).await;
        (cached, shed)
    };
    let (slow, (cached, shed)) = tokio::join!(slow, quick);
    assert_eq!(slow.status, 200);
    assert_eq!(cached.status, 200, "{}", cached.text);
    assert_eq!(cached.header("x-reliablegpt-cache"), Some("overload-hit"));
    assert_eq!(cached.body["choices"][0]["message"]["content"], "A B C (cached)");
    assert_eq!(shed.status, 503, "{}", shed.text);
    assert_eq!(shed.body["error"]["code"], "overloaded");
}

#[tokio::test]
async fn a_full_write_queue_drops_jobs_and_counts_them_without_failing_requests() {
    let gw = spawn_gateway_with(|e| {
        e.insert(env::CACHE_WRITE_QUEUE.into(), "1".into());
    })
    .await;
    let token = gw.key_set_with(json!([K1]), json!({"caching": true})).await;
    let asks = (0..40).map(|i| {
        let body = json!({"model": "gpt-4o", "messages": [{"role": "user", "content": format!("question {i}")}]});
        gw.post("/v1/chat/completions", &token, body, &[])
    });
    let answers = futures_util::future::join_all(asks).await;
    assert!(answers.iter().all(|a| a.status == 200));
    let metrics = gw.app.client.get(gw.app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    let count = |result: &str| -> u64 {
        let prefix = format!(r#"reliablegpt_cache_writes_total{{result="{result}"}} "#);
        metrics.lines().find_map(|l| l.strip_prefix(&prefix)).map_or(0, |n| n.parse().unwrap())
    };
    assert_eq!(count("queued") + count("dropped"), 40, "{metrics}");
}

#[tokio::test]
async fn a_paraphrase_of_an_answered_question_is_served_when_every_upstream_fails() {
    let gw = spawn_gateway_with(|e| {
        e.insert(env::MAX_RETRIES.into(), "0".into());
        crate::helpers::with_model(e);
    })
    .await;
    let token = gw.key_set_with(json!([K1]), json!({"caching": true})).await;
    let asked = json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "How can I reset my password?"}]});
    assert_eq!(gw.post("/v1/chat/completions", &token, asked, &[]).await.status, 200);
    wait_for_entries(&gw, 1).await;
    let embedded: bool =
        sqlx::query_scalar("SELECT embedding IS NOT NULL FROM cache_entries").fetch_one(&gw.app.pool).await.unwrap();
    assert!(embedded, "write-through stores the question's embedding");
    gw.mock.script("gpt-4o", vec![Behavior::server_error()]);
    let paraphrase =
        json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "How do I reset my password?"}]});
    let a = gw.post("/v1/chat/completions", &token, paraphrase, &[]).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.header("x-reliablegpt-cache"), Some("hit"));
    let similarity: f64 = a.header("x-reliablegpt-cache-similarity").unwrap().parse().unwrap();
    assert!((0.8..1.0).contains(&similarity), "{similarity}");
    assert_eq!(a.body["choices"][0]["message"]["content"], full_answer());
    // A look-alike with another number is not served: the error comes back.
    let other =
        json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "How can I reset my password 2 times?"}]});
    assert_eq!(gw.post("/v1/chat/completions", &token, other, &[]).await.status, 503);
}
