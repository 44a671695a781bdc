//! `connections app-key create|list|revoke`: application keys of the REST
//! API from the command line. A new key's secret is printed once, on stdout,
//! and never again: it is stored sealed with the server's secret key
//! (`--session-key`), which `create` therefore needs too.

use std::io::Write;

use crate::{
    cli::AppKeyCommand,
    config::parse_session_key,
    service::AppKeyInput,
    storage::{AppKeyStore, SessionSealer, db},
};

/// Runs an app-key command; `out` gets `<userKey> <secret>` (create) or the
/// table (list), `err` the human notes.
pub async fn run(
    command: AppKeyCommand,
    out: &mut impl Write,
    err: &mut impl Write,
) -> Result<(), String> {
    let (database_url, sealer) = match &command {
        AppKeyCommand::Create(args) => (
            &args.database.database_url,
            SessionSealer::new(&parse_session_key(&args.session_key)?.0),
        ),
        // Listing and revoking never touch a secret.
        AppKeyCommand::List(args) => (&args.database_url, SessionSealer::ephemeral()),
        AppKeyCommand::Revoke(args) => (&args.database.database_url, SessionSealer::ephemeral()),
    };
    let connection = db::open_migrated(database_url).await?;
    let store = AppKeyStore::new(connection.clone(), sealer);
    let result = match command {
        AppKeyCommand::Create(args) => {
            let input = AppKeyInput {
                caller: args.caller,
                sites: vec![args.sites],
                permissions: vec![args.permissions],
            };
            create(&store, input, out, err).await
        }
        AppKeyCommand::List(_) => list(&store, out).await,
        AppKeyCommand::Revoke(args) => revoke(&store, &args.user_key, err).await,
    };
    connection.close().await.ok();
    result
}

fn io(e: std::io::Error) -> String {
    format!("cannot write output: {e}")
}

async fn create(
    store: &AppKeyStore,
    input: AppKeyInput,
    out: &mut impl Write,
    err: &mut impl Write,
) -> Result<(), String> {
    let request = input.parse().map_err(|e| e.to_string())?;
    let (key, encoded) = request
        .mint(store)
        .await
        .map_err(|e| db::describe_storage(&e))?;
    writeln!(out, "{} {encoded}", key.user_key).map_err(io)?;
    writeln!(
        err,
        "created application key {} for caller {:?} (sites: {}; permissions: {}). The \
         secret is shown only this once: store it now. Servers must run with the same \
         --session-key to read it.",
        key.user_key, key.caller, key.sites, key.permissions
    )
    .map_err(io)?;
    Ok(())
}

async fn list(store: &AppKeyStore, out: &mut impl Write) -> Result<(), String> {
    let keys = store.list().await.map_err(|e| db::describe_storage(&e))?;
    writeln!(
        out,
        "{:<14} {:<24} {:<28} {:<40} {:<20} REVOKED",
        "USER KEY", "CALLER", "SITES", "PERMISSIONS", "CREATED"
    )
    .map_err(io)?;
    for key in keys {
        let revoked = key.revoked_at.map_or_else(
            || "-".to_owned(),
            |at| at.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
        );
        writeln!(
            out,
            "{:<14} {:<24} {:<28} {:<40} {:<20} {revoked}",
            key.user_key,
            key.caller,
            key.sites,
            key.permissions,
            key.created_at.format("%Y-%m-%dT%H:%M:%SZ"),
        )
        .map_err(io)?;
    }
    Ok(())
}

async fn revoke(store: &AppKeyStore, user_key: &str, err: &mut impl Write) -> Result<(), String> {
    match store
        .revoke(user_key)
        .await
        .map_err(|e| db::describe_storage(&e))?
    {
        Some(key) => writeln!(err, "revoked application key {}", key.user_key).map_err(io),
        None => Err("no active application key has this userKey: nothing revoked".into()),
    }
}
