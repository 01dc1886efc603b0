//! Memory benchmark: how much the gateway process grows when clients send each request to a different unknown model
//! that the upstream rate-limits (429 with `Retry-After: 30`, so every one opens a circuit breaker for 30 s). Prints
//! the RSS growth and the request rate; asserts nothing. The release gateway runs as its own process against a
//! mock upstream in this one.
//!
//!     scripts/bench            # runs this among the others
//!     DATABASE_URL=... cargo bench --bench memory -- --bench [--gateway-bin PATH] [--requests N] [--concurrency N]
//!         [--upstream rate-limited|not-found|ok]
//!
//! `--gateway-bin` measures another build of the gateway (e.g. an older commit's `target/release/reliablegpt`).
//! Without `--bench` (as under `cargo test --all-targets`) it exits at once.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout, clippy::panic)]

mod harness;
mod loadgen;

use std::time::Duration;

use harness::{BIN, Guard, ScratchDb, arg, free_port, local, peak_rss_kib, rss_kib, wait_ready};
use reliablegpt::mock_upstream::{Behavior, MockUpstream};
use serde_json::json;

const REQUESTS: usize = 60_000;
const WARMUP: usize = 2_000;
const CONCURRENCY: usize = 32;

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap().block_on(run());
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn model(prefix: &str, i: usize) -> String {
    format!("{prefix}-unknown-model-{i:06}")
}

async fn run() {
    let bin = arg("--gateway-bin").unwrap_or_else(|| BIN.to_owned());
    let requests: usize = arg("--requests").map_or(REQUESTS, |n| n.parse().unwrap());
    let concurrency: usize = arg("--concurrency").map_or(CONCURRENCY, |n| n.parse().unwrap());

    let db = ScratchDb::create().await;
    let mock = MockUpstream::start(local(0)).await.unwrap();
    // Other answers, to tell what the breakers cost from what every request costs anyway.
    let upstream = arg("--upstream").unwrap_or_else(|| "rate-limited".to_owned());
    let behavior = match upstream.as_str() {
        "rate-limited" => Behavior::rate_limited(Some("30")),
        "not-found" => Behavior::model_not_found(),
        "ok" => Behavior::ok(),
        other => panic!("--upstream {other}: expected rate-limited, not-found or ok"),
    };
    let rate_limited = || vec![behavior.clone()];
    for i in 0..WARMUP {
        mock.script(&model("warm", i), rate_limited());
    }
    for i in 0..requests {
        mock.script(&model("bench", i), rate_limited());
    }
    let gw_addr = local(free_port());
    let gateway = harness::spawn_gateway(&bin, &db, gw_addr, &mock.base_url());
    let pid = gateway.id();
    let guard = Guard(vec![gateway]);
    wait_ready(&format!("http://{gw_addr}/readyz")).await;
    let token = harness::create_token(
        gw_addr,
        &json!({"user_email": "bench@example.com", "keys": ["sk-bench-000000000000000000000000000000"]}),
    )
    .await;
    let chat = move |prefix: &'static str| {
        let token = token.clone();
        move |i: usize| {
            let body = json!({"model": model(prefix, i), "messages": [{"role": "user", "content": "Say hi."}]});
            loadgen::request("/v1/chat/completions", gw_addr, Some(&token), &[], &body.to_string())
        }
    };

    // Warm up the same path (connection pools, allocator arenas, key-set cache), then settle and measure.
    loadgen::each(gw_addr, WARMUP, concurrency, chat("warm")).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = rss_kib(pid);
    let run = loadgen::each(gw_addr, requests, concurrency, chat("bench")).await;
    let after = rss_kib(pid);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let settled = rss_kib(pid);
    let peak = peak_rss_kib(pid);
    let breakers: Vec<String> = harness::metrics(gw_addr)
        .await
        .lines()
        .filter(|l| l.starts_with("reliablegpt_circuit_breakers{"))
        .map(str::to_owned)
        .collect();
    drop(guard);
    db.drop().await;

    println!(
        "\n## reliablegpt memory under distinct unknown models ({requests} requests, {concurrency} connections, the \
         mock answers each {upstream})\n"
    );
    println!("gateway: {bin}\n");
    println!("| RSS before (MiB) | RSS after (MiB) | growth (MiB) | after 2 s idle (MiB) | peak (MiB) | req/s |");
    println!("|---|---|---|---|---|---|");
    println!(
        "| {:.1} | {:.1} | {:+.1} | {:.1} | {:.1} | {:.0} |",
        mib(before),
        mib(after),
        mib(after) - mib(before),
        mib(settled),
        mib(peak),
        run.per_second()
    );
    let statuses: Vec<String> = run.statuses.iter().map(|(s, n)| format!("{s}: {n}")).collect();
    println!("\nanswers by status: {}; broken connections: {}", statuses.join(", "), run.broken);
    println!("breaker gauges after the run: {}", breakers.join("; "));
}
