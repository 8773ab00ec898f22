//! The history part: the node's store in a temporary directory. `record` one message at a time,
//! each its own transaction, as the daemon does for every direct message it receives (the daemon
//! flushes before acknowledging; one flush closes the run here); the same count one at a time
//! with `record_in_order`, the plain writes a received room message costs
//! (`append_in_order_per_s`, into a room's history of its own); then a tenth as many (at most 2000)
//! each followed by a flush (`append_flushed_per_s`); then the last 100 read back, as a
//! conversation view does (`last100_ms`, the median of 200 reads). Criterion's `store` bench has the batched rate and a million-entry store.

use std::time::{Duration, Instant};

use palaver_node::store::{ConversationId, HistoryEntry, StateBatch, Status, Store};
use palaver_protocol::MessageId;
use serde_json::{Value, json};

use crate::stats;

fn entry(conversation: ConversationId, n: u64) -> HistoryEntry {
    let mut id = [0u8; 32];
    id[..8].copy_from_slice(&n.to_be_bytes());
    id[8] = 0x5a;
    HistoryEntry {
        id: MessageId(id),
        conversation,
        label: "bob".into(),
        from: "bob".into(),
        sender: [7; 32],
        text: "a message of an ordinary length, about sixty characters long.".into(),
        sent_at_ms: 1_700_000_000_000 + n,
        stamp: palaver_protocol::delivery::Stamp(n),
        seq: n,
        status: Status::Received,
    }
}

pub(crate) fn run(count: usize) -> anyhow::Result<Value> {
    let dir = tempfile::tempdir()?;
    let store = Store::open(dir.path())?;
    let conversation = ConversationId::Direct([3; 32]);
    let batch = StateBatch::default();
    let entries: Vec<HistoryEntry> = (0..count as u64).map(|n| entry(conversation, n)).collect();
    let start = Instant::now();
    for entry in &entries {
        store.record(entry, &batch)?;
    }
    store.flush()?;
    let append = start.elapsed();
    let room = ConversationId::Room(palaver_protocol::RoomId([4; 32]));
    let room_entries: Vec<HistoryEntry> = (0..count as u64)
        .map(|n| {
            let mut entry = entry(room, n);
            entry.id.0[8] = 0xa7;
            entry
        })
        .collect();
    let start = Instant::now();
    for entry in &room_entries {
        store.record_in_order(&room, &[(entry, &batch)], &batch)?;
    }
    store.flush()?;
    let append_in_order = start.elapsed();
    // The same with a flush after each, as `room.send` and a direct message's receipt do: the
    // price of durability per message on this disk.
    let flushed = (count / 10).clamp(1, 2_000);
    let start = Instant::now();
    for n in 0..flushed as u64 {
        store.record(&entry(conversation, count as u64 + n), &batch)?;
        store.flush()?;
    }
    let append_flushed = start.elapsed();
    let mut reads: Vec<Duration> = Vec::new();
    for _ in 0..200 {
        let start = Instant::now();
        let last = store.history(&conversation, 100)?;
        reads.push(start.elapsed());
        anyhow::ensure!(
            last.len() == 100.min(count + flushed),
            "read {} entries",
            last.len()
        );
    }
    let report = json!({
        "append_per_s": (count as f64 / append.as_secs_f64()).round(),
        "append_in_order_per_s": (count as f64 / append_in_order.as_secs_f64()).round(),
        "append_flushed_per_s": (flushed as f64 / append_flushed.as_secs_f64()).round(),
        "last100_ms": stats::ms(stats::percentile(&mut reads, 0.5)),
        "stored": 2 * count + flushed,
    });
    eprintln!("history: {report}");
    Ok(report)
}
