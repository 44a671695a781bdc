//! A write's lock and read as one PostgreSQL function, so that they are one
//! round trip instead of two (`Repository::lock_and_load`). They cannot be
//! one statement: a statement that waited for the account's row lock reads
//! the other tables in its snapshot from before the wait, which may predate
//! the change that held the lock. Each statement of a VOLATILE plpgsql
//! function takes a fresh snapshot, so the read after the lock sees every
//! change committed before the lock was granted, as two statements did.
//! SQLite's write transaction already holds its one write lock, so it reads
//! in one plain statement and has no function.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// The site (by api key, else by vhost) and the account, its row locked
/// until the transaction ends, with its identities (kind 0) and login IDs
/// (1), the site's mapping of a provider identity (2) and the owner of a
/// login ID (3) when asked for: the same rows, named the same, as SQLite's
/// statement. No rows: no such site. One row with NULL `a_id`: the site has
/// no such account. Only the account row is locked: locking the site's
/// would make every write on a site wait for the one before it. The `s_` and
/// `a_` columns are the entities' (read with `FromQueryResult` prefixes): a
/// migration that changes the `sites` or `accounts` columns replaces this
/// function too.
const CREATE: &str = r#"
CREATE OR REPLACE FUNCTION connections_lock_and_load(
    p_api_key text, p_vhost bigint, p_uid text,
    p_provider text, p_sub_provider text, p_provider_uid text, p_login text)
RETURNS TABLE (
    s_id bigint, s_api_key varchar, s_vhost bigint, s_name varchar,
    s_unlink_action_enabled boolean, s_allowed_redirect_origins text,
    s_allowed_browser_origins text, s_created_at timestamptz, s_updated_at timestamptz,
    a_id bigint, a_site_id bigint, a_uid varchar, a_created_at timestamptz,
    a_updated_at timestamptz,
    kind integer, id bigint, owner bigint, provider varchar, sub_provider varchar,
    provider_uid varchar, login_id varchar, state varchar, has_session boolean,
    has_password boolean, linked_at timestamptz, updated_at timestamptz)
LANGUAGE plpgsql VOLATILE AS $fn$
#variable_conflict use_column
DECLARE
    st sites%ROWTYPE;
    ac accounts%ROWTYPE;
BEGIN
    IF p_api_key IS NOT NULL THEN
        SELECT * INTO st FROM sites s WHERE s.api_key = p_api_key;
    ELSE
        SELECT * INTO st FROM sites s WHERE s.vhost = p_vhost;
    END IF;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    SELECT * INTO ac FROM accounts a WHERE a.site_id = st.id AND a.uid = p_uid FOR UPDATE;
    RETURN QUERY
    SELECT st.id, st.api_key, st.vhost, st.name, st.unlink_action_enabled,
           st.allowed_redirect_origins, st.allowed_browser_origins, st.created_at,
           st.updated_at, ac.id, ac.site_id, ac.uid, ac.created_at, ac.updated_at, x.*
    FROM (SELECT 1) AS one LEFT JOIN (
        SELECT 0 AS kind, i.id, i.account_id, i.provider, i.sub_provider, i.provider_uid,
               i.login_id, i.state, i.session IS NOT NULL, FALSE, i.linked_at, i.updated_at
        FROM identities i WHERE i.account_id = ac.id
        UNION ALL
        SELECT 1, l.id, l.account_id, NULL, NULL, NULL, l.login_id, NULL, FALSE,
               l.has_password, l.created_at, l.created_at
        FROM login_ids l WHERE l.account_id = ac.id
        UNION ALL
        SELECT 2, i.id, i.account_id, i.provider, i.sub_provider, i.provider_uid,
               i.login_id, i.state, i.session IS NOT NULL, FALSE, i.linked_at, i.updated_at
        FROM identities i
        WHERE ac.id IS NOT NULL AND p_provider IS NOT NULL AND i.site_id = st.id
          AND i.provider = p_provider AND i.sub_provider = p_sub_provider
          AND i.provider_uid = p_provider_uid
        UNION ALL
        SELECT 3, l.id, l.account_id, NULL, NULL, NULL, l.login_id, NULL, FALSE,
               l.has_password, l.created_at, l.created_at
        FROM login_ids l
        WHERE ac.id IS NOT NULL AND p_login IS NOT NULL AND l.site_id = st.id
          AND l.login_id = p_login
    ) AS x ON TRUE
    ORDER BY x.kind, x.id;
END
$fn$
"#;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        super::on_postgres(manager, CREATE).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        super::on_postgres(manager, "DROP FUNCTION IF EXISTS connections_lock_and_load(text, bigint, text, text, text, text, text)").await
    }
}
