//! Carrying out the delivery planner's decisions ([`palaver_protocol::node::direct`]): it says
//! which path each sealed message takes and when; this sends over the swarm, deposits through the
//! rendezvous session, and writes statuses and the outbox to the store.

use palaver_protocol::delivery::DeliveryStatus;
use palaver_protocol::node::direct::{Answer, Input, Output};

use super::*;

impl Node {
    /// Hands the planner an input at the current time, then carries out what it asks.
    pub(crate) fn delivery_input(&mut self, input: Input<OutboundRequestId>) {
        self.state.delivery.handle(input, now_ms(), &mut OsRng);
        self.drive_delivery();
    }

    /// Carries out the planner's outputs; the store changes they ask for are written at the end.
    pub(crate) fn drive_delivery(&mut self) {
        let mut batch = StateBatch::default();
        let mut save_outbox = false;
        while let Some(output) = self.state.delivery.poll_output() {
            match output {
                Output::Deliver { peer, id } => self.send_deliver(peer, id),
                Output::Dial { peer, addrs } => {
                    self.reach(crate::daemon::reach::ReachInput::DialPeer { peer, addrs })
                }
                Output::Discover(peer) => {
                    if !self.discover(peer) {
                        let input = Input::DiscoveryFailed(peer);
                        self.state.delivery.handle(input, now_ms(), &mut OsRng);
                    }
                }
                Output::Deposit { id, to } => self.deposit_in_mailbox(id, to),
                Output::DeliveryEnded(peer) => {
                    self.reach(crate::daemon::reach::ReachInput::DeliveryEnded(peer))
                }
                Output::Status {
                    id,
                    status,
                    in_history,
                } => {
                    if let DeliveryStatus::Failed { reason } = &status {
                        tracing::warn!("giving up on {id}: {reason}");
                    }
                    if in_history {
                        self.set_status(&id, history_status(status));
                    } else {
                        self.copy_status(&id, &status);
                    }
                }
                Output::Forget(id) => {
                    // The outbox item first: a crash between leaves only a copy's note that
                    // nothing reads again (the item left behind would send the copy again
                    // without it).
                    batch
                        .remove(StateKey::Outbox(id))
                        .remove(StateKey::CopyOf(id));
                }
                Output::SaveOutbox => save_outbox = true,
            }
        }
        if save_outbox {
            batch.put(StateKey::Meta(OUTBOX_META), self.state.delivery.outbox());
        }
        // In order, not atomically: the stored outbox and its items need not agree, since the
        // next start reconciles them (`Delivery::new`), and each acknowledgement paid a sled
        // batch otherwise.
        if !batch.is_empty()
            && let Err(err) = self.store.write_in_order(&batch)
        {
            tracing::warn!("store: {err}");
        }
    }

    /// The stored envelope of outbox item `id`; the planner hears if it cannot be had (gone or
    /// undecodable: lost; the read failed: this attempt failed). Its signature is not checked
    /// again (we made it): one the disk damaged is the recipient's to refuse, like any other.
    fn outbox_envelope(&mut self, id: MessageId) -> Option<Envelope> {
        let lost = match self.store.get::<OutboxItem>(StateKey::Outbox(id)) {
            Ok(Some(item)) => match Envelope::from_own_bytes(&item.frame) {
                Ok(envelope) => return Some(envelope),
                Err(err) => {
                    tracing::error!("outbox item {id} is unreadable: {err}");
                    true
                }
            },
            Ok(None) => {
                tracing::error!("outbox item {id} is gone from the store");
                true
            }
            Err(err) => {
                tracing::error!("cannot read outbox item {id} now: {err}");
                false
            }
        };
        // Inside `drive_delivery`'s loop, which carries out what this leads to.
        let input = Input::Unsendable { id, lost };
        self.state.delivery.handle(input, now_ms(), &mut OsRng);
        None
    }

    fn send_deliver(&mut self, peer: PeerId, id: MessageId) {
        let Some(envelope) = self.outbox_envelope(id) else {
            return;
        };
        let request = self
            .swarm
            .behaviour_mut()
            .peer
            .send_request(&peer, PeerRequest::Deliver(Box::new(envelope)));
        let input = Input::DeliverySent { id, request };
        self.state.delivery.handle(input, now_ms(), &mut OsRng);
        self.reach(crate::daemon::reach::ReachInput::DeliveryStarted(peer));
    }

    fn deposit_in_mailbox(&mut self, id: MessageId, to: UserName) {
        if let Some(envelope) = self.outbox_envelope(id) {
            let envelope = Box::new(envelope);
            let request = RendezvousRequest::Deposit { to, envelope };
            self.rendezvous_request(request, Pending::Deposit { id });
        }
    }

    pub(crate) fn on_discovered(&mut self, peer: PeerId, addrs: Vec<libp2p::Multiaddr>) {
        if peer == *self.swarm.local_peer_id() {
            return;
        }
        for addr in &addrs {
            self.swarm.add_peer_address(peer, addr.clone());
        }
        self.delivery_input(Input::Discovered { peer, addrs });
    }

    pub(crate) fn on_peer_connected(&mut self, peer: PeerId) {
        self.emit_connection_change(peer);
        self.delivery_input(Input::Connected(peer));
        self.on_room_peer_connected(peer);
    }

    pub(crate) fn on_peer_response(&mut self, request: OutboundRequestId, response: PeerResponse) {
        if !self.state.delivery.is_delivery(&request) {
            return self.on_gap_fill_response(request, response);
        }
        let answer = match response {
            PeerResponse::Stored { id } => Answer::Stored(id),
            PeerResponse::Rejected { reason } => {
                tracing::warn!("a peer rejected our delivery: {reason}");
                Answer::Rejected
            }
            other => {
                tracing::debug!("unexpected answer to a delivery: {other:?}");
                Answer::Rejected
            }
        };
        self.delivery_input(Input::DeliveryAnswered { request, answer });
    }

    pub(crate) fn on_peer_failure(&mut self, request: OutboundRequestId) {
        if self.on_gap_fill_failure(request) {
            return;
        }
        let answer = Answer::Failed;
        self.delivery_input(Input::DeliveryAnswered { request, answer });
    }

    pub(crate) fn on_deposit_refused(&mut self, id: MessageId, reason: String) {
        tracing::warn!("the mailbox refused {id}: {reason}; it stays in the outbox");
        self.delivery_input(Input::DepositFailed(id));
    }

    /// A copy for another device reached `status`: it is noted by device for the message it
    /// copies, which is delivered once one of the recipient's devices has it.
    fn copy_status(&mut self, id: &MessageId, status: &DeliveryStatus) {
        let copy = self
            .store
            .get::<(MessageId, CopyFor, [u8; 32])>(StateKey::CopyOf(*id));
        let Ok(Some((of, for_, device))) = copy else {
            return;
        };
        let shown = history_status(*status);
        let noted = self
            .store
            .get::<Vec<CopyStatus>>(StateKey::CopyStatuses(of));
        let mut noted = noted.ok().flatten().unwrap_or_default();
        match noted.iter_mut().find(|c| c.device == device) {
            // Forwards only, as a message's own status.
            Some(c) if c.status.rank() < shown.rank() => c.status = shown,
            Some(_) => {}
            None => noted.push(CopyStatus {
                device,
                copy: for_,
                status: shown,
            }),
        }
        let mut batch = StateBatch::default();
        batch.put(StateKey::CopyStatuses(of), &noted);
        if let Err(err) = self.store.apply(&batch) {
            tracing::warn!("store: {err}");
        }
        if palaver_protocol::node::devices::delivers_message(for_, status) {
            self.set_status(&of, Status::Delivered);
        }
    }

    pub(crate) fn set_status(&mut self, id: &MessageId, status: Status) {
        match self.store.set_status(id, status) {
            Ok(Some(entry)) => self.emit(crate::rpc::Event::Delivery {
                id: id.to_hex(),
                conversation: entry.label,
                status: status.as_str(),
            }),
            Ok(None) => {}
            Err(err) => tracing::warn!("store: {err}"),
        }
    }

    /// Every message the store holds for delivery, with its route (at start, for the planner).
    pub(crate) fn stored_routes(
        store: &crate::store::Store,
    ) -> Result<Vec<(MessageId, Route)>, crate::store::StoreError> {
        let items = store.scan::<OutboxItem>(StateKey::Outbox(MessageId([0; 32])))?;
        Ok(items
            .into_iter()
            .filter_map(|item| match item.route() {
                Some(route) => Some((item.id, route)),
                None => {
                    tracing::error!("outbox item {} names no valid key", item.id);
                    None
                }
            })
            .collect())
    }
}

/// How history shows a delivery status.
fn history_status(status: DeliveryStatus) -> Status {
    match status {
        DeliveryStatus::Sending => Status::Sending,
        DeliveryStatus::Sent => Status::Sent,
        DeliveryStatus::Queued => Status::Queued,
        DeliveryStatus::Delivered => Status::Delivered,
        DeliveryStatus::Failed { .. } => Status::Failed,
    }
}

/// How one copy of one of our messages fared, for `history --json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct CopyStatus {
    pub(crate) device: [u8; 32],
    pub(crate) copy: CopyFor,
    pub(crate) status: Status,
}

impl CopyStatus {
    pub(crate) fn to_json(&self) -> serde_json::Value {
        json!({
            "device": hex::encode(self.device),
            "for": match self.copy {
                CopyFor::Recipient => "recipient",
                CopyFor::Me => "me",
            },
            "status": self.status.as_str(),
        })
    }
}
