//! One call, whichever door it came in by: its id, its caller, its trace
//! context and its deadline. Doors build a [`CallContext`]; application
//! services read it; events and logs name the call by it.

use std::time::Instant;

use super::{Caller, SiteScope};
use crate::domain::CallOrigin;

/// Header (gRPC metadata or HTTP response header) carrying the call id.
pub const CALL_ID_HEADER: &str = "x-call-id";

/// Name used for the actor when the server runs without authentication.
pub const ANONYMOUS_ACTOR: &str = "anonymous";

/// The call's id, made by a door's per-call layer so that its span, its
/// logs, the response and the events all name the call the same way.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallId(pub String);

impl CallId {
    pub fn generate() -> Self {
        Self(uuid::Uuid::new_v4().simple().to_string())
    }
}

/// The W3C traceparent of the call's span.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceParent(pub String);

/// Everything a service needs to know about the call besides its request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallContext {
    pub call_id: String,
    /// The admitted caller ([`Caller::anonymous`] in open mode).
    pub caller: Caller,
    pub traceparent: Option<String>,
    /// When the client stops waiting, if it said so.
    pub deadline: Option<Instant>,
}

impl CallContext {
    /// A call with a fresh id; doors replace the id with their layer's.
    pub fn new(caller: Caller) -> Self {
        Self {
            call_id: CallId::generate().0,
            caller,
            traceparent: None,
            deadline: None,
        }
    }

    pub fn actor(&self) -> &str {
        &self.caller.name
    }

    pub fn scope(&self) -> &SiteScope {
        &self.caller.sites
    }

    /// What the call's events record about their cause.
    pub fn origin(&self) -> CallOrigin {
        CallOrigin {
            call_id: self.call_id.clone(),
            actor: self.caller.name.clone(),
            traceparent: self.traceparent.clone(),
        }
    }
}
