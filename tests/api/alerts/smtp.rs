//! A real SMTP server for the alert tests: aiosmtpd (tests/smtp/sink.py) in its own process on a loopback port,
//! storing each message it accepts as a JSON file we read back.

use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const PYTHON_VAR: &str = "RELIABLEGPT_TEST_SMTP_PYTHON";

pub struct SmtpServer {
    pub port: u16,
    folder: PathBuf,
    child: Option<Child>,
}

/// A loopback port nobody listens on (yet).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl SmtpServer {
    pub fn start() -> Self {
        Self::start_on(free_port())
    }

    pub fn start_on(port: u16) -> Self {
        let folder = std::env::temp_dir().join(format!("reliablegpt-smtp-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&folder).unwrap();
        let mut server = Self { port, folder, child: None };
        server.resume();
        server
    }

    /// Starts the server process (again, after [`Self::stop`]) on the same port and folder.
    pub fn resume(&mut self) {
        let python = std::env::var(PYTHON_VAR).unwrap_or_else(|_| {
            panic!(
                "{PYTHON_VAR} is not set: the alert tests need a real SMTP server (aiosmtpd). Run ./scripts/test, which \
                 provisions .dev/smtp-venv and exports it, or export {PYTHON_VAR}=/path/to/python-with-aiosmtpd."
            )
        });
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/smtp/sink.py");
        let mut child = Command::new(python)
            .args([script, "127.0.0.1", &self.port.to_string(), self.folder.to_str().unwrap()])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the SMTP server");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready", "the SMTP server did not start");
        self.child = Some(child);
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    /// Every message received so far.
    pub fn messages(&self) -> Vec<Value> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.folder).unwrap().flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "json") {
                out.push(serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap());
            }
        }
        out
    }

    /// Messages to `to` whose subject contains `subject`.
    pub fn to(&self, to: &str, subject: &str) -> Vec<Value> {
        self.messages()
            .into_iter()
            .filter(|m| {
                m["rcpt_tos"].as_array().unwrap().iter().any(|r| r.as_str().unwrap().eq_ignore_ascii_case(to))
                    && m["subject"].as_str().unwrap().contains(subject)
            })
            .collect()
    }

    /// Waits until `to` received a message whose subject contains `subject`; returns the first.
    pub async fn wait_for(&self, to: &str, subject: &str, within: Duration) -> Value {
        let start = Instant::now();
        loop {
            if let Some(m) = self.to(to, subject).into_iter().next() {
                return m;
            }
            assert!(
                start.elapsed() < within,
                "no message to {to} with {subject:?} within {within:?}: {:#?}",
                self.messages()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.folder);
    }
}
