#![allow(dead_code)]

//! Test harness: a real server on a random loopback port over a fresh
//! database (a temporary SQLite file, or a new PostgreSQL database when
//! `CONNECTIONS_TEST_POSTGRES_URL` is set), and typed gRPC clients.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex, OnceLock, Weak},
};

use connections::{
    app::App,
    config::Settings,
    proto::v1::{
        self as pb, admin_service_client::AdminServiceClient,
        connection_service_client::ConnectionServiceClient,
        event_service_client::EventServiceClient,
    },
};
use sea_orm::ConnectionTrait;
use tokio::{sync::oneshot, task::JoinHandle};
use tonic::{
    Code, Status,
    transport::{Channel, ClientTlsConfig},
};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use tonic_types::StatusExt;

pub const POSTGRES_URL_VAR: &str = "CONNECTIONS_TEST_POSTGRES_URL";
/// Optional; part of every test database's name (`ct_<pid>_<run><random>`).
pub const RUN_ID_VAR: &str = "CONNECTIONS_TEST_RUN_ID";

#[derive(Debug, Clone)]
pub enum Backend {
    Sqlite,
    Postgres(String),
}

impl Backend {
    /// The PostgreSQL backend. The `postgres` tests are compiled as ignored
    /// when `CONNECTIONS_TEST_POSTGRES_URL` is not set (see `build.rs`), so a
    /// test that gets here without it was asked for by name: fail, do not
    /// pass without having run.
    pub fn postgres() -> Self {
        match std::env::var(POSTGRES_URL_VAR) {
            Ok(url) if !url.is_empty() => Self::Postgres(url),
            _ => panic!(
                "{POSTGRES_URL_VAR} is not set: set it to a PostgreSQL server the tests may \
                 create databases on, e.g. postgres://postgres@127.0.0.1:5432/test"
            ),
        }
    }

    /// A fresh, empty database for one test: its URL, and the guard that
    /// removes it when the last server on it is dropped.
    pub async fn fresh_database(&self) -> (String, Arc<TestDatabase>) {
        let (url, database) = match self {
            Self::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let url = format!("sqlite://{}?mode=rwc", dir.path().join("test.db").display());
                (url, TestDatabase::Sqlite(dir))
            }
            Self::Postgres(base) => {
                let database = PostgresDatabase::create(base).await;
                (database.url(), TestDatabase::Postgres(database))
            }
        };
        let database = Arc::new(database);
        let mut live = live_databases().lock().unwrap_or_else(|e| e.into_inner());
        live.retain(|_, weak| weak.strong_count() > 0);
        live.insert(url.clone(), Arc::downgrade(&database));
        (url, database)
    }
}

/// The databases of running test servers by URL, so that a second server
/// started on the same URL (a replica, `TestApp::spawn_on`) shares the guard
/// and the database outlives whichever server stops first.
fn live_databases() -> &'static Mutex<HashMap<String, Weak<TestDatabase>>> {
    static LIVE: OnceLock<Mutex<HashMap<String, Weak<TestDatabase>>>> = OnceLock::new();
    LIVE.get_or_init(Default::default)
}

/// A test's own database, removed when this is dropped: also when the test
/// fails, since unwinding drops it too. Databases of test processes that were
/// killed before they could drop theirs are swept by the next run.
#[derive(Debug)]
pub enum TestDatabase {
    /// The temporary directory holding the SQLite file.
    Sqlite(tempfile::TempDir),
    Postgres(PostgresDatabase),
}

/// A `ct_<pid>_<run><random>` database on the server of `base`.
#[derive(Debug)]
pub struct PostgresDatabase {
    base: String,
    name: String,
}

impl PostgresDatabase {
    /// Creates the database, after dropping those left by test processes
    /// that are no longer running (once per test process).
    async fn create(base: &str) -> Self {
        static SWEPT: OnceLock<()> = OnceLock::new();
        let admin = sea_orm::Database::connect(base)
            .await
            .expect("connect to PostgreSQL");
        if SWEPT.set(()).is_ok() {
            let rows = admin
                .query_all_raw(sea_orm::Statement::from_string(
                    sea_orm::DbBackend::Postgres,
                    "SELECT datname FROM pg_database WHERE datname LIKE 'ct\\_%'",
                ))
                .await
                .expect("list databases");
            for row in rows {
                let name: String = row.try_get("", "datname").expect("datname");
                let pid = name.split('_').nth(1).unwrap_or_default();
                if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                    let _ = admin
                        .execute_unprepared(&format!(
                            "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
                        ))
                        .await;
                }
            }
        }
        // `.ci/run` sets a run id to find its own databases afterwards.
        let run: String = std::env::var(RUN_ID_VAR)
            .unwrap_or_default()
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .take(16)
            .collect();
        let name = format!(
            "ct_{}_{run}{}",
            std::process::id(),
            uuid::Uuid::new_v4()
                .simple()
                .to_string()
                .get(..12)
                .unwrap_or("x")
        );
        admin
            .execute_unprepared(&format!("CREATE DATABASE \"{name}\""))
            .await
            .expect("create test database");
        let _ = admin.close().await;
        Self {
            base: base.to_owned(),
            name,
        }
    }

    pub fn url(&self) -> String {
        let mut url = url::Url::parse(&self.base).expect("postgres url");
        url.set_path(&self.name);
        url.to_string()
    }
}

impl Drop for PostgresDatabase {
    fn drop(&mut self) {
        // Drop runs inside the test's runtime (or while a panic unwinds out
        // of it), which cannot block on itself: a thread with a runtime of
        // its own removes the database. FORCE ends the connections a server
        // that is still shutting down holds. Never panic here: a panic while
        // unwinding would abort the whole test binary.
        let base = self.base.clone();
        let name = self.name.clone();
        let dropped = std::thread::spawn(move || -> Result<(), String> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            runtime.block_on(async {
                let admin = sea_orm::Database::connect(&base)
                    .await
                    .map_err(|e| e.to_string())?;
                // A server still shutting down reconnects (its pool, its
                // LISTEN connection) while FORCE ends its sessions: refuse new
                // connections first, and try again if one slipped in.
                let _ = admin
                    .execute_unprepared(&format!(
                        "ALTER DATABASE \"{name}\" WITH ALLOW_CONNECTIONS false"
                    ))
                    .await;
                let mut result = Ok(());
                for _ in 0..10 {
                    result = admin
                        .execute_unprepared(&format!(
                            "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
                        ))
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string());
                    if result.is_ok() {
                        break;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
                let _ = admin.close().await;
                result
            })
        })
        .join();
        match dropped {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("could not drop test database {}: {e}", self.name),
            Err(_) => eprintln!("could not drop test database {}", self.name),
        }
    }
}

/// A running server.
pub struct TestApp {
    pub addr: SocketAddr,
    /// The REST listener (`socialize.removeConnection`), on its own port.
    pub http_addr: SocketAddr,
    /// The server's own repository, for tests that write at the storage level
    /// (e.g. holding an outbox transaction open).
    pub repo: connections::storage::Repository,
    pub database_url: String,
    pub channel: Channel,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<()>>,
    /// The test database under this server, removed when the last server
    /// on it is dropped (after the shutdown signal `drop` sends); None for a
    /// database the test made itself.
    _database: Option<Arc<TestDatabase>>,
}

impl TestApp {
    pub async fn spawn(backend: &Backend) -> Self {
        Self::spawn_with(backend, |_| {}).await
    }

    /// Starts a server after `configure` adjusted the default settings.
    pub async fn spawn_with(backend: &Backend, configure: impl FnOnce(&mut Settings)) -> Self {
        let (database_url, _database) = backend.fresh_database().await;
        Self::spawn_on(&database_url, configure).await
    }

    /// Starts a server on an existing database (e.g. a second replica).
    pub async fn spawn_on(database_url: &str, configure: impl FnOnce(&mut Settings)) -> Self {
        Self::spawn_on_tls(database_url, configure, None).await
    }

    /// Starts a TLS server (configured by `configure`); `app.channel` speaks
    /// TLS with `client` to the name `localhost`.
    pub async fn spawn_tls(
        backend: &Backend,
        configure: impl FnOnce(&mut Settings),
        client: ClientTlsConfig,
    ) -> Self {
        let (database_url, _database) = backend.fresh_database().await;
        Self::spawn_on_tls(&database_url, configure, Some(client)).await
    }

    async fn spawn_on_tls(
        database_url: &str,
        configure: impl FnOnce(&mut Settings),
        client: Option<ClientTlsConfig>,
    ) -> Self {
        let mut settings = Settings::for_database(database_url);
        configure(&mut settings);
        let app = App::build(&settings).await.expect("build app");
        let repo = app.repo().clone();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let http_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind http");
        let http_addr = http_listener.local_addr().expect("http local addr");
        let (tx, rx) = oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            app.run_with(listener, Some(http_listener), async {
                let _ = rx.await;
            })
            .await
            .expect("server ran");
        });
        let channel = match client {
            None => Channel::from_shared(format!("http://{addr}"))
                .expect("uri")
                .connect()
                .await
                .expect("connect"),
            Some(tls) => Channel::from_shared(format!("https://localhost:{}", addr.port()))
                .expect("uri")
                .tls_config(tls)
                .expect("client TLS config")
                .connect()
                .await
                .expect("connect over TLS"),
        };
        Self {
            addr,
            http_addr,
            repo,
            database_url: database_url.to_owned(),
            channel,
            shutdown: Some(tx),
            server: Some(server),
            _database: live_databases()
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(database_url)
                .and_then(Weak::upgrade),
        }
    }

    pub fn connections(&self) -> ConnectionServiceClient<Channel> {
        ConnectionServiceClient::new(self.channel.clone())
    }

    pub fn admin(&self) -> AdminServiceClient<Channel> {
        AdminServiceClient::new(self.channel.clone())
    }

    pub fn events(&self) -> EventServiceClient<Channel> {
        EventServiceClient::new(self.channel.clone())
    }

    /// Asks the server to shut down and waits until it has.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            server.await.expect("server task");
        }
    }

    pub async fn create_site(&self, api_key: &str, vhost: i64) -> pb::Site {
        self.admin()
            .upsert_site(pb::UpsertSiteRequest {
                api_key: api_key.into(),
                vhost,
                name: format!("site {api_key}"),
                unlink_action_enabled: true,
                allowed_redirect_origins: vec!["https://www.example.com".into()],
                allowed_browser_origins: vec![],
            })
            .await
            .expect("upsert site")
            .into_inner()
            .site
            .expect("site")
    }

    /// Creates an account with `(login_id, has_password)` pairs.
    pub async fn create_account(
        &self,
        api_key: &str,
        uid: &str,
        login_ids: &[(&str, bool)],
    ) -> pb::Account {
        self.admin()
            .upsert_account(pb::UpsertAccountRequest {
                api_key: api_key.into(),
                uid: uid.into(),
                login_ids: login_ids
                    .iter()
                    .map(|(l, p)| pb::LoginId {
                        login_id: (*l).into(),
                        has_password: *p,
                    })
                    .collect(),
            })
            .await
            .expect("upsert account")
            .into_inner()
            .account
            .expect("account")
    }

    /// Links `provider`/`provider_uid` (sub-provider `sub`) to the account.
    pub async fn link(
        &self,
        api_key: &str,
        uid: &str,
        provider: &str,
        sub: &str,
        provider_uid: &str,
        login_id: Option<&str>,
    ) -> pb::LinkConnectionResponse {
        self.connections()
            .link_connection(pb::LinkConnectionRequest {
                api_key: api_key.into(),
                uid: uid.into(),
                provider: provider.into(),
                sub_provider: sub.into(),
                provider_uid: provider_uid.into(),
                login_id: login_id.map(Into::into),
                session: Some(pb::ProviderSession {
                    access_token: format!("secret-token-{provider_uid}"),
                    refresh_token: String::new(),
                    expires_at: None,
                }),
            })
            .await
            .expect("link connection")
            .into_inner()
    }

    /// Creates an API token as `connections token create` does; returns it.
    pub async fn create_token(&self, caller: &str, sites: &str, permissions: &str) -> String {
        use connections::access as auth;
        let token = auth::generate_token();
        let sites = auth::format_sites(&auth::parse_sites(sites).expect("sites"));
        let permissions =
            auth::format_permissions(&auth::parse_permissions(permissions).expect("permissions"));
        connections::storage::TokenStore::new(self.repo.connection().clone())
            .create(caller, &auth::hash_token(&token), &sites, &permissions)
            .await
            .expect("create token");
        token
    }

    pub async fn account(&self, api_key: &str, uid: &str) -> pb::Account {
        self.connections()
            .get_account(pb::GetAccountRequest {
                api_key: api_key.into(),
                uid: uid.into(),
            })
            .await
            .expect("get account")
            .into_inner()
            .account
            .expect("account")
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// A request carrying `authorization: Bearer <token>`.
pub fn bearer<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("header value"),
    );
    request
}

/// The ErrorInfo reason of a status (panics when there is none).
pub fn reason(status: &Status) -> String {
    status
        .get_error_details()
        .error_info()
        .map(|info| {
            assert_eq!(info.domain, "connections");
            info.reason.clone()
        })
        .unwrap_or_else(|| panic!("no ErrorInfo in {status:?}"))
}

/// The fields named by the status's BadRequest violations.
pub fn bad_fields(status: &Status) -> Vec<String> {
    status
        .get_error_details()
        .bad_request()
        .map(|b| b.field_violations.iter().map(|v| v.field.clone()).collect())
        .unwrap_or_default()
}

/// Asserts code and reason, and that the call id came with the error.
pub fn assert_refused(
    result: Result<impl std::fmt::Debug, Status>,
    code: Code,
    expected_reason: &str,
) -> Status {
    let status = result.expect_err("the call should have been refused");
    assert_eq!(status.code(), code, "{status:?}");
    assert_eq!(reason(&status), expected_reason, "{status:?}");
    assert!(
        status.metadata().get("x-call-id").is_some(),
        "no x-call-id on {status:?}"
    );
    status
}

/// Declares each listed `async fn name(backend: Backend)` as two tests,
/// `name::sqlite` and `name::postgres`. Without `CONNECTIONS_TEST_POSTGRES_URL`
/// at build time the `postgres` ones are compiled as ignored, so `cargo test`
/// reports them as "ignored, needs CONNECTIONS_TEST_POSTGRES_URL" and counts
/// them in its "N ignored", instead of passing tests that did not run.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    super::$name($crate::helpers::Backend::Sqlite).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                #[cfg_attr(not(postgres_tests), ignore = "needs CONNECTIONS_TEST_POSTGRES_URL")]
                async fn postgres() {
                    super::$name($crate::helpers::Backend::postgres()).await;
                }
            }
        )*
    };
}

/// Every status a health `Watch` stream reports, collected in the
/// background (as a load balancer would follow it).
pub struct HealthWatch {
    seen: Arc<std::sync::Mutex<Vec<ServingStatus>>>,
    task: JoinHandle<()>,
}

impl HealthWatch {
    pub async fn start(app: &TestApp) -> Self {
        let mut watch = HealthClient::new(app.channel.clone())
            .watch(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .expect("watch health")
            .into_inner();
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let task = {
            let seen = seen.clone();
            tokio::spawn(async move {
                while let Ok(Some(status)) = watch.message().await {
                    seen.lock().expect("statuses").push(status.status());
                }
            })
        };
        Self { seen, task }
    }

    /// Stops watching; returns what was seen, in order.
    pub fn stop(self) -> Vec<ServingStatus> {
        self.task.abort();
        self.seen.lock().expect("statuses").clone()
    }
}
