//! Shared by the benchmarks that run the release gateway as its own process, as in production: a scratch database, the
//! gateway and mock-upstream processes, readiness, a key set, and memory probes.
// Each bench uses a different subset.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use serde_json::Value;
use sqlx::{Connection, PgConnection};

/// The gateway binary Cargo built for this bench (release under `cargo bench`).
pub const BIN: &str = env!("CARGO_BIN_EXE_reliablegpt");

/// Kills and reaps its processes when dropped.
pub struct Guard(pub Vec<Child>);

impl Drop for Guard {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The value after `name` on the command line.
pub fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned())
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

pub async fn wait_ready(url: &str) {
    let client = reqwest::Client::new();
    for _ in 0..300 {
        if let Ok(r) = client.get(url).send().await
            && r.status().is_success()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{url} never became ready");
}

fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Resident memory now.
pub fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:")
}

/// CPU time (user + system, all threads) the process has used so far. Unlike throughput, the CPU a request costs
/// hardly changes when other work shares the machine.
pub fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at state; utime and stime are the 12th and 13th.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let ticks: u64 = after.split_whitespace().skip(11).take(2).filter_map(|t| t.parse::<u64>().ok()).sum();
    // USER_HZ is 100 on Linux.
    Duration::from_millis(ticks * 10)
}

/// Peak resident memory so far.
pub fn peak_rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmHWM:")
}

/// A database of its own for one bench run, made from `DATABASE_URL` and dropped by [`ScratchDb::drop`].
pub struct ScratchDb {
    admin: PgConnection,
    name: String,
    pub url: url::Url,
}

impl ScratchDb {
    pub async fn create() -> ScratchDb {
        let admin_url = std::env::var("DATABASE_URL").expect("DATABASE_URL (scripts/bench provides one)");
        let name = format!("bench_{}", uuid::Uuid::new_v4().simple());
        let mut admin = PgConnection::connect(&admin_url).await.unwrap();
        sqlx::query(&format!(r#"CREATE DATABASE "{name}""#)).execute(&mut admin).await.unwrap();
        let mut url = url::Url::parse(&admin_url).unwrap();
        url.set_path(&name);
        ScratchDb { admin, name, url }
    }

    pub async fn drop(mut self) {
        sqlx::query(&format!(r#"DROP DATABASE IF EXISTS "{}" WITH (FORCE)"#, self.name))
            .execute(&mut self.admin)
            .await
            .ok();
    }
}

/// `reliablegpt mock-upstream` on `addr`.
pub fn spawn_mock(bin: &str, addr: SocketAddr) -> Child {
    Command::new(bin)
        .args(["mock-upstream", "--listen", &addr.to_string()])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap()
}

/// `reliablegpt serve --migrate` on `listen`, sending OpenAI traffic to `openai_base_url` (a local mock).
/// `RELIABLEGPT_WORKERS` passes through.
pub fn spawn_gateway(bin: &str, db: &ScratchDb, listen: SocketAddr, openai_base_url: &str) -> Child {
    let secret = || base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 32]>());
    Command::new(bin)
        .args(["serve", "--migrate"])
        .env("DATABASE_URL", db.url.as_str())
        .env("RELIABLEGPT_LISTEN", listen.to_string())
        .env("RELIABLEGPT_MASTER_KEY", secret())
        .env("RELIABLEGPT_TOKEN_PEPPER", secret())
        .env("RELIABLEGPT_OPENAI_BASE_URL", openai_base_url)
        .env("RELIABLEGPT_ALLOW_PRIVATE_UPSTREAMS", "true")
        .env("RELIABLEGPT_ALLOWED_UPSTREAM_HOSTS", "127.0.0.1")
        .env("RELIABLEGPT_KEY_SETS_PER_MINUTE", "100000")
        .env("RUST_LOG", "warn")
        .envs(std::env::var("RELIABLEGPT_WORKERS").ok().map(|w| ("RELIABLEGPT_WORKERS", w)))
        .stdout(Stdio::null())
        .spawn()
        .unwrap()
}

/// Creates a key set through the gateway's API (`POST /v1/keys` with `body`) and returns its token.
pub async fn create_token(gateway: SocketAddr, body: &Value) -> String {
    let created: Value = reqwest::Client::new()
        .post(format!("http://{gateway}/v1/keys"))
        .json(body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    created["token"].as_str().unwrap().to_owned()
}

/// The gateway's `/metrics` text.
pub async fn metrics(gateway: SocketAddr) -> String {
    reqwest::Client::new().get(format!("http://{gateway}/metrics")).send().await.unwrap().text().await.unwrap()
}
