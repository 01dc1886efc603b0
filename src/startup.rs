//! Builds the actix application from settings. Tests and production start the service the same way: `build` binds
//! (port 0 picks a free port) and reports the bound address.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::middleware::from_fn;
use actix_web::{App, HttpServer, web};
use sqlx::PgPool;
use utoipa::OpenApi;
use utoipa_swagger_ui::SwaggerUi;

use crate::alerts::Alerts;
use crate::api::{self, AppState, client::ClientIdentity, openapi::ApiDoc, rate_limit::ClientLimiter};
use crate::cache::{self, SemanticCache};
use crate::config::Settings;
use crate::db;
use crate::engine::Engine;
use crate::engine::events::{EVENT_BUFFER, EventSink, spawn_consumer};
use crate::vault::Vault;
use crate::vault::scoped::ScopedTokens;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot connect to the database: {0}")]
    Database(#[source] sqlx::Error),
    #[error(transparent)]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error(transparent)]
    Schema(#[from] db::SchemaError),
    #[error(transparent)]
    Engine(#[from] crate::engine::EngineError),
    #[error("semantic cache: {0}")]
    Cache(String),
    #[error("alerts: {0}")]
    Alerts(String),
    #[error("cannot listen for key set changes: {0}")]
    Listener(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: String, source: std::io::Error },
}

/// Longest a client may take to send its request line and headers; a connection that sends nothing is closed then.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest a connection may stay open and idle between requests.
const KEEP_ALIVE: Duration = Duration::from_secs(5);
/// After the response, how long the client has to close its side before the connection is dropped.
const DISCONNECT_TIMEOUT: Duration = Duration::from_secs(1);

pub struct Application {
    addr: SocketAddr,
    server: Server,
    /// The `/metrics`-only server of `RELIABLEGPT_METRICS_LISTEN`.
    metrics: Option<(SocketAddr, Server)>,
    background: Vec<tokio::task::JoinHandle<()>>,
}

impl Application {
    /// Connects, optionally migrates, refuses an out-of-date schema, binds. The server runs once awaited.
    pub async fn build(settings: Settings, migrate: bool) -> Result<Self, StartError> {
        let pool = db::connect(&settings).await.map_err(StartError::Database)?;
        if migrate {
            db::migrate(&pool).await?;
        }
        db::check_schema(&pool).await?;
        Self::build_with_pool(settings, pool).await
    }

    pub async fn build_with_pool(settings: Settings, pool: PgPool) -> Result<Self, StartError> {
        let (listener, addr) = bind(&settings.listen)?;
        let metrics_listener = settings.metrics_listen.as_deref().map(bind).transpose()?;
        let keyring = Arc::new(settings.master_keys);
        let scoped_tokens = ScopedTokens::new(&keyring).map_err(|e| StartError::Cache(e.to_string()))?;
        let vault = Vault::with_cache(
            pool.clone(),
            keyring.clone(),
            &settings.token_peppers,
            settings.engine.key_set_cache,
            settings.engine.db_outage_grace,
        );
        let (events, event_rx) = EventSink::channel(EVENT_BUFFER);
        let engine = Engine::new(settings.engine, settings.egress.clone(), vault.clone(), events)?;
        let embedder = cache::build_embedder(&settings.cache).map_err(StartError::Cache)?;
        let (cache, cache_worker) = SemanticCache::start(
            pool.clone(),
            keyring,
            embedder,
            engine.metrics.clone(),
            cache::CacheOptions {
                write_queue: settings.cache.write_queue as usize,
                ef_search: settings.cache.ef_search,
            },
        );
        let engine = Arc::new(engine.with_answer_source(cache.clone()));
        let alerts = Alerts::new(pool.clone(), vault.clone(), settings.alerts).map_err(StartError::Alerts)?;
        let (event_counter, alert_tasks) = alerts.start();
        let mut background = vec![
            cache_worker,
            vault.start_change_listener().await.map_err(|e| StartError::Listener(e.to_string()))?,
            engine.spawn_background(),
            spawn_consumer(event_rx, event_counter),
        ];
        background.extend(alert_tasks);
        let state = web::Data::new(AppState {
            vault,
            pool,
            egress: settings.egress,
            key_set_limiter: ClientLimiter::per_minute(settings.limits.key_sets_per_minute),
            auth_failure_limiter: ClientLimiter::per_minute(settings.limits.auth_failures_per_minute),
            clients: ClientIdentity::new(settings.limits.trusted_proxies.clone(), settings.limits.client_ip_header),
            engine,
            cache,
            scoped_tokens,
            alerts,
            body_read_timeout: settings.body_read_timeout,
        });
        let workers = settings.workers;
        let metrics_here = metrics_listener.is_none();
        let metrics_state = state.clone();
        let mut server = HttpServer::new(move || {
            App::new()
                .wrap(from_fn(api::request_context))
                .app_data(state.clone())
                .configure(api::routes)
                .configure(|cfg| {
                    if metrics_here {
                        api::metrics_route(cfg);
                    }
                })
                .service(SwaggerUi::new("/docs/{_:.*}").url("/openapi.json", ApiDoc::openapi()))
                .default_service(web::to(api::not_found))
        })
        // Small SSE writes must leave at once, not wait for the client's delayed ACK (Nagle).
        .on_connect(|conn, _| {
            if let Some(tcp) = conn.downcast_ref::<actix_web::rt::net::TcpStream>()
                && let Err(e) = tcp.set_nodelay(true)
            {
                tracing::debug!(error = %e, "could not set TCP_NODELAY");
            }
        })
        .client_request_timeout(HEADER_READ_TIMEOUT)
        .client_disconnect_timeout(DISCONNECT_TIMEOUT)
        .keep_alive(KEEP_ALIVE);
        if let Some(n) = workers {
            server = server.workers(n as usize);
        }
        let server =
            server.listen(listener).map_err(|source| StartError::Bind { addr: addr.to_string(), source })?.run();
        tracing::info!(addr = %addr, "listening");
        let metrics = match metrics_listener {
            None => None,
            Some((listener, metrics_addr)) => {
                let server = HttpServer::new(move || {
                    App::new()
                        .wrap(from_fn(api::head_as_get))
                        .app_data(metrics_state.clone())
                        .configure(api::metrics_route)
                        .default_service(web::to(api::not_found))
                })
                .client_request_timeout(HEADER_READ_TIMEOUT)
                .client_disconnect_timeout(DISCONNECT_TIMEOUT)
                .keep_alive(KEEP_ALIVE)
                .workers(1)
                .listen(listener)
                .map_err(|source| StartError::Bind { addr: metrics_addr.to_string(), source })?
                .run();
                tracing::info!(metrics_addr = %metrics_addr, "serving /metrics");
                Some((metrics_addr, server))
            }
        };
        Ok(Self { addr, server, metrics, background })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where `/metrics` is served when `RELIABLEGPT_METRICS_LISTEN` is set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(|(addr, _)| *addr)
    }

    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let result = match self.metrics {
            Some((_, metrics)) => futures_util::future::try_join(self.server, metrics).await.map(|_| ()),
            None => self.server.await,
        };
        for task in self.background {
            task.abort();
        }
        result
    }
}

fn bind(addr: &str) -> Result<(TcpListener, SocketAddr), StartError> {
    let listener = TcpListener::bind(addr).map_err(|source| StartError::Bind { addr: addr.to_owned(), source })?;
    let local = listener.local_addr().map_err(|source| StartError::Bind { addr: addr.to_owned(), source })?;
    Ok((listener, local))
}
