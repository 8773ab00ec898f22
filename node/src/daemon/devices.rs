//! Linked devices, driven by [`palaver_protocol::node::devices`]: device lists fetched and
//! pinned (ours and our contacts'), a new device linked (`palaver device link`), one revoked.
//!
//! A pinned device list makes each of its keys stand for the account's name (`StateKey::Peer`),
//! so a message from any of a contact's devices is filed in the one conversation with that
//! contact, and sends to a device key find the name its prekeys and mailbox are under.

use palaver_protocol::crypto::link::{LinkCode, LinkSecret};
use palaver_protocol::identity::devices::{DeviceList, DevicePin, SignedDeviceList};
use palaver_protocol::node::asks::{LinkAnswer, LinkStep};
use palaver_protocol::node::devices::{
    self, Learned, LinkGrant, LinkOutput, LinkedContact, LinkedConversation, LinkedLine, Linker,
};
use palaver_protocol::node::rooms::Room;
use palaver_protocol::wire::RendezvousRequest;
use palaver_protocol::wire::rendezvous::{AccountDevices, MAX_BATCH, SealedLink};
use palaver_protocol::{UserName, VerifyingKey};
use rand_core::OsRng;
use serde_json::{Value, json};

use super::link::Pending;
use super::{Node, now_ms};
use crate::rpc::{Reply, RpcError};
use crate::store::{ConversationId, StateBatch, StateKey, Status, Store};

/// The device list pinned for `name` (our own under our name), if any.
pub(crate) fn pinned_devices(store: &Store, name: &str) -> Option<DevicePin> {
    store
        .get::<DevicePin>(StateKey::Devices(name))
        .inspect_err(|err| tracing::warn!("store: {err}"))
        .ok()
        .flatten()
}

/// `name`'s devices as `device list` shows them (`account`: its account key, the only device
/// of an account with no list pinned; `me`: this device).
pub(crate) fn device_list(
    store: &Store,
    name: &UserName,
    account: &VerifyingKey,
    me: &VerifyingKey,
) -> Value {
    let list = pinned_devices(store, name.as_str())
        .map(|pin| pin.list().clone())
        .unwrap_or_else(|| DeviceList::single(*account));
    let devices = list
        .devices
        .iter()
        .map(|d| {
            json!({
                "device": hex::encode(d.key.as_bytes()),
                "label": d.label,
                "added_at": d.added_at_ms,
                "account_key": d.key == list.account,
                "this_device": d.key == *me,
                "fingerprint": palaver_protocol::Fingerprint::of(&d.key).to_string(),
            })
        })
        .collect();
    Value::Array(devices)
}

impl Node {
    /// `device list [NAME]`.
    pub(crate) fn device_list_call(&self, name: Option<UserName>) -> Result<Value, RpcError> {
        let name = name.unwrap_or_else(|| self.name.clone());
        let account = self.account_of(&name).ok_or_else(|| {
            RpcError::failed(format!("{name} is not a contact: no device list is pinned"))
        })?;
        let me = self.identity.public();
        Ok(device_list(&self.store, &name, &account, &me))
    }

    /// Our account's device list, if it has one (a linked device, or one that linked another).
    pub(crate) fn own_devices(&self) -> Option<DeviceList> {
        self.own_list.clone()
    }

    /// `name`'s device list, if one is pinned.
    pub(crate) fn devices_of(&self, name: &UserName) -> Option<DeviceList> {
        pinned_devices(&self.store, name.as_str()).map(|pin| pin.list().clone())
    }

    /// Our account key: our own key on the device that holds it; a linked device's list names it.
    pub(crate) fn account_key(&self) -> VerifyingKey {
        self.own_list
            .as_ref()
            .map_or(self.identity.public(), |list| list.account)
    }

    /// The key `name`'s account is pinned under (our own for our name).
    fn account_of(&self, name: &UserName) -> Option<VerifyingKey> {
        if *name == self.name {
            Some(self.account_key())
        } else {
            self.contact_key(name)
        }
    }

    /// Asks the rendezvous for these users' device lists.
    pub(crate) fn refresh_devices(&mut self, names: Vec<UserName>) {
        for names in names.chunks(MAX_BATCH) {
            self.fetch_devices(names.to_vec(), Vec::new(), Vec::new(), None);
        }
    }

    /// Device lists fetched for `names`; with `claims`, for senders the rendezvous named as
    /// these users' devices: once the lists are in, the senders are named (`waiting`) and the
    /// send `call` goes on.
    pub(crate) fn fetch_devices(
        &mut self,
        names: Vec<UserName>,
        claims: Vec<(UserName, VerifyingKey)>,
        waiting: Vec<[u8; 32]>,
        call: Option<palaver_protocol::node::direct::pipeline::CallId>,
    ) {
        let request = RendezvousRequest::FetchDevices { names };
        let pending = Pending::Devices {
            claims,
            waiting,
            call,
        };
        self.rendezvous_request(request, pending);
    }

    /// After a login: our own list and every contact's, which may have changed meanwhile.
    pub(crate) fn refresh_all_devices(&mut self) {
        let mut names = self.contact_names();
        names.push(self.name.clone());
        self.refresh_devices(names);
    }

    /// Takes in device lists from the rendezvous: each checked against the account key pinned
    /// for its name, and kept only if newer and naming no key that stands for someone else
    /// ([`devices::learn`]).
    /// A user the rendezvous named for a `waiting` key who is no contact yet (`claims`) is
    /// pinned only if their list bears it out ([`devices::claim_holds`]); a contact's pinned key
    /// is never changed here.
    pub(crate) fn on_devices(
        &mut self,
        lists: Vec<AccountDevices>,
        claims: &[(UserName, VerifyingKey)],
        waiting: &[[u8; 32]],
    ) {
        for AccountDevices { name, list } in lists {
            let claimed = claims.iter().find(|(n, _)| *n == name).map(|(_, key)| *key);
            if let Some(claimed) = claimed
                && name != self.name
                && self.contact_key(&name).is_none()
                && devices::claim_holds(&claimed, &list, waiting)
            {
                let asked = super::trust::Asked::Names(vec![name.clone()]);
                self.learn_keys([(&name, &claimed)], &asked);
            }
            self.take_list(&name, &list);
        }
    }

    fn take_list(&mut self, name: &UserName, list: &SignedDeviceList) {
        let Some(account) = self.account_of(name) else {
            return;
        };
        // A pin that cannot be read is not taken for "none": an older list would be let in.
        let pinned = match self
            .store
            .get::<DevicePin>(StateKey::Devices(name.as_str()))
        {
            Ok(pinned) => pinned,
            Err(err) => return tracing::warn!(%name, "cannot read the pinned device list: {err}"),
        };
        let (ours, me) = (*name == self.name, self.identity.public());
        let store = &self.store;
        let owner_of = |key: &VerifyingKey| {
            let owner = store.get::<String>(StateKey::Peer(key.to_bytes()));
            owner.ok().flatten().and_then(|n| UserName::new(n).ok())
        };
        match devices::learn(name, &account, ours, &me, pinned.clone(), list, owner_of) {
            // Merged again each time: a merge a crash cut short is finished later.
            Learned::Same => {
                let keys: Vec<VerifyingKey> = pinned
                    .iter()
                    .flat_map(|pin| pin.list().others(&account).map(|d| d.key))
                    .filter(|key| *key != me)
                    .collect();
                self.merge_device_conversations(name, &keys);
            }
            Learned::Refused(error) => {
                tracing::warn!(%name, "refused a device list from the rendezvous: {error}")
            }
            Learned::Updated {
                pin,
                named,
                dropped,
                this_device_removed,
            } => self.pin_devices(name, *pin, &named, &dropped, this_device_removed),
        }
    }

    /// What these devices of `name`'s wrote before we knew whose they were, filed under their
    /// own keys, joins the conversation with `name` (a no-op for a device with none).
    fn merge_device_conversations(&mut self, name: &UserName, keys: &[VerifyingKey]) {
        if keys.is_empty() || *name == self.name {
            return;
        }
        let contact = super::trust::load_contact(&self.store, name.as_str());
        let conversation = match contact {
            Ok(Some(contact)) => ConversationId::Direct(contact.conversation),
            Ok(None) => return,
            Err(err) => return tracing::warn!("store: {err}"),
        };
        for key in keys {
            let own = ConversationId::Direct(key.to_bytes());
            let stand_in = super::direct::short_key(key);
            let merged =
                (self.store).merge_conversation(&own, &conversation, &stand_in, name.as_str());
            if let Err(err) = merged {
                tracing::warn!("store: {err}");
            }
        }
    }

    fn pin_devices(
        &mut self,
        name: &UserName,
        pin: DevicePin,
        named: &[VerifyingKey],
        dropped: &[VerifyingKey],
        this_device_removed: bool,
    ) {
        // The rooms first: a crash before the pin is written learns the list, and rotates, again.
        // A room change that could not be written is tried again by the rooms (their sends
        // wait for it); the pin waits too, so that a crash meanwhile rotates again after the
        // restart. All the rest — the sessions dropped, a removed device stopped — goes now.
        (self.state.rooms).devices_changed(pin.list(), now_ms(), &mut OsRng);
        let mut batch = StateBatch::default();
        match self.drive_rooms() {
            Ok(()) => {
                batch.put(StateKey::Devices(name.as_str()), &pin);
            }
            Err(err) => tracing::warn!(
                %name,
                "device list taken but not pinned yet: a room could not be stored ({err})"
            ),
        }
        for key in named {
            batch.put(StateKey::Peer(key.to_bytes()), &name.to_string());
        }
        for key in dropped {
            // What a removed device could read of ours ends with it.
            batch
                .remove(StateKey::Peer(key.to_bytes()))
                .remove(StateKey::Session(key.to_bytes()));
        }
        if let Err(err) = self.store.apply(&batch) {
            return tracing::warn!("store: {err}");
        }
        if *name == self.name {
            self.own_list = Some(pin.list().clone());
        }
        self.merge_device_conversations(name, named);
        for key in named {
            self.release_unnamed(&key.to_bytes(), Some(name.as_str()));
        }
        let devices = pin.list().devices.len();
        tracing::info!(%name, devices, version = pin.list().version, "device list pinned");
        self.emit(crate::rpc::Event::Devices {
            name: name.to_string(),
            devices,
        });
        if this_device_removed {
            self.fatal = Some(format!(
                "this device was removed from {name}'s account; to link it again, run `palaver \
                 device link` on the device holding the account key, then `palaver --home NEW_DIR \
                 init --link CODE` here"
            ));
            self.stopping = true;
        }
    }

    // ---- linking a new device ----

    /// Only the device holding the account key `does` what is asked.
    fn holding_account_key(&self, does: &str) -> Result<(), RpcError> {
        if self.account_key() != self.identity.public() {
            return Err(RpcError::failed(format!(
                "only the device holding the account key {does}; run this there"
            )));
        }
        Ok(())
    }

    /// `device link`: a code for the new device; the link then runs on its own until it is done
    /// or the code expires (`palaver device link`, unless `--no-wait`, follows it).
    pub(crate) fn device_link(&mut self, confirm: bool, reply: Reply) {
        let result = (|| {
            self.holding_account_key("links new devices")?;
            if !self.state.session.is_logged_in() {
                return Err(RpcError::failed(
                    "not logged in at the rendezvous; a link goes through it",
                ));
            }
            if self.state.link.as_ref().is_some_and(|l| !l.is_over()) {
                return Err(RpcError::failed(
                    "a link is already under way (from an earlier `palaver device link`; its code \
                     is good for up to 5 minutes): use that code on the new device, or run \
                     `palaver device link` again once it has expired",
                ));
            }
            let mut rendezvous = self.reach.rendezvous_addr().clone();
            if let Some(server) = self.reach.rendezvous_peer()
                && !rendezvous
                    .iter()
                    .any(|p| matches!(p, libp2p::multiaddr::Protocol::P2p(_)))
            {
                rendezvous.push(libp2p::multiaddr::Protocol::P2p(server));
            }
            let secret = LinkSecret::generate(&mut OsRng);
            let code = LinkCode {
                secret: secret.clone(),
                account: self.identity.public(),
                rendezvous,
            };
            self.state.link = Some(Linker::new(secret, now_ms()));
            self.link_waiters.clear();
            (self.link_asks, self.link_question) = (confirm, None);
            Ok(json!({
                "code": code.to_string(),
                "expires_in": palaver_protocol::crypto::link::LINK_CODE_TTL_MS / 1000,
            }))
        })();
        let _ = reply.send(result);
        self.drive_link();
    }

    /// `device.link_wait`: answered when the link under way ends, or asks the user.
    pub(crate) fn device_link_wait(&mut self, reply: Reply) {
        if self.state.link.as_ref().is_none_or(Linker::is_over) {
            let _ = reply.send(Err(RpcError::failed(
                "no link is under way; start one with `palaver device link`",
            )));
            return;
        }
        if let Some(question) = &self.link_question {
            let _ = reply.send(Ok(question.clone()));
            return;
        }
        self.link_waiters.push(reply);
    }

    /// `device.link_confirm`: the user's answer to the device waiting to be added.
    pub(crate) fn device_link_confirm(&mut self, add: bool, reply: Reply) {
        let output = match self.state.link.as_mut() {
            Some(linker) if linker.is_confirming() => linker.confirmed(add),
            _ => {
                let _ = reply.send(Err(RpcError::failed("no device waits to be added")));
                return;
            }
        };
        self.link_question = None;
        let _ = reply.send(Ok(json!(true)));
        if let Some(output) = output {
            self.on_link_output(output);
        }
    }

    /// Carries out what the link under way asks when its time comes.
    pub(crate) fn drive_link(&mut self) {
        let now = now_ms();
        while let Some(output) = self.state.link.as_mut().and_then(|l| l.handle_timeout(now)) {
            self.on_link_output(output);
        }
    }

    /// What the rendezvous said to a step of the link.
    pub(crate) fn on_link_answer(&mut self, answer: LinkAnswer) {
        let own = self
            .own_list
            .clone()
            .unwrap_or_else(|| DeviceList::single(self.identity.public()));
        let Some(linker) = self.state.link.as_mut() else {
            return;
        };
        let output = match answer {
            LinkAnswer::Taken(held) => linker.taken(held, &own, &self.identity, now_ms()),
            LinkAnswer::Published(result) => linker.published(result),
            LinkAnswer::Granted(result) => linker.granted(result),
        };
        if let Some(output) = output {
            self.on_link_output(output);
        }
        self.drive_link();
    }

    fn on_link_output(&mut self, output: LinkOutput) {
        match output {
            LinkOutput::Confirm(device) => {
                if !self.link_asks {
                    let next = self.state.link.as_mut().and_then(|l| l.confirmed(true));
                    if let Some(next) = next {
                        self.on_link_output(next);
                    }
                    return;
                }
                let question = json!({"confirm": {
                    "device": hex::encode(device.key.as_bytes()),
                    "label": device.label,
                    "fingerprint": palaver_protocol::Fingerprint::of(&device.key).to_string(),
                }});
                for reply in self.link_waiters.drain(..) {
                    let _ = reply.send(Ok(question.clone()));
                }
                self.link_question = Some(question);
            }
            LinkOutput::Take { slot } => {
                let request = RendezvousRequest::LinkTake { slot };
                self.rendezvous_request(request, Pending::Link(LinkStep::Take));
            }
            LinkOutput::Publish(list) => {
                let request = RendezvousRequest::PublishDevices(list);
                self.rendezvous_request(request, Pending::Link(LinkStep::Publish));
            }
            LinkOutput::Grant {
                slot,
                device,
                list,
                history,
            } => {
                // The list the rendezvous took is ours now (peers fetch it on its push).
                self.take_own_list(&list);
                tracing::info!(label = %device.label, "device added to the account");
                let sealed = self.link_grant(*list, history).and_then(|grant| {
                    let linker = self.state.link.as_ref().ok_or("no link under way")?;
                    linker.seal_grant(&grant, &mut OsRng)
                });
                match sealed {
                    Ok(sealed) => {
                        let request = RendezvousRequest::LinkPost {
                            slot,
                            sealed: SealedLink(sealed),
                        };
                        self.rendezvous_request(request, Pending::Link(LinkStep::Grant));
                    }
                    Err(error) => self.on_link_answer(LinkAnswer::Granted(Err(error))),
                }
            }
            LinkOutput::Linked(device) => {
                tracing::info!(label = %device.label, "device linked");
                let answer = json!({
                    "device": hex::encode(device.key.as_bytes()),
                    "label": device.label,
                });
                for reply in self.link_waiters.drain(..) {
                    let _ = reply.send(Ok(answer.clone()));
                }
            }
            LinkOutput::Failed(error) => {
                tracing::warn!("device link failed: {error}");
                self.link_question = None;
                for reply in self.link_waiters.drain(..) {
                    let _ = reply.send(Err(RpcError::failed(error.clone())));
                }
            }
        }
    }

    /// What the new device is handed: our name, our device list naming it, every contact with
    /// its pinned key, the rooms we are in or invited to, and the last `history` lines of each
    /// conversation with a contact and of each room (as many as fit).
    fn link_grant(&self, list: SignedDeviceList, history: u32) -> Result<LinkGrant, String> {
        let mut contacts = Vec::new();
        let mut lines = Vec::new();
        for name in self.contact_names() {
            let contact = super::trust::load_contact(&self.store, name.as_str())
                .map_err(|e| e.to_string())?;
            let Some(contact) = contact else { continue };
            let conversation = ConversationId::Direct(contact.conversation);
            let with = LinkedConversation::Contact(name.clone());
            lines.extend(self.linked_lines(&conversation, with, history)?);
            contacts.push(LinkedContact { name, contact });
        }
        let rooms: Vec<_> = self
            .state
            .rooms
            .iter()
            .filter_map(Room::hand_over)
            .collect();
        for room in &rooms {
            let conversation = ConversationId::Room(room.id);
            let with = LinkedConversation::Room(room.id);
            lines.extend(self.linked_lines(&conversation, with, history)?);
        }
        let mut grant = LinkGrant {
            name: self.name.clone(),
            devices: list,
            contacts,
            rooms,
            history: lines,
        };
        grant.fit();
        Ok(grant)
    }

    /// The last `history` lines of `conversation` (newest first, no more than fit a link
    /// message at all), to hand a new device.
    fn linked_lines(
        &self,
        conversation: &ConversationId,
        with: LinkedConversation,
        history: u32,
    ) -> Result<Vec<LinkedLine>, String> {
        if history == 0 {
            return Ok(Vec::new());
        }
        let entries =
            (self.store.history(conversation, history as usize)).map_err(|e| e.to_string())?;
        let mut budget = palaver_protocol::wire::rendezvous::MAX_LINK_LEN;
        let fitting = entries.into_iter().rev().filter(|e| !e.is_notice());
        let fitting = fitting.take_while(|e| {
            budget = budget.saturating_sub(e.text.len() + e.from.len() + 128);
            budget > 0
        });
        let lines = fitting.map(|entry| LinkedLine {
            with: with.clone(),
            id: entry.id,
            sender: entry.sender,
            from_me: entry.from == self.name.as_str(),
            from: entry.from,
            text: entry.text,
            sent_at_ms: entry.sent_at_ms,
            stamp: entry.stamp,
            seq: entry.seq,
            delivered: entry.status == Status::Delivered,
        });
        Ok(lines.collect())
    }

    // ---- revoking one ----

    /// `device revoke DEVICE`: a new list without it, published; the rendezvous logs it out and
    /// our contacts stop sealing for it when they fetch the list.
    pub(crate) fn device_revoke(&mut self, device: String, reply: Reply) {
        let result = (|| {
            self.holding_account_key("revokes devices")?;
            let own = self.own_devices().ok_or_else(|| {
                RpcError::failed(
                    "this account has no linked devices yet (`palaver device link` adds one)",
                )
            })?;
            let target = own
                .find(&device)
                .map_err(|e| RpcError::failed(format!("{device}: {e}; see `palaver device list`")))?
                .key;
            let list = own
                .without(&target)
                .and_then(|list| SignedDeviceList::sign(list, &self.identity))
                .map_err(|e| RpcError::failed(e.to_string()))?;
            Ok(list)
        })();
        match result {
            Ok(list) => {
                let token = self.replies.park(reply);
                let request = RendezvousRequest::PublishDevices(Box::new(list.clone()));
                let pending = Pending::Revoke {
                    list: Box::new(list),
                    reply: token,
                };
                self.rendezvous_request(request, pending);
            }
            Err(error) => {
                let _ = reply.send(Err(error));
            }
        }
    }

    /// A list of ours the rendezvous took: pinned as ours.
    fn take_own_list(&mut self, list: &SignedDeviceList) {
        let name = self.name.clone();
        self.take_list(&name, list);
    }

    /// Our new list is at the rendezvous (the rendezvous pushes it to our contacts).
    pub(crate) fn on_revoked(&mut self, list: SignedDeviceList, reply: super::replies::ReplyToken) {
        self.take_own_list(&list);
        let me = self.identity.public();
        let answer = device_list(&self.store, &self.name, &me, &me);
        self.replies.answer(reply, Ok(answer));
    }
}
