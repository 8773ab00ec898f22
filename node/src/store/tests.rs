use super::*;

fn entry(conversation: ConversationId, stamp: u64, seq: u64, text: &str) -> HistoryEntry {
    let mut id = [0u8; 32];
    id[..8].copy_from_slice(&stamp.to_be_bytes());
    id[8..16].copy_from_slice(&seq.to_be_bytes());
    id[16] = text.len() as u8;
    HistoryEntry {
        id: MessageId(id),
        conversation,
        label: "bob".into(),
        from: "bob".into(),
        sender: [7; 32],
        text: text.into(),
        sent_at_ms: 1,
        stamp: Stamp(stamp),
        seq,
        status: Status::Received,
    }
}

/// The stamps of `entries`, in order.
fn stamps_of(entries: &[HistoryEntry]) -> Vec<u64> {
    entries.iter().map(|e| e.stamp.0).collect()
}

/// A sender reusing its (stamp, seq) — or stamps clamped to the same bound — cannot overwrite
/// an earlier message: the later one is filed just after it, and both stay readable.
#[test]
fn a_message_never_takes_the_place_of_another() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let conv = ConversationId::Direct([1; 32]);
    let first = entry(conv, 7, 1, "first");
    let mut second = entry(conv, 7, 1, "second, same place");
    second.id = MessageId([0xee; 32]);
    let mut gap_filled = entry(conv, 7, 1, "third, by gap fill");
    gap_filled.id = MessageId([0xdd; 32]);
    assert!(store.record(&first, &StateBatch::default()).unwrap());
    assert!(store.record(&second, &StateBatch::default()).unwrap());
    assert_eq!(store.record_many(&conv, &[gap_filled.clone()]).unwrap(), 1);
    let texts: Vec<String> = store
        .history(&conv, 10)
        .unwrap()
        .into_iter()
        .map(|e| e.text)
        .collect();
    assert_eq!(texts, ["first", "second, same place", "third, by gap fill"]);
    // Each is found by its id where it was filed (status changes reach the right one).
    let changed = store.set_status(&second.id, Status::Delivered).unwrap();
    assert_eq!(changed.map(|e| e.text), Some(second.text.clone()));
    assert_eq!(
        store.entry(&first.id).unwrap().map(|e| e.text),
        Some(first.text)
    );
}

#[test]
fn history_reads_back_in_stamp_order_whatever_the_arrival_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let conv = ConversationId::Direct([1; 32]);
    for stamp in [5u64, 1, 300, 2, 256] {
        assert!(
            store
                .record(&entry(conv, stamp, stamp, "m"), &StateBatch::default())
                .unwrap()
        );
    }
    let stamps = stamps_of(&store.history(&conv, 10).unwrap());
    assert_eq!(stamps, vec![1, 2, 5, 256, 300]);
    let last_two = stamps_of(&store.history(&conv, 2).unwrap());
    assert_eq!(last_two, vec![256, 300]);
    let before = entry(conv, 256, 256, "m").order_key();
    let page = stamps_of(&store.history_before(&conv, Some(&before), 2).unwrap());
    assert_eq!(page, vec![2, 5]);
    assert_eq!(store.conversations(), vec![conv]);
}

#[test]
fn record_many_appends_in_order_and_skips_known_ids() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let conv = ConversationId::Direct([3; 32]);
    let page: Vec<HistoryEntry> = (1..=50).rev().map(|n| entry(conv, n, n, "m")).collect();
    assert_eq!(store.record_many(&conv, &page).unwrap(), 50);
    assert_eq!(store.record_many(&conv, &page[..10]).unwrap(), 0);
    let stamps = stamps_of(&store.history(&conv, 100).unwrap());
    assert_eq!(stamps, (1..=50).collect::<Vec<_>>());
}

#[test]
fn a_known_id_is_not_recorded_twice_and_its_batch_is_not_applied() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let conv = ConversationId::Room(RoomId([2; 32]));
    let first = entry(conv, 1, 1, "hello");
    assert!(
        store
            .record(
                &first,
                StateBatch::default().put(StateKey::Meta("n"), &1u32)
            )
            .unwrap()
    );
    assert!(
        !store
            .record(
                &first,
                StateBatch::default().put(StateKey::Meta("n"), &2u32)
            )
            .unwrap()
    );
    assert_eq!(store.get::<u32>(StateKey::Meta("n")).unwrap(), Some(1));
    assert_eq!(store.history(&conv, 10).unwrap().len(), 1);
    assert!(store.contains(&first.id).unwrap());
}

#[test]
fn record_in_order_writes_a_wake_ups_messages_and_says_which_were_new() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let conv = ConversationId::Room(RoomId([3; 32]));
    let (a, b) = (entry(conv, 1, 1, "a"), entry(conv, 2, 2, "b"));
    store.record(&a, &StateBatch::default()).unwrap();
    let mut with_b = StateBatch::default();
    with_b.put(StateKey::Meta("b"), &2u32);
    let mut with_a = StateBatch::default();
    with_a.put(StateKey::Meta("a"), &1u32);
    let mut always = StateBatch::default();
    always.put(StateKey::Meta("clock"), &9u64);
    let new = store
        .record_in_order(&conv, &[(&a, &with_a), (&b, &with_b)], &always)
        .unwrap();
    assert_eq!(new, [false, true]);
    assert_eq!(
        store.get::<u32>(StateKey::Meta("a")).unwrap(),
        None,
        "a was known"
    );
    assert_eq!(store.get::<u32>(StateKey::Meta("b")).unwrap(), Some(2));
    assert_eq!(store.get::<u64>(StateKey::Meta("clock")).unwrap(), Some(9));
    assert_eq!(store.history(&conv, 10).unwrap().len(), 2);
}

#[test]
fn status_only_moves_forward() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let conv = ConversationId::Direct([1; 32]);
    let mut mine = entry(conv, 1, 1, "hi");
    mine.status = Status::Sending;
    store.record(&mine, &StateBatch::default()).unwrap();
    assert_eq!(
        store
            .set_status(&mine.id, Status::Queued)
            .unwrap()
            .unwrap()
            .status,
        Status::Queued
    );
    assert_eq!(
        store
            .set_status(&mine.id, Status::Delivered)
            .unwrap()
            .unwrap()
            .status,
        Status::Delivered
    );
    assert!(store.set_status(&mine.id, Status::Sent).unwrap().is_none());
    assert_eq!(
        store.entry(&mine.id).unwrap().unwrap().status,
        Status::Delivered
    );
}

#[test]
fn state_survives_reopening_and_scans_by_namespace() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path()).unwrap();
        let mut batch = StateBatch::default();
        batch.put(StateKey::Outbox(MessageId([1; 32])), &"a".to_string());
        batch.put(StateKey::Outbox(MessageId([2; 32])), &"b".to_string());
        batch.put(StateKey::Contact("bob"), &[9u8; 32]);
        store.apply(&batch).unwrap();
        store.flush().unwrap();
    }
    let store = Store::reopen(dir.path());
    assert_eq!(
        store
            .scan::<String>(StateKey::Outbox(MessageId([0; 32])))
            .unwrap(),
        vec!["a", "b"]
    );
    assert_eq!(
        store.get::<[u8; 32]>(StateKey::Contact("bob")).unwrap(),
        Some([9; 32])
    );
    store
        .apply(StateBatch::default().remove(StateKey::Contact("bob")))
        .unwrap();
    assert_eq!(
        store.get::<[u8; 32]>(StateKey::Contact("bob")).unwrap(),
        None
    );
}

/// Sealed secrets: what a copy of the store shows, and what reading needs.
#[test]
fn a_passphrase_homes_secrets_are_sealed_at_rest_and_the_rest_stays_readable() {
    let dir = tempfile::tempdir().unwrap();
    let identity = palaver_protocol::Identity::from_secret_bytes(&[5; 32]);
    let session = "RATCHET-STATE-".repeat(4);
    let room_key = "ROOM-SENDER-KEY-".repeat(4);
    let history = entry(ConversationId::Direct([7; 32]), 1, 1, "hello, readable");
    {
        let store = Store::reopen_sealed(dir.path(), SecretsKey::of(&identity));
        let mut batch = StateBatch::default();
        batch
            .put(StateKey::Session([7; 32]), &session)
            .put(StateKey::Room(RoomId([8; 32])), &room_key)
            .put(StateKey::KeyGiven(RoomId([8; 32]), [7; 32]), &room_key)
            .put(StateKey::Meta("prekeys"), &"PREKEY-SECRETS".to_string())
            .put(StateKey::Contact("bob"), &[7u8; 32]);
        store.record(&history, &batch).unwrap();
        let get = |key| store.get::<String>(key).unwrap();
        assert_eq!(get(StateKey::Session([7; 32])), Some(session.clone()));
        assert_eq!(get(StateKey::Room(RoomId([8; 32]))), Some(room_key.clone()));
        store.flush().unwrap();
    }
    // Nothing secret is on disk in the clear; what is not secret still is (for offline reads).
    let mut on_disk = Vec::new();
    for file in walk(dir.path()) {
        on_disk.extend(std::fs::read(file).unwrap());
    }
    let found = |text: &str| on_disk.windows(text.len()).any(|w| w == text.as_bytes());
    assert!(!found("RATCHET-STATE-"));
    assert!(!found("ROOM-SENDER-KEY-"));
    assert!(!found("PREKEY-SECRETS"));
    assert!(found("hello, readable"), "history is not a secret");
    // Without the key: history and contacts read, secrets refuse with a clear error.
    let store = Store::reopen(dir.path());
    assert_eq!(
        store.history(&history.conversation, 10).unwrap(),
        vec![history.clone()]
    );
    assert_eq!(
        store.get::<[u8; 32]>(StateKey::Contact("bob")).unwrap(),
        Some([7; 32])
    );
    assert!(matches!(
        store.get::<String>(StateKey::Session([7; 32])),
        Err(StoreError::SecretsSealed)
    ));
    drop(store);
    // Under another identity's key a sealed secret does not open.
    let other = palaver_protocol::Identity::from_secret_bytes(&[6; 32]);
    let store = Store::reopen_sealed(dir.path(), SecretsKey::of(&other));
    assert!(matches!(
        store.get::<String>(StateKey::Session([7; 32])),
        Err(StoreError::Corrupt { .. })
    ));
}

#[test]
fn secrets_written_in_the_clear_before_are_sealed_when_opened_with_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let identity = palaver_protocol::Identity::from_secret_bytes(&[5; 32]);
    {
        let store = Store::open(dir.path()).unwrap();
        let mut batch = StateBatch::default();
        batch.put(StateKey::Session([7; 32]), &"old".to_string());
        store.apply(&batch).unwrap();
        store.flush().unwrap();
    }
    let store = Store::reopen_sealed(dir.path(), SecretsKey::of(&identity));
    let raw = store
        .state
        .get(StateKey::Session([7; 32]).bytes())
        .unwrap()
        .unwrap();
    assert_eq!(raw.first(), Some(&SEALED));
    assert_eq!(
        store.get::<String>(StateKey::Session([7; 32])).unwrap(),
        Some("old".to_string())
    );
}

#[test]
fn a_room_is_found_by_its_history_label_without_the_room_records() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let mut line = entry(ConversationId::Room(RoomId([3; 32])), 1, 1, "hi");
    line.label = "#lunch".into();
    store.record(&line, &StateBatch::default()).unwrap();
    assert_eq!(
        store.room_by_label(&"lunch".parse().unwrap()),
        Some(RoomId([3; 32]))
    );
    assert_eq!(store.room_by_label(&"dinner".parse().unwrap()), None);
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

/// A room message whose recording a crash cut short (its history entry and what it carries
/// written, its index entry not) is taken out when the store opens again: not known, not in
/// history, nothing of it left for gap fill to count as held, so it is asked for and recorded
/// again, once. A message finished before it in the same call stays.
#[test]
fn a_message_recorded_in_order_and_cut_short_is_taken_out_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let conv = ConversationId::Room(RoomId([4; 32]));
    let done = entry(conv, 8, 2, "finished");
    let message = entry(conv, 9, 3, "hello room");
    let mut carried = StateBatch::default();
    carried.put(StateKey::Meta("frame"), &vec![1u8, 2, 3]);
    let nothing = StateBatch::default();
    {
        let store = Store::open(dir.path()).unwrap();
        let new = store
            .record_in_order(&conv, &[(&done, &nothing), (&message, &carried)], &nothing)
            .unwrap();
        assert_eq!(new, [true, true]);
        // What a crash between the frame and the index leaves.
        store.state.remove(index_key(&message.id)).unwrap();
        store.flush().unwrap();
    }
    let store = Store::reopen(dir.path());
    assert!(!store.contains(&message.id).unwrap());
    assert_eq!(store.get::<Vec<u8>>(StateKey::Meta("frame")).unwrap(), None);
    assert_eq!(
        store.history(&conv, 10).unwrap(),
        std::slice::from_ref(&done)
    );

    assert_eq!(
        store
            .record_in_order(&conv, &[(&message, &carried)], &nothing)
            .unwrap(),
        [true]
    );
    assert_eq!(store.history(&conv, 10).unwrap(), [done, message.clone()]);
    assert_eq!(
        store.get::<Vec<u8>>(StateKey::Meta("frame")).unwrap(),
        Some(vec![1, 2, 3])
    );
    // Known now: a third copy writes nothing, not even what it carries.
    store
        .apply(StateBatch::default().remove(StateKey::Meta("frame")))
        .unwrap();
    assert_eq!(
        store
            .record_in_order(&conv, &[(&message, &carried)], &nothing)
            .unwrap(),
        [false]
    );
    assert_eq!(store.get::<Vec<u8>>(StateKey::Meta("frame")).unwrap(), None);
    assert_eq!(store.history(&conv, 10).unwrap().len(), 2);
    // A clean open takes nothing out.
    drop(store);
    let store = Store::reopen(dir.path());
    assert_eq!(store.history(&conv, 10).unwrap().len(), 2);
    assert!(store.contains(&message.id).unwrap());
}

/// A received direct message: what only moves forward is written whatever happens, what it used
/// up only once it is stored and only if it is new. Of the two states a crash can leave (set up
/// here by hand, as the store wrote them up to the crash), a message stored and what it used up
/// not (its index written, the session still the one before) stays known with what it brought;
/// a message cut short before its index is taken out at open with what it brought.
#[test]
fn a_received_message_is_stored_before_what_opening_it_used_up() {
    let dir = tempfile::tempdir().unwrap();
    let conv = ConversationId::Direct([6; 32]);
    let first = entry(conv, 11, 1, "hello");
    let brings = |what: &'static str| {
        let mut brings = StateBatch::default();
        brings.put(StateKey::Meta(what), &1u8);
        brings
    };
    let used = |step: u8| {
        let mut consumed = StateBatch::default();
        consumed.put(StateKey::Meta("session"), &step);
        consumed
    };
    let clock = |at: u64| {
        let mut moved_on = StateBatch::default();
        moved_on.put(StateKey::Meta("clock"), &at);
        moved_on
    };
    let session_back_to = |store: &Store, step: u8| {
        store
            .apply(StateBatch::default().put(StateKey::Meta("session"), &step))
            .unwrap();
    };
    let (stored, cut) = (
        entry(conv, 12, 2, "stored"),
        entry(conv, 13, 3, "cut short"),
    );
    {
        let store = Store::open(dir.path()).unwrap();
        let new = store.record_received(&first, &brings("first's"), &used(1), &clock(11));
        assert!(new.unwrap());
        assert_eq!(store.get::<u8>(StateKey::Meta("session")).unwrap(), Some(1));
        assert_eq!(store.get::<u8>(StateKey::Meta("first's")).unwrap(), Some(1));
        // A second copy: nothing it would use up is written, the clock still moves on.
        let new = store.record_received(&first, &brings("first's"), &used(9), &clock(12));
        assert!(!new.unwrap());
        assert_eq!(store.get::<u8>(StateKey::Meta("session")).unwrap(), Some(1));
        assert_eq!(store.get::<u64>(StateKey::Meta("clock")).unwrap(), Some(12));

        // Stored, then the crash before what it used up.
        let new = store.record_received(&stored, &brings("stored's"), &used(2), &clock(12));
        assert!(new.unwrap());
        session_back_to(&store, 1);
        // Cut short before its index (so before what it used up).
        let new = store.record_received(&cut, &brings("cut's"), &used(3), &clock(13));
        assert!(new.unwrap());
        store.state.remove(index_key(&cut.id)).unwrap();
        session_back_to(&store, 1);
        store.flush().unwrap();
    }
    let store = Store::reopen(dir.path());
    assert!(store.contains(&stored.id).unwrap());
    assert!(!store.contains(&cut.id).unwrap());
    assert_eq!(store.history(&conv, 10).unwrap(), [first, stored]);
    assert_eq!(
        store.get::<u8>(StateKey::Meta("stored's")).unwrap(),
        Some(1)
    );
    assert_eq!(store.get::<u8>(StateKey::Meta("cut's")).unwrap(), None);
    assert_eq!(store.get::<u8>(StateKey::Meta("session")).unwrap(), Some(1));
    assert_eq!(store.get::<u64>(StateKey::Meta("clock")).unwrap(), Some(13));
    // The cut-short message comes again and is opened afresh.
    let new = store.record_received(&cut, &brings("cut's"), &used(3), &clock(13));
    assert!(new.unwrap());
    assert_eq!(store.get::<u8>(StateKey::Meta("session")).unwrap(), Some(3));
}

/// Recorded in order, a message whose place another holds is filed just after it, as in a
/// transaction.
#[test]
fn recording_in_order_never_takes_another_message_s_place() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let conv = ConversationId::Room(RoomId([5; 32]));
    let first = entry(conv, 7, 1, "first");
    let mut second = entry(conv, 7, 1, "second, same place");
    second.id = MessageId([0xee; 32]);
    let nothing = StateBatch::default();
    let new = store
        .record_in_order(&conv, &[(&first, &nothing), (&second, &nothing)], &nothing)
        .unwrap();
    assert_eq!(new, [true, true]);
    let lines = store.history(&conv, 10).unwrap();
    let texts: Vec<&str> = lines.iter().map(|e| e.text.as_str()).collect();
    assert_eq!(texts, ["first", "second, same place"]);
    assert_eq!(lines[1].stamp, Stamp(7).next());
    assert_eq!(
        store.entry(&second.id).unwrap().map(|e| e.text),
        Some(second.text)
    );
}

/// A long import is noted a part at a time: a crash in its last part takes out only the message
/// it cut short, not the parts before.
#[test]
fn a_long_import_cut_short_loses_only_the_message_it_was_writing() {
    let dir = tempfile::tempdir().unwrap();
    let conv = ConversationId::Direct([6; 32]);
    let page: Vec<HistoryEntry> = (1..=150).map(|n| entry(conv, n, n, "m")).collect();
    {
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.record_many(&conv, &page).unwrap(), 150);
        store.state.remove(index_key(&page[140].id)).unwrap();
        store.flush().unwrap();
    }
    let store = Store::reopen(dir.path());
    let stamps = stamps_of(&store.history(&conv, 200).unwrap());
    let expected: Vec<u64> = (1..=150).filter(|n| *n != 141).collect();
    assert_eq!(stamps, expected);
    assert_eq!(store.record_many(&conv, &page).unwrap(), 1);
    assert_eq!(store.history(&conv, 200).unwrap().len(), 150);
}

/// A noted message of which nothing was written (the crash came right after the note, or its
/// place was flooded) leaves what its batch names alone: a frame under the same sender and
/// sequence number may be another message's.
#[test]
fn a_noted_message_never_written_takes_out_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let conv = ConversationId::Room(RoomId([7; 32]));
    let earlier = entry(conv, 3, 1, "earlier, same seq");
    let frame_key = StateKey::Meta("frame").bytes();
    {
        let store = Store::open(dir.path()).unwrap();
        let mut carried = StateBatch::default();
        carried.put(StateKey::Meta("frame"), &vec![9u8]);
        store
            .record_in_order(&conv, &[(&earlier, &carried)], &StateBatch::default())
            .unwrap();
        let mut never_written = entry(conv, 4, 1, "noted, never written");
        never_written.id = MessageId([0xcc; 32]);
        let note = Recording {
            conversation: conv,
            messages: vec![RecordingOf {
                id: never_written.id,
                order_key: never_written.order_key().to_vec(),
                carried: vec![frame_key.clone()],
            }],
        };
        store
            .recording
            .insert(RECORDING_TREE, codec::encode(&note).unwrap())
            .unwrap();
        store.flush().unwrap();
    }
    let store = Store::reopen(dir.path());
    assert_eq!(
        store.get::<Vec<u8>>(StateKey::Meta("frame")).unwrap(),
        Some(vec![9])
    );
    assert_eq!(store.history(&conv, 10).unwrap(), [earlier]);
}

/// A room's log as gap fill reads it: records, and the bare frames stores held before records
/// (read as frames kept whole), in (sender, seq) order; its index from the keys alone.
#[test]
fn a_room_log_reads_records_and_frames_written_before_them() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let room = RoomId([3; 32]);
    let old_frame: Vec<u8> = (0..=255).cycle().take(600).collect();
    let short_frame = vec![2u8; 180];
    let mut batch = StateBatch::default();
    batch
        .put(
            StateKey::RoomLog(room, [1; 32], 2),
            &LogRecord::Frame(vec![9; 300]),
        )
        .put(StateKey::RoomLog(room, [1; 32], 1), &old_frame)
        .put(StateKey::RoomLog(room, [2; 32], 1), &short_frame)
        .put(
            StateKey::RoomLog(RoomId([4; 32]), [1; 32], 1),
            &vec![5u8; 200],
        );
    store.apply(&batch).unwrap();
    let log: Vec<_> = store
        .room_log(&room)
        .map(|(sender, seq, record)| (sender, seq, record().and_then(|r| r.frame(None))))
        .collect();
    assert_eq!(
        log,
        [
            ([1; 32], 1, Some(old_frame)),
            ([1; 32], 2, Some(vec![9; 300])),
            ([2; 32], 1, Some(short_frame)),
        ]
    );
    assert_eq!(
        store.room_log_index(&room),
        [([1; 32], 1), ([1; 32], 2), ([2; 32], 1)]
    );
}

/// Our own room send, cut short by a crash: the message and what it brought are taken out at
/// open, and what the send moved on (the room's chain, the sequence number) stays, so no key
/// seals twice and no sequence number is used twice.
#[test]
fn a_send_cut_short_keeps_what_it_moved_on_and_loses_only_the_message() {
    let dir = tempfile::tempdir().unwrap();
    let room = RoomId([6; 32]);
    let conv = ConversationId::Room(room);
    let mine = entry(conv, 12, 5, "mine, being sent");
    let mut moved_on = StateBatch::default();
    moved_on
        .put(StateKey::Meta("chain"), &7u32)
        .put(StateKey::Seq(conv), &5u64);
    let mut brings = StateBatch::default();
    brings
        .put(
            StateKey::RoomLog(room, mine.sender, 5),
            &LogRecord::Frame(vec![4; 200]),
        )
        .put(StateKey::RoomUnsent(mine.id), &vec![4u8; 200]);
    {
        let store = Store::open(dir.path()).unwrap();
        let new = store
            .record_in_order(&conv, &[(&mine, &brings)], &moved_on)
            .unwrap();
        assert_eq!(new, [true]);
        store.state.remove(index_key(&mine.id)).unwrap();
        store.flush().unwrap();
    }
    let store = Store::reopen(dir.path());
    assert!(!store.contains(&mine.id).unwrap());
    assert!(store.history(&conv, 10).unwrap().is_empty());
    assert!(store.room_log_index(&room).is_empty());
    assert!(!store.holds(StateKey::RoomUnsent(mine.id)));
    assert_eq!(store.get::<u32>(StateKey::Meta("chain")).unwrap(), Some(7));
    assert_eq!(store.get::<u64>(StateKey::Seq(conv)).unwrap(), Some(5));
}

/// Sessions between Alice (`[1; 32]`) and Bob (`[2; 32]`), Alice's side, and her sealing with them.
mod alice_to_bob {
    use palaver_protocol::crypto::x3dh::{PrekeyBundle, PrekeySecrets};
    use palaver_protocol::delivery::HybridClock;
    use palaver_protocol::node::direct::pairwise::{self, PeerSessions, Sealed};
    use palaver_protocol::wire::Payload;
    use rand_core::OsRng;

    pub(super) fn sessions() -> PeerSessions {
        let alice = ed25519_dalek::SigningKey::from_bytes(&[1; 32]);
        let bob = ed25519_dalek::SigningKey::from_bytes(&[2; 32]);
        let upload = PrekeySecrets::generate(&mut OsRng, &bob, 1).upload();
        let bundle = PrekeyBundle {
            identity: upload.identity,
            signed_prekey: upload.signed_prekey,
            one_time_prekey: upload.one_time_prekeys.first().copied(),
        };
        pairwise::start_session(&mut OsRng, &alice, &bundle, None).unwrap()
    }

    pub(super) fn seal(sessions: &mut PeerSessions) -> Sealed {
        let alice = ed25519_dalek::SigningKey::from_bytes(&[1; 32]);
        let to = ed25519_dalek::SigningKey::from_bytes(&[2; 32]).verifying_key();
        let text = Payload::Text("hello".into());
        let clock = &mut HybridClock::new();
        pairwise::seal(&mut OsRng, &alice, to, sessions, clock, 1, text, 1).unwrap()
    }
}

/// Sessions that sent ahead of the disk are moved past what they reserved at start, once, in a
/// sealed store as in a plain one.
#[test]
fn stored_sessions_resume_past_what_they_reserved_once() {
    use alice_to_bob::seal;
    for sealed in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let identity = palaver_protocol::Identity::from_secret_bytes(&[5; 32]);
        let store = match sealed {
            true => Store::reopen_sealed(dir.path(), SecretsKey::of(&identity)),
            false => Store::reopen(dir.path()),
        };
        let mut sessions = alice_to_bob::sessions();
        seal(&mut sessions);
        let on_disk = sessions.send_ahead().unwrap();
        store
            .apply(StateBatch::default().put(StateKey::Session([2; 32]), &sessions))
            .unwrap();
        // What the stored copy reserves could leave before its own state is on disk...
        assert!(on_disk.covers(&seal(&mut sessions).place));
        // ... so after a restart the stored copy goes on past it.
        assert_eq!(store.resume_sessions().unwrap(), 1, "sealed: {sealed}");
        assert_eq!(store.resume_sessions().unwrap(), 0, "only once");
        let mut resumed = store.sessions([2; 32]).unwrap().unwrap();
        assert!(!on_disk.covers(&seal(&mut resumed).place));
    }
}

/// After a clean stop every session on disk is as last used: the next start skips nothing (the
/// peer sees no gap), and the start after a crash that follows does again.
#[test]
fn after_a_clean_stop_the_next_start_skips_nothing() {
    use alice_to_bob::seal;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::reopen(dir.path());
    let mut sessions = alice_to_bob::sessions();
    let first = seal(&mut sessions);
    store
        .apply(StateBatch::default().put(StateKey::Session([2; 32]), &sessions))
        .unwrap();
    store.settle_sessions().unwrap();
    drop(store);
    let store = Store::reopen(dir.path());
    assert_eq!(store.resume_sessions().unwrap(), 0);
    let mut resumed = store.sessions([2; 32]).unwrap().unwrap();
    let next = seal(&mut resumed);
    assert!(
        sessions.send_ahead().unwrap().covers(&next.place),
        "the chain goes on where it stopped"
    );
    assert_ne!(first.place, next.place);
    // The note was used up: a crash now (nothing settled) makes the next start skip.
    drop(store);
    let store = Store::reopen(dir.path());
    assert_eq!(store.resume_sessions().unwrap(), 1);
}
