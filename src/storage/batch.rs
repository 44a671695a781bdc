//! PostgreSQL: concurrent calls' statements of one kind, sent as one.
//!
//! Each statement costs the database its own executor start-up (and, for a
//! write, its commit and wake-up), and the server a connection checkout and
//! a round trip, which outweigh the rows a call reads or writes. So at most
//! [`Batch::RUNNING`] statements of a kind run at once; a call that arrives
//! while they do waits for the next one, which carries every call waiting
//! by then (up to [`Batch::MAX_MEMBERS`]). A lone call still costs one
//! statement.
//!
//! Statements run in tasks of their own: a caller that goes away (a
//! cancelled request) never cuts its neighbours' statement short. A member
//! whose caller went away before its statement was built is left out, as a
//! cancelled call that never reached the database.

use std::sync::{Arc, Mutex, MutexGuard};

use sea_orm::{DbErr, RuntimeErr};
use tokio::sync::oneshot;

use super::error::StorageError;

/// One kind of statement that concurrent calls share.
pub(crate) trait Batch: Send + Sync + 'static {
    /// What one call asks.
    type Member: Send + std::fmt::Debug + 'static;
    /// What one call is answered.
    type Reply: Send + std::fmt::Debug + 'static;
    /// Statements in flight at once before calls wait to share the next.
    const RUNNING: usize;
    /// Most calls in one statement.
    const MAX_MEMBERS: usize;

    /// The members' replies, in their order.
    fn run(&self, members: Vec<Self::Member>) -> impl Future<Output = Vec<Self::Reply>> + Send;
}

/// The queue of one kind of statement (see the module's doc).
#[derive(Debug)]
pub(crate) struct Batcher<B: Batch> {
    shared: Arc<Shared<B>>,
}

#[derive(Debug)]
struct Shared<B: Batch> {
    batch: B,
    pending: Mutex<Pending<B>>,
}

#[derive(Debug)]
struct Pending<B: Batch> {
    running: usize,
    queue: Vec<Queued<B>>,
}

#[derive(Debug)]
struct Queued<B: Batch> {
    member: B::Member,
    reply: oneshot::Sender<B::Reply>,
}

impl<B: Batch> Batcher<B> {
    pub(crate) fn new(batch: B) -> Self {
        Self {
            shared: Arc::new(Shared {
                batch,
                pending: Mutex::new(Pending {
                    running: 0,
                    queue: Vec::new(),
                }),
            }),
        }
    }

    pub(crate) fn batch(&self) -> &B {
        &self.shared.batch
    }

    /// Calls waiting for a statement now.
    pub(crate) fn queued(&self) -> usize {
        lock(&self.shared).queue.len()
    }

    /// `member`'s reply from the next statement; `None` if its statement's
    /// task ended without one (it panicked).
    pub(crate) async fn submit(&self, member: B::Member) -> Option<B::Reply> {
        let (reply, answer) = oneshot::channel();
        {
            let mut pending = lock(&self.shared);
            pending.queue.push(Queued { member, reply });
            if pending.running < B::RUNNING {
                pending.running += 1;
                tokio::spawn(run(Runner {
                    shared: self.shared.clone(),
                }));
            }
        }
        answer.await.ok()
    }
}

fn lock<B: Batch>(shared: &Shared<B>) -> MutexGuard<'_, Pending<B>> {
    // A panic while holding this lock leaves the queue intact.
    shared.pending.lock().unwrap_or_else(|e| e.into_inner())
}

/// One statement slot, taken by `submit`; given back when its task ends,
/// when one more is started if calls are waiting (so a task that panics
/// strands nobody).
struct Runner<B: Batch> {
    shared: Arc<Shared<B>>,
}

impl<B: Batch> Drop for Runner<B> {
    fn drop(&mut self) {
        let mut pending = lock(&self.shared);
        pending.running -= 1;
        // Members whose callers left are dropped by the next run.
        if pending.queue.is_empty() {
            return;
        }
        // Outside a runtime (shutdown) the waiting calls' answers are
        // dropped, and they fail as their own tasks end.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        pending.running += 1;
        runtime.spawn(run(Runner {
            shared: self.shared.clone(),
        }));
    }
}

/// Runs statements while calls wait, then gives its slot back.
async fn run<B: Batch>(runner: Runner<B>) {
    let shared = runner.shared.clone();
    loop {
        let (members, replies): (Vec<_>, Vec<_>) = {
            let mut pending = lock(&shared);
            pending.queue.retain(|q| !q.reply.is_closed());
            let take = pending.queue.len().min(B::MAX_MEMBERS);
            pending
                .queue
                .drain(..take)
                .map(|q| (q.member, q.reply))
                .unzip()
        };
        if members.is_empty() {
            return;
        }
        let answers = shared.batch.run(members).await;
        for (reply, answer) in replies.into_iter().zip(answers) {
            let _ = reply.send(answer);
        }
    }
}

/// The same failure for another member: the same kind, so each member's
/// call is answered as a lone one would be, with the message as its cause.
pub(crate) fn share(err: &StorageError) -> StorageError {
    let cause = || DbErr::Conn(RuntimeErr::Internal(err.to_string()));
    match err {
        StorageError::Rule(rule) => StorageError::Rule(rule.clone()),
        StorageError::Unavailable(_) => StorageError::Unavailable(cause()),
        StorageError::CommitOutcomeUnknown(_) => StorageError::CommitOutcomeUnknown(cause()),
        StorageError::Full(_) => StorageError::Full(cause()),
        StorageError::Busy(_) => StorageError::Busy(cause()),
        StorageError::Overloaded(_) => StorageError::Overloaded(cause()),
        StorageError::Conflict(_) => StorageError::Conflict(cause()),
        StorageError::Database(_) => StorageError::Database(cause()),
        StorageError::Corrupt(message) => StorageError::Corrupt(message.clone()),
    }
}
