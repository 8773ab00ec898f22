//! Delivery bookkeeping as sans-IO state machines: what to send when, what is new, in what order.
//!
//! Sending a direct message: stamp its [`Content`](crate::wire::Content) with
//! [`HybridClock::tick`] and [`SequenceTracker::next_own_seq`], store the envelope, then
//! [`Outbox::insert`] its id. The actor loop sleeps until [`Outbox::poll_timeout`], sends every id
//! [`Outbox::poll_due`] hands out, and reports each attempt: [`Outbox::handle_stored`] on the
//! recipient's `Stored`, else [`Outbox::handle_failed`], whose [`Attempt::DepositInMailbox`] asks for
//! one deposit at the rendezvous (answered by [`Outbox::handle_queued`] or
//! [`Outbox::handle_deposit_failed`]). A receipt by any path is [`Outbox::handle_receipt`]. After
//! every call, drain [`Outbox::poll_event`] into history and `listen`.
//!
//! Receiving: [`Dedup`] drops recently seen ids before the store is touched; the store's id check
//! is the durable dedup; [`SequenceTracker::observe`] keeps per-sender cursors and gaps for gap fill;
//! [`HybridClock::observe`] moves our clock past the sender's (within a drift bound) and gives the
//! stamp to file the message under; history is keyed by
//! [`HistoryOrder::to_key_bytes`], whose byte order is display order.
//!
//! Nothing here reads a clock or draws randomness: `now` is wall-clock milliseconds since the Unix
//! epoch (so persisted deadlines survive a restart) and the RNG is passed in, so every run is
//! reproducible from its inputs.

mod dedup;
mod order;
mod outbox;
mod sequence;

pub use dedup::{DEFAULT_DEDUP_CAPACITY, Dedup};
pub use order::{HISTORY_KEY_LEN, HistoryOrder, HybridClock, MAX_DRIFT_MS, Stamp};
pub use outbox::{
    Attempt, DEFAULT_OUTBOX_CAPACITY, DeliveryStatus, FailureReason, Outbox, OutboxConfig,
    OutboxError, OutboxEvent,
};
pub use sequence::{
    MAX_AHEAD_PER_SENDER, MAX_AHEAD_TOTAL, MAX_GAP_RANGES, MAX_SENDERS, Observation, SequenceError,
    SequenceTracker, next_own_seq_after,
};
