//! The file streams' tasks, off the actor: serving the fetches peers open (bounded, each asking
//! the actor whether that peer may have that file), and one fetch of ours.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{AsyncReadExt as _, StreamExt as _};
use libp2p::PeerId;
use palaver_protocol::MessageId;
use palaver_protocol::wire::{FileFetch, FileOffer};
use tokio::sync::{mpsc, oneshot};

use super::{FILE_PROTOCOL, FileDone};
use crate::daemon::Internal;
use crate::files::{self as file_io, TransferError};

/// Peers served at once; a fetch beyond that is refused (and tried again by its fetcher).
const MAX_SERVING: usize = 16;
/// How long opening a stream to a peer (dialing it if need be) may take.
const OPEN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a peer that opened a file stream has to say what it wants.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a serve reports its progress, at most.
const SERVE_PROGRESS_EVERY: Duration = Duration::from_millis(250);

/// Serves the fetches peers open, each in a task of its own, at most [`MAX_SERVING`] at once and
/// [`MAX_SERVING_PER_PEER`] for one peer.
pub(super) async fn accept_fetches(
    mut incoming: libp2p_stream::IncomingStreams,
    internal: mpsc::Sender<Internal>,
) {
    let serving: Arc<Mutex<HashMap<PeerId, usize>>> = Default::default();
    while let Some((peer, stream)) = incoming.next().await {
        let slot = Slot::take(&serving, peer);
        let internal = internal.clone();
        tokio::spawn(async move {
            let (mut reader, mut writer) = stream.split();
            let Some(slot) = slot else {
                let busy = TransferError::Refused("busy serving others; try again".into());
                let _ = file_io::refuse(&mut writer, busy).await;
                return;
            };
            if let Err(err) = serve_one(peer, &mut reader, &mut writer, internal).await {
                tracing::debug!("serving a file to {peer} stopped: {err}");
            }
            drop(slot);
        });
    }
}

/// Fetches one peer is served at once, at most.
const MAX_SERVING_PER_PEER: usize = 4;

/// A serving slot, counted against the total and its peer's share; given back when dropped.
struct Slot {
    serving: Arc<Mutex<HashMap<PeerId, usize>>>,
    peer: PeerId,
}

impl Slot {
    fn take(serving: &Arc<Mutex<HashMap<PeerId, usize>>>, peer: PeerId) -> Option<Self> {
        let mut counts = serving
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let total: usize = counts.values().sum();
        let count = counts.entry(peer).or_default();
        if total >= MAX_SERVING || *count >= MAX_SERVING_PER_PEER {
            return None;
        }
        *count += 1;
        Some(Self {
            serving: serving.clone(),
            peer,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = (self.serving.lock()).unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(count) = counts.get_mut(&self.peer) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.peer);
            }
        }
    }
}

async fn serve_one(
    peer: PeerId,
    reader: &mut (impl futures::AsyncRead + Unpin),
    writer: &mut (impl futures::AsyncWrite + Unpin),
    internal: mpsc::Sender<Internal>,
) -> Result<(), TransferError> {
    let fetch = tokio::time::timeout(REQUEST_TIMEOUT, file_io::read_frame(reader));
    let fetch: FileFetch = fetch.await.map_err(|_| TransferError::Stalled)??;
    let (answer, answered) = oneshot::channel();
    let ask = FileDone::ServeAsk {
        peer,
        transfer: fetch.transfer,
        answer,
    };
    let stopping = || TransferError::Refused("the daemon is stopping".into());
    internal
        .send(Internal::File(ask))
        .await
        .map_err(|_| stopping())?;
    let served = match answered.await.map_err(|_| stopping())? {
        Ok(served) => served,
        Err(reason) => return file_io::refuse(writer, TransferError::Refused(reason)).await,
    };
    let (message, size) = (served.message, served.offer.size);
    let chunks = served.offer.shape().chunks();
    let mut told = tokio::time::Instant::now();
    let progress = |through: u64| {
        if told.elapsed() >= SERVE_PROGRESS_EVERY && through < chunks {
            told = tokio::time::Instant::now();
            let bytes = palaver_protocol::crypto::file::FileShape::offset(through).min(size);
            let report = FileDone::Serving {
                message,
                bytes,
                size,
                done: false,
            };
            // Progress only: one lost to a full queue is made up by the next.
            let _ = internal.try_send(Internal::File(report));
        }
    };
    let path = PathBuf::from(&served.path);
    file_io::serve(writer, &path, &served.offer, fetch.from_chunk, progress).await?;
    let done = FileDone::Serving {
        message,
        bytes: size,
        size,
        done: true,
    };
    let _ = internal.send(Internal::File(done)).await;
    Ok(())
}

/// One fetch of `file` from `peer`: its progress and its end reported to the actor.
pub(super) async fn fetch_task(
    mut control: libp2p_stream::Control,
    peer: PeerId,
    file: MessageId,
    offer: FileOffer,
    from_chunk: u64,
    partial: PathBuf,
    internal: mpsc::Sender<Internal>,
) {
    // Where the fetch has got to, kept by its writing thread (see `file_io::fetch`).
    let through = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(from_chunk));
    let result = async {
        if let Some(dir) = partial.parent() {
            tokio::fs::create_dir_all(dir).await?;
        }
        let stream = tokio::time::timeout(OPEN_TIMEOUT, control.open_stream(peer, FILE_PROTOCOL))
            .await
            .map_err(|_| TransferError::Refused(format!("cannot reach {peer}")))?
            .map_err(|err| TransferError::Refused(format!("cannot reach {peer}: {err}")))?;
        let (mut reader, mut writer) = stream.split();
        let (reached, internal) = (through.clone(), internal.clone());
        let verified = move |now: u64| {
            reached.store(now, std::sync::atomic::Ordering::Relaxed);
            // Progress only: the last count goes with the end, below.
            let report = FileDone::Verified { file, through: now };
            let _ = internal.try_send(Internal::File(report));
        };
        file_io::fetch(
            &mut reader,
            &mut writer,
            &offer,
            from_chunk,
            &partial,
            verified,
        )
        .await
    }
    .await;
    let through = through.load(std::sync::atomic::Ordering::Relaxed);
    let verified = FileDone::Verified { file, through };
    let _ = internal.send(Internal::File(verified)).await;
    let result = result.map_err(|err| err.to_string());
    let _ = internal
        .send(Internal::File(FileDone::Ended { file, result }))
        .await;
}
