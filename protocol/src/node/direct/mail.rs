//! Held mail taken in: which items the mailbox may let go, and whom to tell that theirs arrived.
//!
//! An item stored (or already stored) is acknowledged, and its sender hears it arrived if it
//! was a text for the history. One that can never be read (a bad signature, an undecryptable
//! first message) is acknowledged too: waiting will not make it readable, and keeping it would
//! bring it back at every fetch. One we could not store (our disk) is not: the mailbox keeps
//! it and the next fetch brings it back. Nothing is acknowledged before the items are durable.

use std::collections::BTreeMap;

use ed25519_dalek::VerifyingKey;

use crate::wire::{MessageId, Payload};

/// How one held item was taken in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Taken {
    /// Stored now or before; `text` if it is in the history (a receipt is owed).
    Stored { text: bool },
    /// It can never be read.
    Unreadable,
    /// Not stored for a reason of ours; it may be taken in later.
    NotNow,
}

/// One fetched batch of held mail, settled once it is durable.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MailBatch {
    acks: Vec<MessageId>,
    receipts: BTreeMap<[u8; 32], Vec<MessageId>>,
}

impl MailBatch {
    /// Item `id` from `sender` was taken in as `taken`.
    pub fn taken(&mut self, id: MessageId, sender: &VerifyingKey, taken: Taken) {
        match taken {
            Taken::Stored { text } => {
                self.acks.push(id);
                if text {
                    self.receipts.entry(sender.to_bytes()).or_default().push(id);
                }
            }
            Taken::Unreadable => self.acks.push(id),
            Taken::NotNow => {}
        }
    }

    /// Once durable: the items the mailbox may let go, and a receipt for each sender whose
    /// texts arrived (the ids of one batch: at most a fetch's worth).
    pub fn settle(self) -> (Vec<MessageId>, Vec<(VerifyingKey, Payload)>) {
        let receipts = self
            .receipts
            .into_iter()
            .filter_map(|(sender, ids)| {
                let key = VerifyingKey::from_bytes(&sender).ok()?;
                Some((key, Payload::Receipt(ids)))
            })
            .collect();
        (self.acks, receipts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> VerifyingKey {
        ed25519_dalek::SigningKey::from_bytes(&[seed; 32]).verifying_key()
    }

    #[test]
    fn stored_and_unreadable_mail_is_let_go_and_texts_get_one_receipt_per_sender() {
        let (ann, ben) = (key(1), key(2));
        let id = |n: u8| MessageId([n; 32]);
        let mut batch = MailBatch::default();
        batch.taken(id(1), &ann, Taken::Stored { text: true });
        batch.taken(id(2), &ben, Taken::Stored { text: false });
        batch.taken(id(3), &ann, Taken::Stored { text: true });
        batch.taken(id(4), &ben, Taken::Unreadable);
        batch.taken(id(5), &ben, Taken::NotNow);
        let (acks, receipts) = batch.settle();
        assert_eq!(
            acks,
            [id(1), id(2), id(3), id(4)],
            "what we could not store stays held"
        );
        assert_eq!(receipts, [(ann, Payload::Receipt(vec![id(1), id(3)]))]);
    }
}
