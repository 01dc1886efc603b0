//! Test harness: every test gets a fresh PostgreSQL database (random name, migrated) that is dropped afterwards, and a
//! real reliablegpt listening on a random port.

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use reliablegpt::config::{Settings, env};
use reliablegpt::startup::Application;
use serde_json::{Value, json};
use sqlx::{Connection, PgConnection, PgPool};
use url::Url;

pub const CANARY_PREFIX: &str = "sk-canary-";

/// A key no code path should ever echo, log or store in clear.
pub fn canary_key() -> String {
    format!("{CANARY_PREFIX}{}", uuid::Uuid::new_v4().simple())
}

pub fn random_secret() -> String {
    BASE64.encode(rand::random::<[u8; 32]>())
}

fn admin_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| {
        panic!(
            "DATABASE_URL is not set. Run ./scripts/test (it provisions a local PostgreSQL with pgvector), \
             or export DATABASE_URL=postgres://USER:PASSWORD@HOST:PORT/DB for a server whose user may CREATE DATABASE."
        )
    })
}

/// A database created for one test and dropped (with FORCE) when the last handle goes.
pub struct TestDatabase {
    pub name: String,
    pub url: String,
    admin_url: String,
}

impl TestDatabase {
    pub async fn create() -> Arc<Self> {
        let admin_url = admin_url();
        let name = format!("test_{}", uuid::Uuid::new_v4().simple());
        let mut admin = PgConnection::connect(&admin_url).await.expect("connect to DATABASE_URL");
        sqlx::query(&format!(r#"CREATE DATABASE "{name}""#)).execute(&mut admin).await.expect("create database");
        let mut url = Url::parse(&admin_url).expect("DATABASE_URL is a URL");
        url.set_path(&name);
        Arc::new(Self { name, url: url.to_string(), admin_url })
    }

    pub async fn pool(&self) -> PgPool {
        PgPool::connect(&self.url).await.expect("connect to the test database")
    }

    /// Drops the database now, killing every connection (used to prove a code path never touches it).
    pub async fn drop_now(&self) {
        let mut admin = PgConnection::connect(&self.admin_url).await.expect("connect to DATABASE_URL");
        sqlx::query(&format!(r#"DROP DATABASE IF EXISTS "{}" WITH (FORCE)"#, self.name))
            .execute(&mut admin)
            .await
            .expect("drop database");
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
                return;
            };
            rt.block_on(async {
                if let Ok(mut admin) = PgConnection::connect(&admin_url).await {
                    let _ = sqlx::query(&format!(r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#))
                        .execute(&mut admin)
                        .await;
                }
            });
        })
        .join();
    }
}

/// The cache's embedding model (`scripts/model`, run by `scripts/test`): tests of semantic matching need it and fail
/// without it rather than skip.
pub fn model_dir() -> String {
    if let Ok(dir) = std::env::var(env::MODEL_DIR) {
        return dir;
    }
    let local = concat!(env!("CARGO_MANIFEST_DIR"), "/.dev/models/all-MiniLM-L6-v2");
    assert!(
        std::path::Path::new(local).join("model.safetensors").exists(),
        "the embedding model is missing: run scripts/model (scripts/test does) or set RELIABLEGPT_EMBEDDING_MODEL_DIR"
    );
    local.to_owned()
}

/// Settings tweak: the real embedding model, so the cache matches by meaning.
pub fn with_model(vars: &mut HashMap<String, String>) {
    vars.insert(env::MODEL_DIR.to_owned(), model_dir());
}

/// The environment a test app starts with; tests change entries before spawning.
pub fn base_env(db: &TestDatabase) -> HashMap<String, String> {
    HashMap::from([
        (env::DATABASE_URL.to_owned(), db.url.clone()),
        (env::LISTEN.to_owned(), "127.0.0.1:0".to_owned()),
        (env::MASTER_KEY.to_owned(), format!("v1:{}", random_secret())),
        (env::TOKEN_PEPPER.to_owned(), random_secret()),
        (env::KEY_SETS_PER_MINUTE.to_owned(), "10000".to_owned()),
        (env::AUTH_FAILURES_PER_MINUTE.to_owned(), "10000".to_owned()),
        (env::DB_MAX_CONNECTIONS.to_owned(), "5".to_owned()),
    ])
}

pub fn settings_from(vars: &HashMap<String, String>) -> Settings {
    Settings::from_sources(None, |name| vars.get(name).cloned()).expect("valid test settings")
}

pub struct TestApp {
    pub address: String,
    pub db: Arc<TestDatabase>,
    pub pool: PgPool,
    pub env: HashMap<String, String>,
    pub client: reqwest::Client,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

pub async fn spawn_app_with(tweak: impl FnOnce(&mut HashMap<String, String>)) -> TestApp {
    let db = TestDatabase::create().await;
    let mut vars = base_env(&db);
    tweak(&mut vars);
    start(db, vars).await
}

async fn start(db: Arc<TestDatabase>, vars: HashMap<String, String>) -> TestApp {
    if std::env::var("TEST_LOG").is_ok() {
        reliablegpt::telemetry::init();
    }
    let app = Application::build(settings_from(&vars), true).await.expect("application starts");
    let address = format!("http://{}", app.addr());
    tokio::spawn(app.run_until_stopped());
    TestApp {
        address,
        pool: db.pool().await,
        db,
        env: vars,
        client: reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("client"),
    }
}

impl TestApp {
    /// Another replica on the same database, with some settings changed (e.g. the master keyring).
    pub async fn sibling(&self, tweak: impl FnOnce(&mut HashMap<String, String>)) -> TestApp {
        let mut vars = self.env.clone();
        tweak(&mut vars);
        start(self.db.clone(), vars).await
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    pub async fn post_keys(&self, body: &Value) -> reqwest::Response {
        self.client.post(self.url("/v1/keys")).json(body).send().await.expect("request")
    }

    pub async fn get_keys(&self, token: &str) -> reqwest::Response {
        self.client.get(self.url("/v1/keys")).bearer_auth(token).send().await.expect("request")
    }

    pub async fn patch_keys(&self, token: &str, body: &Value) -> reqwest::Response {
        self.client.patch(self.url("/v1/keys")).bearer_auth(token).json(body).send().await.expect("request")
    }

    pub async fn delete_keys(&self, token: &str) -> reqwest::Response {
        self.client.delete(self.url("/v1/keys")).bearer_auth(token).send().await.expect("request")
    }

    /// Creates a key set from `keys` and returns the 201 body.
    pub async fn create_key_set(&self, keys: Value) -> Value {
        let res = self.post_keys(&json!({"user_email": "dev@example.com", "keys": keys})).await;
        assert_eq!(res.status(), 201);
        res.json().await.expect("json")
    }

    /// `POST /v1/chat/completions` for `model` with `token`.
    pub async fn chat(&self, token: &str, model: &str) -> reqwest::Response {
        chat_at(&self.client, &self.address, token, model).await
    }

    pub async fn count(&self, table: &str) -> i64 {
        sqlx::query_scalar(&format!("SELECT count(*) FROM {table}")).fetch_one(&self.pool).await.expect("count")
    }
}

pub fn token_of(created: &Value) -> String {
    created["token"].as_str().expect("token in response").to_owned()
}

/// Asserts the OpenAI error shape and returns `error`.
pub async fn error_of(res: reqwest::Response, status: u16) -> Value {
    assert_eq!(res.status().as_u16(), status);
    let body: Value = res.json().await.expect("json error body");
    let error = body["error"].clone();
    assert!(error["message"].is_string(), "{body}");
    assert!(error["type"].is_string(), "{body}");
    assert!(error.get("code").is_some() && error.get("param").is_some(), "{body}");
    assert_eq!(body.as_object().map(|o| o.len()), Some(1), "{body}");
    error
}

/// Every encoding of `secret` that a careless store or log might contain.
pub fn encodings(secret: &str) -> Vec<String> {
    let hex: String = secret.bytes().map(|b| format!("{b:02x}")).collect();
    vec![
        secret.to_owned(),
        BASE64.encode(secret),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret),
        hex.clone(),
        hex.to_uppercase(),
    ]
}

pub fn assert_absent(haystack: &str, secret: &str, what: &str) {
    for form in encodings(secret) {
        assert!(!haystack.contains(&form), "{what} contains a secret (form {form:?})");
    }
}

/// A gateway wired to our fault-injecting mock upstream, with short time limits so failure tests run fast.
pub struct GatewayTest {
    pub app: TestApp,
    pub mock: reliablegpt::mock_upstream::MockUpstream,
}

pub async fn spawn_gateway() -> GatewayTest {
    spawn_gateway_with(|_| {}).await
}

pub async fn spawn_gateway_with(tweak: impl FnOnce(&mut HashMap<String, String>)) -> GatewayTest {
    let mock = reliablegpt::mock_upstream::MockUpstream::start("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let base_url = mock.base_url();
    let app = spawn_app_with(|e| {
        for (k, v) in [
            (env::OPENAI_BASE_URL, base_url.as_str()),
            (env::ALLOW_PRIVATE_UPSTREAMS, "true"),
            (env::ALLOWED_UPSTREAM_HOSTS, "127.0.0.1,localhost,api.openai.com,*.openai.azure.com"),
            (env::RETRY_BASE_MS, "5"),
            (env::FIRST_BYTE_TIMEOUT_MS, "600"),
            (env::STREAM_IDLE_TIMEOUT_MS, "600"),
            (env::BREAKER_OPEN_MS, "400"),
            (env::RATE_LIMIT_COOLDOWN_MS, "400"),
        ] {
            e.insert(k.to_owned(), v.to_owned());
        }
        tweak(e);
    })
    .await;
    GatewayTest { app, mock }
}

pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
    pub text: String,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

impl GatewayTest {
    /// A key set of OpenAI keys with the given fallback strategy; returns the token.
    pub async fn key_set(&self, keys: &[&str], fallbacks: &[&str]) -> String {
        self.key_set_with(json!(keys), json!({"fallback_strategy": fallbacks})).await
    }

    pub async fn key_set_with(&self, keys: Value, policy: Value) -> String {
        let res = self.app.post_keys(&json!({"user_email": "dev@example.com", "keys": keys, "policy": policy})).await;
        let status = res.status();
        let body: Value = res.json().await.unwrap();
        assert_eq!(status, 201, "{body}");
        token_of(&body)
    }

    pub async fn post(&self, path: &str, token: &str, body: Value, headers: &[(&str, &str)]) -> Answer {
        let mut req = self.app.client.post(self.app.url(path)).bearer_auth(token).json(&body);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let res = req.send().await.unwrap();
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let text = res.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Answer { status, headers, body, text }
    }

    pub async fn chat(&self, token: &str, model: &str) -> Answer {
        self.post("/v1/chat/completions", token, chat_body(model), &[]).await
    }

    /// Models the mock saw, in order.
    pub fn models_seen(&self) -> Vec<String> {
        self.mock.requests().into_iter().filter_map(|r| r.model).collect()
    }

    pub fn keys_seen(&self) -> Vec<String> {
        self.mock.requests().into_iter().filter_map(|r| r.api_key).collect()
    }
}

/// `POST {base}/v1/chat/completions` for `model` with `token` (also for services started outside a [`TestApp`]).
pub async fn chat_at(client: &reqwest::Client, base: &str, token: &str, model: &str) -> reqwest::Response {
    client.post(format!("{base}/v1/chat/completions")).bearer_auth(token).json(&chat_body(model)).send().await.unwrap()
}

pub fn chat_body(model: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "Say the alphabet."}]})
}

/// Parses an SSE body into its data payloads.
pub fn sse_data(text: &str) -> Vec<String> {
    text.split("\n\n")
        .filter_map(|event| {
            let data: Vec<&str> = event.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
            (!data.is_empty()).then(|| data.join("\n"))
        })
        .collect()
}

/// The assistant text carried by a chat stream's chunks.
pub fn streamed_text(text: &str) -> String {
    sse_data(text)
        .iter()
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|v| v.pointer("/choices/0/delta/content").and_then(|c| c.as_str()).map(str::to_owned))
        .collect()
}

/// The real binary (`reliablegpt serve`) in its own process, with everything it prints captured.
pub struct RunningService {
    pub base: String,
    child: std::process::Child,
    reader: Option<std::thread::JoinHandle<String>>,
}

/// A test that fails before `stop` must not leave the service running (it would keep working against its database
/// and share the machine's cores with every later test and benchmark).
impl Drop for RunningService {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl RunningService {
    /// Starts it with exactly `vars` and `RUST_LOG=rust_log`, and waits until it listens.
    pub fn start(vars: &HashMap<String, String>, rust_log: &str) -> Self {
        use std::io::BufRead;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_reliablegpt"))
            .arg("serve")
            .env_clear()
            .envs(vars)
            .env("RUST_LOG", rust_log)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start reliablegpt");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let reader = std::thread::spawn(move || {
            let mut all = String::new();
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line.clone());
                all.push_str(&line);
                all.push('\n');
            }
            all
        });
        let addr = loop {
            let line = rx.recv_timeout(std::time::Duration::from_secs(30)).expect("the service logs its address");
            let Ok(event) = serde_json::from_str::<Value>(&line) else { continue };
            if event["fields"]["message"] == "listening" {
                break event["fields"]["addr"].as_str().expect("addr").to_owned();
            }
        };
        Self { base: format!("http://{addr}"), child, reader: Some(reader) }
    }

    /// `POST /v1/keys` with `body`; the answer's JSON, whatever its status.
    pub async fn post_keys(&self, body: &Value) -> Value {
        let res =
            reqwest::Client::new().post(format!("{}/v1/keys", self.base)).json(body).send().await.expect("request");
        res.json().await.expect("json")
    }

    /// Stops it and returns everything it printed (stdout, then stderr).
    pub fn stop(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let mut logs = self.reader.take().map(|r| r.join().expect("log reader")).unwrap_or_default();
        let mut stderr = String::new();
        if let Some(mut err) = self.child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut err, &mut stderr);
        }
        logs.push_str(&stderr);
        logs
    }
}
