//! Carries out the rendezvous session's decisions ([`palaver_protocol::node::session`]): its
//! requests go out over the swarm, its prekeys to the store, and its answers to the parts of the
//! node that asked. Discovery requests go the same way; [`super::discovery`] makes and reads them.

use libp2p::PeerId;
use libp2p::request_response::OutboundRequestId;
use palaver_protocol::UserName;
use palaver_protocol::crypto::x3dh::PrekeySecrets;
use palaver_protocol::node::asks::{self, Step};
use palaver_protocol::node::session::{self as plan, Input, Output, PrekeyState, refusal_hint};
use palaver_protocol::wire::{PresenceRecord, RendezvousRequest, RendezvousResponse};
use rand_core::OsRng;
use serde_json::{Value, json};

use super::{Node, now_ms};
use crate::rpc::RpcError;
use crate::store::{StateBatch, StateKey, Store};

/// The session, with the node's own requests continued by [`Pending`].
pub(crate) type Session = plan::Session<Pending>;

/// What a request of the node's own was for, and who waits on its answer (decided on by
/// [`asks::answered`]).
pub(crate) type Pending = asks::Ask<super::replies::ReplyToken, super::discovery::Asked>;

const PREKEYS_META: &str = "prekeys";
const SIGNED_PREKEY_AT_META: &str = "signed_prekey_at";
const PREKEYS_PUBLISHED_META: &str = "prekeys_published";
const PREKEYS_UPLOAD_SENT_META: &str = "prekeys_upload_sent";

/// Our prekeys as stored (made and stored on the first start).
pub(crate) fn load_prekeys(
    store: &Store,
    identity: &palaver_protocol::Identity,
) -> anyhow::Result<PrekeyState> {
    if let Some(secrets) = store.get::<PrekeySecrets>(StateKey::Meta(PREKEYS_META))? {
        return Ok(PrekeyState {
            secrets,
            signed_at_ms: store.get(StateKey::Meta(SIGNED_PREKEY_AT_META))?,
            published: store
                .get(StateKey::Meta(PREKEYS_PUBLISHED_META))?
                .unwrap_or(false),
            upload_sent: store
                .get(StateKey::Meta(PREKEYS_UPLOAD_SENT_META))?
                .unwrap_or(false),
        });
    }
    let prekeys = PrekeyState::generate(&mut OsRng, identity.signing_key());
    store.apply(&prekey_batch(&prekeys))?;
    Ok(prekeys)
}

/// Writes our prekeys' secrets into `batch` (after a session was opened with one of them).
pub(crate) fn put_prekey_secrets(batch: &mut StateBatch, secrets: &PrekeySecrets) {
    batch.put(StateKey::Meta(PREKEYS_META), secrets);
}

fn prekey_batch(prekeys: &PrekeyState) -> StateBatch {
    let mut batch = StateBatch::default();
    put_prekeys(&mut batch, prekeys);
    batch
}

/// Writes our prekeys into `batch`.
pub(crate) fn put_prekeys(batch: &mut StateBatch, prekeys: &PrekeyState) {
    put_prekey_secrets(batch, &prekeys.secrets);
    if let Some(at) = prekeys.signed_at_ms {
        batch.put(StateKey::Meta(SIGNED_PREKEY_AT_META), &at);
    }
    batch.put(StateKey::Meta(PREKEYS_PUBLISHED_META), &prekeys.published);
    batch.put(
        StateKey::Meta(PREKEYS_UPLOAD_SENT_META),
        &prekeys.upload_sent,
    );
}

impl Node {
    pub(crate) fn is_rendezvous(&self, peer: &PeerId) -> bool {
        self.reach.is_rendezvous(peer)
    }

    /// Why the rendezvous cannot be asked now (`None`: logged in, it can).
    pub(crate) fn rendezvous_unavailable(&self) -> Option<String> {
        self.state.session.unavailable(self.reach.rendezvous_addr())
    }

    /// The rendezvous, while connected to it.
    pub(crate) fn rendezvous_peer(&self) -> Option<PeerId> {
        self.reach
            .rendezvous_peer()
            .filter(|_| self.reach.rendezvous_connected())
    }

    /// Sends a request to the rendezvous (or queues it behind those in flight). Whatever
    /// happens, `pending` hears of it: an answer, or why none came.
    pub(crate) fn rendezvous_request(&mut self, request: RendezvousRequest, pending: Pending) {
        self.state.session.request(request, pending);
        self.drive_session();
    }

    pub(crate) fn session_input(&mut self, input: Input) {
        self.state.session.handle(input, now_ms(), &mut OsRng);
        self.drive_session();
    }

    /// An answer (or transport failure) for request `id` to the rendezvous, if it was the
    /// session's.
    pub(crate) fn on_rendezvous_answer(
        &mut self,
        id: OutboundRequestId,
        answer: Result<RendezvousResponse, String>,
    ) {
        let Some(key) = self.rendezvous_requests.remove(&id) else {
            return;
        };
        self.session_input(match answer {
            Ok(response) => Input::Response { key, response },
            Err(error) => Input::Failed { key, error },
        });
    }

    pub(crate) fn drive_session(&mut self) {
        while let Some(output) = self.state.session.poll_output() {
            match output {
                Output::Send { key, request } => match self.rendezvous_peer() {
                    Some(peer) => {
                        let id = self
                            .swarm
                            .behaviour_mut()
                            .rendezvous
                            .send_request(&peer, request);
                        self.rendezvous_requests.insert(id, key);
                    }
                    None => self.state.session.handle(
                        Input::Failed {
                            key,
                            error: "not connected to the rendezvous".into(),
                        },
                        now_ms(),
                        &mut OsRng,
                    ),
                },
                Output::PersistPrekeys { then_publish } => self.persist_prekeys(then_publish),
                Output::LoggedIn { mail_waiting } => self.on_logged_in(mail_waiting),
                Output::LoggedOut => {
                    self.state.logged_out(now_ms(), &mut OsRng);
                    self.reach(super::reach::ReachInput::LoggedIn(false));
                    self.drive_delivery();
                }
                Output::Stop(refusal) => {
                    self.fatal = Some(format!("{refusal}; {}", refusal_hint(refusal.reason)));
                    self.stopping = true;
                }
                Output::LoginRefused(refusal) => {
                    tracing::error!("the rendezvous refused us: {refusal}");
                    // With several instances, the planner moves on to the next.
                    self.reach(super::reach::ReachInput::RendezvousRefused);
                    self.emit(crate::rpc::Event::Rendezvous {
                        connected: true,
                        logged_in: false,
                        error: Some(refusal.to_string()),
                    });
                }
                Output::Answer { token, response } => self.on_asked(token, Ok(response)),
                Output::Failed { token, error } => self.on_asked(token, Err(error)),
                Output::Presence(record) => self.on_presence_push(record),
                Output::DevicesChanged(name) => self.refresh_devices(vec![name]),
                Output::Subscribed { users, asked } => {
                    self.learn_keys(users.iter().map(|u| (&u.name, &u.identity)), &asked);
                    for user in users {
                        self.remember_presence(user.presence);
                    }
                }
                Output::Mail { items, remaining } => self.on_mail(items, remaining),
            }
        }
    }

    /// The secrets are on disk before any public half leaves.
    fn persist_prekeys(&mut self, then_publish: bool) {
        if let Err(err) = self
            .store
            .apply(&prekey_batch(self.state.session.prekeys()))
        {
            tracing::error!("cannot store prekeys, not publishing them: {err}");
            if then_publish {
                self.session_input(Input::PrekeysDurable { durable: false });
            }
            return;
        }
        if then_publish {
            self.when_durable(super::durable::AfterFlush::Prekeys);
        }
    }

    pub(crate) fn on_rendezvous_connected(&mut self, peer: PeerId) {
        let again = if std::mem::take(&mut self.rendezvous_outage_logged) {
            " again"
        } else {
            ""
        };
        tracing::info!(
            "connected to the rendezvous at {} ({peer}){again}",
            self.reach.rendezvous_addr()
        );
        self.push_server.send_replace(Some(peer));
        self.session_input(Input::Connected);
    }

    /// The last connection to the rendezvous closed: what waited for it fails, and we are logged
    /// out until the planner has it back.
    pub(crate) fn on_rendezvous_lost(&mut self) {
        if !self.stopping {
            tracing::warn!(
                "lost the connection to the rendezvous at {}; reconnecting",
                self.reach.rendezvous_addr()
            );
            self.rendezvous_outage_logged = true;
        }
        self.session_input(Input::Disconnected);
        self.emit(crate::rpc::Event::Rendezvous {
            connected: false,
            logged_in: false,
            error: None,
        });
    }

    fn on_logged_in(&mut self, mail_waiting: u32) {
        tracing::info!(
            "logged in at the rendezvous as {} ({mail_waiting} held messages)",
            self.name
        );
        self.emit(crate::rpc::Event::Rendezvous {
            connected: true,
            logged_in: true,
            error: None,
        });
        let (contacts, addrs) = (
            self.contact_names(),
            self.swarm.external_addresses().cloned().collect(),
        );
        self.state.logged_in(now_ms(), &mut OsRng, contacts, addrs);
        // A relay slot at the rendezvous, so peers can reach us behind a NAT (once identify has
        // told us how the rendezvous sees us: see the reach planner).
        self.reach(super::reach::ReachInput::LoggedIn(true));
        self.drive_session();
        self.drive_discovery();
        self.drive_delivery();
        let _ = self.drive_rooms();
        self.refresh_all_devices();
        self.resume_copies();
    }

    pub(crate) fn contact_names(&self) -> Vec<UserName> {
        self.store
            .scan_keys(StateKey::Contact(""))
            .into_iter()
            .filter_map(|name| UserName::new(name).ok())
            .collect()
    }

    /// The rendezvous answered a request of the node's own (`Err`: why no answer came): its
    /// steps are carried out in order.
    fn on_asked(&mut self, pending: Pending, answer: Result<RendezvousResponse, String>) {
        for step in asks::answered(pending, answer) {
            match step {
                Step::Learn { users, asked } => self.on_users(users, asked),
                Step::Pipeline { call, answer } => self.answer_send(call, answer),
                Step::Unnamed(keys) => self.strangers_unnamed(keys),
                Step::Deposited(id) => {
                    self.delivery_input(palaver_protocol::node::direct::Input::Deposited(id))
                }
                Step::DepositFailed { id, reason } => self.on_deposit_refused(id, reason),
                Step::Presence {
                    names,
                    explicit,
                    users,
                    reply,
                } => {
                    let answer = match users {
                        Some(users) => self.presence_answer(&names, explicit, users),
                        None => Ok(self.last_known_presence(&names)),
                    };
                    self.replies.answer(reply, answer);
                }
                Step::Invite { room, user, reply } => {
                    if let Some(reply) = self.replies.take(reply) {
                        self.room_invite(room, user, reply, true);
                    }
                }
                Step::Verify {
                    name,
                    confirm,
                    reply,
                } => {
                    if let Some(reply) = self.replies.take(reply) {
                        self.answer_verify(name, confirm, reply);
                    }
                }
                Step::Fail { reply, error } => {
                    self.replies.answer(reply, Err(RpcError::failed(error)))
                }
                Step::Discovery(asked, answer) => self.on_discovery_answer(asked, answer),
                Step::Devices {
                    lists,
                    claims,
                    waiting,
                } => self.on_devices(lists, &claims, &waiting),
                Step::FetchDevices {
                    claims,
                    waiting,
                    call,
                } => {
                    let names = claims.iter().map(|(name, _)| name.clone()).collect();
                    self.fetch_devices(names, claims, waiting, call)
                }
                Step::Link(answer) => self.on_link_answer(answer),
                Step::Revoked { list, reply } => self.on_revoked(*list, reply),
            }
        }
    }

    /// Senders asked about that the rendezvous did not name: what waited for their name is
    /// shown with their stand-in.
    fn strangers_unnamed(&mut self, keys: Vec<[u8; 32]>) {
        for key in keys {
            self.release_unnamed(&key, None);
        }
    }

    fn on_presence_push(&mut self, record: PresenceRecord) {
        self.emit(crate::rpc::Event::Presence {
            name: record.name.to_string(),
            state: state_str(record.state),
            last_seen: record.last_seen_ms,
        });
        self.store_presence(&record);
        let logged_in = self.state.session.is_logged_in();
        let pushed = self.presence.pushed(record, logged_in);
        if let Some(user) = pushed.check_key {
            let names = vec![user];
            let request = RendezvousRequest::Lookup {
                names: names.clone(),
            };
            self.rendezvous_request(request, Pending::CheckKeys { names });
        }
        if let Some(user) = pushed.came_online {
            self.delivery_input(palaver_protocol::node::direct::Input::CameOnline(user));
        }
    }
}

pub(crate) use palaver_protocol::node::presence::state_str;

pub(crate) fn presence_json(record: &PresenceRecord) -> Value {
    json!({"name": record.name.as_str(), "state": state_str(record.state), "last_seen": record.last_seen_ms})
}
