//! Wiring: connect and migrate the database, build the services, and serve
//! them on a listener the caller bound, until the shutdown future resolves.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use tokio::{net::TcpListener, task::JoinHandle};
use tokio_rustls::TlsAcceptor;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig, server::TcpIncoming};
use tonic_health::server::HealthReporter;

use crate::{
    access::{AccessMode, AppKeys, Gate, startup_access_mode},
    config::{HttpSettings, SecuritySettings, Settings, TlsSettings},
    events::{self, EventTasks, Shutdown},
    grpc::{
        admin::AdminApi, auth_layer::SecurityLayer, call_layer::TelemetryLayer,
        connection::ConnectionApi, events::EventApi,
    },
    http::{
        self as http_door, HttpLimits, RestConfig,
        server::{ConnectionLimits, tls_acceptor},
    },
    proto::{
        self,
        v1::{
            admin_service_server::AdminServiceServer,
            connection_service_server::ConnectionServiceServer,
            event_service_server::EventServiceServer,
        },
    },
    relay::Relay,
    service::Services,
    storage::{Repository, SessionSealer, db},
    telemetry,
};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The database could not be opened or migrated: one line saying what
    /// was tried and why it failed.
    #[error("{0}")]
    Database(String),
    #[error("storage: {0}")]
    Storage(#[from] crate::storage::StorageError),
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("server: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// A setting or listener refused before serving starts (`serve` prints
    /// it as a start-up error, not as a stop).
    #[error("{0}")]
    Config(String),
}

/// Fully-qualified names of the services health reports on.
const SERVICE_NAMES: &[&str] = &[
    "connections.v1.ConnectionService",
    "connections.v1.EventService",
    "connections.v1.AdminService",
];

/// A built application: database connected and migrated, services ready.
pub struct App {
    services: Services,
    repo: Repository,
    security: SecuritySettings,
    /// Loaded at build time so that a bad certificate fails before serving.
    tls: Option<ServerTlsConfig>,
    /// The same certificate for the HTTP listener.
    http_tls: Option<TlsAcceptor>,
    http: HttpSettings,
    /// Bound in `build` so that a port taken is a start-up error.
    metrics_listener: Option<TcpListener>,
    /// Sequencer, fan-out and pruner, started by `run`.
    event_tasks: EventTasks,
    /// The JetStream relay (`--nats-url`), started by `run`.
    relay: Option<Relay>,
    /// Raised when shutdown starts: ends Subscribe streams and background tasks.
    stop: tokio::sync::watch::Sender<bool>,
    shutdown: Shutdown,
    /// How long shutdown waits for calls and streams before giving up on them.
    drain_timeout: Duration,
    pool: crate::config::PoolSettings,
}

impl App {
    /// Binds the metrics listener (when enabled), then connects to the
    /// database and runs migrations: a port in use fails before the
    /// database is touched.
    pub async fn build(settings: &Settings) -> Result<Self, AppError> {
        let metrics_listener = match settings.metrics_listen {
            Some(addr) => Some(bind(addr, "metrics").await?),
            None => None,
        };
        let connection = db::connect_with(settings.database_url.expose(), &settings.pool)
            .await
            .map_err(|e| AppError::Database(db::describe(&e)))?;
        db::migrate(&connection)
            .await
            .map_err(|e| AppError::Database(db::describe(&e)))?;
        let sealer = match &settings.session_key {
            Some(key) => SessionSealer::new(&key.0),
            None => SessionSealer::ephemeral(),
        };
        let tls = settings.security.tls.as_ref().map(load_tls).transpose()?;
        let http_tls = settings
            .security
            .tls
            .as_ref()
            .map(tls_acceptor)
            .transpose()
            .map_err(AppError::Config)?;
        let repo = Repository::with_group_commit_max_age(
            connection,
            sealer,
            settings.pool.group_commit_max_age,
        );
        let (stop, shutdown) = Shutdown::new();
        // Read before serving: the fan-out broadcasts every position after
        // this head, and streams opened before it starts rely on that.
        let head = repo.sequence_state().await?.last_position;
        // With the relay on, retention waits for it.
        let event_settings = crate::config::EventSettings {
            keep_unrelayed: settings.relay.is_some(),
            ..settings.events.clone()
        };
        let (hub, event_tasks) = events::build(
            repo.clone(),
            event_settings,
            shutdown.clone(),
            head,
            telemetry::metrics::events(),
        );
        let relay = settings
            .relay
            .clone()
            .map(|relay| Relay::new(repo.clone(), relay, telemetry::metrics::relay()));
        Ok(Self {
            services: Services::new(repo.clone(), settings.registry.clone(), hub)
                .with_public_base_url(settings.http.public_base_url.clone()),
            repo,
            security: settings.security.clone(),
            tls,
            http_tls,
            http: settings.http.clone(),
            metrics_listener,
            event_tasks,
            relay,
            stop,
            shutdown,
            drain_timeout: settings.events.drain_timeout,
            pool: settings.pool.clone(),
        })
    }

    /// The repository the services run on (tests write through it directly).
    pub fn repo(&self) -> &Repository {
        &self.repo
    }

    /// The application services (for command-line use cases).
    pub(crate) fn services(&self) -> &Services {
        &self.services
    }

    /// The address of the metrics endpoint, when enabled.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    /// Serves gRPC on `listener` until `shutdown` resolves, then drains
    /// calls and returns. No REST listener: see [`App::run_with`].
    pub async fn run(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), AppError> {
        self.run_with(listener, None, shutdown).await
    }

    /// Serves gRPC on `listener` and, when given, REST on `http_listener`
    /// (same gate, TLS and shutdown), until `shutdown` resolves.
    pub async fn run_with(
        self,
        listener: TcpListener,
        http_listener: Option<TcpListener>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), AppError> {
        let local: Option<SocketAddr> = listener.local_addr().ok();
        let http_local = match &http_listener {
            Some(l) => Some(
                l.local_addr()
                    .map_err(|e| AppError::Config(format!("HTTP listener has no address: {e}")))?,
            ),
            None => None,
        };
        let security = self.security_layer(local, http_local).await?;
        let (health, health_service) = tonic_health::server::health_reporter();
        set_serving(&health, true).await;
        let health_task = spawn_health_watch(&self.repo, health.clone());
        let probe_task = tokio::spawn(
            self.repo
                .clone()
                .run_probe(self.pool.clone(), self.shutdown.raised_owned()),
        );

        let reflection_v1 = reflection_builder().build_v1()?;
        let reflection_v1alpha = reflection_builder().build_v1alpha()?;

        let Self {
            services,
            repo,
            security: security_settings,
            tls,
            http_tls,
            http,
            metrics_listener,
            event_tasks,
            relay,
            stop,
            shutdown: stopping,
            drain_timeout,
            pool: _,
        } = self;
        let connection_limits = ConnectionLimits {
            header_read_timeout: http.read_timeout,
            drain_timeout,
        };
        let metrics_task = metrics_listener.map(|listener| {
            tracing::info!(address = ?listener.local_addr().ok(), "serving metrics at /metrics");
            tokio::spawn(http_door::server::serve(
                listener,
                None,
                http_door::metrics::router(),
                connection_limits,
                std::future::pending(),
            ))
        });
        let http_task = http_listener.map(|listener| {
            let router = http_door::rest_router(
                services.clone(),
                security.clone(),
                RestConfig {
                    public_base_url: http.public_base_url.clone(),
                    tls: http_tls.is_some(),
                    limits: HttpLimits {
                        max_body_bytes: security_settings.max_message_bytes,
                        read_timeout: http.read_timeout,
                        max_in_flight: http.max_in_flight,
                        ..HttpLimits::default()
                    },
                },
            );
            tracing::info!(address = ?http_local, tls = http_tls.is_some(), "serving REST");
            let stopping = stopping.clone();
            tokio::spawn(http_door::server::serve(
                listener,
                http_tls,
                router,
                connection_limits,
                async move { stopping.raised().await },
            ))
        });
        let mut background = event_tasks.start(stopping.clone());
        if let Some(relay) = relay {
            let head = services.event_head();
            background.push(relay.start(head, Some(health.clone()), stopping.clone()));
        }
        let stop = Arc::new(stop);
        let stop_after_serving = stop.clone();
        let health_for_shutdown = health.clone();
        let shutdown = async move {
            shutdown.await;
            tracing::info!("shutting down: draining calls");
            set_serving(&health_for_shutdown, false).await;
            // Streams never end by themselves: tell them to.
            stop.send_replace(true);
        };

        let max_message = security_settings.max_message_bytes;
        // The server's own deadline: it drops a call's work (rolling back its
        // transaction) before answering, which a client's deadline, fired on
        // the client's side, cannot promise.
        let mut server = Server::builder().timeout(security_settings.call_timeout);
        if let Some(tls) = tls {
            server = server.tls_config(tls)?;
        }
        // Nagle's algorithm would hold small responses back for a delayed
        // ACK (~40 ms per sequential call); the builder's own nodelay setting
        // does not apply to a listener passed in.
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        tracing::info!(address = ?local, "serving gRPC");
        let result = server
            .layer(TelemetryLayer)
            .layer(SecurityLayer::new(security))
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(
                ConnectionServiceServer::new(ConnectionApi::new(services.clone()))
                    .max_decoding_message_size(max_message),
            )
            .add_service(
                EventServiceServer::new(EventApi::new(services.clone()))
                    .max_decoding_message_size(max_message),
            )
            .add_service(
                AdminServiceServer::new(AdminApi::new(services))
                    .max_decoding_message_size(max_message),
            )
            .serve_with_incoming_shutdown(incoming, shutdown);
        // A client that never reads could hold the drain open forever.
        let drain_limit = async {
            stopping.raised().await;
            tokio::time::sleep(drain_timeout).await;
        };
        let result = tokio::select! {
            result = result => result,
            () = drain_limit => {
                tracing::warn!(?drain_timeout, "calls still open after the drain timeout; closing");
                Ok(())
            }
        };
        health_task.abort();
        probe_task.abort();
        if let Some(task) = metrics_task {
            task.abort();
        }
        stop_after_serving.send_replace(true);
        if let Some(task) = http_task {
            // It drains within the drain timeout by itself.
            let abort = task.abort_handle();
            if tokio::time::timeout(drain_timeout + Duration::from_secs(1), task)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
        for task in background {
            let abort = task.abort_handle();
            if tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .is_err()
            {
                tracing::warn!("an event task did not stop in time");
                abort.abort();
            }
        }
        repo.close().await;
        result.map_err(AppError::from)
    }
}

impl App {
    /// Decides open or authenticated mode for the bound address (refusing
    /// open mode off loopback) and builds the security layer's state.
    async fn security_layer(
        &self,
        local: Option<SocketAddr>,
        http_local: Option<SocketAddr>,
    ) -> Result<Arc<Gate>, AppError> {
        let tokens = self.repo.tokens();
        let app_keys = AppKeys::new(self.repo.app_keys(), self.security.token_cache_ttl);
        let tokens_exist = tokens
            .any_active()
            .await
            .map_err(|e| AppError::Config(format!("cannot read API tokens: {e}")))?
            || app_keys
                .any_active()
                .await
                .map_err(|e| AppError::Config(format!("cannot read application keys: {e}")))?;
        let local = local.ok_or_else(|| AppError::Config("listener has no address".into()))?;
        let mode = startup_access_mode(local, tokens_exist).map_err(AppError::Config)?;
        // Open mode must be loopback-only on every listener.
        if let Some(http_local) = http_local {
            startup_access_mode(http_local, tokens_exist).map_err(AppError::Config)?;
        }
        match mode {
            AccessMode::Open => warn_open_mode(Some(local)),
            AccessMode::Authenticated => {
                tracing::info!("API tokens or application keys exist: callers must authenticate");
                if self.tls.is_none() && !local.ip().is_loopback() {
                    tracing::warn!(
                        address = %local,
                        "serving without TLS off loopback: bearer tokens travel in clear text; \
                         use --tls-cert/--tls-key or a TLS-terminating proxy"
                    );
                }
            }
        }
        Ok(Arc::new(
            Gate::new(tokens, mode, &self.security).with_app_keys(app_keys),
        ))
    }
}

/// Binds `addr` for the `what` listener; a failure is one line naming the
/// address and the cause (e.g. "address already in use").
pub async fn bind(addr: SocketAddr, what: &str) -> Result<TcpListener, AppError> {
    TcpListener::bind(addr).await.map_err(|e| {
        let cause = match e.kind() {
            std::io::ErrorKind::AddrInUse => {
                "address already in use (is another server running?)".to_owned()
            }
            std::io::ErrorKind::AddrNotAvailable => {
                "the address is not one of this machine's".to_owned()
            }
            std::io::ErrorKind::PermissionDenied => {
                "permission denied (ports below 1024 need privileges)".to_owned()
            }
            // The words say it already; drop the "(os error N)" tail.
            _ => {
                let text = e.to_string();
                text.find(" (os error")
                    .map_or(text.clone(), |at| text[..at].to_owned())
            }
        };
        AppError::Config(format!("cannot listen for {what} on {addr}: {cause}"))
    })
}

fn warn_open_mode(local: Option<SocketAddr>) {
    tracing::warn!(
        address = ?local,
        "OPEN MODE: no API tokens exist, so every local caller may call every RPC \
         unauthenticated (actor `anonymous`). Allowed on loopback only. Create a token with \
         `connections token create` to require authentication."
    );
}

/// Reads the PEM files of the TLS settings.
fn load_tls(tls: &TlsSettings) -> Result<ServerTlsConfig, AppError> {
    let read = |path: &std::path::Path, what: &str| {
        std::fs::read(path)
            .map_err(|e| AppError::Config(format!("cannot read {what} {}: {e}", path.display())))
    };
    let identity = Identity::from_pem(
        read(&tls.cert, "TLS certificate")?,
        read(&tls.key, "TLS key")?,
    );
    let mut config = ServerTlsConfig::new().identity(identity);
    if let Some(ca) = &tls.client_ca {
        config = config.client_ca_root(Certificate::from_pem(read(ca, "client CA")?));
    }
    Ok(config)
}

fn reflection_builder() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
}

async fn set_serving(health: &HealthReporter, serving: bool) {
    let status = if serving {
        tonic_health::ServingStatus::Serving
    } else {
        tonic_health::ServingStatus::NotServing
    };
    health.set_service_status("", status).await;
    for name in SERVICE_NAMES {
        health.set_service_status(*name, status).await;
    }
}

/// Reports NOT_SERVING while the database breaker is open: at once when a
/// call or the probe finds the database unavailable, SERVING again when the
/// probe gets an answer.
fn spawn_health_watch(repo: &Repository, health: HealthReporter) -> JoinHandle<()> {
    let mut available = repo.health().watch();
    tokio::spawn(async move {
        loop {
            let serving = *available.borrow_and_update();
            set_serving(&health, serving).await;
            if available.changed().await.is_err() {
                return;
            }
        }
    })
}
