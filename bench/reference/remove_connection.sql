-- The PostgreSQL ceiling for one RemoveConnection, run by pgbench from
-- bench/run.sh: the minimum statements a removal must make (lock the account,
-- delete the identity, insert the outbox row, commit), then the re-link that
-- restores the account, exactly as the service workload re-links after each
-- removal. Each pgbench client works on its own slice of the accounts.
-- Variables: site_id, first_uid, accounts, clients. The payload is filler of
-- the size the service stores (pgbench would take its colons for variables).
\set slot random(0, :accounts / :clients - 1)
\set uid :first_uid + :client_id + :clients * :slot
BEGIN;
SELECT id AS account_id FROM accounts WHERE site_id = :site_id AND uid = (:uid)::text FOR UPDATE \gset
DELETE FROM identities WHERE account_id = :account_id AND provider = 'facebook';
INSERT INTO events (event_id, occurred_at, api_key, provider, source, payload) VALUES (gen_random_uuid()::text, now(), '3_bench', 'facebook', 'REFERENCE', repeat('p', 470));
COMMIT;
BEGIN;
SELECT id AS account_id FROM accounts WHERE site_id = :site_id AND uid = (:uid)::text FOR UPDATE \gset
INSERT INTO identities (site_id, account_id, provider, sub_provider, provider_uid, login_id, state, session, linked_at, updated_at) VALUES (:site_id, :account_id, 'facebook', '', 'facebook-' || (:uid)::text, NULL, 'ACTIVE', '\x000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f303132333435363738393a3b'::bytea, now(), now());
COMMIT;
