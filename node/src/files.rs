//! File transfers' I/O, for the daemon to drive ([`palaver_protocol::node::files`] decides):
//! both ends of the `/palaver/file/1` stream, the copy kept of a file we offer, the partial
//! file a fetch writes, the whole-file check and the move into place.
//!
//! The stream's frames are [`transport::length_prefixed`] (a 4-byte big-endian length and a
//! codec frame), each at most [`MAX_FILE_FRAME_LEN`]. Memory stays at about 1 MiB per transfer
//! each way (the [`AHEAD`] chunks in flight between the disk thread and the stream) whatever the
//! file's size.

use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};

use futures::{AsyncRead, AsyncWrite, AsyncWriteExt as _};
use palaver_protocol::crypto::file::{CHUNK_LEN, FileKey, FileShape, open_chunk, seal_chunk};
use palaver_protocol::wire::file::MAX_FILE_FRAME_LEN;
use palaver_protocol::wire::{FileFetch, FileFrame, FileOffer};
use palaver_rendezvous::transport;
use serde::{Serialize, de::DeserializeOwned};
use sha2::{Digest, Sha256};

/// A fetch makes what it wrote durable, and reports it, every this many chunks (4 MiB; and at
/// the end): a crash redoes at most that much.
pub const SYNC_EVERY: u64 = 64;
/// A peer that sends no frame for this long has stalled: the transfer ends (and is resumed).
pub const FRAME_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Why a transfer's I/O stopped.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("bad frame: {0}")]
    Frame(String),
    #[error("the peer refused: {0}")]
    Refused(String),
    #[error("chunk {0} is not a chunk of this file (corrupt or tampered)")]
    BadChunk(u64),
    #[error("expected chunk {expected}, got chunk {got}")]
    OutOfOrder { expected: u64, got: u64 },
    #[error("the peer ended the transfer after {got} of {chunks} chunks")]
    EndedEarly { got: u64, chunks: u64 },
    #[error("the file we offered changed or went away: {0}")]
    SourceChanged(String),
    #[error("the peer stalled (nothing moved for {}s)", FRAME_TIMEOUT.as_secs())]
    Stalled,
}

/// `value` as it goes on the stream (see [`transport::length_prefixed`]).
fn frame_bytes<T: Serialize>(value: &T) -> Result<Vec<u8>, TransferError> {
    transport::length_prefixed(value, MAX_FILE_FRAME_LEN).map_err(frame_error)
}

pub async fn write_frame<W: AsyncWrite + Unpin, T: Serialize>(
    writer: &mut W,
    value: &T,
) -> Result<(), TransferError> {
    writer.write_all(&frame_bytes(value)?).await?;
    Ok(())
}

/// Reads one frame, refusing one over [`MAX_FILE_FRAME_LEN`] before reading it.
pub async fn read_frame<R: AsyncRead + Unpin, T: DeserializeOwned>(
    reader: &mut R,
) -> Result<T, TransferError> {
    transport::read_length_prefixed(reader, MAX_FILE_FRAME_LEN)
        .await
        .map_err(frame_error)?
        .ok_or_else(|| TransferError::Io(std::io::ErrorKind::UnexpectedEof.into()))
}

/// A frame that was too large or did not decode is the frame's fault; the rest is I/O.
fn frame_error(err: std::io::Error) -> TransferError {
    match err.kind() {
        std::io::ErrorKind::InvalidData | std::io::ErrorKind::InvalidInput => {
            TransferError::Frame(err.to_string())
        }
        _ => TransferError::Io(err),
    }
}

/// Whichever error ended a pipeline's blocking half (a panic there is reported, not resumed).
fn joined<T>(result: Result<T, tokio::task::JoinError>) -> Result<T, TransferError> {
    result.map_err(|err| TransferError::Io(std::io::Error::other(err.to_string())))
}

/// Serves `offer`'s chunks from `path` (a file we hold whole) from `from_chunk` on, then
/// [`FileFrame::End`], calling `sent(through)` after each chunk. A file that is no longer the
/// size offered is refused.
///
/// Reading and sealing run on a blocking thread of their own, [`AHEAD`] frames in front of
/// the stream, so the disk, the chunk AEAD and the connection's own encryption overlap.
pub async fn serve<W: AsyncWrite + Unpin>(
    writer: &mut W,
    path: &Path,
    offer: &FileOffer,
    from_chunk: u64,
    mut sent: impl FnMut(u64),
) -> Result<(), TransferError> {
    let shape = offer.shape();
    let source = path.to_owned();
    let opened = tokio::task::spawn_blocking(move || {
        std::fs::File::open(&source).and_then(|file| Ok((file.metadata()?.len(), file)))
    })
    .await
    .unwrap_or_else(|join| Err(std::io::Error::other(join.to_string())));
    let file = match opened {
        Ok((size, file)) if size == offer.size => file,
        Ok((size, _)) => {
            let reason = format!("{} is {size} bytes, not {}", path.display(), offer.size);
            return refuse(writer, TransferError::SourceChanged(reason)).await;
        }
        Err(err) => return refuse(writer, TransferError::SourceChanged(err.to_string())).await,
    };
    let (frames_in, mut frames) = tokio::sync::mpsc::channel(AHEAD);
    let key = offer.key.clone();
    let sealing = tokio::task::spawn_blocking(move || {
        seal_chunks(file, &key, &shape, from_chunk, &frames_in);
    });
    for index in from_chunk..shape.chunks() {
        let frame = match frames.recv().await {
            Some(frame) => frame?,
            None => {
                let early = || TransferError::Frame("the sealing thread ended early".into());
                return Err(joined(sealing.await).err().unwrap_or_else(early));
            }
        };
        // A fetcher that stops reading must not hold its slot for ever.
        tokio::time::timeout(FRAME_TIMEOUT, writer.write_all(&frame))
            .await
            .map_err(|_| TransferError::Stalled)??;
        sent(index + 1);
    }
    let end = async {
        write_frame(writer, &FileFrame::End).await?;
        writer.flush().await?;
        Ok::<_, TransferError>(())
    };
    tokio::time::timeout(FRAME_TIMEOUT, end)
        .await
        .map_err(|_| TransferError::Stalled)?
}

/// Frames a serve keeps sealed ahead of its stream (and a fetch received ahead of its disk):
/// 1 MiB each way, so that the stream goes on while the disk syncs.
const AHEAD: usize = 16;

/// The blocking half of [`serve`]: reads, seals and frames each chunk from `from_chunk` on,
/// stopping at the first error (handed on) or once the stream's half has gone.
fn seal_chunks(
    mut file: std::fs::File,
    key: &FileKey,
    shape: &FileShape,
    from_chunk: u64,
    frames: &tokio::sync::mpsc::Sender<Result<Vec<u8>, TransferError>>,
) {
    let mut chunk = Vec::with_capacity(CHUNK_LEN);
    let mut sealed = |index: u64, at_start: bool| {
        if at_start {
            file.seek(SeekFrom::Start(FileShape::offset(index)))?;
        }
        chunk.resize(shape.chunk_len(index).unwrap_or(0), 0);
        file.read_exact(&mut chunk)?;
        let sealed = seal_chunk(key, shape, index, &chunk)
            .map_err(|err| TransferError::Frame(err.to_string()))?;
        frame_bytes(&FileFrame::Chunk { index, sealed })
    };
    for index in from_chunk..shape.chunks() {
        let frame = sealed(index, index == from_chunk);
        let failed = frame.is_err();
        if frames.blocking_send(frame).is_err() || failed {
            return;
        }
    }
}

/// Tells the fetcher why not, and reports the same.
pub async fn refuse<W: AsyncWrite + Unpin>(
    writer: &mut W,
    why: TransferError,
) -> Result<(), TransferError> {
    let reason = why.to_string();
    write_frame(writer, &FileFrame::Refused { reason }).await?;
    writer.flush().await?;
    Err(why)
}

/// Fetches `offer`'s chunks from `from_chunk` on into `partial` (created if missing): asks
/// with a [`FileFetch`], opens each chunk as it comes (in order, each checked to be that chunk
/// of that file), writes it at its place, and every [`SYNC_EVERY`] chunks makes the file
/// durable and only then calls `verified(through)`. Once every chunk is in: the SHA-256 of
/// the whole file, hashed as it was written (on a resume, the part already there read first),
/// so the whole-file check need not read it again.
///
/// The stream is read here; opening, hashing and writing run on a blocking thread of their
/// own, up to [`AHEAD`] chunks behind.
pub async fn fetch<R, W>(
    reader: &mut R,
    writer: &mut W,
    offer: &FileOffer,
    from_chunk: u64,
    partial: &Path,
    verified: impl FnMut(u64) + Send + 'static,
) -> Result<[u8; 32], TransferError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let shape = offer.shape();
    let held = {
        let partial = partial.to_owned();
        tokio::task::spawn_blocking(move || {
            held_part(&partial, FileShape::offset(from_chunk).min(shape.size))
        })
    };
    let (file, hasher) = joined(held.await)??;
    // Asked only now: the peer's chunks must not wait while what is here is read back.
    let request = FileFetch {
        transfer: offer.transfer,
        from_chunk,
    };
    write_frame(writer, &request).await?;
    writer.flush().await?;
    let (chunks_in, chunks) = tokio::sync::mpsc::channel(AHEAD);
    let writing = {
        let key = offer.key.clone();
        tokio::task::spawn_blocking(move || {
            write_chunks(file, hasher, &key, &shape, from_chunk, chunks, verified)
        })
    };
    let received = async {
        let mut next = from_chunk;
        loop {
            let frame = tokio::time::timeout(FRAME_TIMEOUT, read_frame::<_, FileFrame>(reader));
            match frame.await.map_err(|_| TransferError::Stalled)?? {
                FileFrame::Chunk { index, sealed } => {
                    if index != next {
                        let (expected, got) = (next, index);
                        return Err(TransferError::OutOfOrder { expected, got });
                    }
                    next += 1;
                    if chunks_in.send((index, sealed)).await.is_err() {
                        // The writing half stopped: its error says why.
                        return Ok(());
                    }
                }
                FileFrame::End if next >= shape.chunks() => return Ok(()),
                FileFrame::End => {
                    let (got, chunks) = (next, shape.chunks());
                    return Err(TransferError::EndedEarly { got, chunks });
                }
                FileFrame::Refused { reason } => return Err(TransferError::Refused(reason)),
            }
        }
    };
    let received = received.await;
    drop(chunks_in);
    match (received, joined(writing.await)?) {
        // A bad chunk or the disk, whatever the stream did meanwhile.
        (_, Err(err)) | (Err(err), _) => Err(err),
        (Ok(()), Ok(Some(sha256))) => Ok(sha256),
        (Ok(()), Ok(None)) => Err(TransferError::Frame(
            "the file's writer stopped before the last chunk".into(),
        )),
    }
}

/// The part of `partial` already verified (its first `len` bytes), hashed: the file, left at
/// their end for the rest to follow, and the hasher.
fn held_part(partial: &Path, len: u64) -> Result<(std::fs::File, Sha256), TransferError> {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .read(true)
        .write(true)
        .truncate(false)
        .open(partial)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0; CHUNK_LEN];
    let mut held = (&mut file).take(len);
    loop {
        match held.read(&mut buffer)? {
            0 => break,
            n => hasher.update(&buffer[..n]),
        }
    }
    if file.stream_position()? != len {
        let lost = format!("{} is shorter than the chunks verified", partial.display());
        return Err(TransferError::Io(std::io::Error::other(lost)));
    }
    Ok((file, hasher))
}

/// The blocking half of [`fetch`]: opens, writes and hashes each chunk the stream's half hands
/// over, syncing every [`SYNC_EVERY`]; the whole file's hash once the last is in and the
/// stream's half is done (`None` if it stopped short).
fn write_chunks(
    mut file: std::fs::File,
    mut hasher: Sha256,
    key: &FileKey,
    shape: &FileShape,
    from_chunk: u64,
    mut chunks: tokio::sync::mpsc::Receiver<(u64, Vec<u8>)>,
    mut verified: impl FnMut(u64),
) -> Result<Option<[u8; 32]>, TransferError> {
    let (mut next, mut synced) = (from_chunk, from_chunk);
    while let Some((index, sealed)) = chunks.blocking_recv() {
        let plain =
            open_chunk(key, shape, index, &sealed).map_err(|_| TransferError::BadChunk(index))?;
        file.write_all(&plain)?;
        hasher.update(&plain);
        next = index + 1;
        if next - synced >= SYNC_EVERY || next == shape.chunks() {
            file.sync_data()?;
            synced = next;
            verified(next);
        }
    }
    // Short of the last chunk only if the stream's half stopped early (it says why).
    Ok((next == shape.chunks()).then(|| hasher.finalize().into()))
}

/// SHA-256 of the file at `path`, read in chunks.
pub fn hash_file(path: &Path) -> std::io::Result<[u8; 32]> {
    let (sha256, _) = hash_reading(std::fs::File::open(path)?, |_| Ok(()))?;
    Ok(sha256)
}

/// Reads `input` to its end in chunks, handing each to `also`: its SHA-256 and length.
fn hash_reading(
    mut input: impl std::io::Read,
    mut also: impl FnMut(&[u8]) -> std::io::Result<()>,
) -> std::io::Result<([u8; 32], u64)> {
    let mut hasher = Sha256::new();
    let mut buffer = vec![0; CHUNK_LEN];
    let mut len = 0u64;
    loop {
        match input.read(&mut buffer)? {
            0 => return Ok((hasher.finalize().into(), len)),
            n => {
                hasher.update(&buffer[..n]);
                also(&buffer[..n])?;
                len += n as u64;
            }
        }
    }
}

/// What a file to offer is, once copied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kept {
    pub sha256: [u8; 32],
    pub size: u64,
    /// The copy served from (the user may move or change the original meanwhile).
    pub path: PathBuf,
}

/// Copies `source` into `dir` while hashing it (at most `max_size` bytes), under its hash: the
/// copy is what is served, so the original may change or go once offered.
pub fn keep_copy(source: &Path, dir: &Path, max_size: u64) -> std::io::Result<Kept> {
    let input = std::fs::File::open(source)
        .map_err(|err| std::io::Error::new(err.kind(), format!("{}: {err}", source.display())))?;
    let metadata = input.metadata()?;
    let size = metadata.len();
    if !metadata.is_file() {
        return Err(std::io::Error::other(format!(
            "{} is not a file",
            source.display()
        )));
    }
    if size > max_size {
        return Err(std::io::Error::other(format!(
            "{} is {size} bytes, over the {max_size}-byte limit",
            source.display()
        )));
    }
    std::fs::create_dir_all(dir)?;
    let mut copy = tempfile::NamedTempFile::new_in(dir)?;
    let (sha256, copied) = hash_reading(input, |bytes| copy.write_all(bytes))?;
    if copied != size {
        return Err(std::io::Error::other(format!(
            "{} changed while it was read",
            source.display()
        )));
    }
    copy.as_file().sync_all()?;
    let path = dir.join(hex::encode(sha256));
    copy.persist(&path).map_err(|err| err.error)?;
    Ok(Kept { sha256, size, path })
}

/// Moves the checked `partial` into `dir` as `name`, or `name (1)`, `name (2)`… — never over an
/// existing file. Returns where it went. Across file systems (or on one without hard links) by
/// way of a whole copy in `dir`, so that a crash never leaves a truncated file under the name.
pub fn move_into_place(partial: &Path, dir: &Path, name: &str) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let (stem, extension) = match name.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() => (stem, format!(".{ext}")),
        _ => (name, String::new()),
    };
    let candidate = |n: u32| match n {
        0 => dir.join(name),
        n => dir.join(format!("{stem} ({n}){extension}")),
    };
    const NAMES: u32 = 10_000;
    let mut n = 0;
    // A hard link fails if the name is taken: no check-then-rename race.
    let linked = loop {
        if n == NAMES {
            break None;
        }
        match std::fs::hard_link(partial, candidate(n)) {
            Ok(()) => break Some(Ok(())),
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => n += 1,
            Err(err) => break Some(Err(err)),
        }
    };
    match linked {
        Some(Ok(())) => {
            std::fs::remove_file(partial)?;
            return Ok(candidate(n));
        }
        // Another file system, or no hard links: copy, then place the copy without clobbering.
        Some(Err(_)) => {
            let mut copy = tempfile::NamedTempFile::new_in(dir)?;
            std::io::copy(&mut std::fs::File::open(partial)?, &mut copy)?;
            copy.as_file().sync_all()?;
            while n < NAMES {
                match copy.persist_noclobber(candidate(n)) {
                    Ok(_) => {
                        std::fs::remove_file(partial)?;
                        return Ok(candidate(n));
                    }
                    Err(err) if err.error.kind() == std::io::ErrorKind::AlreadyExists => {
                        copy = err.file;
                        n += 1;
                    }
                    Err(err) => return Err(err.error),
                }
            }
        }
        None => {}
    }
    Err(std::io::Error::other(format!(
        "no free name for {name} in {}",
        dir.display()
    )))
}

/// The bytes free for us on the file system that holds `dir`.
pub fn free_space(dir: &Path) -> std::io::Result<u64> {
    let stat = rustix::fs::statvfs(dir).map_err(std::io::Error::from)?;
    Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
}

#[cfg(test)]
mod tests;
