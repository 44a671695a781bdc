//! The sequencer's stamping as one PostgreSQL function, so that a stamp is
//! one round trip and one implicit transaction instead of seven (check,
//! BEGIN, lock, stamp, head, notify, COMMIT): that trip sits between every
//! removal's commit and its delivery. Each statement of a VOLATILE plpgsql
//! function takes a fresh snapshot, so the stamp sees every row committed
//! before the `event_sequence` lock was granted, exactly as the separate
//! statements did. SQLite stamps in the writing transaction and has none.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// Returns the rows it stamped (position and payload), none when nothing
/// was pending. The unlocked check first keeps an idle call from locking
/// (and so from committing an xid with an fsync). The returned columns are
/// not named like the table's, which plpgsql would find ambiguous.
const CREATE: &str = r#"
CREATE OR REPLACE FUNCTION connections_stamp_events(batch bigint, channel text)
RETURNS TABLE (stamped_position bigint, stamped_payload text)
LANGUAGE plpgsql VOLATILE AS $fn$
DECLARE
    head bigint;
    stamped bigint;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM events e WHERE e.position IS NULL) THEN
        RETURN;
    END IF;
    SELECT s.last_position INTO head FROM event_sequence s WHERE s.id = 1 FOR UPDATE;
    IF head IS NULL THEN
        RAISE EXCEPTION 'event_sequence row is missing';
    END IF;
    RETURN QUERY
    WITH pending AS (
        SELECT e.id, row_number() OVER (ORDER BY e.id) AS rn
        FROM events e WHERE e.position IS NULL ORDER BY e.id LIMIT batch)
    UPDATE events SET position = head + pending.rn
    FROM pending WHERE events.id = pending.id
    RETURNING events.position, events.payload;
    GET DIAGNOSTICS stamped = ROW_COUNT;
    IF stamped > 0 THEN
        UPDATE event_sequence SET last_position = head + stamped WHERE id = 1;
        PERFORM pg_notify(channel, (head + stamped)::text);
    END IF;
END
$fn$
"#;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        super::on_postgres(manager, CREATE).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        super::on_postgres(
            manager,
            "DROP FUNCTION IF EXISTS connections_stamp_events(bigint, text)",
        )
        .await
    }
}
