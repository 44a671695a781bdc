//! The one place where errors become Gigya error codes (SPEC section 11):
//! an exhaustive map from every error the REST door can meet to
//! `errorCode`, `statusCode` and our ErrorInfo-style `reason`. No `_` arm: a
//! new error cannot ship without a code.

use crate::{
    access::AccessError, domain::DomainError, service::ServiceError, telemetry::record_cause,
};

/// The REST door's error: what a service (or the gate, or the domain's
/// parsing) answered, or a refusal by the door itself.
#[derive(Debug, thiserror::Error)]
pub enum RestError {
    #[error(transparent)]
    Service(#[from] ServiceError),
    /// Not a well-formed request: bad encoding, body too large or too slow,
    /// wrong content type.
    #[error("{0}")]
    Malformed(String),
    /// Too many requests in flight on this server.
    #[error("the server is busy: retry later")]
    Overloaded,
}

impl From<DomainError> for RestError {
    fn from(err: DomainError) -> Self {
        Self::Service(err.into())
    }
}

impl From<AccessError> for RestError {
    fn from(err: AccessError) -> Self {
        Self::Service(err.into())
    }
}

/// A Gigya result: `errorCode`, `statusCode` (the HTTP status it stands
/// for) and our `reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorCode {
    pub error_code: u32,
    pub status_code: u16,
    pub reason: &'static str,
}

impl ErrorCode {
    const fn new(error_code: u32, status_code: u16, reason: &'static str) -> Self {
        Self {
            error_code,
            status_code,
            reason,
        }
    }

    /// Success.
    pub const OK: Self = Self::new(0, 200, "");

    /// `errorMessage`: the standard text of the code.
    pub fn message(&self) -> &'static str {
        match self.error_code {
            0 => "OK",
            400_001 => "Invalid request format",
            400_002 => "Missing required parameter",
            400_006 => "Invalid parameter value",
            400_093 => "Invalid ApiKey parameter",
            403_002 => "Request has expired",
            403_003 => "Invalid request signature",
            403_004 => "Duplicate nonce",
            403_005 => "Unauthorized user",
            403_007 => "Permission denied",
            403_048 => "Rate limit exceeded",
            409_030 => "Concurrent update conflict",
            _ => "General Server Error",
        }
    }

    /// `statusReason`: the HTTP reason phrase of `statusCode`.
    pub fn status_reason(&self) -> &'static str {
        http::StatusCode::from_u16(self.status_code)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("Internal Server Error")
    }
}

const MALFORMED: ErrorCode = ErrorCode::new(400_001, 400, "MALFORMED_REQUEST");
const UNEXPECTED: ErrorCode = ErrorCode::new(500_001, 500, "INTERNAL");

/// The code of a rule refusal. No `_` arm.
fn rule(err: &DomainError) -> ErrorCode {
    let invalid = |reason| ErrorCode::new(400_006, 400, reason);
    match err {
        DomainError::MissingParameter { .. } => ErrorCode::new(400_002, 400, "MISSING_PARAMETER"),
        DomainError::InvalidParameter { .. } => invalid("INVALID_PARAMETER"),
        DomainError::UnknownProvider { .. } => invalid("UNKNOWN_PROVIDER"),
        DomainError::NotConnected { .. } => invalid("NOT_CONNECTED"),
        DomainError::LastLoginIdentity => invalid("LAST_LOGIN_IDENTITY"),
        DomainError::LoginIdInUse { .. } => invalid("LOGIN_ID_IN_USE"),
        DomainError::NoLoginMethodLeft => invalid("NO_LOGIN_METHOD_LEFT"),
        DomainError::TooManyContextIds { .. } => invalid("TOO_MANY_CONTEXT_IDS"),
        DomainError::IdempotencyKeyReused => invalid("IDEMPOTENCY_KEY_REUSED"),
        DomainError::SiteNotFound => ErrorCode::new(400_093, 400, "SITE_NOT_FOUND"),
        DomainError::AccountNotFound => ErrorCode::new(403_005, 403, "ACCOUNT_NOT_FOUND"),
        // Not reachable from socialize.removeConnection; coded for completeness.
        DomainError::RedirectNotAllowed { .. } => invalid("REDIRECT_NOT_ALLOWED"),
        DomainError::PositionPruned { .. } => invalid("POSITION_PRUNED"),
        DomainError::ActionDisabled => ErrorCode::new(403_007, 403, "ACTION_DISABLED"),
        DomainError::IdentityLinkedElsewhere => {
            ErrorCode::new(409_030, 409, "IDENTITY_LINKED_ELSEWHERE")
        }
        DomainError::LoginIdTaken { .. } => ErrorCode::new(409_030, 409, "LOGIN_ID_TAKEN"),
        DomainError::VhostInUse { .. } => ErrorCode::new(409_030, 409, "VHOST_IN_USE"),
        DomainError::AppKeyNotFound => invalid("APP_KEY_NOT_FOUND"),
    }
}

/// The code of an access refusal. No `_` arm.
fn access(err: &AccessError) -> ErrorCode {
    match err {
        AccessError::Unauthenticated(_) => ErrorCode::new(403_003, 403, "UNAUTHENTICATED"),
        AccessError::TokenExpired => ErrorCode::new(403_003, 403, "TOKEN_EXPIRED"),
        AccessError::StaleTimestamp { .. } => {
            ErrorCode::new(403_002, 403, "TIMESTAMP_OUT_OF_WINDOW")
        }
        AccessError::ReplayedNonce => ErrorCode::new(403_004, 403, "NONCE_REUSED"),
        AccessError::MissingPermission
        | AccessError::ForbiddenSite
        | AccessError::ForbiddenAccount
        | AccessError::NotOwner(_) => ErrorCode::new(403_007, 403, "PERMISSION_DENIED"),
        AccessError::RateLimited(_) => ErrorCode::new(403_048, 403, "RATE_LIMITED"),
        AccessError::TooManyStreams { .. } => ErrorCode::new(403_048, 403, "RESOURCE_EXHAUSTED"),
        // The action link's own refusals (not reachable from removeConnection).
        AccessError::LinkSignatureInvalid => ErrorCode::new(403_003, 403, "LINK_SIGNATURE_INVALID"),
        AccessError::LinkExpired => ErrorCode::new(403_002, 403, "LINK_EXPIRED"),
        AccessError::LinkExpiryTooFar { .. } => ErrorCode::new(403_002, 403, "LINK_EXPIRY_TOO_FAR"),
        AccessError::Unavailable => ErrorCode::new(500_001, 500, "DATABASE_UNAVAILABLE"),
        AccessError::Busy => ErrorCode::new(403_048, 403, "DATABASE_BUSY"),
    }
}

impl RestError {
    /// The errorCode, statusCode and reason. No `_` arm.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Service(ServiceError::Rule(err)) => rule(err),
            Self::Service(ServiceError::Access(err)) => access(err),
            Self::Service(ServiceError::Conflict(_)) => {
                ErrorCode::new(409_030, 409, "CONCURRENT_UPDATE")
            }
            Self::Service(ServiceError::Unavailable(_)) => {
                ErrorCode::new(500_001, 500, "DATABASE_UNAVAILABLE")
            }
            // Gigya's "too many requests": SDKs retry it later.
            Self::Service(ServiceError::Busy(_)) => ErrorCode::new(403_048, 403, "DATABASE_BUSY"),
            Self::Service(ServiceError::StorageFull(_)) => {
                ErrorCode::new(500_001, 500, "STORAGE_FULL")
            }
            Self::Service(ServiceError::NotConfigured(_) | ServiceError::Internal(_)) => UNEXPECTED,
            Self::Malformed(_) => MALFORMED,
            Self::Overloaded => ErrorCode::new(403_048, 403, "OVERLOADED"),
        }
    }

    /// `errorDetails`: our message, naming the parameter by its REST name.
    /// Causes underneath are logged here with the call id and never shown.
    pub fn details(&self, call_id: &str) -> String {
        match self {
            Self::Service(ServiceError::Rule(err)) => rest_message(err),
            Self::Service(ServiceError::Access(err)) => err.to_string(),
            Self::Service(ServiceError::Conflict(cause)) => {
                if !record_cause(cause) {
                    tracing::warn!(call_id, error = %cause, "concurrent update");
                }
                "a concurrent update conflicted with this request; nothing changed, retry".into()
            }
            Self::Service(ServiceError::Unavailable(cause)) => {
                if !record_cause(cause) {
                    tracing::warn!(call_id, error = %cause, "database unavailable");
                }
                format!("the service is unavailable; retry later (call id {call_id})")
            }
            Self::Service(ServiceError::Busy(cause)) => {
                if !record_cause(cause) {
                    tracing::warn!(call_id, error = %cause, "database busy");
                }
                format!("the service is overloaded; retry later (call id {call_id})")
            }
            Self::Service(ServiceError::StorageFull(cause)) => {
                if !record_cause(cause) {
                    tracing::error!(call_id, error = %cause, "database storage is full");
                }
                format!(
                    "the service cannot store changes right now; retry later (call id {call_id})"
                )
            }
            Self::Service(ServiceError::NotConfigured(what)) => {
                if !record_cause(what) {
                    tracing::error!(call_id, what, "not configured");
                }
                format!("internal error (call id {call_id})")
            }
            Self::Service(ServiceError::Internal(cause)) => {
                if !record_cause(cause) {
                    tracing::error!(call_id, error = %cause, "internal failure");
                }
                format!("internal error (call id {call_id})")
            }
            Self::Malformed(message) => message.clone(),
            Self::Overloaded => self.to_string(),
        }
    }
}

/// The REST name of a domain field (the domain speaks the gRPC names).
pub fn rest_name(field: &str) -> &str {
    match field {
        "api_key" => "apiKey",
        "uid" => "UID",
        "remove_login_id" => "removeLoginID",
        "last_identity_handling" => "lastIdentityHandling",
        "force_providers_logout" => "forceProvidersLogout",
        "request_id" => "requestId",
        "dry_run" => "dryRun",
        other => other,
    }
}

/// A rule's message with its field named as the REST client sent it.
fn rest_message(err: &DomainError) -> String {
    let message = err.to_string();
    match err.field() {
        Some(field) if message.starts_with(field) && rest_name(field) != field => {
            format!("{}{}", rest_name(field), &message[field.len()..])
        }
        _ => message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(err: impl Into<RestError>) -> (u32, u16) {
        let code = err.into().code();
        (code.error_code, code.status_code)
    }

    #[test]
    fn the_table_of_section_eleven() {
        let rule_codes = [
            (
                DomainError::MissingParameter { field: "uid" },
                (400_002, 400),
            ),
            (DomainError::invalid("cid", "too long"), (400_006, 400)),
            (
                DomainError::UnknownProvider {
                    field: "provider",
                    name: "x".into(),
                },
                (400_006, 400),
            ),
            (
                DomainError::NotConnected {
                    provider: "facebook".into(),
                },
                (400_006, 400),
            ),
            (DomainError::LastLoginIdentity, (400_006, 400)),
            (
                DomainError::LoginIdInUse {
                    login_id: "a".into(),
                },
                (400_006, 400),
            ),
            (DomainError::NoLoginMethodLeft, (400_006, 400)),
            (
                DomainError::TooManyContextIds { limit: 100 },
                (400_006, 400),
            ),
            (DomainError::IdempotencyKeyReused, (400_006, 400)),
            (DomainError::SiteNotFound, (400_093, 400)),
            (DomainError::AccountNotFound, (403_005, 403)),
        ];
        for (err, expected) in rule_codes {
            assert_eq!(code(err.clone()), expected, "{err:?}");
        }
        let access_codes = [
            (AccessError::Unauthenticated("x".into()), (403_003, 403)),
            (
                AccessError::StaleTimestamp {
                    window_seconds: 120,
                },
                (403_002, 403),
            ),
            (AccessError::ReplayedNonce, (403_004, 403)),
            (AccessError::ForbiddenSite, (403_007, 403)),
            (AccessError::ForbiddenAccount, (403_007, 403)),
            (AccessError::MissingPermission, (403_007, 403)),
            (AccessError::RateLimited("x".into()), (403_048, 403)),
            (AccessError::Unavailable, (500_001, 500)),
        ];
        for (err, expected) in access_codes {
            assert_eq!(code(err.clone()), expected, "{err:?}");
        }
        assert_eq!(
            code(ServiceError::Conflict("serialization".into())),
            (409_030, 409)
        );
        assert_eq!(code(ServiceError::Internal("x".into())), (500_001, 500));
        assert_eq!(code(ServiceError::Unavailable("x".into())), (500_001, 500));
        assert_eq!(code(ServiceError::Busy("x".into())), (403_048, 403));
        assert_eq!(code(RestError::Malformed("x".into())), (400_001, 400));
    }

    #[test]
    fn details_name_the_rest_parameter_and_hide_causes() {
        let err = RestError::from(DomainError::MissingParameter { field: "api_key" });
        assert_eq!(err.details("c"), "apiKey is required");
        let err = RestError::from(DomainError::invalid("uid", "too long"));
        assert_eq!(err.details("c"), "UID: too long");
        let err = RestError::from(ServiceError::Internal("password=hunter2".into()));
        assert!(!err.details("c1").contains("hunter2"));
        assert_eq!(err.code().message(), "General Server Error");
        assert_eq!(err.code().status_reason(), "Internal Server Error");
        assert_eq!(ErrorCode::OK.status_reason(), "OK");
    }
}
