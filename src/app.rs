//! Wiring: connect and migrate the database, build the services, and serve
//! them on a listener the caller bound, until the shutdown future resolves.

use std::{future::Future, net::SocketAddr, time::Duration};

use tokio::{net::TcpListener, task::JoinHandle};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Server;
use tonic_health::server::HealthReporter;

use crate::{
    config::Settings,
    events::{self, EventTasks, Shutdown},
    grpc::{AppState, admin::AdminApi, connection::ConnectionApi, events::EventApi},
    proto::{
        self,
        v1::{
            admin_service_server::AdminServiceServer,
            connection_service_server::ConnectionServiceServer,
            event_service_server::EventServiceServer,
        },
    },
    storage::{Repository, SessionSealer, db},
};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("database: {0}")]
    Database(#[from] sea_orm::DbErr),
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
    /// Sequencer, fan-out and pruner, started by `run`.
    event_tasks: EventTasks,
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
            Some(key) => SessionSealer::new(key),
            None => SessionSealer::ephemeral(),
        };
        let repo = Repository::new(connection, sealer);
        let (stop, shutdown) = Shutdown::new();
        let (hub, event_tasks) =
            events::build(repo.clone(), settings.events.clone(), shutdown.clone());
        Ok(Self {
            state: AppState {
                repo,
                registry: settings.registry.clone(),
                events: hub,
            },
            event_tasks,
            stop,
            shutdown,
            drain_timeout: settings.events.drain_timeout,
        })
    }

    /// Serves until `shutdown` resolves, then drains calls and returns.
    pub async fn run(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), AppError> {
        let local: Option<SocketAddr> = listener.local_addr().ok();
        let (health, health_service) = tonic_health::server::health_reporter();
        set_serving(&health, true).await;
        let health_task = spawn_health_watch(self.state.clone(), health.clone());

        let reflection_v1 = reflection_builder().build_v1()?;
        let reflection_v1alpha = reflection_builder().build_v1alpha()?;

        let Self {
            state,
            event_tasks,
            stop,
            shutdown: stopping,
            drain_timeout,
        } = self;
        let background = event_tasks.start(stopping.clone());
        let stop = std::sync::Arc::new(stop);
        let stop_after_serving = stop.clone();
        let health_for_shutdown = health.clone();
        let shutdown = async move {
            shutdown.await;
            tracing::info!("shutting down: draining calls");
            set_serving(&health_for_shutdown, false).await;
            // Streams never end by themselves: tell them to.
            stop.send_replace(true);
        };

        tracing::info!(address = ?local, "serving gRPC");
        let result = Server::builder()
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(ConnectionServiceServer::new(ConnectionApi::new(
                state.clone(),
            )))
            .add_service(EventServiceServer::new(EventApi::new(state.clone())))
            .add_service(AdminServiceServer::new(AdminApi::new(state.clone())))
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown);
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
