//! Calls as a concept of their own, shared by every door: who the caller
//! is ([`Caller`], its [`SiteScope`] and [`Permission`]s), API tokens
//! (generated, hashed, parsed from the `authorization` header), application
//! keys and signed requests ([`app_keys`], [`signature`]), the
//! start-up decision between open and authenticated mode, the [`Gate`] that
//! admits callers and applies the abuse [`limits`], and the [`CallContext`]
//! (call id, caller, trace context, deadline) that a door hands to the
//! application services.
//!
//! A door only translates: it finds the credentials in its protocol, asks
//! the gate, and maps an [`AccessError`] to its own error shape.

pub mod action_link;
pub mod app_keys;
mod call;
mod error;
mod gate;
pub mod limits;
pub mod signature;
mod ttl_cache;

pub use app_keys::{AppKeyProof, AppKeys, Proof};
pub use call::{ANONYMOUS_ACTOR, CALL_ID_HEADER, CallContext, CallId, TraceParent};
pub use error::AccessError;
pub use gate::{Admission, Credential, Gate};

use std::{collections::BTreeSet, fmt, net::SocketAddr, str::FromStr};

use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Sites a caller may act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SiteScope {
    All,
    /// API keys.
    Only(BTreeSet<String>),
}

impl SiteScope {
    pub fn allows(&self, api_key: &str) -> bool {
        match self {
            Self::All => true,
            Self::Only(keys) => keys.contains(api_key),
        }
    }

    /// Refuses a site outside the scope. Called before the site is looked up,
    /// so an unknown site and a forbidden one look the same.
    pub fn check(&self, api_key: &str) -> Result<(), AccessError> {
        if self.allows(api_key) {
            Ok(())
        } else {
            Err(AccessError::ForbiddenSite)
        }
    }
}

/// The authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub name: String,
    pub sites: SiteScope,
    /// A user token's one account (its one site is `sites`): such a caller
    /// may act only on this uid, and only through the use cases that name
    /// an account (RemoveConnection, GetAccount). None: any account of the
    /// caller's sites.
    pub uid: Option<String>,
}

impl Caller {
    /// The caller in open mode: every site, named `anonymous`.
    pub fn anonymous() -> Self {
        Self {
            name: ANONYMOUS_ACTOR.to_owned(),
            sites: SiteScope::All,
            uid: None,
        }
    }

    /// Refuses a site outside the caller's scope, and every call of a user
    /// token, which may only act through [`Caller::check_account`]. Called
    /// before the site is looked up, so an unknown site and a forbidden one
    /// look the same.
    pub fn check_site(&self, api_key: &str) -> Result<(), AccessError> {
        self.sites.check(api_key)?;
        match self.uid {
            None => Ok(()),
            Some(_) => Err(AccessError::ForbiddenAccount),
        }
    }

    /// Refuses an account the caller may not act on: a site outside its
    /// scope, or for a user token any uid but its own. Called before the
    /// account is looked up, so unknown and forbidden accounts look the same.
    pub fn check_account(&self, api_key: &str, uid: &str) -> Result<(), AccessError> {
        self.sites.check(api_key)?;
        match &self.uid {
            Some(own) if own != uid => Err(AccessError::ForbiddenAccount),
            _ => Ok(()),
        }
    }
}

/// What a token allows, beyond its sites.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Permission {
    /// RemoveConnection, UnlinkAccount, LinkConnection.
    ConnectionsWrite,
    /// GetAccount.
    ConnectionsRead,
    /// Subscribe, CommitPosition.
    EventsSubscribe,
    /// AdminService.
    Admin,
}

impl Permission {
    pub const ALL: [Self; 4] = [
        Self::ConnectionsWrite,
        Self::ConnectionsRead,
        Self::EventsSubscribe,
        Self::Admin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::ConnectionsWrite => "connections.write",
            Self::ConnectionsRead => "connections.read",
            Self::EventsSubscribe => "events.subscribe",
            Self::Admin => "admin",
        }
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Permission {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|p| p.as_str() == s.trim())
            .ok_or_else(|| {
                let known: Vec<_> = Self::ALL.iter().map(|p| p.as_str()).collect();
                format!("unknown permission {s:?} (known: {})", known.join(", "))
            })
    }
}

/// What a call requires of its caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Open to everyone (health, reflection, the SDK script).
    Open,
    /// Needs an authenticated caller holding this permission.
    Requires(Permission),
    /// Needs an authenticated caller, whatever their permissions (paths that
    /// are not ours: they end as "not found" in their protocol).
    AnyCaller,
    /// A path of our services that no permission grants (e.g. a method added
    /// to a door but not to its table): denied to everyone authenticated.
    Denied,
}

/// Prefix of every token; makes leaked tokens easy to find by scanners.
pub const TOKEN_PREFIX: &str = "cnx_";
/// Length of `cnx_` + 43 base64url characters (32 random bytes).
const TOKEN_LEN: usize = TOKEN_PREFIX.len() + 43;

/// A new random token: `cnx_` + 32 random bytes, base64url without padding.
pub fn generate_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!(
        "{TOKEN_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// Hex SHA-256 of a token: what the database stores.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Constant-time equality of two hashes.
pub fn hashes_match(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

/// The token of an `authorization` header value, if it is a well-formed
/// `Bearer cnx_...` header. Says nothing about whether the token exists.
pub fn bearer_token(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    let token = token.trim();
    let well_formed = scheme.eq_ignore_ascii_case("bearer")
        && token.len() == TOKEN_LEN
        && token.starts_with(TOKEN_PREFIX)
        && token[TOKEN_PREFIX.len()..]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    well_formed.then_some(token)
}

/// A caller's name (the `actor` of its events): 1 to 100 printable characters.
pub fn parse_caller_name(name: &str) -> Result<String, String> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 100 || name.chars().any(char::is_control) {
        return Err("a caller name must be 1 to 100 printable characters".into());
    }
    Ok(name.to_owned())
}

/// Whether every site of `inner` is also in `outer`.
pub fn scope_contains(outer: &SiteScope, inner: &SiteScope) -> bool {
    match (outer, inner) {
        (SiteScope::All, _) => true,
        (SiteScope::Only(_), SiteScope::All) => false,
        (SiteScope::Only(outer), SiteScope::Only(inner)) => inner.is_subset(outer),
    }
}

/// Parses a token's sites: `*` for all, else comma-separated api_keys.
pub fn parse_sites(spec: &str) -> Result<SiteScope, String> {
    let spec = spec.trim();
    if spec == "*" {
        return Ok(SiteScope::All);
    }
    let keys: BTreeSet<String> = spec
        .split(',')
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .map(str::to_owned)
        .collect();
    if keys.is_empty() {
        return Err("a token needs at least one site, or `*` for all".into());
    }
    if keys.iter().any(|k| k == "*") {
        return Err("`*` cannot be combined with api_keys".into());
    }
    Ok(SiteScope::Only(keys))
}

/// The stored form of a scope (inverse of `parse_sites`).
pub fn format_sites(scope: &SiteScope) -> String {
    match scope {
        SiteScope::All => "*".into(),
        SiteScope::Only(keys) => keys.iter().cloned().collect::<Vec<_>>().join(","),
    }
}

/// Parses comma-separated permission names (at least one).
pub fn parse_permissions(spec: &str) -> Result<BTreeSet<Permission>, String> {
    let permissions = spec
        .split(',')
        .filter(|p| !p.trim().is_empty())
        .map(Permission::from_str)
        .collect::<Result<BTreeSet<_>, _>>()?;
    if permissions.is_empty() {
        return Err("a token needs at least one permission".into());
    }
    Ok(permissions)
}

pub fn format_permissions(permissions: &BTreeSet<Permission>) -> String {
    permissions
        .iter()
        .map(|p| p.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

/// What a valid token grants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    pub caller: Caller,
    pub permissions: BTreeSet<Permission>,
    /// When the credential stops working, if ever.
    pub expires_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// What a user token (browser SDK) may do: remove its user's connections
/// and read its user's account, nothing else.
pub const USER_TOKEN_PERMISSIONS: [Permission; 2] =
    [Permission::ConnectionsWrite, Permission::ConnectionsRead];

impl Grant {
    /// What a stored credential grants, from its stored sites and
    /// permissions (and a user token's uid, whose sites must be exactly one
    /// api_key); the error says what is unreadable.
    pub fn from_stored(
        caller: String,
        sites: &str,
        permissions: &str,
        expires_at: Option<chrono::DateTime<chrono::Utc>>,
        uid: Option<String>,
    ) -> Result<Self, String> {
        match (parse_sites(sites), parse_permissions(permissions)) {
            (Ok(SiteScope::All), Ok(_)) if uid.is_some() => {
                Err("a user token must name exactly one site".into())
            }
            (Ok(SiteScope::Only(keys)), Ok(_)) if uid.is_some() && keys.len() != 1 => {
                Err("a user token must name exactly one site".into())
            }
            (Ok(sites), Ok(permissions)) => Ok(Self {
                caller: Caller {
                    name: caller,
                    sites,
                    uid,
                },
                permissions,
                expires_at,
            }),
            (sites, permissions) => Err(format!(
                "sites: {:?}; permissions: {:?}",
                sites.err(),
                permissions.err()
            )),
        }
    }
}

/// Whether callers must authenticate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessMode {
    /// No tokens and a loopback address: everyone may call everything, as
    /// `anonymous`. Switches to `Authenticated` once a token exists.
    Open,
    Authenticated,
}

/// The start-up decision. Open mode is only ever allowed on a loopback
/// address; off loopback, tokens are required even with (mutual) TLS, since
/// a client certificate names no caller, sites or permissions.
pub fn startup_access_mode(listen: SocketAddr, tokens_exist: bool) -> Result<AccessMode, String> {
    if tokens_exist {
        Ok(AccessMode::Authenticated)
    } else if listen.ip().is_loopback() {
        Ok(AccessMode::Open)
    } else {
        Err(format!(
            "refusing to listen on {listen} without authentication: no API tokens exist. \
             Create one with `connections token create --caller NAME --sites '*' \
             --permissions connections.write,connections.read`, or listen on a loopback \
             address (127.0.0.1 / ::1)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_well_formed_and_hashed() {
        let a = generate_token();
        let b = generate_token();
        assert_ne!(a, b);
        assert_eq!(bearer_token(&format!("Bearer {a}")), Some(a.as_str()));
        assert_eq!(bearer_token(&format!("bearer  {a}")), Some(a.as_str()));
        assert_eq!(bearer_token(&a), None);
        assert_eq!(bearer_token(&format!("Basic {a}")), None);
        assert_eq!(bearer_token("Bearer cnx_short"), None);
        assert_eq!(hash_token(&a).len(), 64);
        assert!(hashes_match(&hash_token(&a), &hash_token(&a)));
        assert!(!hashes_match(&hash_token(&a), &hash_token(&b)));
        assert!(!hash_token(&a).contains(&a[4..]));
    }

    #[test]
    fn sites_and_permissions_parse_and_format() {
        assert_eq!(parse_sites("*").unwrap(), SiteScope::All);
        let scope = parse_sites("3_b, 3_a").unwrap();
        assert_eq!(format_sites(&scope), "3_a,3_b");
        assert!(parse_sites("").is_err());
        assert!(parse_sites("*,3_a").is_err());
        let permissions = parse_permissions("connections.read,admin").unwrap();
        assert_eq!(format_permissions(&permissions), "connections.read,admin");
        assert!(parse_permissions("connections.delete").is_err());
        assert!(parse_permissions("").is_err());
    }

    #[test]
    fn a_user_token_acts_only_on_its_own_account() {
        let grant = Grant::from_stored(
            "user:u1".into(),
            "3_a",
            "connections.write,connections.read",
            None,
            Some("u1".into()),
        )
        .unwrap();
        let caller = grant.caller;
        assert_eq!(caller.check_account("3_a", "u1"), Ok(()));
        assert_eq!(
            caller.check_account("3_a", "u2"),
            Err(AccessError::ForbiddenAccount)
        );
        assert_eq!(
            caller.check_account("3_b", "u1"),
            Err(AccessError::ForbiddenSite)
        );
        // Site-wide use cases (LinkConnection, UnlinkAccount, admin) are
        // never a user token's.
        assert_eq!(caller.check_site("3_a"), Err(AccessError::ForbiddenAccount));
        assert!(
            Grant::from_stored("u".into(), "*", "connections.write", None, Some("u".into()))
                .is_err()
        );
        assert!(
            Grant::from_stored(
                "u".into(),
                "3_a,3_b",
                "connections.write",
                None,
                Some("u".into())
            )
            .is_err()
        );
        let anyone = Caller::anonymous();
        assert_eq!(anyone.check_account("3_b", "u2"), Ok(()));
        assert_eq!(anyone.check_site("3_b"), Ok(()));
    }

    #[test]
    fn open_mode_only_on_loopback_without_tokens() {
        let loopback: SocketAddr = "127.0.0.1:50051".parse().unwrap();
        let loopback6: SocketAddr = "[::1]:50051".parse().unwrap();
        let public: SocketAddr = "0.0.0.0:50051".parse().unwrap();
        let lan: SocketAddr = "10.1.2.3:50051".parse().unwrap();
        assert_eq!(startup_access_mode(loopback, false), Ok(AccessMode::Open));
        assert_eq!(startup_access_mode(loopback6, false), Ok(AccessMode::Open));
        assert_eq!(
            startup_access_mode(loopback, true),
            Ok(AccessMode::Authenticated)
        );
        assert_eq!(
            startup_access_mode(public, true),
            Ok(AccessMode::Authenticated)
        );
        let refusal = startup_access_mode(public, false).unwrap_err();
        assert!(refusal.contains("token create"), "{refusal}");
        assert!(startup_access_mode(lan, false).is_err());
    }
}
