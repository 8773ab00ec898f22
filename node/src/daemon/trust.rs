//! Which key each contact's name stands for, driven by [`palaver_protocol::node::trust`]: every
//! rendezvous answer naming a user's key goes through [`Node::learn_keys`], which pins first keys,
//! ignores users nobody asked about, and reports a changed key — in the conversation, on `listen`
//! (`key_changed`) and, for a verified contact, by refusing sends until the user confirms.

use palaver_protocol::node::direct::pipeline::Facts;
pub(crate) use palaver_protocol::node::trust::Asked;
use palaver_protocol::node::trust::{self, Contact, KeyChange};
use palaver_protocol::{Fingerprint, MessageId, SafetyNumber, UserName, VerifyingKey};
use rand_core::{OsRng, RngCore};
use serde_json::{Value, json};

use super::Node;
use crate::rpc::{Reply, RpcError};
use crate::store::{
    ConversationId, HistoryEntry, NOTICE_SENDER, StateBatch, StateKey, Status, Store, StoreError,
};

/// The contact record for `name`, if any. Stores from before pinning hold only the key.
pub(crate) fn load_contact(store: &Store, name: &str) -> Result<Option<Contact>, StoreError> {
    match store.get::<Contact>(StateKey::Contact(name)) {
        Ok(contact) => Ok(contact),
        Err(err) => match store.get::<[u8; 32]>(StateKey::Contact(name)) {
            Ok(key) => Ok(key.map(Contact::first)),
            Err(_) => Err(err),
        },
    }
}

/// Why sends to a contact are refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SendRefused {
    /// A verified contact's key changed: the user confirms the new one first.
    #[error("{}", .change.refusal(.name))]
    Unconfirmed {
        name: UserName,
        change: trust::Unconfirmed,
    },
    #[error("{name}'s pinned key is not a valid key")]
    BadKey { name: UserName },
    #[error("cannot read the contact: {0}")]
    Store(#[from] StoreError),
}

/// What the store knows, as the send pipeline asks it (and why the rendezvous cannot be
/// asked now, if it cannot).
pub(crate) struct StoreFacts<'a> {
    store: &'a Store,
    me: VerifyingKey,
    name: &'a UserName,
    account: VerifyingKey,
    unavailable: Option<String>,
}

impl<'a> StoreFacts<'a> {
    /// What `store` knows, for this device `me` of the account `name` (account key `account`).
    pub(crate) fn new(
        store: &'a Store,
        me: VerifyingKey,
        name: &'a UserName,
        account: VerifyingKey,
        unavailable: Option<String>,
    ) -> Self {
        Self {
            store,
            me,
            name,
            account,
            unavailable,
        }
    }
}

impl Facts for StoreFacts<'_> {
    type Refusal = SendRefused;

    fn unavailable(&self) -> Option<String> {
        self.unavailable.clone()
    }

    fn me(&self) -> VerifyingKey {
        self.me
    }

    fn key_to_send(
        &mut self,
        name: &UserName,
    ) -> Result<Option<(VerifyingKey, Option<String>)>, SendRefused> {
        let Some(mut contact) = load_contact(self.store, name.as_str())? else {
            return Ok(None);
        };
        let (key, changed) = contact
            .key_to_send()
            .map_err(|change| SendRefused::Unconfirmed {
                name: name.clone(),
                change,
            })?;
        let key = VerifyingKey::from_bytes(&key)
            .map_err(|_| SendRefused::BadKey { name: name.clone() })?;
        let warning = changed.map(|_| {
            // Losing this write shows the warning once more: nothing to wait for.
            let mut batch = StateBatch::default();
            batch.put(StateKey::Contact(name.as_str()), &contact);
            if let Err(err) = self.store.apply(&batch) {
                tracing::warn!("store: {err}");
            }
            trust::change_warning(name)
        });
        Ok(Some((key, warning)))
    }

    fn name_of(&self, key: &VerifyingKey) -> Option<UserName> {
        let name = self.store.get::<String>(StateKey::Peer(key.to_bytes()));
        name.ok()
            .flatten()
            .and_then(|name| UserName::new(name).ok())
    }

    fn has_session(&self, key: &VerifyingKey) -> bool {
        self.store.holds(StateKey::Session(key.to_bytes()))
    }

    fn account_of(&self, name: &UserName) -> Option<VerifyingKey> {
        if name == self.name {
            return Some(self.account);
        }
        let contact = load_contact(self.store, name.as_str()).ok().flatten()?;
        VerifyingKey::from_bytes(&contact.key).ok()
    }

    fn is_own(&self, name: &UserName) -> bool {
        name == self.name
    }
}

impl Node {
    /// The identity key messages to `name` are sealed for.
    pub(crate) fn contact_key(&self, name: &UserName) -> Option<VerifyingKey> {
        let contact = load_contact(&self.store, name.as_str()).ok().flatten()?;
        VerifyingKey::from_bytes(&contact.key).ok()
    }

    /// The conversation a direct message with the holder of `key` is filed in: its name's
    /// conversation (which outlives key changes), else one of its own.
    pub(crate) fn conversation_with(&self, key: &[u8; 32]) -> Result<ConversationId, StoreError> {
        let contact = match self.store.get::<String>(StateKey::Peer(*key))? {
            Some(name) => load_contact(&self.store, &name)?,
            None => None,
        };
        Ok(ConversationId::Direct(
            contact.map_or(*key, |contact| contact.conversation),
        ))
    }

    /// Takes in what an answer said about users' keys ([`trust::learn`] decides).
    pub(crate) fn learn_keys<'a>(
        &mut self,
        users: impl IntoIterator<Item = (&'a UserName, &'a VerifyingKey)>,
        asked: &Asked,
    ) {
        let store = &self.store;
        let learned = trust::learn(&self.identity.public(), users, asked, |name| {
            load_contact(store, name.as_str())
                .inspect_err(|err| tracing::warn!("store: {err}"))
                .ok()
        });
        for (name, key) in &learned.named {
            self.release_unnamed(key, Some(name.as_str()));
        }
        let mut batch = StateBatch::default();
        for (name, contact) in &learned.contacts {
            batch
                .put(StateKey::Contact(name.as_str()), contact)
                .put(StateKey::Peer(contact.latest()), &name.to_string());
        }
        if let Err(err) = self.store.apply(&batch) {
            tracing::warn!("store: {err}");
            return;
        }
        self.state.contacts_pinned(&learned.new_contacts);
        if !learned.new_contacts.is_empty() {
            self.refresh_devices(learned.new_contacts.clone());
        }
        self.drive_session();
        for change in learned.changes {
            self.on_key_changed(change);
        }
    }

    fn on_key_changed(&mut self, change: KeyChange) {
        let (old_fingerprint, new_fingerprint) = (
            trust::fingerprint(&change.old),
            trust::fingerprint(&change.new),
        );
        let (name, verified) = (&change.name, change.verified);
        tracing::warn!(%name, %old_fingerprint, %new_fingerprint, verified, "a contact's key changed");
        self.record_notice(name, change.notice());
        self.emit(crate::rpc::Event::KeyChanged {
            name: name.to_string(),
            old_fingerprint,
            new_fingerprint,
            verified,
        });
        if let Some(old) = change.replaced_now() {
            self.key_replaced(&old);
        }
    }

    /// Messages sealed for `old`, a key its user no longer holds, fail.
    fn key_replaced(&mut self, old: &[u8; 32]) {
        if let Ok(old) = VerifyingKey::from_bytes(old) {
            let old = palaver_protocol::identity::peer_id_of(&old);
            self.delivery_input(palaver_protocol::node::direct::Input::KeyReplaced(old));
        }
    }

    /// Files a line of our own (not a message anyone sent) in the conversation with `name`.
    fn record_notice(&mut self, name: &UserName, text: String) {
        let Ok(Some(contact)) = load_contact(&self.store, name.as_str()) else {
            return;
        };
        let mut id = [0u8; 32];
        OsRng.fill_bytes(&mut id);
        let stamp = match self.next_stamp() {
            Ok(stamp) => stamp,
            Err(err) => return tracing::error!("cannot file a notice for {name}: {err}"),
        };
        let mut batch = StateBatch::default();
        batch.put(StateKey::Meta(super::direct::CLOCK_META), &stamp);
        let entry = HistoryEntry {
            id: MessageId(id),
            conversation: ConversationId::Direct(contact.conversation),
            label: name.to_string(),
            from: String::new(),
            sender: NOTICE_SENDER,
            text,
            sent_at_ms: super::now_ms(),
            stamp,
            seq: 0,
            status: Status::Received,
        };
        if let Err(err) = self.store.record(&entry, &batch) {
            tracing::warn!("store: {err}");
        }
    }

    /// The safety number with `name` (whose key is known); with `confirm`, marks that key
    /// verified and answers once that is durable.
    pub(crate) fn answer_verify(&mut self, name: UserName, confirm: bool, reply: Reply) {
        let refuse = |reply: Reply, error: trust::VerifyError| {
            drop(reply.send(Err(RpcError::failed(error.to_string()))))
        };
        let mut contact = match load_contact(&self.store, name.as_str()) {
            Ok(Some(contact)) => contact,
            Ok(None) => return refuse(reply, trust::VerifyError::Unknown(name)),
            Err(err) => return drop(reply.send(Err(RpcError::failed(err.to_string())))),
        };
        let latest = contact.latest();
        let Ok(their_key) = VerifyingKey::from_bytes(&latest) else {
            return refuse(reply, trust::VerifyError::BadKey(name));
        };
        let answer = |contact: &Contact| -> Value {
            let mine = self.identity.public();
            json!({
                "name": name.as_str(),
                "safety_number": SafetyNumber::of(&mine, &their_key).to_string(),
                "verified": contact.is_verified(),
                "key_changed": contact.unconfirmed.is_some(),
                "fingerprint": Fingerprint::of(&their_key).to_string(),
                "me": self.name.as_str(),
                "my_fingerprint": Fingerprint::of(&mine).to_string(),
            })
        };
        if !confirm {
            return drop(reply.send(Ok(answer(&contact))));
        }
        let confirmed = contact.confirm();
        let value = answer(&contact);
        let mut batch = StateBatch::default();
        batch
            .put(StateKey::Contact(name.as_str()), &contact)
            .put(StateKey::Peer(latest), &name.to_string());
        if let Err(err) = self.store.apply(&batch) {
            return drop(reply.send(Err(RpcError::failed(err.to_string()))));
        }
        if confirmed.newly_verified {
            self.record_notice(&name, trust::verified_notice(&name));
        }
        if let Some(old) = confirmed.replaced {
            self.key_replaced(&old);
        }
        self.answer_when_durable(reply, Ok(value));
    }

    /// Whether the user verified `name`'s current key.
    pub(crate) fn is_verified(&self, name: &str) -> bool {
        load_contact(&self.store, name)
            .ok()
            .flatten()
            .is_some_and(|c| c.is_verified())
    }
}
