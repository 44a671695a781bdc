//! The `ConnectionRemoved` event as the domain knows it: what the outbox
//! stores and subscribers receive. It never holds provider session data.

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

/// An event with the position the sequencer gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SequencedEvent {
    pub position: u64,
    pub event: ConnectionRemoved,
}
