//! The one codec for everything Palaver puts on a wire or on disk.
//!
//! A frame is one version byte followed by the bincode 2 (serde, standard configuration) encoding of
//! a value. Decoding checks the frame's length before anything else, then lets bincode allocate at
//! most [`MAX_FRAME_LEN`] bytes however large the lengths inside claim to be, and refuses trailing
//! bytes, so that one value has exactly one encoding and every input ends as a value or an error.

use serde::{Serialize, de::DeserializeOwned};

/// The wire version this build speaks. Bumped on any incompatible change to a wire type.
pub const WIRE_VERSION: u8 = 1;

/// Hard upper bound on any frame, checked before decoding allocates anything.
pub const MAX_FRAME_LEN: usize = 1 << 20;

type Config = bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<MAX_FRAME_LEN>,
>;

const CONFIG: Config = bincode::config::standard().with_limit::<MAX_FRAME_LEN>();

/// Why a frame could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("empty frame")]
    Empty,
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    TooLarge { len: usize, max: usize },
    #[error("unsupported wire version {found} (this build speaks {WIRE_VERSION})")]
    UnsupportedVersion { found: u8 },
    #[error("malformed frame: {0}")]
    Malformed(String),
    #[error("{0} trailing bytes after the value")]
    TrailingBytes(usize),
}

/// Encodes `value` as a versioned frame.
///
/// Encoding our own wire types cannot fail; a value over [`MAX_FRAME_LEN`] is a caller bug that the
/// receiving side would reject, so it is refused here too.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, EncodeError> {
    let mut frame = vec![WIRE_VERSION];
    bincode::serde::encode_into_std_write(value, &mut frame, CONFIG)
        .map_err(|e| EncodeError(e.to_string()))?;
    if frame.len() > MAX_FRAME_LEN {
        return Err(EncodeError(format!(
            "frame of {} bytes exceeds the {MAX_FRAME_LEN}-byte limit",
            frame.len()
        )));
    }
    Ok(frame)
}

/// Why a value could not be encoded (only when it is larger than a frame may be).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("cannot encode: {0}")]
pub struct EncodeError(String);

/// Decodes one versioned frame, bounded by [`MAX_FRAME_LEN`].
pub fn decode<T: DeserializeOwned>(frame: &[u8]) -> Result<T, DecodeError> {
    decode_bounded(frame, MAX_FRAME_LEN)
}

/// Decodes one versioned frame that must also fit in `max_len` bytes (a protocol's own limit).
pub fn decode_bounded<T: DeserializeOwned>(frame: &[u8], max_len: usize) -> Result<T, DecodeError> {
    let max = max_len.min(MAX_FRAME_LEN);
    if frame.len() > max {
        return Err(DecodeError::TooLarge {
            len: frame.len(),
            max,
        });
    }
    let (&version, body) = frame.split_first().ok_or(DecodeError::Empty)?;
    if version != WIRE_VERSION {
        return Err(DecodeError::UnsupportedVersion { found: version });
    }
    let (value, read) = bincode::serde::decode_from_slice(body, CONFIG)
        .map_err(|e| DecodeError::Malformed(e.to_string()))?;
    match body.len() - read {
        0 => Ok(value),
        extra => Err(DecodeError::TrailingBytes(extra)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_huge_claimed_length_is_refused_without_allocating_it() {
        // Version byte, then a varint claiming a Vec<u8> of u64::MAX - 1 bytes.
        let frame = [
            WIRE_VERSION,
            0xfd,
            0xfe,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
        ];
        assert!(matches!(
            decode::<Vec<u8>>(&frame),
            Err(DecodeError::Malformed(_))
        ));
    }

    #[test]
    fn frames_over_the_limit_are_refused_before_decoding() {
        let frame = vec![WIRE_VERSION; MAX_FRAME_LEN + 1];
        assert_eq!(
            decode::<Vec<u8>>(&frame),
            Err(DecodeError::TooLarge {
                len: MAX_FRAME_LEN + 1,
                max: MAX_FRAME_LEN
            })
        );
        assert!(matches!(
            decode_bounded::<u8>(&[WIRE_VERSION, 1, 2], 2),
            Err(DecodeError::TooLarge { .. })
        ));
    }

    #[test]
    fn trailing_bytes_and_other_versions_are_refused() {
        assert_eq!(
            decode::<u8>(&[WIRE_VERSION, 7, 0]),
            Err(DecodeError::TrailingBytes(1))
        );
        assert_eq!(
            decode::<u8>(&[2, 7]),
            Err(DecodeError::UnsupportedVersion { found: 2 })
        );
        assert_eq!(decode::<u8>(&[]), Err(DecodeError::Empty));
        assert_eq!(decode::<u8>(&[WIRE_VERSION, 7]), Ok(7));
    }

    #[test]
    fn oversized_values_are_refused_when_encoding() {
        assert!(encode(&vec![0u8; MAX_FRAME_LEN]).is_err());
    }
}
