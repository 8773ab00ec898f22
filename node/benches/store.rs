//! History store: batched append rate, and reading the last 100 of a million stored messages.
//!
//! `cargo bench -p palaver-node --bench store`. The million-message store is built once (about a
//! minute) in a temporary directory.
//!
//! `history/sled_floor_batch_of_1000` is what sled alone takes for the least a message needs:
//! its history entry under its place and an index entry under its id, the same bytes as the
//! store writes (encoded beforehand), two plain inserts, no checks. The store's append against
//! it is what Palaver's code adds (the known-id check, the place taken by compare-and-swap, the
//! recording note, the encoding).

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use palaver_node::store::{ConversationId, HistoryEntry, Status, Store};
use palaver_protocol::{MessageId, codec};

/// The allocator the binary ships with.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn entry(conversation: ConversationId, n: u64) -> HistoryEntry {
    let mut id = [0u8; 32];
    id[..8].copy_from_slice(&n.to_be_bytes());
    id[8] = 0xa5;
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

const BATCH: u64 = 1_000;
const STORED: u64 = 1_000_000;

fn append(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("store");
    let conv = ConversationId::Direct([1; 32]);
    let mut next = 0u64;
    let mut group = c.benchmark_group("history");
    group.throughput(Throughput::Elements(BATCH));
    group.bench_function("append_batch_of_1000", |b| {
        b.iter_batched(
            || {
                let page: Vec<HistoryEntry> =
                    (next..next + BATCH).map(|n| entry(conv, n)).collect();
                next += BATCH;
                page
            },
            |page| store.record_many(&conv, &page).expect("append"),
            BatchSize::SmallInput,
        )
    });
    group.bench_function("sled_floor_batch_of_1000", |b| {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = sled::open(dir.path()).expect("sled");
        let history = db.open_tree("history").expect("tree");
        let index = db.open_tree("state").expect("tree");
        let mut next = 0u64;
        b.iter_batched(
            || {
                let writes: Vec<_> = (next..next + BATCH)
                    .map(|n| {
                        let entry = entry(conv, n);
                        let place = entry.order_key();
                        let mut id = vec![b'i'];
                        id.extend_from_slice(&entry.id.0);
                        // The index entry: the conversation and the place.
                        let at = codec::encode(&(Some(conv), place.to_vec())).expect("encode");
                        (place, codec::encode(&entry).expect("encode"), id, at)
                    })
                    .collect();
                next += BATCH;
                writes
            },
            |writes| {
                for (place, entry, id, at) in writes {
                    history.insert(place, entry).expect("insert");
                    index.insert(id, at).expect("insert");
                }
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

fn last_100(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("store");
    let conv = ConversationId::Direct([2; 32]);
    for start in (0..STORED).step_by(10_000) {
        let page: Vec<HistoryEntry> = (start..start + 10_000).map(|n| entry(conv, n)).collect();
        store.record_many(&conv, &page).expect("fill");
    }
    c.bench_function("history/last_100_of_1m", |b| {
        b.iter(|| {
            let last = store.history(&conv, 100).expect("read");
            assert_eq!(last.len(), 100);
            last
        })
    });
}

criterion_group!(benches, append, last_100);
criterion_main!(benches);
