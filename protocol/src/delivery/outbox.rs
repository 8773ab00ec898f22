//! The outbox: our direct messages that their recipient has not confirmed yet.
//!
//! `insert` → due at once → `poll_due` hands it out and marks it in flight → the attempt's outcome:
//! `handle_stored` (delivered), or `handle_failed` (retry after an exponential backoff with jitter;
//! the first failure also asks for one mailbox deposit, confirmed by `handle_queued`, after which
//! direct retries continue at a slower cadence). `handle_receipt` (any path) delivers; the give-up
//! deadline fails. Status changes wait in `poll_event` until the daemon drains them.
//!
//! An attempt whose outcome is never reported stops counting as in flight after
//! [`OutboxConfig::in_flight_timeout_ms`] and is handed out again, so a lost callback cannot wedge
//! a message. Deserializing is a restart: in-flight markers, backoff timers and outstanding
//! deposit requests are not persisted, so every message not yet delivered is due again at once,
//! and one not yet queued will be offered for a deposit again on its next failure.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;

use rand_core::RngCore;
use serde::{Deserialize, Serialize};

use crate::wire::MessageId;

/// Default for [`OutboxConfig::capacity`]; a full default outbox encodes well under
/// [`crate::codec::MAX_FRAME_LEN`].
pub const DEFAULT_OUTBOX_CAPACITY: usize = 4096;

const SECOND: u64 = 1_000;
const MINUTE: u64 = 60 * SECOND;
const DAY: u64 = 24 * 60 * MINUTE;

/// The outbox's limits and retry schedule. All durations are in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxConfig {
    /// Messages held at once, counting delivered or failed ones whose event is not yet polled.
    pub capacity: usize,
    /// Delay after the first failed attempt; it doubles with each further failure…
    pub initial_backoff_ms: u64,
    /// …up to this.
    pub max_backoff_ms: u64,
    /// Delay between direct attempts once the mailbox holds the message (if larger than the above).
    pub queued_retry_ms: u64,
    /// Each delay is scaled by a uniform factor in `1 ± jitter_permille / 1000` (at most ±100%),
    /// then clamped to its cap.
    pub jitter_permille: u16,
    /// An attempt whose outcome is not reported within this is abandoned and handed out again.
    /// Must exceed the daemon's own request timeout.
    pub in_flight_timeout_ms: u64,
    /// A message with no confirmation this long after `insert` fails (the mailbox's TTL).
    pub give_up_after_ms: u64,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        Self {
            capacity: DEFAULT_OUTBOX_CAPACITY,
            initial_backoff_ms: SECOND,
            max_backoff_ms: 5 * MINUTE,
            queued_retry_ms: 30 * MINUTE,
            jitter_permille: 200,
            in_flight_timeout_ms: 2 * MINUTE,
            give_up_after_ms: 30 * DAY,
        }
    }
}

impl OutboxConfig {
    /// The delay before the next direct attempt after `failures` failed ones (counting from 1),
    /// before jitter. Non-decreasing in `failures` and in `queued`.
    pub fn nominal_backoff(&self, failures: u32, queued: bool) -> u64 {
        let direct = 1u64
            .checked_shl(failures.saturating_sub(1))
            .and_then(|factor| self.initial_backoff_ms.checked_mul(factor))
            .unwrap_or(u64::MAX)
            .min(self.max_backoff_ms);
        if queued {
            direct.max(self.queued_retry_ms)
        } else {
            direct
        }
    }

    /// The longest delay ever scheduled, jitter included.
    pub fn backoff_cap(&self, queued: bool) -> u64 {
        if queued {
            self.max_backoff_ms.max(self.queued_retry_ms)
        } else {
            self.max_backoff_ms
        }
    }

    fn jittered_backoff(&self, failures: u32, queued: bool, rng: &mut impl RngCore) -> u64 {
        let nominal = u128::from(self.nominal_backoff(failures, queued));
        let jitter = u128::from(self.jitter_permille.min(1000));
        let factor = 1000 - jitter + u128::from(rng.next_u32()) % (2 * jitter + 1);
        u64::try_from(nominal * factor / 1000)
            .unwrap_or(u64::MAX)
            .min(self.backoff_cap(queued))
    }
}

/// Where a message stands, as history and `palaver listen` show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeliveryStatus {
    /// Inserted, no attempt made yet.
    Sending,
    /// At least one direct attempt made; not confirmed.
    Sent,
    /// The recipient's mailbox holds it; direct attempts continue, more slowly.
    Queued,
    /// The recipient confirmed it (`Stored` or a receipt). Final.
    Delivered,
    /// Given up. Final, except that a receipt arriving before the event is polled still delivers.
    Failed { reason: FailureReason },
}

impl DeliveryStatus {
    /// The CLI's name for it: `sending`, `sent`, `queued`, `delivered` or `failed`.
    pub fn as_str(&self) -> &'static str {
        match self {
            DeliveryStatus::Sending => "sending",
            DeliveryStatus::Sent => "sent",
            DeliveryStatus::Queued => "queued",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Failed { .. } => "failed",
        }
    }

    /// Delivered or failed: the outbox is done with the message.
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            DeliveryStatus::Delivered | DeliveryStatus::Failed { .. }
        )
    }
}

impl fmt::Display for DeliveryStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a message failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FailureReason {
    /// No confirmation within [`OutboxConfig::give_up_after_ms`] of sending.
    Expired,
    /// The stored envelope is gone or cannot be read: there is nothing left to send.
    Lost,
    /// The recipient's key changed: sealed for the old one, it can no longer be read.
    KeyChanged,
}

impl fmt::Display for FailureReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FailureReason::Expired => f.write_str("not delivered before the give-up deadline"),
            FailureReason::Lost => f.write_str("its stored copy is gone or unreadable"),
            FailureReason::KeyChanged => {
                f.write_str("the recipient's key changed before it arrived; send it again")
            }
        }
    }
}

/// A message's status changed. Changes not yet polled coalesce: the event carries the latest status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxEvent {
    pub id: MessageId,
    pub status: DeliveryStatus,
}

/// What to do after a failed attempt ([`Outbox::handle_failed`]).
#[must_use]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// Nothing now; the next direct attempt comes out of `poll_due` at `at`.
    Retry { at: u64 },
    /// Deposit the envelope in the recipient's mailbox now, then report `handle_queued` or
    /// `handle_deposit_failed`. The next direct attempt comes out of `poll_due` at `retry_at`.
    DepositInMailbox { retry_at: u64 },
    /// The give-up deadline has passed: the message failed (its event is waiting).
    GaveUp,
    /// The message is not in flight (unknown, already final, or a report for an attempt the
    /// outbox abandoned): nothing to do.
    Ignored,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OutboxError {
    #[error("the outbox is full: {capacity} messages await delivery or an unpolled status event")]
    Full { capacity: usize },
    #[error("message {0} is already in the outbox")]
    AlreadyPresent(MessageId),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    /// Insertion order: due messages are handed out oldest first.
    order: u64,
    inserted_at: u64,
    failures: u32,
    status: DeliveryStatus,
    /// Its id waits in `Outbox::changed`.
    unreported: bool,
    // Not persisted: after a restart, the message is due at once and no attempt or deposit is
    // believed to be under way.
    #[serde(skip)]
    next_attempt_at: u64,
    #[serde(skip)]
    in_flight_until: Option<u64>,
    #[serde(skip)]
    deposit_requested: bool,
    /// Written but not yet durable ([`Outbox::insert_held`]): not handed out until released. Not
    /// persisted, since whatever a restart finds on disk is durable.
    #[serde(skip)]
    held: bool,
}

impl Entry {
    fn deadline(&self, config: &OutboxConfig) -> u64 {
        self.inserted_at.saturating_add(config.give_up_after_ms)
    }

    /// In flight at `now`. A marker further ahead than the timeout means the wall clock stepped
    /// back; it is dropped rather than trusted.
    fn in_flight(&self, now: u64, config: &OutboxConfig) -> bool {
        self.in_flight_until.is_some_and(|until| {
            now < until && until <= now.saturating_add(config.in_flight_timeout_ms)
        })
    }

    /// Its next attempt is due at `now` (a wait longer than any backoff means the clock stepped
    /// back).
    fn attempt_due(&self, now: u64, config: &OutboxConfig) -> bool {
        self.next_attempt_at <= now
            || self.next_attempt_at > now.saturating_add(config.backoff_cap(true))
    }

    fn set_status(
        &mut self,
        id: MessageId,
        status: DeliveryStatus,
        changed: &mut VecDeque<MessageId>,
    ) {
        if self.status == status {
            return;
        }
        self.status = status;
        if status.is_final() {
            self.in_flight_until = None;
            self.deposit_requested = false;
        }
        if !self.unreported {
            self.unreported = true;
            changed.push_back(id);
        }
    }
}

/// Outgoing direct messages until each is delivered or given up; the flow is in
/// [`crate::delivery`].
///
/// An attempt whose outcome is never reported stops counting as in flight after
/// [`OutboxConfig::in_flight_timeout_ms`] and is handed out again. Deserializing is a restart:
/// in-flight markers, backoff timers and outstanding deposit requests are not persisted, so every
/// message not yet delivered is due at once, and one not yet queued is offered for a deposit again
/// on its next failure. Statuses, failure counts and unpolled events are persisted.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Outbox {
    config: OutboxConfig,
    entries: BTreeMap<MessageId, Entry>,
    /// Ids with a status change not yet polled, each at most once.
    changed: VecDeque<MessageId>,
    next_order: u64,
}

impl Default for Outbox {
    fn default() -> Self {
        Self::new(OutboxConfig::default())
    }
}

impl Outbox {
    /// An empty outbox. The config is persisted with it.
    pub fn new(config: OutboxConfig) -> Self {
        Self {
            config,
            entries: BTreeMap::new(),
            changed: VecDeque::new(),
            next_order: 0,
        }
    }

    pub fn config(&self) -> &OutboxConfig {
        &self.config
    }

    /// Adds a message we just sent (status `Sending`); it is due at once. Persist the envelope
    /// before, and the outbox after.
    pub fn insert(&mut self, id: MessageId, now: u64) -> Result<(), OutboxError> {
        self.add(id, now, false)
    }

    /// Like [`Outbox::insert`], for a message whose envelope is written but not yet durable: it is
    /// not handed out until [`Outbox::release`] says it is (or a restart, which only finds what
    /// was durable). Nothing encrypted leaves before the state that encrypted it is on disk.
    pub fn insert_held(&mut self, id: MessageId, now: u64) -> Result<(), OutboxError> {
        self.add(id, now, true)
    }

    /// The held message `id` is durable now, and due. Returns whether it was held.
    pub fn release(&mut self, id: MessageId) -> bool {
        self.take_flag(&id, |entry| &mut entry.held)
    }

    /// Forgets `id` without a status event: a held message whose write failed, so it was never
    /// sent. Returns whether the outbox had it.
    pub fn remove(&mut self, id: MessageId) -> bool {
        self.entries.remove(&id).is_some()
    }

    /// Clears one of `id`'s flags; whether it was set.
    fn take_flag(&mut self, id: &MessageId, flag: impl FnOnce(&mut Entry) -> &mut bool) -> bool {
        self.entries
            .get_mut(id)
            .is_some_and(|entry| std::mem::take(flag(entry)))
    }

    fn add(&mut self, id: MessageId, now: u64, held: bool) -> Result<(), OutboxError> {
        if self.entries.contains_key(&id) {
            return Err(OutboxError::AlreadyPresent(id));
        }
        if self.entries.len() >= self.config.capacity {
            return Err(OutboxError::Full {
                capacity: self.config.capacity,
            });
        }
        self.entries.insert(
            id,
            Entry {
                order: self.next_order,
                inserted_at: now,
                failures: 0,
                status: DeliveryStatus::Sending,
                unreported: false,
                next_attempt_at: now,
                in_flight_until: None,
                deposit_requested: false,
                held,
            },
        );
        self.next_order = self.next_order.saturating_add(1);
        Ok(())
    }

    /// The messages to attempt now, oldest first, each marked in flight until its outcome is
    /// reported or the in-flight timeout passes. Also fails messages past their deadline.
    pub fn poll_due(&mut self, now: u64) -> Vec<MessageId> {
        let config = self.config;
        let mut due = Vec::new();
        for (&id, entry) in &mut self.entries {
            if entry.status.is_final() || entry.held || entry.in_flight(now, &config) {
                continue;
            }
            // Not in flight (any stale marker is an abandoned attempt).
            entry.in_flight_until = None;
            if now >= entry.deadline(&config) {
                let failed = DeliveryStatus::Failed {
                    reason: FailureReason::Expired,
                };
                entry.set_status(id, failed, &mut self.changed);
            } else if entry.attempt_due(now, &config) {
                due.push((entry.order, id));
            }
        }
        due.sort_unstable();
        let in_flight_until = now.saturating_add(config.in_flight_timeout_ms);
        due.into_iter()
            .filter_map(|(_, id)| {
                let entry = self.entries.get_mut(&id)?;
                entry.in_flight_until = Some(in_flight_until);
                if entry.status == DeliveryStatus::Sending {
                    entry.set_status(id, DeliveryStatus::Sent, &mut self.changed);
                }
                Some(id)
            })
            .collect()
    }

    /// The recipient acknowledged the envelope as durable (direct path). Returns whether this
    /// delivered a message the outbox held.
    pub fn handle_stored(&mut self, id: MessageId) -> bool {
        self.deliver(id)
    }

    /// A receipt for the message arrived, by any path. Returns whether this delivered a message
    /// the outbox held (false for unknown or already delivered ids).
    pub fn handle_receipt(&mut self, id: MessageId) -> bool {
        self.deliver(id)
    }

    fn deliver(&mut self, id: MessageId) -> bool {
        match self.entries.get_mut(&id) {
            Some(entry) if entry.status != DeliveryStatus::Delivered => {
                entry.set_status(id, DeliveryStatus::Delivered, &mut self.changed);
                true
            }
            _ => false,
        }
    }

    /// The direct attempt handed out for `id` failed (dial failure, timeout, rejection).
    pub fn handle_failed(&mut self, id: MessageId, now: u64, rng: &mut impl RngCore) -> Attempt {
        let config = self.config;
        let Some(entry) = self.entries.get_mut(&id) else {
            return Attempt::Ignored;
        };
        // Only `poll_due` clears a marker, so a report arriving just after the timeout still counts.
        if entry.status.is_final() || entry.in_flight_until.take().is_none() {
            return Attempt::Ignored;
        }
        entry.failures = entry.failures.saturating_add(1);
        if now >= entry.deadline(&config) {
            let failed = DeliveryStatus::Failed {
                reason: FailureReason::Expired,
            };
            entry.set_status(id, failed, &mut self.changed);
            return Attempt::GaveUp;
        }
        let queued = entry.status == DeliveryStatus::Queued;
        let at = now.saturating_add(config.jittered_backoff(entry.failures, queued, rng));
        entry.next_attempt_at = at;
        if queued || entry.deposit_requested {
            Attempt::Retry { at }
        } else {
            entry.deposit_requested = true;
            Attempt::DepositInMailbox { retry_at: at }
        }
    }

    /// Gives `id` up at once: there is nothing left to send (see [`FailureReason::Lost`]).
    /// Returns whether this failed a message the outbox was still waiting for.
    pub fn give_up(&mut self, id: MessageId, reason: FailureReason) -> bool {
        match self.entries.get_mut(&id) {
            Some(entry) if !entry.status.is_final() => {
                entry.in_flight_until = None;
                entry.set_status(id, DeliveryStatus::Failed { reason }, &mut self.changed);
                true
            }
            _ => false,
        }
    }

    /// The mailbox holds the message. Returns whether the outbox is still waiting for it.
    pub fn handle_queued(&mut self, id: MessageId) -> bool {
        match self.entries.get_mut(&id) {
            Some(entry) if !entry.status.is_final() => {
                entry.deposit_requested = false;
                entry.set_status(id, DeliveryStatus::Queued, &mut self.changed);
                true
            }
            _ => false,
        }
    }

    /// The deposit asked for did not happen; the next failed attempt asks again. Returns whether
    /// a deposit was outstanding.
    pub fn handle_deposit_failed(&mut self, id: MessageId) -> bool {
        self.take_flag(&id, |entry| &mut entry.deposit_requested)
    }

    /// Makes a waiting message due now, e.g. because its recipient just came online. Returns false
    /// if it is unknown, final or already in flight.
    pub fn retry_now(&mut self, id: MessageId, now: u64) -> bool {
        let config = self.config;
        match self.entries.get_mut(&id) {
            Some(entry) if !entry.status.is_final() && !entry.in_flight(now, &config) => {
                entry.next_attempt_at = now;
                true
            }
            _ => false,
        }
    }

    /// When `poll_due` must next be called: the earliest retry, in-flight timeout or deadline.
    /// May be in the past (call it now); `None` when nothing awaits delivery. The daemon should
    /// also wake at least every minute or so, so that a wall clock stepping back does not
    /// oversleep.
    pub fn poll_timeout(&self) -> Option<u64> {
        self.entries
            .values()
            .filter(|entry| !entry.status.is_final() && !entry.held)
            .map(|entry| match entry.in_flight_until {
                Some(until) => until,
                None => entry.next_attempt_at.min(entry.deadline(&self.config)),
            })
            .min()
    }

    /// The next status change, oldest first. A final one also removes the message.
    pub fn poll_event(&mut self) -> Option<OutboxEvent> {
        while let Some(id) = self.changed.pop_front() {
            let Some(entry) = self.entries.get_mut(&id) else {
                continue;
            };
            if !entry.unreported {
                continue;
            }
            entry.unreported = false;
            let status = entry.status;
            if status.is_final() {
                self.entries.remove(&id);
            }
            return Some(OutboxEvent { id, status });
        }
        None
    }

    /// Every message the outbox holds, final ones whose event is unpolled included.
    pub fn ids(&self) -> impl Iterator<Item = MessageId> + '_ {
        self.entries.keys().copied()
    }

    /// The message's status, while the outbox holds it.
    pub fn status(&self, id: &MessageId) -> Option<DeliveryStatus> {
        self.entries.get(id).map(|entry| entry.status)
    }

    /// Messages awaiting delivery (not counting final ones whose event is unpolled).
    pub fn len(&self) -> usize {
        self.entries
            .values()
            .filter(|entry| !entry.status.is_final())
            .count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests;
