//! Receiving direct messages: a peer's delivery or held mail, opened through the Double Ratchet
//! (answering a session initiation with our prekeys), stored once, acknowledged once durable.
//! Which envelopes are opened and what each becomes are [`pairwise`]'s ([`pairwise::admit`],
//! [`pairwise::open`], [`pairwise::received`]); this loads what they need and stores the result.

use palaver_protocol::node::trust::Contact;

use super::*;

/// Why an envelope was not taken in.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReceiveError {
    #[error(transparent)]
    NotOpened(#[from] pairwise::NotOpened),
    #[error(transparent)]
    Open(#[from] pairwise::OpenError),
    /// Ours, not the message's: it may well be taken in later.
    #[error("cannot store it now: {0}")]
    Store(#[from] crate::store::StoreError),
}

impl ReceiveError {
    /// Whether trying the same envelope again would fail again (so held mail can be dropped).
    fn is_lasting(&self) -> bool {
        !matches!(self, ReceiveError::Store(_))
    }
}

impl Node {
    pub(crate) fn on_peer_request(
        &mut self,
        peer: PeerId,
        request: PeerRequest,
        channel: ResponseChannel<PeerResponse>,
    ) {
        match request {
            PeerRequest::Deliver(_) if let Err(busy) = self.commit.admit() => {
                let response = PeerResponse::Rejected {
                    reason: busy.to_string(),
                };
                let _ = self
                    .swarm
                    .behaviour_mut()
                    .peer
                    .send_response(channel, response);
            }
            PeerRequest::Deliver(envelope) => {
                let response = match self.receive_envelope(*envelope) {
                    Ok(id) => PeerResponse::Stored { id },
                    Err(err) => {
                        tracing::debug!("rejected a delivery from {peer}: {err}");
                        PeerResponse::Rejected {
                            reason: err.to_string(),
                        }
                    }
                };
                // Acknowledge only once what we stored is on disk; without an answer the
                // sender tries again.
                self.when_durable(AfterFlush::Acknowledge { channel, response });
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
    pub(crate) fn receive_envelope(
        &mut self,
        envelope: Envelope,
    ) -> Result<MessageId, ReceiveError> {
        let id = envelope.id();
        let stored = self.store.contains(&id)?;
        match pairwise::admit(envelope, stored)? {
            Some(direct) => self.receive_direct(id, direct),
            None => Ok(id),
        }
    }

    pub(super) fn receive_direct(
        &mut self,
        id: MessageId,
        direct: DirectMessage,
    ) -> Result<MessageId, ReceiveError> {
        let sender = direct.sender;
        let existing = self.store.sessions(sender.to_bytes())?;
        // Staged copies: ours change only once the message that changed them is stored (a
        // one-time prekey used up by a message we then failed to store would break that session).
        let mut clock = self.clock()?;
        let opened = pairwise::open(
            &mut OsRng,
            self.identity.signing_key(),
            existing,
            &self.state.session.prekeys().secrets,
            &mut clock,
            &direct,
            now_ms(),
        )?;
        // What opening it used up, written once the message is stored (see
        // `Store::record_received`); the session before the prekey.
        let mut consumed = StateBatch::default();
        consumed.put(StateKey::Session(sender.to_bytes()), &opened.sessions);
        let ahead = opened.sessions.send_ahead();
        if let Some(prekeys) = &opened.prekeys_after {
            crate::daemon::link::put_prekey_secrets(&mut consumed, prekeys);
        }
        let mut moved_on = StateBatch::default();
        moved_on.put(StateKey::Meta(CLOCK_META), &clock.current());
        // What the message brings with it.
        let mut brings = StateBatch::default();
        let conversation = self.conversation_with(&sender.to_bytes())?;
        let from = self.name_of_key(&sender);
        let label = from.clone().unwrap_or_else(|| short_key(&sender));
        let from_own_device =
            matches!(opened.payload, palaver_protocol::wire::Payload::Sent { .. })
                && palaver_protocol::node::devices::is_own_device(
                    self.own_devices().as_ref(),
                    &self.identity.public(),
                    &sender,
                );
        let mut new_contact = None;
        // Whether the sessions were written (only with a new message).
        let stored;
        let (entry, control, offer) = match pairwise::received(opened.payload, from_own_device) {
            pairwise::Received::Sent {
                to,
                to_key,
                text,
                sent_at_ms,
            } => {
                // Filed with `to`, as ours. A contact new to this device is pinned as our other
                // device knew it.
                let contact = match crate::daemon::trust::load_contact(&self.store, to.as_str())? {
                    Some(contact) => contact,
                    None => {
                        let contact = Contact::first(to_key.to_bytes());
                        brings.put(StateKey::Contact(to.as_str()), &contact);
                        // Kept even if the message is cut short: a key's name may be held
                        // already, without a contact (a device list names it).
                        moved_on.put(StateKey::Peer(to_key.to_bytes()), &to.to_string());
                        new_contact = Some(to.clone());
                        contact
                    }
                };
                let entry = HistoryEntry {
                    id,
                    conversation: ConversationId::Direct(contact.conversation),
                    label: to.to_string(),
                    from: self.name.to_string(),
                    sender: sender.to_bytes(),
                    text,
                    sent_at_ms,
                    stamp: opened.stamp,
                    seq: opened.seq,
                    status: Status::Sent,
                };
                stored = self
                    .store
                    .record_received(&entry, &brings, &consumed, &moved_on)?;
                (stored.then_some(entry), None, None)
            }
            pairwise::Received::Entry { text, offer, whole } => {
                if let Some(offer) = &offer {
                    let record = palaver_protocol::node::files::Incoming::offered(
                        offer.clone(),
                        sender,
                        None,
                    );
                    brings.put(StateKey::FileIn(id), &record);
                }
                let entry = HistoryEntry {
                    id,
                    conversation,
                    label: label.clone(),
                    from: label,
                    sender: sender.to_bytes(),
                    text,
                    sent_at_ms: opened.sent_at_ms,
                    stamp: opened.stamp,
                    seq: opened.seq,
                    status: Status::Received,
                };
                // Only a new line offers its file.
                stored = self
                    .store
                    .record_received(&entry, &brings, &consumed, &moved_on)?;
                let offer = offer.filter(|_| stored).map(|offer| (offer, whole));
                (stored.then_some(entry), None, offer)
            }
            pairwise::Received::Control(payload) => {
                brings.extend(consumed).extend(moved_on);
                stored = self.store.record_control(&id, &brings)?;
                (None, Some(*payload), None)
            }
        };
        if stored {
            self.note_send_ahead(sender.to_bytes(), ahead);
        }
        if let Some(prekeys) = opened.prekeys_after {
            self.state.session.prekeys_mut().secrets = prekeys;
        }
        if let Some(name) = new_contact {
            self.state.contacts_pinned(std::slice::from_ref(&name));
            self.refresh_devices(vec![name]);
        }
        // A stranger is asked about at the rendezvous, for display and replies.
        self.emit_message(&sender, entry.as_ref(), from.is_some());
        if let Some(payload) = control {
            self.on_control(sender, payload);
        }
        if let Some((offer, bytes)) = offer {
            self.file_offered(id, offer, sender, None, bytes);
        }
        Ok(id)
    }

    /// A control payload arrived over a pairwise session (receipts, room keys and membership).
    pub(super) fn on_control(
        &mut self,
        sender: VerifyingKey,
        payload: palaver_protocol::wire::Payload,
    ) {
        use palaver_protocol::wire::Payload;
        match payload {
            Payload::Receipt(ids) => {
                let from = peer_id_of(&sender);
                for id in ids {
                    self.delivery_input(DeliveryInput::Receipt { from, id });
                }
            }
            Payload::FileDeclined { file, reason } => self.file_declined(sender, file, reason),
            Payload::Text(_) | Payload::File(_) | Payload::FileWhole { .. } => {}
            room => self.on_room_payload(sender, room),
        }
    }

    /// Mail held for us: store each, flush, then settle (see [`mail`]).
    pub(crate) fn on_mail(&mut self, items: Vec<MailItem>, remaining: u32) {
        let mut batch = mail::MailBatch::default();
        for item in items {
            let envelope = item.envelope;
            let (id, sender) = (envelope.id(), *envelope.sender());
            let direct = matches!(envelope.body, Body::Direct(_));
            let taken = match self.receive_envelope(envelope) {
                Ok(id) => {
                    let text = direct && self.store.entry(&id).ok().flatten().is_some();
                    mail::Taken::Stored { text }
                }
                Err(err) if err.is_lasting() => {
                    tracing::warn!("dropping held mail {id}: {err}");
                    mail::Taken::Unreadable
                }
                Err(err) => {
                    tracing::error!("held mail {id} stays held: {err}");
                    mail::Taken::NotNow
                }
            };
            batch.taken(id, &sender, taken);
        }
        let more = remaining > 0;
        self.when_durable(AfterFlush::MailStored { batch, more });
    }

    /// Held mail is on disk: the mailbox may let it go, and its senders hear it arrived.
    pub(crate) fn on_mail_durable(
        &mut self,
        batch: mail::MailBatch,
        more: bool,
        flushed: super::super::durable::Flushed,
    ) {
        if let Err(err) = flushed {
            return tracing::error!("received mail is not on disk, not acknowledging it: {err}");
        }
        let (acks, receipts) = batch.settle();
        self.session_input(palaver_protocol::node::session::Input::MailStored { acks, more });
        for (key, receipt) in receipts {
            self.send_direct(Job::to_key(key, receipt));
        }
    }
}
