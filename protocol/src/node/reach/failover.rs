//! Several rendezvous instances (`--rendezvous A --rendezvous B …`): which one we use, and when
//! to move on. The current instance failing — a dial that fails, a connection that is lost, a
//! login it refuses — moves us to the next at once; once every instance has failed in a row, the
//! next round waits, doubling from [`FAILOVER_BACKOFF`] up to [`MAX_FAILOVER_BACKOFF`]. A login
//! ends the run of failures. With one instance nothing here changes the planner's behaviour:
//! the rendezvous is redialled every [`super::RENDEZVOUS_REDIAL`] as before.

use std::time::{Duration, Instant};

use multiaddr::Multiaddr;

/// The pause after every instance failed once in a row; doubled per further round.
pub const FAILOVER_BACKOFF: Duration = Duration::from_secs(1);
pub const MAX_FAILOVER_BACKOFF: Duration = Duration::from_secs(30);

#[derive(Debug)]
pub(super) struct Instances {
    addrs: Vec<Multiaddr>,
    current: usize,
    /// Instances that failed since the last login.
    failures: u32,
    /// No dial to the rendezvous before this.
    not_before: Option<Instant>,
}

impl Instances {
    /// `addrs` must not be empty (the caller's first address is the preferred instance).
    pub(super) fn new(addrs: Vec<Multiaddr>) -> Self {
        Self {
            addrs,
            current: 0,
            failures: 0,
            not_before: None,
        }
    }

    pub(super) fn all(&self) -> &[Multiaddr] {
        &self.addrs
    }

    pub(super) fn several(&self) -> bool {
        self.addrs.len() > 1
    }

    /// The instance to use now (`None` only for an empty list, which `Reach` refuses).
    pub(super) fn current(&self) -> Option<&Multiaddr> {
        self.addrs.get(self.current)
    }

    /// Whether the backoff holds dials back at `now`, and until when.
    pub(super) fn waiting(&self, now: Instant) -> Option<Instant> {
        self.not_before.filter(|at| *at > now)
    }

    /// The current instance failed: move to the next. Returns whether it moved (with one
    /// instance there is nowhere to go).
    pub(super) fn fail(&mut self, now: Instant) -> bool {
        if !self.several() {
            return false;
        }
        self.failures = self.failures.saturating_add(1);
        self.current = (self.current + 1) % self.addrs.len();
        let len = u32::try_from(self.addrs.len()).unwrap_or(u32::MAX);
        if self.failures.is_multiple_of(len) {
            let rounds = self.failures / len;
            let backoff = FAILOVER_BACKOFF
                .saturating_mul(1u32 << (rounds - 1).min(16))
                .min(MAX_FAILOVER_BACKOFF);
            self.not_before = Some(now + backoff);
        }
        true
    }

    /// Logged in at the current instance.
    pub(super) fn succeeded(&mut self) {
        self.failures = 0;
        self.not_before = None;
    }
}
