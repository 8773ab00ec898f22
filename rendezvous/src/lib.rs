//! Palaver's self-hosted rendezvous server, and the libp2p plumbing the node shares with it.
//!
//! One small binary lets peers find and reach each other and holds encrypted mail for peers that
//! are offline. A node connects (Noise authenticates its key), registers a name or logs in, then
//! publishes prekeys, heartbeats its presence, subscribes to its contacts' presence, deposits
//! envelopes for offline users and collects its own; the server pushes presence changes, new-mail
//! counts and low-prekey warnings back over `/palaver/push/2` (one stream per session). Sessions
//! also register their signed peer records there and discover each other's, one namespace at a
//! time. Beside that it runs
//! identify, ping, autonat and a circuit relay v2 for logged-in peers.
//!
//! - [`Server`]: `bind` (store, key, swarm, listeners) then `run` until a shutdown future.
//! - [`Config`], [`Limits`]: what an admin chooses and the bounds the server enforces.
//! - [`client`]: a lightweight client for tests, tools and the load generator.
//! - [`FrameCodec`]: the request-response codec both sides use.
//! - [`discovery`]: sealing and opening the signed peer records discovery carries.
//! - [`sim::SimServer`]: the server's decisions without its network, for simulations.
//! - [`testing::TestPostgres`]: a throw-away PostgreSQL cluster for tests of `--store postgres://…`.
//! - [`admin`]: an admin's tasks on the store without serving (`remove-user`).
//! - [`cli`]: the binary's flags and `--config` file; [`logging`] and [`listen_check`]: what both
//!   binaries share (the log setup, refusing a TCP port another process listens on).
//! - [`transport`]: the protocols, codecs and transport settings peer and server agree on.
//!
//! Feature `server` (default) builds the server; without it the crate is only what the peer
//! shares with it ([`client`], [`discovery`], [`frame_codec`], [`transport`], [`logging`],
//! [`listen_check`]), so `palaver` links the server only for `palaver demo`.
//!
//! Modules: `service` decides (no network), `store` persists (sled, or PostgreSQL for a cluster), `cluster` carries presence between
//! instances (LISTEN/NOTIFY), `server` is the actor,
//! `behaviour` composes libp2p, `relay_meter` builds the transport and counts relayed bytes,
//! `metrics` exports Prometheus metrics.

// Shared with the peer: always built.
pub mod client;
pub mod clock;
pub mod discovery;
pub mod frame_codec;
pub mod listen_check;
pub mod logging;
pub mod transport;

/// The server itself: built with feature `server` (on by default).
macro_rules! server_only {
    ($($item:item)*) => { $(#[cfg(feature = "server")] $item)* };
}

server_only! {
    pub mod admin;
    mod behaviour;
    mod boxed_handler;
    pub mod cli;
    mod cluster;
    mod config;
    mod metrics;
    mod push_stream;
    mod relay_meter;
    mod server;
    mod service;
    pub mod sim;
    mod store;
    pub mod testing;
    pub use config::{Config, Limits, RelayLimits, StoreLocation};
    pub use server::{KEY_FILE, Server, ServerError};
    pub use store::StoreError;
}

pub use frame_codec::FrameCodec;
pub use transport::{IDENTIFY_PROTOCOL, MAX_PUSH_BYTES, RendezvousCodec, read_push, write_push};
