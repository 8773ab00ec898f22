//! Read markers: how far the user has read each conversation, so unread counts survive the
//! chat window being closed (and the daemon restarting).
//!
//! A conversation's marker is the order key of the last message read (`StateKey::ReadUpTo`);
//! it only moves forward. Unread are the received messages after it; my own never count.

use palaver_protocol::MessageId;

use super::{
    ConversationId, HistoryEntry, StateBatch, StateKey, Status, Store, StoreError, decode,
};

/// Counting stops here: the badge shows "999+" long before, and a conversation never opened
/// must not make every `conversations` call read its whole history.
pub const MAX_UNREAD_COUNTED: usize = 10_000;

/// What of a conversation is unread.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Unread {
    /// Received messages after the read marker (at most [`MAX_UNREAD_COUNTED`]).
    pub count: usize,
    /// The first of them: where the chat window draws its "new messages" line.
    pub first: Option<MessageId>,
}

impl Store {
    /// The order key of the last message read in `conversation`, if any was.
    pub fn read_up_to(&self, conversation: &ConversationId) -> Result<Option<Vec<u8>>, StoreError> {
        self.get::<Vec<u8>>(StateKey::ReadUpTo(*conversation))
    }

    /// What is unread in `conversation`.
    pub fn unread(&self, conversation: &ConversationId) -> Result<Unread, StoreError> {
        let history = self.history_tree(conversation)?;
        let after = self.read_up_to(conversation)?;
        let range = match &after {
            Some(key) => history.range::<&[u8], _>((
                std::ops::Bound::Excluded(key.as_slice()),
                std::ops::Bound::Unbounded,
            )),
            None => history.iter(),
        };
        let mut unread = Unread::default();
        for item in range {
            let (_, bytes) = item?;
            let entry: HistoryEntry = decode("history", &bytes)?;
            if entry.status != Status::Received {
                continue;
            }
            unread.first.get_or_insert(entry.id);
            unread.count += 1;
            if unread.count >= MAX_UNREAD_COUNTED {
                break;
            }
        }
        Ok(unread)
    }

    /// Marks `conversation` read up to and including the message with order key `up_to` (`None`:
    /// its latest message). The marker never moves back; `true` if it moved.
    pub fn mark_read(
        &self,
        conversation: &ConversationId,
        up_to: Option<&[u8]>,
    ) -> Result<bool, StoreError> {
        let target = match up_to {
            Some(key) => Some(key.to_vec()),
            None => self
                .history_tree(conversation)?
                .last()?
                .map(|(key, _)| key.to_vec()),
        };
        let Some(target) = target else {
            return Ok(false);
        };
        if self
            .read_up_to(conversation)?
            .is_some_and(|current| current >= target)
        {
            return Ok(false);
        }
        self.apply(StateBatch::default().put(StateKey::ReadUpTo(*conversation), &target))?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use palaver_protocol::delivery::Stamp;

    fn entry(conversation: ConversationId, n: u64, status: Status) -> HistoryEntry {
        let mut id = [0u8; 32];
        id[..8].copy_from_slice(&n.to_be_bytes());
        HistoryEntry {
            id: MessageId(id),
            conversation,
            label: "bob".into(),
            from: "bob".into(),
            sender: [7; 32],
            text: format!("m{n}"),
            sent_at_ms: 1,
            stamp: Stamp(Stamp::HYBRID_EPOCH.0 + n),
            seq: n,
            status,
        }
    }

    #[test]
    fn unread_counts_received_messages_after_the_marker_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let conv = ConversationId::Direct([1; 32]);
        {
            let store = Store::open(dir.path()).unwrap();
            assert_eq!(store.unread(&conv).unwrap(), Unread::default());
            assert!(
                !store.mark_read(&conv, None).unwrap(),
                "nothing to read yet"
            );
            let first = entry(conv, 1, Status::Received);
            store.record(&first, &StateBatch::default()).unwrap();
            store
                .record(&entry(conv, 2, Status::Delivered), &StateBatch::default())
                .unwrap();
            store
                .record(&entry(conv, 3, Status::Received), &StateBatch::default())
                .unwrap();
            let unread = store.unread(&conv).unwrap();
            assert_eq!(unread.count, 2, "my own message does not count");
            assert_eq!(unread.first, Some(first.id));
            store.flush().unwrap();
        }
        let store = Store::reopen(dir.path());
        assert_eq!(store.unread(&conv).unwrap().count, 2);
        // Read up to the first: one left, and it is the first unread now.
        let first_key = entry(conv, 1, Status::Received).order_key();
        assert!(store.mark_read(&conv, Some(&first_key)).unwrap());
        let unread = store.unread(&conv).unwrap();
        assert_eq!(unread.count, 1);
        assert_eq!(unread.first, Some(entry(conv, 3, Status::Received).id));
        // Everything, then a step back that is refused.
        assert!(store.mark_read(&conv, None).unwrap());
        assert_eq!(store.unread(&conv).unwrap(), Unread::default());
        assert!(!store.mark_read(&conv, Some(&first_key)).unwrap());
        assert_eq!(store.unread(&conv).unwrap().count, 0);
        // A new message is unread again.
        store
            .record(&entry(conv, 4, Status::Received), &StateBatch::default())
            .unwrap();
        assert_eq!(store.unread(&conv).unwrap().count, 1);
    }
}
