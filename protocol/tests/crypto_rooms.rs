//! Rooms: sender keys, membership and key distribution over pairwise sessions, tested by the
//! property each test proves.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;

use palaver_protocol::crypto;

use crypto::CryptoError;
use crypto::ratchet::Session;
use crypto::room::{EPOCH_GRACE_MS, EpochClock, KeyAction, MembershipUpdate, RoomKeys, Solo};
use crypto::sender_key::{
    MAX_SKIP, ReceivedSenderKey, SenderKey, SenderKeyDistribution, SenderKeyMessage,
};
use crypto::x3dh::{PrekeyBundle, PrekeySecrets, PrekeyUpload};
use ed25519_dalek::{Signature, SigningKey, VerifyingKey};
use proptest::prelude::*;
use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use serde::Serialize;
use serde::de::DeserializeOwned;

// ---------------------------------------------------------------------------------------------
// A small world: nodes with pairwise sessions, one room, an owner who signs membership
// ---------------------------------------------------------------------------------------------

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    bincode::serde::encode_to_vec(value, bincode::config::standard()).unwrap()
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> T {
    bincode::serde::decode_from_slice(bytes, bincode::config::standard())
        .unwrap()
        .0
}

struct Node {
    identity: SigningKey,
    prekeys: PrekeySecrets,
    upload: PrekeyUpload,
    room: RoomKeys,
    sessions: HashMap<[u8; 32], Session>,
}

impl Node {
    fn id(&self) -> VerifyingKey {
        self.identity.verifying_key()
    }
}

/// A room message as the wire layer would carry it: the sender-key message plus a signature
/// over its encoding by the sender key's signing key.
#[derive(Clone)]
struct Posted {
    sender: VerifyingKey,
    message: SenderKeyMessage,
    envelope: Vec<u8>,
    signature: Signature,
    text: String,
}

struct World {
    rng: ChaCha20Rng,
    room: [u8; 32],
    epoch: u64,
    /// The epoch of the last removal the owner signed.
    keys_from: u64,
    /// Everyone's clock (ms), for the epoch grace.
    now: u64,
    /// Node 0 owns the room.
    nodes: Vec<Node>,
    members: Vec<usize>,
}

impl World {
    fn new(seed: u64, size: usize) -> World {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let mut room = [0; 32];
        rng.fill_bytes(&mut room);
        let identities: Vec<SigningKey> =
            (0..size).map(|_| SigningKey::generate(&mut rng)).collect();
        let owner = identities[0].verifying_key();
        let nodes = identities
            .into_iter()
            .map(|identity| {
                let prekeys = PrekeySecrets::generate(&mut rng, &identity, 8);
                let upload = prekeys.upload();
                let room = RoomKeys::new(&mut rng, room, owner, identity.verifying_key());
                Node {
                    identity,
                    prekeys,
                    upload,
                    room,
                    sessions: HashMap::new(),
                }
            })
            .collect();
        World {
            rng,
            room,
            epoch: 0,
            keys_from: 0,
            now: 1_000_000,
            nodes,
            members: Vec::new(),
        }
    }

    fn with_members(seed: u64, size: usize) -> World {
        let mut world = World::new(seed, size);
        world.set_members(&(0..size).collect::<Vec<_>>());
        world
    }

    fn id(&self, node: usize) -> VerifyingKey {
        self.nodes[node].id()
    }

    fn clock(&self) -> EpochClock {
        EpochClock::at(self.now)
    }

    /// The owner's next update: a new epoch, which is also `keys_from` if anyone is removed.
    fn update(&mut self, members: &[usize]) -> MembershipUpdate {
        self.epoch += 1;
        if self.keys_from == 0 || self.members.iter().any(|m| !members.contains(m)) {
            self.keys_from = self.epoch;
        }
        let keys = members.iter().map(|&m| self.id(m)).collect();
        MembershipUpdate::sign(
            &self.nodes[0].identity,
            self.room,
            self.epoch,
            self.keys_from,
            keys,
        )
    }

    /// The owner publishes a new membership to everyone in the old or new one. Every node
    /// applies it first; then the resulting key actions are carried out over pairwise sessions.
    fn set_members(&mut self, members: &[usize]) {
        let update = self.update(members);
        self.broadcast(&update, members);
    }

    fn broadcast(&mut self, update: &MembershipUpdate, members: &[usize]) {
        let mut audience: Vec<usize> = self.members.iter().chain(members).copied().collect();
        audience.sort();
        audience.dedup();
        self.members = members.to_vec();
        self.deliver(update, &audience);
    }

    /// `update` reaches `nodes` only; each applies it, then hands out the keys it asks for
    /// (each recipient must accept them).
    fn deliver(&mut self, update: &MembershipUpdate, nodes: &[usize]) {
        let mut actions = Vec::new();
        for &node in nodes {
            let rng = &mut self.rng;
            let applied = self.nodes[node]
                .room
                .apply_membership(rng, update, self.now, &Solo);
            for action in applied.unwrap() {
                actions.push((node, action));
            }
        }
        for (from, KeyAction::Distribute { to, distribution }) in actions {
            for recipient in to {
                let to = self.index_of(&recipient);
                self.send_distribution(from, to, &distribution).unwrap();
            }
        }
    }

    fn index_of(&self, identity: &VerifyingKey) -> usize {
        self.nodes
            .iter()
            .position(|node| node.id() == *identity)
            .unwrap()
    }

    /// Sends a distribution from `from` to `to` inside their pairwise session (set up on first
    /// use), and has `to` accept it.
    fn send_distribution(
        &mut self,
        from: usize,
        to: usize,
        distribution: &SenderKeyDistribution,
    ) -> Result<(), CryptoError> {
        let (sender_id, recipient_id) = (self.id(from), self.id(to));
        let plaintext = encode(distribution);
        if !self.nodes[from]
            .sessions
            .contains_key(recipient_id.as_bytes())
        {
            let bundle = take_bundle(&mut self.nodes[to].upload);
            let session =
                Session::initiate(&mut self.rng, &self.nodes[from].identity, &bundle).unwrap();
            self.nodes[from]
                .sessions
                .insert(recipient_id.to_bytes(), session);
        }
        let session = self.nodes[from]
            .sessions
            .get_mut(recipient_id.as_bytes())
            .unwrap();
        let wire = encode(&session.encrypt(&mut self.rng, &plaintext).unwrap());

        let recipient = &mut self.nodes[to];
        let message = decode(&wire);
        let received = match recipient.sessions.get_mut(sender_id.as_bytes()) {
            Some(session) => session.decrypt(&mut self.rng, &message).unwrap(),
            None => {
                let (session, plaintext) = Session::respond(
                    &mut self.rng,
                    &recipient.identity,
                    &mut recipient.prekeys,
                    &sender_id,
                    &message,
                )
                .unwrap();
                recipient.sessions.insert(sender_id.to_bytes(), session);
                plaintext
            }
        };
        let distribution: SenderKeyDistribution = decode(&received);
        recipient
            .room
            .accept_distribution(&sender_id, &distribution, &Solo)
    }

    fn post(&mut self, from: usize, text: &str) -> Posted {
        let node = &mut self.nodes[from];
        let message = node.room.encrypt(text.as_bytes(), &Solo).unwrap();
        let envelope = encode(&message);
        let signature = node.room.sign(&envelope);
        Posted {
            sender: node.id(),
            message,
            envelope,
            signature,
            text: text.to_owned(),
        }
    }

    fn read(&mut self, reader: usize, posted: &Posted) -> Result<String, CryptoError> {
        let clock = self.clock();
        read_with(&mut self.nodes[reader].room, posted, clock)
    }
}

/// Verify the envelope, then decrypt, as a receiving wire layer does.
fn read_with(
    room: &mut RoomKeys,
    posted: &Posted,
    clock: EpochClock,
) -> Result<String, CryptoError> {
    room.verify(
        &posted.sender,
        posted.message.key_id,
        &posted.envelope,
        &posted.signature,
        &Solo,
    )?;
    let plaintext = room.decrypt(&posted.sender, &posted.message, clock, &Solo)?;
    Ok(String::from_utf8(plaintext).unwrap())
}

fn take_bundle(upload: &mut PrekeyUpload) -> PrekeyBundle {
    PrekeyBundle {
        identity: upload.identity,
        signed_prekey: upload.signed_prekey.clone(),
        one_time_prekey: upload.one_time_prekeys.pop(),
    }
}

/// The clock the tests that apply updates by hand use (the world starts there too).
const NOW: u64 = 1_000_000;

fn below(rng: &mut ChaCha20Rng, n: usize) -> usize {
    (rng.next_u64() % n as u64) as usize
}

// ---------------------------------------------------------------------------------------------
// Membership and key distribution
// ---------------------------------------------------------------------------------------------

#[test]
fn everyone_reads_everyone() {
    let mut world = World::with_members(1, 5);
    for round in 0..3 {
        for sender in 0..5 {
            let posted = world.post(sender, &format!("{sender} says {round}"));
            for reader in (0..5).filter(|&reader| reader != sender) {
                assert_eq!(world.read(reader, &posted).unwrap(), posted.text);
            }
        }
    }
}

#[test]
fn kicked_member_cannot_decrypt_after_rotation() {
    let mut world = World::with_members(2, 4);
    let kicked = 3;
    let before_kick = world.post(1, "before the kick");
    assert_eq!(world.read(kicked, &before_kick).unwrap(), "before the kick");
    // The kicked member keeps a copy of its keys instead of honouring the update.
    let hoarded: Vec<u8> = encode(&world.nodes[kicked].room);
    let old_key_ids: Vec<u32> = (0..3)
        .map(|sender| world.post(sender, "old key").message.key_id)
        .collect();

    world.set_members(&[0, 1, 2]);
    for (sender, &old_key_id) in old_key_ids.iter().enumerate() {
        let posted = world.post(sender, &format!("after the kick from {sender}"));
        assert_ne!(posted.message.key_id, old_key_id, "no rotation happened");
        for reader in (0..3).filter(|&reader| reader != sender) {
            assert_eq!(world.read(reader, &posted).unwrap(), posted.text);
        }
        let mut hoard: RoomKeys = decode(&hoarded);
        assert_eq!(
            read_with(&mut hoard, &posted, world.clock()),
            Err(CryptoError::UnknownSenderKey)
        );
        // Relabelling the message with the old key id does not help: the new chain is unrelated.
        let mut relabelled = posted.message.clone();
        relabelled.key_id = old_key_id;
        assert!(
            hoard
                .decrypt(&posted.sender, &relabelled, world.clock(), &Solo)
                .is_err()
        );
        // And the honest kicked member, having applied the update, holds nothing at all.
        assert_eq!(
            world.read(kicked, &posted),
            Err(CryptoError::UnknownSenderKey)
        );
    }
}

#[test]
fn removed_members_keys_are_dropped_and_their_messages_rejected() {
    let mut world = World::with_members(3, 3);
    let from_removed = world.post(2, "I am still here");
    world.set_members(&[0, 1]);
    assert_eq!(world.read(1, &from_removed), Err(CryptoError::NotAMember));
    // The removed member cannot send either.
    assert_eq!(
        world.nodes[2].room.encrypt(b"hello?", &Solo).unwrap_err(),
        CryptoError::NotAMember
    );
    // Its distributions are refused.
    let distribution = world.nodes[2].room.my_distribution();
    let removed = world.id(2);
    assert_eq!(
        world.nodes[1]
            .room
            .accept_distribution(&removed, &distribution, &Solo),
        Err(CryptoError::NotAMember)
    );
}

#[test]
fn joiner_cannot_read_older_messages() {
    let mut world = World::new(4, 4);
    world.set_members(&[0, 1, 2]);
    let older: Vec<Posted> = (0..3)
        .flat_map(|sender| [world.post(sender, "old 1"), world.post(sender, "old 2")])
        .collect();
    world.set_members(&[0, 1, 2, 3]);
    for posted in &older {
        assert_eq!(
            world.read(3, posted),
            Err(CryptoError::BeforeKeyDistribution)
        );
    }
    for sender in 0..3 {
        let posted = world.post(sender, "welcome");
        assert_eq!(world.read(3, &posted).unwrap(), "welcome");
    }
    let from_joiner = world.post(3, "hi all");
    for reader in 0..3 {
        assert_eq!(world.read(reader, &from_joiner).unwrap(), "hi all");
    }
}

#[test]
fn adding_members_sends_the_current_key_only_to_them() {
    let mut world = World::new(5, 4);
    world.set_members(&[0, 1, 2]);
    let update = world.update(&[0, 1, 2, 3]);
    let actions = world.nodes[1]
        .room
        .apply_membership(&mut world.rng, &update, NOW, &Solo)
        .unwrap();
    let [KeyAction::Distribute { to, distribution }] = actions.as_slice() else {
        panic!("expected one action")
    };
    assert_eq!(to, &vec![world.id(3)]);
    assert_eq!(
        distribution.key_id,
        world.nodes[1].room.my_distribution().key_id
    );
}

#[test]
fn removing_a_member_rotates_and_sends_the_new_key_to_the_remaining_members_only() {
    let mut world = World::with_members(6, 4);
    let old_key_id = world.nodes[1].room.my_distribution().key_id;
    let update = world.update(&[0, 1, 3]);
    let actions = world.nodes[1]
        .room
        .apply_membership(&mut world.rng, &update, NOW, &Solo)
        .unwrap();
    let [KeyAction::Distribute { to, distribution }] = actions.as_slice() else {
        panic!("expected one action")
    };
    assert_eq!(to, &vec![world.id(0), world.id(3)]);
    assert_eq!(distribution.key_id, old_key_id.wrapping_add(1));
    assert_eq!(distribution.index, 0);
}

#[test]
fn removed_member_who_rejoins_exchanges_fresh_keys_with_everyone() {
    let mut world = World::with_members(7, 3);
    world.set_members(&[0, 1]);
    world.set_members(&[0, 1, 2]);
    for sender in 0..3 {
        let posted = world.post(sender, "together again");
        for reader in (0..3).filter(|&reader| reader != sender) {
            assert_eq!(world.read(reader, &posted).unwrap(), "together again");
        }
    }
}

#[test]
fn membership_update_from_a_non_owner_is_rejected() {
    let mut world = World::with_members(8, 3);
    let members = vec![world.id(0), world.id(1)];
    // A member signs an update as itself...
    let by_member = MembershipUpdate::sign(
        &world.nodes[1].identity,
        world.room,
        99,
        99,
        members.clone(),
    );
    assert!(by_member.verify().is_ok());
    // ...or names the owner but cannot produce the owner's signature.
    let mut claimed = by_member.clone();
    claimed.owner = world.id(0);
    let before = encode(&world.nodes[2].room);
    let rng = &mut world.rng;
    assert_eq!(
        world.nodes[2]
            .room
            .apply_membership(rng, &by_member, NOW, &Solo)
            .unwrap_err(),
        CryptoError::NotRoomOwner
    );
    assert_eq!(
        world.nodes[2]
            .room
            .apply_membership(rng, &claimed, NOW, &Solo)
            .unwrap_err(),
        CryptoError::BadSignature
    );
    assert_eq!(encode(&world.nodes[2].room), before);
}

#[test]
fn tampered_membership_update_is_rejected() {
    let mut world = World::with_members(9, 3);
    let genuine = world.update(&[0, 1]);
    let mut added = genuine.clone();
    added.members.push(world.id(2));
    let mut epoch = genuine.clone();
    epoch.epoch += 1;
    let mut room = genuine.clone();
    room.room[0] ^= 1;
    for forged in [&added, &epoch] {
        assert_eq!(forged.verify(), Err(CryptoError::BadSignature));
        let rng = &mut world.rng;
        assert_eq!(
            world.nodes[1]
                .room
                .apply_membership(rng, forged, NOW, &Solo)
                .unwrap_err(),
            CryptoError::BadSignature
        );
    }
    let rng = &mut world.rng;
    assert_eq!(
        world.nodes[1]
            .room
            .apply_membership(rng, &room, NOW, &Solo)
            .unwrap_err(),
        CryptoError::WrongRoom
    );
}

#[test]
fn stale_or_replayed_membership_update_is_rejected() {
    let mut world = World::with_members(10, 3);
    let first = MembershipUpdate::sign(
        &world.nodes[0].identity,
        world.room,
        1,
        1,
        vec![world.id(0)],
    );
    world.set_members(&[0, 1]);
    let current = world.update(&[0, 1, 2]);
    world.broadcast(&current, &[0, 1, 2]);
    let before = encode(&world.nodes[1].room);
    for stale in [&first, &current] {
        let rng = &mut world.rng;
        assert_eq!(
            world.nodes[1]
                .room
                .apply_membership(rng, stale, NOW, &Solo)
                .unwrap_err(),
            CryptoError::StaleMembership
        );
    }
    assert_eq!(encode(&world.nodes[1].room), before);
    assert_eq!(world.nodes[1].room.epoch(), Some(current.epoch));
    assert_eq!(world.nodes[1].room.members().len(), 3);
}

#[test]
fn distribution_from_a_non_member_is_rejected() {
    let mut world = World::new(11, 3);
    world.set_members(&[0, 1]);
    let outsider = world.id(2);
    let distribution = SenderKey::generate(&mut world.rng, 1).distribution();
    assert_eq!(
        world.nodes[1]
            .room
            .accept_distribution(&outsider, &distribution, &Solo),
        Err(CryptoError::NotAMember)
    );
    assert_eq!(
        world.send_distribution(2, 1, &distribution),
        Err(CryptoError::NotAMember)
    );
}

#[test]
fn redistributing_a_held_key_cannot_rewind_it_to_replay_messages() {
    let mut world = World::with_members(12, 2);
    let stale_distribution = world.nodes[0].room.my_distribution();
    let posted = world.post(0, "read once");
    assert_eq!(world.read(1, &posted).unwrap(), "read once");
    // The old distribution (index 0) arrives again, e.g. resent or replayed by the network.
    world.send_distribution(0, 1, &stale_distribution).unwrap();
    assert_eq!(world.read(1, &posted), Err(CryptoError::DuplicateMessage));
}

#[test]
fn messages_under_the_previous_key_still_decrypt_after_a_rotation() {
    let mut world = World::with_members(13, 3);
    let in_flight = world.post(1, "sent just before the kick");
    world.set_members(&[0, 1]);
    assert_eq!(
        world.read(0, &in_flight).unwrap(),
        "sent just before the kick"
    );
}

#[test]
fn room_messages_are_bound_to_their_sender_and_room() {
    let mut world = World::with_members(14, 3);
    let posted = world.post(1, "from one");
    // Claimed as coming from another member (with that member's key id), it does not open.
    let impostor = Posted {
        sender: world.id(2),
        message: SenderKeyMessage {
            key_id: world.nodes[2].room.my_distribution().key_id,
            ..posted.message.clone()
        },
        ..posted.clone()
    };
    assert_eq!(
        world.nodes[0].room.decrypt(
            &impostor.sender,
            &impostor.message,
            EpochClock::at(NOW),
            &Solo
        ),
        Err(CryptoError::Decrypt)
    );
    assert_eq!(
        read_with(&mut world.nodes[0].room, &impostor, EpochClock::at(NOW)),
        Err(CryptoError::BadSignature)
    );
    // A member of the same room with the same keys but a different room id cannot open it.
    let mut other_room: RoomKeys = decode(&encode(&world.nodes[0].room));
    let mut bytes = encode(&other_room);
    bytes[0] ^= 1; // the room id is the first field
    other_room = decode(&bytes);
    assert_eq!(
        other_room.decrypt(&posted.sender, &posted.message, world.clock(), &Solo),
        Err(CryptoError::Decrypt)
    );
    assert_eq!(world.read(0, &posted).unwrap(), "from one");
}

#[test]
fn room_keys_survive_bincode_round_trip() {
    let mut world = World::with_members(15, 3);
    let early = world.post(1, "early");
    let late = world.post(1, "late");
    assert_eq!(world.read(0, &late).unwrap(), "late");
    let bytes = encode(&world.nodes[0].room);
    world.nodes[0].room = decode(&bytes);
    assert_eq!(encode(&world.nodes[0].room), bytes);
    assert_eq!(world.read(0, &early).unwrap(), "early");
    assert_eq!(world.read(0, &late), Err(CryptoError::DuplicateMessage));
    let posted = world.post(0, "still works");
    assert_eq!(world.read(2, &posted).unwrap(), "still works");
}

// ---------------------------------------------------------------------------------------------
// Membership epochs: keys from before a removal are refused once the grace is over
// ---------------------------------------------------------------------------------------------

/// Four members; the owner kicks 3, and the update reaches 0 and 1 but not 2, which keeps its
/// pre-kick key (one that 3 holds). Returns the kicked member's hoard of keys.
fn kick_that_member_two_misses(seed: u64) -> (World, RoomKeys) {
    let mut world = World::with_members(seed, 4);
    let hoard: RoomKeys = decode(&encode(&world.nodes[3].room));
    let update = world.update(&[0, 1, 2]);
    world.members = vec![0, 1, 2];
    // 0 and 1 rotate; their new keys are handed to 2 as well, which cannot take them yet.
    let mut actions = Vec::new();
    for node in [0, 1] {
        let rng = &mut world.rng;
        actions.extend(
            world.nodes[node]
                .room
                .apply_membership(rng, &update, world.now, &Solo)
                .unwrap()
                .into_iter()
                .map(|action| (node, action)),
        );
    }
    for (from, KeyAction::Distribute { to, distribution }) in actions {
        for recipient in to {
            let to = world.index_of(&recipient);
            let taken = world.send_distribution(from, to, &distribution);
            if to == 2 {
                assert_eq!(taken, Err(CryptoError::FutureEpoch));
            } else {
                taken.unwrap();
            }
        }
    }
    (world, hoard)
}

#[test]
fn the_epoch_is_authenticated_a_message_relabelled_with_another_epoch_does_not_open() {
    let mut rng = ChaCha20Rng::seed_from_u64(40);
    let mut sender = SenderKey::generate(&mut rng, 3);
    let genuine = sender.distribution();
    let message = sender.encrypt(b"epoch three", b"ad").unwrap();
    assert_eq!(message.epoch, 3);
    // A receiver told (falsely) that the key is for epoch 4, and the message relabelled to
    // match: the associated data differs, so the tag fails.
    let mut lied_to = ReceivedSenderKey::from_distribution(&SenderKeyDistribution {
        epoch: 4,
        ..genuine.clone()
    });
    let relabelled = SenderKeyMessage {
        epoch: 4,
        ..message.clone()
    };
    assert_eq!(
        lied_to.decrypt(&relabelled, b"ad"),
        Err(CryptoError::Decrypt)
    );
    // With the key's true epoch, a relabelled message does not even reach the AEAD.
    let mut receiver = ReceivedSenderKey::from_distribution(&genuine);
    assert_eq!(
        receiver.decrypt(&relabelled, b"ad"),
        Err(CryptoError::UnknownSenderKey)
    );
    assert_eq!(receiver.decrypt(&message, b"ad").unwrap(), b"epoch three");

    // In a room: a member's message relabelled with another epoch is refused.
    let mut world = World::with_members(41, 3);
    let mut posted = world.post(1, "genuine");
    for epoch in [posted.message.epoch - 1, posted.message.epoch + 1] {
        posted.message.epoch = epoch;
        assert!(world.read(0, &posted).is_err());
    }
}

#[test]
fn after_a_kick_keys_from_before_it_are_read_within_the_grace_and_refused_after() {
    let (mut world, _) = kick_that_member_two_misses(42);
    let kick_epoch = world.epoch;
    // 2 missed the kick and still sends under its old key, from the epoch before.
    let lagging = world.post(2, "from the member that missed the kick");
    assert!(lagging.message.epoch < kick_epoch);
    // In flight at the kick: still read during the grace.
    assert_eq!(world.read(0, &lagging).unwrap(), lagging.text);
    // Once the grace is over, the old key is refused.
    world.now += EPOCH_GRACE_MS;
    let again = world.post(2, "still lagging");
    assert_eq!(world.read(0, &again), Err(CryptoError::StaleEpoch));
    assert_eq!(world.read(1, &again), Err(CryptoError::StaleEpoch));
    // One millisecond less is still in the grace; a clock that went back is not.
    let mut just_in_time: RoomKeys = decode(&encode(&world.nodes[1].room));
    let clock = EpochClock {
        now_ms: world.now - 1,
        grace_ms: EPOCH_GRACE_MS,
    };
    assert_eq!(
        read_with(&mut just_in_time, &again, clock).unwrap(),
        again.text
    );
    let went_back = EpochClock::at(NOW - 1);
    assert_eq!(
        world.nodes[1]
            .room
            .check_epoch(again.message.epoch, went_back),
        Err(CryptoError::StaleEpoch)
    );
    // The remaining members' rotated keys are of the kick's epoch and read fine.
    let current = world.post(1, "rotated");
    assert_eq!(current.message.epoch, kick_epoch);
    assert_eq!(world.read(0, &current).unwrap(), "rotated");
}

#[test]
fn a_member_that_missed_the_kick_catches_up_from_a_forwarded_update_and_is_read_again() {
    let (mut world, mut hoard) = kick_that_member_two_misses(43);
    world.now += EPOCH_GRACE_MS;
    let refused = world.post(2, "under the old key");
    assert_eq!(world.read(1, &refused), Err(CryptoError::StaleEpoch));
    // The kicked member reads that one: this is what the refusal pushes the sender to fix.
    assert_eq!(
        read_with(&mut hoard, &refused, world.clock()).unwrap(),
        refused.text
    );
    // 1 hands 2 the owner's signed update it applied; 2 applies it and rotates.
    let forwarded = world.nodes[1].room.signed_membership().unwrap().clone();
    world.deliver(&forwarded, &[2]);
    // 0's and 1's new keys, refused before, are handed again and taken now.
    for from in [0, 1] {
        let distribution = world.nodes[from].room.my_distribution();
        world.send_distribution(from, 2, &distribution).unwrap();
    }
    let caught_up = world.post(2, "after catching up");
    assert_eq!(caught_up.message.epoch, world.epoch);
    for reader in [0, 1] {
        assert_eq!(world.read(reader, &caught_up).unwrap(), caught_up.text);
    }
    assert_eq!(
        read_with(&mut hoard, &caught_up, world.clock()),
        Err(CryptoError::UnknownSenderKey)
    );
    let from_one = world.post(1, "welcome back");
    assert_eq!(world.read(2, &from_one).unwrap(), "welcome back");
}

#[test]
fn a_message_from_an_epoch_we_have_not_seen_is_refused_as_future_until_we_have_the_update() {
    let (mut world, _) = kick_that_member_two_misses(44);
    let ahead = world.post(1, "from the new epoch");
    // 2 does not know the epoch yet: it should ask for the update, not drop the sender.
    assert_eq!(
        world.nodes[2]
            .room
            .check_epoch(ahead.message.epoch, world.clock()),
        Err(CryptoError::FutureEpoch)
    );
    assert_eq!(world.read(2, &ahead), Err(CryptoError::UnknownSenderKey));
    let before = encode(&world.nodes[2].room);
    let clock = world.clock();
    assert_eq!(
        world.nodes[2]
            .room
            .decrypt(&ahead.sender, &ahead.message, clock, &Solo),
        Err(CryptoError::FutureEpoch)
    );
    assert_eq!(encode(&world.nodes[2].room), before);
    let forwarded = world.nodes[0].room.signed_membership().unwrap().clone();
    world.deliver(&forwarded, &[2]);
    let distribution = world.nodes[1].room.my_distribution();
    world.send_distribution(1, 2, &distribution).unwrap();
    // The key was handed at its current index: the message posted before is out of reach, the
    // next one reads.
    let next = world.post(1, "next");
    assert_eq!(world.read(2, &next).unwrap(), "next");
}

#[test]
fn a_member_that_saw_nobody_leave_still_rotates_a_key_from_before_the_last_removal() {
    let mut world = World::with_members(45, 3);
    let old = world.nodes[1].room.my_distribution();
    // 2 is kicked and invited back; 1 gets only the second update, whose list looks unchanged.
    let kick = world.update(&[0, 1]);
    world.members = vec![0, 1];
    let rng = &mut world.rng;
    world.nodes[0]
        .room
        .apply_membership(rng, &kick, world.now, &Solo)
        .unwrap();
    let back = world.update(&[0, 1, 2]);
    assert_eq!(back.keys_from, kick.epoch);
    let rng = &mut world.rng;
    let actions = world.nodes[1]
        .room
        .apply_membership(rng, &back, world.now, &Solo)
        .unwrap();
    let [KeyAction::Distribute { to, distribution }] = actions.as_slice() else {
        panic!("expected one action")
    };
    assert_ne!(distribution.key_id, old.key_id);
    assert_eq!(distribution.epoch, back.epoch);
    assert_eq!(to, &vec![world.id(0), world.id(2)]);
}

#[test]
fn the_owner_moves_keys_from_on_removals_only_and_nobody_accepts_it_moving_back() {
    let mut world = World::with_members(46, 3);
    let owner = world.nodes[0].identity.clone();
    let start = world.nodes[0].room.keys_from().unwrap();
    let add_only = world.nodes[0]
        .room
        .next_membership(&owner, world.nodes[0].room.members().to_vec());
    assert_eq!(add_only.keys_from, start);
    let removal = world.nodes[0]
        .room
        .next_membership(&owner, vec![world.id(0), world.id(1)]);
    assert_eq!(removal.keys_from, removal.epoch);
    world.set_members(&[0, 1]);
    let keys_from = world.nodes[1].room.keys_from().unwrap();
    let members = vec![world.id(0), world.id(1), world.id(2)];
    for bad in [keys_from - 1, world.epoch + 2] {
        let update =
            MembershipUpdate::sign(&owner, world.room, world.epoch + 1, bad, members.clone());
        let rng = &mut world.rng;
        assert_eq!(
            world.nodes[1]
                .room
                .apply_membership(rng, &update, NOW, &Solo)
                .unwrap_err(),
            CryptoError::MalformedMembership
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Sender keys on their own
// ---------------------------------------------------------------------------------------------

fn sender_and_receiver(seed: u64) -> (SenderKey, ReceivedSenderKey) {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let sender = SenderKey::generate(&mut rng, 1);
    let receiver = ReceivedSenderKey::from_distribution(&sender.distribution());
    (sender, receiver)
}

fn assert_sender_key_rejected(
    receiver: &mut ReceivedSenderKey,
    message: &SenderKeyMessage,
    ad: &[u8],
    expected: CryptoError,
) {
    let before = encode(receiver);
    assert_eq!(receiver.decrypt(message, ad), Err(expected));
    assert_eq!(encode(receiver), before, "a failed decrypt changed the key");
}

#[test]
fn sender_key_messages_reorder_within_the_window_and_replays_are_rejected() {
    let (mut sender, mut receiver) = sender_and_receiver(20);
    let messages: Vec<SenderKeyMessage> = (0..10)
        .map(|i| sender.encrypt(format!("{i}").as_bytes(), b"ad").unwrap())
        .collect();
    for i in [3, 0, 9, 1, 2, 8, 4, 7, 6, 5] {
        assert_eq!(
            receiver.decrypt(&messages[i], b"ad").unwrap(),
            i.to_string().as_bytes()
        );
    }
    for message in &messages {
        assert_sender_key_rejected(&mut receiver, message, b"ad", CryptoError::DuplicateMessage);
    }
}

#[test]
fn sender_key_message_too_far_ahead_is_rejected() {
    let (mut sender, mut receiver) = sender_and_receiver(21);
    let messages: Vec<SenderKeyMessage> = (0..MAX_SKIP + 2)
        .map(|_| sender.encrypt(b"m", b"").unwrap())
        .collect();
    assert_sender_key_rejected(
        &mut receiver,
        &messages[MAX_SKIP as usize + 1],
        b"",
        CryptoError::TooManySkipped,
    );
    assert!(receiver.decrypt(&messages[MAX_SKIP as usize], b"").is_ok());
    assert!(receiver.decrypt(&messages[0], b"").is_ok());
}

#[test]
fn tampered_sender_key_messages_are_rejected_and_change_nothing() {
    let (mut sender, mut receiver) = sender_and_receiver(22);
    let genuine = sender.encrypt(b"genuine", b"room|sender").unwrap();
    let mut key_id = genuine.clone();
    key_id.key_id ^= 1;
    assert_sender_key_rejected(
        &mut receiver,
        &key_id,
        b"room|sender",
        CryptoError::UnknownSenderKey,
    );
    let mut index = genuine.clone();
    index.index += 1;
    assert_sender_key_rejected(&mut receiver, &index, b"room|sender", CryptoError::Decrypt);
    let mut ciphertext = genuine.clone();
    ciphertext.ciphertext[0] ^= 1;
    assert_sender_key_rejected(
        &mut receiver,
        &ciphertext,
        b"room|sender",
        CryptoError::Decrypt,
    );
    assert_sender_key_rejected(&mut receiver, &genuine, b"room|other", CryptoError::Decrypt);
    assert_eq!(
        receiver.decrypt(&genuine, b"room|sender").unwrap(),
        b"genuine"
    );
}

#[test]
fn envelope_signature_verifies_only_with_the_senders_distributed_key() {
    let (sender, receiver) = sender_and_receiver(23);
    let (other_sender, _) = sender_and_receiver(24);
    let signature = sender.sign(b"envelope");
    assert_eq!(receiver.verify(b"envelope", &signature), Ok(()));
    assert_eq!(receiver.signing_key(), &sender.verifying_key());
    assert_eq!(
        receiver.verify(b"envelopf", &signature),
        Err(CryptoError::BadSignature)
    );
    assert_eq!(
        receiver.verify(b"envelope", &other_sender.sign(b"envelope")),
        Err(CryptoError::BadSignature)
    );
    // Domain-separated: not a plain ed25519 signature over the bytes.
    assert!(
        sender
            .verifying_key()
            .verify_strict(b"envelope", &signature)
            .is_err()
    );
}

#[test]
fn sender_key_rotation_is_fresh_and_takes_the_next_id() {
    let mut rng = ChaCha20Rng::seed_from_u64(25);
    let old = SenderKey::generate(&mut rng, 1);
    let new = old.rotate(&mut rng, 2);
    assert_eq!(new.key_id(), old.key_id().wrapping_add(1));
    assert_ne!(new.verifying_key(), old.verifying_key());
    assert_ne!(new.distribution().chain_key, old.distribution().chain_key);
    assert_eq!(new.distribution().index, 0);
}

#[test]
fn public_room_is_readable_with_the_invite_secret_and_only_with_it() {
    let mut rng = ChaCha20Rng::seed_from_u64(26);
    let mut invite = [0; 32];
    rng.fill_bytes(&mut invite);
    let member = SigningKey::generate(&mut rng).verifying_key();
    let mut sender = SenderKey::from_invite_secret(&invite, &member, &mut rng);
    let messages: Vec<SenderKeyMessage> = (0..3)
        .map(|i| {
            sender
                .encrypt(format!("public {i}").as_bytes(), b"room")
                .unwrap()
        })
        .collect();
    let signature = sender.sign(b"envelope");

    // Anyone with the invite, joining at any time, reads from the very first message.
    let mut reader = ReceivedSenderKey::from_invite_secret(&invite, &member, sender.key_id());
    assert_eq!(reader.key_id(), sender.key_id());
    assert_eq!(reader.verify(b"envelope", &signature), Ok(()));
    for (i, message) in messages.iter().enumerate() {
        assert_eq!(
            reader.decrypt(message, b"room").unwrap(),
            format!("public {i}").as_bytes()
        );
    }

    // Another invite secret, or another member's derivation, reads nothing.
    let mut wrong_invite = invite;
    wrong_invite[0] ^= 1;
    let mut outsider =
        ReceivedSenderKey::from_invite_secret(&wrong_invite, &member, sender.key_id());
    assert!(outsider.decrypt(&messages[0], b"room").is_err());
    let other_member = SigningKey::generate(&mut rng).verifying_key();
    let mut mixed_up =
        ReceivedSenderKey::from_invite_secret(&invite, &other_member, sender.key_id());
    assert!(mixed_up.decrypt(&messages[0], b"room").is_err());
    assert_eq!(
        mixed_up.verify(b"envelope", &signature),
        Err(CryptoError::BadSignature)
    );
}

// ---------------------------------------------------------------------------------------------
// Simulation: many members, random joins, kicks and messages
// ---------------------------------------------------------------------------------------------

/// After every change, each message is readable by exactly the members at the time it was sent
/// (other than its sender); members who were kicked and kept copies of their keys read nothing
/// sent after the kick.
#[test]
fn many_member_simulation_only_current_members_read() {
    for seed in 0..3 {
        let size = 7;
        let mut world = World::new(100 + seed, size);
        world.set_members(&[0, 1, 2, 3]);
        let mut hoards: Vec<(usize, Vec<u8>)> = Vec::new();
        for _ in 0..40 {
            match below(&mut world.rng, 10) {
                0..=1 => {
                    // Kick a random non-owner member, who hoards its keys.
                    let candidates: Vec<usize> =
                        world.members.iter().copied().filter(|&m| m != 0).collect();
                    if candidates.len() > 1 {
                        let kicked = candidates[below(&mut world.rng, candidates.len())];
                        hoards.push((kicked, encode(&world.nodes[kicked].room)));
                        let remaining: Vec<usize> = world
                            .members
                            .iter()
                            .copied()
                            .filter(|&m| m != kicked)
                            .collect();
                        world.set_members(&remaining);
                    }
                }
                2..=3 => {
                    // Add someone who is not in the room (possibly a former member).
                    let outside: Vec<usize> =
                        (0..size).filter(|n| !world.members.contains(n)).collect();
                    if !outside.is_empty() {
                        let joiner = outside[below(&mut world.rng, outside.len())];
                        let mut members = world.members.clone();
                        members.push(joiner);
                        world.set_members(&members);
                    }
                }
                _ => {
                    let sender = world.members[below(&mut world.rng, world.members.len())];
                    let posted = world.post(sender, &format!("from {sender}"));
                    for reader in 0..size {
                        if reader == sender {
                            continue;
                        }
                        let result = world.read(reader, &posted);
                        if world.members.contains(&reader) {
                            assert_eq!(result.unwrap(), posted.text);
                        } else {
                            assert!(result.is_err(), "non-member {reader} read a room message");
                        }
                    }
                    for (hoarder, hoard) in &hoards {
                        if world.members.contains(hoarder) {
                            continue;
                        }
                        let mut hoard: RoomKeys = decode(hoard);
                        assert!(
                            read_with(&mut hoard, &posted, world.clock()).is_err(),
                            "kicked {hoarder} read a later message"
                        );
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn sender_key_any_delivery_order_decrypts_every_message_exactly_once(
        seed in any::<u64>(),
        order in Just((0..20usize).collect::<Vec<_>>()).prop_shuffle(),
    ) {
        let (mut sender, mut receiver) = sender_and_receiver(seed);
        let messages: Vec<SenderKeyMessage> = (0..20).map(|i| sender.encrypt(&[i as u8], b"ad").unwrap()).collect();
        for &i in &order {
            prop_assert_eq!(receiver.decrypt(&messages[i], b"ad").unwrap(), vec![i as u8]);
        }
        for message in &messages {
            prop_assert_eq!(receiver.decrypt(message, b"ad"), Err(CryptoError::DuplicateMessage));
        }
    }

    #[test]
    fn joining_at_index_k_reads_exactly_the_messages_from_k_on(seed in any::<u64>(), k in 0..12usize) {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let mut sender = SenderKey::generate(&mut rng, 1);
        let before: Vec<SenderKeyMessage> = (0..k).map(|_| sender.encrypt(b"before", b"").unwrap()).collect();
        let mut joiner = ReceivedSenderKey::from_distribution(&sender.distribution());
        let after: Vec<SenderKeyMessage> = (0..5).map(|_| sender.encrypt(b"after", b"").unwrap()).collect();
        for message in &before {
            prop_assert_eq!(joiner.decrypt(message, b""), Err(CryptoError::BeforeKeyDistribution));
        }
        for message in after.iter().rev() {
            prop_assert_eq!(joiner.decrypt(message, b"").unwrap(), b"after".to_vec());
        }
    }

    #[test]
    fn arbitrary_sender_key_messages_are_rejected_without_panic_or_state_change(
        seed in any::<u64>(),
        key_id_matches in any::<bool>(),
        index in prop_oneof![0..4u32, any::<u32>()],
        ciphertext in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let (sender, mut receiver) = sender_and_receiver(seed);
        let key_id = if key_id_matches { sender.key_id() } else { sender.key_id().wrapping_add(7) };
        let before = encode(&receiver);
        let forged = SenderKeyMessage { key_id, epoch: 1, index, ciphertext };
        prop_assert!(receiver.decrypt(&forged, b"").is_err());
        prop_assert_eq!(encode(&receiver), before);
    }
}
