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
    #[error("{field}: unknown provider {name:?}")]
    UnknownProvider { field: &'static str, name: String },
    #[error("site not found")]
    SiteNotFound,
    #[error("account not found")]
    AccountNotFound,
    #[error("the account is not connected to {provider}")]
    NotConnected { provider: String },
    #[error("the request would remove the account's last way to log in")]
    LastLoginIdentity,
    #[error("login ID {login_id:?} is used by another identity of the account")]
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
    #[error("login ID {login_id:?} belongs to another account")]
    LoginIdTaken { login_id: String },
    #[error("vhost {vhost} belongs to another site")]
    VhostInUse { vhost: i64 },
    #[error("position {requested} was pruned; the earliest retained position is {earliest}")]
    PositionPruned { requested: u64, earliest: u64 },
    #[error("no active application key has this user_key")]
    AppKeyNotFound,
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
