//! Files, driven: [`Transfers`] decides what is fetched from whom and what becomes of each file;
//! this carries it out with the I/O of [`crate::files`] — the copy kept of a file we offer,
//! fetches over `/palaver/file/1` streams, the whole-file check, the move into place — off the
//! actor (tasks and blocking threads that report back as [`Internal::File`]).
//!
//! Sending: `send_file` keeps a copy of the file (hashed as it is copied), then offers it in a
//! message ([`Payload::File`]) like any other; the record of what we serve to whom is written
//! with that message. Receiving: an offer is stored with its message, then handed to
//! [`Transfers`]. Serving: a peer's fetch names a transfer; [`may_serve`] decides over the
//! stored record whether that peer gets it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use libp2p::{PeerId, StreamProtocol};
use palaver_protocol::identity::identity_of;
use palaver_protocol::node::files::{
    self as transfers, Audience, FileEvent, Incoming, Input, Limits, Output, Served, Status,
    may_serve,
};
use palaver_protocol::wire::{FileOffer, Payload, TransferId, protocol_names};
use palaver_protocol::{MessageId, RoomId, RoomName, UserName, VerifyingKey};
use rand_core::OsRng;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

use super::direct::Job;
use super::{Internal, Node, now_ms};
use crate::files::{self as file_io, Kept};
use crate::rpc::{self, Reply, RpcError};
use crate::store::{StateBatch, StateKey, Store};

mod streams;

pub(crate) const FILE_PROTOCOL: StreamProtocol = StreamProtocol::new(protocol_names::FILE);

/// Where a daemon keeps files, and the limits it takes them under.
#[derive(Debug, Clone, Default)]
pub struct FileConfig {
    /// Where received files go [default: `<home>/files`].
    pub download_dir: Option<PathBuf>,
    pub limits: Limits,
}

/// The driver's side of the transfers: where the files are, the fetches running.
pub(crate) struct FileIo {
    control: libp2p_stream::Control,
    /// Received files, once whole and checked.
    download: PathBuf,
    /// Files being fetched, one per transfer, by message id.
    partial: PathBuf,
    /// The copies of files we offered (served from).
    kept: PathBuf,
    max_size: u64,
    fetches: HashMap<MessageId, tokio::task::AbortHandle>,
    /// Whole-file hashes fetches computed as they wrote, for the check that follows (at most
    /// one per fetch, taken by it).
    hashed: HashMap<MessageId, [u8; 32]>,
}

/// What a task or blocking thread of the file driver finished.
#[derive(Debug)]
pub(crate) enum FileDone {
    /// The copy of a file to offer is kept (or not), read too if it goes whole: the offer can
    /// go out.
    Kept {
        to: FileTo,
        result: std::io::Result<(Kept, Option<Vec<u8>>)>,
        name: String,
        reply: Reply,
    },
    /// A file offered to us, written as its partial file if it came whole, and the free space
    /// asked.
    Offered(Box<OfferedFile>),
    /// A fetch has its chunks up to `through` durable.
    Verified { file: MessageId, through: u64 },
    /// A fetch ended: with every chunk in, the whole file's hash, as written.
    Ended {
        file: MessageId,
        result: Result<[u8; 32], String>,
    },
    Checked {
        file: MessageId,
        matches: Result<bool, String>,
    },
    Moved {
        file: MessageId,
        path: Result<String, String>,
    },
    /// A peer asks for a transfer: may it have it, and from where?
    ServeAsk {
        peer: PeerId,
        transfer: TransferId,
        answer: oneshot::Sender<Result<Served, String>>,
    },
    /// We served `message`'s file up to `bytes` (all of it when `done`).
    Serving {
        message: MessageId,
        bytes: u64,
        size: u64,
        done: bool,
    },
}

/// What [`FileDone::Offered`] brings back: [`Input::Offered`] but for the stored record's
/// status, which the actor reads as it hands the offer in.
#[derive(Debug)]
pub(crate) struct OfferedFile {
    file: MessageId,
    offer: FileOffer,
    sender: VerifyingKey,
    room: Option<RoomId>,
    whole: bool,
    free_space: u64,
}

/// Whom a file is offered to.
#[derive(Debug, Clone)]
pub(crate) enum FileTo {
    User(UserName),
    Room(RoomName),
}

impl FileIo {
    pub(crate) fn new(
        home: &Path,
        config: &FileConfig,
        mut control: libp2p_stream::Control,
        internal: mpsc::Sender<Internal>,
    ) -> anyhow::Result<Self> {
        let incoming = control
            .accept(FILE_PROTOCOL)
            .map_err(|_| anyhow::anyhow!("the file protocol is served twice"))?;
        tokio::spawn(streams::accept_fetches(incoming, internal));
        let transfers = home.join("transfers");
        let download = (config.download_dir.clone()).unwrap_or_else(|| home.join("files"));
        let partial = transfers.join("partial");
        for dir in [&download, &partial] {
            std::fs::create_dir_all(dir)
                .map_err(|err| anyhow::anyhow!("cannot create {}: {err}", dir.display()))?;
        }
        Ok(Self {
            control,
            download,
            partial,
            kept: transfers.join("sent"),
            max_size: config.limits.max_size,
            fetches: HashMap::new(),
            hashed: HashMap::new(),
        })
    }

    fn partial_of(&self, file: &MessageId) -> PathBuf {
        self.partial.join(file.to_hex())
    }

    /// What the disks a file is fetched to and then moved to have free, the less of the two
    /// (none if they cannot say: nothing is accepted).
    pub(crate) fn free_space(&self) -> u64 {
        free_space_in(&[&self.partial, &self.download])
    }
}

fn free_space_in(dirs: &[&Path]) -> u64 {
    (dirs.iter())
        .map(|dir| file_io::free_space(dir).unwrap_or(0))
        .min()
        .unwrap_or(0)
}

/// Every record in a namespace keyed by message id (`FileIn`, `FileSent`), with its id.
fn by_message<T: serde::de::DeserializeOwned>(
    store: &Store,
    namespace: StateKey<'_>,
) -> impl Iterator<Item = (MessageId, Result<T, crate::store::StoreError>)> {
    (store.scan_each::<T>(namespace).into_iter())
        .filter_map(|(key, value)| Some((MessageId(key.get(1..)?.try_into().ok()?), value)))
}

/// The transfers under way when the daemon last stopped, as stored.
pub(crate) fn under_way(store: &Store) -> Vec<(MessageId, Incoming)> {
    let any = StateKey::FileIn(MessageId([0; 32]));
    by_message::<Incoming>(store, any)
        .filter_map(|(id, record)| match record {
            Ok(record) if !record.is_finished() => Some((id, record)),
            Ok(_) => None,
            Err(err) => {
                tracing::error!("cannot read the transfer of {id}: {err}");
                None
            }
        })
        .collect()
}

impl Node {
    /// `send-file` / `room.send_file`: keeps a copy of `path` (off the actor: it may be large),
    /// then offers it.
    pub(crate) fn send_file(&mut self, to: FileTo, path: PathBuf, reply: Reply) {
        let name = match path.file_name().and_then(|name| name.to_str()) {
            Some(name) => name.to_owned(),
            None => {
                let error = format!("{} does not end in a file name", path.display());
                return drop(reply.send(Err(RpcError::invalid(error))));
            }
        };
        let (kept, max) = (self.file_io.kept.clone(), self.file_io.max_size);
        let to_room = matches!(to, FileTo::Room(_));
        self.off_actor(move || {
            let result = file_io::keep_copy(&path, &kept, max).map(|kept| {
                let whole = transfers::goes_whole(kept.size, to_room);
                let bytes = whole.then(|| std::fs::read(&kept.path).ok()).flatten();
                (kept, bytes)
            });
            FileDone::Kept {
                to,
                result,
                name,
                reply,
            }
        });
    }

    pub(crate) fn on_file_done(&mut self, done: FileDone) {
        let now = now_ms();
        let input = match done {
            FileDone::Kept {
                to,
                result,
                name,
                reply,
            } => return self.offer_file(to, result, name, reply),
            FileDone::Offered(offered) => {
                let OfferedFile {
                    file,
                    offer,
                    sender,
                    room,
                    whole,
                    free_space,
                } = *offered;
                let stored = self.stored_transfer(&file).ok().map(|record| record.status);
                Input::Offered {
                    file,
                    offer,
                    sender,
                    room,
                    free_space,
                    whole,
                    stored,
                }
            }
            FileDone::Verified { file, through } => Input::Verified { file, through },
            FileDone::Ended { file, result } => {
                self.file_io.fetches.remove(&file);
                let result = result.map(|sha256| {
                    self.file_io.hashed.insert(file, sha256);
                });
                Input::Ended { file, result }
            }
            FileDone::Checked { file, matches } => match matches {
                Ok(matches) => Input::Checked { file, matches },
                // Unreadable (gone, say, after a crash between the move and its record):
                // fetched again.
                Err(reason) => Input::Lost {
                    file,
                    reason: format!("cannot read the fetched file: {reason}"),
                },
            },
            FileDone::Moved { file, path } => Input::Moved { file, path },
            FileDone::ServeAsk {
                peer,
                transfer,
                answer,
            } => {
                let _ = answer.send(self.may_serve(&peer, transfer));
                return;
            }
            FileDone::Serving {
                message,
                bytes,
                size,
                done,
            } => {
                let id = message.to_hex();
                let event = if done {
                    rpc::Event::FileDone {
                        id,
                        direction: "sending",
                        path: None,
                    }
                } else {
                    rpc::Event::FileProgress {
                        id,
                        direction: "sending",
                        bytes,
                        size,
                        via: None,
                    }
                };
                return self.emit(event);
            }
        };
        self.files_input(input, now);
    }

    fn files_input(&mut self, input: Input, now: u64) {
        if let Err(err) = self.state.files.handle(input, now) {
            tracing::warn!("file transfer: {err}");
        }
        self.drive_files();
    }

    /// A message offered us a file (stored with it), or brought it whole (`bytes`): fetched (or
    /// checked) now, or when the user accepts.
    pub(crate) fn file_offered(
        &mut self,
        file: MessageId,
        offer: FileOffer,
        sender: VerifyingKey,
        room: Option<RoomId>,
        bytes: Option<Vec<u8>>,
    ) {
        // Off the actor: a file that came whole (small: at most MAX_WHOLE_FILE_LEN) is written
        // as its partial file, durably (if that fails, it is fetched like any other), and the
        // free space asked of the disks.
        let partial = self.file_io.partial_of(&file);
        let dirs = (self.file_io.partial.clone(), self.file_io.download.clone());
        self.off_actor(move || {
            let whole = bytes.is_some_and(|bytes| {
                let written = std::fs::File::create(&partial).and_then(|mut out| {
                    std::io::Write::write_all(&mut out, &bytes)?;
                    out.sync_data()
                });
                if let Err(err) = &written {
                    tracing::warn!(
                        "cannot write {}: {err}; fetching it instead",
                        partial.display()
                    );
                }
                written.is_ok()
            });
            FileDone::Offered(Box::new(OfferedFile {
                file,
                offer,
                sender,
                room,
                whole,
                free_space: free_space_in(&[&dirs.0, &dirs.1]),
            }))
        });
    }

    fn offer_file(
        &mut self,
        to: FileTo,
        kept: std::io::Result<(Kept, Option<Vec<u8>>)>,
        name: String,
        reply: Reply,
    ) {
        let (kept, bytes) = match kept {
            Ok(kept) => kept,
            Err(err) => return drop(reply.send(Err(RpcError::failed(err.to_string())))),
        };
        let offer = match transfers::new_offer(name, kept.size, kept.sha256, &mut OsRng) {
            Ok(offer) => offer,
            Err(err) => return drop(reply.send(Err(RpcError::invalid(err.to_string())))),
        };
        match to {
            FileTo::User(name) => {
                let payload = transfers::offer_payload(offer, bytes);
                let token = self.replies.park(reply);
                let mut job = Job::to_name(name, payload, Some(token));
                job.served_from = Some(kept.path);
                self.send_direct(job);
            }
            FileTo::Room(room) => {
                self.room_send_payload(room, Payload::File(offer), Some(kept.path), reply)
            }
        }
    }

    /// The records to write with a message `id` that offers `offer` to `audience`.
    pub(crate) fn put_served(
        batch: &mut StateBatch,
        id: MessageId,
        offer: &FileOffer,
        audience: Audience,
        path: &Path,
    ) {
        let served = Served {
            message: id,
            offer: offer.clone(),
            audience,
            path: path.to_string_lossy().into_owned(),
        };
        batch
            .put(StateKey::Served(offer.transfer), &served)
            .put(StateKey::FileSent(id), &offer.transfer);
    }

    fn may_serve(&self, peer: &PeerId, transfer: TransferId) -> Result<Served, String> {
        let served = (self.store.get::<Served>(StateKey::Served(transfer)))
            .map_err(|err| format!("cannot read the store: {err}"))?;
        let rooms = &self.state.rooms;
        let is_member = |room: &RoomId, peer: &PeerId| {
            identity_of(peer).is_some_and(|key| rooms.has_member(room, &key))
        };
        may_serve(served.as_ref(), peer, is_member, rooms.roster())
            .map_err(|refused| refused.to_string())?;
        served.ok_or_else(|| transfers::Refused::Unknown.to_string())
    }

    /// Carries out what the transfers decided.
    pub(crate) fn drive_files(&mut self) {
        let mut fetched = false;
        while let Some(output) = self.state.poll_file_output(now_ms(), &mut OsRng) {
            match output {
                Output::Save { file, record } => self.save_transfer(file, &record),
                Output::Fetch {
                    file,
                    offer,
                    peer,
                    from_chunk,
                } => {
                    fetched = true;
                    let partial = self.file_io.partial_of(&file);
                    let control = self.file_io.control.clone();
                    let internal = self.internal_tx.clone();
                    let task = tokio::spawn(streams::fetch_task(
                        control, peer, file, offer, from_chunk, partial, internal,
                    ));
                    self.file_io.fetches.insert(file, task.abort_handle());
                }
                Output::StopFetch { file } => {
                    self.file_io.hashed.remove(&file);
                    if let Some(task) = self.file_io.fetches.remove(&file) {
                        task.abort();
                    }
                }
                Output::Check { file, sha256 } => {
                    let partial = self.file_io.partial_of(&file);
                    // Hashed as it was fetched, or (after a restart) read again.
                    let hashed = self.file_io.hashed.remove(&file);
                    self.off_actor(move || {
                        let hash = hashed.map_or_else(|| file_io::hash_file(&partial), Ok);
                        let matches = hash
                            .map(|hash| hash == sha256)
                            .map_err(|err| err.to_string());
                        FileDone::Checked { file, matches }
                    });
                }
                Output::Move { file, name } => {
                    let partial = self.file_io.partial_of(&file);
                    let dir = self.file_io.download.clone();
                    self.off_actor(move || {
                        let path = file_io::move_into_place(&partial, &dir, &name)
                            .map(|path| path.to_string_lossy().into_owned())
                            .map_err(|err| err.to_string());
                        FileDone::Moved { file, path }
                    });
                }
                Output::Discard { file } => {
                    self.file_io.hashed.remove(&file);
                    let partial = self.file_io.partial_of(&file);
                    if let Err(err) = std::fs::remove_file(&partial)
                        && err.kind() != std::io::ErrorKind::NotFound
                    {
                        tracing::warn!("cannot remove {}: {err}", partial.display());
                    }
                }
                Output::Decline {
                    file,
                    sender,
                    reason,
                } => {
                    let payload = Payload::FileDeclined { file, reason };
                    self.send_direct(Job::to_key(sender, payload));
                }
                Output::Event(event) => self.emit_file_event(event),
            }
        }
        // The delivery planner was asked to reach the sources fetched from.
        if fetched {
            self.drive_delivery();
        }
    }

    /// The recipient of a file we offered will not fetch it: whoever waits for it hears why.
    pub(crate) fn file_declined(&mut self, from: VerifyingKey, file: MessageId, reason: String) {
        let transfer = self.store.get::<TransferId>(StateKey::FileSent(file));
        let served = transfer
            .ok()
            .flatten()
            .and_then(|transfer| self.store.get::<Served>(StateKey::Served(transfer)).ok()?);
        let Some(served) = served.filter(|served| transfers::may_decline(served, &from)) else {
            return;
        };
        let name = self
            .name_of_key(&from)
            .unwrap_or_else(|| super::direct::short_key(&from));
        let reason = format!(
            "{name} will not fetch {}: {}",
            served.offer.name,
            crate::printable::printable_line(&reason)
        );
        self.emit(rpc::Event::FileFailed {
            id: file.to_hex(),
            reason,
        });
    }

    /// Runs `work` on a blocking thread; what it returns comes back to the actor.
    fn off_actor(&self, work: impl FnOnce() -> FileDone + Send + 'static) {
        let internal = self.internal_tx.clone();
        tokio::task::spawn_blocking(move || {
            let _ = internal.blocking_send(Internal::File(work()));
        });
    }

    fn save_transfer(&mut self, file: MessageId, record: &Incoming) {
        let mut batch = StateBatch::default();
        batch.put(StateKey::FileIn(file), record);
        if matches!(record.status, Status::Done { .. }) {
            let transfer = record.offer.transfer;
            let taken = (self.store.get::<Served>(StateKey::Served(transfer)))
                .ok()
                .flatten();
            if let Some(served) = transfers::served_on(file, record, taken.as_ref()) {
                batch.put(StateKey::Served(transfer), &served);
            }
        }
        if let Err(err) = self.store.apply(&batch) {
            tracing::error!("cannot store the transfer of {file}: {err}");
        }
    }

    fn emit_file_event(&mut self, event: FileEvent) {
        let event = match event {
            FileEvent::Offer {
                file,
                sender,
                room,
                name,
                size,
                accepted,
            } => {
                let from = VerifyingKey::from_bytes(&sender).ok();
                let from = from.map(|key| {
                    self.name_of_key(&key)
                        .unwrap_or_else(|| super::direct::short_key(&key))
                });
                let conversation = match room.and_then(|room| self.state.rooms.room(&room)) {
                    Some(room) => format!("#{}", room.name),
                    None => from.clone().unwrap_or_default(),
                };
                rpc::Event::FileOffer {
                    id: file.to_hex(),
                    conversation,
                    from: from.unwrap_or_default(),
                    name,
                    size,
                    accepted,
                }
            }
            FileEvent::Progress { file, bytes, size } => rpc::Event::FileProgress {
                id: file.to_hex(),
                direction: "receiving",
                bytes,
                size,
                via: self.fetched_via(&file),
            },
            FileEvent::Done { file, path } => rpc::Event::FileDone {
                id: file.to_hex(),
                direction: "receiving",
                path: Some(path),
            },
            FileEvent::Failed { file, reason } => rpc::Event::FileFailed {
                id: file.to_hex(),
                reason,
            },
        };
        self.emit(event);
    }

    /// `file.accept` (fetch a file that waits for the user, or one that failed, again) or
    /// `file.reject` (refuse it, or stop fetching it).
    pub(crate) fn decide_file(&mut self, id: MessageId, accept: bool, reply: Reply) {
        let record = match self.stored_transfer(&id) {
            Ok(record) => record,
            Err(err) => return drop(reply.send(Err(err))),
        };
        let input = if accept {
            let free_space = self.file_io.free_space();
            Input::Accept {
                file: id,
                record,
                free_space,
            }
        } else {
            Input::Reject { file: id, record }
        };
        let result = self.state.files.handle(input, now_ms());
        self.drive_files();
        let result = result
            .map_err(|err| RpcError::failed(err.to_string()))
            .and_then(|()| self.file_info(&id));
        self.answer_when_durable(reply, result);
    }

    fn stored_transfer(&self, id: &MessageId) -> Result<Incoming, RpcError> {
        if let Some(record) = self.state.files.under_way(id) {
            return Ok(record.clone());
        }
        match self.store.get::<Incoming>(StateKey::FileIn(*id)) {
            Ok(Some(record)) => Ok(record),
            Ok(None) => Err(RpcError::failed(format!("no file offered to us as {id}"))),
            Err(err) => Err(RpcError::failed(err.to_string())),
        }
    }

    /// How the peer `file` is being fetched from is connected: `direct` or `relayed`.
    fn fetched_via(&self, file: &MessageId) -> Option<&'static str> {
        let source = self.state.files.source(file)?;
        self.connection_kind(&source).map(|(kind, _)| kind)
    }

    /// `file.info`: one file, as `files` lists it.
    pub(crate) fn file_info(&self, id: &MessageId) -> Result<Value, RpcError> {
        let why_waiting = self.state.files.why_waiting(id).map(str::to_owned);
        let via = self.fetched_via(id);
        let under_way = self.state.files.under_way(id).cloned();
        let mut info = file_json(&self.store, id, under_way)
            .ok_or_else(|| RpcError::failed(format!("no file under the id {id}")))?;
        if let Some(why) = why_waiting {
            info["waiting"] = Value::from(why);
        }
        if let Some(via) = via {
            info["via"] = Value::from(via);
        }
        Ok(info)
    }
}

/// What the history and `files` show of message `id`'s file (`None`: not a file message).
/// `under_way` is the machine's fresher record of a transfer in progress.
pub(crate) fn file_json(
    store: &Store,
    id: &MessageId,
    under_way: Option<Incoming>,
) -> Option<Value> {
    let incoming = under_way.or_else(|| store.get::<Incoming>(StateKey::FileIn(*id)).ok()?);
    if let Some(record) = incoming {
        let (status, path, reason) = match &record.status {
            Status::Offered => ("offered", None, None),
            Status::Fetching => ("fetching", None, None),
            Status::Checking => ("checking", None, None),
            Status::Done { path } => ("done", Some(path.clone()), None),
            Status::Rejected => ("rejected", None, None),
            Status::Failed { reason } => ("failed", None, Some(reason.clone())),
        };
        let mut info = offer_json(id, &record.offer, "receiving", status);
        info["bytes"] = record.bytes_done().into();
        info["path"] = path.into();
        if let Some(reason) = reason {
            info["reason"] = reason.into();
        }
        return Some(info);
    }
    let transfer = store.get::<TransferId>(StateKey::FileSent(*id)).ok()??;
    let served = store.get::<Served>(StateKey::Served(transfer)).ok()??;
    let mut info = offer_json(id, &served.offer, "sending", "offered");
    info["path"] = served.path.into();
    Some(info)
}

fn offer_json(id: &MessageId, offer: &FileOffer, direction: &str, status: &str) -> Value {
    json!({
        "id": id.to_hex(),
        "name": offer.name,
        "size": offer.size,
        "mime": offer.mime,
        "sha256": hex::encode(offer.sha256),
        "direction": direction,
        "status": status,
    })
}

/// Every file offered to us or by us, newest first.
pub(crate) fn list_files(
    store: &Store,
    under_way: impl Fn(&MessageId) -> Option<Incoming>,
) -> Vec<Value> {
    let ids = |namespace| by_message::<serde::de::IgnoredAny>(store, namespace).map(|(id, _)| id);
    let any = MessageId([0; 32]);
    let mut files: Vec<(u64, Value)> = ids(StateKey::FileIn(any))
        .chain(ids(StateKey::FileSent(any)))
        .filter_map(|id| {
            let mut info = file_json(store, &id, under_way(&id))?;
            let at = store.entry(&id).ok().flatten().map_or(0, |e| e.sent_at_ms);
            info["sent_at"] = at.into();
            Some((at, info))
        })
        .collect();
    files.sort_by_key(|(at, _)| std::cmp::Reverse(*at));
    files.into_iter().map(|(_, info)| info).collect()
}
