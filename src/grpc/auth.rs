//! Who the caller is and what they may do. The authentication layer
//! (`grpc::auth_layer`) puts a `Caller` into request extensions; without one
//! (open mode, no tokens configured) every site is in scope.
//!
//! Also here: the permission each RPC needs (one table, by gRPC path), API
//! tokens (generated, hashed, parsed from the `authorization` header) and the
//! start-up decision between open and authenticated mode.

use std::{collections::BTreeSet, fmt, net::SocketAddr, str::FromStr};

use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tonic::Request;

use super::status::ApiError;
use crate::domain::DomainError;

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
    pub fn check(&self, api_key: &str) -> Result<(), ApiError> {
        if self.allows(api_key) {
            Ok(())
        } else {
            Err(forbidden_site())
        }
    }

    /// For requests that name the site by something other than its api_key
    /// (UnlinkAccount's vhost): `lookup` is the site's api_key or the lookup's
    /// error. A restricted caller gets PERMISSION_DENIED both for a forbidden
    /// and for an unknown site.
    pub fn check_lookup<T>(
        &self,
        lookup: Result<T, ApiError>,
        api_key_of: impl Fn(&T) -> &str,
    ) -> Result<T, ApiError> {
        match (self, lookup) {
            (Self::All, lookup) => lookup,
            (Self::Only(_), Ok(site)) => self.check(api_key_of(&site)).map(|()| site),
            (Self::Only(_), Err(ApiError::Rule(DomainError::SiteNotFound))) => {
                Err(forbidden_site())
            }
            (Self::Only(_), Err(other)) => Err(other),
        }
    }
}

fn forbidden_site() -> ApiError {
    ApiError::PermissionDenied("the caller may not act on this site".into())
}

/// The authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub name: String,
    pub sites: SiteScope,
}

/// The caller's site scope (everything in open mode).
pub fn site_scope<T>(request: &Request<T>) -> SiteScope {
    request
        .extensions()
        .get::<Caller>()
        .map_or(SiteScope::All, |c| c.sites.clone())
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

/// What a call to a gRPC path requires.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Health and reflection: always open.
    Open,
    /// Needs an authenticated caller holding this permission.
    Requires(Permission),
    /// Needs an authenticated caller, whatever their permissions (paths that
    /// are not ours: they end as UNIMPLEMENTED).
    AnyCaller,
    /// A path of our services that no permission grants (e.g. a method added
    /// to the proto but not to the table): denied to everyone authenticated.
    Denied,
}

/// The one table of paths and the permission each needs. Anything under
/// `/connections.` that is not listed is denied; other unknown paths still
/// need a valid token (they end as UNIMPLEMENTED).
const ROUTES: &[(&str, Permission)] = &[
    (
        "/connections.v1.ConnectionService/RemoveConnection",
        Permission::ConnectionsWrite,
    ),
    (
        "/connections.v1.ConnectionService/UnlinkAccount",
        Permission::ConnectionsWrite,
    ),
    (
        "/connections.v1.ConnectionService/LinkConnection",
        Permission::ConnectionsWrite,
    ),
    (
        "/connections.v1.ConnectionService/GetAccount",
        Permission::ConnectionsRead,
    ),
    (
        "/connections.v1.EventService/Subscribe",
        Permission::EventsSubscribe,
    ),
    (
        "/connections.v1.EventService/CommitPosition",
        Permission::EventsSubscribe,
    ),
    ("/connections.v1.AdminService/UpsertSite", Permission::Admin),
    ("/connections.v1.AdminService/GetSite", Permission::Admin),
    (
        "/connections.v1.AdminService/UpsertAccount",
        Permission::Admin,
    ),
];

/// Services that stay open whatever the mode.
const OPEN_PREFIXES: &[&str] = &[
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1.ServerReflection/",
    "/grpc.reflection.v1alpha.ServerReflection/",
];

/// Streaming paths whose concurrent calls are bounded per caller.
pub const BOUNDED_STREAM_PATHS: &[&str] = &["/connections.v1.EventService/Subscribe"];

/// The access a gRPC path needs.
pub fn access_for_path(path: &str) -> Access {
    if OPEN_PREFIXES.iter().any(|prefix| path.starts_with(prefix)) {
        return Access::Open;
    }
    if let Some((_, permission)) = ROUTES.iter().find(|(p, _)| *p == path) {
        return Access::Requires(*permission);
    }
    if path.starts_with("/connections.") {
        Access::Denied
    } else {
        Access::AnyCaller
    }
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
    fn every_rpc_has_its_permission_and_open_services_stay_open() {
        use Permission::*;
        for (path, expected) in [
            (
                "/connections.v1.ConnectionService/RemoveConnection",
                ConnectionsWrite,
            ),
            (
                "/connections.v1.ConnectionService/UnlinkAccount",
                ConnectionsWrite,
            ),
            (
                "/connections.v1.ConnectionService/LinkConnection",
                ConnectionsWrite,
            ),
            (
                "/connections.v1.ConnectionService/GetAccount",
                ConnectionsRead,
            ),
            ("/connections.v1.EventService/Subscribe", EventsSubscribe),
            (
                "/connections.v1.EventService/CommitPosition",
                EventsSubscribe,
            ),
            ("/connections.v1.AdminService/UpsertSite", Admin),
            ("/connections.v1.AdminService/GetSite", Admin),
            ("/connections.v1.AdminService/UpsertAccount", Admin),
        ] {
            assert_eq!(access_for_path(path), Access::Requires(expected), "{path}");
        }
        assert_eq!(
            access_for_path("/connections.v1.AdminService/DropEverything"),
            Access::Denied
        );
        assert_eq!(access_for_path("/other.Service/Call"), Access::AnyCaller);
        for open in [
            "/grpc.health.v1.Health/Check",
            "/grpc.health.v1.Health/Watch",
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        ] {
            assert_eq!(access_for_path(open), Access::Open, "{open}");
        }
    }

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

    #[test]
    fn the_authenticated_caller_becomes_the_actor() {
        let mut request = Request::new(());
        assert_eq!(super::super::call_context(&request).actor, "anonymous");
        request.extensions_mut().insert(Caller {
            name: "billing-service".into(),
            sites: SiteScope::All,
        });
        assert_eq!(
            super::super::call_context(&request).actor,
            "billing-service"
        );
        assert_eq!(site_scope(&request), SiteScope::All);
    }

    #[test]
    fn restricted_callers_cannot_tell_unknown_from_forbidden_sites() {
        let scope = SiteScope::Only(["3_a".to_owned()].into());
        let unknown: Result<String, ApiError> = Err(DomainError::SiteNotFound.into());
        let forbidden: Result<String, ApiError> = Ok("3_b".into());
        let a = scope.check_lookup(unknown, |s| s.as_str()).unwrap_err();
        let b = scope.check_lookup(forbidden, |s| s.as_str()).unwrap_err();
        assert_eq!(a.code_and_reason(), b.code_and_reason());
        assert!(scope.check("3_a").is_ok());
        assert!(SiteScope::All.check("anything").is_ok());
    }
}
