//! Vault benchmark: throughput of `POST /v1/keys` and latency of `GET /v1/keys` with a warm token, against a real
//! PostgreSQL (DATABASE_URL, as for the tests). Reported, not asserted.
//!
//!     DATABASE_URL=$(scripts/dev-db) cargo bench --bench vault
//!
//! Without `--bench` (as under `cargo test --all-targets`) it exits at once.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout, clippy::panic)]

use std::time::{Duration, Instant};

use base64::Engine as _;
use reliablegpt::config::{Settings, env};
use reliablegpt::startup::Application;
use serde_json::{Value, json};
use sqlx::{Connection, PgConnection};

const CREATES: usize = 400;
const GETS: usize = 4000;
const CONCURRENCY: usize = 8;

fn secret() -> String {
    base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 32]>())
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(run());
}

async fn run() {
    let admin = std::env::var("DATABASE_URL").expect("DATABASE_URL (run scripts/dev-db)");
    let name = format!("bench_{}", uuid::Uuid::new_v4().simple());
    let mut conn = PgConnection::connect(&admin).await.unwrap();
    sqlx::query(&format!(r#"CREATE DATABASE "{name}""#)).execute(&mut conn).await.unwrap();
    let mut url = url::Url::parse(&admin).unwrap();
    url.set_path(&name);

    let vars = [
        (env::DATABASE_URL, url.to_string()),
        (env::LISTEN, "127.0.0.1:0".to_owned()),
        (env::MASTER_KEY, secret()),
        (env::TOKEN_PEPPER, secret()),
        (env::KEY_SETS_PER_MINUTE, "1000000".to_owned()),
        (env::AUTH_FAILURES_PER_MINUTE, "1000000".to_owned()),
    ];
    let settings =
        Settings::from_sources(None, |n| vars.iter().find(|(k, _)| *k == n).map(|(_, v)| v.clone())).unwrap();
    let app = Application::build(settings, true).await.unwrap();
    let base = format!("http://{}", app.addr());
    let server = tokio::spawn(app.run_until_stopped());
    let client = reqwest::Client::new();

    let body = json!({"user_email": "bench@example.com",
                      "keys": ["sk-bench-0000000000000000000000000000000000000000", "sk-bench-1111111111111111111111111111111111111111"],
                      "policy": {"fallback_strategy": ["gpt-4o-mini"]}});
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CONCURRENCY {
        let (client, base, body) = (client.clone(), base.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            let mut token = String::new();
            for _ in 0..CREATES / CONCURRENCY {
                let res = client.post(format!("{base}/v1/keys")).json(&body).send().await.unwrap();
                assert_eq!(res.status(), 201);
                token = res.json::<Value>().await.unwrap()["token"].as_str().unwrap().to_owned();
            }
            token
        }));
    }
    let mut token = String::new();
    for t in tasks {
        token = t.await.unwrap();
    }
    let create_secs = started.elapsed().as_secs_f64();

    let url = format!("{base}/v1/keys");
    for _ in 0..50 {
        assert_eq!(client.get(&url).bearer_auth(&token).send().await.unwrap().status(), 200);
    }
    let mut latencies: Vec<Duration> = Vec::with_capacity(GETS);
    for _ in 0..GETS {
        let t = Instant::now();
        let res = client.get(&url).bearer_auth(&token).send().await.unwrap();
        let _ = res.bytes().await.unwrap();
        latencies.push(t.elapsed());
    }
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];

    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CONCURRENCY {
        let (client, url, token) = (client.clone(), url.clone(), token.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..GETS / CONCURRENCY {
                let res = client.get(&url).bearer_auth(&token).send().await.unwrap();
                assert_eq!(res.status(), 200);
                let _ = res.bytes().await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let get_secs = started.elapsed().as_secs_f64();

    println!("| measurement | value |");
    println!("|---|---|");
    println!(
        "| POST /v1/keys throughput ({CREATES} creates, {CONCURRENCY} concurrent, 2 keys each) | {:.0} req/s |",
        CREATES as f64 / create_secs
    );
    println!("| GET /v1/keys sequential, warm token: p50 | {:.3} ms |", pct(0.50).as_secs_f64() * 1e3);
    println!("| GET /v1/keys sequential, warm token: p99 | {:.3} ms |", pct(0.99).as_secs_f64() * 1e3);
    println!("| GET /v1/keys throughput ({CONCURRENCY} concurrent) | {:.0} req/s |", GETS as f64 / get_secs);

    server.abort();
    sqlx::query(&format!(r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#)).execute(&mut conn).await.unwrap();
}
