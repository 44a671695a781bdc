//! The leader's JetStream session: open (or create) the stream, find where
//! to resume, then publish stamped events in position order with a bounded
//! window of acks in flight.

use std::{collections::VecDeque, future::IntoFuture, time::Duration};

use async_nats::{
    Client, ConnectOptions,
    jetstream::{
        self,
        context::{PublishAckFuture, PublishErrorKind},
        stream::{self, StorageType},
    },
};
use tokio::{sync::watch, time::Instant};

use super::{Backoff, message, subject};
use crate::{
    config::RelaySettings,
    domain::{EventFilter, SequencedEvent},
    events::Shutdown,
    storage::{Repository, events::LeaderLease, relay::RelayProgress},
    telemetry::metrics::RelayMetrics,
};

/// Publishes whose acks may be awaited at once.
pub const WINDOW: usize = 256;
/// Events read from the table per query.
const PAGE: u64 = 256;
/// How often, at most, progress is written while publishing continuously.
const STORE_EVERY: Duration = Duration::from_millis(200);
/// How often the leader checks that its lease connection still lives.
const LEASE_CHECK_EVERY: Duration = Duration::from_secs(2);
/// How long shutdown waits for the acks in flight.
pub(super) const DRAIN_ON_SHUTDOWN: Duration = Duration::from_secs(2);
/// JetStream's default duplicate window (deduplication by `Nats-Msg-Id`).
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// Why a session ended.
#[derive(Debug)]
pub(super) enum Ended {
    Shutdown,
    LostLease,
    /// NATS, the stream or the database failed; the reason is logged and
    /// the next session re-reads the stream's state.
    Failed(String),
}

/// A client that connects in the background and reconnects by itself, so
/// that a NATS server that is down at start-up delays nothing.
pub(super) async fn connect(settings: &RelaySettings) -> Result<Client, async_nats::ConnectError> {
    let (urls, credentials) = split_credentials(settings.url.expose());
    let options = ConnectOptions::new()
        .name("connections-relay")
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(settings.timeout)
        .request_timeout(Some(settings.timeout));
    let options = match credentials {
        Some(Credentials::UserPassword(user, password)) => {
            options.user_and_password(user, password)
        }
        Some(Credentials::Token(token)) => options.token(token),
        None => options,
    };
    options.connect(urls).await
}

#[derive(Debug, PartialEq, Eq)]
enum Credentials {
    UserPassword(String, String),
    Token(String),
}

/// Takes `user:password@` (or `token@`) out of the server URL(s): the
/// client takes credentials as options, and logs server addresses, which
/// must then hold no secret. Several URLs may be given, comma-separated.
fn split_credentials(urls: &str) -> (Vec<String>, Option<Credentials>) {
    let mut credentials = None;
    let bare = urls
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|raw| {
            let with_scheme = if raw.contains("://") {
                raw.to_owned()
            } else {
                format!("nats://{raw}")
            };
            let Ok(mut url) = url::Url::parse(&with_scheme) else {
                return raw.to_owned();
            };
            if !url.username().is_empty() {
                let user = url.username().to_owned();
                let found = match url.password() {
                    Some(password) => Credentials::UserPassword(user, password.to_owned()),
                    None => Credentials::Token(user),
                };
                credentials.get_or_insert(found);
                let _ = url.set_username("");
                let _ = url.set_password(None);
            }
            url.to_string()
        })
        .collect();
    (bare, credentials)
}

/// Where a session starts, from the stream's state and the table's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Start {
    /// Publish from `after + 1` on.
    Resume { after: u64 },
    /// The stream is empty and behind the table: move its next sequence to
    /// `first` (the earliest position still in the table), then publish.
    MoveTo { first: u64 },
    /// The stream holds messages but stops before the earliest position in
    /// the table: the positions between were pruned and cannot be relayed.
    Gap { stream_last: u64, earliest: u64 },
    /// The stream is ahead of the database: it was filled from another
    /// database, or the database was restored from a backup.
    Ahead { stream_last: u64, head: u64 },
}

/// Decides where to start (pure, so that it can be tested alone).
pub(crate) fn plan_start(messages: u64, stream_last: u64, table: RelayProgress) -> Start {
    let earliest = table.pruned_through + 1;
    if stream_last > table.last_position {
        Start::Ahead {
            stream_last,
            head: table.last_position,
        }
    } else if stream_last + 1 >= earliest {
        Start::Resume { after: stream_last }
    } else if messages == 0 {
        Start::MoveTo { first: earliest }
    } else {
        Start::Gap {
            stream_last,
            earliest,
        }
    }
}

pub(super) struct Publisher<'a> {
    pub(super) repo: &'a Repository,
    pub(super) settings: &'a RelaySettings,
    pub(super) metrics: &'static RelayMetrics,
    pub(super) client: Client,
    pub(super) lease: &'a mut Option<LeaderLease>,
    pub(super) head: &'a mut watch::Receiver<u64>,
    pub(super) shutdown: &'a Shutdown,
}

type AckFuture = <PublishAckFuture as IntoFuture>::IntoFuture;

/// Progress of one session.
struct Progress {
    /// Next position to publish.
    next: u64,
    /// Every position up to this one is acknowledged by JetStream.
    acked: u64,
    /// What `relayed_through` holds (as far as this session wrote it).
    stored: u64,
    stored_at: Instant,
}

impl Publisher<'_> {
    /// Opens the stream, resumes after its last sequence and publishes
    /// until something fails, the lease is lost or shutdown starts.
    pub(super) async fn session(&mut self, backoff: &mut Backoff) -> Ended {
        if !self.lease_alive().await {
            return Ended::LostLease;
        }
        let js = jetstream::ContextBuilder::new()
            .timeout(self.settings.timeout)
            .max_ack_inflight(WINDOW * 2)
            .backpressure_on_inflight(true)
            .build(self.client.clone());
        let after = match self.open(&js).await {
            Ok(after) => after,
            Err(reason) => return Ended::Failed(reason),
        };
        let offset = match self.sequence_offset(&js, after).await {
            Ok(offset) => offset,
            Err(reason) => return Ended::Failed(reason),
        };
        self.metrics.set_connected(true);
        tracing::info!(
            stream = %self.settings.stream,
            after,
            "relaying events to JetStream after the stream's last sequence"
        );
        self.pump(&js, after, offset, backoff).await
    }

    async fn lease_alive(&mut self) -> bool {
        match self.lease.as_mut() {
            Some(lease) => lease.is_alive().await,
            None => true,
        }
    }

    /// Gets or creates the stream and returns the last position it holds
    /// (after moving a new stream to the table's earliest position).
    async fn open(&self, js: &jetstream::Context) -> Result<u64, String> {
        let settings = self.settings;
        let wanted = subject::stream_subjects(&settings.subject_prefix);
        let duplicate_window = if settings.max_age.is_zero() {
            DUPLICATE_WINDOW
        } else {
            DUPLICATE_WINDOW.min(settings.max_age)
        };
        let stream = js
            .get_or_create_stream(stream::Config {
                name: settings.stream.clone(),
                description: Some(
                    "ConnectionRemoved events from the connections service; \
                     stream sequence = event position"
                        .into(),
                ),
                subjects: vec![wanted.clone()],
                storage: StorageType::File,
                num_replicas: settings.replicas,
                max_age: settings.max_age,
                duplicate_window,
                ..Default::default()
            })
            .await
            .map_err(|e| format!("cannot open stream {}: {e}", settings.stream))?;
        let info = stream.cached_info().clone();
        if !info.config.subjects.contains(&wanted) {
            return Err(format!(
                "stream {} exists but does not take subjects {wanted} (it takes {:?})",
                settings.stream, info.config.subjects
            ));
        }
        let table = self
            .repo
            .relay_progress()
            .await
            .map_err(|e| format!("cannot read relay progress: {e}"))?;
        match plan_start(info.state.messages, info.state.last_sequence, table) {
            Start::Resume { after } => {
                self.check_same_database(&stream, after).await?;
                Ok(after)
            }
            Start::MoveTo { first } => {
                stream.purge().sequence(first).await.map_err(|e| {
                    format!("cannot move stream {} to {first}: {e}", settings.stream)
                })?;
                let state = stream
                    .get_info()
                    .await
                    .map_err(|e| format!("cannot read stream {}: {e}", settings.stream))?
                    .state;
                if state.last_sequence + 1 != first {
                    return Err(format!(
                        "stream {}: the server did not move the next sequence to {first} \
                         (last sequence {})",
                        settings.stream, state.last_sequence
                    ));
                }
                tracing::info!(stream = %settings.stream, first, "new stream starts at the earliest position in the table");
                Ok(first - 1)
            }
            Start::Gap {
                stream_last,
                earliest,
            } => Err(format!(
                "stream {} ends at {stream_last} but positions up to {} were pruned from the \
                 database: they cannot be relayed. Purge or delete the stream to restart it \
                 at position {earliest}",
                settings.stream,
                earliest - 1
            )),
            Start::Ahead { stream_last, head } => Err(format!(
                "stream {} is at {stream_last}, ahead of this database (head {head}): it was \
                 filled from another database. Use another stream (--nats-stream)",
                settings.stream
            )),
        }
    }

    /// How far the server's own count of the stream's last sequence (what
    /// `Nats-Expected-Last-Sequence` is checked against) is behind the
    /// stream's real last sequence `last`. Zero, except on servers before
    /// 2.10 after a purge with `seq` moved an empty stream's first sequence:
    /// they count the messages stored since, until they restart. A probe
    /// that expects an impossible sequence is refused (never stored) with
    /// that count.
    async fn sequence_offset(&self, js: &jetstream::Context, last: u64) -> Result<u64, String> {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            async_nats::header::NATS_EXPECTED_LAST_SEQUENCE,
            u64::MAX.to_string(),
        );
        let probe = subject::subject(&self.settings.subject_prefix, "", "");
        let answer = js
            .publish_with_headers(probe, headers, bytes::Bytes::new())
            .await
            .map_err(|e| format!("cannot probe stream {}: {e}", self.settings.stream))?
            .await;
        let counted = match answer {
            Err(err) if err.kind() == PublishErrorKind::WrongLastSequence => {
                server_last_sequence(&err.to_string())
            }
            Err(err) => {
                return Err(format!(
                    "cannot probe stream {}: {err}",
                    self.settings.stream
                ));
            }
            Ok(ack) => {
                return Err(format!(
                    "stream {} stored a probe at sequence {}",
                    self.settings.stream, ack.sequence
                ));
            }
        };
        match counted {
            Some(counted) if counted <= last => {
                let offset = last - counted;
                if offset > 0 {
                    tracing::info!(
                        stream = %self.settings.stream,
                        offset,
                        "the server counts this stream's sequences from its first sequence \
                         (nats-server before 2.10): expected sequences are shifted to match"
                    );
                }
                Ok(offset)
            }
            Some(counted) => Err(format!(
                "stream {}: the server counts {counted} messages, beyond its last sequence {last}",
                self.settings.stream
            )),
            // Unknown answer format: assume a server that counts right.
            None => Ok(0),
        }
    }

    /// Refuses a stream whose last message is not this database's event at
    /// that position (when both are still there).
    async fn check_same_database(&self, stream: &stream::Stream, last: u64) -> Result<(), String> {
        if last == 0 {
            return Ok(());
        }
        let Some(ours) = self
            .repo
            .event_id_at(last)
            .await
            .map_err(|e| format!("cannot read event {last}: {e}"))?
        else {
            return Ok(());
        };
        let theirs = match stream.get_raw_message(last).await {
            Ok(message) => message
                .headers
                .get(async_nats::header::NATS_MESSAGE_ID)
                .map(|v| v.as_str().to_owned()),
            Err(err) if err.kind() == stream::RawMessageErrorKind::NoMessageFound => return Ok(()),
            Err(err) => return Err(format!("cannot read stream message {last}: {err}")),
        };
        match theirs {
            Some(id) if id == ours => Ok(()),
            // Aged out or deleted by an operator: nothing to compare with.
            None => Ok(()),
            Some(id) => Err(format!(
                "stream {} holds event {id} at {last} where this database has {ours}: it was \
                 filled from another database. Use another stream (--nats-stream)",
                self.settings.stream
            )),
        }
    }

    /// Publishes from `after + 1` on, forever (until an error, the loss of
    /// the lease or shutdown).
    async fn pump(
        &mut self,
        js: &jetstream::Context,
        after: u64,
        offset: u64,
        backoff: &mut Backoff,
    ) -> Ended {
        let everything = EventFilter::default();
        let mut progress = Progress {
            next: after + 1,
            acked: after,
            stored: 0,
            stored_at: Instant::now(),
        };
        // The stream may be ahead of `relayed_through` (a crash between an
        // ack and its write): record that at once so retention can go on.
        self.store(&mut progress).await;
        let mut inflight: VecDeque<(u64, AckFuture)> = VecDeque::with_capacity(WINDOW);
        let mut pending: VecDeque<SequencedEvent> = VecDeque::new();
        let mut lease_checked = Instant::now();
        let mut poll = tokio::time::interval(self.settings.poll_interval);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut head_open = true;
        loop {
            if self.shutdown.is_raised() {
                let drained = tokio::time::timeout(
                    DRAIN_ON_SHUTDOWN,
                    self.drain(&mut inflight, &mut progress),
                )
                .await;
                if !matches!(drained, Ok(Ok(()))) {
                    tracing::debug!(
                        "acks still in flight at shutdown; the next leader re-reads the stream"
                    );
                }
                self.store(&mut progress).await;
                return Ended::Shutdown;
            }
            if lease_checked.elapsed() >= LEASE_CHECK_EVERY {
                if !self.lease_alive().await {
                    return Ended::LostLease;
                }
                lease_checked = Instant::now();
            }
            if pending.is_empty() {
                let page = match self
                    .repo
                    .events_after(progress.next - 1, &everything, PAGE)
                    .await
                {
                    Ok(page) => page,
                    Err(err) => {
                        self.store(&mut progress).await;
                        return Ended::Failed(format!("cannot read events: {err}"));
                    }
                };
                if page.is_empty() {
                    // Caught up: collect every ack, then sleep until the
                    // head moves (or the safety-net poll). The progress is
                    // written at most every STORE_EVERY, not on every
                    // catch-up (under load, once per event): its row is the
                    // one the sequencer's stamp locks.
                    if let Err(reason) = self.drain(&mut inflight, &mut progress).await {
                        self.store(&mut progress).await;
                        return Ended::Failed(reason);
                    }
                    self.store_when_due(&mut progress).await;
                    let store_due = progress.stored_at + STORE_EVERY;
                    tokio::select! {
                        () = self.shutdown.raised() => {}
                        changed = self.head.changed(), if head_open => {
                            if changed.is_err() {
                                head_open = false;
                            }
                        }
                        () = tokio::time::sleep_until(store_due),
                            if progress.acked > progress.stored =>
                        {
                            self.store(&mut progress).await;
                        }
                        _ = poll.tick() => {}
                    }
                    continue;
                }
                pending.extend(page);
            }
            let Some(event) = pending.pop_front() else {
                continue;
            };
            if event.position != progress.next {
                self.store(&mut progress).await;
                return Ended::Failed(format!(
                    "expected position {} in the table, found {}",
                    progress.next, event.position
                ));
            }
            while inflight.len() >= WINDOW {
                if let Err(reason) = self.ack_front(&mut inflight, &mut progress).await {
                    self.store(&mut progress).await;
                    return Ended::Failed(reason);
                }
            }
            let expected = event.position - 1 - offset;
            let out = message::outgoing(
                event,
                &self.settings.subject_prefix,
                self.settings.format,
                expected,
            );
            match js
                .publish_with_headers(out.subject, out.headers, out.payload)
                .await
            {
                Ok(ack) => inflight.push_back((out.position, ack.into_future())),
                Err(err) => {
                    self.store(&mut progress).await;
                    return Ended::Failed(format!(
                        "cannot publish position {}: {err}",
                        out.position
                    ));
                }
            }
            progress.next += 1;
            if progress.acked > after {
                // Something went through: the next failure starts the
                // backoff afresh. (Not before: a stream that refuses every
                // message must not be retried in a tight loop.)
                backoff.reset();
            }
            self.store_when_due(&mut progress).await;
        }
    }

    /// Awaits the oldest ack in flight.
    async fn ack_front(
        &self,
        inflight: &mut VecDeque<(u64, AckFuture)>,
        progress: &mut Progress,
    ) -> Result<(), String> {
        let Some((position, ack)) = inflight.pop_front() else {
            return Ok(());
        };
        match ack.await {
            // A duplicate (same Nats-Msg-Id within the window) answers with
            // the sequence of the copy already stored: the same position.
            Ok(ack) if ack.sequence == position => {
                progress.acked = position;
                self.metrics.published(1);
                Ok(())
            }
            Ok(ack) => Err(format!(
                "JetStream stored position {position} as sequence {}",
                ack.sequence
            )),
            Err(err) if err.kind() == PublishErrorKind::WrongLastSequence => Err(format!(
                "position {position}: the stream's last sequence is not {}; re-reading its state",
                position - 1
            )),
            Err(err) => Err(format!("no ack for position {position}: {err}")),
        }
    }

    /// Awaits every ack in flight, in order.
    async fn drain(
        &self,
        inflight: &mut VecDeque<(u64, AckFuture)>,
        progress: &mut Progress,
    ) -> Result<(), String> {
        while !inflight.is_empty() {
            self.ack_front(inflight, progress).await?;
        }
        Ok(())
    }

    /// Writes `relayed_through` once STORE_EVERY has passed since the last
    /// write; until then only the metric moves.
    async fn store_when_due(&self, progress: &mut Progress) {
        if progress.stored_at.elapsed() >= STORE_EVERY {
            self.store(progress).await;
        } else {
            self.metrics.set_relayed_position(progress.acked);
        }
    }

    /// Writes `relayed_through` when it moved (failures are retried later:
    /// a stale value only holds retention back).
    async fn store(&self, progress: &mut Progress) {
        self.metrics.set_relayed_position(progress.acked);
        if progress.acked <= progress.stored && progress.stored != 0 {
            return;
        }
        match self.repo.set_relayed_through(progress.acked).await {
            Ok(()) => {
                progress.stored = progress.acked;
                progress.stored_at = Instant::now();
            }
            Err(err) => tracing::warn!(error = %err, "cannot record relay progress; will retry"),
        }
    }
}

/// The sequence in a "wrong last sequence: N" refusal.
fn server_last_sequence(refusal: &str) -> Option<u64> {
    const MARK: &str = "wrong last sequence: ";
    let at = refusal.rfind(MARK)? + MARK.len();
    let digits: String = refusal
        .get(at..)?
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_leave_the_urls() {
        assert_eq!(
            split_credentials("nats://u:p%40ss@127.0.0.1:4222"),
            (
                vec!["nats://127.0.0.1:4222".to_owned()],
                Some(Credentials::UserPassword("u".into(), "p%40ss".into()))
            )
        );
        assert_eq!(
            split_credentials("tok@h1:4222, nats://h2:4222"),
            (
                vec!["nats://h1:4222".to_owned(), "nats://h2:4222".to_owned()],
                Some(Credentials::Token("tok".into()))
            )
        );
        assert_eq!(
            split_credentials("nats://127.0.0.1:4222"),
            (vec!["nats://127.0.0.1:4222".to_owned()], None)
        );
    }

    #[test]
    fn the_servers_count_is_read_from_its_refusal() {
        assert_eq!(
            server_last_sequence(
                "wrong last sequence: wrong last sequence: 3 (code 400, error code 10071)"
            ),
            Some(3)
        );
        assert_eq!(server_last_sequence("wrong last sequence: 0"), Some(0));
        assert_eq!(server_last_sequence("wrong last sequence"), None);
        assert_eq!(server_last_sequence("timed out"), None);
    }

    fn table(last_position: u64, pruned_through: u64) -> RelayProgress {
        RelayProgress {
            last_position,
            pruned_through,
            relayed_through: None,
        }
    }

    #[test]
    fn a_stream_resumes_after_its_last_sequence() {
        assert_eq!(plan_start(0, 0, table(0, 0)), Start::Resume { after: 0 });
        assert_eq!(plan_start(0, 0, table(10, 0)), Start::Resume { after: 0 });
        assert_eq!(plan_start(7, 7, table(10, 0)), Start::Resume { after: 7 });
        // Behind the table's head but not before its earliest event.
        assert_eq!(plan_start(3, 7, table(10, 7)), Start::Resume { after: 7 });
        // Messages aged out of the stream: the sequence still says where it is.
        assert_eq!(plan_start(0, 9, table(10, 9)), Start::Resume { after: 9 });
    }

    #[test]
    fn an_empty_stream_behind_the_table_moves_to_its_earliest_position() {
        assert_eq!(plan_start(0, 0, table(15, 10)), Start::MoveTo { first: 11 });
        assert_eq!(plan_start(0, 4, table(15, 10)), Start::MoveTo { first: 11 });
    }

    #[test]
    fn gaps_and_foreign_streams_are_refused() {
        assert_eq!(
            plan_start(4, 4, table(15, 10)),
            Start::Gap {
                stream_last: 4,
                earliest: 11
            }
        );
        assert_eq!(
            plan_start(20, 20, table(15, 0)),
            Start::Ahead {
                stream_last: 20,
                head: 15
            }
        );
    }
}
