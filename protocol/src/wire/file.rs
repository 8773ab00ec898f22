//! Files on the wire: the offer inside an encrypted message, and the fetch of its chunks over a
//! stream of their own (`/palaver/file/1`) from a peer that has the file.
//!
//! The fetcher opens the stream and writes one [`FileFetch`]; the peer answers with
//! [`FileFrame`]s — the chunks in order from the one asked for, then [`FileFrame::End`] — or one
//! [`FileFrame::Refused`]. Every frame is length-prefixed and bounded ([`MAX_FILE_FRAME_LEN`]).

use serde::{Deserialize, Serialize};

use super::WireError;
use crate::crypto::file::{CHUNK_LEN, FileKey, FileShape, TAG_LEN};

/// The longest file name an offer may carry, in bytes of UTF-8.
pub const MAX_FILE_NAME_LEN: usize = 255;
/// The longest MIME type an offer may carry.
pub const MAX_MIME_LEN: usize = 127;
/// The largest file sent whole inside its message ([`super::Payload::FileWhole`]); larger ones
/// are fetched.
pub const MAX_WHOLE_FILE_LEN: usize = 48 * 1024;
/// The largest frame on a file stream: one sealed chunk and its header.
pub const MAX_FILE_FRAME_LEN: usize = CHUNK_LEN + TAG_LEN + 64;

/// One offer of a file: what a fetch names. Chosen at random by the sender; every member of
/// a room that has the file serves it under the same id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TransferId(pub [u8; 16]);

impl TransferId {
    pub fn random(rng: &mut impl rand_core::CryptoRngCore) -> Self {
        let mut id = [0; 16];
        rng.fill_bytes(&mut id);
        Self(id)
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

/// A file, offered in a message: what the receiver needs to fetch it, open it and check it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileOffer {
    pub transfer: TransferId,
    /// The sender's name for it (a plain name, no path: see [`FileOffer::check`]).
    pub name: String,
    pub size: u64,
    /// A guess from the name's extension, for display.
    pub mime: String,
    pub sha256: [u8; 32],
    pub key: FileKey,
}

impl FileOffer {
    /// What the chunks are bound to.
    pub fn shape(&self) -> FileShape {
        FileShape {
            sha256: self.sha256,
            size: self.size,
        }
    }

    /// An offer a receiver can take: a name that is one plain path component (no separators,
    /// no control characters, not `.` or `..`), within the limits.
    pub fn check(&self) -> Result<(), WireError> {
        let name = &self.name;
        let plain = !name.is_empty()
            && name.len() <= MAX_FILE_NAME_LEN
            && name != "."
            && name != ".."
            && !name
                .chars()
                .any(|c| c == '/' || c == '\\' || c.is_control());
        if !plain {
            return Err(WireError::BadFileOffer("its name is not a plain file name"));
        }
        if self.mime.len() > MAX_MIME_LEN || self.mime.chars().any(char::is_control) {
            return Err(WireError::BadFileOffer("its type is not a plain MIME type"));
        }
        Ok(())
    }

    /// A file sent whole with this offer: within [`MAX_WHOLE_FILE_LEN`], of the size offered
    /// and matching its hash.
    pub fn check_whole(&self, bytes: &[u8]) -> Result<(), WireError> {
        use sha2::Digest as _;
        self.check()?;
        if bytes.len() > MAX_WHOLE_FILE_LEN || bytes.len() as u64 != self.size {
            return Err(WireError::BadFileOffer(
                "the file sent whole is not the size offered",
            ));
        }
        if <[u8; 32]>::from(sha2::Sha256::digest(bytes)) != self.sha256 {
            return Err(WireError::BadFileOffer(
                "the file sent whole does not match its hash",
            ));
        }
        Ok(())
    }

    /// How the offer reads in a conversation's history: `[file] name (size)`.
    pub fn summary(&self) -> String {
        format!("[file] {} ({})", self.name, human_size(self.size))
    }
}

/// A byte count for people: `512 B`, `1.5 KiB`, `20.0 MiB`, `2.0 GiB`.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// "Send me the chunks of the file offered as `transfer`, from `from_chunk` on."
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileFetch {
    pub transfer: TransferId,
    pub from_chunk: u64,
}

/// One frame of the answer to a [`FileFetch`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FileFrame {
    /// Chunk `index`, sealed ([`crate::crypto::file::seal_chunk`]).
    Chunk {
        index: u64,
        #[serde(with = "serde_bytes")]
        sealed: Vec<u8>,
    },
    /// That was the last chunk.
    End,
    /// Not served (not ours to give this peer, or no longer here), and why.
    Refused { reason: String },
}

/// The MIME type a file name suggests (for display only; the receiver never acts on it).
pub fn guess_mime(name: &str) -> &'static str {
    let extension = name
        .rsplit_once('.')
        .map(|(_, ext)| ext.to_ascii_lowercase());
    match extension.as_deref() {
        Some("txt" | "md" | "log") => "text/plain",
        Some("html" | "htm") => "text/html",
        Some("csv") => "text/csv",
        Some("json") => "application/json",
        Some("pdf") => "application/pdf",
        Some("zip") => "application/zip",
        Some("gz" | "tgz") => "application/gzip",
        Some("tar") => "application/x-tar",
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("gif") => "image/gif",
        Some("webp") => "image/webp",
        Some("svg") => "image/svg+xml",
        Some("mp3") => "audio/mpeg",
        Some("ogg" | "opus") => "audio/ogg",
        Some("wav") => "audio/wav",
        Some("mp4") => "video/mp4",
        Some("webm") => "video/webm",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    fn offer(name: &str) -> FileOffer {
        FileOffer {
            transfer: TransferId([3; 16]),
            name: name.into(),
            size: 3,
            mime: guess_mime(name).into(),
            sha256: [1; 32],
            key: FileKey::random(&mut ChaCha20Rng::seed_from_u64(1)),
        }
    }

    #[test]
    fn an_offer_names_one_plain_file() {
        assert_eq!(offer("holiday photo.JPG").mime, "image/jpeg");
        assert_eq!(offer("notes").mime, "application/octet-stream");
        assert!(offer("report.pdf").check().is_ok());
        assert!(offer("ünïcode ✓.txt").check().is_ok());
        for bad in [
            "",
            ".",
            "..",
            "../etc/passwd",
            "a/b",
            "a\\b",
            "bell\u{7}",
            "new\nline",
        ] {
            assert!(offer(bad).check().is_err(), "{bad:?}");
        }
        assert!(offer(&"x".repeat(MAX_FILE_NAME_LEN + 1)).check().is_err());
        let mut odd = offer("a.txt");
        odd.mime = "text/plain\r\nX: y".into();
        assert!(odd.check().is_err());
    }

    #[test]
    fn a_file_sent_whole_must_be_the_file_offered() {
        use sha2::Digest as _;
        let bytes = b"abc".to_vec();
        let mut whole = offer("a.txt");
        whole.sha256 = sha2::Sha256::digest(&bytes).into();
        assert!(whole.check_whole(&bytes).is_ok());
        assert!(whole.check_whole(b"abd").is_err(), "another hash");
        assert!(whole.check_whole(b"abcd").is_err(), "another size");
        let mut large = whole.clone();
        large.size = MAX_WHOLE_FILE_LEN as u64 + 1;
        assert!(large.check_whole(&vec![0; MAX_WHOLE_FILE_LEN + 1]).is_err());
    }

    #[test]
    fn sizes_read_for_people() {
        assert_eq!(human_size(0), "0 B");
        assert_eq!(human_size(1023), "1023 B");
        assert_eq!(human_size(1536), "1.5 KiB");
        assert_eq!(human_size(20 << 20), "20.0 MiB");
        assert_eq!(human_size(u64::MAX), "16.0 EiB");
        assert_eq!(offer("a.txt").summary(), "[file] a.txt (3 B)");
    }

    #[test]
    fn a_full_chunk_frame_fits_the_bound() {
        let frame = FileFrame::Chunk {
            index: u64::MAX,
            sealed: vec![0; CHUNK_LEN + TAG_LEN],
        };
        let encoded = crate::codec::encode(&frame).unwrap();
        assert!(encoded.len() <= MAX_FILE_FRAME_LEN, "{}", encoded.len());
        let back: FileFrame = crate::codec::decode_bounded(&encoded, MAX_FILE_FRAME_LEN).unwrap();
        assert_eq!(back, frame);
    }
}
