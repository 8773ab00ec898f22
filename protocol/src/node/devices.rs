//! The node's decisions about linked devices: which devices a direct message is copied to,
//! what a device list from the rendezvous changes, which copies of our own messages are taken,
//! and linking a new device ([`Linker`]).
//!
//! A message to a user is sealed once for each of their devices and once for each of our own
//! other devices. The copy for the recipient's account key is the message (its id, its line,
//! its status); the others carry the same text. Our own devices get [`Payload::Sent`], the line
//! as we sent it, so that every device shows the whole conversation.
//!
//! [`Payload::Sent`]: crate::wire::Payload::Sent

use ed25519_dalek::VerifyingKey;
use rand_core::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};

use crate::UserName;
use crate::codec;
use crate::crypto::link::{Direction, LINK_CODE_TTL_MS, LinkRequest, LinkSecret};
use crate::delivery::Stamp;
use crate::identity::Identity;
use crate::identity::devices::{
    Device, DeviceChange, DeviceList, DevicePin, SignedDeviceList, valid_label,
};
use crate::node::trust::Contact;
use crate::wire::MessageId;
use crate::wire::rendezvous::MAX_LINK_LEN;

/// How often a device waiting for a link asks the rendezvous for the new device's request.
pub const LINK_POLL_MS: u64 = 500;

/// Where copies of a direct message go, besides the recipient's account key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Copies {
    /// The recipient's other devices: the same message.
    pub for_recipient: Vec<VerifyingKey>,
    /// Our own other devices: the line as we sent it.
    pub for_me: Vec<VerifyingKey>,
}

/// The copies of a message to the user with account key `recipient` (devices `theirs`, if
/// any were published), sent by this device, `me`, of an account with devices `mine`.
pub fn copies(
    recipient: &VerifyingKey,
    theirs: Option<&DeviceList>,
    mine: Option<&DeviceList>,
    me: &VerifyingKey,
) -> Copies {
    let keys = |list: Option<&DeviceList>, except: &VerifyingKey| -> Vec<VerifyingKey> {
        list.map(|l| l.others(except).map(|d| d.key).collect())
            .unwrap_or_default()
    };
    // A list pinned under an account key the name no longer has is not this account's.
    let theirs = theirs.filter(|list| list.account == *recipient);
    let for_recipient = keys(theirs, recipient)
        .into_iter()
        .filter(|key| key != me)
        .collect();
    Copies {
        for_recipient,
        for_me: keys(mine, me),
    }
}

/// A copy to seal and send: for `device`, on behalf of `copy`, carrying `payload`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyJob {
    pub device: VerifyingKey,
    pub copy: CopyFor,
    pub payload: crate::wire::Payload,
}

/// The copies of message `of` (sequence number `seq`) not sealed yet: stored with the message,
/// each taken off in the batch that seals it, so a crash loses none (the rest go out at the
/// next start).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingCopies {
    pub of: MessageId,
    /// Whom the message is for, and the account key it was sealed for.
    pub to: UserName,
    pub to_key: VerifyingKey,
    pub seq: u64,
    pub jobs: Vec<CopyJob>,
}

impl PendingCopies {
    /// The copies still wanted now that `to`'s devices are `theirs` and ours `mine` (a device
    /// revoked meanwhile gets nothing); `None`: none are.
    pub fn still_wanted(
        mut self,
        theirs: Option<&DeviceList>,
        mine: Option<&DeviceList>,
    ) -> Option<Self> {
        // A list pinned under another account key is not the one the message was for.
        let theirs = theirs.filter(|list| list.account == self.to_key);
        self.jobs.retain(|job| {
            let list = match job.copy {
                CopyFor::Recipient => theirs,
                CopyFor::Me => mine,
            };
            list.is_some_and(|list| list.contains(&job.device))
        });
        (!self.jobs.is_empty()).then_some(self)
    }

    /// The copy for `device` is sealed: what is left (`None`: nothing).
    pub fn sealed(mut self, device: &VerifyingKey) -> Option<Self> {
        self.jobs.retain(|job| job.device != *device);
        (!self.jobs.is_empty()).then_some(self)
    }
}

/// The copies a person's message `id` (its `payload`, sent at `sent_at_ms` to `to`, account
/// key `recipient`) makes: the same message to the recipient's other devices (a file offer
/// too: each of their devices may fetch it from the one device that serves it), the line as we
/// sent it to ours (for a file, its summary).
pub fn copy_jobs(
    payload: &crate::wire::Payload,
    to: &UserName,
    recipient: &VerifyingKey,
    id: MessageId,
    sent_at_ms: u64,
    copies: Copies,
) -> Vec<CopyJob> {
    use crate::wire::Payload;
    // A person's message is one with a history line: a text or a file offer.
    let Some(text) = payload.history_text() else {
        return Vec::new();
    };
    let theirs = copies.for_recipient.into_iter().map(|device| CopyJob {
        device,
        copy: CopyFor::Recipient,
        payload: payload.clone(),
    });
    let ours = copies.for_me.into_iter().map(|device| CopyJob {
        device,
        copy: CopyFor::Me,
        payload: Payload::Sent {
            to: to.clone(),
            to_key: *recipient,
            id,
            text: text.clone(),
            sent_at_ms,
        },
    });
    theirs.chain(ours).collect()
}

/// Whom a copy of a message is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CopyFor {
    /// One of the recipient's other devices.
    Recipient,
    /// One of our own other devices.
    Me,
}

/// Whether a copy reaching `status` delivers the message it copies: the recipient has it,
/// on one of their devices (as Signal counts it). Our own devices' copies count for nothing.
pub fn delivers_message(copy: CopyFor, status: &crate::delivery::DeliveryStatus) -> bool {
    copy == CopyFor::Recipient && matches!(status, crate::delivery::DeliveryStatus::Delivered)
}

/// What a device list from the rendezvous changes in what we hold for one account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Learned {
    /// The list we hold already.
    Same,
    /// A newer list: pin it. `named` keys now stand for the account's name; `dropped` keys no
    /// longer do (their sessions go with them); `this_device_removed`: the list is our own
    /// account's and no longer names this device.
    Updated {
        pin: Box<DevicePin>,
        named: Vec<VerifyingKey>,
        dropped: Vec<VerifyingKey>,
        this_device_removed: bool,
    },
    /// Not the account's, older than ours, or naming a key that stands for someone else: the
    /// server's word is not taken.
    Refused(String),
}

/// Takes `offered`, a list the rendezvous gave for `name`, whose account key we pinned as
/// `account`, against the pin we hold (`None`: none yet). `ours`: `name` is our own account;
/// `me`: this device; `owner_of`: the name a key stands for with us now, if any.
///
/// A list may name only keys that stand for nobody else (another contact's key, or — in a
/// contact's list — one of our own devices, would let one account's list take over another's
/// messages), and a key that leaves it stops standing for the name only if it stood for it.
pub fn learn(
    name: &UserName,
    account: &VerifyingKey,
    ours: bool,
    me: &VerifyingKey,
    pinned: Option<DevicePin>,
    offered: &SignedDeviceList,
    owner_of: impl Fn(&VerifyingKey) -> Option<UserName>,
) -> Learned {
    let mut pin = pinned
        .filter(|p| p.list().account == *account)
        .unwrap_or_else(|| DevicePin::new(*account));
    let (added, removed) = match pin.accept(offered) {
        Ok(DeviceChange::Same) => return Learned::Same,
        Ok(DeviceChange::Updated { added, removed }) => (added, removed),
        Err(error) => return Learned::Refused(error.to_string()),
    };
    for device in &added {
        if device.key == *me && !ours {
            return Learned::Refused(format!("{name}'s device list names this device"));
        }
        if let Some(owner) = owner_of(&device.key).filter(|owner| owner != name) {
            return Learned::Refused(format!(
                "{name}'s device list names a key that is {owner}'s"
            ));
        }
    }
    let named = added
        .into_iter()
        .map(|d| d.key)
        .filter(|key| key != me)
        .collect();
    let dropped = removed
        .into_iter()
        .map(|d| d.key)
        .filter(|key| key != account && owner_of(key).as_ref() == Some(name))
        .collect();
    let this_device_removed = ours && !pin.list().contains(me);
    Learned::Updated {
        pin: Box::new(pin),
        named,
        dropped,
        this_device_removed,
    }
}

/// Whether `list`, fetched for a user the rendezvous named (with account key `claimed`) for one
/// of the `waiting` keys, bears that out: it verifies under `claimed` and names a waiting key
/// (bound to the account, as every device on a list is). Only then is the user taken in.
pub fn claim_holds(claimed: &VerifyingKey, list: &SignedDeviceList, waiting: &[[u8; 32]]) -> bool {
    list.verify(claimed).is_ok_and(|list| {
        list.others(claimed)
            .any(|device| waiting.contains(&device.key.to_bytes()))
    })
}

/// Whether `sender` is another of our own devices: only those may hand us lines we sent.
pub fn is_own_device(mine: Option<&DeviceList>, me: &VerifyingKey, sender: &VerifyingKey) -> bool {
    sender != me && mine.is_some_and(|list| list.contains(sender))
}

/// A contact as a new device receives it: the pinned key (their device list it fetches itself,
/// at its first login, checked as every list is).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkedContact {
    pub name: UserName,
    pub contact: Contact,
}

/// Where a line handed to a new device belongs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LinkedConversation {
    /// The direct conversation with this contact.
    Contact(UserName),
    /// A room handed over with the grant.
    Room(crate::wire::RoomId),
}

/// A line of a conversation, as a new device is handed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkedLine {
    pub with: LinkedConversation,
    pub id: MessageId,
    /// The key it was sent from (ours, or another's), as it sorts.
    pub sender: [u8; 32],
    /// Who it shows as written by.
    pub from: String,
    pub from_me: bool,
    pub text: String,
    pub sent_at_ms: u64,
    pub stamp: Stamp,
    pub seq: u64,
    /// One of ours the contact has (a room's: published).
    pub delivered: bool,
}

/// The most lines of each conversation a new device may ask for.
pub const MAX_LINKED_HISTORY: u32 = 1000;

/// What the device linking hands the new one: who it is now, whom it knows, the rooms its
/// account is in, and (if it asked) the last lines of each conversation and room.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkGrant {
    pub name: UserName,
    /// The account's device list, naming the new device.
    pub devices: SignedDeviceList,
    pub contacts: Vec<LinkedContact>,
    pub rooms: Vec<crate::node::rooms::LinkedRoom>,
    pub history: Vec<LinkedLine>,
}

impl LinkGrant {
    /// Drops the oldest lines until the grant fits one link message.
    pub fn fit(&mut self) {
        self.history.sort_by_key(|line| line.stamp);
        while !self.history.is_empty()
            && codec::encode(self).map_or(usize::MAX, |bytes| bytes.len()) > MAX_LINK_LEN - 64
        {
            let drop = self.history.len().div_ceil(8);
            self.history.drain(..drop);
        }
    }
}

impl LinkGrant {
    /// The grant, if it opens under `secret`, decodes within bounds, and names `device` in a
    /// list its account signed.
    pub fn open(secret: &LinkSecret, sealed: &[u8], device: &VerifyingKey) -> Result<Self, String> {
        let plain = secret
            .open(Direction::Grant, sealed)
            .map_err(|e| e.to_string())?;
        let grant: LinkGrant = codec::decode_bounded(&plain, MAX_LINK_LEN)
            .map_err(|e| format!("the grant does not decode: {e}"))?;
        let account = grant.devices.claimed().account;
        let list = grant
            .devices
            .verify(&account)
            .map_err(|e| format!("the grant's device list: {e}"))?;
        if !list.contains(device) {
            return Err("the grant's device list does not name this device".into());
        }
        Ok(grant)
    }
}

/// What the driver does for a link in progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkOutput {
    /// Ask the rendezvous's link drop for what is at `slot`; answer with [`Linker::taken`].
    Take { slot: [u8; 32] },
    /// A new device asks to join as `device`: ask the user, then answer with
    /// [`Linker::confirmed`] (a link started without asking confirms at once).
    Confirm(Device),
    /// Publish this device list (it adds the new device); answer with [`Linker::published`].
    Publish(Box<SignedDeviceList>),
    /// The rendezvous holds `list`, ours now: seal the grant for `device` (with the last
    /// `history` lines of each conversation) with [`Linker::seal_grant`] and leave it at `slot`;
    /// answer with [`Linker::granted`].
    Grant {
        slot: [u8; 32],
        device: Device,
        list: Box<SignedDeviceList>,
        history: u32,
    },
    /// The link is done: `device` is on the account's list and has what it needs.
    Linked(Device),
    /// The link failed, for this reason.
    Failed(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Stage {
    /// Waiting for the new device's request; asking again at `next_poll_ms`.
    Waiting {
        next_poll_ms: u64,
        asking: bool,
    },
    /// The user is asked whether to add the device; the list adding it is ready.
    Confirming(Device, Box<SignedDeviceList>, u32),
    Publishing(Device, Box<SignedDeviceList>, u32),
    Granting(Device),
    Over,
}

/// A link under way on the device holding the account key (`palaver device link`).
#[derive(Debug)]
pub struct Linker {
    secret: LinkSecret,
    deadline_ms: u64,
    stage: Stage,
}

impl Linker {
    pub fn new(secret: LinkSecret, now_ms: u64) -> Self {
        Self {
            secret,
            deadline_ms: now_ms + LINK_CODE_TTL_MS,
            stage: Stage::Waiting {
                next_poll_ms: now_ms,
                asking: false,
            },
        }
    }

    pub fn secret(&self) -> &LinkSecret {
        &self.secret
    }

    pub fn is_over(&self) -> bool {
        self.stage == Stage::Over
    }

    pub fn poll_timeout(&self) -> Option<u64> {
        match self.stage {
            Stage::Waiting {
                next_poll_ms,
                asking: false,
            } => Some(next_poll_ms.min(self.deadline_ms)),
            Stage::Waiting { asking: true, .. } | Stage::Confirming(..) => Some(self.deadline_ms),
            _ => None,
        }
    }

    pub fn handle_timeout(&mut self, now_ms: u64) -> Option<LinkOutput> {
        if self.stage == Stage::Over {
            return None;
        }
        // Only a link still waiting for its new device expires: once the request is taken, the
        // rendezvous's answers (or their failure) end it.
        let expires = matches!(self.stage, Stage::Waiting { .. } | Stage::Confirming(..));
        if now_ms >= self.deadline_ms && expires {
            return Some(
                self.fail(
                    "no new device used the code within 5 minutes; run `palaver device link` again"
                        .into(),
                ),
            );
        }
        match &mut self.stage {
            Stage::Waiting {
                next_poll_ms,
                asking,
            } if !*asking && now_ms >= *next_poll_ms => {
                *asking = true;
                Some(LinkOutput::Take {
                    slot: self.secret.slot(Direction::Request),
                })
            }
            _ => None,
        }
    }

    /// What the rendezvous's link drop held (`Err`: the question failed; asked again later).
    /// `own` is the account's device list as it stands; `account` the account key.
    pub fn taken(
        &mut self,
        held: Result<Option<Vec<u8>>, String>,
        own: &DeviceList,
        account: &Identity,
        now_ms: u64,
    ) -> Option<LinkOutput> {
        let Stage::Waiting { .. } = self.stage else {
            return None;
        };
        let sealed = match held {
            Ok(Some(sealed)) => sealed,
            Ok(None) | Err(_) => {
                self.stage = Stage::Waiting {
                    next_poll_ms: now_ms + LINK_POLL_MS,
                    asking: false,
                };
                return None;
            }
        };
        let request = match self.open_request(&sealed) {
            Ok(request) => request,
            Err(error) => return Some(self.fail(error)),
        };
        let history = request.history.min(MAX_LINKED_HISTORY);
        // Bound to another account than ours (a code mixed up): refused by the list's rules.
        let device = request.device(now_ms);
        let signed = own
            .with(device.clone())
            .and_then(|list| SignedDeviceList::sign(list, account));
        match signed {
            Ok(list) => {
                self.stage = Stage::Confirming(device.clone(), Box::new(list), history);
                Some(LinkOutput::Confirm(device))
            }
            Err(error) => Some(self.fail(format!("cannot add the device: {error}"))),
        }
    }

    fn open_request(&self, sealed: &[u8]) -> Result<LinkRequest, String> {
        let plain = self
            .secret
            .open(Direction::Request, sealed)
            .map_err(|e| e.to_string())?;
        let request: LinkRequest = codec::decode_bounded(&plain, MAX_LINK_LEN)
            .map_err(|e| format!("the new device's request does not decode: {e}"))?;
        if !request.proves_key(&self.secret) {
            return Err("the new device's request does not prove its key".into());
        }
        if !valid_label(&request.label) {
            return Err(
                "the new device's label is not printable text of 1 to 32 characters".into(),
            );
        }
        Ok(request)
    }

    /// The user's answer: add the device (publish the list), or not.
    pub fn confirmed(&mut self, add: bool) -> Option<LinkOutput> {
        let Stage::Confirming(device, list, history) = self.stage.clone() else {
            return None;
        };
        if !add {
            return Some(self.fail(format!("you did not add {}", device.label)));
        }
        self.stage = Stage::Publishing(device, list.clone(), history);
        Some(LinkOutput::Publish(list))
    }

    /// Whether the link waits for the user's answer.
    pub fn is_confirming(&self) -> bool {
        matches!(self.stage, Stage::Confirming(..))
    }

    /// How publishing the new list went.
    pub fn published(&mut self, result: Result<(), String>) -> Option<LinkOutput> {
        let Stage::Publishing(device, list, history) = self.stage.clone() else {
            return None;
        };
        match result {
            Ok(()) => {
                self.stage = Stage::Granting(device.clone());
                Some(LinkOutput::Grant {
                    slot: self.secret.slot(Direction::Grant),
                    device,
                    list,
                    history,
                })
            }
            Err(error) => Some(self.fail(format!(
                "the rendezvous refused the new device list: {error}"
            ))),
        }
    }

    /// Seals `grant` for the new device.
    pub fn seal_grant(
        &self,
        grant: &LinkGrant,
        rng: &mut (impl CryptoRng + RngCore),
    ) -> Result<Vec<u8>, String> {
        let plain = codec::encode(grant).map_err(|e| e.to_string())?;
        if plain.len() > MAX_LINK_LEN - 64 {
            return Err("too many contacts to hand over in one link".into());
        }
        Ok(self.secret.seal(Direction::Grant, &plain, rng))
    }

    /// How leaving the grant went.
    pub fn granted(&mut self, result: Result<(), String>) -> Option<LinkOutput> {
        let Stage::Granting(device) = self.stage.clone() else {
            return None;
        };
        self.stage = Stage::Over;
        Some(match result {
            Ok(()) => LinkOutput::Linked(device),
            Err(error) => LinkOutput::Failed(format!(
                "the device was added but could not be handed its keys ({error}); revoke it and link again"
            )),
        })
    }

    fn fail(&mut self, error: String) -> LinkOutput {
        self.stage = Stage::Over;
        LinkOutput::Failed(error)
    }
}

#[cfg(test)]
#[path = "devices_tests.rs"]
mod tests;
