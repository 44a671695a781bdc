//! The attempt a task owes after a wake-up, with a back-off for a task that
//! reads or writes on every wake-up (the fan-out, the sequencer): under load
//! every commit wakes it, so a failure that persists (the database is down,
//! a row it cannot read or stamp) would be retried, and logged, once per
//! commit. After a failure the next attempt waits 20 ms, doubling up to the
//! poll interval, whatever wakes the task.

use std::time::Duration;

use tokio::time::Instant;

/// The wait before the first retry.
pub(crate) const FIRST_RETRY: Duration = Duration::from_millis(20);

/// Whether an attempt is owed, consecutive failures, and when the next
/// attempt may run.
#[derive(Debug)]
pub(crate) struct Retry {
    /// What the task does, for the log line of its recovery
    /// (`"<doing> again"`).
    doing: &'static str,
    owed: bool,
    failures: u32,
    not_before: Option<Instant>,
    longest: Duration,
}

impl Retry {
    /// Owes a first attempt.
    pub(crate) fn new(longest: Duration, doing: &'static str) -> Self {
        Self {
            doing,
            owed: true,
            failures: 0,
            not_before: None,
            longest: longest.max(FIRST_RETRY),
        }
    }

    /// Marks an attempt owed (a wake-up that did not settle what is new).
    pub(crate) fn owe(&mut self, owed: bool) {
        self.owed |= owed;
    }

    /// An attempt is owed and no back-off holds it.
    pub(crate) fn ready(&self) -> bool {
        self.owed && self.allows()
    }

    fn allows(&self) -> bool {
        self.not_before.is_none_or(|at| Instant::now() >= at)
    }

    /// Failures in a row so far.
    pub(crate) fn failures(&self) -> u32 {
        self.failures
    }

    /// Records an attempt's outcome: a success (see [`Self::succeeded`]),
    /// or a failure, returned with the wait before the next attempt (see
    /// [`Self::failed`]) for the caller's warning.
    pub(crate) fn record<E>(&mut self, outcome: Result<(), E>) -> Option<(E, Duration)> {
        match outcome {
            Ok(()) => {
                self.succeeded();
                None
            }
            Err(err) => Some((err, self.failed())),
        }
    }

    /// Records a failure (the attempt stays owed); returns the wait before
    /// the next attempt: doubling from [`FIRST_RETRY`] up to the longest.
    fn failed(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let doublings = (self.failures - 1).min(16);
        let wait = FIRST_RETRY.saturating_mul(1 << doublings).min(self.longest);
        self.not_before = Some(Instant::now() + wait);
        wait
    }

    /// Records a success (nothing owed); logs the recovery after failures.
    fn succeeded(&mut self) {
        self.owed = false;
        self.not_before = None;
        let failures = std::mem::take(&mut self.failures);
        if failures > 0 {
            tracing::info!(failures, "{} again", self.doing);
        }
    }

    /// Resolves when an owed, held-back attempt may run; never otherwise.
    pub(crate) async fn elapsed(&self) {
        match (self.owed, self.not_before) {
            (true, Some(at)) => tokio::time::sleep_until(at).await,
            _ => std::future::pending().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn failures_wait_longer_each_time_up_to_the_longest() {
        let mut retry = Retry::new(Duration::from_millis(100), "testing");
        assert!(retry.allows());
        let waits: Vec<u128> = (0..5).map(|_| retry.failed().as_millis()).collect();
        assert_eq!(waits, vec![20, 40, 80, 100, 100]);
        assert_eq!(retry.failures(), 5);
        assert!(!retry.allows());
        tokio::time::advance(Duration::from_millis(99)).await;
        assert!(!retry.allows());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(retry.allows());
        retry.elapsed().await;

        retry.succeeded();
        assert_eq!(retry.failures(), 0);
        assert_eq!(retry.failed(), FIRST_RETRY, "a success starts over");
    }

    #[tokio::test(start_paused = true)]
    async fn with_no_failure_the_retry_never_fires() {
        let retry = Retry::new(Duration::from_secs(1), "testing");
        let fired = tokio::time::timeout(Duration::from_secs(3600), retry.elapsed()).await;
        assert!(fired.is_err());
    }
}
