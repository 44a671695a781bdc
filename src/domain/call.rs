//! The cause of a change, as its events record it: which call, by whom,
//! under which trace. Built by `access::CallContext::origin`.

/// Facts about one call that end up in its events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallOrigin {
    /// Unique per call; returned to the caller and put in events.
    pub call_id: String,
    /// The authenticated caller's name.
    pub actor: String,
    /// W3C trace context of the call's span, if any.
    pub traceparent: Option<String>,
}
