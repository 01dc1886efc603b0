//! A small HTTP/1.1 load generator for the benchmarks: keep-alive connections, open-loop constant rate with latency
//! measured from each request's scheduled time (no coordinated omission), or closed-loop for maximum throughput.
// Each bench uses a different subset.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub struct Stats {
    pub sent: usize,
    pub ok: usize,
    pub errors: usize,
    pub elapsed: Duration,
    pub latencies: Vec<Duration>,
}

impl Stats {
    pub fn percentile(&self, p: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let mut sorted = self.latencies.clone();
        sorted.sort_unstable();
        sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
    }

    pub fn throughput(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }

    fn merge(parts: Vec<Stats>, elapsed: Duration) -> Stats {
        let mut all = Stats { sent: 0, ok: 0, errors: 0, elapsed, latencies: Vec::new() };
        for p in parts {
            all.sent += p.sent;
            all.ok += p.ok;
            all.errors += p.errors;
            all.latencies.extend(p.latencies);
        }
        all
    }
}

/// A ready-to-send request.
pub fn request(
    path: &str,
    host: SocketAddr,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: &str,
) -> Arc<Vec<u8>> {
    let mut text = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(token) = token {
        text.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    for (k, v) in headers {
        text.push_str(&format!("{k}: {v}\r\n"));
    }
    text.push_str("\r\n");
    text.push_str(body);
    Arc::new(text.into_bytes())
}

/// Sends one request and reads one response; returns the status.
async fn exchange(stream: &mut TcpStream, req: &[u8], buf: &mut Vec<u8>) -> std::io::Result<u16> {
    stream.write_all(req).await?;
    buf.clear();
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        read_more(stream, buf).await?;
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let status: u16 = head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    if let Some(len) =
        head.lines().find_map(|l| l.strip_prefix("content-length:")).and_then(|v| v.trim().parse::<usize>().ok())
    {
        while buf.len() < head_end + len {
            read_more(stream, buf).await?;
        }
    } else if head.contains("transfer-encoding: chunked") {
        while !buf[head_end..].windows(5).any(|w| w == b"0\r\n\r\n") {
            read_more(stream, buf).await?;
        }
    }
    Ok(status)
}

async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<()> {
    let mut chunk = [0u8; 16 * 1024];
    let n = stream.read(&mut chunk).await?;
    if n == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    buf.extend_from_slice(&chunk[..n]);
    Ok(())
}

/// One request on a keep-alive connection, counted into `stats` with latency from `since`. False if the connection
/// broke and could not be re-opened.
async fn send_one(
    addr: SocketAddr,
    stream: &mut TcpStream,
    req: &[u8],
    buf: &mut Vec<u8>,
    stats: &mut Stats,
    since: Instant,
) -> bool {
    stats.sent += 1;
    match exchange(stream, req, buf).await {
        Ok(200) => {
            stats.ok += 1;
            stats.latencies.push(since.elapsed());
        }
        Ok(_) => stats.errors += 1,
        Err(_) => {
            stats.errors += 1;
            match connect(addr).await {
                Ok(s) => *stream = s,
                Err(_) => return false,
            }
        }
    }
    true
}

async fn connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// Open loop: `rate` requests per second for `duration`, spread over `connections` keep-alive connections.
pub async fn constant_rate(
    addr: SocketAddr,
    req: Arc<Vec<u8>>,
    rate: u32,
    duration: Duration,
    connections: usize,
) -> Stats {
    let total = (rate as f64 * duration.as_secs_f64()) as usize;
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let start = Instant::now() + Duration::from_millis(50);
    let mut tasks = Vec::new();
    for c in 0..connections {
        let req = req.clone();
        tasks.push(tokio::spawn(async move {
            let mut stats = Stats { sent: 0, ok: 0, errors: 0, elapsed: Duration::ZERO, latencies: Vec::new() };
            let Ok(mut stream) = connect(addr).await else { return stats };
            let mut buf = Vec::with_capacity(8192);
            let mut i = c;
            while i < total {
                let scheduled = start + interval * i as u32;
                tokio::time::sleep_until(scheduled.into()).await;
                if !send_one(addr, &mut stream, &req, &mut buf, &mut stats, scheduled).await {
                    break;
                }
                i += connections;
            }
            stats
        }));
    }
    join(tasks, start).await
}

/// Closed loop: each connection sends as fast as answers come back, for `duration`.
pub async fn max_throughput(addr: SocketAddr, req: Arc<Vec<u8>>, duration: Duration, connections: usize) -> Stats {
    max_throughput_rotating(addr, Arc::new(vec![req]), duration, connections).await
}

/// Closed loop like [`max_throughput`], each connection cycling through `reqs` (e.g. one per token) from its own
/// offset, so that consecutive requests of a connection use different entries.
pub async fn max_throughput_rotating(
    addr: SocketAddr,
    reqs: Arc<Vec<Arc<Vec<u8>>>>,
    duration: Duration,
    connections: usize,
) -> Stats {
    let start = Instant::now();
    let end = start + duration;
    let mut tasks = Vec::new();
    for c in 0..connections {
        let reqs = reqs.clone();
        tasks.push(tokio::spawn(async move {
            let mut stats = Stats { sent: 0, ok: 0, errors: 0, elapsed: Duration::ZERO, latencies: Vec::new() };
            let Ok(mut stream) = connect(addr).await else { return stats };
            let mut buf = Vec::with_capacity(8192);
            let mut i = c;
            while Instant::now() < end {
                let req = &reqs[i % reqs.len()];
                if !send_one(addr, &mut stream, req, &mut buf, &mut stats, Instant::now()).await {
                    break;
                }
                i += connections;
            }
            stats
        }));
    }
    join(tasks, start).await
}

async fn join(tasks: Vec<tokio::task::JoinHandle<Stats>>, start: Instant) -> Stats {
    let mut parts = Vec::new();
    for t in tasks {
        if let Ok(s) = t.await {
            parts.push(s);
        }
    }
    Stats::merge(parts, start.elapsed())
}

/// Sequential requests, one at a time, for per-request latency without queueing.
pub async fn sequential(addr: SocketAddr, req: Arc<Vec<u8>>, count: usize) -> Stats {
    let start = Instant::now();
    let mut stats = Stats { sent: 0, ok: 0, errors: 0, elapsed: Duration::ZERO, latencies: Vec::new() };
    let Ok(mut stream) = connect(addr).await else { return stats };
    let mut buf = Vec::with_capacity(8192);
    for _ in 0..count {
        let t = Instant::now();
        stats.sent += 1;
        match exchange(&mut stream, &req, &mut buf).await {
            Ok(_) => {
                stats.ok += 1;
                stats.latencies.push(t.elapsed());
            }
            Err(_) => stats.errors += 1,
        }
    }
    stats.elapsed = start.elapsed();
    stats
}

/// Answers by status, from [`each`].
pub struct Tally {
    pub statuses: BTreeMap<u16, usize>,
    /// Requests whose connection broke before an answer.
    pub broken: usize,
    pub elapsed: Duration,
}

impl Tally {
    pub fn per_second(&self) -> f64 {
        self.statuses.values().sum::<usize>() as f64 / self.elapsed.as_secs_f64()
    }
}

/// Closed loop over `count` different requests (`make(i)` builds request i), `connections` in flight at a time.
pub async fn each(
    addr: SocketAddr,
    count: usize,
    connections: usize,
    make: impl Fn(usize) -> Arc<Vec<u8>> + Send + Sync + 'static,
) -> Tally {
    let start = Instant::now();
    let (make, next) = (Arc::new(make), Arc::new(AtomicUsize::new(0)));
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (make, next) = (make.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut tally = Tally { statuses: BTreeMap::new(), broken: 0, elapsed: Duration::ZERO };
            let Ok(mut stream) = connect(addr).await else { return tally };
            let mut buf = Vec::with_capacity(8192);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    break;
                }
                match exchange(&mut stream, &make(i), &mut buf).await {
                    Ok(status) => *tally.statuses.entry(status).or_default() += 1,
                    Err(_) => {
                        tally.broken += 1;
                        match connect(addr).await {
                            Ok(s) => stream = s,
                            Err(_) => break,
                        }
                    }
                }
            }
            tally
        }));
    }
    let mut all = Tally { statuses: BTreeMap::new(), broken: 0, elapsed: Duration::ZERO };
    for t in tasks {
        if let Ok(part) = t.await {
            for (status, n) in part.statuses {
                *all.statuses.entry(status).or_default() += n;
            }
            all.broken += part.broken;
        }
    }
    all.elapsed = start.elapsed();
    all
}
