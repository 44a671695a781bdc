//! Events that cannot be read or stamped hold live delivery at their
//! position, since nothing is ever skipped: a stored event that does not
//! decode (written into the table by hand, or damaged) stops the fan-out; on
//! PostgreSQL a row that took the next position by hand stops the
//! sequencer. Each retries with a back-off instead of on every commit (each
//! of which wakes them), and everything is delivered in order once the
//! table is repaired. Read from a real server process and its log.

use std::time::{Duration, Instant};

use connections::proto::v1::{
    self as pb, admin_service_client::AdminServiceClient,
    connection_service_client::ConnectionServiceClient, event_service_client::EventServiceClient,
    subscribe_response::Message,
};
use sea_orm::{ConnectionTrait, Database, DatabaseConnection};
use tonic::{Streaming, transport::Channel};

use crate::{helpers::Backend, process::ServerProcess};

const SITE: &str = "3_unreadable";
/// Removals committed while the unreadable event is in the table.
const REMOVALS: usize = 40;
const WARNING: &str = "cannot read new events";
const STAMP_WARNING: &str = "sequencing failed";
const PATIENCE: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_event_is_retried_with_back_off_and_delivered_once_repaired() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("c.db").display());
    let (server, channel, mut events) = serve_with_subscriber(&url, REMOVALS).await;

    // The next position, taken by hand with a payload that is not an event.
    let db = Database::connect(&url).await.expect("open the database");
    let poison = run(
        &db,
        "UPDATE event_sequence SET last_position = last_position + 1 WHERE id = 1 \
         RETURNING last_position",
    )
    .await;
    run(
        &db,
        &format!(
            "INSERT INTO events (position, event_id, occurred_at, api_key, provider, source, \
             payload) VALUES ({poison}, 'hand-written', '2026-11-29T00:00:00Z', '{SITE}', \
             'facebook', 'RemoveConnection', 'not an event') RETURNING position"
        ),
    )
    .await;

    let poisoned = Instant::now();
    let mut connections = ConnectionServiceClient::new(channel.clone());
    for uid in 0..REMOVALS {
        remove(&mut connections, uid).await;
    }
    // Every commit wakes the fan-out; without the back-off each one read
    // the table again and failed again.
    retried_with_back_off(&server, WARNING, poisoned);

    // Repaired (here: given a real event's payload), the held positions
    // are delivered in order, the repaired one included.
    let first_real = run(
        &db,
        &format!("SELECT MIN(position) FROM events WHERE position > {poison}"),
    )
    .await;
    run(
        &db,
        &format!(
            "UPDATE events SET payload = (SELECT payload FROM events WHERE position = \
             {first_real}) WHERE position = {poison} RETURNING position"
        ),
    )
    .await;
    delivered_in_order(&server, &mut events, poison, "reading new events again").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(postgres_tests), ignore = "needs CONNECTIONS_TEST_POSTGRES_URL")]
async fn a_stamp_that_keeps_failing_is_retried_with_back_off_and_resumes_once_repaired() {
    let (url, _database) = Backend::postgres().fresh_database().await;
    let (server, channel, mut events) = serve_with_subscriber(&url, REMOVALS + 1).await;
    let mut connections = ConnectionServiceClient::new(channel.clone());
    remove(&mut connections, 0).await;
    assert_eq!(next_events(&mut events, 1).await, vec![1]);

    // The position the sequencer gives next, taken by hand (a copy of the
    // first event) without moving the sequence: every stamp now collides.
    let db = Database::connect(&url).await.expect("open the database");
    let taken = run(
        &db,
        "INSERT INTO events (position, event_id, occurred_at, api_key, provider, source, \
         payload) SELECT q.last_position + 1, 'hand-written', e.occurred_at, e.api_key, \
         e.provider, e.source, e.payload FROM events e, event_sequence q \
         WHERE e.position = 1 AND q.id = 1 RETURNING position",
    )
    .await;
    let poisoned = Instant::now();
    for uid in 1..=REMOVALS {
        remove(&mut connections, uid).await;
    }
    retried_with_back_off(&server, STAMP_WARNING, poisoned);

    run(
        &db,
        "UPDATE event_sequence SET last_position = last_position + 1 WHERE id = 1 \
         RETURNING last_position",
    )
    .await;
    delivered_in_order(&server, &mut events, taken, "sequencing again").await;
}

/// A server on `url` with the site, `accounts` accounts (uids 0..) each with
/// a facebook identity, and a subscription to live events.
async fn serve_with_subscriber(
    url: &str,
    accounts: usize,
) -> (ServerProcess, Channel, Streaming<pb::SubscribeResponse>) {
    let server = ServerProcess::start_logging(url, &[], "info").await;
    let channel = server.channel();
    AdminServiceClient::new(channel.clone())
        .upsert_site(pb::UpsertSiteRequest {
            api_key: SITE.into(),
            vhost: 77,
            ..Default::default()
        })
        .await
        .expect("UpsertSite");
    for uid in 0..accounts {
        link(&channel, uid).await;
    }
    let events = EventServiceClient::new(channel.clone())
        .subscribe(pb::SubscribeRequest {
            start_from: pb::StartFrom::Now.into(),
            ..Default::default()
        })
        .await
        .expect("Subscribe")
        .into_inner();
    (server, channel, events)
}

/// The held events, once repaired: the next `REMOVALS + 1` on the stream are
/// the positions from `first` on, in order, and the server logged
/// `recovery`.
async fn delivered_in_order(
    server: &ServerProcess,
    events: &mut Streaming<pb::SubscribeResponse>,
    first: u64,
    recovery: &str,
) {
    let delivered = next_events(events, REMOVALS + 1).await;
    let expected: Vec<u64> = (first..).take(REMOVALS + 1).collect();
    assert_eq!(delivered, expected);
    let log = server.log();
    assert!(log.contains(recovery), "no recovery logged:\n{log}");
}

/// At least one `warning` in the server's log since `since`, and no more
/// than the back-off allows: waits of 20, 40, ... ms up to the poll
/// interval (1 s), so 7 attempts in the first 1.26 s, then one a second (and
/// one for the rounding), however many commits woke the task.
fn retried_with_back_off(server: &ServerProcess, warning: &str, since: Instant) {
    let log = server.log();
    let warnings = log.lines().filter(|l| l.contains(warning)).count();
    assert!(warnings >= 1, "no {warning:?} in the log:\n{log}");
    let allowed = 8 + usize::try_from(since.elapsed().as_secs()).unwrap_or(usize::MAX);
    assert!(
        warnings <= allowed,
        "{warnings} failures for {REMOVALS} removals in {:?}:\n{log}",
        since.elapsed()
    );
}

async fn remove(connections: &mut ConnectionServiceClient<Channel>, uid: usize) {
    connections
        .remove_connection(pb::RemoveConnectionRequest {
            api_key: SITE.into(),
            uid: uid.to_string(),
            provider: Some("facebook".into()),
            ..Default::default()
        })
        .await
        .expect("RemoveConnection");
}

async fn link(channel: &Channel, uid: usize) {
    let uid = uid.to_string();
    AdminServiceClient::new(channel.clone())
        .upsert_account(pb::UpsertAccountRequest {
            api_key: SITE.into(),
            uid: uid.clone(),
            login_ids: vec![pb::LoginId {
                login_id: format!("{uid}@example.com"),
                has_password: true,
            }],
        })
        .await
        .expect("UpsertAccount");
    ConnectionServiceClient::new(channel.clone())
        .link_connection(pb::LinkConnectionRequest {
            api_key: SITE.into(),
            uid: uid.clone(),
            provider: "facebook".into(),
            provider_uid: format!("fb-{uid}"),
            ..Default::default()
        })
        .await
        .expect("LinkConnection");
}

/// Runs `sql` and returns the first column of its one row.
async fn run(db: &DatabaseConnection, sql: &str) -> u64 {
    let row = db
        .query_one_raw(sea_orm::Statement::from_string(
            db.get_database_backend(),
            sql,
        ))
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .unwrap_or_else(|| panic!("{sql}: no row"));
    let value: i64 = row.try_get_by_index(0).expect("an integer");
    u64::try_from(value).expect("not negative")
}

/// The positions of the next `count` events on the stream (heartbeats and
/// the caught-up mark skipped).
async fn next_events(events: &mut Streaming<pb::SubscribeResponse>, count: usize) -> Vec<u64> {
    let started = Instant::now();
    let mut positions = Vec::new();
    while positions.len() < count {
        let left = PATIENCE.saturating_sub(started.elapsed());
        let next = tokio::time::timeout(left, events.message())
            .await
            .unwrap_or_else(|_| panic!("only {positions:?} within {PATIENCE:?}"))
            .expect("the stream")
            .expect("an open stream");
        if let Some(Message::Event(event)) = next.message {
            positions.push(event.position);
        }
    }
    positions
}
