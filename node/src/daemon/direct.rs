//! Direct messages: one user to another through their Double Ratchet session.
//!
//! Sending ([`Node::send_direct`]): resolve the name and key (rendezvous lookup), open a session
//! from a prekey bundle if there is none, encrypt, sign, then commit the history entry, the outbox
//! item and the session state in one transaction and flush — only then does `send` answer. Delivery
//! ([`Node::deliver`]) goes direct when the peer is reachable (connected, or found through
//! discovery), else to the rendezvous mailbox (`queued`); the outbox keeps retrying until a
//! receipt — the peer's `Stored` answer, or a receipt message after mailbox delivery — arrives.
//!
//! Receiving ([`Node::receive_direct`]): verify, drop known ids, decrypt, commit the message with
//! the session state it advanced, flush, and only then acknowledge.

use libp2p::PeerId;
use libp2p::request_response::{OutboundRequestId, ResponseChannel};

use palaver_protocol::crypto::x3dh::PrekeyBundle;
use palaver_protocol::delivery::{HybridClock, Stamp};
use palaver_protocol::identity::peer_id_of;
use palaver_protocol::node::direct::pairwise::{self, PeerSessions};
use palaver_protocol::node::direct::{Input as DeliveryInput, Route};
use palaver_protocol::wire::{
    Body, DirectMessage, MailItem, PeerRequest, PeerResponse, RendezvousRequest, UserRecord,
};
use palaver_protocol::{Envelope, MessageId, UserName, VerifyingKey};
use rand_core::OsRng;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::trust::Asked;
use super::{Node, OUTBOX_META, Pending, now_ms};
use crate::rpc::{Reply, RpcError};
use crate::store::{ConversationId, HistoryEntry, StateBatch, StateKey, Status};

mod delivery;
mod receive;

/// A direct message waiting for what it needs (the peer's key, name or session) before it can be
/// encrypted and committed.
#[derive(Debug)]
pub(crate) struct Job {
    pub(crate) to_name: Option<UserName>,
    pub(crate) to_key: Option<VerifyingKey>,
    pub(crate) payload: palaver_protocol::wire::Payload,
    pub(crate) reply: Option<Reply>,
    /// Until when to keep asking for the recipient's prekeys while it has published none yet.
    pub(crate) prekeys_wait_until: Option<u64>,
    /// The client's own key for this send, stored with the message (see [`super::client_ids`]).
    pub(crate) client_key: Option<super::client_ids::ClientKey>,
    /// What the answer warns about (the recipient's key changed).
    pub(crate) warning: Option<String>,
}

/// How long a message waits for a recipient who has logged in but not published prekeys yet
/// (it does so right after its login; a send at that moment must not fail).
pub(crate) const PREKEY_WAIT_MS: u64 = 15_000;
/// Where our hybrid logical clock is kept (named for the Lamport clock it replaced, whose last
/// value it simply goes on from).
pub(crate) const CLOCK_META: &str = "lamport";
/// Messages that may wait for prekeys at once; past that, a send fails at once.
const MAX_WAITING_FOR_PREKEYS: usize = 256;

impl Job {
    pub(crate) fn to_name(
        name: UserName,
        payload: palaver_protocol::wire::Payload,
        reply: Option<Reply>,
    ) -> Self {
        Self {
            to_name: Some(name),
            to_key: None,
            payload,
            reply,
            prekeys_wait_until: None,
            client_key: None,
            warning: None,
        }
    }

    pub(crate) fn to_key(key: VerifyingKey, payload: palaver_protocol::wire::Payload) -> Self {
        Self {
            to_name: None,
            to_key: Some(key),
            payload,
            reply: None,
            prekeys_wait_until: None,
            client_key: None,
            warning: None,
        }
    }

    pub(crate) fn fail(self, message: String) {
        match self.reply {
            Some(reply) => {
                let _ = reply.send(Err(RpcError::failed(message)));
            }
            None => tracing::warn!("could not send a control message: {message}"),
        }
    }
}

/// A message on its way out; it stays in the outbox until the recipient acknowledges it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct OutboxItem {
    pub(crate) id: MessageId,
    pub(crate) to_key: [u8; 32],
    pub(crate) to_name: UserName,
    pub(crate) frame: Vec<u8>,
    /// Shown in history (text), as opposed to a control message (receipt, key, membership).
    pub(crate) in_history: bool,
}

impl OutboxItem {
    /// Whom the delivery planner sends it to.
    pub(crate) fn route(&self) -> Option<Route> {
        let key = VerifyingKey::from_bytes(&self.to_key).ok()?;
        Some(Route {
            peer: peer_id_of(&key),
            to: self.to_name.clone(),
            in_history: self.in_history,
        })
    }
}

impl Node {
    /// Sends `job` once its recipient's key, name and session are known, asking the rendezvous
    /// for what is missing first.
    pub(crate) fn send_direct(&mut self, mut job: Job) {
        if job.to_key.is_none() {
            let Some(name) = job.to_name.clone() else {
                return job.fail("no recipient".into());
            };
            match self.key_to_send(&name) {
                Err(refusal) => return job.fail(refusal),
                Ok(Some((key, warning))) => {
                    job.to_key = Some(key);
                    job.warning = warning;
                }
                Ok(None) => {
                    let request = RendezvousRequest::Lookup {
                        names: vec![name.clone()],
                    };
                    if let Err(job) = self.request_or_fail(
                        request,
                        |job| Pending::Lookup {
                            names: vec![name.clone()],
                            then: Some(job),
                        },
                        job,
                    ) {
                        job.fail(self.offline_reason(&format!("cannot look {name} up")));
                    }
                    return;
                }
            }
        }
        let Some(key) = job.to_key else { return };
        if key == self.identity.public() {
            return job.fail("that is you".into());
        }
        if job.to_name.is_none() {
            match self.name_of_key(&key).and_then(|n| UserName::new(n).ok()) {
                Some(name) => job.to_name = Some(name),
                None => {
                    let request = RendezvousRequest::WhoIs { keys: vec![key] };
                    let keys = vec![key.to_bytes()];
                    let pending = |job| Pending::WhoIs {
                        keys,
                        then: Some(job),
                    };
                    if let Err(job) = self.request_or_fail(request, pending, job) {
                        job.fail(self.offline_reason("cannot look the recipient up"));
                    }
                    return;
                }
            }
        }
        let Some(name) = job.to_name.clone() else {
            return;
        };
        let sessions = match self
            .store
            .get::<PeerSessions>(StateKey::Session(key.to_bytes()))
        {
            Ok(Some(session)) => session,
            Ok(None) => {
                let request = RendezvousRequest::FetchPrekeys { name };
                let key = key.to_bytes();
                if let Err(job) =
                    self.request_or_fail(request, |job| Pending::Prekeys { key, then: job }, job)
                {
                    job.fail(self.offline_reason("cannot open a session yet"));
                }
                return;
            }
            Err(err) => return job.fail(err.to_string()),
        };
        self.seal_and_send(job, key, name, sessions);
    }

    /// The rendezvous has no prekeys for `job`'s recipient yet: ask again at the next retry tick,
    /// until [`PREKEY_WAIT_MS`] after the first refusal.
    pub(crate) fn wait_for_prekeys(&mut self, mut job: Job, refusal: String) {
        let now = now_ms();
        let until = *job.prekeys_wait_until.get_or_insert(now + PREKEY_WAIT_MS);
        if now >= until || self.waiting_for_prekeys.len() >= MAX_WAITING_FOR_PREKEYS {
            return job.fail(format!("cannot start a session: {refusal}"));
        }
        self.waiting_for_prekeys.push(job);
    }

    /// Sends `request`, parking `job` in the pending entry; gives the job back when offline.
    fn request_or_fail(
        &mut self,
        request: RendezvousRequest,
        pending: impl FnOnce(Job) -> Pending,
        job: Job,
    ) -> Result<(), Box<Job>> {
        if !self.session.is_logged_in() {
            return Err(Box::new(job));
        }
        self.rendezvous_request(request, pending(job));
        Ok(())
    }

    fn seal_and_send(
        &mut self,
        job: Job,
        key: VerifyingKey,
        name: UserName,
        mut sessions: PeerSessions,
    ) {
        let conversation = self.conversation_with(&key.to_bytes());
        let mut clock = self.clock();
        let seq = self.next_seq(&conversation);
        let text = match &job.payload {
            palaver_protocol::wire::Payload::Text(text) => Some(text.clone()),
            _ => None,
        };
        let sealed = pairwise::seal(
            &mut OsRng,
            self.identity.signing_key(),
            key,
            &mut sessions,
            &mut clock,
            seq,
            job.payload,
            now_ms(),
        );
        let pairwise::Sealed {
            id,
            frame,
            stamp,
            sent_at_ms,
        } = match sealed {
            Ok(sealed) => sealed,
            Err(err) => return fail_reply(job.reply, err.to_string()),
        };
        let item = OutboxItem {
            id,
            to_key: key.to_bytes(),
            to_name: name.clone(),
            frame,
            in_history: text.is_some(),
        };
        // The outbox entry is committed with the message; the planner hands it out only once
        // it is durable (with the ratchet state that encrypted it: a crash must not make us
        // encrypt with the same key twice).
        let Some(route) = item.route() else {
            return fail_reply(job.reply, "the recipient's key is not valid".into());
        };
        if let Err(err) = self.delivery.hold(id, route, now_ms()) {
            return fail_reply(job.reply, format!("cannot send now: {err}"));
        }
        let mut batch = StateBatch::default();
        batch
            .put(StateKey::Session(key.to_bytes()), &sessions)
            .put(StateKey::Meta(CLOCK_META), &stamp)
            .put(StateKey::Seq(conversation), &seq)
            .put(StateKey::Outbox(id), &item)
            .put(StateKey::Meta(OUTBOX_META), self.delivery.outbox());
        if let Some(key) = &job.client_key {
            let sent = super::client_ids::ClientSend {
                id,
                to: key.to.clone(),
                text_sha256: key.text_sha256,
            };
            batch.put(StateKey::Meta(&key.state_key()), &sent);
        }
        let committed = match text {
            Some(text) => {
                let entry = HistoryEntry {
                    id,
                    conversation,
                    label: name.to_string(),
                    from: self.name.to_string(),
                    sender: self.identity.public().to_bytes(),
                    text,
                    sent_at_ms,
                    stamp,
                    seq,
                    status: Status::Sending,
                };
                self.store.record(&entry, &batch).map(|_| ())
            }
            None => self.store.apply(&batch),
        };
        if let Err(err) = committed {
            self.delivery.cancel(id);
            return fail_reply(job.reply, format!("could not store the message: {err}"));
        }
        let (reply, warning) = (job.reply, job.warning);
        self.when_durable(move |node, flushed| match flushed {
            Ok(()) => {
                if let Some(reply) = reply {
                    let mut answer = json!({"id": id.to_hex(), "status": "sending"});
                    if let Some(warning) = warning {
                        answer["warning"] = warning.into();
                    }
                    let _ = reply.send(Ok(answer));
                }
                node.delivery_input(DeliveryInput::Durable(id));
            }
            Err(err) => fail_reply(reply, super::durable::not_durable(&err)),
        });
    }

    /// Our hybrid logical clock as last committed.
    fn clock(&self) -> HybridClock {
        let last = self.store.get::<Stamp>(StateKey::Meta(CLOCK_META));
        HybridClock::resume(last.ok().flatten().unwrap_or_default())
    }

    /// The stamp for a message we send; the caller commits it (under [`CLOCK_META`]) with the
    /// message.
    pub(crate) fn next_stamp(&self) -> Stamp {
        self.clock().tick(now_ms())
    }

    /// Moves our clock past a received message's stamp, in the batch that stores it; the stamp
    /// to file the message under (its own, bounded against a clock far ahead of ours; by its send
    /// time if an old peer sent a bare Lamport counter).
    pub(crate) fn observe_stamp(
        &self,
        remote: Stamp,
        sent_at_ms: u64,
        batch: &mut StateBatch,
    ) -> Stamp {
        let mut clock = self.clock();
        let filed = clock.observe(remote.or_sent_at(sent_at_ms), now_ms());
        batch.put(StateKey::Meta(CLOCK_META), &clock.current());
        filed
    }

    pub(crate) fn next_seq(&self, conversation: &ConversationId) -> u64 {
        self.store
            .get::<u64>(StateKey::Seq(*conversation))
            .ok()
            .flatten()
            .unwrap_or(0)
            + 1
    }

    pub(crate) fn on_users(&mut self, users: Vec<UserRecord>, then: Option<Job>, asked: Asked) {
        let users: Vec<UserRecord> = users
            .into_iter()
            .filter(|user| asked.covers(&user.name, &user.identity))
            .collect();
        for user in &users {
            self.presence
                .insert(user.name.to_string(), user.presence.clone());
        }
        if self.learn_keys(users.iter().map(|u| (&u.name, &u.identity)), &asked) {
            self.subscribe_presence();
        }
        let missing = match &asked {
            Asked::Names(names) => names
                .iter()
                .find(|name| !users.iter().any(|u| &u.name == *name)),
            Asked::Keys(_) => None,
        };
        if let Some(missing) = missing {
            if let Some(job) = then {
                job.fail(format!("unknown user {missing} at this rendezvous"));
            }
            return;
        }
        if let Some(job) = then {
            if job.to_name.is_none()
                && job
                    .to_key
                    .is_some_and(|key| !users.iter().any(|u| u.identity == key))
            {
                return job.fail("that key is not registered at this rendezvous".into());
            }
            self.send_direct(job);
        }
    }

    pub(crate) fn on_prekeys(&mut self, key: [u8; 32], bundle: PrekeyBundle, job: Job) {
        if bundle.identity.to_bytes() != key {
            // The rendezvous names another key for the user now than it did: a key change.
            if let Some(name) = &job.to_name {
                let asked = Asked::Names(vec![name.clone()]);
                self.learn_keys([(name, &bundle.identity)], &asked);
            }
            return job.fail(
                "the recipient's key changed while the message was being sent; send it again"
                    .into(),
            );
        }
        let existing = match self.store.get::<PeerSessions>(StateKey::Session(key)) {
            Ok(existing) => existing,
            Err(err) => return job.fail(err.to_string()),
        };
        let signing = self.identity.signing_key();
        let sessions = match pairwise::start_session(&mut OsRng, signing, &bundle, existing) {
            Ok(sessions) => sessions,
            Err(err) => return job.fail(format!("bad prekey bundle: {err}")),
        };
        let mut batch = StateBatch::default();
        batch.put(StateKey::Session(key), &sessions);
        if let Err(err) = self.store.apply(&batch) {
            return job.fail(err.to_string());
        }
        self.send_direct(job);
    }
}

fn fail_reply(reply: Option<Reply>, message: String) {
    match reply {
        Some(reply) => {
            let _ = reply.send(Err(RpcError::failed(message)));
        }
        None => tracing::warn!("{message}"),
    }
}

/// A stand-in name for a key whose user name is not known (yet).
pub(crate) fn short_key(key: &VerifyingKey) -> String {
    format!("key:{}", &hex::encode(key.as_bytes())[..12])
}
