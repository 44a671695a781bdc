//! Authentication, permissions, site scope, TLS, abuse limits, the token
//! command line and secrets kept out of logs, responses and the database.

use std::{
    io::Write,
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

use connections::{config::TlsSettings, proto::v1 as pb};
use sea_orm::ConnectionTrait;
use tonic::{
    Code,
    transport::{Certificate, Channel, ClientTlsConfig, Identity},
};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
use tonic_reflection::pb::v1;

use crate::{
    helpers::{Backend, TestApp, assert_refused, bearer, reason},
    on_both_backends,
};

on_both_backends!(
    calls_without_a_valid_token_are_unauthenticated,
    revoked_tokens_stop_working,
    tokens_only_allow_their_permissions,
    scoped_tokens_cannot_tell_unknown_sites_from_forbidden_ones,
    health_and_reflection_stay_open_when_authentication_is_on,
    open_mode_ends_when_the_first_token_appears,
    callers_over_the_rate_limit_are_refused_with_rate_limited,
    oversized_requests_are_resource_exhausted,
    session_tokens_never_reach_logs_responses_or_the_database,
    consumer_checkpoints_belong_to_the_caller_that_created_them,
    expired_tokens_are_refused_saying_so,
);

/// A server whose token lookups are not cached, so that tokens created or
/// revoked by a test take effect on the next call.
async fn spawn(backend: &Backend) -> TestApp {
    TestApp::spawn_with(backend, |s| s.security.token_cache_ttl = Duration::ZERO).await
}

fn get_account(api_key: &str, uid: &str) -> pb::GetAccountRequest {
    pb::GetAccountRequest {
        api_key: api_key.into(),
        uid: uid.into(),
    }
}

fn get_site(api_key: &str) -> pb::GetSiteRequest {
    pb::GetSiteRequest {
        api_key: api_key.into(),
    }
}

async fn calls_without_a_valid_token_are_unauthenticated(backend: Backend) {
    let app = spawn(&backend).await;
    app.create_site("3_a", 1).await;
    app.create_account("3_a", "u1", &[("a@x.com", true)]).await;
    let good = app.create_token("ops", "*", "connections.read").await;

    let missing = app
        .connections()
        .get_account(get_account("3_a", "u1"))
        .await;
    assert_refused(missing, Code::Unauthenticated, "UNAUTHENTICATED");

    let unknown = connections::access::generate_token();
    for token in [
        "nope",
        "cnx_short",
        good.trim_start_matches("cnx_"),
        &unknown,
    ] {
        let result = app
            .connections()
            .get_account(bearer(get_account("3_a", "u1"), token))
            .await;
        let status = assert_refused(result, Code::Unauthenticated, "UNAUTHENTICATED");
        assert!(!status.message().contains(token), "{status:?}");
    }
    let mut basic = tonic::Request::new(get_account("3_a", "u1"));
    basic.metadata_mut().insert(
        "authorization",
        format!("Basic {good}").parse().expect("header"),
    );
    let result = app.connections().get_account(basic).await;
    assert_refused(result, Code::Unauthenticated, "UNAUTHENTICATED");

    let ok = app
        .connections()
        .get_account(bearer(get_account("3_a", "u1"), &good))
        .await
        .expect("a valid token is accepted");
    assert!(ok.into_inner().account.is_some());
}

async fn revoked_tokens_stop_working(backend: Backend) {
    let app = spawn(&backend).await;
    app.create_site("3_a", 1).await;
    let token = app.create_token("ops", "*", "admin").await;
    let other = app.create_token("keeper", "*", "admin").await;
    app.admin()
        .get_site(bearer(get_site("3_a"), &token))
        .await
        .expect("valid before revocation");
    let tokens = connections::storage::TokenStore::new(app.repo.connection().clone());
    assert_eq!(tokens.revoke_caller("ops").await.unwrap(), 1);
    let unknown_now = app.admin().get_site(bearer(get_site("3_a"), &token)).await;
    let status = assert_refused(unknown_now, Code::Unauthenticated, "UNAUTHENTICATED");
    let never_known = app
        .admin()
        .get_site(bearer(
            get_site("3_a"),
            &connections::access::generate_token(),
        ))
        .await
        .unwrap_err();
    assert_eq!(
        status.message(),
        never_known.message(),
        "revoked and unknown look the same"
    );
    app.admin()
        .get_site(bearer(get_site("3_a"), &other))
        .await
        .expect("other callers keep working");
}

async fn tokens_only_allow_their_permissions(backend: Backend) {
    let app = spawn(&backend).await;
    app.create_site("3_a", 1).await;
    app.create_account("3_a", "u1", &[("a@x.com", true)]).await;
    let reader = app.create_token("reader", "*", "connections.read").await;
    let writer = app.create_token("writer", "*", "connections.write").await;
    let admin = app.create_token("admin", "*", "admin").await;
    let subscriber = app.create_token("sub", "*", "events.subscribe").await;

    let link = || pb::LinkConnectionRequest {
        api_key: "3_a".into(),
        uid: "u1".into(),
        provider: "facebook".into(),
        sub_provider: String::new(),
        provider_uid: "fb1".into(),
        login_id: None,
        session: None,
    };
    for token in [&reader, &admin, &subscriber] {
        let result = app
            .connections()
            .link_connection(bearer(link(), token))
            .await;
        assert_refused(result, Code::PermissionDenied, "PERMISSION_DENIED");
    }
    app.connections()
        .link_connection(bearer(link(), &writer))
        .await
        .expect("write permission links");

    let remove = pb::RemoveConnectionRequest {
        api_key: "3_a".into(),
        uid: "u1".into(),
        ..Default::default()
    };
    let result = app
        .connections()
        .remove_connection(bearer(remove, &reader))
        .await;
    assert_refused(result, Code::PermissionDenied, "PERMISSION_DENIED");

    for token in [&writer, &admin, &subscriber] {
        let result = app
            .connections()
            .get_account(bearer(get_account("3_a", "u1"), token))
            .await;
        assert_refused(result, Code::PermissionDenied, "PERMISSION_DENIED");
    }
    app.connections()
        .get_account(bearer(get_account("3_a", "u1"), &reader))
        .await
        .expect("read permission reads");

    for token in [&reader, &writer, &subscriber] {
        let result = app.admin().get_site(bearer(get_site("3_a"), token)).await;
        assert_refused(result, Code::PermissionDenied, "PERMISSION_DENIED");
        let upsert = pb::UpsertAccountRequest {
            api_key: "3_a".into(),
            uid: "u2".into(),
            login_ids: vec![],
        };
        let result = app.admin().upsert_account(bearer(upsert, token)).await;
        assert_refused(result, Code::PermissionDenied, "PERMISSION_DENIED");
    }
    app.admin()
        .get_site(bearer(get_site("3_a"), &admin))
        .await
        .expect("admin permission administers");

    for token in [&reader, &writer, &admin] {
        let result = app
            .events()
            .subscribe(bearer(pb::SubscribeRequest::default(), token))
            .await;
        assert_refused(result, Code::PermissionDenied, "PERMISSION_DENIED");
        let result = app
            .events()
            .commit_position(bearer(pb::CommitPositionRequest::default(), token))
            .await;
        assert_refused(result, Code::PermissionDenied, "PERMISSION_DENIED");
    }
    // With the permission, the call reaches the service (not implemented
    // on this branch, or refused there for its own reasons).
    let result = app
        .events()
        .commit_position(bearer(pb::CommitPositionRequest::default(), &subscriber))
        .await;
    if let Err(status) = result {
        assert_ne!(status.code(), Code::PermissionDenied, "{status:?}");
        assert_ne!(status.code(), Code::Unauthenticated, "{status:?}");
    }
}

async fn scoped_tokens_cannot_tell_unknown_sites_from_forbidden_ones(backend: Backend) {
    let app = spawn(&backend).await;
    for (key, vhost) in [("3_a", 1), ("3_b", 2)] {
        app.create_site(key, vhost).await;
        app.create_account(key, "u1", &[("a@x.com", true)]).await;
    }
    let scoped = app
        .create_token("tenant-a", "3_a", "connections.read,admin")
        .await;

    app.connections()
        .get_account(bearer(get_account("3_a", "u1"), &scoped))
        .await
        .expect("own site");
    let forbidden = app
        .connections()
        .get_account(bearer(get_account("3_b", "u1"), &scoped))
        .await;
    let forbidden = assert_refused(forbidden, Code::PermissionDenied, "PERMISSION_DENIED");
    let unknown = app
        .connections()
        .get_account(bearer(get_account("3_nope", "u1"), &scoped))
        .await;
    let unknown = assert_refused(unknown, Code::PermissionDenied, "PERMISSION_DENIED");
    assert_eq!(forbidden.message(), unknown.message());

    let forbidden = app.admin().get_site(bearer(get_site("3_b"), &scoped)).await;
    let forbidden = assert_refused(forbidden, Code::PermissionDenied, "PERMISSION_DENIED");
    let unknown = app
        .admin()
        .get_site(bearer(get_site("3_nope"), &scoped))
        .await;
    let unknown = assert_refused(unknown, Code::PermissionDenied, "PERMISSION_DENIED");
    assert_eq!(forbidden.message(), unknown.message());
    assert!(!forbidden.message().contains("3_b"));

    let upsert = pb::UpsertSiteRequest {
        api_key: "3_c".into(),
        vhost: 3,
        name: "c".into(),
        unlink_action_enabled: false,
        allowed_redirect_origins: vec![],
        allowed_browser_origins: vec![],
    };
    let result = app.admin().upsert_site(bearer(upsert, &scoped)).await;
    assert_refused(result, Code::PermissionDenied, "PERMISSION_DENIED");
}

async fn health_and_reflection_stay_open_when_authentication_is_on(backend: Backend) {
    let app = spawn(&backend).await;
    app.create_token("ops", "*", "admin").await;
    let result = app.admin().get_site(get_site("3_a")).await;
    assert_refused(result, Code::Unauthenticated, "UNAUTHENTICATED");

    HealthClient::new(app.channel.clone())
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health is open");
    let request = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut stream = v1::server_reflection_client::ServerReflectionClient::new(app.channel.clone())
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection is open")
        .into_inner();
    assert!(
        stream
            .message()
            .await
            .expect("reflection answers")
            .is_some()
    );
}

async fn open_mode_ends_when_the_first_token_appears(backend: Backend) {
    let app = spawn(&backend).await;
    app.create_site("3_a", 1).await;
    app.admin()
        .get_site(get_site("3_a"))
        .await
        .expect("open mode on loopback without tokens");
    let token = app.create_token("ops", "*", "admin").await;
    let result = app.admin().get_site(get_site("3_a")).await;
    assert_refused(result, Code::Unauthenticated, "UNAUTHENTICATED");
    // Revoking every token does not reopen the server.
    let tokens = connections::storage::TokenStore::new(app.repo.connection().clone());
    tokens.revoke_caller("ops").await.unwrap();
    let result = app.admin().get_site(get_site("3_a")).await;
    assert_refused(result, Code::Unauthenticated, "UNAUTHENTICATED");
    let result = app.admin().get_site(bearer(get_site("3_a"), &token)).await;
    assert_refused(result, Code::Unauthenticated, "UNAUTHENTICATED");
}

async fn callers_over_the_rate_limit_are_refused_with_rate_limited(backend: Backend) {
    let app = TestApp::spawn_with(&backend, |s| {
        s.security.token_cache_ttl = Duration::ZERO;
        s.security.rate_limit_per_second = 0.5;
        s.security.rate_limit_burst = 3;
    })
    .await;
    let a = app.create_token("a", "*", "admin").await;
    let b = app.create_token("b", "*", "admin").await;
    for _ in 0..3 {
        let result = app.admin().get_site(bearer(get_site("3_a"), &a)).await;
        assert_refused(result, Code::NotFound, "SITE_NOT_FOUND");
    }
    let result = app.admin().get_site(bearer(get_site("3_a"), &a)).await;
    assert_refused(result, Code::ResourceExhausted, "RATE_LIMITED");
    let result = app.admin().get_site(bearer(get_site("3_a"), &b)).await;
    assert_refused(result, Code::NotFound, "SITE_NOT_FOUND");
    HealthClient::new(app.channel.clone())
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health is not rate limited");
    // A peer sending bad tokens is slowed down before they are looked up.
    for _ in 0..3 {
        let bad = connections::access::generate_token();
        let result = app.admin().get_site(bearer(get_site("3_a"), &bad)).await;
        assert_refused(result, Code::Unauthenticated, "UNAUTHENTICATED");
    }
    let bad = connections::access::generate_token();
    let result = app.admin().get_site(bearer(get_site("3_a"), &bad)).await;
    assert_refused(result, Code::ResourceExhausted, "RATE_LIMITED");
}

async fn oversized_requests_are_resource_exhausted(backend: Backend) {
    let app = TestApp::spawn_with(&backend, |s| s.security.max_message_bytes = 4096).await;
    app.create_site("3_a", 1).await;
    let result = app
        .connections()
        .get_account(get_account("3_a", &"x".repeat(10_000)))
        .await;
    assert_refused(result, Code::ResourceExhausted, "RESOURCE_EXHAUSTED");
    let result = app
        .connections()
        .get_account(get_account("3_a", &"x".repeat(1000)))
        .await;
    assert_refused(result, Code::InvalidArgument, "INVALID_PARAMETER");
}

// --- secrets ---------------------------------------------------------------

/// Everything every test's server logged at DEBUG and above, captured by a
/// global subscriber installed once for this test binary.
fn captured_logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let writer = SharedWriter(buffer.clone());
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        let _ = tracing::subscriber::set_global_default(subscriber);
        buffer
    })
    .clone()
}

#[derive(Clone)]
struct SharedWriter(Arc<Mutex<Vec<u8>>>);

impl Write for SharedWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

async fn session_tokens_never_reach_logs_responses_or_the_database(backend: Backend) {
    let logs = captured_logs();
    let app = spawn(&backend).await;
    app.create_site("3_a", 1).await;
    app.create_account("3_a", "u1", &[("a@x.com", true)]).await;
    app.create_account("3_a", "u2", &[("b@x.com", true)]).await;
    // No password: removing its one identity is a SOFT removal.
    app.create_account("3_a", "u3", &[]).await;
    let api_token = app
        .create_token("linker", "3_a", "connections.write,connections.read")
        .await;
    let secret = format!("EAAB-session-{}", uuid::Uuid::new_v4().simple());
    let refresh = format!("refresh-{}", uuid::Uuid::new_v4().simple());
    let link = |uid: &str, provider: &str| pb::LinkConnectionRequest {
        api_key: "3_a".into(),
        uid: uid.into(),
        provider: provider.into(),
        sub_provider: String::new(),
        provider_uid: "fb-secret-holder".into(),
        login_id: None,
        session: Some(pb::ProviderSession {
            access_token: secret.clone(),
            refresh_token: refresh.clone(),
            expires_at: None,
        }),
    };
    let mut seen = Vec::new();
    let linked = app
        .connections()
        .link_connection(bearer(link("u1", "facebook"), &api_token))
        .await
        .expect("link");
    seen.push(format!("{linked:?}"));
    let account = app
        .connections()
        .get_account(bearer(get_account("3_a", "u1"), &api_token))
        .await
        .expect("get account");
    seen.push(format!("{account:?}"));
    // Refusals of requests that carry the session: another account, an
    // unknown provider, another site, no token.
    for (request, token) in [
        (link("u2", "facebook"), api_token.as_str()),
        (link("u1", "notaprovider"), api_token.as_str()),
        (
            pb::LinkConnectionRequest {
                api_key: "3_b".into(),
                ..link("u1", "facebook")
            },
            api_token.as_str(),
        ),
        (link("u1", "facebook"), "cnx_not-a-token"),
    ] {
        let status = app
            .connections()
            .link_connection(bearer(request, token))
            .await
            .expect_err("refused");
        let _ = reason(&status);
        seen.push(format!("{status:?}"));
    }

    for text in &seen {
        for needle in [&secret, &refresh, &api_token] {
            assert!(!text.contains(needle.as_str()), "leaked in {text}");
        }
    }
    let rows = app
        .repo
        .connection()
        .query_all_raw(sea_orm::Statement::from_string(
            app.repo.connection().get_database_backend(),
            "SELECT session FROM identities",
        ))
        .await
        .expect("read identities");
    assert_eq!(rows.len(), 1);
    let sealed: Vec<u8> = rows[0].try_get("", "session").expect("session column");
    for needle in [&secret, &refresh] {
        assert!(
            !sealed.windows(needle.len()).any(|w| w == needle.as_bytes()),
            "session stored in clear"
        );
    }

    // Removals wipe the session (HARD deletes the row; SOFT keeps the
    // mapping without it), and neither responses nor events carry it.
    let linked = app
        .connections()
        .link_connection(bearer(
            pb::LinkConnectionRequest {
                provider_uid: "tw-secret-holder".into(),
                ..link("u3", "twitter")
            },
            &api_token,
        ))
        .await
        .expect("link u3");
    seen.push(format!("{linked:?}"));
    let reader = app.create_token("reader", "3_a", "events.subscribe").await;
    let mut stream = app
        .events()
        .subscribe(bearer(
            pb::SubscribeRequest {
                start_from: pb::StartFrom::Beginning.into(),
                ..Default::default()
            },
            &reader,
        ))
        .await
        .expect("subscribe")
        .into_inner();
    for (uid, provider) in [("u1", "facebook"), ("u3", "twitter")] {
        let removed = app
            .connections()
            .remove_connection(bearer(
                pb::RemoveConnectionRequest {
                    api_key: "3_a".into(),
                    uid: uid.into(),
                    provider: Some(provider.into()),
                    ..Default::default()
                },
                &api_token,
            ))
            .await
            .expect("remove");
        seen.push(format!("{removed:?}"));
    }
    let mut events = Vec::new();
    while events.len() < 2 {
        let message = tokio::time::timeout(Duration::from_secs(20), stream.message())
            .await
            .expect("no event in time")
            .expect("stream failed")
            .expect("stream ended");
        if let Some(pb::subscribe_response::Message::Event(event)) = message.message {
            events.push(event);
        }
    }
    assert_eq!(events[1].mode(), pb::RemovalMode::Soft);
    for text in events.iter().map(|e| format!("{e:?}")).chain(seen) {
        for needle in [&secret, &refresh, &api_token] {
            assert!(!text.contains(needle.as_str()), "leaked in {text}");
        }
    }
    let sessions = app
        .repo
        .connection()
        .query_all_raw(sea_orm::Statement::from_string(
            app.repo.connection().get_database_backend(),
            "SELECT id FROM identities WHERE session IS NOT NULL",
        ))
        .await
        .expect("read identities");
    assert!(sessions.is_empty(), "a removal left session data behind");

    let logs = String::from_utf8_lossy(
        &logs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    )
    .into_owned();
    assert!(!logs.is_empty(), "the log capture saw nothing");
    for needle in [&secret, &refresh, &api_token] {
        assert!(!logs.contains(needle.as_str()), "leaked in the logs");
    }
}

// --- TLS ---------------------------------------------------------------------

/// A CA, a server certificate for localhost signed by it, and a client
/// certificate signed by it, as PEM files in a temporary directory.
struct Pki {
    dir: tempfile::TempDir,
    ca_pem: String,
    client_cert: String,
    client_key: String,
}

fn issue(
    issuer: &rcgen::Issuer<'_, rcgen::KeyPair>,
    names: Vec<String>,
) -> (rcgen::Certificate, rcgen::KeyPair) {
    let key = rcgen::KeyPair::generate().expect("key");
    let params = rcgen::CertificateParams::new(names).expect("params");
    (params.signed_by(&key, issuer).expect("sign"), key)
}

fn new_ca(name: &str) -> (String, rcgen::Issuer<'static, rcgen::KeyPair>) {
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let cert = params.self_signed(&key).expect("self-signed CA");
    (cert.pem(), rcgen::Issuer::new(params, key))
}

fn pki() -> Pki {
    let (ca_pem, ca) = new_ca("connections test CA");
    let (server, server_key) = issue(&ca, vec!["localhost".into(), "127.0.0.1".into()]);
    let (client, client_key) = issue(&ca, vec!["billing-client".into()]);
    let dir = tempfile::tempdir().expect("temp dir");
    for (name, content) in [
        ("ca.pem", ca_pem.clone()),
        ("server.pem", server.pem()),
        ("server.key", server_key.serialize_pem()),
    ] {
        std::fs::write(dir.path().join(name), content).expect("write pem");
    }
    Pki {
        dir,
        ca_pem,
        client_cert: client.pem(),
        client_key: client_key.serialize_pem(),
    }
}

impl Pki {
    fn server(&self, mutual: bool) -> TlsSettings {
        TlsSettings {
            cert: self.dir.path().join("server.pem"),
            key: self.dir.path().join("server.key"),
            client_ca: mutual.then(|| self.dir.path().join("ca.pem")),
        }
    }

    fn client(&self, with_cert: bool) -> ClientTlsConfig {
        let config = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .domain_name("localhost");
        if with_cert {
            config.identity(Identity::from_pem(&self.client_cert, &self.client_key))
        } else {
            config
        }
    }
}

/// Whether a health check over `client` to the app succeeds.
async fn health_over(app: &TestApp, client: Option<ClientTlsConfig>) -> bool {
    let endpoint = match client {
        Some(tls) => Channel::from_shared(format!("https://localhost:{}", app.addr.port()))
            .expect("uri")
            .tls_config(tls)
            .expect("tls config"),
        None => Channel::from_shared(format!("http://{}", app.addr)).expect("uri"),
    };
    let Ok(Ok(channel)) = tokio::time::timeout(Duration::from_secs(5), endpoint.connect()).await
    else {
        return false;
    };
    let mut client = HealthClient::new(channel);
    let check = client.check(HealthCheckRequest {
        service: String::new(),
    });
    matches!(
        tokio::time::timeout(Duration::from_secs(5), check).await,
        Ok(Ok(_))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_clients_that_trust_the_server_certificate() {
    let pki = pki();
    let tls = pki.server(false);
    let app = TestApp::spawn_tls(
        &Backend::Sqlite,
        |s| s.security.tls = Some(tls),
        pki.client(false),
    )
    .await;
    app.create_site("3_a", 1).await;
    assert_eq!(app.account_count_probe().await, Code::NotFound);
    assert!(!health_over(&app, None).await, "plain text is refused");
    let (other_ca, _) = new_ca("some other CA");
    let untrusting = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(other_ca))
        .domain_name("localhost");
    assert!(!health_over(&app, Some(untrusting)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_refuses_clients_without_a_certificate_from_the_ca() {
    let pki = pki();
    let tls = pki.server(true);
    let app = TestApp::spawn_tls(
        &Backend::Sqlite,
        |s| s.security.tls = Some(tls),
        pki.client(true),
    )
    .await;
    app.create_site("3_a", 1).await;
    assert!(health_over(&app, Some(pki.client(true))).await);
    assert!(
        !health_over(&app, Some(pki.client(false))).await,
        "a client without a certificate is refused"
    );
    let (_, stranger_ca) = new_ca("stranger CA");
    let (stranger, stranger_key) = issue(&stranger_ca, vec!["mallory".into()]);
    let stranger = pki.client(false).identity(Identity::from_pem(
        stranger.pem(),
        stranger_key.serialize_pem(),
    ));
    assert!(
        !health_over(&app, Some(stranger)).await,
        "a certificate from another CA is refused"
    );
}

impl TestApp {
    /// GetAccount of an unknown account: proves an RPC went through.
    async fn account_count_probe(&self) -> Code {
        self.connections()
            .get_account(get_account("3_a", "nobody"))
            .await
            .expect_err("no such account")
            .code()
    }
}

// --- the token command line --------------------------------------------------

pub fn cli(args: &[&str], database_url: &str) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_connections"))
        .args(args)
        .env("CONNECTIONS_DATABASE_URL", database_url)
        .env_remove("RUST_LOG")
        .output()
        .expect("run connections")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_cli_creates_lists_and_revokes_tokens() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());

    let created = cli(
        &[
            "token",
            "create",
            "--caller",
            "billing",
            "--sites",
            "3_a,3_b",
            "--permissions",
            "connections.write,connections.read",
        ],
        &url,
    );
    assert!(created.status.success(), "{created:?}");
    let stdout = String::from_utf8(created.stdout).expect("utf-8");
    let token = stdout.trim().to_owned();
    assert_eq!(stdout.lines().count(), 1, "only the token on stdout");
    assert!(token.starts_with("cnx_") && token.len() > 40, "{token}");
    let stderr = String::from_utf8_lossy(&created.stderr);
    assert!(!stderr.contains(&token));

    let bad = cli(
        &[
            "token",
            "create",
            "--caller",
            "x",
            "--sites",
            "*",
            "--permissions",
            "everything",
        ],
        &url,
    );
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown permission"));

    let listed = cli(&["token", "list"], &url);
    assert!(listed.status.success(), "{listed:?}");
    let table = String::from_utf8(listed.stdout).expect("utf-8");
    assert!(
        table.contains("billing") && table.contains("3_a,3_b"),
        "{table}"
    );
    assert!(
        table.contains("connections.write,connections.read"),
        "{table}"
    );
    assert!(!table.contains(&token), "the token is never listed");
    assert!(
        !table.contains(&connections::access::hash_token(&token)),
        "nor its hash"
    );

    // The token works against a server on that database.
    let app = TestApp::spawn_on(&url, |s| s.security.token_cache_ttl = Duration::ZERO).await;
    let result = app
        .connections()
        .get_account(bearer(get_account("3_a", "u1"), &token))
        .await;
    assert_refused(result, Code::NotFound, "SITE_NOT_FOUND");

    let revoked = cli(&["token", "revoke", "--caller", "billing"], &url);
    assert!(revoked.status.success(), "{revoked:?}");
    let result = app
        .connections()
        .get_account(bearer(get_account("3_a", "u1"), &token))
        .await;
    assert_refused(result, Code::Unauthenticated, "UNAUTHENTICATED");
    app.stop().await;

    let again = cli(&["token", "revoke", "--caller", "billing"], &url);
    assert!(!again.status.success(), "nothing left to revoke");
    let listed = cli(&["token", "list"], &url);
    let table = String::from_utf8(listed.stdout).expect("utf-8");
    let row = table.lines().find(|l| l.contains("billing")).expect("row");
    assert!(
        !row.trim_end().ends_with(" -"),
        "revocation time shown: {row}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_refuses_a_public_address_without_tokens() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_connections"))
        .args([
            "serve",
            "--listen",
            "0.0.0.0:0",
            "--http-listen",
            "off",
            "--database-url",
            &url,
        ])
        .output()
        .expect("run connections");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("without authentication"), "{stderr}");
}

/// Waits until the database has sequenced at least `position` events.
async fn wait_for_head(app: &TestApp, position: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let head = app
            .repo
            .sequence_state()
            .await
            .expect("state")
            .last_position;
        if head >= position {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "head stayed at {head}, wanted {position}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn consumer_checkpoints_belong_to_the_caller_that_created_them(backend: Backend) {
    let app = spawn(&backend).await;
    for (key, vhost) in [("3_a", 1), ("3_b", 2)] {
        app.create_site(key, vhost).await;
        app.create_account(key, "u1", &[("a@x.com", true)]).await;
        app.link(key, "u1", "facebook", "", "fb-1", None).await;
        app.connections()
            .remove_connection(pb::RemoveConnectionRequest {
                api_key: key.into(),
                uid: "u1".into(),
                provider: Some("facebook".into()),
                ..Default::default()
            })
            .await
            .expect("remove");
    }
    wait_for_head(&app, 2).await;
    let owner = app
        .create_token("tenant-a", "3_a", "events.subscribe")
        .await;
    let other = app
        .create_token("tenant-b", "3_b", "events.subscribe")
        .await;
    let commit = |position| pb::CommitPositionRequest {
        consumer: "billing".into(),
        position,
    };

    let stored = app
        .events()
        .commit_position(bearer(commit(1), &owner))
        .await
        .expect("the creator commits")
        .into_inner();
    assert_eq!(stored.position, 1);

    let moved = app
        .events()
        .commit_position(bearer(commit(2), &other))
        .await;
    assert_refused(moved, Code::PermissionDenied, "PERMISSION_DENIED");
    let read = app
        .events()
        .subscribe(bearer(
            pb::SubscribeRequest {
                consumer: "billing".into(),
                ..Default::default()
            },
            &other,
        ))
        .await;
    assert_refused(read, Code::PermissionDenied, "PERMISSION_DENIED");

    // Nothing moved: the owner's checkpoint is still 1, and the owner can
    // still move it forward.
    let (stored_owner, position) = app
        .repo
        .consumer_checkpoint("billing")
        .await
        .expect("read checkpoint")
        .expect("checkpoint exists");
    assert_eq!((stored_owner.as_str(), position), ("tenant-a", 1));
    let stored = app
        .events()
        .commit_position(bearer(commit(2), &owner))
        .await
        .expect("the creator moves it")
        .into_inner();
    assert_eq!(stored.position, 2);

    // The other caller keeps its own checkpoints under other names.
    let own = app
        .events()
        .commit_position(bearer(
            pb::CommitPositionRequest {
                consumer: "billing-b".into(),
                position: 2,
            },
            &other,
        ))
        .await
        .expect("own checkpoint")
        .into_inner();
    assert_eq!(own.position, 2);
}

async fn expired_tokens_are_refused_saying_so(backend: Backend) {
    use connections::access;
    let app = spawn(&backend).await;
    app.create_site("3_a", 1).await;
    app.create_account("3_a", "u1", &[("a@x.com", true)]).await;
    let store = app.repo.tokens();
    let mint = |expires_at| {
        let store = store.clone();
        async move {
            let token = access::generate_token();
            store
                .create_expiring(
                    "billing",
                    &access::hash_token(&token),
                    "*",
                    "connections.read",
                    Some(expires_at),
                )
                .await
                .expect("create token");
            token
        }
    };
    let expired = mint(chrono::Utc::now() - chrono::Duration::seconds(1)).await;
    let valid = mint(chrono::Utc::now() + chrono::Duration::hours(1)).await;

    app.connections()
        .get_account(bearer(get_account("3_a", "u1"), &valid))
        .await
        .expect("an unexpired token works");
    let refused = app
        .connections()
        .get_account(bearer(get_account("3_a", "u1"), &expired))
        .await;
    let status = assert_refused(refused, Code::Unauthenticated, "TOKEN_EXPIRED");
    assert!(status.message().contains("expired"), "{}", status.message());
}

#[tokio::test]
async fn token_cli_sets_and_lists_an_expiry() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
    let created = cli(
        &[
            "token",
            "create",
            "--caller",
            "short-lived",
            "--sites",
            "*",
            "--permissions",
            "connections.read",
            "--expires-in",
            "12h",
        ],
        &url,
    );
    assert!(created.status.success(), "{created:?}");
    assert!(String::from_utf8_lossy(&created.stderr).contains("expires 2"));
    let bad = cli(
        &[
            "token",
            "create",
            "--caller",
            "x",
            "--sites",
            "*",
            "--permissions",
            "connections.read",
            "--expires-in",
            "soon",
        ],
        &url,
    );
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--expires-in"));
    let listed = cli(&["token", "list"], &url);
    let table = String::from_utf8(listed.stdout).expect("utf-8");
    assert!(table.contains("EXPIRES"), "{table}");
    let row = table
        .lines()
        .find(|l| l.contains("short-lived"))
        .expect("the token is listed");
    assert!(row.matches('T').count() >= 2, "created and expiry: {row}");
}
