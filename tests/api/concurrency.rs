//! Concurrency proof (issue 18, proof 10): two server processes on one
//! PostgreSQL database, raced against each other.
//!
//! - 1,000 pairs race on the last two ways to log in (accounts with exactly
//!   two active social identities and no password; each pair removes one
//!   identity on each replica at once), half with FAIL, half with SOFT.
//!   FAIL: exactly one of each pair succeeds, the other is refused with
//!   LAST_LOGIN_IDENTITY, and the account keeps one active identity. SOFT
//!   (SPEC section 4, rule 3): both succeed, one HARD and the last SOFT; the
//!   soft-removed identity is not a way to log in, but its mapping stays
//!   bound to the account (another account cannot take it, a login with it
//!   makes it ACTIVE again), so the account is never lost, as only REMOVE
//!   may do.
//! - Link races: two accounts link one provider identity at once on the two
//!   replicas: exactly one wins, the other is ALREADY_EXISTS.
//! - Same request_id retries: one RemoveConnection sent eight times at once
//!   across the replicas acts once and gives eight identical answers.
//! - One hot account saturating the pool (calls queued on its row lock) is
//!   not a database outage: health stays SERVING.
//!
//! Every success has exactly one event per removed identity (counted by
//! call id), positions stay dense, and no client ever sees INTERNAL, ABORTED
//! or any other error than the ones above: conflicts are the service's to
//! resolve.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use connections::domain::IdentityState;
use connections::proto::v1::{
    self as pb, admin_service_client::AdminServiceClient,
    connection_service_client::ConnectionServiceClient, event_service_client::EventServiceClient,
};
use futures::{StreamExt, stream};
use sea_orm::ConnectionTrait;
use tonic::{Code, Status, transport::Channel};

use crate::{
    helpers::{Backend, reason},
    process::{ServerProcess, until_caught_up},
};

const SITE: &str = "3_race";
/// Calls in flight at once (across both replicas). Each replica's pool
/// holds at most 32 connections and PostgreSQL accepts 100 by default:
/// 24 calls per replica leave room for a test running alongside.
const IN_FLIGHT: usize = 48;

/// The proofs of this file take turns: two of them at once (each with two
/// replicas' pools) would exhaust PostgreSQL's connections, which is not
/// what they are about.
static TAKE_TURNS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
const PATIENCE: Duration = Duration::from_secs(60);

/// Two replicas of the service on one fresh PostgreSQL database.
struct Replicas {
    /// Killed when the test ends.
    _servers: [ServerProcess; 2],
    _turn: tokio::sync::MutexGuard<'static, ()>,
    /// Drops the database when the test ends.
    _database: std::sync::Arc<crate::helpers::TestDatabase>,
    channels: [Channel; 2],
    /// For the set-up (thousands of accounts in a few statements) and for
    /// reading what the races left.
    db: sea_orm::DatabaseConnection,
}

impl Replicas {
    async fn start() -> Self {
        let backend = Backend::postgres();
        let turn = TAKE_TURNS.lock().await;
        let (url, database) = backend.fresh_database().await;
        let args = ["--rate-limit", "0"];
        // One after the other: the first migrates the database.
        let one = ServerProcess::start(&url, &args).await;
        let two = ServerProcess::start(&url, &args).await;
        let channels = [one.channel(), two.channel()];
        AdminServiceClient::new(channels[0].clone())
            .upsert_site(pb::UpsertSiteRequest {
                api_key: SITE.into(),
                vhost: 77,
                name: "race".into(),
                unlink_action_enabled: false,
                allowed_redirect_origins: vec![],
                allowed_browser_origins: vec![],
            })
            .await
            .expect("upsert site");
        let db = sea_orm::Database::connect(url.as_str())
            .await
            .expect("connect to the test database");
        Self {
            _servers: [one, two],
            _turn: turn,
            _database: database,
            channels,
            db,
        }
    }

    fn connections(&self, replica: usize) -> ConnectionServiceClient<Channel> {
        ConnectionServiceClient::new(self.channels[replica % 2].clone())
    }

    /// Creates accounts `<prefix>0` to `<prefix><n-1>` in SQL (thousands of
    /// calls would take most of the test's time on a busy machine): with a
    /// password login ID or none, and for each `(provider, tag)` an active
    /// identity whose provider_uid is `<tag>-<n>`, without session data.
    async fn accounts(&self, prefix: &str, n: usize, password: bool, identities: &[(&str, &str)]) {
        let site = format!("(SELECT id FROM sites WHERE api_key = '{SITE}')");
        let mut statements = vec![format!(
            "INSERT INTO accounts (site_id, uid, created_at, updated_at) \
             SELECT {site}, '{prefix}' || g, now(), now() FROM generate_series(0, {}) g",
            n - 1
        )];
        let mine = format!("FROM accounts a WHERE a.uid LIKE '{prefix}%'");
        if password {
            statements.push(format!(
                "INSERT INTO login_ids (site_id, account_id, login_id, has_password, created_at) \
                 SELECT a.site_id, a.id, a.uid || '@example.com', TRUE, now() {mine}"
            ));
        }
        for (provider, tag) in identities {
            statements.push(format!(
                "INSERT INTO identities (site_id, account_id, provider, sub_provider, \
                 provider_uid, login_id, state, session, linked_at, updated_at) \
                 SELECT a.site_id, a.id, '{provider}', '', '{tag}-' || substr(a.uid, {}), \
                 NULL, '{}', NULL, now(), now() {mine}",
                prefix.len() + 1,
                IdentityState::Active.as_str()
            ));
        }
        for statement in statements {
            self.db
                .execute_unprepared(&statement)
                .await
                .unwrap_or_else(|e| panic!("{statement}: {e}"));
        }
    }

    /// provider_uid -> uids of the accounts holding it, for provider_uids
    /// starting with `tag`.
    async fn holders(&self, tag: &str) -> HashMap<String, Vec<String>> {
        let rows = self
            .db
            .query_all_raw(sea_orm::Statement::from_string(
                sea_orm::DbBackend::Postgres,
                format!(
                    "SELECT i.provider_uid, a.uid FROM identities i \
                     JOIN accounts a ON a.id = i.account_id WHERE i.provider_uid LIKE '{tag}-%'"
                ),
            ))
            .await
            .expect("read identities");
        let mut holders: HashMap<String, Vec<String>> = HashMap::new();
        for row in rows {
            let provider_uid: String = row.try_get("", "provider_uid").expect("provider_uid");
            let uid: String = row.try_get("", "uid").expect("uid");
            holders.entry(provider_uid).or_default().push(uid);
        }
        holders
    }

    /// Every event, by call id, after checking positions are dense.
    async fn events_by_call(&self) -> HashMap<String, Vec<pb::ConnectionRemoved>> {
        let mut stream = EventServiceClient::new(self.channels[1].clone())
            .subscribe(pb::SubscribeRequest {
                start_from: pb::StartFrom::Beginning.into(),
                ..Default::default()
            })
            .await
            .expect("replay")
            .into_inner();
        let (events, head) = until_caught_up(&mut stream, PATIENCE).await;
        let n = u64::try_from(events.len()).expect("count");
        assert_eq!(head, n, "head position vs events replayed");
        assert!(
            events.iter().map(|e| e.position).eq(1..=n),
            "positions are not dense 1..={n}"
        );
        let mut by_call: HashMap<String, Vec<pb::ConnectionRemoved>> = HashMap::new();
        for event in events {
            by_call
                .entry(event.call_id.clone())
                .or_default()
                .push(event);
        }
        by_call
    }

    /// Waits (bounded) until every committed event has its position.
    async fn sequenced(&self, expected: usize) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let mut stream = EventServiceClient::new(self.channels[0].clone())
                .subscribe(pb::SubscribeRequest {
                    start_from: pb::StartFrom::Now.into(),
                    ..Default::default()
                })
                .await
                .expect("subscribe")
                .into_inner();
            let (_, head) = until_caught_up(&mut stream, PATIENCE).await;
            if head >= u64::try_from(expected).expect("count") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{expected} events expected, head at {head}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn link(uid: &str, provider: &str, provider_uid: &str) -> pb::LinkConnectionRequest {
    pb::LinkConnectionRequest {
        api_key: SITE.into(),
        uid: uid.into(),
        provider: provider.into(),
        sub_provider: String::new(),
        provider_uid: provider_uid.into(),
        login_id: None,
        session: Some(pb::ProviderSession {
            access_token: format!("token-{provider_uid}"),
            ..Default::default()
        }),
    }
}

fn remove(
    uid: &str,
    provider: &str,
    handling: pb::LastIdentityHandling,
) -> pb::RemoveConnectionRequest {
    pb::RemoveConnectionRequest {
        api_key: SITE.into(),
        uid: uid.into(),
        provider: Some(provider.into()),
        last_identity_handling: handling.into(),
        ..Default::default()
    }
}

/// Errors no client may see in these races, gathered to be reported at once.
#[derive(Debug, Default)]
struct Unexpected(Vec<String>);

impl Unexpected {
    fn note(&mut self, what: &str, status: &Status) {
        let reason = status
            .metadata()
            .get("x-call-id")
            .map(|_| reason(status))
            .unwrap_or_default();
        self.0.push(format!(
            "{what}: {:?} {reason} {}",
            status.code(),
            status.message()
        ));
    }

    fn assert_none(&self) {
        assert!(
            self.0.is_empty(),
            "{} unexpected errors reached clients, e.g. {:?}",
            self.0.len(),
            &self.0[..self.0.len().min(10)]
        );
    }
}

/// Whether `status` is the refusal `code` with `expected` reason.
fn is_refusal(status: &Status, code: Code, expected: &str) -> bool {
    status.code() == code
        && status.metadata().get("x-call-id").is_some()
        && reason(status) == expected
}

const PAIRS: usize = 1_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(postgres_tests), ignore = "needs CONNECTIONS_TEST_POSTGRES_URL")]
async fn racing_on_the_last_two_ways_in_never_loses_an_account() {
    let replicas = Replicas::start().await;
    let started = Instant::now();
    let uid = |i: usize| format!("pair-{i}");
    // No password: the two identities are the only ways in.
    replicas
        .accounts(
            "pair-",
            PAIRS,
            false,
            &[("facebook", "fb"), ("twitter", "tw")],
        )
        .await;
    let populated = started.elapsed();

    // Each pair: facebook removed on one replica and twitter on the other,
    // at the same moment. Even pairs FAIL, odd pairs SOFT.
    let race_started = Instant::now();
    let handling = |i: usize| {
        if i.is_multiple_of(2) {
            pb::LastIdentityHandling::Fail
        } else {
            pb::LastIdentityHandling::Soft
        }
    };
    let outcomes: Vec<_> = stream::iter(0..PAIRS)
        .map(|i| {
            let mut first = replicas.connections(i);
            let mut second = replicas.connections(i + 1);
            async move {
                let (a, b) = tokio::join!(
                    first.remove_connection(remove(&uid(i), "facebook", handling(i))),
                    second.remove_connection(remove(&uid(i), "twitter", handling(i))),
                );
                (
                    i,
                    [
                        ("facebook", a.map(tonic::Response::into_inner)),
                        ("twitter", b.map(tonic::Response::into_inner)),
                    ],
                )
            }
        })
        .buffer_unordered(IN_FLIGHT / 2)
        .collect()
        .await;
    let raced = race_started.elapsed();

    let mut unexpected = Unexpected::default();
    // pair -> (provider kept active or soft-removed, successful responses)
    let mut successes: Vec<pb::RemoveConnectionResponse> = Vec::new();
    let mut expected_state: HashMap<usize, (&str, pb::IdentityState)> = HashMap::new();
    let (mut fail_refused, mut soft_soft) = (0, 0);
    for (i, pair) in outcomes {
        let mut won = Vec::new();
        let mut refused = Vec::new();
        for (provider, outcome) in pair {
            match outcome {
                Ok(response) => won.push((provider, response)),
                Err(status)
                    if handling(i) == pb::LastIdentityHandling::Fail
                        && is_refusal(&status, Code::FailedPrecondition, "LAST_LOGIN_IDENTITY") =>
                {
                    refused.push(provider);
                }
                Err(status) => unexpected.note(&format!("pair {i} {provider}"), &status),
            }
        }
        let modes: Vec<pb::RemovalMode> = won
            .iter()
            .flat_map(|(_, r)| r.removed.iter().map(pb::RemovedIdentity::mode))
            .collect();
        if handling(i) == pb::LastIdentityHandling::Fail {
            if won.len() == 1 && refused.len() == 1 {
                fail_refused += 1;
                assert_eq!(modes, [pb::RemovalMode::Hard], "pair {i}");
                expected_state.insert(i, (refused[0], pb::IdentityState::Active));
            } else if refused.len() + won.len() == 2 {
                panic!(
                    "FAIL pair {i}: {} succeeded, {} refused",
                    won.len(),
                    refused.len()
                );
            }
        } else if won.len() == 2 {
            soft_soft += 1;
            let mut sorted = modes.clone();
            sorted.sort_by_key(|m| *m as i32);
            assert_eq!(
                sorted,
                [pb::RemovalMode::Hard, pb::RemovalMode::Soft],
                "pair {i}"
            );
            let soft = won
                .iter()
                .find(|(_, r)| r.removed[0].mode() == pb::RemovalMode::Soft)
                .map(|(provider, _)| *provider)
                .expect("a SOFT removal");
            expected_state.insert(i, (soft, pb::IdentityState::SoftRemoved));
        }
        successes.extend(won.into_iter().map(|(_, r)| r));
    }
    unexpected.assert_none();
    assert_eq!(
        fail_refused,
        PAIRS / 2,
        "every FAIL pair: one success, one refusal"
    );
    assert_eq!(soft_soft, PAIRS / 2, "every SOFT pair: two successes");

    // Every account: the one identity left, in the expected state. A SOFT
    // pair's identity is tried on the FAIL pair before it, as another
    // account logging in with it would.
    let checks: Vec<_> = stream::iter(0..PAIRS)
        .map(|i| {
            let mut client = replicas.connections(i);
            let (provider, state) = expected_state[&i];
            async move {
                let account = client
                    .get_account(pb::GetAccountRequest {
                        api_key: SITE.into(),
                        uid: uid(i),
                    })
                    .await
                    .expect("get account")
                    .into_inner()
                    .account
                    .expect("account");
                assert_eq!(account.identities.len(), 1, "pair {i}: {account:?}");
                let left = &account.identities[0];
                assert_eq!(left.provider, provider, "pair {i}");
                assert_eq!(left.state(), state, "pair {i}");
                if state == pb::IdentityState::Active {
                    assert_eq!(account.login_methods, 1, "pair {i}: {account:?}");
                    return;
                }
                // SOFT: not a way in, but still this account's.
                assert_eq!(account.login_methods, 0, "pair {i}: {account:?}");
                let taken = client
                    .link_connection(link(&uid(i - 1), provider, &left.provider_uid))
                    .await;
                let status = taken.expect_err("a soft-removed identity stays bound");
                assert!(
                    is_refusal(&status, Code::AlreadyExists, "IDENTITY_LINKED_ELSEWHERE"),
                    "pair {i}: {status:?}"
                );
                let back = client
                    .link_connection(link(&uid(i), provider, &left.provider_uid))
                    .await
                    .expect("log in again with the soft-removed identity")
                    .into_inner();
                assert!(back.reactivated, "pair {i}");
                assert_eq!(back.account.expect("account").login_methods, 1, "pair {i}");
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .collect()
        .await;
    assert_eq!(checks.len(), PAIRS);

    // One event per removed identity, under the call that removed it.
    replicas.sequenced(successes.len()).await;
    let by_call = replicas.events_by_call().await;
    for response in &successes {
        let events = by_call
            .get(&response.call_id)
            .map_or(&[][..], Vec::as_slice);
        let ids: Vec<&str> = events.iter().map(|e| e.event_id.as_str()).collect();
        let answered: Vec<&str> = response
            .removed
            .iter()
            .map(|r| r.event_id.as_str())
            .collect();
        assert_eq!(ids, answered, "events of call {}", response.call_id);
        for (event, removed) in events.iter().zip(&response.removed) {
            assert_eq!(event.mode, removed.mode, "call {}", response.call_id);
        }
    }
    let total: usize = by_call.values().map(Vec::len).sum();
    assert_eq!(total, successes.len(), "events vs successful removals");

    eprintln!(
        "concurrency: {PAIRS} last-two-ways-in pairs across 2 replicas ({} FAIL: one success \
         + one LAST_LOGIN_IDENTITY each; {} SOFT: HARD + SOFT each, mapping kept and \
         reactivated); {} removals = {total} events; 0 unexpected errors; populate {populated:.1?}, \
         races {raced:.1?}, total {:.1?}",
        PAIRS / 2,
        PAIRS / 2,
        successes.len(),
        started.elapsed()
    );
}

const LINK_RACES: usize = 500;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(postgres_tests), ignore = "needs CONNECTIONS_TEST_POSTGRES_URL")]
async fn two_accounts_linking_one_provider_identity_at_once_never_both_get_it() {
    let replicas = Replicas::start().await;
    let started = Instant::now();
    replicas.accounts("la-", LINK_RACES, true, &[]).await;
    replicas.accounts("lb-", LINK_RACES, true, &[]).await;
    let outcomes: Vec<_> = stream::iter(0..LINK_RACES)
        .map(|i| {
            let mut first = replicas.connections(i);
            let mut second = replicas.connections(i + 1);
            async move {
                let shared = format!("shared-{i}");
                let (a, b) = tokio::join!(
                    first.link_connection(link(&format!("la-{i}"), "facebook", &shared)),
                    second.link_connection(link(&format!("lb-{i}"), "facebook", &shared)),
                );
                (i, [("la", a), ("lb", b)])
            }
        })
        .buffer_unordered(IN_FLIGHT / 2)
        .collect()
        .await;
    let raced = started.elapsed();

    let mut unexpected = Unexpected::default();
    let mut winners = HashMap::new();
    for (i, pair) in outcomes {
        let mut won = Vec::new();
        let mut lost = 0;
        for (account, outcome) in pair {
            match outcome {
                Ok(_) => won.push(format!("{account}-{i}")),
                Err(status)
                    if is_refusal(&status, Code::AlreadyExists, "IDENTITY_LINKED_ELSEWHERE") =>
                {
                    lost += 1;
                }
                Err(status) => unexpected.note(&format!("race {i} {account}"), &status),
            }
        }
        if won.len() + lost == 2 {
            assert_eq!((won.len(), lost), (1, 1), "race {i}: exactly one link wins");
            winners.insert(format!("shared-{i}"), won);
        }
    }
    unexpected.assert_none();
    assert_eq!(winners.len(), LINK_RACES);
    assert_eq!(
        replicas.holders("shared").await,
        winners,
        "each shared identity is held by the winner alone"
    );
    eprintln!(
        "concurrency: {LINK_RACES} link races on one provider identity across 2 replicas: \
         {LINK_RACES} won, {LINK_RACES} ALREADY_EXISTS, no double link, 0 unexpected errors; \
         {raced:.1?}"
    );
}

const RETRIED_REQUESTS: usize = 200;
const COPIES: usize = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(postgres_tests), ignore = "needs CONNECTIONS_TEST_POSTGRES_URL")]
async fn one_request_id_sent_eight_times_at_once_acts_once_with_one_answer() {
    let replicas = Replicas::start().await;
    let started = Instant::now();
    replicas
        .accounts("idem-", RETRIED_REQUESTS, true, &[("facebook", "ifb")])
        .await;
    let outcomes: Vec<_> = stream::iter(0..RETRIED_REQUESTS)
        .map(|i| {
            let replicas = &replicas;
            let copies = (0..COPIES).map(move |copy| {
                let mut client = replicas.connections(copy);
                async move {
                    let mut request = remove(
                        &format!("idem-{i}"),
                        "facebook",
                        pb::LastIdentityHandling::Fail,
                    );
                    request.request_id = format!("req-{i}");
                    client
                        .remove_connection(request)
                        .await
                        .map(tonic::Response::into_inner)
                }
            });
            async move { (i, futures::future::join_all(copies).await) }
        })
        .buffer_unordered(IN_FLIGHT / COPIES)
        .collect()
        .await;
    let raced = started.elapsed();

    let mut unexpected = Unexpected::default();
    let mut firsts = Vec::new();
    for (i, answers) in outcomes {
        let mut answers = answers.into_iter().filter_map(|answer| {
            answer
                .map_err(|status| unexpected.note(&format!("request {i}"), &status))
                .ok()
        });
        let Some(first) = answers.next() else {
            continue;
        };
        assert_eq!(first.removed.len(), 1, "request {i}: {first:?}");
        for other in answers {
            assert_eq!(other, first, "request {i}: every answer is the first one");
        }
        firsts.push(first);
    }
    unexpected.assert_none();
    assert_eq!(firsts.len(), RETRIED_REQUESTS);
    assert!(
        replicas.holders("ifb").await.is_empty(),
        "every identity removed"
    );

    replicas.sequenced(RETRIED_REQUESTS).await;
    let by_call = replicas.events_by_call().await;
    for answer in &firsts {
        let events = by_call.get(&answer.call_id).map_or(&[][..], Vec::as_slice);
        assert_eq!(events.len(), 1, "call {}: {events:?}", answer.call_id);
        assert_eq!(events[0].event_id, answer.removed[0].event_id);
    }
    let total: usize = by_call.values().map(Vec::len).sum();
    assert_eq!(
        total, RETRIED_REQUESTS,
        "one event per request, not per copy"
    );
    eprintln!(
        "concurrency: {RETRIED_REQUESTS} request_ids sent {COPIES} times at once across 2 \
         replicas: {} identical answers, {total} events, 0 unexpected errors; {raced:.1?}",
        RETRIED_REQUESTS * COPIES
    );
}

/// Found by the race above while it still linked every soft-removed
/// identity to one account: calls queued behind one hot account's row lock
/// hold every pooled connection, a call waits for the pool past its acquire
/// timeout, and that timeout must not pass for a database outage (breaker
/// open, health NOT_SERVING, unrelated calls refused at once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(postgres_tests), ignore = "needs CONNECTIONS_TEST_POSTGRES_URL")]
async fn a_pool_saturated_by_one_hot_account_is_not_a_database_outage() {
    let backend = Backend::postgres();
    let _turn = TAKE_TURNS.lock().await;
    let app = crate::helpers::TestApp::spawn_with(&backend, |s| {
        s.pool.acquire_timeout = Duration::from_millis(300);
        s.pool.probe_interval = Duration::from_millis(100);
        s.security.rate_limit_per_second = 0.0;
    })
    .await;
    app.create_site(SITE, 5).await;
    app.create_account(SITE, "hot", &[("hot@example.com", true)])
        .await;
    app.link(SITE, "hot", "facebook", "", "fb-hot", None).await;

    // Health as a load balancer follows it.
    let watch = crate::helpers::HealthWatch::start(&app).await;

    // Another session holds the hot account's row; every removal of it
    // queues behind, each holding a pooled connection (32) or waiting for one.
    let db = sea_orm::Database::connect(app.database_url.as_str())
        .await
        .expect("connect");
    let holder = sea_orm::TransactionTrait::begin(&db).await.expect("begin");
    holder
        .execute_unprepared("SELECT id FROM accounts WHERE uid = 'hot' FOR UPDATE")
        .await
        .expect("lock the hot account");
    let finished = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let calls: Vec<_> = (0..48)
        .map(|_| {
            let mut client = app.connections();
            let finished = finished.clone();
            tokio::spawn(async move {
                let answer = client
                    .remove_connection(remove("hot", "facebook", pb::LastIdentityHandling::Fail))
                    .await;
                finished.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                answer
            })
        })
        .collect();
    // Wait (bounded) for the first call to give up on the pool, then keep
    // the pool saturated for a few probe intervals.
    let deadline = Instant::now() + PATIENCE;
    while finished.load(std::sync::atomic::Ordering::Acquire) == 0 {
        assert!(Instant::now() < deadline, "no call gave up on the pool");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    holder.rollback().await.expect("release the hot account");

    let mut answers = Vec::new();
    for call in calls {
        answers.push(call.await.expect("call task"));
    }
    let timed_out = answers
        .iter()
        .filter(|a| a.as_ref().is_err_and(|s| s.code() == Code::Unavailable))
        .count();
    let removed = answers.iter().filter(|a| a.is_ok()).count();
    assert!(timed_out > 0, "the pool was never saturated: {answers:?}");
    assert_eq!(removed, 1, "{answers:?}");
    let seen = watch.stop();
    assert_eq!(
        seen.first(),
        Some(&tonic_health::pb::health_check_response::ServingStatus::Serving),
        "the health watch saw nothing"
    );
    eprintln!(
        "hot account: 48 removals queued on one row lock, {timed_out} gave up on the pool \
         (UNAVAILABLE), health {seen:?}"
    );
    assert!(
        !seen.contains(&tonic_health::pb::health_check_response::ServingStatus::NotServing),
        "a busy pool was reported as a database outage: {seen:?}"
    );
}
