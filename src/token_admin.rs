//! `connections token create|list|revoke`: managing API tokens from the
//! command line. A new token is printed once, on stdout, and never again:
//! only its SHA-256 is stored, and nothing else prints it.

use std::io::Write;

use crate::{
    access::{
        format_permissions, format_sites, generate_token, hash_token, parse_permissions,
        parse_sites,
    },
    cli::{TokenCommand, TokenCreateArgs},
    storage::{TokenStore, db},
};

/// Runs a token command; `out` gets the token (create) or the table (list),
/// `err` the human notes.
pub async fn run(
    command: TokenCommand,
    out: &mut impl Write,
    err: &mut impl Write,
) -> Result<(), String> {
    let database_url = match &command {
        TokenCommand::Create(args) => &args.database.database_url,
        TokenCommand::List(args) => &args.database_url,
        TokenCommand::Revoke(args) => &args.database.database_url,
    };
    let connection = db::open_migrated(database_url).await?;
    let store = TokenStore::new(connection.clone());
    let result = match command {
        TokenCommand::Create(args) => create(&store, &args, out, err).await,
        TokenCommand::List(_) => list(&store, out).await,
        TokenCommand::Revoke(args) => revoke(&store, args.caller, args.id, err).await,
    };
    connection.close().await.ok();
    result
}

fn io(e: std::io::Error) -> String {
    format!("cannot write output: {e}")
}

fn valid_caller(caller: &str) -> Result<&str, String> {
    let caller = caller.trim();
    if caller.is_empty() || caller.len() > 100 || caller.chars().any(char::is_control) {
        return Err("--caller must be 1 to 100 printable characters".into());
    }
    Ok(caller)
}

async fn create(
    store: &TokenStore,
    args: &TokenCreateArgs,
    out: &mut impl Write,
    err: &mut impl Write,
) -> Result<(), String> {
    let caller = valid_caller(&args.caller)?;
    let sites = format_sites(&parse_sites(&args.sites)?);
    let permissions = format_permissions(&parse_permissions(&args.permissions)?);
    let expires_at = args
        .expires_in
        .as_deref()
        .map(|spec| {
            let lifetime =
                crate::config::parse_duration(spec).map_err(|e| format!("--expires-in: {e}"))?;
            chrono::Duration::from_std(lifetime)
                .ok()
                .and_then(|d| chrono::Utc::now().checked_add_signed(d))
                .ok_or_else(|| format!("--expires-in: {spec:?} is too long"))
        })
        .transpose()?;
    let first = !store
        .any_active()
        .await
        .map_err(|e| db::describe_storage(&e))?;
    let token = generate_token();
    let id = store
        .create_expiring(
            caller,
            &hash_token(&token),
            &sites,
            &permissions,
            expires_at,
        )
        .await
        .map_err(|e| db::describe_storage(&e))?;
    writeln!(out, "{token}").map_err(io)?;
    let expiry = expires_at.map_or_else(
        || "never expires".to_owned(),
        |at| format!("expires {}", at.format("%Y-%m-%dT%H:%M:%SZ")),
    );
    writeln!(
        err,
        "created token {id} for caller {caller:?} (sites: {sites}; permissions: {permissions}; \
         {expiry}). It is shown only this once: store it now."
    )
    .map_err(io)?;
    if first {
        writeln!(
            err,
            "this is the first active token: running servers now require authentication"
        )
        .map_err(io)?;
    }
    Ok(())
}

async fn list(store: &TokenStore, out: &mut impl Write) -> Result<(), String> {
    let tokens = store.list().await.map_err(|e| db::describe_storage(&e))?;
    writeln!(
        out,
        "{:<6} {:<24} {:<28} {:<40} {:<20} {:<20} REVOKED",
        "ID", "CALLER", "SITES", "PERMISSIONS", "CREATED", "EXPIRES"
    )
    .map_err(io)?;
    let when = |at: Option<chrono::DateTime<chrono::Utc>>| {
        at.map_or_else(
            || "-".to_owned(),
            |at| at.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
        )
    };
    for token in tokens {
        writeln!(
            out,
            "{:<6} {:<24} {:<28} {:<40} {:<20} {:<20} {}",
            token.id,
            token.caller,
            token.sites,
            token.permissions,
            token.created_at.format("%Y-%m-%dT%H:%M:%SZ"),
            when(token.expires_at),
            when(token.revoked_at),
        )
        .map_err(io)?;
    }
    Ok(())
}

async fn revoke(
    store: &TokenStore,
    caller: Option<String>,
    id: Option<i64>,
    err: &mut impl Write,
) -> Result<(), String> {
    let revoked = match (caller, id) {
        (Some(caller), _) => store
            .revoke_caller(valid_caller(&caller)?)
            .await
            .map_err(|e| db::describe_storage(&e))?,
        (None, Some(id)) => store
            .revoke_id(id)
            .await
            .map_err(|e| db::describe_storage(&e))?,
        (None, None) => return Err("name a --caller or an --id".into()),
    };
    if revoked == 0 {
        return Err("no active token matched: nothing revoked".into());
    }
    writeln!(err, "revoked {revoked} token(s)").map_err(io)?;
    Ok(())
}
