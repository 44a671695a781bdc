-- What the service reads before it writes a removal or a re-link on
-- PostgreSQL (the statement of storage::repository's unlocked load): the
-- site, the account with its row version, its identities and login IDs, in
-- one statement and snapshot. The domain rules decide from it what the
-- write does. bench/run.sh puts it before each transaction of
-- remove_connection.sql for the ceiling "with the read": the database's
-- own rate for the same writes when each is decided by a read first.
-- Variables: uid (set by remove_connection.sql).
SELECT s.id AS s_id, s.api_key AS s_api_key, s.vhost AS s_vhost, s.name AS s_name, s.unlink_action_enabled AS s_unlink_action_enabled, s.allowed_redirect_origins AS s_allowed_redirect_origins, s.allowed_browser_origins AS s_allowed_browser_origins, s.created_at AS s_created_at, s.updated_at AS s_updated_at, a.id AS a_id, a.site_id AS a_site_id, a.uid AS a_uid, a.created_at AS a_created_at, a.updated_at AS a_updated_at, a.xmin::text AS row_version, x.* FROM accounts a JOIN sites s ON s.id = a.site_id LEFT JOIN LATERAL (SELECT 0 AS kind, id, account_id AS owner, provider, sub_provider, provider_uid, login_id, state, session IS NOT NULL AS has_session, FALSE AS has_password, linked_at, updated_at FROM identities WHERE account_id = a.id UNION ALL SELECT 1, id, account_id, NULL, NULL, NULL, login_id, NULL, FALSE, has_password, created_at, created_at FROM login_ids WHERE account_id = a.id) x ON TRUE WHERE a.uid = (:uid)::text AND s.api_key = '3_bench';
