//! The domain's one error enum: every way a request can be refused by the rules.
//! Each door maps every variant in one place (`grpc::status` for gRPC).

/// A refusal by the domain rules. Messages are safe to show to callers: they
/// never contain secrets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    #[error("{field}: {description}")]
    InvalidParameter {
        field: &'static str,
        description: String,
    },
    #[error("{field} is required")]
    MissingParameter { field: &'static str },
    #[error("{field}: unknown provider {}", shown(name))]
    UnknownProvider { field: &'static str, name: String },
    #[error("site not found")]
    SiteNotFound,
    #[error("account not found")]
    AccountNotFound,
    #[error("the account is not connected to {provider}")]
    NotConnected { provider: String },
    #[error("the request would remove the account's last way to log in")]
    LastLoginIdentity,
    #[error(
        "login ID {} is used by another identity of the account",
        shown(login_id)
    )]
    LoginIdInUse { login_id: String },
    #[error("removing the login IDs would leave the account with no way to log in")]
    NoLoginMethodLeft,
    #[error("the unlinkaccount action is disabled for this site")]
    ActionDisabled,
    #[error("redirect_url: {description}")]
    RedirectNotAllowed { description: String },
    #[error("cid: the site already uses {limit} distinct context ids")]
    TooManyContextIds { limit: usize },
    #[error("request_id was already used for a different request")]
    IdempotencyKeyReused,
    #[error("the provider identity is linked to another account")]
    IdentityLinkedElsewhere,
    #[error("login ID {} belongs to another account", shown(login_id))]
    LoginIdTaken { login_id: String },
    #[error("vhost {vhost} belongs to another site")]
    VhostInUse { vhost: i64 },
    #[error("position {requested} was pruned; the earliest retained position is {earliest}")]
    PositionPruned { requested: u64, earliest: u64 },
    #[error("no active application key has this user_key")]
    AppKeyNotFound,
}

/// Longest part of a caller's value that an error message repeats.
pub const SHOWN_CHARS: usize = 64;

/// A caller's value as error messages show it: quoted, and cut after
/// [`SHOWN_CHARS`] characters (marked as truncated), so that a huge value
/// cannot blow up an error, its headers or a log line.
pub fn shown(value: &str) -> String {
    if value.chars().count() <= SHOWN_CHARS {
        format!("{value:?}")
    } else {
        let prefix: String = value.chars().take(SHOWN_CHARS).collect();
        format!(
            "{prefix:?}... (truncated, {} characters)",
            value.chars().count()
        )
    }
}

impl DomainError {
    pub fn invalid(field: &'static str, description: impl Into<String>) -> Self {
        Self::InvalidParameter {
            field,
            description: description.into(),
        }
    }

    /// The request field at fault, for BadRequest field violations.
    pub fn field(&self) -> Option<&'static str> {
        match self {
            Self::InvalidParameter { field, .. }
            | Self::MissingParameter { field }
            | Self::UnknownProvider { field, .. } => Some(field),
            Self::RedirectNotAllowed { .. } => Some("redirect_url"),
            Self::TooManyContextIds { .. } => Some("cid"),
            Self::IdempotencyKeyReused => Some("request_id"),
            Self::VhostInUse { .. } => Some("vhost"),
            Self::SiteNotFound
            | Self::AccountNotFound
            | Self::NotConnected { .. }
            | Self::LastLoginIdentity
            | Self::LoginIdInUse { .. }
            | Self::NoLoginMethodLeft
            | Self::ActionDisabled
            | Self::IdentityLinkedElsewhere
            | Self::LoginIdTaken { .. }
            | Self::PositionPruned { .. }
            | Self::AppKeyNotFound => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_values_are_shown_truncated() {
        assert_eq!(shown("abc"), "\"abc\"");
        let long = "x".repeat(5000);
        let message = DomainError::UnknownProvider {
            field: "provider",
            name: long,
        }
        .to_string();
        assert!(message.len() < 200, "{message}");
        assert!(message.contains("truncated, 5000 characters"), "{message}");
    }
}
