//! What an admin chooses ([`Config`]) and the limits that keep one server fair to everyone
//! ([`Limits`], whose defaults suit a community server; tests shorten the timeouts).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use libp2p::Multiaddr;
use palaver_protocol::rendezvous::RateLimit;
use palaver_protocol::rendezvous::mailbox::MailboxLimits;

pub use crate::store::StoreLocation;

/// How to run a server.
#[derive(Debug, Clone)]
pub struct Config {
    /// Addresses to listen on (TCP and/or QUIC multiaddrs; port 0 picks a free port).
    pub listen: Vec<Multiaddr>,
    /// Where the server's own key (`server.key`) lives, and the sled database by default.
    pub data_dir: PathBuf,
    /// Where accounts, prekeys and the mailbox live: sled under `data_dir`, or PostgreSQL.
    pub store: StoreLocation,
    /// If any are given, registering a name needs one of them.
    pub registration_tokens: Vec<String>,
    /// Serve Prometheus metrics at `http://ADDR/metrics`.
    pub metrics: Option<SocketAddr>,
    /// Only relay for NAT traversal: no accounts, prekeys, presence, mailbox or discovery.
    pub relay_only: bool,
    pub limits: Limits,
}

impl Config {
    /// Listens on `listen`, keeps state in `data_dir`, open registration, default limits.
    pub fn new(listen: Vec<Multiaddr>, data_dir: impl Into<PathBuf>) -> Self {
        Self {
            listen,
            data_dir: data_dir.into(),
            store: StoreLocation::Sled,
            registration_tokens: Vec::new(),
            metrics: None,
            relay_only: false,
            limits: Limits::default(),
        }
    }
}

/// Every bound the server enforces.
#[derive(Debug, Clone)]
pub struct Limits {
    /// A peer that has not logged in by then is disconnected.
    pub login_timeout: Duration,
    /// A logged-in user not heard from for this long is shown offline.
    pub presence_timeout: Duration,
    /// Connections with no open streams close after this (nodes heartbeat well within it).
    pub idle_connection_timeout: Duration,
    /// How often timers (login timeouts, presence expiry) are checked.
    pub tick: Duration,
    /// Requests per peer on Palaver's protocol.
    pub requests: RateLimit,
    /// Largest request frame accepted (a deposit carries one envelope of up to 96 KiB).
    pub max_request_bytes: usize,
    /// Largest response frame sent (a batch of mail).
    pub max_response_bytes: usize,
    /// Most one-time prekeys held per user.
    pub max_one_time_prekeys: u32,
    /// Below this many one-time prekeys, the owner is told to top up.
    pub prekeys_low: u32,
    /// Per-recipient mailbox quota and how long mail is held.
    pub mailbox: MailboxLimits,
    /// How often expired mail and discovery records are swept.
    pub mail_sweep_interval: Duration,
    /// Most users one session may subscribe to.
    pub max_subscriptions: usize,
    /// Pushes queued for a peer's push stream, not yet written; beyond this, new pushes to it
    /// are dropped.
    pub max_pushes_in_flight: usize,
    pub relay: RelayLimits,
    /// Most discovery registrations held (all namespaces together, in the store: with a shared
    /// database, for the whole cluster) and per peer (its own namespace and its rooms').
    pub discovery_max_registrations: usize,
    pub discovery_max_registrations_per_peer: usize,
    /// Memory sled may use for its page cache.
    pub store_cache_bytes: u64,
    /// Bad input from one peer is logged at most once per this interval.
    pub log_interval: Duration,
}

/// Circuit relay v2 limits, sized for chat rather than libp2p's 2 min / 128 KiB defaults.
#[derive(Debug, Clone)]
pub struct RelayLimits {
    pub max_reservations: usize,
    pub max_reservations_per_peer: usize,
    pub reservation_duration: Duration,
    pub max_circuits: usize,
    pub max_circuits_per_peer: usize,
    /// A conversation over a relay lasts hours; the node reconnects when a circuit ends.
    pub max_circuit_duration: Duration,
    pub max_circuit_bytes: u64,
    /// Per peer: `burst` reservations (and circuits), one more every `interval`.
    pub burst: u32,
    pub interval: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            login_timeout: Duration::from_secs(10),
            presence_timeout: Duration::from_secs(90),
            idle_connection_timeout: Duration::from_secs(300),
            tick: Duration::from_millis(100),
            requests: RateLimit::new(64, 32),
            max_request_bytes: 128 * 1024,
            max_response_bytes: palaver_protocol::codec::MAX_FRAME_LEN,
            max_one_time_prekeys: 512,
            prekeys_low: 10,
            mailbox: MailboxLimits {
                max_messages: 1000,
                max_bytes: 16 * 1024 * 1024,
                ttl: Duration::from_secs(14 * 24 * 3600),
            },
            mail_sweep_interval: Duration::from_secs(60),
            max_subscriptions: palaver_protocol::wire::rendezvous::MAX_BATCH,
            max_pushes_in_flight: 64,
            relay: RelayLimits::default(),
            discovery_max_registrations: 200_000,
            discovery_max_registrations_per_peer: 64,
            store_cache_bytes: 64 * 1024 * 1024,
            log_interval: Duration::from_secs(60),
        }
    }
}

impl Default for RelayLimits {
    fn default() -> Self {
        Self {
            max_reservations: 20_000,
            max_reservations_per_peer: 4,
            reservation_duration: Duration::from_secs(3600),
            max_circuits: 4096,
            max_circuits_per_peer: 16,
            max_circuit_duration: Duration::from_secs(6 * 3600),
            max_circuit_bytes: 64 * 1024 * 1024,
            burst: 30,
            interval: Duration::from_secs(10),
        }
    }
}
