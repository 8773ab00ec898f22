//! What the server does with each request, connection and tick — everything but the network.
//!
//! The actor ([`crate::server`]) feeds this [`Service`] connection events, decoded requests and
//! timer ticks, sends back the [`Reply`] (after a store flush when it is `durable`) and carries out
//! the pushes and disconnects it asks for. Nothing here touches a socket, so one test can step a
//! service through a whole conversation.
//!
//! A peer is *unauthenticated* until it logs in: it may only register, log in or use the link
//! drop (how a device being linked, which has no session yet, meets the device linking it; see
//! [`devices`]), and is disconnected after [`crate::Limits::login_timeout`]. Logging in makes it a *session*: it may
//! use the rest of the protocol — prekeys, presence, the mailbox, discovery — and the relay
//! ([`RelayGate`]). All of it is gated here, in [`Service::handle`]: the server runs no other
//! protocol that answers an unauthenticated peer. The Noise-authenticated `PeerId` is the proof of
//! key, so a login needs no signature: the name must be bound to that key.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

use libp2p::PeerId;
use palaver_protocol::identity::identity_of;
use palaver_protocol::rendezvous::{Deadlines, LogThrottle, Millis, PresenceTable, TokenBucket};
use palaver_protocol::wire::rendezvous::{MAX_BATCH, MAX_TOKEN_LEN};
use palaver_protocol::wire::{
    Body, MAX_ENVELOPE_LEN, MailItem, PresenceRecord, PresenceState, Refusal, RefusalReason,
    RendezvousRequest, RendezvousResponse, ServerPush, UserRecord,
};
use palaver_protocol::{Envelope, UserName, VerifyingKey};

use crate::config::Limits;
use crate::metrics::{Metrics, Rejection};
use crate::store::{self, Holder, Registration, SharedStore, StoreError};

pub(crate) use cluster::ClusterEvent;

/// The set of logged-in peers, shared with the relay's rate limiters: only they may reserve a
/// slot or open a circuit. (In relay-only mode the gate is open.)
#[derive(Debug, Clone)]
pub(crate) struct RelayGate {
    open: bool,
    allowed: Arc<Mutex<HashSet<PeerId>>>,
}

impl RelayGate {
    pub(crate) fn new(open: bool) -> Self {
        Self {
            open,
            allowed: Arc::default(),
        }
    }

    pub(crate) fn allows(&self, peer: &PeerId) -> bool {
        self.open
            || self
                .allowed
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .contains(peer)
    }

    fn set(&self, peer: PeerId, allowed: bool) {
        let mut set = self.allowed.lock().unwrap_or_else(PoisonError::into_inner);
        if allowed {
            set.insert(peer);
        } else {
            set.remove(&peer);
        }
    }
}

/// Where bad input came from, for logging it at most once per source per interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Source {
    Peer(PeerId),
    /// Before a handshake completes there is only the remote address.
    Ip(IpAddr),
    Unknown,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Peer(peer) => write!(f, "{peer}"),
            Source::Ip(ip) => write!(f, "{ip}"),
            Source::Unknown => f.write_str("unknown"),
        }
    }
}

/// The answer to one request.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) response: RendezvousResponse,
    /// The reply promises something is stored: flush before sending it.
    pub(crate) durable: bool,
}

impl Reply {
    fn now(response: RendezvousResponse) -> Self {
        Self {
            response,
            durable: false,
        }
    }

    fn durable(response: RendezvousResponse) -> Self {
        Self {
            response,
            durable: true,
        }
    }
}

#[derive(Debug)]
struct PeerState {
    bucket: TokenBucket,
    session: Option<Session>,
}

#[derive(Debug)]
struct Session {
    name: UserName,
    /// The device's key (the account key itself for the account's first device).
    key: VerifyingKey,
    /// Where the device's prekeys and mail are filed.
    holder: Holder,
    subscriptions: Vec<UserName>,
    /// The run of the daemon that logged in (see [`RendezvousRequest::Login`]).
    instance: u64,
    /// When the session last sent anything.
    heard_at: Millis,
}

/// Who sent a session request.
struct Me {
    name: UserName,
    key: VerifyingKey,
    holder: Holder,
}

fn refuse(reason: RefusalReason, detail: impl Into<String>) -> Refusal {
    Refusal {
        reason,
        detail: detail.into(),
    }
}

impl From<StoreError> for Refusal {
    fn from(error: StoreError) -> Self {
        tracing::error!(%error, "store failure");
        refuse(
            RefusalReason::Unavailable,
            "the server could not read or write its storage; try again later",
        )
    }
}

type Handled = Result<Reply, Refusal>;

fn kind_of(request: &RendezvousRequest) -> &'static str {
    match request {
        RendezvousRequest::Register { .. } => "register",
        RendezvousRequest::Login { .. } => "login",
        RendezvousRequest::PublishPrekeys(_) => "publish_prekeys",
        RendezvousRequest::AddOneTimePrekeys(_) => "add_one_time_prekeys",
        RendezvousRequest::FetchPrekeys { .. } => "fetch_prekeys",
        RendezvousRequest::Lookup { .. } => "lookup",
        RendezvousRequest::Heartbeat { .. } => "heartbeat",
        RendezvousRequest::SubscribePresence { .. } => "subscribe_presence",
        RendezvousRequest::Deposit { .. } => "deposit",
        RendezvousRequest::FetchMail { .. } => "fetch_mail",
        RendezvousRequest::AckMail { .. } => "ack_mail",
        RendezvousRequest::WhoIs { .. } => "who_is",
        RendezvousRequest::RegisterDiscovery { .. } => "register_discovery",
        RendezvousRequest::UnregisterDiscovery { .. } => "unregister_discovery",
        RendezvousRequest::Discover { .. } => "discover",
        RendezvousRequest::PublishDevices(_) => "publish_devices",
        RendezvousRequest::FetchDevices { .. } => "fetch_devices",
        RendezvousRequest::FetchDevicePrekeys { .. } => "fetch_device_prekeys",
        RendezvousRequest::LinkPost { .. } => "link_post",
        RendezvousRequest::LinkTake { .. } => "link_take",
    }
}

fn check_batch(len: usize, what: &str) -> Result<(), Refusal> {
    if len > MAX_BATCH {
        return Err(refuse(
            RefusalReason::TooLarge,
            format!("at most {MAX_BATCH} {what} per request, got {len}"),
        ));
    }
    Ok(())
}

/// Compares without an early exit, so timing does not reveal how much of a token was right.
fn same_secret(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Accounts, prekeys, presence and the mailbox.
#[derive(Debug)]
pub(crate) struct Service {
    store: SharedStore,
    limits: Limits,
    tokens: Vec<String>,
    relay_only: bool,
    peers: HashMap<PeerId, PeerState>,
    /// The peers holding each logged-in name's sessions, one per device.
    online: HashMap<UserName, Vec<PeerId>>,
    /// Sessions in all (the sum over `online`).
    session_count: usize,
    /// Who wants presence changes of each name.
    subscribers: HashMap<UserName, HashSet<PeerId>>,
    presence: PresenceTable,
    login_deadlines: Deadlines<PeerId>,
    gate: RelayGate,
    metrics: Metrics,
    log_throttle: LogThrottle<Source>,
    next_sweep: Millis,
    pushes: Vec<(PeerId, ServerPush)>,
    disconnects: Vec<PeerId>,
    /// What the other instances over a shared store said (`None`: this instance is alone).
    cluster: Option<cluster::ClusterView>,
    /// One-time prekeys each user took of each other user's, this window (see
    /// [`prekeys::ONE_TIME_PER_REQUESTER`]).
    prekey_takes: prekeys::Takes,
    /// What devices being linked left for each other.
    link_drop: devices::LinkDrop,
}

impl Service {
    pub(crate) fn new(
        store: SharedStore,
        limits: Limits,
        tokens: Vec<String>,
        relay_only: bool,
        gate: RelayGate,
        metrics: Metrics,
    ) -> Result<Self, StoreError> {
        let held = store.mailbox_totals()?;
        metrics.mailbox_messages.set(gauge(held.messages));
        metrics.mailbox_bytes.set(gauge(held.bytes));
        Ok(Self {
            presence: PresenceTable::new(limits.presence_timeout),
            log_throttle: LogThrottle::new(limits.log_interval, 100_000),
            store,
            tokens,
            relay_only,
            peers: HashMap::new(),
            online: HashMap::new(),
            session_count: 0,
            subscribers: HashMap::new(),
            login_deadlines: Deadlines::new(),
            gate,
            metrics,
            next_sweep: 0,
            pushes: Vec::new(),
            disconnects: Vec::new(),
            cluster: None,
            prekey_takes: prekeys::Takes::default(),
            link_drop: devices::LinkDrop::default(),
            limits,
        })
    }

    pub(crate) fn store(&self) -> &SharedStore {
        &self.store
    }

    /// Pushes to send, in order.
    pub(crate) fn take_pushes(&mut self) -> Vec<(PeerId, ServerPush)> {
        std::mem::take(&mut self.pushes)
    }

    /// Peers to disconnect.
    pub(crate) fn take_disconnects(&mut self) -> Vec<PeerId> {
        std::mem::take(&mut self.disconnects)
    }

    pub(crate) fn is_logged_in(&self, peer: &PeerId) -> bool {
        self.peers.get(peer).is_some_and(|p| p.session.is_some())
    }

    /// Records bad input from `source`, logging it at most once per source per interval.
    pub(crate) fn reject(
        &mut self,
        source: Source,
        why: Rejection,
        detail: &dyn std::fmt::Display,
        now: Millis,
    ) {
        self.metrics.reject(why);
        if self.log_throttle.allow(&source, now) {
            tracing::info!(from = %source, reason = why.label(), %detail, "rejected input");
        }
    }

    // ---- connections ----

    /// A peer's first connection.
    pub(crate) fn connected(&mut self, peer: PeerId, now: Millis) {
        self.peers.entry(peer).or_insert_with(|| PeerState {
            bucket: TokenBucket::new(self.limits.requests, now),
            session: None,
        });
        if !self.relay_only {
            self.login_deadlines
                .set(peer, now.saturating_add(millis(self.limits.login_timeout)));
        }
        self.metrics.connected_peers.set(gauge(self.peers.len()));
    }

    /// A peer's last connection closed: its session ends.
    pub(crate) fn disconnected(&mut self, peer: PeerId, now: Millis) {
        self.login_deadlines.remove(&peer);
        if let Some(session) = self.peers.remove(&peer).and_then(|state| state.session) {
            self.end_session(peer, session, now);
        }
        self.metrics.connected_peers.set(gauge(self.peers.len()));
    }

    fn end_session(&mut self, peer: PeerId, session: Session, now: Millis) {
        self.unsubscribe(peer, &session.subscriptions);
        self.gate.set(peer, false);
        let Some(peers) = self.online.get_mut(&session.name) else {
            return;
        };
        let before = peers.len();
        peers.retain(|p| *p != peer);
        self.session_count = self.session_count.saturating_sub(before - peers.len());
        self.metrics.sessions.set(gauge(self.session_count));
        if !peers.is_empty() {
            // Another of the account's devices is still here: the user is too.
            return;
        }
        self.online.remove(&session.name);
        let (record, changed) = self.presence.gone(&session.name, now);
        if let Err(error) = self.store.set_last_seen(&session.name, now) {
            tracing::warn!(%error, "could not record last seen");
        }
        if changed {
            self.presence_changed(record);
        }
        self.metrics
            .online_users
            .set(gauge(self.presence.present()));
    }

    /// The server is stopping: remember when each session was last seen.
    pub(crate) fn shutdown(&mut self, now: Millis) {
        for name in self.online.keys() {
            if let Err(error) = self.store.set_last_seen(name, now) {
                tracing::warn!(%error, "could not record last seen");
            }
        }
    }

    // ---- timers ----

    /// When [`Service::tick`] next has something to do.
    pub(crate) fn next_due(&self) -> Option<Millis> {
        [
            self.login_deadlines.next_due(),
            self.presence.next_due(),
            (!self.relay_only).then_some(self.next_sweep),
            self.cluster
                .as_ref()
                .and_then(|c| c.next_due(millis(self.limits.presence_timeout))),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Login timeouts, presence expiry, the mail and discovery sweep.
    pub(crate) fn tick(&mut self, now: Millis) {
        for peer in self.login_deadlines.expire(now) {
            if !self.is_logged_in(&peer) {
                self.reject(
                    Source::Peer(peer),
                    Rejection::LoginTimeout,
                    &"did not log in in time",
                    now,
                );
                self.disconnects.push(peer);
            }
        }
        for record in self.presence.handle_timeout(now) {
            self.presence_changed(record);
        }
        self.cluster_tick(now);
        self.metrics
            .online_users
            .set(gauge(self.presence.present()));
        if !self.relay_only && now >= self.next_sweep {
            self.next_sweep = now.saturating_add(millis(self.limits.mail_sweep_interval));
            self.log_throttle.prune(now);
            self.link_drop.expire(now);
            if let Err(error) = self.sweep_mail(now) {
                tracing::error!(%error, "mail sweep failed");
            }
            if let Err(error) = self.sweep_discovery(now) {
                tracing::error!(%error, "discovery sweep failed");
            }
        }
    }

    // ---- requests ----

    pub(crate) fn handle(
        &mut self,
        peer: PeerId,
        request: RendezvousRequest,
        now: Millis,
    ) -> Reply {
        self.metrics.request(kind_of(&request));
        match self.dispatch(peer, request, now) {
            Ok(reply) => reply,
            Err(refusal) => {
                let reason = refusal.reason;
                let bad_input = matches!(
                    reason,
                    RefusalReason::Invalid
                        | RefusalReason::TooLarge
                        | RefusalReason::RateLimited
                        | RefusalReason::NotLoggedIn
                        | RefusalReason::NotAllowed
                );
                if bad_input {
                    self.reject(
                        Source::Peer(peer),
                        Rejection::Refused(reason),
                        &refusal.detail,
                        now,
                    );
                } else {
                    self.metrics.reject(Rejection::Refused(reason));
                    tracing::debug!(%peer, %refusal, "refused");
                }
                Reply::now(RendezvousResponse::Refused(refusal))
            }
        }
    }

    /// A frame from `peer` that was too large or did not decode: counted, logged (throttled) and
    /// refused, within the peer's rate limit like any request.
    pub(crate) fn malformed(
        &mut self,
        peer: PeerId,
        reason: RefusalReason,
        detail: String,
        now: Millis,
    ) -> Reply {
        self.metrics.request("malformed");
        self.reject(Source::Peer(peer), Rejection::MalformedFrame, &detail, now);
        let limit = self.limits.requests;
        let limited = self
            .peers
            .get_mut(&peer)
            .is_some_and(|p| !p.bucket.try_take(limit, now));
        let refusal = if limited {
            refuse(RefusalReason::RateLimited, "slow down")
        } else {
            refuse(reason, detail)
        };
        Reply::now(RendezvousResponse::Refused(refusal))
    }

    fn dispatch(&mut self, peer: PeerId, request: RendezvousRequest, now: Millis) -> Handled {
        let limit = self.limits.requests;
        let state = self.peers.entry(peer).or_insert_with(|| PeerState {
            bucket: TokenBucket::new(limit, now),
            session: None,
        });
        if !state.bucket.try_take(limit, now) {
            return Err(refuse(
                RefusalReason::RateLimited,
                format!(
                    "more than {} requests per second; slow down",
                    limit.per_second
                ),
            ));
        }
        if self.relay_only {
            return Err(refuse(
                RefusalReason::Unavailable,
                "this server is a relay only: it has no accounts, presence or mailbox",
            ));
        }
        match request {
            RendezvousRequest::Register { name, token } => self.register(peer, name, token, now),
            RendezvousRequest::Login { name, instance } => self.login(peer, name, instance, now),
            RendezvousRequest::LinkPost { slot, sealed } => self.link_post(peer, slot, sealed, now),
            RendezvousRequest::LinkTake { slot } => Ok(self.link_take(peer, &slot, now)),
            other => {
                let Some(session) = state.session.as_mut() else {
                    return Err(refuse(
                        RefusalReason::NotLoggedIn,
                        "log in first: only register and login are open before that",
                    ));
                };
                session.heard_at = now;
                let me = Me {
                    name: session.name.clone(),
                    key: session.key,
                    holder: session.holder.clone(),
                };
                self.presence_heard(&me.name, None, now);
                self.session_request(peer, me, other, now)
            }
        }
    }

    fn session_request(
        &mut self,
        peer: PeerId,
        Me { name: me, key, holder }: Me,
        request: RendezvousRequest,
        now: Millis,
    ) -> Handled {
        match request {
            RendezvousRequest::Register { .. }
            | RendezvousRequest::Login { .. }
            | RendezvousRequest::LinkPost { .. }
            | RendezvousRequest::LinkTake { .. } => Err(refuse(
                RefusalReason::Invalid,
                "register, login and the link drop are not session requests",
            )),
            RendezvousRequest::Heartbeat { state } => {
                self.presence_heard(&me, Some(state), now);
                Ok(Reply::now(RendezvousResponse::Done))
            }
            RendezvousRequest::SubscribePresence { names } => self.subscribe(peer, names),
            RendezvousRequest::Lookup { names } => self.lookup(names),
            RendezvousRequest::WhoIs { keys } => self.who_is(keys),
            RendezvousRequest::PublishPrekeys(upload) => {
                if upload.identity != key {
                    return Err(refuse(
                        RefusalReason::Invalid,
                        "prekeys must be published for the key you are connected with",
                    ));
                }
                // A signed prekey that does not verify would only make every sender's session
                // setup fail later; refuse it now, where the owner sees why.
                if upload.verify().is_err() {
                    return Err(refuse(
                        RefusalReason::Invalid,
                        "the signed prekey's signature does not verify",
                    ));
                }
                let count = upload.one_time_prekeys.len();
                if count > self.limits.max_one_time_prekeys as usize {
                    return Err(refuse(
                        RefusalReason::TooLarge,
                        format!(
                            "at most {} one-time prekeys are held per user, got {count}",
                            self.limits.max_one_time_prekeys
                        ),
                    ));
                }
                self.store.publish_prekeys(&holder, &upload)?;
                Ok(Reply::durable(RendezvousResponse::Done))
            }
            RendezvousRequest::AddOneTimePrekeys(keys) => {
                check_batch(keys.len(), "one-time prekeys")?;
                if !self.store.has_signed_prekey(&holder)? {
                    return Err(refuse(
                        RefusalReason::NoPrekeys,
                        "publish a signed prekey before adding one-time prekeys",
                    ));
                }
                let held = self.store.one_time_count(&holder)?;
                let max = self.limits.max_one_time_prekeys;
                if u64::from(held) + keys.len() as u64 > u64::from(max) {
                    return Err(refuse(
                        RefusalReason::TooLarge,
                        format!(
                            "at most {max} one-time prekeys are held per user; {held} are held, {} offered",
                            keys.len()
                        ),
                    ));
                }
                self.store.add_one_time_prekeys(&holder, &keys)?;
                Ok(Reply::durable(RendezvousResponse::Done))
            }
            RendezvousRequest::FetchPrekeys { name } => self.fetch_prekeys(&me, name, None, now),
            RendezvousRequest::FetchDevicePrekeys { name, device } => {
                self.fetch_prekeys(&me, name, Some(device), now)
            }
            RendezvousRequest::Deposit { to, envelope } => self.deposit(key, to, *envelope, now),
            RendezvousRequest::PublishDevices(list) => self.publish_devices(&me, key, *list, now),
            RendezvousRequest::FetchDevices { names } => self.fetch_devices(names),
            RendezvousRequest::FetchMail { max } => {
                let max = usize::from(max).min(MAX_BATCH);
                // Leave room for the response's own framing around the items.
                let budget = self.limits.max_response_bytes.saturating_sub(1024) as u64;
                let not_before = self.limits.mailbox.expiry_cutoff(now);
                let items = self.store.fetch(&holder, max, budget, not_before)?;
                let held = self.store.usage(&holder)?.messages;
                let remaining = held.saturating_sub(u32::try_from(items.len()).unwrap_or(0));
                Ok(Reply::now(RendezvousResponse::Mail { items, remaining }))
            }
            RendezvousRequest::AckMail { ids } => {
                check_batch(ids.len(), "ids")?;
                let removed = self.store.ack(&holder, &ids)?;
                self.metrics.mailbox_acked.inc_by(removed.len() as u64);
                self.forget_mail(&removed);
                Ok(Reply::durable(RendezvousResponse::Done))
            }
            RendezvousRequest::RegisterDiscovery {
                namespace,
                record,
                ttl_secs,
            } => self.register_discovery(peer, namespace, record, ttl_secs, now),
            RendezvousRequest::UnregisterDiscovery { namespace } => {
                self.unregister_discovery(peer, namespace)
            }
            RendezvousRequest::Discover { namespace } => self.discover(peer, namespace, now),
        }
    }

    // ---- accounts ----

    fn key_of(peer: &PeerId) -> Result<VerifyingKey, Refusal> {
        identity_of(peer).ok_or_else(|| {
            refuse(
                RefusalReason::Invalid,
                "connect with an ed25519 identity key (your PeerId carries no such key)",
            )
        })
    }

    fn register(
        &mut self,
        peer: PeerId,
        name: UserName,
        token: Option<String>,
        now: Millis,
    ) -> Handled {
        if !self.tokens.is_empty() {
            let Some(token) = token else {
                return Err(refuse(
                    RefusalReason::TokenRequired,
                    "this server registers names only with a registration token",
                ));
            };
            let valid = token.len() <= MAX_TOKEN_LEN
                && self
                    .tokens
                    .iter()
                    .fold(false, |ok, t| ok | same_secret(t, &token));
            if !valid {
                return Err(refuse(
                    RefusalReason::BadToken,
                    "that registration token is not valid on this server",
                ));
            }
        }
        let key = Self::key_of(&peer)?;
        if let Some(owner) = self.store.device_owner(&key)? {
            return Err(refuse(
                RefusalReason::Invalid,
                format!("this key is a linked device of {owner}; log in as {owner} instead"),
            ));
        }
        match self.store.register(&name, &key, now)? {
            Registration::New => {
                self.metrics.registrations.inc();
                tracing::info!(%name, %peer, "registered");
                Ok(Reply::durable(RendezvousResponse::Registered { name }))
            }
            Registration::AlreadyYours => Ok(Reply::now(RendezvousResponse::Registered { name })),
            Registration::Taken => Err(refuse(
                RefusalReason::NameTaken,
                format!("the name {name} is already registered to another key; pick another"),
            )),
            Registration::KeyHasName(existing) => Err(refuse(
                RefusalReason::Invalid,
                format!(
                    "this key is already registered as {existing}; log in as {existing} instead"
                ),
            )),
        }
    }

    /// A login starts the session, or renews it for the same run of the daemon (after its
    /// connection dropped, say). Another run with the same key (a copied home: one peer id, a
    /// second connection) is refused while the session's own run is still heard from, and
    /// takes the session over once that run has been silent for the presence timeout.
    fn login(&mut self, peer: PeerId, name: UserName, instance: u64, now: Millis) -> Handled {
        let key = Self::key_of(&peer)?;
        let Some(user) = self.store.user(&name)? else {
            return Err(refuse(
                RefusalReason::UnknownUser,
                format!("no user {name} is registered here"),
            ));
        };
        let holder = if user.identity == key {
            Holder::account(&name)
        } else if self.store.device_owner(&key)?.as_ref() == Some(&name) {
            Holder::device(&name, &key)
        } else {
            return Err(refuse(
                RefusalReason::NotYourName,
                format!("the name {name} is registered to another key"),
            ));
        };
        let limit = self.limits.requests;
        let state = self.peers.entry(peer).or_insert_with(|| PeerState {
            bucket: TokenBucket::new(limit, now),
            session: None,
        });
        if let Some(session) = &mut state.session {
            let silent = now.saturating_sub(session.heard_at);
            if session.instance != instance && silent < millis(self.limits.presence_timeout) {
                return Err(refuse(
                    RefusalReason::InUse,
                    format!(
                        "{name} is logged in here from another running daemon with this key \
                         (heard from {} s ago)",
                        silent / 1000
                    ),
                ));
            }
            session.instance = instance;
            session.heard_at = now;
        } else {
            state.session = Some(Session {
                name: name.clone(),
                key,
                holder: holder.clone(),
                subscriptions: Vec::new(),
                instance,
                heard_at: now,
            });
            self.online.entry(name.clone()).or_default().push(peer);
            self.session_count += 1;
            self.login_deadlines.remove(&peer);
            self.gate.set(peer, true);
            self.metrics.sessions.set(gauge(self.session_count));
        }
        self.metrics.logins.inc();
        self.presence_heard(&name, Some(PresenceState::Online), now);
        Ok(Reply::now(RendezvousResponse::LoggedIn {
            mail_waiting: self.store.usage(&holder)?.messages,
            one_time_prekeys_left: self.store.one_time_count(&holder)?,
            name,
        }))
    }

    fn lookup(&mut self, names: Vec<UserName>) -> Handled {
        check_batch(names.len(), "names")?;
        let mut users = Vec::with_capacity(names.len());
        for name in names {
            if let Some(user) = self.store.user(&name)? {
                let presence = self.presence_of(&name, &user);
                users.push(UserRecord {
                    name,
                    identity: user.identity,
                    presence,
                });
            }
        }
        Ok(Reply::now(RendezvousResponse::Users(users)))
    }

    /// The users holding these keys, as their account keys or as linked devices.
    fn who_is(&mut self, keys: Vec<VerifyingKey>) -> Handled {
        check_batch(keys.len(), "keys")?;
        let mut users = Vec::with_capacity(keys.len());
        for key in keys {
            let Some(name) = (match self.store.name_of(&key)? {
                Some(name) => Some(name),
                None => self.store.device_owner(&key)?,
            }) else {
                continue;
            };
            if let Some(user) = self.store.user(&name)? {
                let presence = self.presence_of(&name, &user);
                users.push(UserRecord {
                    name,
                    identity: user.identity,
                    presence,
                });
            }
        }
        Ok(Reply::now(RendezvousResponse::Users(users)))
    }

    /// Ids held for `name`'s account key (tests).
    #[cfg(test)]
    fn held(&self, name: &UserName) -> u32 {
        self.store
            .usage(&Holder::account(name))
            .map_or(0, |u| u.messages)
    }
}

fn millis(d: std::time::Duration) -> Millis {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn gauge(n: impl TryInto<i64>) -> i64 {
    n.try_into().unwrap_or(i64::MAX)
}

mod cluster;
mod devices;
mod discovery;
mod mailbox;
mod prekeys;
mod presence;
#[cfg(test)]
mod tests;
