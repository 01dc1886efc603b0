//! Abusive clients and response hygiene: metrics on their own listener, slow clients bounded by timeouts.

use std::time::{Duration, Instant};

use reliablegpt::config::env;
use reliablegpt::startup::Application;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{TestDatabase, base_env, settings_from, spawn_app_with, token_of};

#[tokio::test]
async fn metrics_can_be_served_only_on_their_own_listener() {
    let db = TestDatabase::create().await;
    let mut vars = base_env(&db);
    vars.insert(env::METRICS_LISTEN.to_owned(), "127.0.0.1:0".to_owned());
    let app = Application::build(settings_from(&vars), true).await.unwrap();
    let (main, metrics) = (app.addr(), app.metrics_addr().expect("a metrics listener"));
    assert_ne!(main, metrics);
    tokio::spawn(app.run_until_stopped());
    let client = reqwest::Client::new();

    let res = client.get(format!("http://{main}/metrics")).send().await.unwrap();
    assert_eq!(res.status(), 404);
    let error: Value = res.json().await.unwrap();
    assert_eq!(error["error"]["code"], "unknown_url");
    assert_eq!(client.get(format!("http://{main}/healthz")).send().await.unwrap().status(), 200);

    let res = client.get(format!("http://{metrics}/metrics")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.headers()["content-type"].to_str().unwrap().starts_with("application/openmetrics-text"));
    let text = res.text().await.unwrap();
    assert!(text.contains("# TYPE reliablegpt_") && text.trim_end().ends_with("# EOF"), "{text}");
    // Only metrics there.
    assert_eq!(client.get(format!("http://{metrics}/v1/keys")).send().await.unwrap().status(), 404);
}

/// The raw HTTP/1.1 answer to `head` followed by `body` sent one byte a second, and how long it took.
async fn trickle(addr: &str, head: String, body: &'static [u8]) -> (String, Duration) {
    let started = Instant::now();
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut rx, mut tx) = stream.into_split();
    tx.write_all(head.as_bytes()).await.unwrap();
    let writer = tokio::spawn(async move {
        for byte in body {
            if tx.write_all(&[*byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        // Hold the connection open without finishing the body.
        tokio::time::sleep(Duration::from_secs(60)).await;
    });
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), rx.read_to_end(&mut answer)).await;
    writer.abort();
    assert!(read.is_ok(), "the server neither answered nor closed within 20 s");
    (String::from_utf8_lossy(&answer).into_owned(), started.elapsed())
}

#[tokio::test]
async fn a_body_sent_one_byte_a_second_gets_408_within_the_limit() {
    let app = spawn_app_with(|vars| {
        vars.insert(env::BODY_READ_TIMEOUT_MS.to_owned(), "1500".to_owned());
    })
    .await;
    let token = token_of(&app.create_key_set(json!(["sk-0123456789012345678901234567890"])).await);
    let addr = app.address.trim_start_matches("http://").to_owned();
    const BODY: &[u8] = br#"{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}"#;
    for (path, auth) in
        [("/v1/keys", String::new()), ("/v1/chat/completions", format!("Authorization: Bearer {token}\r\n"))]
    {
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            BODY.len()
        );
        let (answer, took) = trickle(&addr, head, BODY).await;
        assert!(answer.starts_with("HTTP/1.1 408"), "{path}: {answer}");
        assert!(took < Duration::from_secs(5), "{path}: answered after {took:?}");
        let body: Value = serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap()).unwrap();
        assert_eq!(body["error"]["code"], "request_timeout", "{path}");
        assert_eq!(body["error"]["type"], "invalid_request_error", "{path}");
        assert!(answer.to_ascii_lowercase().contains("connection: close"), "{path}: {answer}");
    }
    assert_eq!(app.count("vault_key_sets").await, 1, "nothing was stored from the trickled body");
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed() {
    let app = spawn_app_with(|_| {}).await;
    let addr = app.address.trim_start_matches("http://");
    let started = Instant::now();
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(15), stream.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "an idle connection was still open after 15 s");
    assert!(started.elapsed() < Duration::from_secs(8), "closed only after {:?}", started.elapsed());
}

#[tokio::test]
async fn normal_requests_stay_fast_while_200_slow_connections_hang() {
    let app = spawn_app_with(|_| {}).await;
    let addr = app.address.trim_start_matches("http://").to_owned();
    let mut hanging = Vec::new();
    for _ in 0..200 {
        let mut stream = TcpStream::connect(&addr).await.unwrap();
        let head = format!(
            "POST /v1/keys HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"user_email\""
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        hanging.push(stream);
    }
    let started = Instant::now();
    let requests = (0..20).map(|i| {
        let app = &app;
        async move {
            let body =
                json!({"user_email": format!("n{i}@example.com"), "keys": ["sk-0123456789012345678901234567890"]});
            app.post_keys(&body).await.status()
        }
    });
    let statuses = futures_util::future::join_all(requests).await;
    let took = started.elapsed();
    assert!(statuses.iter().all(|s| *s == 201), "{statuses:?}");
    assert!(took < Duration::from_secs(5), "20 normal requests took {took:?} beside 200 hanging ones");
    // The hanging ones were really held open, not refused.
    let mut probe = [0u8; 1];
    let still_open = hanging[0].try_read(&mut probe);
    assert!(matches!(still_open, Err(ref e) if e.kind() == std::io::ErrorKind::WouldBlock), "{still_open:?}");
}

/// Found by schemathesis: a model name of non-ASCII spaces and astral-plane characters dropped the connection.
#[tokio::test]
async fn unusual_model_names_get_an_answer_not_a_dropped_connection() {
    let gw = crate::helpers::spawn_gateway().await;
    let token = gw.key_set(&["sk-unusual-model"], &[]).await;
    for model in ["\u{a0}\u{a0}\u{10000}\u{10000}", "\u{10000}", "é", " gpt-4o-mini "] {
        let res = gw.post("/v1/chat/completions", &token, json!({"model": model}), &[]).await;
        assert!(res.status < 500 || res.body["error"]["code"].is_string(), "{model:?}: {} {}", res.status, res.text);
    }
}

/// Found while fixing the one above: an Azure `api_version` with a multi-byte character at byte 10 panicked.
#[tokio::test]
async fn a_multibyte_azure_api_version_is_refused_not_a_dropped_connection() {
    let app = spawn_app_with(|_| {}).await;
    let key = json!({
        "provider": "azure", "key": "0123456789abcdef0123456789abcdef", "endpoint": "https://myres.openai.azure.com",
        "api_version": "2024-10-2\u{e9}", "deployments": {"gpt-4o": "gpt4o"}
    });
    let res = app.post_keys(&json!({"user_email": "a@b.co", "keys": [key]})).await;
    let error = crate::helpers::error_of(res, 400).await;
    assert_eq!(error["param"], "keys[0].api_version", "{error}");
}
