//! Which pooled PostgreSQL connections are tested (pinged) before use.
//!
//! sqlx pings a connection at every checkout by default: a round trip and a
//! wake-up of its backend before each statement, which on a busy machine
//! costs more than many of the statements themselves. A connection that was
//! working when it went back to the pool and was used moments ago is almost
//! always still working; the ones worth a ping are those that may have died
//! while idle:
//!
//! - a connection idle for [`IDLE_TEST_AFTER`] or longer (a restarted or
//!   failed-over server, a connection dropped by the network);
//! - every connection that went idle before, or just after, any call of the
//!   process last met a lost connection ([`connection_lost`]): when the
//!   server's backends are killed or restarted, the pool's other idle
//!   connections are usually dead too, and the retry of the call that met
//!   the first one must not meet the next. [`LOSS_GRACE`] covers a dead
//!   connection that goes back to the pool just after its loss was seen
//!   (sqlx releases connections from a task of its own).
//!
//! A connection that fails its ping is closed and the pool tries another
//! (or opens one), as with sqlx's own check.

use std::{
    sync::{
        LazyLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use futures::future::BoxFuture;
use sea_orm::sqlx::{self, Connection, pool::PoolConnectionMetadata, postgres::PgConnection};

/// A connection idle this long is tested before use.
const IDLE_TEST_AFTER: Duration = Duration::from_secs(10);

/// After a lost connection, connections that went idle up to this long
/// after it was seen are tested too.
const LOSS_GRACE: Duration = Duration::from_secs(1);

static CLOCK: LazyLock<Instant> = LazyLock::new(Instant::now);

/// When a lost connection was last seen: milliseconds since [`CLOCK`] plus
/// one; zero for never.
static LAST_LOSS: AtomicU64 = AtomicU64::new(0);

/// A call met a lost connection (or could not open one): idle connections
/// are tested before their next use.
pub(crate) fn connection_lost() {
    let millis = u64::try_from(CLOCK.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
    LAST_LOSS.fetch_max(millis.saturating_add(1), Ordering::Relaxed);
}

/// Whether a connection idle for `idle_for` is tested before use now.
fn worth_testing(idle_for: Duration) -> bool {
    let last_loss = match LAST_LOSS.load(Ordering::Relaxed) {
        0 => None,
        millis => Some(Duration::from_millis(millis - 1)),
    };
    suspect(CLOCK.elapsed(), idle_for, last_loss)
}

/// The pools' `before_acquire`: pings `conn` if it is [`worth_testing`]
/// (a failed ping closes it, and the pool tries another).
pub(crate) fn test_if_suspect(
    conn: &mut PgConnection,
    meta: PoolConnectionMetadata,
) -> BoxFuture<'_, Result<bool, sqlx::Error>> {
    Box::pin(async move {
        if worth_testing(meta.idle_for) {
            conn.ping().await?;
        }
        Ok(true)
    })
}

/// The rule of [`worth_testing`], with every time since [`CLOCK`]'s start.
fn suspect(now: Duration, idle_for: Duration, last_loss: Option<Duration>) -> bool {
    if idle_for >= IDLE_TEST_AFTER {
        return true;
    }
    let Some(last_loss) = last_loss else {
        return false;
    };
    let idle_since = now.saturating_sub(idle_for);
    idle_since < last_loss + LOSS_GRACE
}

#[cfg(test)]
mod tests {
    use super::*;

    const fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_connection_used_moments_ago_is_not_tested() {
        assert!(!suspect(ms(60_000), ms(3), None));
        // A loss long before it went idle says nothing about it.
        assert!(!suspect(ms(60_000), ms(3), Some(ms(30_000))));
    }

    #[test]
    fn a_connection_idle_for_long_is_tested() {
        assert!(suspect(ms(60_000), IDLE_TEST_AFTER, None));
        assert!(!suspect(ms(60_000), IDLE_TEST_AFTER - ms(1), None));
    }

    #[test]
    fn connections_idle_since_before_a_loss_are_tested() {
        // Idle since 59,000; the loss was seen at 59,500.
        assert!(suspect(ms(60_000), ms(1_000), Some(ms(59_500))));
    }

    #[test]
    fn connections_released_just_after_a_loss_are_tested_too() {
        // Released 200 ms after the loss was seen (sqlx releases in a task).
        assert!(suspect(ms(60_000), ms(300), Some(ms(59_500))));
        // ... but not once the grace has passed.
        assert!(!suspect(ms(62_000), ms(300), Some(ms(59_500))));
    }

    #[test]
    fn a_seen_loss_marks_the_connections_idle_now() {
        connection_lost();
        assert!(worth_testing(ms(0)));
    }
}
