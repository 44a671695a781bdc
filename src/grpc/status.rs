//! The one place where errors become gRPC statuses: an exhaustive map from
//! every error to a code and a stable ErrorInfo reason (AIP-193), BadRequest
//! field violations for bad fields, and the call id on every error.

use std::collections::HashMap;

use tonic::{Code, Status, metadata::MetadataValue};
use tonic_types::{ErrorDetails, StatusExt};

pub use crate::access::CALL_ID_HEADER;
use crate::{
    access::AccessError, domain::DomainError, service::ServiceError, telemetry::record_cause,
};

pub const ERROR_DOMAIN: &str = "connections";

/// The gRPC door's error: what a service answered, or a refusal by the
/// door itself before any service ran.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Service(#[from] ServiceError),
    /// The request message is over `max_decoding_message_size`.
    #[error("the request message is too large")]
    MessageTooLarge,
    /// The request body is not a valid protobuf encoding of the request.
    #[error("the request body is not a valid encoding of the request message: {description}")]
    MalformedRequest {
        /// The request field the decoder failed in, when it says.
        field: Option<String>,
        description: String,
    },
}

impl From<DomainError> for ApiError {
    fn from(err: DomainError) -> Self {
        Self::Service(err.into())
    }
}

impl From<AccessError> for ApiError {
    fn from(err: AccessError) -> Self {
        Self::Service(err.into())
    }
}

/// Code and reason of a rule refusal. No `_` arm: a new variant cannot ship
/// without a code and a reason.
fn rule_code(err: &DomainError) -> (Code, &'static str) {
    match err {
        DomainError::InvalidParameter { .. } => (Code::InvalidArgument, "INVALID_PARAMETER"),
        DomainError::MissingParameter { .. } => (Code::InvalidArgument, "MISSING_PARAMETER"),
        DomainError::UnknownProvider { .. } => (Code::InvalidArgument, "UNKNOWN_PROVIDER"),
        DomainError::SiteNotFound => (Code::NotFound, "SITE_NOT_FOUND"),
        DomainError::AccountNotFound => (Code::NotFound, "ACCOUNT_NOT_FOUND"),
        DomainError::NotConnected { .. } => (Code::FailedPrecondition, "NOT_CONNECTED"),
        DomainError::LastLoginIdentity => (Code::FailedPrecondition, "LAST_LOGIN_IDENTITY"),
        DomainError::LoginIdInUse { .. } => (Code::FailedPrecondition, "LOGIN_ID_IN_USE"),
        DomainError::NoLoginMethodLeft => (Code::FailedPrecondition, "NO_LOGIN_METHOD_LEFT"),
        DomainError::ActionDisabled => (Code::PermissionDenied, "ACTION_DISABLED"),
        DomainError::RedirectNotAllowed { .. } => (Code::InvalidArgument, "REDIRECT_NOT_ALLOWED"),
        DomainError::TooManyContextIds { .. } => (Code::InvalidArgument, "TOO_MANY_CONTEXT_IDS"),
        DomainError::IdempotencyKeyReused => (Code::InvalidArgument, "IDEMPOTENCY_KEY_REUSED"),
        DomainError::IdentityLinkedElsewhere => (Code::AlreadyExists, "IDENTITY_LINKED_ELSEWHERE"),
        DomainError::LoginIdTaken { .. } => (Code::AlreadyExists, "LOGIN_ID_TAKEN"),
        DomainError::VhostInUse { .. } => (Code::AlreadyExists, "VHOST_IN_USE"),
        DomainError::PositionPruned { .. } => (Code::OutOfRange, "POSITION_PRUNED"),
        DomainError::AppKeyNotFound => (Code::NotFound, "APP_KEY_NOT_FOUND"),
    }
}

fn rule_metadata(err: &DomainError) -> HashMap<String, String> {
    let mut metadata = HashMap::new();
    if let Some(field) = err.field() {
        metadata.insert("field".to_owned(), field.to_owned());
    }
    match err {
        DomainError::PositionPruned {
            requested,
            earliest,
        } => {
            metadata.insert("earliest_position".to_owned(), earliest.to_string());
            metadata.insert("requested_position".to_owned(), requested.to_string());
        }
        DomainError::NotConnected { provider } => {
            metadata.insert("provider".to_owned(), provider.clone());
        }
        DomainError::TooManyContextIds { limit } => {
            metadata.insert("limit".to_owned(), limit.to_string());
        }
        _ => {}
    }
    metadata
}

/// Code and reason of an access refusal. No `_` arm.
fn access_code(err: &AccessError) -> (Code, &'static str) {
    match err {
        AccessError::Unauthenticated(_) => (Code::Unauthenticated, "UNAUTHENTICATED"),
        AccessError::TokenExpired => (Code::Unauthenticated, "TOKEN_EXPIRED"),
        AccessError::StaleTimestamp { .. } => (Code::Unauthenticated, "TIMESTAMP_OUT_OF_WINDOW"),
        AccessError::ReplayedNonce => (Code::Unauthenticated, "NONCE_REUSED"),
        AccessError::MissingPermission
        | AccessError::ForbiddenSite
        | AccessError::ForbiddenAccount
        | AccessError::NotOwner(_) => (Code::PermissionDenied, "PERMISSION_DENIED"),
        AccessError::RateLimited(_) => (Code::ResourceExhausted, "RATE_LIMITED"),
        AccessError::TooManyStreams { .. } => (Code::ResourceExhausted, "RESOURCE_EXHAUSTED"),
        // The action link's refusals (not reachable from gRPC today).
        AccessError::LinkSignatureInvalid => (Code::PermissionDenied, "LINK_SIGNATURE_INVALID"),
        AccessError::LinkExpired => (Code::PermissionDenied, "LINK_EXPIRED"),
        AccessError::LinkExpiryTooFar { .. } => (Code::InvalidArgument, "LINK_EXPIRY_TOO_FAR"),
        // Credentials live in the database.
        AccessError::Unavailable => (Code::Unavailable, "DATABASE_UNAVAILABLE"),
        AccessError::Busy => (Code::Unavailable, "DATABASE_BUSY"),
    }
}

impl ApiError {
    /// The gRPC code and ErrorInfo reason.
    pub fn code_and_reason(&self) -> (Code, &'static str) {
        match self {
            Self::Service(ServiceError::Rule(rule)) => rule_code(rule),
            Self::Service(ServiceError::Access(access)) => access_code(access),
            Self::Service(ServiceError::Unavailable(_)) => {
                (Code::Unavailable, "DATABASE_UNAVAILABLE")
            }
            Self::Service(ServiceError::Busy(_)) => (Code::Unavailable, "DATABASE_BUSY"),
            Self::Service(ServiceError::StorageFull(_)) => {
                (Code::ResourceExhausted, "STORAGE_FULL")
            }
            Self::Service(ServiceError::Conflict(_)) => (Code::Aborted, "CONCURRENT_UPDATE"),
            Self::Service(ServiceError::NotConfigured(_)) => {
                (Code::FailedPrecondition, "NOT_CONFIGURED")
            }
            Self::Service(ServiceError::Internal(_)) => (Code::Internal, "INTERNAL"),
            Self::MessageTooLarge => (Code::ResourceExhausted, "RESOURCE_EXHAUSTED"),
            Self::MalformedRequest { .. } => (Code::InvalidArgument, "MALFORMED_REQUEST"),
        }
    }

    /// Builds the status the caller sees. Causes underneath are logged here
    /// with the call id and replaced by an opaque message.
    pub fn into_status(self, call_id: &str) -> Status {
        let (code, reason) = self.code_and_reason();
        let info = || ErrorDetails::with_error_info(reason, ERROR_DOMAIN, HashMap::new());
        let (message, mut details) = match &self {
            Self::Service(ServiceError::Rule(rule)) => {
                let mut details =
                    ErrorDetails::with_error_info(reason, ERROR_DOMAIN, rule_metadata(rule));
                if let Some(field) = rule.field() {
                    details.add_bad_request_violation(field, rule.to_string());
                }
                (rule.to_string(), details)
            }
            Self::Service(ServiceError::Access(access)) => (access.to_string(), info()),
            Self::Service(ServiceError::NotConfigured(what)) => ((*what).to_owned(), info()),
            Self::Service(ServiceError::Conflict(cause)) => {
                if !record_cause(cause) {
                    tracing::warn!(call_id, error = %cause, "concurrent update");
                }
                (
                    format!("a concurrent update conflicted; retry (call id {call_id})"),
                    info(),
                )
            }
            Self::Service(ServiceError::Unavailable(cause)) => {
                if !record_cause(cause) {
                    tracing::warn!(call_id, error = %cause, "database unavailable");
                }
                (
                    format!("the database is unavailable; retry later (call id {call_id})"),
                    info(),
                )
            }
            Self::Service(ServiceError::Busy(cause)) => {
                if !record_cause(cause) {
                    tracing::warn!(call_id, error = %cause, "database busy");
                }
                (
                    format!(
                        "the service is overloaded: every database connection is busy; \
                         retry later (call id {call_id})"
                    ),
                    info(),
                )
            }
            Self::Service(ServiceError::StorageFull(cause)) => {
                if !record_cause(cause) {
                    tracing::error!(call_id, error = %cause, "database storage is full");
                }
                (
                    format!(
                        "the database has no space left; nothing was changed (call id {call_id})"
                    ),
                    info(),
                )
            }
            Self::Service(ServiceError::Internal(cause)) => {
                if !record_cause(cause) {
                    tracing::error!(call_id, error = %cause, "internal failure");
                }
                (format!("internal error (call id {call_id})"), info())
            }
            Self::MessageTooLarge => (self.to_string(), info()),
            Self::MalformedRequest { field, .. } => {
                let mut details = info();
                if let Some(field) = field {
                    details.add_bad_request_violation(field.clone(), self.to_string());
                }
                (self.to_string(), details)
            }
        };
        details.set_request_info(call_id, "");
        let mut status = Status::with_error_details(code, message, details);
        if let Ok(value) = MetadataValue::try_from(call_id) {
            status.metadata_mut().insert(CALL_ID_HEADER, value);
        }
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_refusals_carry_reason_field_and_call_id() {
        let status =
            ApiError::from(DomainError::MissingParameter { field: "uid" }).into_status("c1");
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(status.metadata().get(CALL_ID_HEADER).unwrap(), "c1");
        let details = status.get_error_details();
        assert_eq!(details.error_info().unwrap().reason, "MISSING_PARAMETER");
        assert_eq!(
            details.bad_request().unwrap().field_violations[0].field,
            "uid"
        );
    }

    #[test]
    fn pruned_positions_report_the_earliest_position() {
        let status = ApiError::from(DomainError::PositionPruned {
            requested: 3,
            earliest: 10,
        })
        .into_status("c");
        assert_eq!(status.code(), Code::OutOfRange);
        let info = status.get_error_details().error_info().cloned().unwrap();
        assert_eq!(info.metadata["earliest_position"], "10");
    }

    #[test]
    fn internal_causes_are_not_shown() {
        let status =
            ApiError::from(ServiceError::Internal("secret detail".into())).into_status("c9");
        assert_eq!(status.code(), Code::Internal);
        assert!(!status.message().contains("secret"));
    }
}
