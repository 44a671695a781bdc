//! The `ConnectionRemoved` event as the domain knows it: what the outbox
//! stores and subscribers receive. It never holds provider session data.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RemovalMode {
    /// Row and session data deleted.
    Hard,
    /// Session data wiped, provider mapping kept.
    Soft,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventSource {
    RemoveConnection,
    UnlinkAccount,
}

impl EventSource {
    /// The stored form, used for filtering in SQL.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RemoveConnection => "REMOVE_CONNECTION",
            Self::UnlinkAccount => "UNLINK_ACCOUNT",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionRemoved {
    pub event_id: String,
    #[serde(deserialize_with = "rfc3339::deserialize")]
    pub occurred_at: DateTime<Utc>,
    pub api_key: String,
    pub vhost: i64,
    pub uid: String,
    pub provider: String,
    pub sub_provider: String,
    pub provider_uid: String,
    pub mode: RemovalMode,
    pub removed_login_ids: Vec<String>,
    pub provider_logout_requested: bool,
    pub source: EventSource,
    pub cid: Option<String>,
    pub call_id: String,
    pub actor: String,
    pub remaining_login_methods: u32,
    pub traceparent: Option<String>,
}

/// Reads the time as chrono writes it (RFC 3339) with chrono's dedicated
/// RFC 3339 parser, and without copying the string. chrono's own
/// `Deserialize` goes through its general format parser, which was a
/// quarter of decoding a stored event and so of a replay's CPU. Anything
/// else chrono's `Deserialize` accepted is still accepted.
mod rfc3339 {
    use std::fmt;

    use chrono::{DateTime, FixedOffset, Utc};
    use serde::{Deserializer, de};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        d.deserialize_str(Rfc3339Visitor)
    }

    struct Rfc3339Visitor;

    impl de::Visitor<'_> for Rfc3339Visitor {
        type Value = DateTime<Utc>;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an RFC 3339 date and time")
        }

        fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
            DateTime::parse_from_rfc3339(text)
                .or_else(|_| text.parse::<DateTime<FixedOffset>>())
                .map(|time| time.with_timezone(&Utc))
                .map_err(E::custom)
        }
    }
}

/// An event with the position the sequencer gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SequencedEvent {
    pub position: u64,
    pub event: ConnectionRemoved,
}

/// What a subscriber wants to receive. `None` means "no restriction"; an
/// empty set means "nothing" (a caller scoped to no site).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventFilter {
    /// Already restricted to the caller's site scope.
    pub api_keys: Option<BTreeSet<String>>,
    /// Canonical (lower-case) provider names.
    pub providers: Option<BTreeSet<String>>,
    pub sources: Option<BTreeSet<EventSource>>,
}

impl EventFilter {
    /// The same test as the SQL filter, for events that arrive live.
    pub fn matches(&self, event: &ConnectionRemoved) -> bool {
        self.api_keys
            .as_ref()
            .is_none_or(|keys| keys.contains(&event.api_key))
            && self
                .providers
                .as_ref()
                .is_none_or(|p| p.contains(&event.provider))
            && self
                .sources
                .as_ref()
                .is_none_or(|s| s.contains(&event.source))
    }
}

impl PartialOrd for EventSource {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for EventSource {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

#[cfg(test)]
impl ConnectionRemoved {
    /// A made-up event for unit tests.
    pub(crate) fn sample(api_key: &str, provider: &str, source: EventSource) -> Self {
        Self {
            event_id: "e".into(),
            occurred_at: Utc::now(),
            api_key: api_key.into(),
            vhost: 1,
            uid: "u".into(),
            provider: provider.into(),
            sub_provider: String::new(),
            provider_uid: "p".into(),
            mode: RemovalMode::Hard,
            removed_login_ids: vec![],
            provider_logout_requested: false,
            source,
            cid: None,
            call_id: "c".into(),
            actor: "a".into(),
            remaining_login_methods: 1,
            traceparent: None,
        }
    }
}

#[cfg(test)]
impl SequencedEvent {
    /// A made-up event at `position`, for unit tests.
    pub(crate) fn sample(position: u64) -> Self {
        Self {
            position,
            event: ConnectionRemoved::sample("k", "facebook", EventSource::RemoveConnection),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_times_read_back_exactly() {
        let mut event = ConnectionRemoved::sample("k", "facebook", EventSource::RemoveConnection);
        for text in [
            "2026-11-28T16:11:44.698055123Z",
            "2026-11-28T16:11:44Z",
            "2026-11-28T17:11:44.5+01:00",
        ] {
            event.occurred_at = DateTime::parse_from_rfc3339(text)
                .map(|t| t.with_timezone(&Utc))
                .unwrap_or_else(|err| panic!("{text}: {err}"));
            let json = serde_json::to_string(&event).unwrap_or_else(|err| panic!("{err}"));
            let back: ConnectionRemoved = serde_json::from_str(&json).unwrap_or_else(|err| {
                panic!("{json}: {err}");
            });
            assert_eq!(back, event, "{text}");
        }
        // Chrono's own Deserialize accepted a space for the `T`; so does this.
        let json = serde_json::to_string(&event)
            .unwrap_or_default()
            .replace("-28T16:", "-28 16:");
        assert!(json.contains("-28 16:"), "{json}");
        let back: ConnectionRemoved = serde_json::from_str(&json).unwrap_or_else(|err| {
            panic!("{json}: {err}");
        });
        assert_eq!(back.occurred_at, event.occurred_at);
        let bad = json.replace("2026-11-28 16:", "yesterday ");
        assert!(serde_json::from_str::<ConnectionRemoved>(&bad).is_err());
    }

    #[test]
    fn an_empty_filter_matches_everything() {
        let filter = EventFilter::default();
        assert!(filter.matches(&ConnectionRemoved::sample(
            "k",
            "facebook",
            EventSource::UnlinkAccount
        )));
    }

    #[test]
    fn every_restriction_must_match() {
        let filter = EventFilter {
            api_keys: Some(["k1".to_owned()].into()),
            providers: Some(["facebook".to_owned()].into()),
            sources: Some([EventSource::RemoveConnection].into()),
        };
        assert!(filter.matches(&ConnectionRemoved::sample(
            "k1",
            "facebook",
            EventSource::RemoveConnection
        )));
        assert!(!filter.matches(&ConnectionRemoved::sample(
            "k2",
            "facebook",
            EventSource::RemoveConnection
        )));
        assert!(!filter.matches(&ConnectionRemoved::sample(
            "k1",
            "google",
            EventSource::RemoveConnection
        )));
        assert!(!filter.matches(&ConnectionRemoved::sample(
            "k1",
            "facebook",
            EventSource::UnlinkAccount
        )));
    }

    #[test]
    fn a_scope_of_no_site_matches_nothing() {
        let filter = EventFilter {
            api_keys: Some(BTreeSet::new()),
            ..EventFilter::default()
        };
        assert!(!filter.matches(&ConnectionRemoved::sample(
            "k1",
            "facebook",
            EventSource::RemoveConnection
        )));
    }
}

/// Where a subscription starts, as requested.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartFrom {
    Beginning,
    Now,
    AfterPosition(u64),
    /// After the consumer's committed position (`committed`: none yet means
    /// from the beginning).
    Consumer {
        committed: Option<u64>,
    },
}

/// One item of a subscription stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamItem {
    Event(Box<SequencedEvent>),
    Heartbeat {
        head_position: u64,
        time: DateTime<Utc>,
    },
    CaughtUp {
        head_position: u64,
    },
}

/// The cursor (last position not wanted) a subscription starts after, given
/// the head and the pruning horizon. Positions up to `pruned_through` are gone:
/// resuming after one of them would silently skip events.
pub fn start_cursor(
    start: &StartFrom,
    head: u64,
    pruned_through: u64,
) -> Result<u64, super::DomainError> {
    let resume = |position: u64| {
        if position < pruned_through {
            Err(super::DomainError::PositionPruned {
                requested: position,
                earliest: pruned_through + 1,
            })
        } else {
            Ok(position)
        }
    };
    match *start {
        StartFrom::Beginning | StartFrom::Consumer { committed: None } => Ok(0),
        StartFrom::Now => Ok(head),
        StartFrom::AfterPosition(p) if p > head => Err(super::DomainError::invalid(
            "after_position",
            format!("{p} is beyond the head position {head}"),
        )),
        StartFrom::AfterPosition(p) | StartFrom::Consumer { committed: Some(p) } => resume(p),
    }
}

#[cfg(test)]
mod start_tests {
    use super::*;
    use crate::domain::DomainError;

    #[test]
    fn starts_resolve_against_head_and_horizon() {
        assert_eq!(start_cursor(&StartFrom::Beginning, 9, 4), Ok(0));
        assert_eq!(start_cursor(&StartFrom::Now, 9, 4), Ok(9));
        assert_eq!(start_cursor(&StartFrom::AfterPosition(4), 9, 4), Ok(4));
        assert_eq!(start_cursor(&StartFrom::AfterPosition(9), 9, 4), Ok(9));
        assert_eq!(
            start_cursor(&StartFrom::Consumer { committed: None }, 9, 4),
            Ok(0)
        );
        assert_eq!(
            start_cursor(&StartFrom::Consumer { committed: Some(7) }, 9, 4),
            Ok(7)
        );
    }

    #[test]
    fn resuming_inside_the_pruned_range_is_refused() {
        assert_eq!(
            start_cursor(&StartFrom::AfterPosition(3), 9, 4),
            Err(DomainError::PositionPruned {
                requested: 3,
                earliest: 5
            })
        );
        assert!(matches!(
            start_cursor(&StartFrom::Consumer { committed: Some(0) }, 9, 4),
            Err(DomainError::PositionPruned { earliest: 5, .. })
        ));
    }

    #[test]
    fn positions_beyond_the_head_are_invalid() {
        assert!(matches!(
            start_cursor(&StartFrom::AfterPosition(10), 9, 0),
            Err(DomainError::InvalidParameter {
                field: "after_position",
                ..
            })
        ));
    }
}
