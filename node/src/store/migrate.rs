//! History written before the hybrid logical clock: entries keyed by a bare Lamport counter.
//!
//! Those counters put a newcomer's first message above a conversation's older ones and a message
//! from a fresh clock at line 1. On open, each conversation's counter-keyed entries (they sort
//! first: every counter is below [`Stamp::HYBRID_EPOCH`]) are re-keyed by their send time, walked
//! in their old order so that each sender's messages keep theirs, and the conversation's read
//! marker is set past them (old history has been read; unread counts start with this version).
//! One transaction per conversation, and re-keyed entries are no longer counters, so a crash
//! midway only leaves the rest for the next open.

use std::collections::HashMap;
use std::convert::Infallible;

use palaver_protocol::codec;
use palaver_protocol::delivery::{HistoryOrder, Stamp};
use sled::Transactional;
use sled::transaction::ConflictableTransactionError;

use super::{
    ConversationId, HistoryEntry, IndexEntry, StateKey, Store, StoreError, committed, decode,
    index_key,
};

/// Re-keys every counter-keyed entry; how many moved. Send times after `now_ms` count as `now_ms`
/// (a peer's clock that ran ahead must not put its old messages below today's).
pub(super) fn rekey_lamport_history(store: &Store, now_ms: u64) -> Result<usize, StoreError> {
    let mut moved = 0;
    for conversation in store.conversations() {
        moved += rekey_conversation(store, &conversation, now_ms)?;
    }
    Ok(moved)
}

fn rekey_conversation(
    store: &Store,
    conversation: &ConversationId,
    now_ms: u64,
) -> Result<usize, StoreError> {
    let history = store.history_tree(conversation)?;
    let mut legacy = Vec::new();
    for item in history.iter() {
        let (key, value) = item?;
        match HistoryOrder::from_key_bytes(&key) {
            Some(order) if order.stamp.is_legacy() => {
                legacy.push((key, decode::<HistoryEntry>("history", &value)?))
            }
            _ => break,
        }
    }
    if legacy.is_empty() {
        return Ok(0);
    }
    let mut last_of_sender: HashMap<[u8; 32], Stamp> = HashMap::new();
    let mut rekeyed = Vec::with_capacity(legacy.len());
    for (old_key, mut entry) in legacy {
        let by_time = entry.stamp.or_sent_at(entry.sent_at_ms.min(now_ms));
        let after_previous = last_of_sender
            .get(&entry.sender)
            .map(|stamp| stamp.next())
            .unwrap_or_default();
        entry.stamp = by_time.max(after_previous);
        last_of_sender.insert(entry.sender, entry.stamp);
        let new_key = entry.order_key();
        let index = codec::encode(&IndexEntry {
            conversation: Some(*conversation),
            order_key: new_key.to_vec(),
        })
        .unwrap_or_default();
        rekeyed.push((
            old_key,
            new_key,
            codec::encode(&entry).unwrap_or_default(),
            index_key(&entry.id),
            index,
        ));
    }
    let marker_key = StateKey::ReadUpTo(*conversation).bytes();
    let result = (&history, &store.state).transaction(|(history, state)| {
        for (old_key, _, _, _, _) in &rekeyed {
            history.remove(old_key)?;
        }
        for (_, new_key, value, index_key, index) in &rekeyed {
            history.insert(&new_key[..], value.as_slice())?;
            state.insert(index_key.as_slice(), index.as_slice())?;
        }
        if state.get(&marker_key)?.is_none() {
            let newest = rekeyed.iter().map(|(_, key, ..)| key).max();
            if let Some(newest) = newest {
                let marker = codec::encode(&newest.to_vec()).unwrap_or_default();
                state.insert(marker_key.as_slice(), marker)?;
            }
        }
        Ok::<_, ConflictableTransactionError<Infallible>>(())
    });
    committed(result)?;
    Ok(rekeyed.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{StateBatch, Status};
    use palaver_protocol::MessageId;

    /// 2026-12-01T12:00:00Z.
    const NOON: u64 = 1_796_126_400_000;

    fn legacy_entry(sender: u8, lamport: u64, seq: u64, sent_at_ms: u64) -> HistoryEntry {
        let mut id = [sender; 32];
        id[..8].copy_from_slice(&lamport.to_be_bytes());
        HistoryEntry {
            id: MessageId(id),
            conversation: ConversationId::Room(palaver_protocol::RoomId([9; 32])),
            label: "#lunch".into(),
            from: format!("user{sender}"),
            sender: [sender; 32],
            text: format!("{sender}/{seq}"),
            sent_at_ms,
            stamp: Stamp(lamport),
            seq,
            status: Status::Received,
        }
    }

    #[test]
    fn lamport_keyed_history_is_rekeyed_by_send_time_and_stays_readable() {
        let dir = tempfile::tempdir().unwrap();
        let conv = ConversationId::Room(palaver_protocol::RoomId([9; 32]));
        {
            let store = Store::open(dir.path()).unwrap();
            // An old-timer's three messages with high counters, then a newcomer's first message
            // (counter 1) sent a minute later: the Lamport order put the newcomer first.
            for (lamport, seq, at) in [(80, 1, NOON), (81, 2, NOON + 1_000), (82, 3, NOON + 2_000)]
            {
                store
                    .record(&legacy_entry(1, lamport, seq, at), &StateBatch::default())
                    .unwrap();
            }
            store
                .record(
                    &legacy_entry(2, 1, 1, NOON + 60_000),
                    &StateBatch::default(),
                )
                .unwrap();
            // A sender whose clock stepped back: its own order is kept.
            store
                .record(
                    &legacy_entry(3, 90, 1, NOON + 30_000),
                    &StateBatch::default(),
                )
                .unwrap();
            store
                .record(
                    &legacy_entry(3, 91, 2, NOON + 20_000),
                    &StateBatch::default(),
                )
                .unwrap();
            // A store the old version wrote has no marker of the hybrid order.
            store
                .apply(
                    StateBatch::default().remove(StateKey::Meta(super::super::HYBRID_ORDER_META)),
                )
                .unwrap();
            store.flush().unwrap();
        }
        // Written through `record` (as the old version did), these went in under their
        // counters; opening again migrates them.
        let store = Store::reopen(dir.path());
        let texts: Vec<String> = store
            .history(&conv, 10)
            .unwrap()
            .into_iter()
            .map(|e| e.text)
            .collect();
        assert_eq!(texts, ["1/1", "1/2", "1/3", "3/1", "3/2", "2/1"]);
        // Every entry is found again by its id (the index moved with it) and no longer keyed
        // by a counter.
        for entry in store.history(&conv, 10).unwrap() {
            let found = store.entry(&entry.id).unwrap().unwrap();
            assert!(!found.stamp.is_legacy(), "{}", found.stamp);
            assert_eq!(found, entry);
        }
        // Old history counts as read.
        assert_eq!(store.unread(&conv).unwrap().count, 0);
        // Opening again changes nothing.
        assert_eq!(rekey_lamport_history(&store, NOON).unwrap(), 0);
    }
}
