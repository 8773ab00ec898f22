//! Group commit: whatever must wait until earlier writes are on disk (an acknowledgement, a
//! reply, the first send of a new ciphertext) waits for the next flush to finish, one flush at a
//! time, so a burst of messages costs a couple of fsyncs, not one each. The driver runs the
//! flushes off its loop; this decides which waiters each one covers.

/// Waiters for the next flush past which incoming work that would wait is turned away.
pub const MAX_WAITING: usize = 4096;

/// Why incoming work was turned away ([`GroupCommit::admit`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the recipient is busy writing; try again")]
pub struct Busy;

/// Who waits for which flush. One flush at a time: the waiters of the one under way, and those
/// for the next. A flush counts as under way until its waiters have all run, so whatever they
/// write (a receipt, a key) waits for the next flush rather than starting one beside it.
#[derive(Debug)]
pub struct GroupCommit<T> {
    waiting: Vec<T>,
    flushing: Option<Vec<T>>,
}

impl<T> Default for GroupCommit<T> {
    fn default() -> Self {
        Self {
            waiting: Vec::new(),
            flushing: None,
        }
    }
}

impl<T> GroupCommit<T> {
    /// Whether incoming work that would wait for the next flush (a delivery) is taken in now:
    /// not while [`MAX_WAITING`] wait already (its sender tries again later, or deposits it in
    /// the mailbox, which we fetch in batches). Replies to our own user are never turned away.
    pub fn admit(&self) -> Result<(), Busy> {
        if self.waiting.len() >= MAX_WAITING {
            return Err(Busy);
        }
        Ok(())
    }

    /// Queues `then` for the next flush; `true` if that flush should start now.
    pub fn wait(&mut self, then: T) -> bool {
        self.waiting.push(then);
        self.flushing.is_none()
    }

    /// A flush starts: it covers everything waiting.
    pub fn start(&mut self) {
        debug_assert!(self.flushing.is_none(), "one flush at a time");
        self.flushing = Some(std::mem::take(&mut self.waiting));
    }

    /// The flush is done: its waiters, to run. It stays under way until [`GroupCommit::settle`].
    pub fn finish(&mut self) -> Vec<T> {
        self.flushing.replace(Vec::new()).unwrap_or_default()
    }

    /// The waiters have run; `true` if the next flush should start.
    pub fn settle(&mut self) -> bool {
        self.flushing = None;
        !self.waiting.is_empty()
    }

    /// Everything still waiting, under way or not (on the way out).
    pub fn drain(&mut self) -> Vec<T> {
        let mut all = self.flushing.take().unwrap_or_default();
        all.append(&mut self.waiting);
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_flush_at_a_time_and_no_waiter_is_dropped() {
        let mut commit = GroupCommit::default();
        assert!(commit.wait(1), "nothing under way: flush now");
        commit.start();
        assert!(!commit.wait(2), "under way: wait for the next");
        let done = commit.finish();
        assert_eq!(done, vec![1]);
        // What the waiters write while they run (two receipts, say) waits for the next flush.
        assert!(!commit.wait(3));
        assert!(!commit.wait(4));
        assert!(commit.settle(), "the next flush starts once they have run");
        commit.start();
        assert!(!commit.wait(5));
        assert_eq!(commit.finish(), vec![2, 3, 4]);
        assert!(commit.settle());
        assert_eq!(commit.drain(), vec![5]);
        assert!(commit.drain().is_empty());
    }

    #[test]
    fn a_backlog_of_waiters_says_so() {
        let mut commit = GroupCommit::default();
        commit.start();
        for i in 0..MAX_WAITING {
            assert_eq!(commit.admit(), Ok(()));
            commit.wait(i);
        }
        assert_eq!(commit.admit(), Err(Busy));
        commit.finish();
        commit.settle();
        commit.start();
        assert_eq!(commit.admit(), Ok(()), "the next flush covers them");
    }
}
