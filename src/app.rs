//! Wiring: connect and migrate the database, build the services, and serve
//! them on a listener the caller bound, until the shutdown future resolves.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use tokio::{net::TcpListener, task::JoinHandle};
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig, server::TcpIncoming};
use tonic_health::server::HealthReporter;

use crate::{
    config::{SecuritySettings, Settings, TlsSettings},
    events::{self, EventTasks, Shutdown},
    grpc::{
        AppState,
        admin::AdminApi,
        auth::{AccessMode, startup_access_mode},
        auth_layer::Security,
        connection::ConnectionApi,
        events::EventApi,
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
    storage::{Repository, SessionSealer, TokenStore, db},
    telemetry::{self, TelemetryLayer},
};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("database: {0}")]
    Database(#[from] sea_orm::DbErr),
    #[error("storage: {0}")]
    Storage(#[from] crate::storage::StorageError),
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("server: {0}")]
    Transport(#[from] tonic::transport::Error),
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
    pub state: AppState,
    security: SecuritySettings,
    /// Loaded at build time so that a bad certificate fails before serving.
    tls: Option<ServerTlsConfig>,
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
}

impl App {
    /// Connects to the database and runs migrations.
    pub async fn build(settings: &Settings) -> Result<Self, AppError> {
        let connection = db::connect(settings.database_url.expose()).await?;
        db::migrate(&connection).await?;
        let sealer = match &settings.session_key {
            Some(key) => SessionSealer::new(&key.0),
            None => SessionSealer::ephemeral(),
        };
        let tls = settings.security.tls.as_ref().map(load_tls).transpose()?;
        let metrics_listener = match settings.metrics_listen {
            Some(addr) => Some(TcpListener::bind(addr).await.map_err(|e| {
                AppError::Config(format!("cannot listen for metrics on {addr}: {e}"))
            })?),
            None => None,
        };
        let repo = Repository::new(connection, sealer);
        let (stop, shutdown) = Shutdown::new();
        // Read before serving: the fan-out broadcasts every position after
        // this head, and streams opened before it starts rely on that.
        let head = repo.sequence_state().await?.last_position;
        // With the relay on, retention waits for it.
        let event_settings = crate::config::EventSettings {
            keep_unrelayed: settings.relay.is_some(),
            ..settings.events.clone()
        };
        let (hub, event_tasks) =
            events::build(repo.clone(), event_settings, shutdown.clone(), head);
        let relay = settings
            .relay
            .clone()
            .map(|relay| Relay::new(repo.clone(), relay, telemetry::metrics::relay()));
        Ok(Self {
            state: AppState {
                repo,
                registry: settings.registry.clone(),
                events: hub,
            },
            security: settings.security.clone(),
            tls,
            metrics_listener,
            event_tasks,
            relay,
            stop,
            shutdown,
            drain_timeout: settings.events.drain_timeout,
        })
    }

    /// The address of the metrics endpoint, when enabled.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    /// Serves until `shutdown` resolves, then drains calls and returns.
    pub async fn run(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), AppError> {
        let local: Option<SocketAddr> = listener.local_addr().ok();
        let security = self.security_layer(local).await?;
        let (health, health_service) = tonic_health::server::health_reporter();
        set_serving(&health, true).await;
        let health_task = spawn_health_watch(self.state.clone(), health.clone());

        let reflection_v1 = reflection_builder().build_v1()?;
        let reflection_v1alpha = reflection_builder().build_v1alpha()?;

        let Self {
            state,
            security: security_settings,
            tls,
            metrics_listener,
            event_tasks,
            relay,
            stop,
            shutdown: stopping,
            drain_timeout,
        } = self;
        let metrics_task = metrics_listener.map(|listener| {
            tracing::info!(address = ?listener.local_addr().ok(), "serving metrics at /metrics");
            tokio::spawn(telemetry::metrics_http::serve(
                listener,
                std::future::pending(),
            ))
        });
        let mut background = event_tasks.start(stopping.clone());
        if let Some(relay) = relay {
            let head = state.events.head.clone();
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
        let mut server = Server::builder();
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
            .layer(security.layer())
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(
                ConnectionServiceServer::new(ConnectionApi::new(state.clone()))
                    .max_decoding_message_size(max_message),
            )
            .add_service(
                EventServiceServer::new(EventApi::new(state.clone()))
                    .max_decoding_message_size(max_message),
            )
            .add_service(
                AdminServiceServer::new(AdminApi::new(state.clone()))
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
        if let Some(task) = metrics_task {
            task.abort();
        }
        stop_after_serving.send_replace(true);
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
        state.repo.connection().clone().close().await.ok();
        result.map_err(AppError::from)
    }
}

impl App {
    /// Decides open or authenticated mode for the bound address (refusing
    /// open mode off loopback) and builds the security layer's state.
    async fn security_layer(&self, local: Option<SocketAddr>) -> Result<Arc<Security>, AppError> {
        let tokens = TokenStore::new(self.state.repo.connection().clone());
        let tokens_exist = tokens
            .any_active()
            .await
            .map_err(|e| AppError::Config(format!("cannot read API tokens: {e}")))?;
        let local = local.ok_or_else(|| AppError::Config("listener has no address".into()))?;
        let mode = startup_access_mode(local, tokens_exist).map_err(AppError::Config)?;
        match mode {
            AccessMode::Open => warn_open_mode(Some(local)),
            AccessMode::Authenticated => {
                tracing::info!("API tokens exist: callers must authenticate");
                if self.tls.is_none() && !local.ip().is_loopback() {
                    tracing::warn!(
                        address = %local,
                        "serving without TLS off loopback: bearer tokens travel in clear text; \
                         use --tls-cert/--tls-key or a TLS-terminating proxy"
                    );
                }
            }
        }
        Ok(Arc::new(Security::new(tokens, mode, &self.security)))
    }
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

/// Reports NOT_SERVING while the database does not answer.
fn spawn_health_watch(state: AppState, health: HealthReporter) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut serving = true;
        let mut interval = tokio::time::interval(Duration::from_secs(5));
        loop {
            interval.tick().await;
            let ok = tokio::time::timeout(Duration::from_secs(3), state.repo.ping())
                .await
                .is_ok_and(|r| r.is_ok());
            if ok != serving {
                if ok {
                    tracing::info!("database reachable again: serving");
                } else {
                    tracing::error!("database unreachable: not serving");
                }
                set_serving(&health, ok).await;
                serving = ok;
            }
        }
    })
}
