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
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use palaver_protocol::crypto::ratchet::Session;
use palaver_protocol::crypto::x3dh::PrekeyBundle;
use palaver_protocol::identity::peer_id_of;
use palaver_protocol::wire::{
    Body, Content, DirectMessage, MAX_TEXT_LEN, MailItem, PeerRequest, PeerResponse,
    RendezvousRequest, UserRecord,
};
use palaver_protocol::{Envelope, MessageId, UserName, VerifyingKey, codec};
use rand_core::OsRng;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::oneshot;

use super::{Internal, Node, Pending, now_ms};
use crate::rpc::RpcError;
use crate::store::{ConversationId, HistoryEntry, StateBatch, StateKey, Status};

pub(crate) type Reply = oneshot::Sender<Result<Value, RpcError>>;

/// A direct message waiting for what it needs (the peer's key, name or session) before it can be
/// encrypted and committed.
#[derive(Debug)]
pub(crate) struct Job {
    pub(crate) to_name: Option<UserName>,
    pub(crate) to_key: Option<VerifyingKey>,
    pub(crate) payload: palaver_protocol::wire::Payload,
    pub(crate) reply: Option<Reply>,
}

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
        }
    }

    pub(crate) fn to_key(key: VerifyingKey, payload: palaver_protocol::wire::Payload) -> Self {
        Self {
            to_name: None,
            to_key: Some(key),
            payload,
            reply: None,
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
    /// Deposited in the recipient's mailbox already.
    pub(crate) queued: bool,
    /// Shown in history (text), as opposed to a control message (receipt, key, membership).
    pub(crate) in_history: bool,
}

impl Node {
    /// Sends `job` once its recipient's key, name and session are known, asking the rendezvous
    /// for what is missing first.
    pub(crate) fn send_direct(&mut self, mut job: Job) {
        if job.to_key.is_none() {
            let Some(name) = job.to_name.clone() else {
                return job.fail("no recipient".into());
            };
            match self.contact_key(&name) {
                Some(key) => job.to_key = Some(key),
                None => {
                    let request = RendezvousRequest::Lookup {
                        names: vec![name.clone()],
                    };
                    if let Err(job) = self.request_or_fail(
                        request,
                        |job| Pending::Lookup {
                            names: vec![name],
                            then: Some(job),
                        },
                        job,
                    ) {
                        job.fail("not connected to the rendezvous, so the user cannot be looked up; try again shortly".into());
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
                    if let Err(job) =
                        self.request_or_fail(request, |job| Pending::WhoIs { then: Some(job) }, job)
                    {
                        job.fail("not connected to the rendezvous".into());
                    }
                    return;
                }
            }
        }
        let Some(name) = job.to_name.clone() else {
            return;
        };
        let session = match self.store.get::<Session>(StateKey::Session(key.to_bytes())) {
            Ok(Some(session)) => session,
            Ok(None) => {
                let request = RendezvousRequest::FetchPrekeys { name };
                let key = key.to_bytes();
                if let Err(job) =
                    self.request_or_fail(request, |job| Pending::Prekeys { key, then: job }, job)
                {
                    job.fail(
                        "not connected to the rendezvous, so no session can be opened yet".into(),
                    );
                }
                return;
            }
            Err(err) => return job.fail(err.to_string()),
        };
        self.seal_and_send(job, key, name, session);
    }

    /// Sends `request`, parking `job` in the pending entry; gives the job back when offline.
    fn request_or_fail(
        &mut self,
        request: RendezvousRequest,
        pending: impl FnOnce(Job) -> Pending,
        job: Job,
    ) -> Result<(), Box<Job>> {
        if !self.link.logged_in {
            return Err(Box::new(job));
        }
        let Some(peer) = self.link.peer else {
            return Err(Box::new(job));
        };
        let id = self
            .swarm
            .behaviour_mut()
            .rendezvous
            .send_request(&peer, request);
        self.pending.insert(id, pending(job));
        Ok(())
    }

    fn seal_and_send(&mut self, job: Job, key: VerifyingKey, name: UserName, mut session: Session) {
        let conversation = ConversationId::Direct(key.to_bytes());
        let lamport = self.next_lamport();
        let seq = self.next_seq(&conversation);
        let text = match &job.payload {
            palaver_protocol::wire::Payload::Text(text) => Some(text.clone()),
            _ => None,
        };
        let content = Content {
            sent_at_ms: now_ms(),
            lamport,
            seq,
            payload: job.payload,
        };
        let plaintext = match codec::encode(&content) {
            Ok(bytes) => bytes,
            Err(err) => return fail_reply(job.reply, err.to_string()),
        };
        let message = match session.encrypt(&mut OsRng, &plaintext) {
            Ok(message) => message,
            Err(err) => return fail_reply(job.reply, err.to_string()),
        };
        let body = Body::Direct(DirectMessage {
            sender: self.identity.public(),
            recipient: key,
            message,
        });
        let envelope = match Envelope::sign(body, self.identity.signing_key()) {
            Ok(envelope) => envelope,
            Err(err) => return fail_reply(job.reply, err.to_string()),
        };
        let frame = match envelope.to_bytes() {
            Ok(frame) => frame,
            Err(err) => return fail_reply(job.reply, format!("message too large: {err}")),
        };
        let id = envelope.id();
        let item = OutboxItem {
            id,
            to_key: key.to_bytes(),
            to_name: name.clone(),
            frame,
            queued: false,
            in_history: text.is_some(),
        };
        let mut batch = StateBatch::default();
        batch
            .put(StateKey::Session(key.to_bytes()), &session)
            .put(StateKey::Meta("lamport"), &lamport)
            .put(StateKey::Seq(conversation), &seq)
            .put(StateKey::Outbox(id), &item);
        let committed = match text {
            Some(text) => {
                let entry = HistoryEntry {
                    id,
                    conversation,
                    label: name.to_string(),
                    from: self.name.to_string(),
                    sender: self.identity.public().to_bytes(),
                    text,
                    sent_at_ms: content.sent_at_ms,
                    lamport,
                    seq,
                    status: Status::Sending,
                };
                self.store.record(&entry, &batch).map(|_| ())
            }
            None => self.store.apply(&batch),
        };
        if let Err(err) = committed.and_then(|()| self.store.flush_blocking()) {
            return fail_reply(job.reply, format!("could not store the message: {err}"));
        }
        if let Some(reply) = job.reply {
            let _ = reply.send(Ok(json!({"id": id.to_hex(), "status": "sending"})));
        }
        self.deliver(id);
    }

    pub(crate) fn next_lamport(&mut self) -> u64 {
        let lamport = self
            .store
            .get::<u64>(StateKey::Meta("lamport"))
            .ok()
            .flatten()
            .unwrap_or(0)
            + 1;
        let _ = self
            .store
            .apply(StateBatch::default().put(StateKey::Meta("lamport"), &lamport));
        lamport
    }

    fn observe_lamport(&self, remote: u64, batch: &mut StateBatch) -> u64 {
        let local = self
            .store
            .get::<u64>(StateKey::Meta("lamport"))
            .ok()
            .flatten()
            .unwrap_or(0);
        let lamport = local.max(remote);
        batch.put(StateKey::Meta("lamport"), &lamport);
        lamport
    }

    pub(crate) fn next_seq(&self, conversation: &ConversationId) -> u64 {
        self.store
            .get::<u64>(StateKey::Seq(*conversation))
            .ok()
            .flatten()
            .unwrap_or(0)
            + 1
    }

    pub(crate) fn contact_key(&self, name: &UserName) -> Option<VerifyingKey> {
        let bytes = self
            .store
            .get::<[u8; 32]>(StateKey::Contact(name.as_str()))
            .ok()
            .flatten()?;
        VerifyingKey::from_bytes(&bytes).ok()
    }

    pub(crate) fn on_users(
        &mut self,
        users: Vec<UserRecord>,
        then: Option<Job>,
        asked: Option<Vec<UserName>>,
    ) {
        let mut batch = StateBatch::default();
        let mut new_contact = false;
        for user in &users {
            self.release_unnamed(&user.identity.to_bytes(), Some(user.name.as_str()));
            new_contact |= self.contact_key(&user.name).is_none();
            batch.put(
                StateKey::Contact(user.name.as_str()),
                &user.identity.to_bytes(),
            );
            batch.put(
                StateKey::Peer(user.identity.to_bytes()),
                &user.name.to_string(),
            );
            self.presence
                .insert(user.name.to_string(), user.presence.clone());
        }
        if let Err(err) = self.store.apply(&batch) {
            tracing::warn!("store: {err}");
        }
        if new_contact {
            self.subscribe_presence();
        }
        if let Some(missing) = asked.and_then(|asked| {
            asked
                .into_iter()
                .find(|name| !users.iter().any(|u| &u.name == name))
        }) {
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
            return job.fail("the rendezvous returned prekeys for a different key".into());
        }
        match Session::initiate(&mut OsRng, self.identity.signing_key(), &bundle) {
            Ok(session) => {
                if let Err(err) = self
                    .store
                    .apply(StateBatch::default().put(StateKey::Session(key), &session))
                {
                    return job.fail(err.to_string());
                }
                self.send_direct(job);
            }
            Err(err) => job.fail(format!("bad prekey bundle: {err}")),
        }
    }

    // ---- delivery --------------------------------------------------------------------------

    fn outbox_item(&self, id: &MessageId) -> Option<OutboxItem> {
        self.store
            .get::<OutboxItem>(StateKey::Outbox(*id))
            .ok()
            .flatten()
    }

    /// One delivery attempt: direct if we can reach the peer, else discovery, else the mailbox.
    pub(crate) fn deliver(&mut self, id: MessageId) {
        let Some(item) = self.outbox_item(&id) else {
            return;
        };
        if self.in_flight.contains(&id) {
            return;
        }
        let Ok(key) = VerifyingKey::from_bytes(&item.to_key) else {
            return;
        };
        let peer = peer_id_of(&key);
        self.in_flight.insert(id);
        if self.swarm.is_connected(&peer) {
            self.send_deliver(peer, &item);
        } else {
            self.awaiting_connection.entry(peer).or_default().push(id);
            if !self.dial_known(peer) {
                if self.link.logged_in {
                    self.awaiting_discovery.entry(peer).or_default().push(id);
                    self.discover(peer);
                } else {
                    self.awaiting_connection
                        .entry(peer)
                        .or_default()
                        .retain(|i| i != &id);
                    self.in_flight.remove(&id);
                }
            }
        }
    }

    fn send_deliver(&mut self, peer: PeerId, item: &OutboxItem) {
        match Envelope::from_bytes(&item.frame) {
            Ok(envelope) => {
                let request = self
                    .swarm
                    .behaviour_mut()
                    .peer
                    .send_request(&peer, PeerRequest::Deliver(Box::new(envelope)));
                self.delivering.insert(request, item.id);
                if item.in_history {
                    self.set_status(&item.id, Status::Sent);
                }
            }
            Err(err) => tracing::error!("outbox item {} is unreadable: {err}", item.id),
        }
    }

    /// Dials `peer` at addresses learned earlier; false when there are none.
    fn dial_known(&mut self, peer: PeerId) -> bool {
        let addrs = self.known_addrs.get(&peer).cloned().unwrap_or_default();
        if addrs.is_empty() {
            return false;
        }
        let opts = DialOpts::peer_id(peer)
            .addresses(addrs)
            .condition(PeerCondition::DisconnectedAndNotDialing)
            .build();
        if let Err(err) = self.swarm.dial(opts) {
            tracing::debug!("dial {peer}: {err}");
        }
        true
    }

    pub(crate) fn on_discovered(&mut self, peer: PeerId, addrs: Vec<libp2p::Multiaddr>) {
        if peer == *self.swarm.local_peer_id() {
            return;
        }
        for addr in &addrs {
            self.swarm.add_peer_address(peer, addr.clone());
        }
        self.known_addrs.insert(peer, addrs);
        let waiting = self.awaiting_discovery.remove(&peer).is_some();
        if (waiting || self.wanted_peers.contains(&peer)) && !self.swarm.is_connected(&peer) {
            self.dial_known(peer);
        }
    }

    pub(crate) fn on_discovery_failed(&mut self, peer: PeerId) {
        if let Some(ids) = self.awaiting_discovery.remove(&peer) {
            self.awaiting_connection.remove(&peer);
            for id in ids {
                self.in_flight.remove(&id);
                self.deposit_in_mailbox(id);
            }
        }
    }

    pub(crate) fn on_peer_connected(&mut self, peer: PeerId) {
        self.emit_connection_change(peer);
        if let Some(ids) = self.awaiting_connection.remove(&peer) {
            self.awaiting_discovery.remove(&peer);
            for id in ids {
                if let Some(item) = self.outbox_item(&id) {
                    self.send_deliver(peer, &item);
                } else {
                    self.in_flight.remove(&id);
                }
            }
        }
        self.retry_outbox_for_peer(peer);
        self.on_room_peer_connected(peer);
    }

    pub(crate) fn on_dial_failed(&mut self, peer: PeerId) {
        if self.swarm.is_connected(&peer) {
            return;
        }
        self.awaiting_discovery.remove(&peer);
        for id in self.awaiting_connection.remove(&peer).unwrap_or_default() {
            self.in_flight.remove(&id);
            self.deposit_in_mailbox(id);
        }
    }

    pub(crate) fn on_peer_response(&mut self, request: OutboundRequestId, response: PeerResponse) {
        if let Some(id) = self.delivering.remove(&request) {
            self.in_flight.remove(&id);
            match response {
                PeerResponse::Stored { id: stored } if stored == id => self.on_delivered(id),
                PeerResponse::Rejected { reason } => {
                    tracing::warn!("peer rejected {id}: {reason}");
                    self.deposit_in_mailbox(id);
                }
                other => tracing::debug!("unexpected answer to a delivery: {other:?}"),
            }
        } else {
            self.on_gap_fill_response(request, response);
        }
    }

    pub(crate) fn on_peer_failure(&mut self, request: OutboundRequestId) {
        if let Some(id) = self.delivering.remove(&request) {
            self.in_flight.remove(&id);
            self.deposit_in_mailbox(id);
        }
    }

    /// The recipient has it durably: delivered, and out of the outbox.
    pub(crate) fn on_delivered(&mut self, id: MessageId) {
        let Some(item) = self.outbox_item(&id) else {
            return;
        };
        if let Err(err) = self
            .store
            .apply(StateBatch::default().remove(StateKey::Outbox(id)))
        {
            tracing::warn!("store: {err}");
        }
        if item.in_history {
            self.set_status(&id, Status::Delivered);
        }
    }

    pub(crate) fn set_status(&mut self, id: &MessageId, status: Status) {
        match self.store.set_status(id, status) {
            Ok(Some(entry)) => self.emit(json!({
                "type": "delivery",
                "id": id.to_hex(),
                "conversation": entry.label,
                "status": status.as_str(),
            })),
            Ok(None) => {}
            Err(err) => tracing::warn!("store: {err}"),
        }
    }

    fn deposit_in_mailbox(&mut self, id: MessageId) {
        let Some(item) = self.outbox_item(&id) else {
            return;
        };
        if item.queued || !self.link.logged_in {
            return;
        }
        let Ok(envelope) = Envelope::from_bytes(&item.frame) else {
            return;
        };
        let request = RendezvousRequest::Deposit {
            to: item.to_name.clone(),
            envelope: Box::new(envelope),
        };
        self.rendezvous_request(request, Pending::Deposit { id });
    }

    pub(crate) fn on_deposited(&mut self, id: MessageId) {
        let Some(mut item) = self.outbox_item(&id) else {
            return;
        };
        item.queued = true;
        if let Err(err) = self
            .store
            .apply(StateBatch::default().put(StateKey::Outbox(id), &item))
        {
            tracing::warn!("store: {err}");
        }
        if item.in_history {
            self.set_status(&id, Status::Queued);
        }
    }

    pub(crate) fn on_deposit_refused(&mut self, id: MessageId, reason: String) {
        tracing::warn!("the mailbox refused {id}: {reason}; it stays in the outbox");
    }

    pub(crate) fn outbox_len(&self) -> usize {
        self.outbox().len()
    }

    fn outbox(&self) -> Vec<OutboxItem> {
        self.store
            .scan::<OutboxItem>(StateKey::Outbox(MessageId([0; 32])))
            .unwrap_or_default()
    }

    pub(crate) fn retry_all_outbox(&mut self) {
        for item in self.outbox() {
            self.deliver(item.id);
        }
    }

    pub(crate) fn retry_outbox_for_name(&mut self, name: &str) {
        for item in self
            .outbox()
            .into_iter()
            .filter(|item| item.to_name.as_str() == name)
        {
            self.deliver(item.id);
        }
    }

    fn retry_outbox_for_peer(&mut self, peer: PeerId) {
        for item in self.outbox() {
            let same =
                VerifyingKey::from_bytes(&item.to_key).is_ok_and(|key| peer_id_of(&key) == peer);
            if same && !self.in_flight.contains(&item.id) {
                self.deliver(item.id);
            }
        }
    }

    /// Every few seconds: try again what is neither in flight nor parked in a mailbox.
    pub(crate) fn on_retry_tick(&mut self) {
        if !self.link.connected {
            self.dial_rendezvous();
        }
        for item in self.outbox() {
            if !item.queued && !self.in_flight.contains(&item.id) {
                self.deliver(item.id);
            }
        }
        self.rooms_tick();
    }

    // ---- receiving -------------------------------------------------------------------------

    pub(crate) fn on_peer_request(
        &mut self,
        peer: PeerId,
        request: PeerRequest,
        channel: ResponseChannel<PeerResponse>,
    ) {
        match request {
            PeerRequest::Deliver(envelope) => {
                let response = match self.receive_envelope(*envelope) {
                    Ok(id) => PeerResponse::Stored { id },
                    Err(reason) => {
                        tracing::debug!("rejected a delivery from {peer}: {reason}");
                        PeerResponse::Rejected { reason }
                    }
                };
                // Acknowledge only once what we stored is on disk.
                let store = self.store.clone();
                let internal = self.internal_tx.clone();
                tokio::spawn(async move {
                    if store.flush().await.is_ok() {
                        let _ = internal.send(Internal::Flushed { channel, response }).await;
                    }
                });
            }
            PeerRequest::GapFill(request) => {
                let response = self.answer_gap_fill(peer, request);
                let _ = self
                    .swarm
                    .behaviour_mut()
                    .peer
                    .send_response(channel, response);
            }
        }
    }

    /// Takes in an envelope from any path; `Ok(id)` once it is stored (or was already).
    pub(crate) fn receive_envelope(&mut self, envelope: Envelope) -> Result<MessageId, String> {
        envelope.verify().map_err(|e| e.to_string())?;
        let id = envelope.id();
        if self.store.contains(&id).map_err(|e| e.to_string())? {
            return Ok(id);
        }
        match envelope.body {
            Body::Direct(direct) => self.receive_direct(id, direct),
            Body::Room(_) => Err("room messages travel by gossip and gap fill".into()),
        }
    }

    fn receive_direct(
        &mut self,
        id: MessageId,
        direct: DirectMessage,
    ) -> Result<MessageId, String> {
        if direct.recipient != self.identity.public() {
            return Err("not addressed to me".into());
        }
        let sender = direct.sender;
        let mut batch = StateBatch::default();
        let existing = self
            .store
            .get::<Session>(StateKey::Session(sender.to_bytes()))
            .map_err(|e| e.to_string())?;
        let decrypted = existing.and_then(|mut session| {
            session
                .decrypt(&direct.message)
                .ok()
                .map(|pt| (session, pt))
        });
        let (session, plaintext) = match decrypted {
            Some(found) => found,
            // No session, or the sender started a new one: answer its initiation.
            None if direct.message.init.is_some() => {
                // Fails without consuming anything; on success the one-time prekey is gone, and
                // the prekeys are committed with the message below.
                let (session, plaintext) = Session::respond(
                    self.identity.signing_key(),
                    &mut self.prekeys,
                    &sender,
                    &direct.message,
                )
                .map_err(|e| format!("cannot open the session: {e}"))?;
                batch.put(StateKey::Meta(super::PREKEYS_META), &self.prekeys);
                (session, plaintext)
            }
            None => return Err("cannot decrypt (no session, or a replay)".into()),
        };
        batch.put(StateKey::Session(sender.to_bytes()), &session);
        let content: Content =
            codec::decode(&plaintext).map_err(|e| format!("bad content: {e}"))?;
        let lamport = self.observe_lamport(content.lamport, &mut batch);
        let _ = lamport;
        let conversation = ConversationId::Direct(sender.to_bytes());
        let from = self.name_of_key(&sender);
        if from.is_none() {
            // A stranger: ask the rendezvous who it is, for display and replies.
            self.rendezvous_request(
                RendezvousRequest::WhoIs { keys: vec![sender] },
                Pending::WhoIs { then: None },
            );
        }
        let label = from.clone().unwrap_or_else(|| short_key(&sender));
        use palaver_protocol::wire::Payload;
        match content.payload {
            Payload::Text(text) => {
                if text.len() > MAX_TEXT_LEN {
                    return Err("text too long".into());
                }
                let entry = HistoryEntry {
                    id,
                    conversation,
                    label: label.clone(),
                    from: label,
                    sender: sender.to_bytes(),
                    text,
                    sent_at_ms: content.sent_at_ms,
                    lamport: content.lamport,
                    seq: content.seq,
                    status: Status::Received,
                };
                if self
                    .store
                    .record(&entry, &batch)
                    .map_err(|e| e.to_string())?
                {
                    self.emit_message(&entry, from.is_some());
                }
            }
            payload => {
                self.store
                    .record_control(&id, &batch)
                    .map_err(|e| e.to_string())?;
                self.on_control(sender, payload);
            }
        }
        Ok(id)
    }

    /// A control payload arrived over a pairwise session (receipts, room keys and membership).
    fn on_control(&mut self, sender: VerifyingKey, payload: palaver_protocol::wire::Payload) {
        use palaver_protocol::wire::Payload;
        match payload {
            Payload::Receipt(ids) => {
                for id in ids {
                    self.on_delivered(id);
                }
            }
            Payload::RoomInvite(invite) => self.on_room_invite(sender, invite),
            Payload::SenderKey { room, distribution } => {
                self.on_sender_key(sender, room, distribution)
            }
            Payload::Membership(update) => self.on_membership(sender, update),
            Payload::Leave { room } => self.on_member_left(sender, room),
            Payload::Text(_) => {}
        }
    }

    /// Mail held for us: store each, flush, acknowledge, then send receipts to their senders.
    pub(crate) fn on_mail(&mut self, items: Vec<MailItem>, remaining: u32) {
        let mut acks = Vec::new();
        let mut receipts: std::collections::HashMap<[u8; 32], Vec<MessageId>> = Default::default();
        for item in items {
            let envelope = item.envelope;
            let sender = *envelope.sender();
            let is_text_candidate = matches!(envelope.body, Body::Direct(_));
            match self.receive_envelope(envelope.clone()) {
                Ok(id) => {
                    acks.push(id);
                    if is_text_candidate && self.store.entry(&id).ok().flatten().is_some() {
                        receipts.entry(sender.to_bytes()).or_default().push(id);
                    }
                }
                Err(reason) => {
                    // Undecryptable mail will not become decryptable by waiting: drop it.
                    tracing::warn!("dropping held mail {}: {reason}", envelope.id());
                    acks.push(envelope.id());
                }
            }
        }
        if let Err(err) = self.store.flush_blocking() {
            tracing::error!("cannot flush received mail, not acknowledging it: {err}");
            return;
        }
        if !acks.is_empty() {
            self.rendezvous_request(RendezvousRequest::AckMail { ids: acks }, Pending::AckMail);
        }
        for (sender, ids) in receipts {
            if let Ok(key) = VerifyingKey::from_bytes(&sender) {
                self.send_direct(Job::to_key(
                    key,
                    palaver_protocol::wire::Payload::Receipt(ids),
                ));
            }
        }
        if remaining > 0 {
            self.fetch_mail();
        }
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

pub(crate) fn message_event(entry: &HistoryEntry) -> Value {
    let mut event = entry.to_json();
    event["type"] = json!("message");
    event
}
