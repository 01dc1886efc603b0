//! A fault-injecting OpenAI-compatible (and Anthropic- and Gemini-compatible) upstream for tests, benchmarks and the
//! demo.
//!
//! It speaks OpenAI's (and Azure OpenAI's), Anthropic's Messages and Gemini's generateContent exact wire formats on a
//! minimal HTTP/1.1 server written on raw tokio TCP,
//! so it controls the socket: tests script per-model [`Behavior`]s to get errors, resets before the headers, silent
//! connections, streams cut or stalled mid-answer, malformed SSE chunks and more. Healthy answers are deterministic
//! ([`full_answer`]) so truncation is detectable.
//!
//! A healthy chat answer continues a cut-off one the two ways a gateway can ask for it, as a real model would:
//! - the last message is an assistant prefill that starts [`FULL_ANSWER`]: the rest after it;
//! - the last message is a user turn quoting a start of [`FULL_ANSWER`] (at least 5 characters, ending before a
//!   non-alphanumeric character or the end of the text, the longest such): the last word quoted again, then the rest.
//!
//! Otherwise the answer is [`FULL_ANSWER`]. A legacy completion prompt ending in a start of it gets the rest. The same
//! rules hold for Anthropic (a last `assistant` message is a prefill) and Gemini (a last `model` turn is).
//!
//! Routes: `POST /v1/chat/completions`, `POST /v1/completions`, `POST /v1/embeddings`, `GET /v1/models`,
//! `POST /v1/moderations`, `POST /v1/images/generations`, `POST /v1/audio/speech` (binary audio in chunks; see
//! [`surface`]; the same fault menu, stream faults cutting or stalling the audio after N chunks), the
//! Responses API (`POST /v1/responses`, JSON or typed SSE events, with the same fault menu; `GET`/`DELETE
//! /v1/responses/{id}`, `POST /v1/responses/{id}/cancel`, `GET /v1/responses/{id}/input_items` for responses created
//! with the same key, 404 otherwise; `previous_response_id` must name one of those), the Azure
//! `POST /v1/audio/transcriptions` (a `multipart/form-data` upload, recorded as the JSON of its fields),
//! `POST /openai/deployments/{deployment}/{chat/completions,completions,embeddings,images/generations,audio/speech,
//! audio/transcriptions}
//! ?api-version=...`, Anthropic's `POST /v1/messages` (key from `x-api-key`, or a bearer token as Anthropic's 2.x
//! SDKs send it; `anthropic-version` required; JSON `message` or typed SSE events; see `anthropic.rs`), Gemini's
//! `POST /v1beta/models/{model}:generateContent` and `…:streamGenerateContent?alt=sse` (also under `/v1/`; key from
//! `x-goog-api-key` or `?key=`; the model from the path is the script target; SSE events end in CRLF and there is no
//! `[DONE]`; without `alt=sse` a stream is refused with 400; see `gemini.rs`), and the control
//! endpoints `POST /_mock/script` `{"target", "steps": [Behavior]}`, `POST /_mock/invalid_key` `{"key"}`,
//! `POST /_mock/no_quota_key` `{"key"}`, `POST /_mock/rejects_prefill` `{"target"}`, `GET /_mock/requests`,
//! `POST /_mock/clear`, `GET /_mock/health`.
//!
//! Order of checks for an API request: route (unknown → 404; Azure without `api-version` → 404; unknown under
//! `/v1beta/` → Gemini's 404), key (missing or invalid → 401, no quota → 429; Anthropic: 401 `authentication_error`,
//! no credit → 400; Gemini: missing → 403 `PERMISSION_DENIED`, invalid → 400 `API_KEY_INVALID`, no quota → 429
//! `RESOURCE_EXHAUSTED`), Anthropic's `anthropic-version` header (→ 400), JSON body (→ 400), `model` (→ 400), the
//! endpoint's own fields (Anthropic: `max_tokens`, `messages`, a final assistant message without trailing whitespace;
//! Gemini: `contents`; → 400), an assistant (model) prefill to a target set with [`MockUpstream::set_rejects_prefill`]
//! (→ 400), then the target's next scripted step (none → healthy). Only requests that pass the checks consume a
//! script step; every API request is recorded.
//!
//! Native answers also honour the request's limits and tools: Anthropic `max_tokens` and Gemini
//! `generationConfig.maxOutputTokens` cut the answer to that many words (`max_tokens` / `MAX_TOKENS`), `stop_sequences`
//! / `stopSequences` stop just before the first one found (`stop_sequence` / `STOP`); Anthropic `tool_choice`
//! `{"type":"tool","name"}` or `{"type":"any"}` and Gemini `toolConfig.functionCallingConfig.mode: "ANY"` answer with
//! one call (`tool_use` / `functionCall`, input `{"mock": true}`), except that a tool result (`tool_result` /
//! `functionResponse`) in the last user turn gets a text answer. Other fields (temperature, JSON mode, schemas) are
//! accepted and do not change the answer.
//!
//! Errors are in the request's dialect: Anthropic `{"type":"error","error":{"type","message"}}` with the type of the
//! status (529 and 503 `overloaded_error`), Gemini `{"error":{"code","message","status"}}` with Google's status for
//! the code (a scripted `type` that is one of the dialect's own is kept). [`Behavior::Flapping`] is down as each
//! provider is overloaded: OpenAI 503, Anthropic 529, Gemini 503 `UNAVAILABLE`.

mod answers;
mod anthropic;
mod behavior;
mod conn;
mod dialect;
mod gemini;
mod http;
mod responses;
pub mod surface;

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use answers::{ANSWER_WORDS, FULL_ANSWER};
pub use behavior::Behavior;

/// How many requests [`MockUpstream::requests`] remembers (the oldest are forgotten first).
pub const MAX_RECORDED_REQUESTS: usize = 10_000;

/// How many created Responses API responses the mock keeps for `GET`/`DELETE`/`previous_response_id`.
pub const MAX_STORED_RESPONSES: usize = 10_000;

/// The healthy answer text: [`ANSWER_WORDS`] joined by single spaces, plus ".".
pub fn full_answer() -> String {
    FULL_ANSWER.to_owned()
}

/// A request the mock received (control endpoints excepted).
#[derive(Clone, Debug, Serialize)]
pub struct SeenRequest {
    /// The request target, query included.
    pub path: String,
    /// The body's `model`, or the Azure deployment or Gemini model from the path.
    pub model: Option<String>,
    /// From `Authorization: Bearer X`; on Azure routes the `api-key` header (then the bearer token); on Anthropic's
    /// `x-api-key` (then the bearer token); on Gemini's `x-goog-api-key` (then the `key` query parameter).
    pub api_key: Option<String>,
    /// The body's `stream` is `true` (Gemini: the path is `…:streamGenerateContent`).
    pub stream: bool,
    /// The JSON body (`null` when absent or not JSON).
    pub body: serde_json::Value,
    #[serde(skip_serializing)]
    pub at: Instant,
}

/// A running mock upstream. Dropping it stops accepting and closes its connections.
pub struct MockUpstream {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
}

impl MockUpstream {
    /// Binds `listen` (port 0 picks a free port) and serves on the current tokio runtime.
    pub async fn start(listen: SocketAddr) -> std::io::Result<MockUpstream> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::default());
        let (shutdown, stopped) = watch::channel(false);
        tokio::spawn(accept_loop(listener, Arc::clone(&shared), stopped));
        Ok(MockUpstream { addr, shared, shutdown })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The OpenAI base URL, e.g. `http://127.0.0.1:PORT/v1`.
    pub fn base_url(&self) -> String {
        format!("{}/v1", self.azure_endpoint())
    }

    /// The Azure endpoint, e.g. `http://127.0.0.1:PORT`.
    pub fn azure_endpoint(&self) -> String {
        let ip = match self.addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        format!("http://{}", SocketAddr::new(ip, self.addr.port()))
    }

    /// Scripts a model name or Azure deployment name: its request k gets `steps[k]`, the last step repeats forever.
    /// Replaces any earlier script for `target` (and restarts its count and [`Behavior::Flapping`] clock); empty
    /// `steps` remove it.
    pub fn script(&self, target: &str, steps: Vec<Behavior>) {
        self.shared.script(target, steps);
    }

    /// Requests with this key get 401 `invalid_api_key` (Anthropic 401 `authentication_error`, Gemini 400
    /// `API_KEY_INVALID`).
    pub fn set_invalid_key(&self, key: &str) {
        self.shared.lock().invalid_keys.insert(key.to_owned());
    }

    /// Requests with this key get 429 `insufficient_quota` (Anthropic 400 "Your credit balance is too low…", Gemini 429
    /// `RESOURCE_EXHAUSTED`).
    pub fn set_no_quota_key(&self, key: &str) {
        self.shared.lock().no_quota_keys.insert(key.to_owned());
    }

    /// The model name or Azure deployment `target` never accepts prefill: every chat request to it whose last message
    /// is an assistant message gets the 400 of [`Behavior::RejectPrefill`] (without consuming a script step); other
    /// requests, instructions to continue included, are served as usual. Lasts until [`MockUpstream::clear`].
    pub fn set_rejects_prefill(&self, target: &str) {
        self.shared.lock().rejects_prefill.insert(target.to_owned());
    }

    /// Everything received (the last [`MAX_RECORDED_REQUESTS`]), oldest first.
    pub fn requests(&self) -> Vec<SeenRequest> {
        self.shared.lock().requests.iter().cloned().collect()
    }

    /// Streams of [`Behavior::StreamKeepAlive`] whose client is still connected.
    pub fn keep_alive_streams(&self) -> u64 {
        self.shared.keep_alive_streams.load(Ordering::SeqCst)
    }

    /// Forgets the recorded requests only (scripts, keys and stored responses stay).
    pub fn clear_requests(&self) {
        self.shared.lock().requests.clear();
    }

    /// Forgets scripts, keys, targets that reject prefill, stored responses and recorded requests.
    pub fn clear(&self) {
        self.shared.clear();
    }
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

/// Runs a mock upstream on `listen` until the process ends (`reliablegpt mock-upstream --listen ADDR`).
pub async fn run(listen: SocketAddr) -> std::io::Result<()> {
    let mock = MockUpstream::start(listen).await?;
    tracing::info!(addr = %mock.addr(), "mock upstream listening");
    std::future::pending::<()>().await;
    drop(mock);
    Ok(())
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, mut stopped: watch::Receiver<bool>) {
    loop {
        let accepted = tokio::select! {
            _ = stopped.wait_for(|stop| *stop) => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                let shared = Arc::clone(&shared);
                let mut stopped = stopped.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        () = conn::serve(stream, shared) => {}
                        _ = stopped.wait_for(|stop| *stop) => {}
                    }
                });
            }
            Err(error) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(%error, "mock upstream accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

struct Script {
    steps: Vec<Behavior>,
    served: usize,
    set_at: Instant,
}

#[derive(Default)]
struct State {
    scripts: HashMap<String, Script>,
    invalid_keys: HashSet<String>,
    no_quota_keys: HashSet<String>,
    /// Targets that refuse every assistant prefill.
    rejects_prefill: HashSet<String>,
    requests: VecDeque<SeenRequest>,
    /// Responses API responses created and stored, by id; `stored_order` forgets the oldest past the limit.
    responses: HashMap<String, responses::Stored>,
    stored_order: VecDeque<String>,
}

impl State {
    fn record(&mut self, request: SeenRequest) {
        if self.requests.len() >= MAX_RECORDED_REQUESTS {
            self.requests.pop_front();
        }
        self.requests.push_back(request);
    }

    /// Keeps a created response (the oldest are forgotten past [`MAX_STORED_RESPONSES`]).
    fn store_response(&mut self, id: String, stored: responses::Stored) {
        if self.stored_order.len() >= MAX_STORED_RESPONSES
            && let Some(old) = self.stored_order.pop_front()
        {
            self.responses.remove(&old);
        }
        self.stored_order.push_back(id.clone());
        self.responses.insert(id, stored);
    }

    /// The stored response `id` if `key` created it (another key sees nothing, like another OpenAI account).
    fn response_of(&self, id: &str, key: &str) -> Option<&responses::Stored> {
        self.responses.get(id).filter(|s| s.key == key)
    }

    /// The next step for `target` and when its script was set; `None` when it is not scripted.
    fn next_step(&mut self, target: &str) -> Option<(Behavior, Instant)> {
        let script = self.scripts.get_mut(target)?;
        let step = script.steps.get(script.served).or(script.steps.last())?.clone();
        script.served = script.served.saturating_add(1);
        Some((step, script.set_at))
    }
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    next_id: AtomicU64,
    /// Streams of [`Behavior::StreamKeepAlive`] still sending comments (their client has not left).
    keep_alive_streams: AtomicU64,
}

/// Counts a keep-alive stream while it lasts.
struct StreamGuard(Arc<Shared>);

impl StreamGuard {
    fn open(shared: &Arc<Shared>) -> Self {
        shared.keep_alive_streams.fetch_add(1, Ordering::SeqCst);
        Self(Arc::clone(shared))
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.keep_alive_streams.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn script(&self, target: &str, steps: Vec<Behavior>) {
        let mut state = self.lock();
        if steps.is_empty() {
            state.scripts.remove(target);
        } else {
            state.scripts.insert(target.to_owned(), Script { steps, served: 0, set_at: Instant::now() });
        }
    }

    fn clear(&self) {
        let mut state = self.lock();
        state.scripts.clear();
        state.invalid_keys.clear();
        state.no_quota_keys.clear();
        state.rejects_prefill.clear();
        state.requests.clear();
        state.responses.clear();
        state.stored_order.clear();
    }
}
