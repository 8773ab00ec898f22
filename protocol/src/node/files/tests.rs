use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

use super::*;
use crate::crypto::file::{CHUNK_LEN, FileKey};

fn key(seed: u8) -> VerifyingKey {
    crate::Identity::from_secret_bytes(&[seed; 32]).public()
}

fn offer(size: u64) -> FileOffer {
    FileOffer {
        transfer: crate::wire::TransferId([size as u8; 16]),
        name: "photo.jpg".into(),
        size,
        mime: "image/jpeg".into(),
        sha256: [9; 32],
        key: FileKey::random(&mut ChaCha20Rng::seed_from_u64(size)),
    }
}

fn file(n: u8) -> MessageId {
    MessageId([n; 32])
}

struct Members(Vec<PeerId>);

impl Sources for Members {
    fn room_members(&self, _room: &RoomId) -> Vec<PeerId> {
        self.0.clone()
    }
}

const NOBODY: Members = Members(Vec::new());
const LOTS: u64 = u64::MAX;

fn drain(t: &mut Transfers) -> Vec<Output> {
    std::iter::from_fn(|| t.poll_output()).collect()
}

fn offered(t: &mut Transfers, n: u8, size: u64, room: Option<RoomId>, free_space: u64) {
    let input = Input::Offered {
        file: file(n),
        offer: offer(size),
        sender: key(1),
        room,
        free_space,
        whole: false,
        stored: None,
    };
    t.handle(input, 0).unwrap();
}

fn fetches(outputs: &[Output]) -> Vec<(MessageId, PeerId, u64)> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Fetch {
                file,
                peer,
                from_chunk,
                ..
            } => Some((*file, *peer, *from_chunk)),
            _ => None,
        })
        .collect()
}

fn saved(outputs: &[Output]) -> Vec<Status> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Save { record, .. } => Some(record.status.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn a_small_file_is_fetched_checked_and_moved_into_place() {
    let mut t = Transfers::new(Limits::default(), [], LOTS);
    let size = 3 * CHUNK_LEN as u64 - 1;
    offered(&mut t, 1, size, None, LOTS);
    let out = drain(&mut t);
    assert!(matches!(
        &out[0],
        Output::Event(FileEvent::Offer { accepted: true, .. })
    ));
    assert_eq!(saved(&out), [Status::Fetching]);
    t.handle_timeout(0, &NOBODY);
    let sender = peer_id_of(&key(1));
    assert_eq!(fetches(&drain(&mut t)), [(file(1), sender, 0)]);
    assert_eq!(t.source(&file(1)), Some(sender));
    assert_eq!(t.poll_timeout(), None, "nothing else waits");
    // Progress: saved each time, told at most every PROGRESS_EVERY_MS.
    t.handle(
        Input::Verified {
            file: file(1),
            through: 1,
        },
        300,
    )
    .unwrap();
    let out = drain(&mut t);
    assert!(out.iter().any(|o| matches!(o,
        Output::Event(FileEvent::Progress { bytes, .. }) if *bytes == CHUNK_LEN as u64)));
    t.handle(
        Input::Verified {
            file: file(1),
            through: 2,
        },
        310,
    )
    .unwrap();
    let out = drain(&mut t);
    assert_eq!(out.len(), 1, "saved, not told: {out:?}");
    t.handle(
        Input::Verified {
            file: file(1),
            through: 3,
        },
        320,
    )
    .unwrap();
    assert!(
        drain(&mut t).iter().any(|o| matches!(o,
        Output::Event(FileEvent::Progress { bytes, size: s, .. }) if *bytes == size && *s == size))
    );
    t.handle(
        Input::Ended {
            file: file(1),
            result: Ok(()),
        },
        330,
    )
    .unwrap();
    let out = drain(&mut t);
    assert_eq!(saved(&out), [Status::Checking]);
    assert!(out.contains(&Output::Check {
        file: file(1),
        sha256: [9; 32]
    }));
    t.handle(
        Input::Checked {
            file: file(1),
            matches: true,
        },
        340,
    )
    .unwrap();
    assert_eq!(
        drain(&mut t),
        [Output::Move {
            file: file(1),
            name: "photo.jpg".into()
        }]
    );
    let path = Ok("/home/a/files/photo.jpg".to_owned());
    t.handle(
        Input::Moved {
            file: file(1),
            path,
        },
        350,
    )
    .unwrap();
    let out = drain(&mut t);
    assert_eq!(
        saved(&out),
        [Status::Done {
            path: "/home/a/files/photo.jpg".into()
        }]
    );
    assert!(t.under_way(&file(1)).is_none());
}

#[test]
fn a_large_file_waits_for_the_user_and_space_and_one_over_the_limit_is_refused() {
    let limits = Limits {
        max_size: 1000,
        auto_accept: 10,
    };
    let mut t = Transfers::new(limits, [], LOTS);
    offered(&mut t, 1, 500, None, LOTS);
    let out = drain(&mut t);
    assert!(matches!(
        &out[0],
        Output::Event(FileEvent::Offer {
            accepted: false,
            ..
        })
    ));
    let record = match &out[1] {
        Output::Save { record, .. } => record.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(record.status, Status::Offered);
    t.handle_timeout(0, &NOBODY);
    assert!(fetches(&drain(&mut t)).is_empty(), "not accepted yet");
    let accept = |free_space| Input::Accept {
        file: file(1),
        record: record.clone(),
        free_space,
    };
    assert_eq!(
        t.handle(accept(499), 5),
        Err(AcceptError::NoSpace {
            needed: 500,
            free: 499
        })
    );
    t.handle(accept(500), 5).unwrap();
    assert_eq!(saved(&drain(&mut t)), [Status::Fetching]);
    t.handle_timeout(5, &NOBODY);
    assert_eq!(fetches(&drain(&mut t)).len(), 1);
    // Accepting again changes nothing.
    t.handle(accept(500), 6).unwrap();
    assert!(drain(&mut t).is_empty());

    offered(&mut t, 2, 1001, None, LOTS);
    let out = drain(&mut t);
    assert!(matches!(&saved(&out)[..], [Status::Failed { reason }] if reason.contains("limit")));
    assert!(
        out.iter()
            .any(|o| matches!(o, Output::Event(FileEvent::Failed { .. })))
    );
    // A small one with no room on the disk waits, as if large.
    offered(&mut t, 3, 5, None, 4);
    assert_eq!(saved(&drain(&mut t)), [Status::Offered]);
}

#[test]
fn a_fetch_cut_short_resumes_from_the_last_verified_chunk_from_the_next_member() {
    let mut t = Transfers::new(Limits::default(), [], LOTS);
    let room = RoomId([5; 32]);
    let (sender, other) = (peer_id_of(&key(1)), peer_id_of(&key(2)));
    let members = Members(vec![sender, other]);
    offered(&mut t, 1, 10 * CHUNK_LEN as u64, Some(room), LOTS);
    drain(&mut t);
    t.handle_timeout(0, &members);
    assert_eq!(fetches(&drain(&mut t)), [(file(1), sender, 0)]);
    t.handle(
        Input::Verified {
            file: file(1),
            through: 4,
        },
        10,
    )
    .unwrap();
    let gone = Err("connection closed".to_owned());
    t.handle(
        Input::Ended {
            file: file(1),
            result: gone,
        },
        20,
    )
    .unwrap();
    drain(&mut t);
    assert_eq!(t.why_waiting(&file(1)), Some("connection closed"));
    assert_eq!(t.poll_timeout(), Some(20 + RETRY_MS));
    t.handle_timeout(20 + RETRY_MS - 1, &members);
    assert!(drain(&mut t).is_empty(), "not yet");
    t.handle_timeout(20 + RETRY_MS, &members);
    assert_eq!(fetches(&drain(&mut t)), [(file(1), other, 4)]);
    // Failing again backs off further, and goes back to the sender.
    let refused = Err("not here".to_owned());
    t.handle(
        Input::Ended {
            file: file(1),
            result: refused,
        },
        5_000,
    )
    .unwrap();
    assert_eq!(t.poll_timeout(), Some(5_000 + 2 * RETRY_MS));
    t.handle_timeout(5_000 + 2 * RETRY_MS, &members);
    assert_eq!(fetches(&drain(&mut t)), [(file(1), sender, 4)]);
}

#[test]
fn after_a_restart_what_was_under_way_goes_on() {
    let record = |status, verified| Incoming {
        offer: offer(10 * CHUNK_LEN as u64),
        sender: key(1),
        room: None,
        status,
        verified,
    };
    let stored = [
        (file(1), record(Status::Fetching, 7)),
        (file(2), record(Status::Checking, 10)),
        (file(3), record(Status::Offered, 0)),
        (file(4), record(Status::Done { path: "x".into() }, 10)),
    ];
    let mut t = Transfers::new(Limits::default(), stored, LOTS);
    let out = drain(&mut t);
    assert!(out.contains(&Output::Check {
        file: file(2),
        sha256: [9; 32]
    }));
    // file 3 was stored with its message and the daemon stopped before it was accepted: it is
    // within the auto-accept size, so it is accepted now.
    assert_eq!(saved(&out), [Status::Fetching]);
    t.handle_timeout(1, &NOBODY);
    let sender = peer_id_of(&key(1));
    assert_eq!(
        fetches(&drain(&mut t)),
        [(file(1), sender, 7), (file(3), sender, 0)]
    );
    assert!(t.under_way(&file(4)).is_none());
    // One waiting for the user stays waiting.
    let large = Incoming {
        offer: offer(LOTS / 2),
        ..record(Status::Offered, 0)
    };
    let t = Transfers::new(Limits::default(), [(file(5), large)], LOTS);
    assert!(t.under_way(&file(5)).is_none());
    // Nor is one the disk has no room for now.
    let small = record(Status::Offered, 0);
    let t = Transfers::new(Limits::default(), [(file(6), small)], 100);
    assert!(t.under_way(&file(6)).is_none());
}

/// The fetch of `file(1)` (2 chunks) started, then every chunk in.
fn fetched_whole(t: &mut Transfers) {
    t.handle_timeout(10, &Members(vec![peer_id_of(&key(7))]));
    drain(t);
    let through = offer(2 * CHUNK_LEN as u64).shape().chunks();
    t.handle(
        Input::Verified {
            file: file(1),
            through,
        },
        11,
    )
    .unwrap();
    t.handle(
        Input::Ended {
            file: file(1),
            result: Ok(()),
        },
        11,
    )
    .unwrap();
    drain(t);
}

/// Fetches the offered `file(1)` whole and has it checked: what the machine says to `matches`.
fn fetched_and_checked(t: &mut Transfers, matches: bool) -> Vec<Output> {
    fetched_whole(t);
    t.handle(
        Input::Checked {
            file: file(1),
            matches,
        },
        12,
    )
    .unwrap();
    drain(t)
}

#[test]
fn a_room_file_that_does_not_match_is_fetched_once_more_from_the_sender() {
    let room = RoomId([4; 32]);
    let mut t = Transfers::new(Limits::default(), [], LOTS);
    offered(&mut t, 1, 2 * CHUNK_LEN as u64, Some(room), LOTS);
    drain(&mut t);
    let out = fetched_and_checked(&mut t, false);
    assert!(out.contains(&Output::Discard { file: file(1) }), "{out:?}");
    assert_eq!(saved(&out), [Status::Fetching]);
    t.handle_timeout(12, &Members(vec![peer_id_of(&key(7))]));
    let again = fetches(&drain(&mut t));
    assert_eq!(
        again,
        [(file(1), peer_id_of(&key(1)), 0)],
        "the sender, from chunk 0"
    );
    let out = fetched_and_checked(&mut t, false);
    assert!(
        matches!(&saved(&out)[..], [Status::Failed { .. }]),
        "twice: failed"
    );
    let declined = out.iter().any(|o| matches!(o, Output::Decline { .. }));
    assert!(!declined, "a room's sender waits for nobody");
}

#[test]
fn a_lost_partial_file_is_fetched_again_and_a_failed_file_accepted_again_starts_over() {
    let mut t = Transfers::new(Limits::default(), [], LOTS);
    offered(&mut t, 1, 2 * CHUNK_LEN as u64, None, LOTS);
    fetched_whole(&mut t);
    let lost = Input::Lost {
        file: file(1),
        reason: "gone".into(),
    };
    t.handle(lost, 12).unwrap();
    let out = drain(&mut t);
    assert!(out.contains(&Output::Discard { file: file(1) }));
    assert_eq!(t.under_way(&file(1)).unwrap().verified, 0);
    assert_eq!(t.why_waiting(&file(1)), Some("gone"));
    let due = t.poll_timeout().unwrap();
    assert!(due > 12, "after a backoff, not in a loop");
    t.handle_timeout(due, &NOBODY);
    assert_eq!(fetches(&drain(&mut t)), [(file(1), peer_id_of(&key(1)), 0)]);

    // A failed file (its partial discarded) accepted again is fetched from its first chunk.
    let failed = Incoming {
        offer: offer(2 * CHUNK_LEN as u64),
        sender: key(1),
        room: None,
        status: Status::Failed {
            reason: "no".into(),
        },
        verified: 2,
    };
    let mut t = Transfers::new(Limits::default(), [], LOTS);
    let accept = Input::Accept {
        file: file(2),
        record: failed,
        free_space: LOTS,
    };
    t.handle(accept, 0).unwrap();
    t.handle_timeout(0, &NOBODY);
    assert_eq!(fetches(&drain(&mut t)), [(file(2), peer_id_of(&key(1)), 0)]);
}

#[test]
fn at_most_a_few_fetches_run_at_once() {
    let mut t = Transfers::new(Limits::default(), [], LOTS);
    for n in 0..(MAX_FETCHES as u8 + 2) {
        offered(&mut t, n, 100, None, LOTS);
    }
    drain(&mut t);
    t.handle_timeout(0, &NOBODY);
    assert_eq!(fetches(&drain(&mut t)).len(), MAX_FETCHES);
    assert_eq!(t.poll_timeout(), None, "no slot free");
    t.handle(
        Input::Ended {
            file: file(0),
            result: Err("gone".into()),
        },
        1,
    )
    .unwrap();
    assert!(t.poll_timeout().is_some());
    t.handle_timeout(1, &NOBODY);
    assert_eq!(fetches(&drain(&mut t)).len(), 1, "the next one waiting");
}

#[test]
fn a_file_that_does_not_match_its_hash_fails_and_a_rejected_one_stops() {
    let mut t = Transfers::new(Limits::default(), [], LOTS);
    offered(&mut t, 1, 10, None, LOTS);
    t.handle_timeout(0, &NOBODY);
    t.handle(
        Input::Verified {
            file: file(1),
            through: 1,
        },
        1,
    )
    .unwrap();
    t.handle(
        Input::Ended {
            file: file(1),
            result: Ok(()),
        },
        1,
    )
    .unwrap();
    drain(&mut t);
    t.handle(
        Input::Checked {
            file: file(1),
            matches: false,
        },
        2,
    )
    .unwrap();
    let out = drain(&mut t);
    assert!(matches!(&saved(&out)[..], [Status::Failed { reason }] if reason.contains("hash")));
    assert!(out.contains(&Output::Discard { file: file(1) }));

    offered(&mut t, 2, 10, None, LOTS);
    t.handle_timeout(0, &NOBODY);
    let record = t.under_way(&file(2)).unwrap().clone();
    drain(&mut t);
    t.handle(
        Input::Reject {
            file: file(2),
            record,
        },
        3,
    )
    .unwrap();
    let out = drain(&mut t);
    assert!(out.contains(&Output::StopFetch { file: file(2) }));
    assert_eq!(saved(&out), [Status::Rejected]);
    assert!(t.under_way(&file(2)).is_none());
    // A stray report of the stopped fetch is ignored.
    t.handle(
        Input::Ended {
            file: file(2),
            result: Err("stopped".into()),
        },
        4,
    )
    .unwrap();
    assert!(drain(&mut t).is_empty());
}

#[test]
fn a_file_is_served_only_to_whom_it_was_offered() {
    let (bob, eve) = (key(2), key(3));
    let (bob_peer, eve_peer) = (peer_id_of(&bob), peer_id_of(&eve));
    let room = RoomId([1; 32]);
    let members = |_: &RoomId, peer: &PeerId| *peer == bob_peer;
    let served = |audience| Served {
        message: MessageId([9; 32]),
        offer: offer(10),
        audience,
        path: "/x".into(),
    };
    let to_bob = served(Audience::Peer(bob));
    let solo = crate::crypto::room::Solo;
    assert_eq!(may_serve(Some(&to_bob), &bob_peer, members, &solo), Ok(()));
    assert_eq!(
        may_serve(Some(&to_bob), &eve_peer, members, &solo),
        Err(Refused::NotYours)
    );
    let in_room = served(Audience::Room(room));
    assert_eq!(may_serve(Some(&in_room), &bob_peer, members, &solo), Ok(()));
    assert_eq!(
        may_serve(Some(&in_room), &eve_peer, members, &solo),
        Err(Refused::NotYours)
    );
    assert_eq!(
        may_serve(None, &bob_peer, members, &solo),
        Err(Refused::Unknown)
    );
    // Offered to bob: any device on his list may fetch it.
    let bob_id = crate::Identity::from_secret_bytes(&[2; 32]);
    let laptop = crate::Identity::from_secret_bytes(&[4; 32]);
    let list = crate::identity::devices::DeviceList::single(bob).with(
        crate::identity::devices::Device::bind(&laptop, &bob, "laptop".into(), 0),
    );
    assert_eq!(bob_id.public(), bob);
    let mut roster = crate::node::rooms::Roster::default();
    roster.set(&list.unwrap());
    let laptop_peer = peer_id_of(&laptop.public());
    assert_eq!(
        may_serve(Some(&to_bob), &laptop_peer, members, &roster),
        Ok(())
    );
    assert_eq!(
        may_serve(Some(&to_bob), &laptop_peer, members, &solo),
        Err(Refused::NotYours)
    );
    // Declining is the recipient's alone, and never a room member's.
    assert!(may_decline(&to_bob, &bob));
    assert!(!may_decline(&to_bob, &eve));
    assert!(!may_decline(&in_room, &bob));
}

#[test]
fn a_room_file_received_whole_is_served_on_unless_its_id_is_another_messages() {
    let room = RoomId([1; 32]);
    let mut record = Incoming::offered(offer(10), key(1), Some(room));
    assert_eq!(served_on(file(1), &record, None), None, "not here yet");
    record.status = Status::Done {
        path: "/files/photo.jpg".into(),
    };
    let on = served_on(file(1), &record, None).unwrap();
    assert_eq!(on.audience, Audience::Room(room));
    assert_eq!(
        (on.message, on.path.as_str()),
        (file(1), "/files/photo.jpg")
    );
    // Stored again (a restart): still ours. Another message's id: not taken over.
    assert_eq!(served_on(file(1), &record, Some(&on)), Some(on.clone()));
    assert_eq!(served_on(file(2), &record, Some(&on)), None);
    // A file offered directly is for us alone.
    let mut direct = Incoming::offered(offer(10), key(1), None);
    direct.status = record.status.clone();
    assert_eq!(served_on(file(3), &direct, None), None);
}

#[test]
fn an_offer_goes_whole_only_when_small_direct_and_as_offered() {
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let bytes = b"hello".to_vec();
    let sha256: [u8; 32] = <sha2::Sha256 as sha2::Digest>::digest(&bytes).into();
    let offer = new_offer("note.txt".into(), 5, sha256, &mut rng).unwrap();
    assert_eq!(offer.mime, "text/plain");
    assert_ne!(
        offer.transfer,
        new_offer("note.txt".into(), 5, sha256, &mut rng)
            .unwrap()
            .transfer,
        "a fresh id per offer"
    );
    assert!(new_offer("../x".into(), 5, sha256, &mut rng).is_err());
    assert!(goes_whole(5, false));
    assert!(!goes_whole(5, true), "rooms always fetch");
    assert!(!goes_whole(MAX_WHOLE_FILE_LEN as u64 + 1, false));
    assert!(matches!(
        offer_payload(offer.clone(), Some(bytes)),
        Payload::FileWhole { .. }
    ));
    // Changed since it was hashed, or not read: fetched instead.
    assert!(matches!(
        offer_payload(offer.clone(), Some(b"hellO".to_vec())),
        Payload::File(_)
    ));
    assert!(matches!(offer_payload(offer, None), Payload::File(_)));
    let long = "x".repeat(MAX_DECLINE_REASON + 50);
    assert_eq!(decline_reason(&long).chars().count(), MAX_DECLINE_REASON);
}

/// File 1 (100 bytes, direct) offered, written whole by the driver; `stored`: its record's
/// status by then.
fn came_whole(stored: Option<Status>) -> Input {
    Input::Offered {
        file: file(1),
        offer: offer(100),
        sender: key(1),
        room: None,
        free_space: LOTS,
        whole: true,
        stored,
    }
}

#[test]
fn a_file_that_came_whole_is_only_checked_and_moved() {
    let mut t = Transfers::new(Limits::default(), [], LOTS);
    t.handle(came_whole(None), 0).unwrap();
    let out = drain(&mut t);
    assert_eq!(saved(&out), [Status::Checking]);
    assert!(out.contains(&Output::Check {
        file: file(1),
        sha256: [9; 32]
    }));
    t.handle_timeout(0, &NOBODY);
    assert!(fetches(&drain(&mut t)).is_empty(), "nothing to fetch");
    let checked = Input::Checked {
        file: file(1),
        matches: true,
    };
    t.handle(checked, 1).unwrap();
    assert!(
        drain(&mut t)
            .iter()
            .any(|o| matches!(o, Output::Move { .. }))
    );
}

#[test]
fn a_reject_before_the_offer_is_handed_in_stands() {
    // The message (and its record) are stored; the user rejects the file at once, before the
    // driver, done writing it whole, hands the offer in.
    let mut t = Transfers::new(Limits::default(), [], LOTS);
    let record = Incoming::offered(offer(100), key(1), None);
    t.handle(
        Input::Reject {
            file: file(1),
            record: record.clone(),
        },
        0,
    )
    .unwrap();
    let out = drain(&mut t);
    let rejected = out
        .iter()
        .find_map(|o| match o {
            Output::Save { record, .. } => Some(record.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(rejected.status, Status::Rejected);
    t.handle(came_whole(Some(rejected.status)), 1).unwrap();
    // Not stored again as offered, not checked or fetched: only the file written whole goes.
    assert_eq!(drain(&mut t), [Output::Discard { file: file(1) }]);
    t.handle_timeout(10_000, &NOBODY);
    assert!(fetches(&drain(&mut t)).is_empty());
}
