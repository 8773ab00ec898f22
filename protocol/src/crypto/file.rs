//! Files: sealed in chunks under a key of their own.
//!
//! A file is offered in an ordinary end-to-end encrypted message ([`crate::wire::FileOffer`]):
//! its name, size, SHA-256 and a fresh random [`FileKey`]. Its bytes then travel as chunks of
//! [`CHUNK_LEN`] (the last one shorter), each sealed with ChaCha20-Poly1305 under that key. The
//! nonce is the chunk's index (the key seals one file only, so no nonce repeats), and the
//! associated data binds the chunk to the file's hash, size and index: a chunk cannot be
//! swapped, moved or cut short without [`open_chunk`] refusing it, and a file cut short has
//! chunks missing. The receiver checks the whole hash at the end as well.

use rand_core::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, ZeroizeOnDrop};

use super::CryptoError;
use super::primitives::{aead_open, aead_seal};

/// Plaintext bytes per chunk (the last chunk of a file holds what is left).
pub const CHUNK_LEN: usize = 64 * 1024;
/// The AEAD tag each sealed chunk carries beyond its plaintext.
pub const TAG_LEN: usize = 16;

/// A file's own key: random, used for that file only, handed over in its offer.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
pub struct FileKey([u8; 32]);

impl FileKey {
    pub fn random(rng: &mut (impl CryptoRng + RngCore)) -> Self {
        let mut key = Self([0; 32]);
        rng.fill_bytes(&mut key.0);
        key
    }

    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }
}

impl std::fmt::Debug for FileKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FileKey(<redacted>)")
    }
}

/// What a file's chunks are bound to: its hash and size (from the offer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileShape {
    pub sha256: [u8; 32],
    pub size: u64,
}

impl FileShape {
    /// How many chunks the file has (an empty file has one, empty).
    pub fn chunks(&self) -> u64 {
        self.size.div_ceil(CHUNK_LEN as u64).max(1)
    }

    /// The plaintext length of chunk `index`, or `None` past the end.
    pub fn chunk_len(&self, index: u64) -> Option<usize> {
        let chunks = self.chunks();
        if index.checked_add(1)? < chunks {
            Some(CHUNK_LEN)
        } else if index + 1 == chunks {
            Some((self.size - index * CHUNK_LEN as u64) as usize)
        } else {
            None
        }
    }

    /// Where chunk `index` starts in the file.
    pub fn offset(index: u64) -> u64 {
        index.saturating_mul(CHUNK_LEN as u64)
    }

    fn aad(&self, index: u64) -> [u8; 64] {
        let mut aad = [0; 64];
        aad[..16].copy_from_slice(b"palaver file v1\0");
        aad[16..48].copy_from_slice(&self.sha256);
        aad[48..56].copy_from_slice(&self.size.to_le_bytes());
        aad[56..].copy_from_slice(&index.to_le_bytes());
        aad
    }
}

fn nonce(index: u64) -> [u8; 12] {
    let mut nonce = [0; 12];
    nonce[..8].copy_from_slice(&index.to_le_bytes());
    nonce
}

/// Seals chunk `index` of the file `shape` describes. `plaintext` must be that chunk's bytes
/// (its length is checked).
pub fn seal_chunk(
    key: &FileKey,
    shape: &FileShape,
    index: u64,
    plaintext: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    if shape.chunk_len(index) != Some(plaintext.len()) {
        return Err(CryptoError::NotAChunk);
    }
    aead_seal(&key.0, &nonce(index), &shape.aad(index), plaintext)
}

/// Opens chunk `index`: its bytes, only if it is that chunk of that file, whole.
pub fn open_chunk(
    key: &FileKey,
    shape: &FileShape,
    index: u64,
    sealed: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    let expected = shape.chunk_len(index).ok_or(CryptoError::NotAChunk)?;
    if sealed.len() != expected + TAG_LEN {
        return Err(CryptoError::NotAChunk);
    }
    aead_open(&key.0, &nonce(index), &shape.aad(index), sealed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    fn shape(size: u64) -> FileShape {
        FileShape {
            sha256: [7; 32],
            size,
        }
    }

    #[test]
    fn a_file_splits_into_full_chunks_and_a_shorter_last_one() {
        assert_eq!(shape(0).chunks(), 1);
        assert_eq!(shape(0).chunk_len(0), Some(0));
        let size = 2 * CHUNK_LEN as u64 + 5;
        assert_eq!(shape(size).chunks(), 3);
        assert_eq!(shape(size).chunk_len(1), Some(CHUNK_LEN));
        assert_eq!(shape(size).chunk_len(2), Some(5));
        assert_eq!(shape(size).chunk_len(3), None);
        // Any index a peer names is answered, not overflowed.
        assert_eq!(shape(size).chunk_len(u64::MAX), None);
        assert_eq!(FileShape::offset(u64::MAX), u64::MAX);
        assert_eq!(shape(CHUNK_LEN as u64).chunks(), 1);
        assert_eq!(shape(CHUNK_LEN as u64).chunk_len(0), Some(CHUNK_LEN));
    }

    #[test]
    fn a_chunk_opens_only_as_itself() {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let key = FileKey::random(&mut rng);
        let file = shape(CHUNK_LEN as u64 + 3);
        let first = vec![1; CHUNK_LEN];
        let sealed = seal_chunk(&key, &file, 0, &first).unwrap();
        assert_eq!(open_chunk(&key, &file, 0, &sealed).unwrap(), first);
        let last = seal_chunk(&key, &file, 1, &[2, 3, 4]).unwrap();
        assert_eq!(open_chunk(&key, &file, 1, &last).unwrap(), [2, 3, 4]);
        // Moved, of another file, under another key, tampered, cut short, or past the end.
        assert!(open_chunk(&key, &file, 1, &sealed).is_err());
        let other = FileShape {
            sha256: [8; 32],
            ..file
        };
        assert!(open_chunk(&key, &other, 1, &last).is_err());
        let bigger = shape(CHUNK_LEN as u64 + 4);
        assert!(open_chunk(&key, &bigger, 0, &sealed).is_err());
        assert!(open_chunk(&FileKey::random(&mut rng), &file, 1, &last).is_err());
        let mut tampered = last.clone();
        tampered[0] ^= 1;
        assert_eq!(
            open_chunk(&key, &file, 1, &tampered),
            Err(CryptoError::Decrypt)
        );
        assert!(open_chunk(&key, &file, 1, &last[..last.len() - 1]).is_err());
        assert!(open_chunk(&key, &file, 2, &last).is_err());
        // Sealing checks the length too.
        assert!(seal_chunk(&key, &file, 1, &[1, 2]).is_err());
    }
}
