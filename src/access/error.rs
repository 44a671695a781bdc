//! Refusals by the gate, before any rule runs. Each door maps them to its
//! own codes in one place.

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccessError {
    /// No credentials, or credentials that do not name a valid caller.
    #[error("{0}")]
    Unauthenticated(String),
    /// A token that was valid and has expired.
    #[error("the token has expired; ask for a new one")]
    TokenExpired,
    /// A signed request whose timestamp is too far from the server's clock.
    #[error("timestamp is more than {window_seconds} s away from the server's time")]
    StaleTimestamp { window_seconds: u64 },
    /// A signed request whose nonce was already used (a replay).
    #[error("nonce was already used")]
    ReplayedNonce,
    /// A valid caller without the permission the call needs.
    #[error("the caller lacks the permission this call needs")]
    MissingPermission,
    /// A site outside the caller's scope (or, for a restricted caller, a
    /// site that does not exist: the two look the same).
    #[error("the caller may not act on this site")]
    ForbiddenSite,
    /// A user token used on an account other than its own, or for a use
    /// case that is not about one account (or, for a user token, an account
    /// that does not exist: the two look the same).
    #[error("this user token may act only on its own account")]
    ForbiddenAccount,
    /// A resource that belongs to another caller (e.g. a consumer checkpoint).
    #[error("{0}")]
    NotOwner(String),
    /// Over the per-caller request rate (or too many failed logins).
    #[error("{0}")]
    RateLimited(String),
    /// Over the per-caller bound on concurrent streams.
    #[error("too many concurrent streams for this caller (limit {limit})")]
    TooManyStreams { limit: usize },
    /// An action link without a valid signature by its site (missing,
    /// forged or altered, or a site that has no action secret). Nothing
    /// of the link is trusted, not even its redirect.
    #[error("this link is not valid: it was not signed by the site, or it was changed")]
    LinkSignatureInvalid,
    /// An action link past its `expires`.
    #[error("this link has expired; go back to the site and try again")]
    LinkExpired,
    /// An action link whose `expires` is further ahead than links may live.
    #[error("this link claims to be valid for more than {max_seconds} s")]
    LinkExpiryTooFar { max_seconds: i64 },
    /// The credential store (the database) cannot be read right now.
    #[error("the database is unavailable, so credentials cannot be checked; retry later")]
    Unavailable,
    /// The credential store answers but every connection is busy.
    #[error("the service is overloaded, so credentials cannot be checked now; retry later")]
    Busy,
}
