//! The identity key file: the 32-byte secret, either in the clear (protected by mode 0600) or sealed
//! with a passphrase — Argon2id stretches the passphrase into a key for ChaCha20-Poly1305, and the
//! Argon2 parameters travel in the file so they can be raised later without breaking old files.
//!
//! Layout: the magic `PALAVER-IDENTITY` then one codec frame holding a [`KeyFile`].

use std::io::Write;
use std::path::Path;

use argon2::{Algorithm, Argon2, Params, Version};
use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use rand_core::CryptoRngCore;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::Identity;
use crate::codec;

const MAGIC: &[u8] = b"PALAVER-IDENTITY";
const MAX_KEY_FILE_LEN: usize = 4096;

/// RFC 9106's second recommended Argon2id setting (64 MiB, 3 passes): a guess at the passphrase
/// costs an attacker that much memory and time. Files sealed with lower costs (19 MiB before)
/// still open: the cost travels in the file.
const DEFAULT_COST: Argon2Cost = Argon2Cost {
    memory_kib: 64 * 1024,
    iterations: 3,
    parallelism: 1,
};
/// Refuse files that would make us allocate or spin absurdly (a crafted file is bad input too).
const MAX_MEMORY_KIB: u32 = 1 << 21;
const MAX_ITERATIONS: u32 = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Argon2Cost {
    memory_kib: u32,
    iterations: u32,
    parallelism: u32,
}

#[derive(Serialize, Deserialize)]
enum KeyFile {
    Plain {
        secret: [u8; 32],
    },
    Sealed {
        cost: Argon2Cost,
        salt: [u8; 16],
        nonce: [u8; 12],
        #[serde(with = "serde_bytes")]
        ciphertext: Vec<u8>,
    },
}

/// Why a key file could not be written or opened.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{0} is not a Palaver identity key file")]
    NotAKeyFile(String),
    #[error("the identity key is encrypted: set PALAVER_PASSPHRASE or pass --passphrase-file")]
    PassphraseRequired,
    #[error("wrong passphrase for the identity key")]
    WrongPassphrase,
    #[error("the key file asks for unreasonable Argon2 parameters")]
    UnreasonableCost,
    #[error("key derivation failed: {0}")]
    Kdf(String),
}

/// Encodes `identity` as key file bytes, sealed under `passphrase` when one is given.
pub fn seal(
    identity: &Identity,
    passphrase: Option<&str>,
    rng: &mut impl CryptoRngCore,
) -> Result<Vec<u8>, KeyFileError> {
    let secret = Zeroizing::new(identity.secret_bytes());
    let file = match passphrase {
        None => KeyFile::Plain { secret: *secret },
        Some(passphrase) => {
            let mut salt = [0u8; 16];
            let mut nonce = [0u8; 12];
            rng.fill_bytes(&mut salt);
            rng.fill_bytes(&mut nonce);
            let key = stretch(passphrase, &salt, DEFAULT_COST)?;
            let ciphertext = ChaCha20Poly1305::new(Key::from_slice(key.as_slice()))
                .encrypt(Nonce::from_slice(&nonce), secret.as_slice())
                .map_err(|_| KeyFileError::Kdf("encryption failed".into()))?;
            KeyFile::Sealed {
                cost: DEFAULT_COST,
                salt,
                nonce,
                ciphertext,
            }
        }
    };
    let mut bytes = MAGIC.to_vec();
    bytes.extend(codec::encode(&file).map_err(|e| KeyFileError::Kdf(e.to_string()))?);
    Ok(bytes)
}

/// Whether key file bytes are sealed under a passphrase (false for anything else).
pub fn is_sealed(bytes: &[u8]) -> bool {
    bytes
        .strip_prefix(MAGIC)
        .and_then(|frame| codec::decode_bounded::<KeyFile>(frame, MAX_KEY_FILE_LEN).ok())
        .is_some_and(|file| matches!(file, KeyFile::Sealed { .. }))
}

/// Opens key file bytes; `what` names the file in errors.
pub fn open(bytes: &[u8], passphrase: Option<&str>, what: &str) -> Result<Identity, KeyFileError> {
    let not_a_key_file = || KeyFileError::NotAKeyFile(what.to_owned());
    let frame = bytes.strip_prefix(MAGIC).ok_or_else(not_a_key_file)?;
    let file: KeyFile =
        codec::decode_bounded(frame, MAX_KEY_FILE_LEN).map_err(|_| not_a_key_file())?;
    match file {
        KeyFile::Plain { secret } => Ok(Identity::from_secret_bytes(&secret)),
        KeyFile::Sealed {
            cost,
            salt,
            nonce,
            ciphertext,
        } => {
            let passphrase = passphrase.ok_or(KeyFileError::PassphraseRequired)?;
            let key = stretch(passphrase, &salt, cost)?;
            let secret = Zeroizing::new(
                ChaCha20Poly1305::new(Key::from_slice(key.as_slice()))
                    .decrypt(Nonce::from_slice(&nonce), ciphertext.as_slice())
                    .map_err(|_| KeyFileError::WrongPassphrase)?,
            );
            let secret: &[u8; 32] = secret.as_slice().try_into().map_err(|_| not_a_key_file())?;
            Ok(Identity::from_secret_bytes(secret))
        }
    }
}

/// Writes a key file with mode 0600, atomically (temporary file, then rename).
pub fn write(path: &Path, bytes: &[u8]) -> Result<(), KeyFileError> {
    let io = |source| KeyFileError::Io {
        path: path.display().to_string(),
        source,
    };
    let tmp = path.with_extension("key.tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&tmp).map_err(io)?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// Reads and opens the key file at `path`.
pub fn read(path: &Path, passphrase: Option<&str>) -> Result<Identity, KeyFileError> {
    let io = |source| KeyFileError::Io {
        path: path.display().to_string(),
        source,
    };
    let len = std::fs::metadata(path).map_err(io)?.len();
    if len > MAX_KEY_FILE_LEN as u64 {
        return Err(KeyFileError::NotAKeyFile(path.display().to_string()));
    }
    let bytes = Zeroizing::new(std::fs::read(path).map_err(io)?);
    open(&bytes, passphrase, &path.display().to_string())
}

fn stretch(
    passphrase: &str,
    salt: &[u8; 16],
    cost: Argon2Cost,
) -> Result<Zeroizing<[u8; 32]>, KeyFileError> {
    if cost.memory_kib > MAX_MEMORY_KIB || cost.iterations > MAX_ITERATIONS || cost.parallelism > 16
    {
        return Err(KeyFileError::UnreasonableCost);
    }
    let params = Params::new(cost.memory_kib, cost.iterations, cost.parallelism, Some(32))
        .map_err(|e| KeyFileError::Kdf(e.to_string()))?;
    let mut key = Zeroizing::new([0u8; 32]);
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password_into(passphrase.as_bytes(), salt, key.as_mut_slice())
        .map_err(|e| KeyFileError::Kdf(e.to_string()))?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::OsRng;

    #[test]
    fn a_plain_key_file_round_trips_and_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("identity.key");
        let alice = Identity::generate(&mut OsRng);
        write(&path, &seal(&alice, None, &mut OsRng).unwrap()).unwrap();
        assert_eq!(read(&path, None).unwrap().public(), alice.public());
        // A passphrase offered for a plain file is simply not needed.
        assert_eq!(read(&path, Some("x")).unwrap().public(), alice.public());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn a_sealed_key_file_opens_only_with_its_passphrase() {
        let alice = Identity::generate(&mut OsRng);
        let bytes = seal(&alice, Some("correct horse"), &mut OsRng).unwrap();
        assert!(
            !bytes.windows(32).any(|w| w == alice.secret_bytes()),
            "secret in the clear"
        );
        assert_eq!(
            open(&bytes, Some("correct horse"), "f").unwrap().public(),
            alice.public()
        );
        assert!(matches!(
            open(&bytes, Some("wrong"), "f"),
            Err(KeyFileError::WrongPassphrase)
        ));
        assert!(matches!(
            open(&bytes, None, "f"),
            Err(KeyFileError::PassphraseRequired)
        ));
        assert!(is_sealed(&bytes));
        assert!(!is_sealed(&seal(&alice, None, &mut OsRng).unwrap()));
        assert!(!is_sealed(b"hello"));
    }

    #[test]
    fn new_files_cost_at_least_64_mib_and_old_cheaper_ones_still_open() {
        let frame = |bytes: &[u8]| -> KeyFile {
            codec::decode(bytes.strip_prefix(MAGIC).unwrap()).unwrap()
        };
        let alice = Identity::generate(&mut OsRng);
        let KeyFile::Sealed { cost, .. } = frame(&seal(&alice, Some("pw"), &mut OsRng).unwrap())
        else {
            panic!("not sealed")
        };
        assert!(
            cost.memory_kib >= 64 * 1024 && cost.iterations >= 3,
            "{cost:?}"
        );
        // A file from before (19 MiB, 2 passes) opens as it did.
        let old = Argon2Cost {
            memory_kib: 19 * 1024,
            iterations: 2,
            parallelism: 1,
        };
        let (salt, nonce) = ([3; 16], [4; 12]);
        let key = stretch("pw", &salt, old).unwrap();
        let ciphertext = ChaCha20Poly1305::new(Key::from_slice(key.as_slice()))
            .encrypt(Nonce::from_slice(&nonce), alice.secret_bytes().as_slice())
            .unwrap();
        let file = KeyFile::Sealed {
            cost: old,
            salt,
            nonce,
            ciphertext,
        };
        let mut bytes = MAGIC.to_vec();
        bytes.extend(codec::encode(&file).unwrap());
        assert_eq!(
            open(&bytes, Some("pw"), "f").unwrap().public(),
            alice.public()
        );
    }

    #[test]
    fn garbage_and_truncated_key_files_are_clear_errors() {
        let alice = Identity::generate(&mut OsRng);
        let bytes = seal(&alice, None, &mut OsRng).unwrap();
        for cut in 0..bytes.len() {
            assert!(matches!(
                open(&bytes[..cut], None, "f"),
                Err(KeyFileError::NotAKeyFile(_))
            ));
        }
        assert!(matches!(
            open(b"hello world", None, "f"),
            Err(KeyFileError::NotAKeyFile(_))
        ));
    }

    #[test]
    fn a_key_file_demanding_absurd_argon2_cost_is_refused() {
        let file = KeyFile::Sealed {
            cost: Argon2Cost {
                memory_kib: u32::MAX,
                iterations: 2,
                parallelism: 1,
            },
            salt: [0; 16],
            nonce: [0; 12],
            ciphertext: vec![0; 48],
        };
        let mut bytes = MAGIC.to_vec();
        bytes.extend(codec::encode(&file).unwrap());
        assert!(matches!(
            open(&bytes, Some("x"), "f"),
            Err(KeyFileError::UnreasonableCost)
        ));
    }
}
