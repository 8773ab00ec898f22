//! Node ↔ rendezvous server: one request, one response, over a Noise-authenticated connection.
//!
//! The connection's `PeerId` is the proof of key: [`RendezvousRequest::Register`] binds a name to
//! it, [`RendezvousRequest::Login`] checks the binding. Until a login succeeds the server answers
//! only those two. The server pushes [`ServerPush`] to logged-in nodes as requests of its own.
//! Discovery is part of this protocol too (see [`crate::rendezvous::discovery`]): sessions
//! register their [`SignedPeerRecord`] under a [`Namespace`] and discover one namespace at a time.

use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};

use super::Envelope;
use crate::crypto::x3dh::{OneTimePrekey, PrekeyBundle, PrekeyUpload};
use crate::identity::devices::SignedDeviceList;
use crate::name::UserName;
use crate::rendezvous::discovery::Namespace;

/// The most items a single request or response lists (names, acks, mail).
pub const MAX_BATCH: usize = 256;
/// The longest registration token accepted.
pub const MAX_TOKEN_LEN: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RendezvousRequest {
    /// Bind `name` to the connecting key (first come, first served, or with a registration token).
    Register {
        name: UserName,
        token: Option<String>,
    },
    /// Start a session as `name`, which must already be bound to the connecting key.
    /// `instance` is drawn afresh by each run of a daemon: a second daemon with the same key
    /// (a copied home) has another, and is refused while the first is still heard from.
    Login { name: UserName, instance: u64 },
    /// Replace this user's prekeys (signed prekey and a batch of one-time prekeys).
    PublishPrekeys(Box<PrekeyUpload>),
    /// Top up the one-time prekeys.
    AddOneTimePrekeys(Vec<OneTimePrekey>),
    /// A bundle for starting a session with `name`; consumes one of its one-time prekeys.
    FetchPrekeys { name: UserName },
    /// Keys and presence of these users.
    Lookup { names: Vec<UserName> },
    /// I am still here, in this state.
    Heartbeat { state: PresenceState },
    /// Push me presence changes of these users (replaces any earlier subscription). Answered
    /// with `Users`: the keys and presence of those registered (the others are watched too).
    SubscribePresence { names: Vec<UserName> },
    /// Hold this envelope for `to` until it comes online and acknowledges it: for the device
    /// the envelope is sealed for (the account key's, or one its device list names).
    Deposit {
        to: UserName,
        envelope: Box<Envelope>,
    },
    /// Give me up to `max` held envelopes, oldest first.
    FetchMail { max: u16 },
    /// I have these durably; delete them.
    AckMail { ids: Vec<super::MessageId> },
    /// Names and presence of the users holding these identity keys (unknown keys are left out):
    /// how a node names a stranger who wrote to it, or the members of a room. Answered with `Users`.
    WhoIs { keys: Vec<VerifyingKey> },
    /// Keep my signed peer record under `namespace` (my own peer namespace, or a room's) for
    /// `ttl_secs` (bounded by the server), replacing my earlier record there.
    RegisterDiscovery {
        namespace: Namespace,
        record: SignedPeerRecord,
        ttl_secs: u32,
    },
    /// Take my record out of `namespace` (a room I left).
    UnregisterDiscovery { namespace: Namespace },
    /// The records under `namespace` that have not expired (a room's only for a peer registered
    /// in it). Answered with `Discovered`.
    Discover { namespace: Namespace },
    /// Replace my account's device list: only from the account key's own device, and only with
    /// a newer version. The devices it leaves out are logged out and lose their prekeys and mail.
    PublishDevices(Box<SignedDeviceList>),
    /// The device lists these users published last (at most [`MAX_BATCH`]). Answered with
    /// `Devices`, which leaves out those that never published one.
    FetchDevices { names: Vec<UserName> },
    /// A bundle for starting a session with one of `name`'s devices (the account key's own, or
    /// one its device list names); consumes one of that device's one-time prekeys.
    FetchDevicePrekeys {
        name: UserName,
        device: VerifyingKey,
    },
    /// Leave `sealed` at `slot` for whoever takes it next (at most [`MAX_LINK_LEN`] bytes, kept
    /// a few minutes): how a device being linked and the device linking it meet. Open before
    /// login — the new device has no session yet — and end-to-end sealed with the link code's
    /// secret, which the server never sees.
    LinkPost { slot: [u8; 32], sealed: SealedLink },
    /// Take what was left at `slot`, if anything. Answered with `Link`.
    LinkTake { slot: [u8; 32] },
}

/// The longest sealed link message the server holds (within the server's default request
/// limit of 128 KiB, with room for the request around it).
pub const MAX_LINK_LEN: usize = 96 * 1024;

/// A link message, sealed by its two ends; opaque to the server.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedLink(#[serde(with = "serde_bytes")] pub Vec<u8>);

impl std::fmt::Debug for SealedLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SealedLink({} bytes)", self.0.len())
    }
}

/// One account's published device list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountDevices {
    pub name: UserName,
    pub list: SignedDeviceList,
}

/// A peer's addresses as it signed them: a libp2p signed envelope holding a `PeerRecord`, in its
/// protobuf encoding. Opaque here (this crate has no libp2p-core); the server checks it is
/// signed by the registering peer, and every reader checks the signature again.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedPeerRecord(#[serde(with = "serde_bytes")] pub Vec<u8>);

impl std::fmt::Debug for SignedPeerRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SignedPeerRecord({} bytes)", self.0.len())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RendezvousResponse {
    Registered {
        name: UserName,
    },
    LoggedIn {
        name: UserName,
        mail_waiting: u32,
        one_time_prekeys_left: u32,
    },
    Done,
    Prekeys(Box<PrekeyBundle>),
    Users(Vec<UserRecord>),
    Deposited {
        id: super::MessageId,
    },
    Mail {
        items: Vec<MailItem>,
        remaining: u32,
    },
    Refused(Refusal),
    /// The records under the namespace asked for, at most
    /// [`crate::rendezvous::discovery::MAX_DISCOVERED`].
    Discovered(Vec<SignedPeerRecord>),
    /// The device lists asked for. An account left out never published one: its only device is
    /// its account key ([`crate::identity::devices::DeviceList::single`]).
    Devices(Vec<AccountDevices>),
    /// What was left at the slot asked for (taken now), if anything.
    Link(Option<SealedLink>),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    pub name: UserName,
    pub identity: VerifyingKey,
    pub presence: PresenceRecord,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PresenceState {
    Online,
    Away,
    Offline,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceRecord {
    pub name: UserName,
    pub state: PresenceState,
    /// When the server last heard from the user (ms since the Unix epoch); `None`: never.
    pub last_seen_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailItem {
    pub envelope: Envelope,
    pub deposited_at_ms: u64,
}

/// A request the server would not carry out, with the reason a user can act on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{reason}: {detail}")]
pub struct Refusal {
    pub reason: RefusalReason,
    pub detail: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RefusalReason {
    NameTaken,
    TokenRequired,
    BadToken,
    UnknownUser,
    NotYourName,
    NotLoggedIn,
    NoPrekeys,
    QuotaExceeded,
    TooLarge,
    RateLimited,
    Invalid,
    /// The server does not offer this (for example a relay-only server asked for accounts).
    Unavailable,
    /// Not this session's to do: registering under another peer's namespace, or holding more
    /// discovery registrations than the server allows.
    NotAllowed,
    /// The key is logged in from another running daemon (a copied home): one key, one daemon.
    InUse,
}

impl std::fmt::Display for RefusalReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RefusalReason::NameTaken => "name taken",
            RefusalReason::TokenRequired => "registration token required",
            RefusalReason::BadToken => "wrong registration token",
            RefusalReason::UnknownUser => "unknown user",
            RefusalReason::NotYourName => "name bound to another key",
            RefusalReason::NotLoggedIn => "not logged in",
            RefusalReason::NoPrekeys => "no prekeys published",
            RefusalReason::QuotaExceeded => "mailbox full",
            RefusalReason::TooLarge => "too large",
            RefusalReason::RateLimited => "rate limited",
            RefusalReason::Invalid => "invalid request",
            RefusalReason::Unavailable => "not offered by this server",
            RefusalReason::NotAllowed => "not allowed",
            RefusalReason::InUse => "key in use",
        })
    }
}

/// What the server tells a logged-in node without being asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServerPush {
    Presence(PresenceRecord),
    MailWaiting {
        count: u32,
    },
    PrekeysLow {
        remaining: u32,
    },
    /// A user whose presence this session watches published a new device list.
    DevicesChanged {
        name: UserName,
    },
}
