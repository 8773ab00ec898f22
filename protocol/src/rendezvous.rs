//! The rendezvous server's decisions that need a clock but no socket, each a small state machine
//! that is handed `now` (milliseconds since the Unix epoch) and tested with simulated time.
//!
//! - [`Deadlines`]: which keys are due (unauthenticated peers' login timeout, presence expiry).
//! - [`PresenceTable`]: heartbeats → online/away/offline and last seen; a user who stops
//!   heartbeating goes offline after the timeout; it says which changes to push.
//! - [`TokenBucket`]: per-peer request rate limits.
//! - [`LogThrottle`]: bad input is logged at most once per peer per interval.
//! - [`mailbox`]: per-recipient quota and TTL.
//! - [`discovery`]: the namespaces peers register their signed records under, and who may.
//!
//! Wall-clock milliseconds are used throughout because last-seen and deposit times are persisted and
//! shown to users; a clock stepping backwards only delays expiries (all arithmetic saturates).

mod deadlines;
pub mod discovery;
pub mod mailbox;
mod presence;
mod rate;

pub use deadlines::Deadlines;
pub use presence::PresenceTable;
pub use rate::{LogThrottle, RateLimit, TokenBucket};

/// Milliseconds since the Unix epoch.
pub type Millis = u64;
