use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use reliablegpt::config::{Settings, generate_secrets};
use reliablegpt::startup::Application;
use reliablegpt::{api, db, telemetry};

/// mimalloc instead of glibc's malloc: the request path allocates many small short-lived buffers (headers, JSON, the
/// upstream request), and glibc's allocator was a tenth of the gateway's CPU under load (see the benchmark notes).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "reliablegpt", version, about = "A reliability gateway for LLM apps")]
struct Cli {
    /// Optional TOML settings file; environment variables override it.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP service.
    Serve {
        /// Apply pending migrations before serving.
        #[arg(long)]
        migrate: bool,
    },
    /// Apply pending database migrations and exit.
    Migrate,
    /// Print a freshly generated master key and token pepper as `export` lines.
    Secrets,
    /// Print the OpenAPI document (what `openapi/openapi.json` must contain).
    Openapi,
    /// Show how many key sets each master key version still wraps and how many tokens each pepper version hashes (a
    /// version with none left can be retired).
    KeyringStatus,
    /// Re-wrap every key set's data key under the active (highest) master key version, offline and without tokens, and
    /// report counts. Afterwards older versions can be removed from RELIABLEGPT_MASTER_KEY (unless it lists some).
    RotateMasterKey,
    /// Measure the semantic cache's matching on labelled pairs (JSON lines `{"a", "b", "same_answer"}`): the share of
    /// should-hit pairs served and of wrong-answer pairs served, per threshold, with and without the hit guards.
    CacheEval {
        #[arg(long)]
        pairs: PathBuf,
        /// all-MiniLM-L6-v2's folder; default `RELIABLEGPT_EMBEDDING_MODEL_DIR` (`scripts/model` prints it).
        #[arg(long)]
        model_dir: Option<PathBuf>,
    },
    /// Run the fault-injecting OpenAI-compatible mock upstream (tests, benchmarks, demos). Needs no settings.
    MockUpstream {
        #[arg(long, default_value = "127.0.0.1:9090")]
        listen: std::net::SocketAddr,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Secrets => write_stdout(&generate_secrets()),
        Command::Openapi => write_stdout(&api::openapi::document()),
        Command::MockUpstream { listen } => run_mock(listen),
        Command::CacheEval { pairs, model_dir } => cache_eval(&pairs, model_dir),
        command => run_async(command, cli.config),
    };
    // Log lines still queued for the writer thread go out before the process ends.
    telemetry::flush();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            // One line, and never a secret: every error here is built from names and reasons, not values.
            let _ = writeln!(std::io::stderr(), "reliablegpt: {message}");
            ExitCode::FAILURE
        }
    }
}

fn write_stdout(text: &str) -> Result<(), String> {
    std::io::stdout().write_all(text.as_bytes()).map_err(|e| e.to_string())
}

fn cache_eval(pairs: &std::path::Path, model_dir: Option<PathBuf>) -> Result<(), String> {
    use reliablegpt::cache::{embed, eval};
    let text = std::fs::read_to_string(pairs).map_err(|e| format!("{}: {e}", pairs.display()))?;
    let pairs = eval::read_pairs(&text).map_err(|e| format!("{}: {e}", pairs.display()))?;
    let dir = model_dir
        .or_else(|| std::env::var_os(reliablegpt::config::env::MODEL_DIR).map(PathBuf::from))
        .ok_or("give --model-dir or set RELIABLEGPT_EMBEDDING_MODEL_DIR (scripts/model prints it)")?;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let embedder = embed::LocalEmbedder::load(&dir, threads).map_err(|e| e.to_string())?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| e.to_string())?;
    let report =
        runtime.block_on(eval::evaluate(&embedder, &pairs, eval::DEFAULT_THRESHOLDS)).map_err(|e| e.to_string())?;
    write_stdout(&report.render())
}

fn run_mock(listen: std::net::SocketAddr) -> Result<(), String> {
    telemetry::init();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| e.to_string())?;
    runtime.block_on(reliablegpt::mock_upstream::run(listen)).map_err(|e| format!("mock upstream: {e}"))
}

async fn open_vault(settings: Settings) -> Result<reliablegpt::vault::Vault, String> {
    let pool = db::connect(&settings).await.map_err(|e| format!("cannot connect to the database: {e}"))?;
    db::check_schema(&pool).await.map_err(|e| e.to_string())?;
    Ok(reliablegpt::vault::Vault::new(pool, std::sync::Arc::new(settings.master_keys), &settings.token_peppers))
}

fn run_async(command: Command, config: Option<PathBuf>) -> Result<(), String> {
    let settings = Settings::load(config.as_deref()).map_err(|e| e.to_string())?;
    telemetry::init();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| e.to_string())?;
    runtime.block_on(async move {
        match command {
            Command::Serve { migrate } => {
                let app = Application::build(settings, migrate).await.map_err(|e| e.to_string())?;
                app.run_until_stopped().await.map_err(|e| e.to_string())
            }
            Command::Migrate => {
                let pool = db::connect(&settings).await.map_err(|e| format!("cannot connect to the database: {e}"))?;
                db::migrate(&pool).await.map_err(|e| e.to_string())?;
                db::check_schema(&pool).await.map_err(|e| e.to_string())?;
                tracing::info!(version = db::expected_version(), "database schema is current");
                Ok(())
            }
            Command::KeyringStatus => {
                let vault = open_vault(settings).await?;
                let usage = vault.master_key_usage().await.map_err(|e| e.to_string())?;
                let mut text = String::from("master_key_version\tkey_sets\tone_layer_key_sets\n");
                for (version, two_layer, one_layer) in usage {
                    text.push_str(&format!("v{version}\t{}\t{one_layer}\n", two_layer + one_layer));
                }
                text.push_str("\ntoken_pepper_version\tkey_sets\n");
                for (version, count) in vault.pepper_usage().await.map_err(|e| e.to_string())? {
                    text.push_str(&format!("v{version}\t{count}\n"));
                }
                write_stdout(&text)
            }
            Command::RotateMasterKey => {
                let vault = open_vault(settings).await?;
                let report = vault.rotate_master_key().await.map_err(|e| e.to_string())?;
                write_stdout(&report.render())
            }
            Command::Secrets | Command::Openapi | Command::MockUpstream { .. } | Command::CacheEval { .. } => Ok(()),
        }
    })
}
