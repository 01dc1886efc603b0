//! The key-set cache across replicas and through database outages: a lost change listener, keys marked on another
//! replica, and a real PostgreSQL stopped and started under load (a private cluster, so other tests keep theirs).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reliablegpt::config::env;
use reliablegpt::mock_upstream::MockUpstream;
use reliablegpt::startup::Application;
use serde_json::{Value, json};

use crate::helpers::{TestApp, chat_at, random_secret, settings_from, spawn_gateway_with, token_of};

const K1: &str = "sk-outage-key-one-00000000000000000000001";
const K2: &str = "sk-outage-key-two-00000000000000000000002";

async fn chat(client: &reqwest::Client, base: &str, token: &str) -> (u16, Option<String>, Value, Duration) {
    let started = Instant::now();
    let res = chat_at(client, base, token, "gpt-4o").await;
    let status = res.status().as_u16();
    let retry_after = res.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
    let body = res.json().await.unwrap_or(Value::Null);
    (status, retry_after, body, started.elapsed())
}

#[tokio::test]
async fn a_lost_listener_connection_drops_the_cache_when_it_reconnects() {
    let gw = spawn_gateway_with(|e| {
        e.insert(env::KEY_SET_CACHE_SECS.into(), "600".into());
    })
    .await;
    let token = gw.key_set(&[K1], &[]).await;
    assert_eq!(gw.chat(&token, "gpt-4o").await.status, 200);

    // A revocation whose notification this replica never hears (as when it is sent while the listener is away).
    sqlx::query("DELETE FROM vault_key_sets").execute(&gw.app.pool).await.unwrap();
    assert_eq!(gw.chat(&token, "gpt-4o").await.status, 200, "still cached: nothing told this replica");

    let killed: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND query LIKE 'LISTEN%'",
    )
    .fetch_all(&gw.app.pool)
    .await
    .unwrap();
    assert_eq!(killed, vec![true], "one change listener per replica");

    // It reconnects at once and, since it may have missed notifications, forgets every cached set.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut status = 200;
    while status == 200 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        status = gw.chat(&token, "gpt-4o").await.status;
    }
    assert_eq!(status, 401, "the revoked token must stop working once the listener is back");
}

#[tokio::test]
async fn a_key_marked_invalid_on_one_replica_is_skipped_by_the_others() {
    let gw = spawn_gateway_with(|_| {}).await;
    let other = gw.app.sibling(|_| {}).await;
    let token = gw.key_set(&[K1, K2], &[]).await;
    // The other replica opens (and caches) the set while both keys are fine.
    assert_eq!(chat(&other.client, &other.address, &token).await.0, 200);

    gw.mock.clear();
    gw.mock.set_invalid_key(K1);
    assert_eq!(gw.chat(&token, "gpt-4o").await.status, 200);
    assert_eq!(gw.keys_seen(), vec![K1, K2]);
    wait_for_key_status(&gw.app, &token, "invalid").await;
    // Let the notification reach the other replica (it follows the write).
    tokio::time::sleep(Duration::from_millis(500)).await;

    gw.mock.clear();
    gw.mock.set_invalid_key(K1);
    assert_eq!(chat(&other.client, &other.address, &token).await.0, 200);
    assert_eq!(gw.keys_seen(), vec![K2], "the other replica reloaded the set and skips the invalid key");
}

async fn wait_for_key_status(app: &TestApp, token: &str, status: &str) {
    let mut listed = Value::Null;
    for _ in 0..100 {
        listed = app.get_keys(token).await.json().await.unwrap();
        if listed["keys"][0]["status"] == status {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("key never became {status}: {listed}");
}

/// A PostgreSQL of its own for one test, so it can be stopped without touching the shared dev server: initdb into a
/// 0700 folder under /tmp, loopback only, trust authentication (nothing else can reach it), run as the unprivileged
/// `reliablegpt-pg` when the tests run as root (PostgreSQL refuses root), like scripts/dev-db.
struct PrivateCluster {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    as_user: Option<&'static str>,
}

impl PrivateCluster {
    fn bin_dir() -> Option<PathBuf> {
        let dir = std::env::var("RELIABLEGPT_PG_BIN_DIR").ok().or_else(|| {
            let file = concat!(env!("CARGO_MANIFEST_DIR"), "/.dev/pg-bin-dir");
            std::fs::read_to_string(file).ok().map(|s| s.trim().to_owned())
        })?;
        let dir = PathBuf::from(dir);
        (dir.join("initdb").exists() && dir.join("pg_ctl").exists()).then_some(dir)
    }

    fn start() -> Option<Self> {
        let bin = Self::bin_dir()?;
        let root = String::from_utf8(Command::new("id").arg("-u").output().unwrap().stdout).unwrap().trim() == "0";
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let cluster = Self {
            bin,
            dir: std::env::temp_dir().join(format!("rgpt-outage-{}", uuid::Uuid::new_v4().simple())),
            port,
            as_user: root.then_some("reliablegpt-pg"),
        };
        cluster.run(Command::new("mkdir").args(["-m", "700"]).arg(&cluster.dir));
        let data = cluster.dir.join("data");
        cluster.run(Command::new(cluster.bin.join("initdb")).arg("-D").arg(&data).args([
            "-U",
            "postgres",
            "--auth=trust",
            "--no-sync",
            "-E",
            "UTF8",
        ]));
        cluster.pg_ctl_start();
        Some(cluster)
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn command(&self, program: &Path) -> Command {
        match self.as_user {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(program);
                c
            }
            None => Command::new(program),
        }
    }

    fn run(&self, cmd: &mut Command) {
        let (program, args) = (cmd.get_program().to_owned(), cmd.get_args().map(|a| a.to_owned()).collect::<Vec<_>>());
        let mut full = self.command(Path::new(&program));
        full.args(args).current_dir("/");
        let out = full.output().unwrap();
        assert!(out.status.success(), "{program:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }

    fn pg_ctl_start(&self) {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync=off -c max_connections=50",
            self.port,
            self.dir.display()
        );
        self.run(
            Command::new(self.bin.join("pg_ctl"))
                .arg("start")
                .arg("-D")
                .arg(self.dir.join("data"))
                .arg("-l")
                .arg(self.dir.join("log"))
                .args(["-w", "-t", "60", "-s", "-o", &options]),
        );
    }

    fn pg_ctl_stop(&self, mode: &str) {
        self.run(
            Command::new(self.bin.join("pg_ctl"))
                .arg("stop")
                .arg("-D")
                .arg(self.dir.join("data"))
                .args(["-m", mode, "-w", "-t", "60", "-s"]),
        );
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        let _ = self
            .command(&self.bin.join("pg_ctl"))
            .arg("stop")
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", "immediate", "-w", "-s"])
            .current_dir("/")
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn start_replica(url: &str, mock: &MockUpstream, master_key: &str, pepper: &str, grace_secs: u32) -> String {
    let vars: HashMap<String, String> = [
        (env::DATABASE_URL, url.to_owned()),
        (env::LISTEN, "127.0.0.1:0".to_owned()),
        (env::MASTER_KEY, master_key.to_owned()),
        (env::TOKEN_PEPPER, pepper.to_owned()),
        (env::KEY_SETS_PER_MINUTE, "10000".to_owned()),
        (env::AUTH_FAILURES_PER_MINUTE, "10000".to_owned()),
        (env::DB_MAX_CONNECTIONS, "5".to_owned()),
        (env::OPENAI_BASE_URL, mock.base_url()),
        (env::ALLOW_PRIVATE_UPSTREAMS, "true".to_owned()),
        (env::ALLOWED_UPSTREAM_HOSTS, "127.0.0.1".to_owned()),
        // Shorter than the outage: warm sets survive it only through the grace.
        (env::KEY_SET_CACHE_SECS, "2".to_owned()),
        (env::DB_OUTAGE_GRACE_SECS, grace_secs.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    if std::env::var("TEST_LOG").is_ok() {
        reliablegpt::telemetry::init();
    }
    let app = Application::build(settings_from(&vars), true).await.expect("replica starts");
    let address = format!("http://{}", app.addr());
    tokio::spawn(app.run_until_stopped());
    address
}

async fn readyz(client: &reqwest::Client, base: &str) -> (u16, Value) {
    let res = client.get(format!("{base}/readyz")).send().await.unwrap();
    (res.status().as_u16(), res.json().await.unwrap_or(Value::Null))
}

async fn wait_until(what: &str, limit: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(Instant::now() < deadline, "gave up waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn assert_unavailable(status: u16, retry_after: Option<String>, body: &Value, took: Duration, what: &str) {
    assert_eq!(status, 503, "{what}: {body}");
    assert_eq!(retry_after.as_deref(), Some("2"), "{what}");
    assert_eq!(body["error"]["code"], "service_unavailable", "{what}: {body}");
    assert_eq!(body["error"]["type"], "server_error", "{what}: {body}");
    assert!(took < Duration::from_secs(1), "{what}: answered after {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_key_sets_keep_serving_through_a_database_outage_and_cold_ones_get_a_quick_503() {
    let Some(pg) = tokio::task::spawn_blocking(PrivateCluster::start).await.unwrap() else {
        eprintln!(
            "SKIPPED: no PostgreSQL binaries (set RELIABLEGPT_PG_BIN_DIR, or run scripts/dev-db once); \
             scripts/test and CI provide them"
        );
        return;
    };
    let pg = Arc::new(pg);
    let mock = MockUpstream::start("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let (master_key, pepper) = (format!("v1:{}", random_secret()), random_secret());
    let a = start_replica(&pg.url(), &mock, &master_key, &pepper, 60).await;
    // A replica with a short grace: its warm sets stop serving while the database is still down.
    let b = start_replica(&pg.url(), &mock, &master_key, &pepper, 2).await;
    let client = reqwest::Client::new();
    let create = async |keys: Value| {
        let res = client
            .post(format!("{a}/v1/keys"))
            .json(&json!({"user_email": "ops@example.com", "keys": keys}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 201);
        token_of(&res.json().await.unwrap())
    };
    let warm = create(json!([K1])).await;
    let cold = create(json!([K2])).await;
    assert_eq!(chat(&client, &a, &warm).await.0, 200);
    assert_eq!(chat(&client, &b, &warm).await.0, 200);

    // Steady load on the warm key set: four clients back to back.
    let results: Arc<Mutex<Vec<(Instant, u16, Duration)>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load: Vec<_> = (0..4)
        .map(|_| {
            let (client, a, warm, results, stop) =
                (client.clone(), a.clone(), warm.clone(), results.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let at = Instant::now();
                    let (status, _, body, took) = chat(&client, &a, &warm).await;
                    assert_eq!(status, 200, "{body}");
                    results.lock().unwrap().push((at, status, took));
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(3)).await;

    let stopped_at = Instant::now();
    let cluster = pg.clone();
    tokio::task::spawn_blocking(move || cluster.pg_ctl_stop("fast")).await.unwrap();
    wait_until("/readyz reports the outage", Duration::from_secs(5), async || {
        readyz(&client, &a).await.1["database"] == "unreachable"
    })
    .await;
    let (status, ready) = readyz(&client, &a).await;
    assert_eq!((status, ready["status"].as_str()), (200, Some("degraded")), "{ready}");
    assert!(ready["grace_left_secs"].as_u64().unwrap() > 50, "{ready}");

    // The cache API needs the database too: it waits for the pool (5 s), then gets the same 503, not a 500.
    let cache_lookup = {
        let (client, a, warm) = (client.clone(), a.clone(), warm.clone());
        tokio::spawn(async move {
            let res = client
                .post(format!("{a}/v1/cache/lookup"))
                .bearer_auth(&warm)
                .json(&json!({"query": "hi"}))
                .send()
                .await
                .unwrap();
            let retry_after = res.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
            (res.status().as_u16(), retry_after, res.json::<Value>().await.unwrap())
        })
    };

    // A key set that is not in memory needs the database: a quick 503 the SDKs retry, not a 5 s wait and a 500.
    let (status, retry_after, body, cold_took) = chat(&client, &a, &cold).await;
    assert_unavailable(status, retry_after, &body, cold_took, "cold key set");
    let started = Instant::now();
    let res = client.get(format!("{a}/v1/keys")).bearer_auth(&warm).send().await.unwrap();
    let (status, retry_after) =
        (res.status().as_u16(), res.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned()));
    assert_unavailable(status, retry_after, &res.json().await.unwrap(), started.elapsed(), "GET /v1/keys");

    // Past its grace, replica B drops its warm sets and says so.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (status, retry_after, body, took) = chat(&client, &b, &warm).await;
    assert_unavailable(status, retry_after, &body, took, "warm key set past the grace");
    assert_eq!(readyz(&client, &b).await.0, 503);

    let (status, retry_after, body) = cache_lookup.await.unwrap();
    assert_unavailable(status, retry_after, &body, Duration::ZERO, "POST /v1/cache/lookup");

    tokio::time::sleep(stopped_at + Duration::from_secs(8) - Instant::now()).await;
    let cluster = pg.clone();
    tokio::task::spawn_blocking(move || cluster.pg_ctl_start()).await.unwrap();
    let restarted_at = Instant::now();
    wait_until("replica A is ready again", Duration::from_secs(15), async || {
        readyz(&client, &a).await.1["status"] == "ready"
    })
    .await;
    let recovered_in = restarted_at.elapsed();
    assert_eq!(chat(&client, &a, &cold).await.0, 200, "the database is back: cold key sets open again");
    wait_until("replica B serves again", Duration::from_secs(15), async || chat(&client, &b, &warm).await.0 == 200)
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for task in load {
        task.await.unwrap(); // every load request got a 200, through the outage too
    }

    let results = results.lock().unwrap();
    let rate = |from: Instant, to: Instant| {
        let n = results.iter().filter(|(at, _, _)| *at >= from && *at < to).count();
        n as f64 / (to - from).as_secs_f64()
    };
    let first = results[0].0;
    let during = rate(stopped_at, restarted_at);
    let before = rate(first, stopped_at);
    let slowest = results.iter().map(|(_, _, took)| *took).max().unwrap();
    eprintln!(
        "outage: {} requests, all 200; {before:.0} req/s before, {during:.0} req/s during the {:.1} s outage; \
         slowest {slowest:?}; a cold key set's 503 took {cold_took:?}; ready again {recovered_in:?} after the restart",
        results.len(),
        (restarted_at - stopped_at).as_secs_f64(),
    );
    assert!(during > before / 3.0, "throughput collapsed during the outage: {before:.0} → {during:.0} req/s");
}
