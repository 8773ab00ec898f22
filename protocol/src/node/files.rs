//! File transfers: which files we fetch, from whom, from which chunk, when again, and what
//! becomes of each; and whom we serve a file to.
//!
//! A file arrives as an offer in a message ([`Input::Offered`]). Up to the auto-accept size it is
//! accepted at once; a larger one waits for the user ([`Input::Accept`]); one over the size
//! limit, or larger than the free disk space, is refused. An accepted file is fetched from its
//! sender — in a room, from any member that has it, the sender first — starting at the first
//! chunk not yet verified, at most [`MAX_FETCHES`] at once. The driver's fetch opens each chunk
//! (which checks it is that chunk of that file), writes it at its place in a partial file, makes
//! it durable and only then reports how far it got ([`Input::Verified`]), so a transfer resumes
//! after a crash of either side or a lost connection from the last chunk it holds. A fetch that
//! ends early is tried again after a backoff, from the next source. With every chunk in, the
//! driver hashes the whole file ([`Output::Check`]); only a match is moved into place
//! ([`Output::Move`]), under a name that overwrites nothing.
//!
//! Every transfer is one [`Incoming`] record, which the driver persists on [`Output::Save`];
//! this machine holds only those under way. Serving is [`may_serve`]: a pure decision over the
//! record of a file we offered or received. Offering is [`new_offer`] and [`offer_payload`]
//! (whole in its message, or fetched); what a decline may say, and who may send one, are
//! [`decline_reason`] and [`may_decline`]; a room's file received whole is served on to the
//! other members ([`served_on`]).

use std::collections::{BTreeMap, VecDeque};

use ed25519_dalek::VerifyingKey;
use libp2p_identity::PeerId;
use serde::{Deserialize, Serialize};

use rand_core::{CryptoRng, RngCore};

use crate::crypto::file::{FileKey, FileShape};
use crate::identity::peer_id_of;
use crate::wire::file::{MAX_WHOLE_FILE_LEN, guess_mime};
use crate::wire::{FileOffer, MessageId, Payload, RoomId, TransferId, WireError};

/// Fetches under way at once; more accepted files wait their turn.
pub const MAX_FETCHES: usize = 4;
/// Transfers under way (fetching or waiting to), at most: accepting more is refused.
pub const MAX_ACTIVE: usize = 256;
/// A fetch that ended early is tried again this much later, doubling per failure in a row...
pub const RETRY_MS: u64 = 2_000;
/// ...up to this.
pub const MAX_RETRY_MS: u64 = 60_000;
/// Progress events for one transfer, at most this often.
pub const PROGRESS_EVERY_MS: u64 = 250;
/// The longest reason a decline carries, in characters.
pub const MAX_DECLINE_REASON: usize = 200;

/// The limits the user set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Larger offers are refused.
    pub max_size: u64,
    /// Offers up to this size are accepted without asking.
    pub auto_accept: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_size: 2 << 30,
            auto_accept: 16 << 20,
        }
    }
}

/// A file offered to us, and how far it got: what the driver stores.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Incoming {
    pub offer: FileOffer,
    pub sender: VerifyingKey,
    /// The room it was offered in (its members may serve it too).
    pub room: Option<RoomId>,
    pub status: Status,
    /// Chunks verified and durable in the partial file, from the first.
    pub verified: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Status {
    /// Waits for the user to accept or reject it.
    Offered,
    /// Accepted: being fetched, or waiting to be.
    Fetching,
    /// Every chunk is in: the whole file is being checked against its hash.
    Checking,
    /// In place at `path`.
    Done {
        path: String,
    },
    Rejected,
    Failed {
        reason: String,
    },
}

impl Status {
    /// Done, rejected or failed: nothing more happens to it unless the user asks again.
    pub fn is_finished(&self) -> bool {
        matches!(
            self,
            Status::Done { .. } | Status::Rejected | Status::Failed { .. }
        )
    }
}

impl Incoming {
    /// Just offered: nothing fetched, nothing decided.
    pub fn offered(offer: FileOffer, sender: VerifyingKey, room: Option<RoomId>) -> Self {
        Self {
            offer,
            sender,
            room,
            status: Status::Offered,
            verified: 0,
        }
    }

    pub fn is_finished(&self) -> bool {
        self.status.is_finished()
    }

    /// Bytes verified so far.
    pub fn bytes_done(&self) -> u64 {
        FileShape::offset(self.verified).min(self.offer.size)
    }
}

/// What the driver tells the machine.
#[derive(Debug)]
pub enum Input {
    /// A message offered this file (`file` is the message's id); `free_space` is what the disk
    /// the files go to has free.
    Offered {
        file: MessageId,
        offer: FileOffer,
        sender: VerifyingKey,
        room: Option<RoomId>,
        free_space: u64,
        /// It came whole with its message, and the driver wrote it as the partial file: once
        /// accepted, it is only checked and moved.
        whole: bool,
        /// Its record's status as stored now. The record is stored with the message, and the
        /// offer handed in after (the driver writes a whole file first): what the user did in
        /// between (a reject) stands.
        stored: Option<Status>,
    },
    /// The user accepts the file `record` (as stored) describes.
    Accept {
        file: MessageId,
        record: Incoming,
        free_space: u64,
    },
    /// The user rejects it (or gives up on it while under way).
    Reject { file: MessageId, record: Incoming },
    /// The fetch of `file` has chunks up to `through` (exclusive) verified and durable.
    Verified { file: MessageId, through: u64 },
    /// The fetch of `file` ended: every chunk sent (`Ok`), or not, and why.
    Ended {
        file: MessageId,
        result: Result<(), String>,
    },
    /// The whole of `file` was hashed: whether it matches its offer.
    Checked { file: MessageId, matches: bool },
    /// The partial file of `file` cannot be read (gone, or the disk fails): fetched again,
    /// from the first chunk, after a backoff.
    Lost { file: MessageId, reason: String },
    /// `file` was moved into place at `path`, or could not be.
    Moved {
        file: MessageId,
        path: Result<String, String>,
    },
}

/// What the machine asks of the driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Store this record of `file` (replacing what was stored).
    Save { file: MessageId, record: Incoming },
    /// Fetch `file`'s chunks from `from_chunk` on, from `peer`; report with
    /// [`Input::Verified`] and [`Input::Ended`].
    Fetch {
        file: MessageId,
        offer: FileOffer,
        peer: PeerId,
        from_chunk: u64,
    },
    /// Stop fetching `file` (rejected while under way).
    StopFetch { file: MessageId },
    /// Hash the partial file of `file`; report with [`Input::Checked`].
    Check { file: MessageId, sha256: [u8; 32] },
    /// Move the checked partial file into place under `name` (or a free variant of it);
    /// report with [`Input::Moved`].
    Move { file: MessageId, name: String },
    /// Remove the partial file (rejected, or it failed).
    Discard { file: MessageId },
    /// Tell `sender` (over the pairwise session) that `file` will not be fetched, and why: a
    /// file offered directly, not in a room, whose sender may be waiting for it.
    Decline {
        file: MessageId,
        sender: VerifyingKey,
        reason: String,
    },
    /// Tell the user.
    Event(FileEvent),
}

/// What the user hears of a transfer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileEvent {
    /// Offered; `accepted` when it is fetched without asking.
    Offer {
        file: MessageId,
        /// The sender's identity key.
        sender: [u8; 32],
        room: Option<RoomId>,
        name: String,
        size: u64,
        accepted: bool,
    },
    Progress {
        file: MessageId,
        bytes: u64,
        size: u64,
    },
    Done {
        file: MessageId,
        path: String,
    },
    Failed {
        file: MessageId,
        reason: String,
    },
}

/// Why an accept was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AcceptError {
    #[error("the file is {size} bytes, over the {max}-byte limit")]
    TooLarge { size: u64, max: u64 },
    #[error("the file needs {needed} bytes and the disk has {free} free")]
    NoSpace { needed: u64, free: u64 },
    #[error("{MAX_ACTIVE} transfers are under way already; try again when some are done")]
    TooMany,
    #[error("the file was {0} already")]
    Finished(&'static str),
}

/// Who may have a file fetched, besides its own sender.
pub trait Sources {
    /// The peers of `room`'s members other than us (any of them may have the file).
    fn room_members(&self, room: &RoomId) -> Vec<PeerId>;
}

impl Sources for crate::node::rooms::Rooms {
    fn room_members(&self, room: &RoomId) -> Vec<PeerId> {
        self.others(room).iter().map(peer_id_of).collect()
    }
}

#[derive(Debug)]
struct Active {
    record: Incoming,
    /// Being fetched from this peer now.
    fetching: Option<PeerId>,
    /// When to try (again), if not being fetched.
    next_try: u64,
    /// Fetches in a row that ended early.
    failures: u32,
    /// The last progress event.
    told_at: u64,
    /// Why the last fetch ended early.
    last_error: Option<String>,
    /// Whole files that did not match their hash: in a room, a member may have served other
    /// bytes; fetched once more, from the sender first, before it counts as failed.
    mismatches: u32,
}

#[derive(Debug)]
pub struct Transfers {
    limits: Limits,
    active: BTreeMap<MessageId, Active>,
    outputs: VecDeque<Output>,
}

impl Transfers {
    /// With the transfers that were under way when the node last stopped (as stored), and
    /// what the disk the files go to has free.
    pub fn new(
        limits: Limits,
        under_way: impl IntoIterator<Item = (MessageId, Incoming)>,
        mut free_space: u64,
    ) -> Self {
        let mut transfers = Self {
            limits,
            active: BTreeMap::new(),
            outputs: VecDeque::new(),
        };
        for (file, record) in under_way {
            if record.status == Status::Checking {
                let sha256 = record.offer.sha256;
                transfers.outputs.push_back(Output::Check { file, sha256 });
            }
            match record.status {
                Status::Fetching | Status::Checking => transfers.activate(file, record, 0),
                // Stored with its message, and stopped before it was accepted: accepted now,
                // if it is within the auto-accept size and every limit.
                Status::Offered
                    if record.offer.size <= limits.auto_accept
                        && transfers.check_accept(&record.offer, free_space).is_ok() =>
                {
                    free_space -= record.offer.size;
                    transfers.accept(file, record, 0)
                }
                _ => {}
            }
        }
        transfers
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// How far `file` got, if it is under way.
    pub fn under_way(&self, file: &MessageId) -> Option<&Incoming> {
        self.active.get(file).map(|active| &active.record)
    }

    /// The peer `file` is being fetched from now, if it is.
    pub fn source(&self, file: &MessageId) -> Option<PeerId> {
        self.active.get(file)?.fetching
    }

    /// Why `file`'s last fetch ended early, if it is waiting to be tried again.
    pub fn why_waiting(&self, file: &MessageId) -> Option<&str> {
        let active = self.active.get(file)?;
        active
            .fetching
            .is_none()
            .then_some(active.last_error.as_deref())?
    }

    /// When a waiting fetch is due (wall-clock ms), if a fetch slot is free.
    pub fn poll_timeout(&self) -> Option<u64> {
        if self.fetching() >= MAX_FETCHES {
            return None;
        }
        (self.active.values())
            .filter(|a| a.fetching.is_none() && a.record.status == Status::Fetching)
            .map(|a| a.next_try)
            .min()
    }

    fn fetching(&self) -> usize {
        self.active
            .values()
            .filter(|a| a.fetching.is_some())
            .count()
    }

    /// Starts the fetches that are due, while slots are free.
    pub fn handle_timeout(&mut self, now: u64, sources: &impl Sources) {
        let due: Vec<MessageId> = (self.active.iter())
            .filter(|(_, a)| {
                a.fetching.is_none() && a.record.status == Status::Fetching && a.next_try <= now
            })
            .map(|(file, _)| *file)
            .collect();
        for file in due {
            if self.fetching() >= MAX_FETCHES {
                break;
            }
            self.start(file, sources);
        }
    }

    fn start(&mut self, file: MessageId, sources: &impl Sources) {
        let Some(active) = self.active.get_mut(&file) else {
            return;
        };
        let record = &active.record;
        // The sender first; in a room, then each other member in turn.
        let mut peers = vec![peer_id_of(&record.sender)];
        if let Some(room) = &record.room {
            let sender = peers[0];
            peers.extend(
                sources
                    .room_members(room)
                    .into_iter()
                    .filter(|p| *p != sender),
            );
        }
        let peer = peers[active.failures as usize % peers.len()];
        active.fetching = Some(peer);
        self.outputs.push_back(Output::Fetch {
            file,
            offer: record.offer.clone(),
            peer,
            from_chunk: record.verified,
        });
    }

    fn activate(&mut self, file: MessageId, record: Incoming, now: u64) {
        self.active.insert(
            file,
            Active {
                record,
                fetching: None,
                next_try: now,
                failures: 0,
                told_at: 0,
                last_error: None,
                mismatches: 0,
            },
        );
    }

    fn check_accept(&self, offer: &FileOffer, free_space: u64) -> Result<(), AcceptError> {
        let (size, max) = (offer.size, self.limits.max_size);
        if size > max {
            return Err(AcceptError::TooLarge { size, max });
        }
        if size > free_space {
            let (needed, free) = (size, free_space);
            return Err(AcceptError::NoSpace { needed, free });
        }
        if self.active.len() >= MAX_ACTIVE {
            return Err(AcceptError::TooMany);
        }
        Ok(())
    }

    /// Accepts `file`: it is fetched from now on (a failed one from its first chunk: its
    /// partial file was discarded).
    fn accept(&mut self, file: MessageId, mut record: Incoming, now: u64) {
        if matches!(record.status, Status::Failed { .. }) {
            record.verified = 0;
        }
        record.status = Status::Fetching;
        self.save(file, record.clone());
        self.activate(file, record, now);
    }

    fn save(&mut self, file: MessageId, record: Incoming) {
        self.outputs.push_back(Output::Save { file, record });
    }

    fn fail(&mut self, file: MessageId, mut record: Incoming, reason: String) {
        self.active.remove(&file);
        record.status = Status::Failed {
            reason: reason.clone(),
        };
        let (sender, direct) = (record.sender, record.room.is_none());
        self.save(file, record);
        self.outputs.push_back(Output::Discard { file });
        if direct {
            self.outputs.push_back(Output::Decline {
                file,
                sender,
                reason: decline_reason(&reason),
            });
        }
        self.outputs
            .push_back(Output::Event(FileEvent::Failed { file, reason }));
    }

    /// Fetches `file` again from its first chunk (the partial discarded), after the backoff its
    /// failures in a row call for (at once with none), from the source they point to (the
    /// sender, with none).
    fn refetch(&mut self, file: MessageId, reason: String, now: u64) {
        let Some(active) = self.active.get_mut(&file) else {
            return;
        };
        active.record.status = Status::Fetching;
        active.record.verified = 0;
        active.last_error = Some(reason);
        active.next_try = match active.failures {
            0 => now,
            n => now.saturating_add(
                RETRY_MS
                    .saturating_mul(1 << (n - 1).min(10))
                    .min(MAX_RETRY_MS),
            ),
        };
        let record = active.record.clone();
        self.outputs.push_back(Output::Discard { file });
        self.save(file, record);
    }

    /// Takes an input. An accept that cannot be taken says why (the record is unchanged).
    pub fn handle(&mut self, input: Input, now: u64) -> Result<(), AcceptError> {
        match input {
            Input::Offered {
                file,
                offer,
                sender,
                room,
                free_space,
                whole,
                stored,
            } => {
                if self.active.contains_key(&file) {
                    return Ok(());
                }
                if stored.is_some_and(|status| status.is_finished()) {
                    if whole {
                        self.outputs.push_back(Output::Discard { file });
                    }
                    return Ok(());
                }
                let (name, size) = (offer.name.clone(), offer.size);
                let record = Incoming::offered(offer, sender, room);
                let refused = self.check_accept(&record.offer, free_space).err();
                let accepted = refused.is_none() && size <= self.limits.auto_accept;
                self.outputs.push_back(Output::Event(FileEvent::Offer {
                    file,
                    sender: sender.to_bytes(),
                    room,
                    name,
                    size,
                    accepted,
                }));
                match refused {
                    // Too large for the limit is final; the others may pass later.
                    Some(too_large @ AcceptError::TooLarge { .. }) => {
                        self.fail(file, record, too_large.to_string())
                    }
                    _ if accepted && whole => {
                        let mut record = record;
                        record.status = Status::Checking;
                        record.verified = record.offer.shape().chunks();
                        let sha256 = record.offer.sha256;
                        self.save(file, record.clone());
                        self.activate(file, record, now);
                        self.outputs.push_back(Output::Check { file, sha256 });
                    }
                    _ if accepted => self.accept(file, record, now),
                    _ => self.save(file, record),
                }
            }
            Input::Accept {
                file,
                record,
                free_space,
            } => {
                if self.active.contains_key(&file) {
                    return Ok(());
                }
                match record.status {
                    Status::Offered => {}
                    Status::Fetching | Status::Checking => return Ok(()),
                    Status::Done { .. } => return Err(AcceptError::Finished("received")),
                    Status::Rejected => return Err(AcceptError::Finished("rejected")),
                    Status::Failed { .. } => {}
                }
                self.check_accept(&record.offer, free_space)?;
                self.accept(file, record, now);
            }
            Input::Reject { file, mut record } => {
                if let Some(active) = self.active.remove(&file) {
                    if active.fetching.is_some() {
                        self.outputs.push_back(Output::StopFetch { file });
                    }
                    record = active.record;
                }
                if !record.is_finished() {
                    record.status = Status::Rejected;
                    let (sender, direct) = (record.sender, record.room.is_none());
                    self.save(file, record);
                    self.outputs.push_back(Output::Discard { file });
                    if direct {
                        self.outputs.push_back(Output::Decline {
                            file,
                            sender,
                            reason: decline_reason("rejected"),
                        });
                    }
                }
            }
            Input::Verified { file, through } => {
                let Some(active) = self.active.get_mut(&file) else {
                    return Ok(());
                };
                let chunks = active.record.offer.shape().chunks();
                if through <= active.record.verified || through > chunks {
                    return Ok(());
                }
                active.record.verified = through;
                active.failures = 0;
                active.last_error = None;
                let record = active.record.clone();
                let tell =
                    now.saturating_sub(active.told_at) >= PROGRESS_EVERY_MS || through == chunks;
                if tell {
                    active.told_at = now;
                }
                let (bytes, size) = (record.bytes_done(), record.offer.size);
                self.save(file, record);
                if tell {
                    let progress = FileEvent::Progress { file, bytes, size };
                    self.outputs.push_back(Output::Event(progress));
                }
            }
            Input::Ended { file, result } => {
                let Some(active) = self.active.get_mut(&file) else {
                    return Ok(());
                };
                active.fetching = None;
                let complete = active.record.verified >= active.record.offer.shape().chunks();
                if complete {
                    active.record.status = Status::Checking;
                    let (record, sha256) = (active.record.clone(), active.record.offer.sha256);
                    self.save(file, record);
                    self.outputs.push_back(Output::Check { file, sha256 });
                } else {
                    active.last_error = Some(match result {
                        Err(reason) => reason,
                        Ok(()) => "the peer ended the transfer early".to_owned(),
                    });
                    active.failures = active.failures.saturating_add(1);
                    let backoff = RETRY_MS.saturating_mul(1 << (active.failures - 1).min(10));
                    active.next_try = now.saturating_add(backoff.min(MAX_RETRY_MS));
                }
            }
            Input::Checked { file, matches } => {
                let Some(active) = self.active.get_mut(&file) else {
                    return Ok(());
                };
                if matches {
                    let name = active.record.offer.name.clone();
                    self.outputs.push_back(Output::Move { file, name });
                } else if active.record.room.is_some() && active.mismatches == 0 {
                    active.mismatches += 1;
                    let reason = "the file did not match its hash".to_owned();
                    self.refetch(file, reason, now);
                } else {
                    let reason = "the file does not match its hash".to_owned();
                    let record = active.record.clone();
                    self.fail(file, record, reason);
                }
            }
            Input::Lost { file, reason } => {
                if let Some(active) = self.active.get_mut(&file) {
                    active.failures = active.failures.saturating_add(1);
                    self.refetch(file, reason, now);
                }
            }
            Input::Moved { file, path } => {
                let Some(active) = self.active.remove(&file) else {
                    return Ok(());
                };
                let mut record = active.record;
                match path {
                    Ok(path) => {
                        record.status = Status::Done { path: path.clone() };
                        self.save(file, record);
                        let done = FileEvent::Done { file, path };
                        self.outputs.push_back(Output::Event(done));
                    }
                    Err(reason) => {
                        let reason = format!("cannot put the file in place: {reason}");
                        self.fail(file, record, reason)
                    }
                }
            }
        }
        Ok(())
    }
}

/// To whom a file we hold may be served.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Audience {
    /// The one peer it was offered to directly.
    Peer(VerifyingKey),
    /// The current members of a room.
    Room(RoomId),
}

/// A file we serve, whole: one we offered (a copy kept for it), or one we received in a room,
/// which its other members may fetch from us too. The driver stores it by its transfer id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Served {
    /// The message that offered it.
    pub message: MessageId,
    pub offer: FileOffer,
    pub audience: Audience,
    pub path: String,
}

/// Why a fetch is not served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("no such file here")]
    Unknown,
    #[error("the file was not offered to you")]
    NotYours,
}

/// Whether `peer` may fetch the file `served` (as stored; `None`: nothing under that id): any
/// device of the account it was offered to (`accounts` says which), or a current member of its
/// room (`is_member`).
pub fn may_serve(
    served: Option<&Served>,
    peer: &PeerId,
    is_member: impl Fn(&RoomId, &PeerId) -> bool,
    accounts: &impl crate::crypto::room::Accounts,
) -> Result<(), Refused> {
    let allowed = match &served.ok_or(Refused::Unknown)?.audience {
        Audience::Peer(key) => (accounts.devices_of(key).iter()).any(|d| peer_id_of(d) == *peer),
        Audience::Room(room) => is_member(room, peer),
    };
    if allowed {
        Ok(())
    } else {
        Err(Refused::NotYours)
    }
}

/// The offer of a file we keep a copy of (`size` bytes, hashed to `sha256`): a fresh transfer id
/// and key, and the MIME type its name suggests. A name a receiver would refuse is refused here.
pub fn new_offer(
    name: String,
    size: u64,
    sha256: [u8; 32],
    rng: &mut (impl CryptoRng + RngCore),
) -> Result<FileOffer, WireError> {
    let offer = FileOffer {
        transfer: TransferId::random(rng),
        mime: guess_mime(&name).to_owned(),
        name,
        size,
        sha256,
        key: FileKey::random(rng),
    };
    offer.check()?;
    Ok(offer)
}

/// Whether a file of `size` goes whole inside its message (then through the mailbox too, no
/// fetch): a small one offered to one peer. In a room every member fetches, from any member
/// that has it.
pub fn goes_whole(size: u64, to_room: bool) -> bool {
    !to_room && size <= MAX_WHOLE_FILE_LEN as u64
}

/// The message that offers `offer`: whole when `bytes` (read because [`goes_whole`]) are the
/// file as offered, else an offer to fetch.
pub fn offer_payload(offer: FileOffer, bytes: Option<Vec<u8>>) -> Payload {
    match bytes {
        Some(bytes) if offer.check_whole(&bytes).is_ok() => Payload::FileWhole { offer, bytes },
        _ => Payload::File(offer),
    }
}

/// What a decline tells the sender: the reason, cut to [`MAX_DECLINE_REASON`] characters.
pub fn decline_reason(reason: &str) -> String {
    reason.chars().take(MAX_DECLINE_REASON).collect()
}

/// Whether `from` may decline the file `served`: only the one peer it was offered to (of an
/// account with linked devices, the device holding the account key: another device's refusal,
/// for want of space say, does not speak for the others, which may still fetch it).
pub fn may_decline(served: &Served, from: &VerifyingKey) -> bool {
    served.audience == Audience::Peer(*from)
}

/// A room's file `file`, once here whole (`record`), is served to the room's other members
/// too — unless its transfer id is already another message's (`taken`: what is served under
/// it now; ids are the sender's to choose, and one must not take over another's).
pub fn served_on(file: MessageId, record: &Incoming, taken: Option<&Served>) -> Option<Served> {
    let (Status::Done { path }, Some(room)) = (&record.status, record.room) else {
        return None;
    };
    taken
        .is_none_or(|taken| taken.message == file)
        .then(|| Served {
            message: file,
            offer: record.offer.clone(),
            audience: Audience::Room(room),
            path: path.clone(),
        })
}

#[cfg(test)]
mod tests;
