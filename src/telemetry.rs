//! Logging: JSON lines on stdout, filtered by `RUST_LOG` (default `info`).
//!
//! Nothing secret is ever a field: handlers log ids and classes, never bodies, headers or query strings.

use tracing_subscriber::EnvFilter;

pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // A second init (tests build several apps in one process) is harmless: keep the first subscriber.
    let _ = tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_current_span(true)
        .with_span_list(false)
        .with_target(true)
        .with_writer(std::io::stdout)
        .try_init();
}
