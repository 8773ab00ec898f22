//! Direct messages: one user to another through their Double Ratchet session.
//!
//! Sending ([`Node::send_direct`]): the send pipeline (`protocol::node::direct::pipeline`) asks
//! for what is missing — the key (rendezvous lookup), the name (who-is), a session (a prekey
//! bundle, waited for while the recipient has published none yet) — and this driver does what
//! it asks; then encrypt, sign, then commit the history entry, the outbox
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
use palaver_protocol::node::devices::{CopyFor, PendingCopies};
use palaver_protocol::node::direct::mail;
use palaver_protocol::node::direct::pairwise::{self, PeerSessions};
use palaver_protocol::node::direct::pipeline::{
    Answer as PipelineAnswer, CallId, Input as PipelineInput, Output as PipelineOutput, Recipient,
};
use palaver_protocol::node::direct::{Input as DeliveryInput, Route};
use palaver_protocol::wire::{
    Body, DirectMessage, MailItem, PeerRequest, PeerResponse, RendezvousRequest, UserRecord,
};
use palaver_protocol::{Envelope, MessageId, UserName, VerifyingKey};
use rand_core::OsRng;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::durable::AfterFlush;
use super::replies::ReplyToken;
use super::trust::{Asked, StoreFacts};
use super::{Node, OUTBOX_META, Pending, now_ms};
use crate::rpc::RpcError;
use crate::store::{ConversationId, HistoryEntry, StateBatch, StateKey, Status, StoreError};

mod delivery;
pub(crate) use delivery::CopyStatus;
mod receive;

/// A direct message on its way: whom it is for, what it carries, whom to answer. The
/// [`SendPipeline`] holds it until the recipient's key, name and session are known.
#[derive(Debug)]
pub(crate) struct Job {
    pub(crate) to: Recipient,
    pub(crate) payload: palaver_protocol::wire::Payload,
    /// The parked reply of the call that asked for it (none for control messages).
    pub(crate) reply: Option<ReplyToken>,
    /// The client's own key for this send, stored with the message (see [`super::client_ids`]).
    pub(crate) client_key: Option<super::client_ids::ClientKey>,
    /// For a file offer: the copy it is served from (see [`super::files`]).
    pub(crate) served_from: Option<std::path::PathBuf>,
    /// A copy of a message for another device (see [`palaver_protocol::node::devices`]): it
    /// goes under the message's sequence number, and is no line in our history of its own.
    pub(crate) copy: Option<Copy>,
}

/// Which message a copy is of, and for whom.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Copy {
    pub(crate) of: MessageId,
    pub(crate) seq: u64,
    pub(crate) for_: CopyFor,
}

/// Where our hybrid logical clock is kept (named for the Lamport clock it replaced, whose last
/// value it simply goes on from).
pub(crate) const CLOCK_META: &str = "lamport";

impl Job {
    pub(crate) fn to_name(
        name: UserName,
        payload: palaver_protocol::wire::Payload,
        reply: Option<ReplyToken>,
    ) -> Self {
        Self {
            to: Recipient::Name(name),
            payload,
            reply,
            client_key: None,
            served_from: None,
            copy: None,
        }
    }

    pub(crate) fn to_key(key: VerifyingKey, payload: palaver_protocol::wire::Payload) -> Self {
        Self {
            to: Recipient::Key(key),
            payload,
            reply: None,
            client_key: None,
            served_from: None,
            copy: None,
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

/// Why a send ended without its message.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SendFailed {
    /// The send pipeline's refusal, in its words.
    #[error("{0}")]
    Refused(String),
    #[error("the session with the recipient is gone")]
    NoSession,
    #[error("cannot read the store: {0}")]
    Unreadable(StoreError),
    #[error(transparent)]
    Seal(pairwise::SealError),
    #[error("the recipient's key is not valid")]
    BadKey,
    #[error("cannot send now: {0}")]
    Outbox(palaver_protocol::delivery::OutboxError),
    #[error("could not store the message: {0}")]
    NotStored(StoreError),
    #[error("{0}")]
    NotDurable(String),
}

impl Node {
    /// Sends `job` once its recipient's key, name and session are known (the pipeline asks
    /// for what is missing first).
    pub(crate) fn send_direct(&mut self, job: Job) {
        let to = job.to.clone();
        self.pipeline_input(PipelineInput::Send { job, to });
    }

    /// Feeds the send pipeline, then does what it asks.
    pub(crate) fn pipeline_input(&mut self, input: PipelineInput<Job>) {
        self.feed_pipeline(input);
        self.drive_pipeline();
    }

    /// Feeds the send pipeline; what it asks waits in its outputs.
    fn feed_pipeline(&mut self, input: PipelineInput<Job>) {
        let unavailable = self.rendezvous_unavailable();
        let account = self.account_key();
        let me = self.identity.public();
        let mut facts = StoreFacts::new(&self.store, me, &self.name, account, unavailable);
        self.state.sends.handle(input, now_ms(), &mut facts);
    }

    pub(crate) fn drive_pipeline(&mut self) {
        while let Some(output) = self.state.sends.poll_output() {
            match output {
                PipelineOutput::Lookup { call, name } => {
                    let request = RendezvousRequest::Lookup {
                        names: vec![name.clone()],
                    };
                    let pending = Pending::Lookup {
                        names: vec![name],
                        call,
                    };
                    self.rendezvous_request(request, pending);
                }
                PipelineOutput::WhoIs { call, key } => {
                    let request = RendezvousRequest::WhoIs { keys: vec![key] };
                    let pending = Pending::WhoIs {
                        keys: vec![key.to_bytes()],
                        call: Some(call),
                    };
                    self.rendezvous_request(request, pending);
                }
                PipelineOutput::FetchPrekeys {
                    call,
                    name,
                    key,
                    device,
                } => {
                    let request = match device {
                        false => RendezvousRequest::FetchPrekeys { name },
                        true => RendezvousRequest::FetchDevicePrekeys { name, device: key },
                    };
                    let pending = Pending::Prekeys { call };
                    self.rendezvous_request(request, pending);
                }
                PipelineOutput::StartSession { call, key, bundle } => {
                    let answer = self.start_session(key, &bundle);
                    self.feed_pipeline(PipelineInput::Answered { call, answer });
                }
                PipelineOutput::KeyChanged { name, key } => {
                    let asked = Asked::Names(vec![name.clone()]);
                    self.learn_keys([(&name, &key)], &asked);
                }
                PipelineOutput::Seal {
                    job,
                    key,
                    name,
                    warning,
                } => match self.store.sessions(key.to_bytes()) {
                    Ok(Some(sessions)) => self.seal_and_send(job, key, name, sessions, warning),
                    Ok(None) => self.fail_send(job.reply, SendFailed::NoSession),
                    Err(err) => self.fail_send(job.reply, SendFailed::Unreadable(err)),
                },
                PipelineOutput::Fail { job, error } => {
                    if let (Some(copy), Recipient::Key(device)) = (&job.copy, &job.to) {
                        // Still owed: the next login sends it again.
                        self.copies_in_flight.remove(&(copy.of, device.to_bytes()));
                    }
                    self.fail_send(job.reply, SendFailed::Refused(error))
                }
            }
        }
    }

    /// What the rendezvous answered a send's question: the pipeline goes on.
    pub(crate) fn answer_send(&mut self, call: CallId, answer: PipelineAnswer) {
        self.pipeline_input(PipelineInput::Answered { call, answer });
    }

    fn seal_and_send(
        &mut self,
        job: Job,
        key: VerifyingKey,
        name: UserName,
        mut sessions: PeerSessions,
        warning: Option<String>,
    ) {
        if let Some(copy) = &job.copy {
            // It is sealed now or fails now; if it fails, the next login sends it again.
            self.copies_in_flight.remove(&(copy.of, key.to_bytes()));
        }
        let read = |node: &Self| -> Result<_, StoreError> {
            let conversation = node.conversation_with(&key.to_bytes())?;
            let (seq, copies_left) = match job.copy {
                Some(copy) => {
                    let pending = node
                        .store
                        .get::<PendingCopies>(StateKey::CopiesPending(copy.of))?;
                    (copy.seq, pending.map(|p| p.sealed(&key)))
                }
                None => (node.next_seq(&conversation)?, None),
            };
            Ok((conversation, node.clock()?, seq, copies_left))
        };
        let (conversation, mut clock, seq, copies_left) = match read(self) {
            Ok(read) => read,
            Err(err) => return self.fail_send(job.reply, SendFailed::Unreadable(err)),
        };
        let copy = job.copy.is_some();
        let text = job.payload.history_text().filter(|_| !copy);
        // A person's message to a name goes to their other devices and ours too.
        let copied = matches!(job.to, Recipient::Name(_)) && !copy && text.is_some();
        let copied = copied.then(|| job.payload.clone());
        let offer = job.payload.file_offer().cloned();
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
            place,
        } = match sealed {
            Ok(sealed) => sealed,
            Err(err) => return self.fail_send(job.reply, SendFailed::Seal(err)),
        };
        let item = OutboxItem {
            id,
            to_key: key.to_bytes(),
            to_name: name.clone(),
            frame,
            in_history: text.is_some(),
        };
        // The outbox entry is committed with the message; the planner hands it out once it is
        // durable with the ratchet state that encrypted it (a crash must not make us encrypt
        // with the same key twice), or at once if the state on disk already reserves its
        // number in the sending chain, which a restart skips past.
        let sent_ahead = self
            .sends_ahead
            .get(&key.to_bytes())
            .is_some_and(|ahead| ahead.covers(&place));
        let Some(route) = item.route() else {
            return self.fail_send(job.reply, SendFailed::BadKey);
        };
        if let Err(err) = self.state.delivery.hold(id, route, now_ms()) {
            return self.fail_send(job.reply, SendFailed::Outbox(err));
        }
        // What sealing moved on, written first and kept whatever follows (a crash must not
        // make us seal with the same key twice; nothing leaves before the flush unless its
        // number was reserved on disk before).
        let mut moved_on = StateBatch::default();
        moved_on
            .put(StateKey::Session(key.to_bytes()), &sessions)
            .put(StateKey::Meta(CLOCK_META), &stamp);
        // What the message brings: taken out with it if a crash cuts it short.
        let mut batch = StateBatch::default();
        // The copies this message makes are stored with it; a copy, once sealed, is taken off.
        let pending = copied
            .and_then(|payload| self.pending_copies(&payload, &name, key, (id, seq, sent_at_ms)));
        match job.copy {
            None => moved_on.put(StateKey::Seq(conversation), &seq),
            Some(copy) => {
                match copies_left {
                    Some(Some(left)) => batch.put(StateKey::CopiesPending(copy.of), &left),
                    Some(None) => batch.remove(StateKey::CopiesPending(copy.of)),
                    None => &mut batch,
                };
                batch.put(StateKey::CopyOf(id), &(copy.of, copy.for_, key.to_bytes()))
            }
        };
        if let Some(pending) = &pending {
            batch.put(StateKey::CopiesPending(id), pending);
        }
        batch.put(StateKey::Outbox(id), &item);
        if let Some(key) = &job.client_key {
            batch.put(StateKey::Meta(&key.state_key()), &key.record(id));
        }
        if let (Some(offer), Some(path)) = (&offer, &job.served_from) {
            let audience = palaver_protocol::node::files::Audience::Peer(key);
            Self::put_served(&mut batch, id, offer, audience, path);
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
                // In order rather than in a transaction (a copy has no text, so its change
                // to the copies left is never carried here).
                self.store
                    .record_in_order(&conversation, &[(&entry, &batch)], &moved_on)
                    .map(|_| ())
            }
            None => self.store.apply(moved_on.extend(batch)),
        };
        if let Err(err) = committed {
            self.state.delivery.cancel(id);
            return self.fail_send(job.reply, SendFailed::NotStored(err));
        }
        let reply = job.reply;
        self.note_send_ahead(key.to_bytes(), sessions.send_ahead());
        if sent_ahead {
            self.delivery_input(DeliveryInput::Durable(id));
        }
        self.when_durable(AfterFlush::Sealed {
            id,
            reply,
            warning,
            sent_ahead,
        });
        if let Some(pending) = pending {
            self.feed_copies(pending);
        }
    }

    /// Copies left unsealed (by an earlier run that stopped, or because a device could not be
    /// reached for its prekeys) go out now, at each login; those under way are left be.
    pub(crate) fn resume_copies(&mut self) {
        let pending = self
            .store
            .scan_each::<PendingCopies>(StateKey::CopiesPending(MessageId([0; 32])));
        let mine = self.own_devices();
        let mut gone = StateBatch::default();
        for (key, copies) in pending {
            let copies = match copies {
                Ok(copies) => copies,
                Err(err) => {
                    tracing::warn!("dropping copies left to send that cannot be read: {err}");
                    gone.remove_raw(key);
                    continue;
                }
            };
            let of = copies.of;
            let theirs = self.devices_of(&copies.to);
            match copies.still_wanted(theirs.as_ref(), mine.as_ref()) {
                Some(wanted) => self.feed_copies(wanted),
                None => {
                    gone.remove(StateKey::CopiesPending(of));
                }
            }
        }
        if !gone.is_empty()
            && let Err(err) = self.store.apply(&gone)
        {
            tracing::warn!("store: {err}");
        }
        self.drive_pipeline();
    }

    /// The copies of our message `id` to `to` (account key `to_key`) for the other devices (see
    /// [`palaver_protocol::node::devices::copy_jobs`]), if it makes any.
    fn pending_copies(
        &self,
        payload: &palaver_protocol::wire::Payload,
        to: &UserName,
        to_key: VerifyingKey,
        (id, seq, sent_at_ms): (MessageId, u64, u64),
    ) -> Option<PendingCopies> {
        use palaver_protocol::node::devices;
        let copies = devices::copies(
            &to_key,
            self.devices_of(to).as_ref(),
            self.own_devices().as_ref(),
            &self.identity.public(),
        );
        let jobs = devices::copy_jobs(payload, to, &to_key, id, sent_at_ms, copies);
        (!jobs.is_empty()).then_some(PendingCopies {
            of: id,
            to: to.clone(),
            to_key,
            seq,
            jobs,
        })
    }

    fn feed_copies(&mut self, pending: PendingCopies) {
        for copy in pending.jobs {
            if !self
                .copies_in_flight
                .insert((pending.of, copy.device.to_bytes()))
            {
                continue;
            }
            let mut job = Job::to_key(copy.device, copy.payload);
            job.copy = Some(Copy {
                of: pending.of,
                seq: pending.seq,
                for_: copy.copy,
            });
            // Fed, not driven: sealing runs inside the pipeline's own loop, which carries it on.
            self.feed_pipeline(PipelineInput::Send {
                to: job.to.clone(),
                job,
            });
        }
    }

    /// A message we sealed is on disk (with the ratchet state that sealed it): the send
    /// answers, and the planner may hand it out.
    pub(crate) fn on_sealed_durable(
        &mut self,
        id: MessageId,
        reply: Option<ReplyToken>,
        warning: Option<String>,
        sent_ahead: bool,
        flushed: super::durable::Flushed,
    ) {
        match flushed {
            Ok(()) => {
                if let Some(reply) = reply {
                    let mut answer = json!({"id": id.to_hex(), "status": "sending"});
                    if let Some(warning) = warning {
                        answer["warning"] = warning.into();
                    }
                    self.replies.answer(reply, Ok(answer));
                }
                if !sent_ahead {
                    self.delivery_input(DeliveryInput::Durable(id));
                }
            }
            Err(err) => self.fail_send(
                reply,
                SendFailed::NotDurable(super::durable::not_durable(&err)),
            ),
        }
    }

    /// `ahead`, what our sessions with `peer` just written reserve, counts once it is durable
    /// (see [`Node::seal_and_send`]).
    pub(crate) fn note_send_ahead(
        &mut self,
        peer: [u8; 32],
        ahead: Option<palaver_protocol::crypto::ratchet::SendAhead>,
    ) {
        if let Some(ahead) = ahead
            && self.sends_ahead.get(&peer) != Some(&ahead)
        {
            self.when_durable(AfterFlush::SendAhead { peer, ahead });
        }
    }

    /// A send ended without its message: the call that asked hears why (a control message's
    /// failure is logged).
    fn fail_send(&mut self, reply: Option<ReplyToken>, failed: SendFailed) {
        match reply {
            Some(reply) => self
                .replies
                .answer(reply, Err(RpcError::failed(failed.to_string()))),
            None => tracing::warn!("could not send a control message: {failed}"),
        }
    }

    /// Our hybrid logical clock as last committed (a store that cannot say is an error: a
    /// clock started afresh would stamp messages before ones already sent).
    pub(crate) fn clock(&self) -> Result<HybridClock, StoreError> {
        let last = self.store.get::<Stamp>(StateKey::Meta(CLOCK_META))?;
        Ok(HybridClock::resume(last.unwrap_or_default()))
    }

    /// The stamp for a message we send; the caller commits it (under [`CLOCK_META`]) with the
    /// message.
    pub(crate) fn next_stamp(&self) -> Result<Stamp, StoreError> {
        Ok(self.clock()?.tick(now_ms()))
    }

    /// Our next sequence number in `conversation`, after the last one stored (a store that
    /// cannot say is an error: a number used again would overwrite an earlier message in a
    /// room's log).
    pub(crate) fn next_seq(&self, conversation: &ConversationId) -> Result<u64, StoreError> {
        let last = self.store.get::<u64>(StateKey::Seq(*conversation))?;
        Ok(palaver_protocol::delivery::next_own_seq_after(last))
    }

    /// What a lookup or who-is answered: keys learned (see [`Node::learn_keys`]) and presence
    /// noted.
    pub(crate) fn on_users(&mut self, users: Vec<UserRecord>, asked: Asked) {
        let users: Vec<UserRecord> = users
            .into_iter()
            .filter(|user| asked.covers(&user.name, &user.identity))
            .collect();
        for user in &users {
            self.presence.heard(user.presence.clone());
        }
        self.learn_keys(users.iter().map(|u| (&u.name, &u.identity)), &asked);
    }

    /// Starts a session with `key` from its prekey `bundle`, and stores it.
    fn start_session(&mut self, key: VerifyingKey, bundle: &PrekeyBundle) -> PipelineAnswer {
        let key = key.to_bytes();
        let existing = match self.store.sessions(key) {
            Ok(existing) => existing,
            Err(err) => return PipelineAnswer::Failed(err.to_string()),
        };
        let signing = self.identity.signing_key();
        let sessions = match pairwise::start_session(&mut OsRng, signing, bundle, existing) {
            Ok(sessions) => sessions,
            Err(err) => return PipelineAnswer::Failed(format!("bad prekey bundle: {err}")),
        };
        let mut batch = StateBatch::default();
        batch.put(StateKey::Session(key), &sessions);
        match self.store.apply(&batch) {
            Ok(()) => PipelineAnswer::SessionStarted,
            Err(err) => PipelineAnswer::Failed(err.to_string()),
        }
    }
}

/// A stand-in name for a key whose user name is not known (yet).
pub(crate) fn short_key(key: &VerifyingKey) -> String {
    format!("key:{}", &hex::encode(key.as_bytes())[..12])
}
