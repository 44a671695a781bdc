//! Who is calling and under which trace: carried from the gRPC layer into
//! the repository so that every event names its cause.

/// Facts about one call that end up in its events and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallContext {
    /// Unique per call; returned to the caller and put in events.
    pub call_id: String,
    /// The authenticated caller's name.
    pub actor: String,
    /// W3C trace context of the call's span, if any.
    pub traceparent: Option<String>,
}

impl CallContext {
    pub fn new(actor: impl Into<String>) -> Self {
        Self {
            call_id: uuid::Uuid::new_v4().simple().to_string(),
            actor: actor.into(),
            traceparent: None,
        }
    }
}
