//! `connections token create|list|revoke`: managing API tokens from the
//! command line, and `connections user-token create|revoke` for the browser
//! SDK's user tokens. A new token is printed once, on stdout, and never
//! again: only its SHA-256 is stored, and nothing else prints it.

use std::io::Write;

use crate::{
    access::{
        format_permissions, format_sites, generate_token, hash_token, parse_permissions,
        parse_sites,
    },
    cli::{TokenCommand, TokenCreateArgs, UserTokenCommand},
    domain::{ApiKey, Uid},
    service::UserTokenRequest,
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
    let (connection, store) = open(database_url).await?;
    let result = match command {
        TokenCommand::Create(args) => create(&store, &args, out, err).await,
        TokenCommand::List(_) => list(&store, out).await,
        TokenCommand::Revoke(args) => revoke(&store, args.caller, args.id, err).await,
    };
    connection.close().await.ok();
    result
}

/// Runs a user-token command: `out` gets the token (create), `err` the
/// human notes. The site is not looked up here (the server does that for the
/// RPC): a token for a site that does not exist can do nothing.
pub async fn run_user(
    command: UserTokenCommand,
    out: &mut impl Write,
    err: &mut impl Write,
) -> Result<(), String> {
    let database_url = match &command {
        UserTokenCommand::Create(args) => &args.database.database_url,
        UserTokenCommand::Revoke(args) => &args.database.database_url,
    };
    let (connection, store) = open(database_url).await?;
    let result = match command {
        UserTokenCommand::Create(args) => {
            let ttl = args
                .ttl
                .as_deref()
                .map(|spec| crate::config::parse_duration(spec).map_err(|e| format!("--ttl: {e}")))
                .transpose()?
                .map_or(0, |ttl| i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX));
            let request = UserTokenRequest::parse(&args.api_key, &args.uid, ttl)
                .map_err(|e| e.to_string())?;
            match request.mint(&store).await {
                Ok(created) => writeln!(out, "{}", created.token)
                    .and_then(|()| {
                        writeln!(
                            err,
                            "created user token {} for uid {:?} of site {} (expires {}). It is \
                             shown only this once: hand it to that user's page.",
                            created.token_id,
                            request.uid.as_str(),
                            request.api_key,
                            created.expires_at.format("%Y-%m-%dT%H:%M:%SZ"),
                        )
                    })
                    .map_err(io),
                Err(e) => Err(e.to_string()),
            }
        }
        UserTokenCommand::Revoke(args) => {
            let api_key = ApiKey::parse_key("api_key", &args.api_key).map_err(|e| e.to_string())?;
            let uid = Uid::parse("uid", &args.uid).map_err(|e| e.to_string())?;
            match store.revoke_user(api_key.as_str(), uid.as_str()).await {
                Ok(revoked) => writeln!(err, "revoked {revoked} user token(s)").map_err(io),
                Err(e) => Err(e.to_string()),
            }
        }
    };
    connection.close().await.ok();
    result
}

async fn open(database_url: &str) -> Result<(sea_orm::DatabaseConnection, TokenStore), String> {
    let connection = db::open_migrated(database_url).await?;
    let store = TokenStore::new(connection.clone());
    Ok((connection, store))
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
