//! The peer's decisions as sans-IO state machines, driven by the daemon.
//!
//! - [`reach`]: which connections to open, keep and close — direct first, relays as fallback, a
//!   relay slot while not reachable from outside, the rendezvous connection.
//! - [`direct`]: what a direct message needs before it is sealed (key, name, session: the
//!   send pipeline), then which path each sealed direct message takes — the open connection, a dial, a
//!   discovery lookup, the mailbox — and when it is tried again.
//! - [`devices`]: linked devices — which devices a message is copied to, what a device list
//!   from the rendezvous changes, and linking a new device.
//! - [`discovery`]: where our signed peer record is registered at the rendezvous, and when.
//! - [`files`]: file transfers — what is fetched from whom, resumed from where, checked and
//!   kept; and whom a file is served to.
//! - [`trust`]: which key each contact's name stands for — pinned on first use, changes
//!   reported, verified contacts guarded.
//! - [`gate`]: who may take part in a private room's gossip topic, and what becomes of the
//!   outsiders who try (refused, dropped, disconnected and banned for a while).
//! - [`rooms`]: room membership, sender-key logistics (held messages, early and missing keys,
//!   epochs) and room crypto, private and public; gap fill's decisions over the room log.
//! - [`session`]: the rendezvous session — login and registration, prekeys, heartbeats, held
//!   mail, and the bounded request window.
//! - [`presence`]: what we know of other users' presence, also while the rendezvous is down.
//! - [`announce`]: when what the node tells its user goes out — messages from senders not yet
//!   named wait for the name, connections are told as they change.
//! - [`asks`]: the node's own questions to the rendezvous (lookups, prekeys, deposits,
//!   presence, invite and verify lookups) and what follows from each answer.
//! - [`commit`]: group commit — which waiters each flush of the store covers, and when the
//!   backlog turns incoming work away.
//!
//! - [`state`]: the session, delivery, send pipeline, rooms and discovery publisher together,
//!   with one deadline.
//!
//! Each machine takes inputs through `handle`, hands out what to do through `poll_output` and
//! names its next deadline in `poll_timeout`; time is passed in, so a simulation can run many
//! nodes on one simulated clock.

pub mod addr;
pub mod announce;
pub mod asks;
pub mod commit;
pub mod devices;
pub mod direct;
pub mod discovery;
pub mod files;
pub mod gate;
pub mod presence;
pub mod reach;
pub mod rooms;
pub mod session;
pub mod state;
pub mod trust;
