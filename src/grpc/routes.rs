//! The gRPC door's table of paths: the permission each RPC needs, the
//! services that stay open, and the streams bounded per caller.

use crate::access::{Access, Permission};

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
    (
        "/connections.v1.AdminService/CreateAppKey",
        Permission::Admin,
    ),
    (
        "/connections.v1.AdminService/ListAppKeys",
        Permission::Admin,
    ),
    (
        "/connections.v1.AdminService/RevokeAppKey",
        Permission::Admin,
    ),
    (
        "/connections.v1.AdminService/CreateUserToken",
        Permission::Admin,
    ),
    (
        "/connections.v1.AdminService/RevokeUserTokens",
        Permission::Admin,
    ),
    (
        "/connections.v1.AdminService/RotateActionSecret",
        Permission::Admin,
    ),
    (
        "/connections.v1.AdminService/SignUnlinkLink",
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
const BOUNDED_STREAM_PATHS: &[&str] = &["/connections.v1.EventService/Subscribe"];

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

/// Whether a path is a long-lived stream (bounded per caller).
pub fn is_bounded_stream(path: &str) -> bool {
    BOUNDED_STREAM_PATHS.contains(&path)
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
            ("/connections.v1.AdminService/CreateAppKey", Admin),
            ("/connections.v1.AdminService/ListAppKeys", Admin),
            ("/connections.v1.AdminService/RevokeAppKey", Admin),
            ("/connections.v1.AdminService/CreateUserToken", Admin),
            ("/connections.v1.AdminService/RevokeUserTokens", Admin),
            ("/connections.v1.AdminService/RotateActionSecret", Admin),
            ("/connections.v1.AdminService/SignUnlinkLink", Admin),
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
}
