//! The rendezvous session: logging in (registering the name the first time), keeping prekeys
//! published and fresh, heartbeats, and the request window to the server.
//!
//! On [`Input::Connected`] the session logs in; a server that does not know us yet is asked once
//! to register our name (with the registration token, if configured), then the login is tried
//! again. A login refused for any other reason stays refused until the next connection, and
//! [`Session::refusal`] says why. Once logged in: prekeys are published (the secrets are on disk
//! before any public half leaves: [`Output::PersistPrekeys`] first, [`Input::PrekeysDurable`]
//! then), a heartbeat goes out every period, and held mail is fetched in batches — when the login
//! says some is waiting, when the server pushes that more arrived, and again after each batch the
//! node stored ([`Input::MailStored`]) while the server says more remain.
//!
//! Requests go out at most [`IN_FLIGHT`] at a time (the server serves 16 streams per connection
//! and drops any more); up to [`QUEUED`] more wait their turn, and past that a request fails at
//! once. Each request is named by a [`RequestKey`]; the driver maps its transport's request ids
//! to keys and reports each answer or failure under its key. Requests of the node's own (lookups,
//! deposits, prekey fetches) carry a caller token `T` and come back as [`Output::Answer`] or
//! [`Output::Failed`] with it.
//!
//! Time is wall-clock milliseconds since the Unix epoch (the signed prekey's age is persisted).

use std::collections::{HashMap, VecDeque};

use ed25519_dalek::SigningKey;
use rand_core::{CryptoRng, RngCore};

use super::trust::Asked;
use crate::crypto::x3dh::{PrekeySecrets, PrekeyUpload};
use crate::name::UserName;
use crate::wire::{
    MailItem, MessageId, PresenceRecord, PresenceState, Refusal, RefusalReason, RendezvousRequest,
    RendezvousResponse, ServerPush, UserRecord,
};

/// Requests in flight to the rendezvous at once.
pub const IN_FLIGHT: usize = 8;
/// Requests that may wait behind those.
pub const QUEUED: usize = 1024;
/// One-time prekeys made at a time.
pub const ONE_TIME_PREKEYS: usize = 100;
/// Top up when the server says fewer than this remain.
pub const PREKEYS_LOW: u32 = 20;
/// Held mail fetched per request.
pub const FETCH_MAIL_BATCH: u16 = 64;
/// How long a signed prekey is used before it is replaced.
pub const SIGNED_PREKEY_LIFETIME_MS: u64 = 7 * 24 * 3600 * 1000;
/// Acknowledgements kept to send again (past that, the oldest are dropped: their mail is
/// fetched again and deduplicated by the node).
const MAX_UNSENT_ACKS: usize = 4096;
/// Pause before a request of the session's own that got no answer is sent again.
pub const RETRY_MS: u64 = 1_000;
/// Pause before a login that got no answer (or was rate limited) is tried again.
pub const LOGIN_RETRY_MS: u64 = 1_000;

/// Names one request to the rendezvous.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestKey(u64);

/// Our prekeys and what the server has of them; persisted by the driver on
/// [`Output::PersistPrekeys`].
#[derive(Debug)]
pub struct PrekeyState {
    pub secrets: PrekeySecrets,
    /// When the current signed prekey was published (`None`: never).
    pub signed_at_ms: Option<u64>,
    /// The server holds our full upload (one-time prekeys are published exactly once each:
    /// re-publishing one the server already handed out would let two senders use it).
    pub published: bool,
    /// A full upload has left at least once. Until one is confirmed, each further one carries
    /// fresh one-time prekeys: the server may have stored the earlier one (only its answer was
    /// lost) and handed some of its prekeys out already.
    pub upload_sent: bool,
}

impl PrekeyState {
    /// Fresh prekeys, never published.
    pub fn generate(rng: &mut (impl CryptoRng + RngCore), identity: &SigningKey) -> Self {
        Self {
            secrets: PrekeySecrets::generate(rng, identity, ONE_TIME_PREKEYS),
            signed_at_ms: None,
            published: false,
            upload_sent: false,
        }
    }
}

/// How the session is configured.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub name: UserName,
    pub registration_token: Option<String>,
    /// Presence heartbeat period (the server times a user out after missing a few).
    pub heartbeat_ms: u64,
    /// Drawn afresh by each run of the daemon, and sent with every login: the server refuses a
    /// second daemon with the same key (a copied home) while this one is heard from.
    pub instance: u64,
}

/// What the driver tells the session.
#[derive(Debug)]
pub enum Input {
    /// The first connection to the rendezvous opened.
    Connected,
    /// The last connection to the rendezvous closed.
    Disconnected,
    /// The server answered request `key`.
    Response {
        key: RequestKey,
        response: RendezvousResponse,
    },
    /// Request `key` failed in transport (no answer will come).
    Failed { key: RequestKey, error: String },
    /// The server pushed something.
    Push(ServerPush),
    /// The prekeys persisted on [`Output::PersistPrekeys`] with `then_publish` are on disk
    /// (`durable`), or could not be written: then nothing is published.
    PrekeysDurable { durable: bool },
    /// The node stored a batch of held mail durably: these ids may go, and `more` remain.
    MailStored { acks: Vec<MessageId>, more: bool },
}

/// What the session asks of the driver, and tells it.
#[derive(Debug)]
pub enum Output<T> {
    /// Send `request` to the rendezvous; report its answer under `key`.
    Send {
        key: RequestKey,
        request: RendezvousRequest,
    },
    /// Write [`Session::prekeys`] to the store; with `then_publish`, report with
    /// [`Input::PrekeysDurable`] once it is durable.
    PersistPrekeys { then_publish: bool },
    /// We are logged in (after every connection): announce ourselves (discovery, presence
    /// subscriptions, rooms) and resume what waited.
    LoggedIn { mail_waiting: u32 },
    /// The login is gone (connection lost, or the server forgot it).
    LoggedOut,
    /// The server refused our login; it stays refused until the next connection.
    LoginRefused(Refusal),
    /// The daemon must stop: the rendezvous refused the login because another running daemon
    /// holds this key ([`RefusalReason::InUse`]); see [`refusal_hint`] for what to tell the user.
    Stop(Refusal),
    /// The server's answer to a request of the node's own.
    Answer {
        token: T,
        response: RendezvousResponse,
    },
    /// A request of the node's own got no answer.
    Failed { token: T, error: String },
    /// A contact's presence changed (a push).
    Presence(PresenceRecord),
    /// A contact published a new device list (a push): fetch it.
    DevicesChanged(UserName),
    /// Presence of the users we subscribed to, as the subscription took effect; each login
    /// checks their keys again (`asked`: only contacts', pinning nobody new).
    Subscribed {
        users: Vec<UserRecord>,
        asked: Asked,
    },
    /// Held mail to store; answer with [`Input::MailStored`] once it is durable.
    Mail {
        items: Vec<MailItem>,
        remaining: u32,
    },
}

/// What to send again (see [`Session::retry`]).
#[derive(Debug, Default)]
struct Retry {
    fetch_mail: bool,
    subscribe: Option<Vec<UserName>>,
    /// The full upload was never confirmed.
    publish: bool,
}

/// What a request is for.
#[derive(Debug)]
enum Purpose<T> {
    Login,
    Register,
    Publish,
    Heartbeat,
    Subscribe(Vec<UserName>),
    FetchMail,
    AckMail(Vec<MessageId>),
    Caller(T),
}

/// The rendezvous session (see the module documentation).
#[derive(Debug)]
pub struct Session<T> {
    config: SessionConfig,
    identity: SigningKey,
    prekeys: PrekeyState,
    connected: bool,
    logged_in: bool,
    /// A login (or the registration before it) is under way.
    logging_in: bool,
    /// We asked to register on this connection already.
    registered: bool,
    refusal: Option<Refusal>,
    /// Whose presence is watched (the last subscription's names).
    watched: Vec<UserName>,
    /// A publish of prekeys waits for them to be durable.
    publish_waiting: Option<RendezvousRequest>,
    next_heartbeat_ms: Option<u64>,
    /// A login that got no answer is tried again at this time.
    login_retry_ms: Option<u64>,
    /// Acknowledgements of stored mail the server has not confirmed, sent again as soon as we are
    /// logged in (else the mail stays held, taking the user's quota).
    unsent_acks: VecDeque<MessageId>,
    /// Requests of the session's own that got no answer while logged in, sent again at
    /// `retry_at` (at once, they could spin against a server that is going away).
    retry: Retry,
    retry_at: Option<u64>,
    next_key: u64,
    in_flight: HashMap<RequestKey, Purpose<T>>,
    queued: VecDeque<(RendezvousRequest, Purpose<T>)>,
    outputs: VecDeque<Output<T>>,
}

impl<T: std::fmt::Debug> Session<T> {
    pub fn new(config: SessionConfig, identity: SigningKey, prekeys: PrekeyState) -> Self {
        Self {
            config,
            identity,
            prekeys,
            connected: false,
            logged_in: false,
            logging_in: false,
            registered: false,
            refusal: None,
            watched: Vec::new(),
            publish_waiting: None,
            next_heartbeat_ms: None,
            login_retry_ms: None,
            unsent_acks: VecDeque::new(),
            retry: Retry::default(),
            retry_at: None,
            next_key: 0,
            in_flight: HashMap::new(),
            queued: VecDeque::new(),
            outputs: VecDeque::new(),
        }
    }

    pub fn poll_output(&mut self) -> Option<Output<T>> {
        self.outputs.pop_front()
    }

    /// When [`Session::handle_timeout`] is due next (the next heartbeat, or a login to try
    /// again).
    pub fn poll_timeout(&self) -> Option<u64> {
        let heartbeat = self.next_heartbeat_ms.filter(|_| self.logged_in);
        let login = self.login_retry_ms.filter(|_| self.connected);
        let retry = self.retry_at.filter(|_| self.logged_in);
        heartbeat.into_iter().chain(login).chain(retry).min()
    }

    pub fn is_connected(&self) -> bool {
        self.connected
    }

    pub fn is_logged_in(&self) -> bool {
        self.logged_in
    }

    /// Why the server last refused our login, verbatim; cleared by the next successful login.
    pub fn refusal(&self) -> Option<&Refusal> {
        self.refusal.as_ref()
    }

    pub fn prekeys(&self) -> &PrekeyState {
        &self.prekeys
    }

    /// For opening sessions others started with our prekeys (which uses one-time prekeys up).
    pub fn prekeys_mut(&mut self) -> &mut PrekeyState {
        &mut self.prekeys
    }

    /// The node's own requests not answered yet (in flight or waiting their turn).
    pub fn waiting(&self) -> impl Iterator<Item = &T> {
        self.in_flight
            .values()
            .chain(self.queued.iter().map(|(_, purpose)| purpose))
            .filter_map(|purpose| match purpose {
                Purpose::Caller(token) => Some(token),
                _ => None,
            })
    }

    /// Sends a request of the node's own (or queues it behind those in flight). Whatever
    /// happens, `token` comes back: [`Output::Answer`] or [`Output::Failed`].
    pub fn request(&mut self, request: RendezvousRequest, token: T) {
        self.enqueue(request, Purpose::Caller(token));
    }

    /// Subscribes to the presence of `names` (replacing any earlier subscription).
    /// Why the rendezvous cannot be asked now (`None`: logged in, it can): the server's
    /// refusal of our login (verbatim, with what to do), or that we are not (yet) logged in at
    /// `rendezvous`.
    pub fn unavailable(&self, rendezvous: &impl std::fmt::Display) -> Option<String> {
        if self.logged_in {
            return None;
        }
        Some(match &self.refusal {
            Some(refusal) => format!(
                "the rendezvous refused to log us in: {refusal} ({})",
                refusal_hint(refusal.reason)
            ),
            None if self.connected => {
                "still logging in at the rendezvous; try again in a moment".to_owned()
            }
            None => format!(
                "the rendezvous at {rendezvous} is not reachable; the daemon keeps trying \
                 (`palaver status` shows when it is back)"
            ),
        })
    }

    /// Watches the presence of `names` (replacing what was watched): at most
    /// [`MAX_BATCH`](crate::wire::rendezvous::MAX_BATCH), as many as a server watches for one
    /// session; the first ones are kept.
    pub fn subscribe_presence(&mut self, mut names: Vec<UserName>) {
        names.truncate(crate::wire::rendezvous::MAX_BATCH);
        self.watched.clone_from(&names);
        if !names.is_empty() {
            let request = RendezvousRequest::SubscribePresence {
                names: names.clone(),
            };
            self.enqueue(request, Purpose::Subscribe(names));
        }
    }

    /// Watches `names` too (new contacts), if there is room: the subscription is sent again
    /// with them.
    pub fn watch_too(&mut self, names: &[UserName]) {
        let mut watched = self.watched.clone();
        for name in names {
            if !watched.contains(name) && watched.len() < crate::wire::rendezvous::MAX_BATCH {
                watched.push(name.clone());
            }
        }
        if watched.len() > self.watched.len() {
            self.subscribe_presence(watched);
        }
    }

    pub fn handle(&mut self, input: Input, now_ms: u64, rng: &mut (impl CryptoRng + RngCore)) {
        match input {
            Input::Connected => {
                self.connected = true;
                self.login_retry_ms = None;
                self.registered = false;
                self.login();
            }
            Input::Disconnected => {
                let was_logged_in = self.logged_in;
                self.connected = false;
                self.logged_in = false;
                self.logging_in = false;
                self.next_heartbeat_ms = None;
                // What is in flight fails on its own (the transport reports each); what waits
                // would never go.
                for (_, purpose) in std::mem::take(&mut self.queued) {
                    self.fail(purpose, "lost the rendezvous".into());
                }
                if was_logged_in {
                    self.outputs.push_back(Output::LoggedOut);
                }
            }
            Input::Response { key, response } => {
                if let Some(purpose) = self.in_flight.remove(&key) {
                    self.on_response(purpose, response, now_ms, rng);
                }
                self.send_queued();
            }
            Input::Failed { key, error } => {
                if let Some(purpose) = self.in_flight.remove(&key) {
                    if matches!(purpose, Purpose::Login | Purpose::Register) {
                        // Still connected, but never logged in: try again shortly (found by the
                        // whole-network simulation: a lost login left a node logged out for as
                        // long as its connection lasted).
                        self.logging_in = false;
                        self.login_retry_ms = Some(now_ms + LOGIN_RETRY_MS);
                    }
                    self.retry_later(&purpose, now_ms);
                    self.fail(purpose, format!("the rendezvous did not answer: {error}"));
                }
                self.send_queued();
            }
            Input::Push(ServerPush::Presence(record)) => {
                self.outputs.push_back(Output::Presence(record))
            }
            Input::Push(ServerPush::MailWaiting { .. }) => self.fetch_mail(),
            Input::Push(ServerPush::DevicesChanged { name }) => {
                self.outputs.push_back(Output::DevicesChanged(name))
            }
            Input::Push(ServerPush::PrekeysLow { remaining }) => {
                self.publish_prekeys(remaining, now_ms, rng)
            }
            Input::PrekeysDurable { durable } => {
                if let Some(request) = self.publish_waiting.take()
                    && durable
                {
                    self.enqueue(request, Purpose::Publish);
                }
            }
            Input::MailStored { acks, more } => {
                self.ack_mail(acks);
                if more {
                    self.fetch_mail();
                }
            }
        }
    }

    /// The heartbeat, or a login to try again, when due.
    pub fn handle_timeout(&mut self, now_ms: u64, rng: &mut (impl CryptoRng + RngCore)) {
        if self.logged_in && self.next_heartbeat_ms.is_some_and(|at| now_ms >= at) {
            self.heartbeat(now_ms);
        }
        if self.logged_in && self.retry_at.is_some_and(|at| now_ms >= at) {
            self.retry_at = None;
            let retry = std::mem::take(&mut self.retry);
            if retry.fetch_mail {
                self.fetch_mail();
            }
            if let Some(names) = retry.subscribe {
                self.subscribe_presence(names);
            }
            if retry.publish && !self.prekeys.published {
                self.publish_prekeys(u32::MAX, now_ms, rng);
            }
            self.ack_mail(Vec::new());
        }
        if self.login_retry_ms.is_some_and(|at| now_ms >= at) {
            self.login_retry_ms = None;
            if !self.logged_in {
                self.login();
            }
        }
    }

    // ---- the login sequence ------------------------------------------------------------------

    fn login(&mut self) {
        if self.logging_in || !self.connected {
            return;
        }
        self.logging_in = true;
        let request = RendezvousRequest::Login {
            name: self.config.name.clone(),
            instance: self.config.instance,
        };
        self.enqueue(request, Purpose::Login);
    }

    fn on_response(
        &mut self,
        purpose: Purpose<T>,
        response: RendezvousResponse,
        now_ms: u64,
        rng: &mut (impl CryptoRng + RngCore),
    ) {
        use RendezvousResponse as R;
        match (purpose, response) {
            (
                Purpose::Login,
                R::LoggedIn {
                    mail_waiting,
                    one_time_prekeys_left,
                    ..
                },
            ) => {
                self.logging_in = false;
                self.logged_in = true;
                self.refusal = None;
                self.outputs.push_back(Output::LoggedIn { mail_waiting });
                // The login publishes what is needed itself.
                self.retry.publish = false;
                self.ack_mail(Vec::new());
                self.publish_prekeys(one_time_prekeys_left, now_ms, rng);
                self.heartbeat(now_ms);
                if mail_waiting > 0 || std::mem::take(&mut self.retry.fetch_mail) {
                    self.fetch_mail();
                }
            }
            (Purpose::Login, R::Refused(refusal))
                if refusal.reason == RefusalReason::UnknownUser && !self.registered =>
            {
                self.registered = true;
                let request = RendezvousRequest::Register {
                    name: self.config.name.clone(),
                    token: self.config.registration_token.clone(),
                };
                self.enqueue(request, Purpose::Register);
            }
            (Purpose::Register, R::Registered { .. }) => {
                self.logging_in = false;
                self.login();
            }
            (Purpose::Login | Purpose::Register, R::Refused(refusal))
                if refusal.reason == RefusalReason::RateLimited =>
            {
                self.logging_in = false;
                self.login_retry_ms = Some(now_ms + LOGIN_RETRY_MS);
            }
            // Another run of this key is logged in (a copied home): not a refusal to try the
            // next instance with, which would let this run in beside the first.
            (Purpose::Login, R::Refused(refusal)) if refusal.reason == RefusalReason::InUse => {
                self.logging_in = false;
                self.refusal = Some(refusal.clone());
                self.outputs.push_back(Output::Stop(refusal));
            }
            (Purpose::Login | Purpose::Register, R::Refused(refusal)) => {
                self.logging_in = false;
                self.refusal = Some(refusal.clone());
                self.outputs.push_back(Output::LoginRefused(refusal));
            }
            (Purpose::Publish, R::Done) => {
                self.prekeys.published = true;
                self.outputs.push_back(Output::PersistPrekeys {
                    then_publish: false,
                });
            }
            (Purpose::FetchMail, R::Mail { items, remaining }) => {
                self.outputs.push_back(Output::Mail { items, remaining })
            }
            (Purpose::Subscribe(names), R::Users(users)) => {
                self.outputs.push_back(Output::Subscribed {
                    users,
                    asked: Asked::ContactsAmong(names),
                })
            }
            (Purpose::Caller(token), response) => {
                if let R::Refused(refusal) = &response {
                    self.on_refused(refusal);
                }
                self.outputs.push_back(Output::Answer { token, response });
            }
            (Purpose::AckMail(ids), R::Refused(refusal)) => {
                self.keep_acks(ids);
                self.on_refused(&refusal);
            }
            (_, R::Refused(refusal)) => self.on_refused(&refusal),
            // Heartbeats, subscriptions and acks answer `Done` (or presence): nothing to do.
            _ => {}
        }
    }

    /// Any refusal saying we are not logged in means the server forgot our login (it restarted,
    /// or timed us out): log in again.
    fn on_refused(&mut self, refusal: &Refusal) {
        if refusal.reason == RefusalReason::NotLoggedIn && !self.logging_in {
            if self.logged_in {
                self.logged_in = false;
                self.outputs.push_back(Output::LoggedOut);
            }
            self.login();
        }
    }

    fn heartbeat(&mut self, now_ms: u64) {
        self.next_heartbeat_ms = Some(now_ms + self.config.heartbeat_ms);
        self.enqueue(
            RendezvousRequest::Heartbeat {
                state: PresenceState::Online,
            },
            Purpose::Heartbeat,
        );
    }

    /// Acknowledges `acks` (and any kept from before) in batches, once logged in.
    fn ack_mail(&mut self, acks: Vec<MessageId>) {
        self.unsent_acks.extend(acks);
        while self.unsent_acks.len() > MAX_UNSENT_ACKS {
            self.unsent_acks.pop_front();
        }
        if !self.logged_in {
            return;
        }
        while !self.unsent_acks.is_empty() {
            let n = self
                .unsent_acks
                .len()
                .min(crate::wire::rendezvous::MAX_BATCH);
            let ids: Vec<MessageId> = self.unsent_acks.drain(..n).collect();
            let request = RendezvousRequest::AckMail { ids: ids.clone() };
            self.enqueue(request, Purpose::AckMail(ids));
        }
    }

    /// An acknowledgement that did not go through is kept for the next chance.
    fn keep_acks(&mut self, ids: Vec<MessageId>) {
        for id in ids.into_iter().rev() {
            self.unsent_acks.push_front(id);
        }
        while self.unsent_acks.len() > MAX_UNSENT_ACKS {
            self.unsent_acks.pop_front();
        }
    }

    fn fetch_mail(&mut self) {
        if !self.logged_in {
            // Found by the whole-network simulation: the push that mail arrived can overtake
            // the answer to our login (they travel on different streams); the login's count
            // was taken before the deposit. Fetch once logged in.
            self.retry.fetch_mail = true;
            return;
        }
        {
            self.enqueue(
                RendezvousRequest::FetchMail {
                    max: FETCH_MAIL_BATCH,
                },
                Purpose::FetchMail,
            );
        }
    }

    /// Keeps our prekeys at the rendezvous fresh: the full upload once, a new signed prekey
    /// (with fresh one-time prekeys) weekly, the previous one kept for messages already under
    /// way, and one-time prekeys topped up when few are left.
    fn publish_prekeys(
        &mut self,
        one_time_left: u32,
        now_ms: u64,
        rng: &mut (impl CryptoRng + RngCore),
    ) {
        if self.publish_waiting.is_some() {
            return;
        }
        let prekeys = &mut self.prekeys;
        let request = if !prekeys.published {
            prekeys.signed_at_ms = Some(now_ms);
            let mut upload = prekeys.secrets.upload();
            if prekeys.upload_sent {
                // Found in review: a re-sent upload could put back prekeys already handed out.
                upload.one_time_prekeys = prekeys.secrets.replenish(rng, ONE_TIME_PREKEYS);
            }
            prekeys.upload_sent = true;
            RendezvousRequest::PublishPrekeys(Box::new(upload))
        } else if prekeys
            .signed_at_ms
            .is_none_or(|at| now_ms.saturating_sub(at) > SIGNED_PREKEY_LIFETIME_MS)
        {
            prekeys.secrets.end_signed_prekey_grace();
            let signed_prekey = prekeys.secrets.rotate_signed_prekey(rng, &self.identity);
            let one_time_prekeys = prekeys.secrets.replenish(rng, ONE_TIME_PREKEYS);
            prekeys.signed_at_ms = Some(now_ms);
            RendezvousRequest::PublishPrekeys(Box::new(PrekeyUpload {
                identity: self.identity.verifying_key(),
                signed_prekey,
                one_time_prekeys,
            }))
        } else if one_time_left < PREKEYS_LOW {
            RendezvousRequest::AddOneTimePrekeys(prekeys.secrets.replenish(rng, ONE_TIME_PREKEYS))
        } else {
            return;
        };
        self.publish_waiting = Some(request);
        self.outputs
            .push_back(Output::PersistPrekeys { then_publish: true });
    }

    // ---- the request window ------------------------------------------------------------------

    fn enqueue(&mut self, request: RendezvousRequest, purpose: Purpose<T>) {
        if !self.connected {
            return self.fail(purpose, "not connected to the rendezvous".into());
        }
        if self.queued.len() >= QUEUED {
            return self.fail(
                purpose,
                "too many requests waiting for the rendezvous".into(),
            );
        }
        self.queued.push_back((request, purpose));
        self.send_queued();
    }

    fn send_queued(&mut self) {
        while self.connected && self.in_flight.len() < IN_FLIGHT {
            let Some((request, purpose)) = self.queued.pop_front() else {
                return;
            };
            let key = RequestKey(self.next_key);
            self.next_key += 1;
            self.in_flight.insert(key, purpose);
            self.outputs.push_back(Output::Send { key, request });
        }
    }

    /// Found by the whole-network simulation: a request of the session's own lost while we stay
    /// logged in (a fetch, a subscription, a publish, an ack) was not sent again until the next
    /// login, leaving mail held, presence unwatched or prekeys unpublished for as long as the
    /// connection lasted.
    fn retry_later(&mut self, purpose: &Purpose<T>, now_ms: u64) {
        match purpose {
            Purpose::FetchMail => self.retry.fetch_mail = true,
            Purpose::Subscribe(names) => self.retry.subscribe = Some(names.clone()),
            // Only the full upload is sent again (made afresh: see `PrekeyState::upload_sent`).
            // A top-up is asked for again by the server's count; re-sending the same batch could
            // re-publish prekeys it has handed out since.
            Purpose::Publish if !self.prekeys.published => self.retry.publish = true,
            Purpose::AckMail(_) => {}
            _ => return,
        }
        self.retry_at.get_or_insert(now_ms + RETRY_MS);
    }

    fn fail(&mut self, purpose: Purpose<T>, error: String) {
        match purpose {
            Purpose::Caller(token) => self.outputs.push_back(Output::Failed { token, error }),
            // Found by the whole-network simulation: an ack that was lost left its mail held
            // for good. It is sent again while logged in, else after the next login.
            Purpose::AckMail(ids) => self.keep_acks(ids),
            // A heartbeat is sent again at the next period; a subscription, fetch or publish
            // after the next login, or on retry (see `retry_later`).
            Purpose::Login | Purpose::Register => self.logging_in = false,
            _ => {}
        }
    }
}

/// What a user can do about the rendezvous refusing the login, by the reason it gave.
pub fn refusal_hint(reason: RefusalReason) -> &'static str {
    match reason {
        RefusalReason::TokenRequired | RefusalReason::BadToken => {
            "this server registers only users with a token from its admin: restart the daemon \
             with --registration-token TOKEN"
        }
        RefusalReason::NameTaken | RefusalReason::NotYourName => {
            "the name belongs to another key at this server. If this home is a linked device \
             that was revoked, it is off the account for good: run `palaver device link` on the \
             device holding the account key, then `palaver --home NEW_DIR init --link CODE` here. \
             Otherwise pick another name (`palaver --home NEW_DIR init --name OTHER`)"
        }
        RefusalReason::InUse => {
            "was this home copied from another device? One key runs in one daemon at a time: \
             stop the other daemon; to use this account on a second device, run \
             `palaver device link` on the first and `palaver --home NEW_DIR init --link CODE` \
             on the second"
        }
        RefusalReason::Unavailable => {
            "this server offers no accounts: give a full rendezvous to --rendezvous (a relay-only \
             server goes in --relay)"
        }
        _ => "see the rendezvous's reason; the daemon logs in again when it reconnects",
    }
}

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;
