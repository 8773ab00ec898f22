//! Idempotent sends. A client may name a send with a key of its own (`client_id`): an
//! interrupted send can then be repeated safely. The driver stores the key with the message
//! ([`KeyedSend`], written in the same transaction), so a repeat — also after a restart —
//! answers with the first send's message id and sends nothing; a repeat while the first is still
//! under way waits for the first's answer. A key reused for another recipient or text is an
//! error rather than a silent "already sent".
//!
//! [`KeyedSends`] decides; `T` is whatever the driver answers a waiting caller through (a
//! reply token).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{MessageId, UserName};

/// Keyed sends under way at once; past that, a new one is refused until some are answered.
pub const MAX_UNDER_WAY: usize = 1024;
/// Callers waiting for one keyed send (the first and its repeats); past that, a repeat is
/// refused until the send is answered.
pub const MAX_WAITING: usize = 16;

/// What a client's key stands for, as stored with the message: the message it sent, and what
/// was in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyedSend {
    pub id: MessageId,
    pub to: UserName,
    pub text_sha256: [u8; 32],
}

/// The digest a keyed send's text is compared by.
pub fn text_digest(text: &str) -> [u8; 32] {
    Sha256::digest(text.as_bytes()).into()
}

/// Why a keyed send is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyedError {
    #[error("client_id {0:?} was already used for another message; pick a new one")]
    Reused(String),
    #[error("too many sends with a client_id under way; try again in a moment")]
    TooMany,
    #[error("client_id {0:?} is being sent and repeated too often; wait for its answer")]
    TooManyRepeats(String),
}

/// What to do with a keyed send.
#[derive(Debug, PartialEq, Eq)]
pub enum Begin<T> {
    /// Sent before: answer `waiter` with this message (once what recorded it is durable).
    Sent {
        id: MessageId,
        waiter: T,
    },
    /// The same send is under way: `waiter` hears its answer ([`KeyedSends::answered`]).
    Joined,
    /// Send it; its answer goes to everyone [`KeyedSends::answered`] names.
    Start,
    Refused {
        waiter: T,
        error: KeyedError,
    },
}

/// A keyed send under way.
#[derive(Debug)]
struct UnderWay<T> {
    to: UserName,
    text_sha256: [u8; 32],
    waiting: Vec<T>,
}

/// The keyed sends under way, and who waits for each.
#[derive(Debug)]
pub struct KeyedSends<T> {
    under_way: HashMap<String, UnderWay<T>>,
}

impl<T> Default for KeyedSends<T> {
    fn default() -> Self {
        Self {
            under_way: HashMap::new(),
        }
    }
}

impl<T> KeyedSends<T> {
    /// A send of `text_sha256` to `to` keyed `client_id`; `stored` is what the store holds
    /// under that key.
    pub fn begin(
        &mut self,
        client_id: &str,
        to: &UserName,
        text_sha256: [u8; 32],
        stored: Option<&KeyedSend>,
        waiter: T,
    ) -> Begin<T> {
        let reused = || KeyedError::Reused(client_id.to_string());
        if let Some(sent) = stored {
            return if sent.to == *to && sent.text_sha256 == text_sha256 {
                Begin::Sent {
                    id: sent.id,
                    waiter,
                }
            } else {
                Begin::Refused {
                    waiter,
                    error: reused(),
                }
            };
        }
        if let Some(under_way) = self.under_way.get_mut(client_id) {
            if under_way.to == *to && under_way.text_sha256 == text_sha256 {
                if under_way.waiting.len() >= MAX_WAITING {
                    let error = KeyedError::TooManyRepeats(client_id.to_string());
                    return Begin::Refused { waiter, error };
                }
                under_way.waiting.push(waiter);
                return Begin::Joined;
            }
            return Begin::Refused {
                waiter,
                error: reused(),
            };
        }
        if self.under_way.len() >= MAX_UNDER_WAY {
            return Begin::Refused {
                waiter,
                error: KeyedError::TooMany,
            };
        }
        let under_way = UnderWay {
            to: to.clone(),
            text_sha256,
            waiting: vec![waiter],
        };
        self.under_way.insert(client_id.to_string(), under_way);
        Begin::Start
    }

    /// The send keyed `client_id` has its answer: everyone waiting for it, to hear the same.
    pub fn answered(&mut self, client_id: &str) -> Vec<T> {
        self.under_way
            .remove(client_id)
            .map(|under_way| under_way.waiting)
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann() -> UserName {
        UserName::new("ann").unwrap()
    }

    #[test]
    fn a_repeat_joins_or_answers_and_a_reused_key_is_refused() {
        let mut sends = KeyedSends::default();
        let hi = text_digest("hi");
        assert_eq!(sends.begin("k1", &ann(), hi, None, 1), Begin::Start);
        // The same, while the first is under way: waits for the first's answer.
        assert_eq!(sends.begin("k1", &ann(), hi, None, 2), Begin::Joined);
        // The same key for another text: refused, the first goes on.
        let other = sends.begin("k1", &ann(), text_digest("ho"), None, 3);
        assert_eq!(
            other,
            Begin::Refused {
                waiter: 3,
                error: KeyedError::Reused("k1".into())
            }
        );
        assert_eq!(sends.answered("k1"), vec![1, 2]);
        assert!(sends.answered("k1").is_empty(), "answered once");
        // Stored (after the first was sealed, or a restart): answered with its message.
        let stored = KeyedSend {
            id: MessageId([7; 32]),
            to: ann(),
            text_sha256: hi,
        };
        assert_eq!(
            sends.begin("k1", &ann(), hi, Some(&stored), 4),
            Begin::Sent {
                id: MessageId([7; 32]),
                waiter: 4
            }
        );
        let ben = UserName::new("ben").unwrap();
        assert!(matches!(
            sends.begin("k1", &ben, hi, Some(&stored), 5),
            Begin::Refused {
                error: KeyedError::Reused(_),
                ..
            }
        ));
    }

    #[test]
    fn keyed_sends_under_way_are_bounded() {
        let mut sends = KeyedSends::default();
        for i in 0..MAX_UNDER_WAY {
            let begun = sends.begin(&i.to_string(), &ann(), [0; 32], None, i);
            assert_eq!(begun, Begin::Start);
        }
        assert_eq!(
            sends.begin("one more", &ann(), [0; 32], None, 0),
            Begin::Refused {
                waiter: 0,
                error: KeyedError::TooMany
            }
        );
        sends.answered("0");
        assert_eq!(
            sends.begin("one more", &ann(), [0; 32], None, 0),
            Begin::Start
        );
        // Repeats of one send wait with it, up to a bound.
        for waiter in 1..MAX_WAITING {
            let begun = sends.begin("one more", &ann(), [0; 32], None, waiter);
            assert_eq!(begun, Begin::Joined);
        }
        assert_eq!(
            sends.begin("one more", &ann(), [0; 32], None, 99),
            Begin::Refused {
                waiter: 99,
                error: KeyedError::TooManyRepeats("one more".into())
            }
        );
        assert_eq!(sends.answered("one more").len(), MAX_WAITING);
    }
}
