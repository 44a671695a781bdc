//! `connections action-link`: a signed unlink action link from the command
//! line, minted by the same use case as `AdminService.SignUnlinkLink`, on
//! the server's database and with its secret key (`--session-key`), which
//! opens the site's action secret. The link goes to stdout, its expiry to
//! stderr.

use std::io::Write;

use crate::{
    access::{CallContext, Caller},
    app::App,
    cli::ActionLinkArgs,
    config::{Settings, parse_session_key},
    service::SignLinkRequest,
};

/// The actor of a command-line call (it has every site).
const CLI_ACTOR: &str = "cli";

pub async fn run(
    args: ActionLinkArgs,
    out: &mut impl Write,
    err: &mut impl Write,
) -> Result<(), String> {
    let ActionLinkArgs {
        vhost,
        uid,
        redirect_url,
        external_id_provider_name,
        sub_provider_name,
        ttl_seconds,
        base_url,
        session_key,
        database,
    } = args;
    let mut settings = Settings::for_database(database.database_url);
    settings.session_key = Some(parse_session_key(&session_key)?);
    settings.http_listen = None;
    let app = App::build(&settings).await.map_err(|e| e.to_string())?;
    let call = CallContext::new(Caller {
        name: CLI_ACTOR.to_owned(),
        sites: crate::access::SiteScope::All,
        uid: None,
    });
    let request = SignLinkRequest {
        ttl_seconds: Some(ttl_seconds),
        base_url,
        ..SignLinkRequest::new(
            vhost,
            uid,
            redirect_url,
            external_id_provider_name,
            sub_provider_name,
        )
    };
    let signed = app.services().sign_unlink_link(&call, request).await;
    app.repo().close().await;
    let signed = signed.map_err(|e| e.to_string())?;
    writeln!(out, "{}", signed.url).map_err(|e| format!("cannot write output: {e}"))?;
    writeln!(
        err,
        "acts once, until {} (then the link has expired)",
        signed.expires_at.to_rfc3339()
    )
    .map_err(|e| format!("cannot write output: {e}"))?;
    Ok(())
}
