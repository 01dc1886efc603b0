//! Gateway benchmark: the mock upstream alone vs the mock through reliablegpt (and, when given, through the LiteLLM
//! proxy) at constant rates and at maximum throughput; the cost of a fallback; idle memory. Prints a table; asserts
//! nothing. The release binary runs the gateway and the mock as separate processes, as in production.
//!
//!     scripts/bench            # provisions everything, including LiteLLM, and runs this
//!     DATABASE_URL=... cargo bench --bench gateway -- [--mock-port N] [--litellm-url URL --litellm-key KEY]
//!         [--baseline-bin PATH]...  # also measure other builds (e.g. the previous commit's) in the same run
//!         [--wire-only]           # only the streamed / plain × 1 / 50 connections rows
//!         [--rounds N]            # and their ratios again as N interleaved rounds (median and range), with a
//!                                 # plain TCP relay's row: what one proxy hop costs on this machine
//!         [--wire-prompt-kib N]   # the wire rows with an N KiB conversation instead of one short message
//!         [--translation-only]    # only the translated-Anthropic vs pass-through rows
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout, clippy::panic)]

mod harness;
mod loadgen;

use std::net::SocketAddr;
use std::time::Duration;

use harness::{BIN, Guard, ScratchDb, arg, free_port, local, rss_kib, wait_ready};
use loadgen::Stats;
use serde_json::json;

const RATES: [u32; 3] = [1_000, 2_500, 5_000];
const RUN: Duration = Duration::from_secs(5);
const WARMUP: Duration = Duration::from_secs(1);
const CONNECTIONS: usize = 64;
const CHAT: &str = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"Say the alphabet."}]}"#;
const STREAM: &str = r#"{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"Say the alphabet."}]}"#;
/// Distinct tokens for the round-robin rows (key-set cache hits and misses, token hashing per request).
const TOKENS: usize = 1_000;

fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1e3)
}

fn main() {
    if let Some(to) = arg("--relay-to") {
        relay(to.parse().unwrap());
        return;
    }
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(run());
}

/// A gateway under test: the build Cargo made for this bench, or another build given with `--baseline-bin` (e.g. the
/// previous commit's release binary) so that both are measured in one run on the same machine and mock.
struct Gateway {
    label: String,
    addr: SocketAddr,
    pid: u32,
    token: String,
    db: ScratchDb,
}

async fn start_gateway(bin: &str, label: String, mock_addr: SocketAddr, guard: &mut Guard) -> Gateway {
    let db = ScratchDb::create().await;
    let addr = local(free_port());
    let child = harness::spawn_gateway(bin, &db, addr, &format!("http://{mock_addr}/v1"));
    let pid = child.id();
    guard.0.push(child);
    wait_ready(&format!("http://{addr}/readyz")).await;
    let token = harness::create_token(
        addr,
        &json!({"user_email": "bench@example.com", "keys": ["sk-bench-000000000000000000000000000000"],
                "policy": {"fallback_strategy": ["gpt-4o-mini"]}}),
    )
    .await;
    Gateway { label, addr, pid, token, db }
}

async fn run() {
    let mock_port: u16 = arg("--mock-port").map(|p| p.parse().unwrap()).unwrap_or_else(free_port);
    let mock_addr = local(mock_port);
    let mut guard = Guard(vec![harness::spawn_mock(BIN, mock_addr)]);
    let mock_pid = guard.0[0].id();
    wait_ready(&format!("http://{mock_addr}/_mock/health")).await;
    let mut gateways = vec![start_gateway(BIN, "via reliablegpt".to_owned(), mock_addr, &mut guard).await];
    // `--baseline-bin` may be given more than once (e.g. the build before a piece of work and the previous commit's).
    let args: Vec<String> = std::env::args().collect();
    let baselines: Vec<&String> = args.windows(2).filter(|w| w[0] == "--baseline-bin").map(|w| &w[1]).collect();
    for (i, bin) in baselines.iter().enumerate() {
        let label =
            if baselines.len() == 1 { "via baseline build".to_owned() } else { format!("via baseline {}", i + 1) };
        gateways.push(start_gateway(bin, label.clone(), mock_addr, &mut guard).await);
        println!("\n{label}: {bin}");
    }
    let mut idle_rss = Vec::new();
    for gw in &gateways {
        // Warm up (connection pools, key-set cache), then measure idle memory.
        let warm = loadgen::request("/v1/chat/completions", gw.addr, Some(&gw.token), &[], CHAT);
        loadgen::sequential(gw.addr, warm, 200).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        idle_rss.push(rss_kib(gw.pid));
    }
    let gw_addr = gateways[0].addr;
    if std::env::args().any(|a| a == "--translation-only") {
        for gw in &gateways {
            translation_rows(mock_addr, mock_pid, gw).await;
        }
        drop(guard);
        for gw in gateways {
            gw.db.drop().await;
        }
        return;
    }
    if std::env::args().any(|a| a == "--wire-only") {
        // Only the streamed / plain rows (for profiling runs).
        wire_rows(mock_addr, mock_pid, &gateways).await;
        drop(guard);
        for gw in gateways {
            gw.db.drop().await;
        }
        return;
    }

    let direct = loadgen::request("/v1/chat/completions", mock_addr, Some("sk-bench-direct"), &[], CHAT);
    let through: Vec<_> = gateways
        .iter()
        .map(|gw| loadgen::request("/v1/chat/completions", gw.addr, Some(&gw.token), &[], CHAT))
        .collect();

    println!(
        "\n## reliablegpt gateway benchmark (mock upstream, zero latency; load generator, gateway and mock share this machine)\n"
    );
    println!("| target | offered rate (req/s) | achieved (req/s) | errors | p50 (ms) | p99 (ms) |");
    println!("|---|---|---|---|---|---|");
    let mut overhead_rows = Vec::new();
    for rate in RATES {
        let d = at_rate(mock_addr, &direct, rate).await;
        print_rate("mock direct", rate, &d);
        for (i, gw) in gateways.iter().enumerate() {
            let g = at_rate(gw.addr, &through[i], rate).await;
            print_rate(&gw.label, rate, &g);
            overhead_rows.push((
                gw.label.clone(),
                rate,
                g.percentile(0.50).saturating_sub(d.percentile(0.50)),
                g.percentile(0.99).saturating_sub(d.percentile(0.99)),
            ));
        }
    }
    let metrics = harness::metrics(gw_addr).await;
    println!("\nThe gateway's own overhead histogram over these runs (time in reliablegpt, upstream time excluded):\n");
    println!("```");
    for line in metrics.lines().filter(|l| l.starts_with("reliablegpt_gateway_overhead_seconds")) {
        println!("{line}");
    }
    println!("```");
    println!("\n| gateway | rate (req/s) | overhead p50 (ms) | overhead p99 (ms) |");
    println!("|---|---|---|---|");
    for (label, rate, p50, p99) in &overhead_rows {
        println!("| {label} | {rate} | {} | {} |", ms(*p50), ms(*p99));
    }

    let d = loadgen::max_throughput(mock_addr, direct.clone(), RUN, CONNECTIONS).await;
    print_max_header();
    print_max("mock direct", &d);
    let mut max_rows = Vec::new();
    for (i, gw) in gateways.iter().enumerate() {
        let g = loadgen::max_throughput(gw.addr, through[i].clone(), RUN, CONNECTIONS).await;
        print_max(&gw.label, &g);
        max_rows.push(g);
    }
    wire_rows(mock_addr, mock_pid, &gateways).await;
    translation_rows(mock_addr, mock_pid, &gateways[0]).await;

    // The same load with the semantic cache on (write-through of every answer; repeats are recognised in memory).
    let caching_token = harness::create_token(
        gateways[0].addr,
        &json!({"user_email": "bench@example.com", "keys": ["sk-bench-000000000000000000000000000000"],
                "policy": {"fallback_strategy": ["gpt-4o-mini"], "caching": true}}),
    )
    .await;
    let caching = loadgen::request("/v1/chat/completions", gateways[0].addr, Some(&caching_token), &[], CHAT);
    let c = loadgen::max_throughput(gateways[0].addr, caching, RUN, CONNECTIONS).await;
    print_max(&format!("{}, caching on", gateways[0].label), &c);
    let g = &max_rows[0];
    println!("\nthroughput with caching on / off: {:.2}", c.throughput() / g.throughput().max(0.001));

    // Fallback cost: a model the upstream does not have (404, no retry) then the fallback, vs the two calls direct.
    let missing_body = r#"{"model":"bench-missing","messages":[{"role":"user","content":"Say the alphabet."}]}"#;
    reqwest::Client::new()
        .post(format!("http://{mock_addr}/_mock/script"))
        .json(&json!({"target": "bench-missing", "steps": [{"kind": "error", "status": 404, "code": "model_not_found",
                       "type": "invalid_request_error", "message": "The model `bench-missing` does not exist."}]}))
        .send()
        .await
        .unwrap();
    let n = 2_000;
    let fail_direct = loadgen::sequential(
        mock_addr,
        loadgen::request("/v1/chat/completions", mock_addr, Some("sk-x"), &[], missing_body),
        n,
    )
    .await;
    let ok_direct = loadgen::sequential(mock_addr, direct.clone(), n).await;
    println!("\n| sequential latency ({n} requests) | p50 (ms) | p99 (ms) |");
    println!("|---|---|---|");
    for (label, s) in [("upstream 404 direct", &fail_direct), ("upstream 200 direct", &ok_direct)] {
        println!("| {label} | {} | {} |", ms(s.percentile(0.5)), ms(s.percentile(0.99)));
    }
    let mut costs = Vec::new();
    for gw in &gateways {
        let plain = loadgen::request("/v1/chat/completions", gw.addr, Some(&gw.token), &[], CHAT);
        let plain = loadgen::sequential(gw.addr, plain, n).await;
        let missing = loadgen::request("/v1/chat/completions", gw.addr, Some(&gw.token), &[], missing_body);
        let fallback = loadgen::sequential(gw.addr, missing, n).await;
        for (what, s) in [("no fallback", &plain), ("404 then fallback", &fallback)] {
            println!("| {}, {what} | {} | {} |", gw.label, ms(s.percentile(0.5)), ms(s.percentile(0.99)));
        }
        let cost = fallback.percentile(0.5).saturating_sub(plain.percentile(0.5) + fail_direct.percentile(0.5));
        costs.push((gw.label.as_str(), cost));
    }
    println!();
    for (label, cost) in costs {
        println!("fallback cost beyond the failed attempt (p50), {label}: {} ms", ms(cost));
    }
    for (gw, rss) in gateways.iter().zip(&idle_rss) {
        println!("{} RSS after warm-up, idle: {:.1} MiB", gw.label, *rss as f64 / 1024.0);
    }

    if let (Some(url), Some(key)) = (arg("--litellm-url"), arg("--litellm-key")) {
        let addr: SocketAddr = url.trim_start_matches("http://").parse().unwrap();
        let lite = loadgen::request("/v1/chat/completions", addr, Some(&key), &[], CHAT);
        loadgen::sequential(addr, lite.clone(), 50).await;
        println!("\n## LiteLLM proxy, same mock upstream and fallback config\n");
        println!("| target | offered rate (req/s) | achieved (req/s) | errors | p50 (ms) | p99 (ms) |");
        println!("|---|---|---|---|---|---|");
        for rate in [100, 250, 500] {
            print_rate("LiteLLM", rate, &at_rate(addr, &lite, rate).await);
        }
        let l = loadgen::max_throughput(addr, lite, RUN, CONNECTIONS).await;
        print_max_header();
        print_max("LiteLLM", &l);
        println!(
            "\nthroughput ratio reliablegpt / LiteLLM: {:.1}x; p50 at max load: {} ms vs {} ms",
            g.throughput() / l.throughput().max(0.001),
            ms(g.percentile(0.5)),
            ms(l.percentile(0.5))
        );
    }
    drop(guard);
    for gw in gateways {
        gw.db.drop().await;
    }
}

/// One second at the rate first (connection pools grow), then the measured run.
async fn at_rate(addr: SocketAddr, req: &std::sync::Arc<Vec<u8>>, rate: u32) -> Stats {
    loadgen::constant_rate(addr, req.clone(), rate, WARMUP, CONNECTIONS).await;
    loadgen::constant_rate(addr, req.clone(), rate, RUN, CONNECTIONS).await
}

fn print_rate(label: &str, rate: u32, s: &Stats) {
    println!(
        "| {label} | {rate} | {:.0} | {} | {} | {} |",
        s.throughput(),
        s.errors,
        ms(s.percentile(0.50)),
        ms(s.percentile(0.99))
    );
}

fn print_max_header() {
    println!(
        "\n| maximum throughput ({CONNECTIONS} connections, {}s) | req/s | errors | p50 (ms) | p99 (ms) |",
        RUN.as_secs()
    );
    println!("|---|---|---|---|---|");
}

fn print_max(label: &str, s: &Stats) {
    println!(
        "| {label} | {:.0} | {} | {} | {} |",
        s.throughput(),
        s.errors,
        ms(s.percentile(0.5)),
        ms(s.percentile(0.99))
    );
}

/// Streamed and plain chat, 1 and 50 connections, one token and 1,000 tokens round-robin, each with its ratio to the
/// mock alone measured in the same run.
/// Every measured row follows one second of the same load (connections opened, upstream pools filled), except the
/// "first use" row: it starts with none of the 1,000 key sets opened, so its figures include every token's first
/// database read (the cache misses); the "warm" row that follows it measures the same tokens while their key sets are
/// cached and refreshed in the background.
/// The CPU column is the target process's own CPU per answered request (the mock's for "mock direct", the gateway's
/// otherwise): unlike req/s it hardly moves when other work shares the machine.
async fn wire_rows(mock_addr: SocketAddr, mock_pid: u32, gateways: &[Gateway]) {
    println!(
        "\n| streamed / plain, connections, tokens | target | req/s | errors | p50 (ms) | p99 (ms) | ratio to mock | CPU µs / request |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let many = many_tokens(gateways).await;
    // `--wire-kind plain|streamed` and `--wire-connections N` pick rows (for profiling one of them).
    let kinds = wire_bodies();
    let mut cold_done = vec![false; gateways.len()];
    for (kind, body) in kinds.iter().filter(|(k, _)| arg("--wire-kind").is_none_or(|w| w == *k)) {
        let body = body.as_str();
        let wanted: Option<usize> = arg("--wire-connections").and_then(|c| c.parse().ok());
        for connections in [1, 50].into_iter().filter(|c| wanted.is_none_or(|w| w == *c)) {
            let direct = loadgen::request("/v1/chat/completions", mock_addr, Some("sk-bench-direct"), &[], body);
            let direct = std::sync::Arc::new(vec![direct]);
            warm_up(mock_addr, &direct, connections).await;
            let (d, cpu) =
                measured(mock_pid, loadgen::max_throughput_rotating(mock_addr, direct, RUN, connections)).await;
            print_wire(&format!("{kind}, {connections}, 1"), "mock direct", &d, &d, cpu);
            for (i, (gw, tokens)) in gateways.iter().zip(&many).enumerate() {
                let one = loadgen::request("/v1/chat/completions", gw.addr, Some(&gw.token), &[], body);
                let one = std::sync::Arc::new(vec![one]);
                warm_up(gw.addr, &one, connections).await;
                let (g, cpu) = measured(gw.pid, loadgen::max_throughput_rotating(gw.addr, one, RUN, connections)).await;
                print_wire(&format!("{kind}, {connections}, 1"), &gw.label, &g, &d, cpu);
                if connections == 50 {
                    let reqs: Vec<_> = tokens
                        .iter()
                        .map(|t| loadgen::request("/v1/chat/completions", gw.addr, Some(t), &[], body))
                        .collect();
                    let reqs = std::sync::Arc::new(reqs);
                    let row = format!("{kind}, {connections}, {TOKENS} round-robin");
                    // Once per gateway the tokens are new to it ("first use"); every time they are measured warm.
                    let phases = if cold_done[i] { &["warm"][..] } else { &["first use", "warm"][..] };
                    cold_done[i] = true;
                    for phase in phases {
                        if *phase == "warm" {
                            warm_up(gw.addr, &reqs, connections).await;
                        }
                        let run = loadgen::max_throughput_rotating(gw.addr, reqs.clone(), RUN, connections);
                        let (r, cpu) = measured(gw.pid, run).await;
                        print_wire(&format!("{row}, {phase}"), &gw.label, &r, &d, cpu);
                        println!(
                            "| {kind}, {connections}: {TOKENS} tokens {phase} / one token | {} | {:.2} | | | | | |",
                            gw.label,
                            r.throughput() / g.throughput().max(0.001)
                        );
                    }
                }
            }
        }
    }
    if let Some(rounds) = arg("--rounds").and_then(|r| r.parse::<usize>().ok()).filter(|r| *r > 0) {
        wire_rounds(mock_addr, mock_pid, gateways, &many, rounds).await;
    }
}

/// The wire rows' plain and streamed bodies: one short message, or with `--wire-prompt-kib N` a conversation of about
/// N KiB (real chat apps resend their history on every turn, so the per-byte costs of a request show).
fn wire_bodies() -> [(&'static str, String); 2] {
    let kib: usize = arg("--wire-prompt-kib").and_then(|k| k.parse().ok()).unwrap_or(0);
    let turn = "Tell me more about the history of the alphabet, and explain each letter's origin in detail. ";
    let mut messages = Vec::new();
    let mut size = 0;
    while size < kib * 1024 {
        let role = if messages.len() % 2 == 0 { "user" } else { "assistant" };
        let content = turn.repeat(8);
        size += content.len() + 32;
        messages.push(json!({"role": role, "content": content}));
    }
    messages.push(json!({"role": "user", "content": "Say the alphabet."}));
    let body = |stream: bool| {
        let mut b = json!({"model": "gpt-4o", "messages": messages});
        if stream {
            b["stream"] = json!(true);
        }
        b.to_string()
    };
    if kib == 0 {
        [("plain", CHAT.to_owned()), ("streamed", STREAM.to_owned())]
    } else {
        [("plain", body(false)), ("streamed", body(true))]
    }
}

/// `TOKENS` key sets per gateway, created through its API and not used yet.
async fn many_tokens(gateways: &[Gateway]) -> Vec<Vec<String>> {
    let mut many = Vec::new();
    for gw in gateways {
        let mut tokens = Vec::with_capacity(TOKENS);
        for _ in 0..TOKENS {
            let body = json!({"user_email": "bench@example.com", "keys": ["sk-bench-000000000000000000000000000000"]});
            tokens.push(harness::create_token(gw.addr, &body).await);
        }
        many.push(tokens);
    }
    many
}

/// `WARMUP` of the load a measured row then runs (each connection cycling through `reqs`), not measured.
async fn warm_up(addr: SocketAddr, reqs: &std::sync::Arc<Vec<std::sync::Arc<Vec<u8>>>>, connections: usize) {
    loadgen::max_throughput_rotating(addr, reqs.clone(), WARMUP, connections).await;
}

/// Length of one cell of one interleaved round.
const ROUND_RUN: Duration = Duration::from_secs(2);

/// `--rounds N`: the wire rows' ratios again, as N interleaved rounds. Each round measures the mock alone and every
/// gateway back to back (in reverse order every other round), so a ratio compares figures taken seconds apart: on a
/// shared machine the mock's own rate drifts by a fifth between rows taken a minute apart. Prints the median and
/// range over the rounds. Each round also measures the mock through a bare TCP relay ([`relay`]): what one proxy hop
/// costs on this machine before any HTTP work, the floor under the gateway's added latency.
async fn wire_rounds(mock_addr: SocketAddr, mock_pid: u32, gateways: &[Gateway], many: &[Vec<String>], rounds: usize) {
    println!(
        "\n## Interleaved rounds: {rounds} rounds of {} s per cell; median (min – max) over the rounds\n",
        ROUND_RUN.as_secs()
    );
    println!(
        "| streamed / plain, connections | target | ratio to mock (%) | p50 added to the mock's (ms) | 1,000 tokens / one token | CPU µs / request | CPU, 1,000 tokens / one token |"
    );
    println!("|---|---|---|---|---|---|---|");
    let spread = |mut v: Vec<f64>, digits: usize| -> String {
        if v.is_empty() {
            return String::new();
        }
        v.sort_by(f64::total_cmp);
        format!("{:.digits$} ({:.digits$} – {:.digits$})", v[v.len() / 2], v[0], v[v.len() - 1])
    };
    let (relay, relay_addr) = spawn_relay(mock_addr);
    let relay_pid = relay.id();
    let _relay = Guard(vec![relay]);
    for (kind, body) in wire_bodies().iter().filter(|(k, _)| arg("--wire-kind").is_none_or(|w| w == *k)) {
        let body = body.as_str();
        let wanted: Option<usize> = arg("--wire-connections").and_then(|c| c.parse().ok());
        for connections in [1, 50].into_iter().filter(|c| wanted.is_none_or(|w| w == *c)) {
            let direct = loadgen::request("/v1/chat/completions", mock_addr, Some("sk-bench-direct"), &[], body);
            let relayed = loadgen::request("/v1/chat/completions", relay_addr, Some("sk-bench-direct"), &[], body);
            warm_up(relay_addr, &std::sync::Arc::new(vec![relayed.clone()]), connections).await;
            let (mut relay_ratio, mut relay_added, mut relay_cpu) = (Vec::new(), Vec::new(), Vec::new());
            let n = gateways.len();
            let (mut ratio, mut added, mut rotating) = (vec![Vec::new(); n], vec![Vec::new(); n], vec![Vec::new(); n]);
            let (mut cpu, mut cpu_rotating) = (vec![Vec::new(); n + 1], vec![Vec::new(); n]);
            let rotating_reqs: Vec<_> = gateways
                .iter()
                .zip(many)
                .map(|(gw, tokens)| {
                    let reqs =
                        tokens.iter().map(|t| loadgen::request("/v1/chat/completions", gw.addr, Some(t), &[], body));
                    std::sync::Arc::new(reqs.collect::<Vec<_>>())
                })
                .collect();
            if connections == 50 {
                // Key sets unused for longer than their TTL were dropped: open them again before the first round.
                for (gw, reqs) in gateways.iter().zip(&rotating_reqs) {
                    warm_up(gw.addr, reqs, connections).await;
                }
            }
            for round in 0..rounds {
                let (d, c) =
                    measured(mock_pid, loadgen::max_throughput(mock_addr, direct.clone(), ROUND_RUN, connections))
                        .await;
                cpu[n].push(c.as_secs_f64() * 1e6);
                let (r, c) =
                    measured(relay_pid, loadgen::max_throughput(relay_addr, relayed.clone(), ROUND_RUN, connections))
                        .await;
                relay_cpu.push(c.as_secs_f64() * 1e6);
                relay_ratio.push(100.0 * r.throughput() / d.throughput().max(0.001));
                relay_added.push((r.percentile(0.5).as_secs_f64() - d.percentile(0.5).as_secs_f64()) * 1e3);
                let order: Vec<usize> = if round % 2 == 0 { (0..n).collect() } else { (0..n).rev().collect() };
                for i in order {
                    let gw = &gateways[i];
                    let one = loadgen::request("/v1/chat/completions", gw.addr, Some(&gw.token), &[], body);
                    let (g, c) = measured(gw.pid, loadgen::max_throughput(gw.addr, one, ROUND_RUN, connections)).await;
                    cpu[i].push(c.as_secs_f64() * 1e6);
                    ratio[i].push(g.throughput() / d.throughput().max(0.001));
                    added[i].push((g.percentile(0.5).as_secs_f64() - d.percentile(0.5).as_secs_f64()) * 1e3);
                    if connections == 50 {
                        let run =
                            loadgen::max_throughput_rotating(gw.addr, rotating_reqs[i].clone(), ROUND_RUN, connections);
                        let (r, rc) = measured(gw.pid, run).await;
                        rotating[i].push(r.throughput() / g.throughput().max(0.001));
                        cpu_rotating[i].push(rc.as_secs_f64() / c.as_secs_f64().max(1e-9));
                    }
                }
            }
            println!("| {kind}, {connections} | mock direct | 100 | | | {} | |", spread(cpu[n].clone(), 1));
            println!(
                "| {kind}, {connections} | via a TCP relay (no HTTP: one hop's floor) | {} | {} | | {} | |",
                spread(relay_ratio, 0),
                spread(relay_added, 3),
                spread(relay_cpu, 1)
            );
            for (i, gw) in gateways.iter().enumerate() {
                println!(
                    "| {kind}, {connections} | {} | {} | {} | {} | {} | {} |",
                    gw.label,
                    spread(ratio[i].iter().map(|r| r * 100.0).collect(), 0),
                    spread(added[i].clone(), 3),
                    spread(rotating[i].clone(), 2),
                    spread(cpu[i].clone(), 1),
                    spread(cpu_rotating[i].clone(), 2)
                );
            }
        }
    }
}

/// `--relay-to ADDR` (the wire rounds start this binary so): a TCP relay to ADDR that forwards bytes as they come and
/// understands nothing, the floor of what any proxy hop costs on this machine. Built like the gateway's server: one
/// single-threaded runtime per core, all accepting on one socket, `TCP_NODELAY` on both sides. Prints its port.
fn relay(to: SocketAddr) {
    let listener = std::net::TcpListener::bind(local(0)).unwrap();
    listener.set_nonblocking(true).unwrap();
    println!("{}", listener.local_addr().unwrap().port());
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let listener = listener.try_clone().unwrap();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_io().build().unwrap();
                rt.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                    loop {
                        let Ok((client, _)) = listener.accept().await else { continue };
                        tokio::spawn(async move {
                            let Ok(upstream) = tokio::net::TcpStream::connect(to).await else { return };
                            let _ = (client.set_nodelay(true), upstream.set_nodelay(true));
                            let ((client_in, client_out), (upstream_in, upstream_out)) =
                                (client.into_split(), upstream.into_split());
                            tokio::spawn(pipe(upstream_in, client_out));
                            pipe(client_in, upstream_out).await;
                        });
                    }
                });
            })
        })
        .collect();
    for w in workers {
        let _ = w.join();
    }
}

/// Copies `from` to `to` until either side closes.
async fn pipe(from: tokio::net::tcp::OwnedReadHalf, to: tokio::net::tcp::OwnedWriteHalf) {
    use std::io::ErrorKind::WouldBlock;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if from.readable().await.is_err() {
            return;
        }
        let n = match from.try_read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if e.kind() == WouldBlock => continue,
            Err(_) => return,
        };
        let mut sent = 0;
        while sent < n {
            if to.writable().await.is_err() {
                return;
            }
            match to.try_write(&buf[sent..n]) {
                Ok(k) => sent += k,
                Err(e) if e.kind() == WouldBlock => continue,
                Err(_) => return,
            }
        }
    }
}

/// Starts [`relay`] in front of `to` and returns it with its address.
fn spawn_relay(to: SocketAddr) -> (std::process::Child, SocketAddr) {
    use std::io::BufRead;
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--relay-to", &to.to_string()])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    (child, local(line.trim().parse().unwrap()))
}

/// Runs `load` and returns its figures with the CPU `pid` used per answered request meanwhile.
async fn measured(pid: u32, load: impl std::future::Future<Output = Stats>) -> (Stats, Duration) {
    let before = harness::cpu_time(pid);
    let stats = load.await;
    let used = harness::cpu_time(pid).saturating_sub(before);
    let per = used.div_f64(stats.ok.max(1) as f64);
    (stats, per)
}

fn print_wire(row: &str, label: &str, s: &Stats, mock: &Stats, cpu: Duration) {
    println!(
        "| {row} | {label} | {:.0} | {} | {} | {} | {:.0} % | {:.1} |",
        s.throughput(),
        s.errors,
        ms(s.percentile(0.5)),
        ms(s.percentile(0.99)),
        100.0 * s.throughput() / mock.throughput().max(0.001),
        cpu.as_secs_f64() * 1e6
    );
}

const CLAUDE_CHAT: &str = r#"{"model":"claude-sonnet-4-5","messages":[{"role":"user","content":"Say the alphabet."}]}"#;
const CLAUDE_STREAM: &str =
    r#"{"model":"claude-sonnet-4-5","stream":true,"messages":[{"role":"user","content":"Say the alphabet."}]}"#;
/// The same question in Anthropic's own dialect, sent to the mock directly.
const MESSAGES: &str = r#"{"model":"claude-sonnet-4-5","max_tokens":8192,"messages":[{"role":"user","content":[{"type":"text","text":"Say the alphabet."}]}]}"#;
const MESSAGES_STREAM: &str = r#"{"model":"claude-sonnet-4-5","max_tokens":8192,"stream":true,"messages":[{"role":"user","content":[{"type":"text","text":"Say the alphabet."}]}]}"#;
const TRANSLATION_REQUESTS: usize = 3_000;
const ROUNDS: usize = 7;
const ROUND_REQUESTS: usize = 500;

/// What translation costs: the same answer through the gateway as an OpenAI pass-through (`gpt-4o` on an OpenAI key)
/// and translated from Anthropic (`claude-sonnet-4-5` on an Anthropic key), each next to the mock answering its own
/// dialect directly. The gateway's cost is (through − direct) at p50 on one connection, and its own CPU per request
/// at 50 connections; the translated extra is the difference between the two rows.
async fn translation_rows(mock_addr: SocketAddr, mock_pid: u32, gw: &Gateway) {
    let claude = anthropic_token(mock_addr, gw).await;
    // `--translation-load openai|anthropic`: only 20 s of streamed answers at 50 connections through the gateway, to
    // profile one side (e.g. `perf record -p <gateway pid>`).
    if let Some(side) = arg("--translation-load") {
        let (token, body) = if side == "anthropic" { (&claude, CLAUDE_STREAM) } else { (&gw.token, STREAM) };
        let req = loadgen::request("/v1/chat/completions", gw.addr, Some(token), &[], body);
        println!("load: {side}, gateway pid {}", gw.pid);
        let (s, cpu) = measured(gw.pid, loadgen::max_throughput(gw.addr, req, Duration::from_secs(20), 50)).await;
        println!(
            "{side}: {:.0} req/s, {} errors, {:.1} CPU µs / request",
            s.throughput(),
            s.errors,
            cpu.as_secs_f64() * 1e6
        );
        return;
    }
    translation_table(mock_addr, mock_pid, gw, &claude).await;
}

async fn anthropic_token(mock_addr: SocketAddr, gw: &Gateway) -> String {
    harness::create_token(
        gw.addr,
        &json!({"user_email": "bench@example.com",
                "keys": [{"provider": "anthropic", "key": "sk-ant-bench-00000000000000000000000", "base_url": format!("http://{mock_addr}")}]}),
    )
    .await
}

async fn translation_table(mock_addr: SocketAddr, mock_pid: u32, gw: &Gateway, claude: &str) {
    let anthropic_headers = [("x-api-key", "sk-ant-bench-direct"), ("anthropic-version", "2023-06-01")];
    println!(
        "\n## Translation cost ({}): Anthropic answers translated to chat completions vs OpenAI pass-through\n",
        gw.label
    );
    println!(
        "| answer | path | p50 1 conn (ms) | p99 1 conn (ms) | gateway p50 cost (µs) | req/s 50 conns | CPU µs / request (the target's) |"
    );
    println!("|---|---|---|---|---|---|---|");
    let mut costs = Vec::new();
    for (kind, openai, translated, native) in
        [("plain", CHAT, CLAUDE_CHAT, MESSAGES), ("streamed", STREAM, CLAUDE_STREAM, MESSAGES_STREAM)]
    {
        let rows = [
            (
                "OpenAI pass-through",
                loadgen::request("/v1/chat/completions", mock_addr, Some("sk-bench-direct"), &[], openai),
                loadgen::request("/v1/chat/completions", gw.addr, Some(&gw.token), &[], openai),
            ),
            (
                "Anthropic translated",
                loadgen::request("/v1/messages", mock_addr, None, &anthropic_headers, native),
                loadgen::request("/v1/chat/completions", gw.addr, Some(claude), &[], translated),
            ),
        ];
        // Interleaved rounds: the machine's drift between rows is what makes two separate p50s disagree.
        for (_, _, through) in &rows {
            loadgen::sequential(gw.addr, through.clone(), 300).await;
        }
        let mut extras: Vec<f64> = Vec::with_capacity(ROUNDS);
        for _ in 0..ROUNDS {
            let mut cost = [0.0; 2];
            for (i, (_, direct, through)) in rows.iter().enumerate() {
                let d = loadgen::sequential(mock_addr, direct.clone(), ROUND_REQUESTS).await;
                let t = loadgen::sequential(gw.addr, through.clone(), ROUND_REQUESTS).await;
                cost[i] = t.percentile(0.5).as_secs_f64() - d.percentile(0.5).as_secs_f64();
            }
            extras.push((cost[1] - cost[0]) * 1e6);
        }
        extras.sort_by(f64::total_cmp);
        println!(
            "| {kind}: translated − pass-through, p50 cost over {ROUNDS} interleaved rounds of {ROUND_REQUESTS} | | | | median {:.0} (min {:.0}, max {:.0}) | | |",
            extras[ROUNDS / 2],
            extras[0],
            extras[ROUNDS - 1]
        );
        let mut cpu_of = Vec::new();
        for (label, direct, through) in rows {
            loadgen::sequential(gw.addr, through.clone(), 300).await;
            let d = loadgen::sequential(mock_addr, direct.clone(), TRANSLATION_REQUESTS).await;
            let t = loadgen::sequential(gw.addr, through.clone(), TRANSLATION_REQUESTS).await;
            let (dm, dcpu) = measured(mock_pid, loadgen::max_throughput(mock_addr, direct, RUN, 50)).await;
            let (tm, tcpu) = measured(gw.pid, loadgen::max_throughput(gw.addr, through, RUN, 50)).await;
            let cost = t.percentile(0.5).saturating_sub(d.percentile(0.5));
            for (path, s, m, cpu, c) in
                [("mock direct", &d, &dm, dcpu, None), ("via reliablegpt", &t, &tm, tcpu, Some(cost))]
            {
                println!(
                    "| {kind}, {label} | {path} | {} | {} | {} | {:.0} | {:.1} |",
                    ms(s.percentile(0.5)),
                    ms(s.percentile(0.99)),
                    c.map_or(String::new(), |c| format!("{:.0}", c.as_secs_f64() * 1e6)),
                    m.throughput(),
                    cpu.as_secs_f64() * 1e6,
                );
                if s.errors > 0 || m.errors > 0 {
                    println!("|   ({} + {} errors in that row) | | | | | | |", s.errors, m.errors);
                }
            }
            costs.push(cost);
            cpu_of.push(tcpu);
        }
        let extra_p50 = costs[costs.len() - 1].as_secs_f64() - costs[costs.len() - 2].as_secs_f64();
        let extra_cpu = cpu_of[1].as_secs_f64() - cpu_of[0].as_secs_f64();
        println!("| {kind}: translated − pass-through | | | | {:.0} | | {:.1} |", extra_p50 * 1e6, extra_cpu * 1e6);
    }
}
