#![allow(clippy::unwrap_used)]
//! A seeded simulation of one private room's members, each a [`Rooms`] machine, on one
//! simulated clock: the owner invites and kicks at random while members send, over gossip that
//! loses and delays messages and a pairwise channel (the outbox) that delays, reorders and, now
//! and then, loses a control message outright; members crash and restart (state reloaded from
//! what they wrote: room records and hand-outs; what they read), and are cut off and back.
//! Members that come back or reconnect ask each other for what they missed (gap fill).
//!
//! Each run checks, as it goes and at the end:
//! - a message is read at most once by each member, and only by a member its sender had in the
//!   room when it sealed it (a kicked member reads nothing sealed after its sender saw the kick);
//! - after the network heals and everyone has spoken once (which is how a member that missed a
//!   change learns of it), every member agrees with the owner on the epoch and the member list,
//!   and every message of a last round is read by every other member: the keys converged.
//!
//! `PALAVER_SIM_SEEDS` sets how many seeds run (200 by default); a failure names its seed.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};

use palaver_protocol::codec;
use palaver_protocol::crypto::sender_key::SenderKeyDistribution;
use palaver_protocol::delivery::Stamp;
use palaver_protocol::node::rooms::{LogRecord, Output, Room, RoomEvent, Rooms, gap_fill};
use palaver_protocol::wire::{Body, Content, Envelope, Payload, RoomMessage};
use palaver_protocol::{Identity, MessageId, RoomId, RoomName, Signature, UserName, VerifyingKey};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

const MEMBERS: usize = 5;
const SECOND: u64 = 1_000;
const CHAOS: u64 = 3 * 60 * SECOND;
/// After the heal: long enough for every wait, ask and grace (30 s) to run out twice.
const SETTLE: u64 = 2 * 60 * SECOND;
const TICK: u64 = SECOND;

#[test]
fn room_keys_converge_after_kicks_crashes_and_lost_control_messages() {
    let seeds: u64 = std::env::var("PALAVER_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let mut totals = Totals::default();
    for seed in 0..seeds {
        match Sim::new(seed).run() {
            Ok(run) => totals.add(run),
            Err(failure) => panic!("seed {seed}: {failure}"),
        }
    }
    eprintln!("{seeds} seeds: {totals:?}");
    // The runs went through what they claim to test.
    assert!(totals.kicks > 0 && totals.reinvites > 0, "{totals:?}");
    assert!(
        totals.lost_control > 0 && totals.key_requests > 0,
        "{totals:?}"
    );
    assert!(
        totals.membership_requests > 0 && totals.crashes > 0,
        "{totals:?}"
    );
    assert!(totals.gap_filled > 0, "{totals:?}");
    // Every text read or sent is logged without its text, and gap fill serves such messages
    // made whole again, others' too.
    assert_eq!(
        totals.logged_without_text,
        totals.read + totals.sent,
        "{totals:?}"
    );
    assert!(totals.gap_filled_made_again > 0, "{totals:?}");
    assert!(totals.full_rooms * 3 >= seeds, "{totals:?}");
}

#[derive(Debug, Default, Clone, Copy)]
struct Totals {
    kicks: u64,
    reinvites: u64,
    crashes: u64,
    lost_control: u64,
    key_requests: u64,
    membership_requests: u64,
    gap_filled: u64,
    /// Of those, messages the answering member read from someone else: it kept them without
    /// their text and made their frames again from its history.
    gap_filled_made_again: u64,
    /// Messages read or sent whose log record left their text to the history.
    logged_without_text: u64,
    read: u64,
    sent: u64,
    /// Runs that ended with three members or more (so the last round proved something).
    full_rooms: u64,
}

impl Totals {
    fn add(&mut self, o: Totals) {
        self.kicks += o.kicks;
        self.reinvites += o.reinvites;
        self.crashes += o.crashes;
        self.lost_control += o.lost_control;
        self.key_requests += o.key_requests;
        self.membership_requests += o.membership_requests;
        self.gap_filled += o.gap_filled;
        self.gap_filled_made_again += o.gap_filled_made_again;
        self.logged_without_text += o.logged_without_text;
        self.read += o.read;
        self.sent += o.sent;
        self.full_rooms += o.full_rooms;
    }
}

/// What a member wrote, and survives its crash.
#[derive(Default)]
struct Disk {
    rooms: BTreeMap<RoomId, Vec<u8>>,
    given: BTreeMap<(RoomId, [u8; 32]), SenderKeyDistribution>,
    /// History: what it read, by id, with how often (must stay 1).
    read: BTreeMap<MessageId, u32>,
    /// The room log gap fill serves: (sender, seq) → what is kept of the message.
    log: BTreeMap<([u8; 32], u64), LogRecord>,
    /// The history's texts, which a log record kept without its text is made whole from.
    texts: BTreeMap<MessageId, String>,
    seq: u64,
}

struct Member {
    identity: Identity,
    rooms: Option<Rooms>,
    disk: Disk,
    cut_off: bool,
}

impl Member {
    fn up(&self) -> bool {
        self.rooms.is_some()
    }
    fn reachable(&self) -> bool {
        self.up() && !self.cut_off
    }
}

#[derive(Debug)]
enum Event {
    Tick,
    Pairwise {
        from: usize,
        to: usize,
        payload: Payload,
    },
    Gossip {
        to: usize,
        id: MessageId,
        message: (RoomMessage, Signature),
        frame: Vec<u8>,
    },
    Send(usize),
    Kick(usize),
    Invite(usize),
    Crash(usize),
    Restart(usize),
    CutOff(usize),
    Reconnect(usize),
    Heal,
    Round(&'static str),
}

struct Sim {
    rng: ChaCha8Rng,
    now: u64,
    queue: BinaryHeap<Reverse<(u64, u64, usize)>>,
    events: HashMap<usize, Event>,
    next_event: usize,
    members: Vec<Member>,
    room: Option<RoomId>,
    healed: bool,
    /// Per message: who its sender had in the room when sealing it, and the round it was in.
    sealed: HashMap<MessageId, (BTreeSet<usize>, usize, &'static str)>,
    totals: Totals,
}

fn team() -> RoomName {
    RoomName::new("team").unwrap()
}

fn user(i: usize) -> UserName {
    UserName::new(format!("m{i}")).unwrap()
}

impl Sim {
    fn new(seed: u64) -> Self {
        let members = (0..MEMBERS)
            .map(|i| {
                let identity = Identity::from_secret_bytes(&[i as u8 + 1; 32]);
                Member {
                    rooms: Some(Rooms::new(identity.clone(), [])),
                    identity,
                    disk: Disk::default(),
                    cut_off: false,
                }
            })
            .collect();
        Self {
            rng: ChaCha8Rng::seed_from_u64(seed),
            now: 1_000_000,
            queue: BinaryHeap::new(),
            events: HashMap::new(),
            next_event: 0,
            members,
            room: None,
            healed: false,
            sealed: HashMap::new(),
            totals: Totals::default(),
        }
    }

    fn chance(&mut self, permille: u64) -> bool {
        self.rng.next_u64() % 1000 < permille
    }

    fn below(&mut self, n: u64) -> u64 {
        self.rng.next_u64() % n.max(1)
    }

    fn at(&mut self, delay: u64, event: Event) {
        let id = self.next_event;
        self.next_event += 1;
        self.events.insert(id, event);
        self.queue.push(Reverse((self.now + delay, id as u64, id)));
    }

    fn index(&self, key: &VerifyingKey) -> usize {
        self.members
            .iter()
            .position(|m| m.identity.public() == *key)
            .unwrap()
    }

    fn run(mut self) -> Result<Totals, String> {
        let start = self.now;
        let owner_rng = &mut ChaCha8Rng::seed_from_u64(self.rng.next_u64());
        let room = self.members[0]
            .rooms
            .as_mut()
            .unwrap()
            .create(team(), false, start, owner_rng)
            .unwrap();
        self.room = Some(room);
        self.drain(0)?;
        for i in 1..MEMBERS {
            self.at(i as u64 * 100, Event::Invite(i));
        }
        let mut t = 2 * SECOND;
        while t < CHAOS {
            let event = match self.below(20) {
                0 => Event::Kick(1 + self.below(MEMBERS as u64 - 1) as usize),
                1 => Event::Invite(1 + self.below(MEMBERS as u64 - 1) as usize),
                2 => Event::Crash(self.below(MEMBERS as u64) as usize),
                3 => Event::CutOff(self.below(MEMBERS as u64) as usize),
                _ => Event::Send(self.below(MEMBERS as u64) as usize),
            };
            self.at(t, event);
            t += 500 + self.below(2 * SECOND);
        }
        self.at(CHAOS, Event::Heal);
        // Everyone speaks once: whoever missed a change learns of it from the answers.
        self.at(CHAOS + SETTLE, Event::Round("warm-up"));
        self.at(CHAOS + 2 * SETTLE, Event::Round("last"));
        self.at(0, Event::Tick);
        let end = start + CHAOS + 3 * SETTLE;
        while let Some(Reverse((when, _, id))) = self.queue.pop() {
            if when > end {
                break;
            }
            self.now = when;
            let event = self.events.remove(&id).unwrap();
            self.on_event(event)?;
        }
        self.check()?;
        Ok(self.totals)
    }

    fn on_event(&mut self, event: Event) -> Result<(), String> {
        let now = self.now;
        match event {
            Event::Tick => {
                for i in 0..MEMBERS {
                    let Some(rooms) = self.members[i].rooms.as_mut() else {
                        continue;
                    };
                    if rooms.poll_timeout().is_some_and(|due| due <= now) {
                        rooms.handle_timeout(now);
                    }
                    self.drain(i)?;
                }
                // Members meet now and then, and ask each other for what they missed.
                if self.chance(100) {
                    let (a, b) = (self.below(MEMBERS as u64), self.below(MEMBERS as u64));
                    self.gap_fill(a as usize, b as usize)?;
                }
                self.at(TICK, Event::Tick);
            }
            Event::Pairwise { from, to, payload } => {
                if !self.members[to].reachable() || self.members[from].cut_off {
                    // The outbox keeps it and tries again.
                    let delay = SECOND + self.below(5 * SECOND);
                    self.at(delay, Event::Pairwise { from, to, payload });
                    return Ok(());
                }
                self.on_pairwise(from, to, payload)?;
            }
            Event::Gossip {
                to,
                id,
                message,
                frame,
            } => {
                let member = &mut self.members[to];
                if !member.reachable() || member.disk.read.contains_key(&id) {
                    return Ok(());
                }
                let rooms = member.rooms.as_mut().unwrap();
                let _ = rooms.receive(id, message, frame, now);
                self.drain(to)?;
            }
            Event::Send(i) => self.send(i, "chaos")?,
            Event::Round(round) => {
                for i in 0..MEMBERS {
                    self.send(i, round)?;
                }
            }
            Event::Kick(target) => self.owner_changes(target, true)?,
            Event::Invite(target) => self.owner_changes(target, false)?,
            Event::Crash(i) => {
                if let Some(rooms) = self.members[i].rooms.take() {
                    drop(rooms); // held messages, early and missing keys: gone
                    self.totals.crashes += 1;
                    let delay = SECOND + self.below(20 * SECOND);
                    self.at(delay, Event::Restart(i));
                }
            }
            Event::Restart(i) if !self.members[i].up() => self.restart(i)?,
            Event::Restart(_) => {} // the heal restarted it already
            Event::CutOff(i) => {
                if !self.healed {
                    self.members[i].cut_off = true;
                    let delay = SECOND + self.below(20 * SECOND);
                    self.at(delay, Event::Reconnect(i));
                }
            }
            Event::Reconnect(i) => {
                self.members[i].cut_off = false;
                self.catch_up(i)?;
            }
            Event::Heal => {
                self.healed = true;
                for i in 0..MEMBERS {
                    self.members[i].cut_off = false;
                    if !self.members[i].up() {
                        self.restart(i)?;
                    }
                }
                for i in 0..MEMBERS {
                    self.catch_up(i)?;
                }
            }
        }
        Ok(())
    }

    fn rng_for_member(&mut self) -> ChaCha8Rng {
        ChaCha8Rng::seed_from_u64(self.rng.next_u64())
    }

    fn owner_changes(&mut self, target: usize, kick: bool) -> Result<(), String> {
        let now = self.now;
        let mut rng = self.rng_for_member();
        let key = self.members[target].identity.public();
        let Some(rooms) = self.members[0].rooms.as_mut() else {
            return Ok(());
        };
        let result = if kick {
            rooms.kick(&team(), &user(target), Some(key), now, &mut rng)
        } else {
            rooms.invite(&team(), &user(target), key, now, &mut rng)
        };
        if result.is_ok() {
            match (kick, self.now > 1_000_000 + 2 * SECOND) {
                (true, _) => self.totals.kicks += 1,
                (false, true) => self.totals.reinvites += 1,
                (false, false) => {}
            }
        }
        self.drain(0)
    }

    fn on_pairwise(&mut self, from: usize, to: usize, payload: Payload) -> Result<(), String> {
        let now = self.now;
        let mut rng = self.rng_for_member();
        let sender = self.members[from].identity.public();
        let member = &mut self.members[to];
        let rooms = member.rooms.as_mut().unwrap();
        match payload {
            Payload::RoomInvite(invite) => {
                let _ = rooms.on_invite(sender, invite, now, &mut rng);
            }
            Payload::SenderKey { room, distribution } => {
                rooms.on_sender_key(sender, room, distribution, now, &mut rng)
            }
            Payload::Membership(update) => {
                let _ = rooms.on_membership(update, now, &mut rng);
            }
            Payload::KeyRequest { room } => {
                self.totals.key_requests += 1;
                let given = member.disk.given.get(&(room, sender.to_bytes())).cloned();
                let _ = rooms.on_key_request(sender, room, given, now);
            }
            Payload::MembershipRequest { room } => {
                self.totals.membership_requests += 1;
                let _ = rooms.on_membership_request(sender, room);
            }
            Payload::Leave { room } => {
                let _ = rooms.on_member_left(sender, room, now, &mut rng);
            }
            Payload::Text(_)
            | Payload::Receipt(_)
            | Payload::File(_)
            | Payload::FileWhole { .. }
            | Payload::FileDeclined { .. }
            | Payload::Sent { .. } => {}
        }
        self.drain(to)
    }

    /// Carries out member `i`'s outputs.
    fn drain(&mut self, i: usize) -> Result<(), String> {
        loop {
            let Some(output) = self.members[i].rooms.as_mut().and_then(Rooms::poll_output) else {
                return Ok(());
            };
            match output {
                Output::Save(id) => self.save(i, id),
                Output::Forget(id) => {
                    self.members[i].disk.rooms.remove(&id);
                }
                Output::KeyGiven {
                    room,
                    members,
                    distribution,
                } => {
                    for member in members {
                        let key = (room, member.to_bytes());
                        self.members[i].disk.given.insert(key, distribution.clone());
                    }
                }
                Output::Send { room, to, payload } => {
                    if matches!(*payload, Payload::SenderKey { .. }) {
                        let rooms = self.members[i].rooms.as_ref().unwrap();
                        let members = rooms.room(&room).map(Room::members).unwrap_or_default();
                        if !members.contains(&to) {
                            let to = self.index(&to);
                            return Err(format!("m{i} handed its key to m{to}, not a member"));
                        }
                    }
                    let to = self.index(&to);
                    // An invitation is not lost: one that were would only mean the user asks
                    // the owner again (who sees the name in the member list).
                    let invitation = matches!(*payload, Payload::RoomInvite(_));
                    if !self.healed && !invitation && self.chance(30) {
                        self.totals.lost_control += 1;
                        continue;
                    }
                    let slow = self.chance(100);
                    let delay = 20 + self.below(if slow { 8_000 } else { 300 });
                    self.at(
                        delay,
                        Event::Pairwise {
                            from: i,
                            to,
                            payload: *payload,
                        },
                    );
                }
                Output::Read(read) => {
                    let sender = self.index(&read.sender);
                    let Some((allowed, _, _)) = self.sealed.get(&read.id) else {
                        return Err(format!("m{i} read a message nobody sealed"));
                    };
                    if !allowed.contains(&i) {
                        return Err(format!(
                            "m{i} read m{sender}'s message sealed for {allowed:?} only"
                        ));
                    }
                    let disk = &mut self.members[i].disk;
                    let count = disk.read.entry(read.id).or_default();
                    *count += 1;
                    if *count > 1 {
                        return Err(format!("m{i} read a message of m{sender} twice"));
                    }
                    if read.log.text_of().is_some() {
                        self.totals.logged_without_text += 1;
                    }
                    disk.log
                        .insert((read.sender.to_bytes(), read.seq), read.log);
                    disk.texts.insert(read.id, read.text);
                    self.totals.read += 1;
                }
                Output::Event(RoomEvent::Invited { .. }) => {
                    // The user accepts at once.
                    let now = self.now;
                    let mut rng = self.rng_for_member();
                    let rooms = self.members[i].rooms.as_mut().unwrap();
                    rooms
                        .join(&team(), now, &mut rng)
                        .map_err(|e| e.to_string())?;
                }
                Output::Subscribe(_)
                | Output::Unsubscribe(_)
                | Output::MeshChanged(_)
                | Output::Seek { .. }
                | Output::Register(_)
                | Output::Unregister(_)
                | Output::Republish(_)
                | Output::Event(RoomEvent::Removed { .. }) => {}
            }
        }
    }

    fn save(&mut self, i: usize, id: RoomId) {
        let member = &mut self.members[i];
        if let Some(room) = member.rooms.as_ref().and_then(|r| r.room(&id)) {
            member.disk.rooms.insert(id, codec::encode(room).unwrap());
        }
    }

    fn restart(&mut self, i: usize) -> Result<(), String> {
        let member = &mut self.members[i];
        let rooms: Vec<Room> = member
            .disk
            .rooms
            .values()
            .map(|bytes| codec::decode(bytes).unwrap())
            .collect();
        member.rooms = Some(Rooms::new(member.identity.clone(), rooms));
        member.rooms.as_mut().unwrap().start();
        self.drain(i)?;
        self.catch_up(i)
    }

    /// Member `i` is back: it asks every member it reaches for what it missed.
    fn catch_up(&mut self, i: usize) -> Result<(), String> {
        for j in 0..MEMBERS {
            if j != i {
                self.gap_fill(i, j)?;
            }
        }
        Ok(())
    }

    /// `asker` asks `peer` for what it missed of the room, until nothing more comes.
    fn gap_fill(&mut self, asker: usize, peer: usize) -> Result<(), String> {
        let room = self.room.unwrap();
        for _ in 0..16 {
            if asker == peer || !self.members[asker].reachable() || !self.members[peer].reachable()
            {
                return Ok(());
            }
            let index = self.members[asker].disk.log.keys().copied();
            let request = gap_fill::request(room, index);
            let key = self.members[asker].identity.public();
            let answering = self.members[peer].identity.public();
            let disk = &self.members[peer].disk;
            let log = (disk.log.iter())
                .map(|((sender, seq), record)| (*sender, *seq, move || Some(record.clone())));
            let text_of = |id: &MessageId| disk.texts.get(id).cloned();
            let rooms = self.members[peer].rooms.as_ref().unwrap();
            let answer = rooms.answer_gap_fill(&key, &request, log, text_of);
            let mut progressed = false;
            for envelope in answer.envelopes {
                let id = envelope.id();
                let frame = envelope.to_bytes().unwrap();
                let made_again = *envelope.sender() != answering;
                let Body::Room(message) = envelope.body else {
                    continue;
                };
                if self.members[asker].disk.read.contains_key(&id) {
                    continue;
                }
                let now = self.now;
                let rooms = self.members[asker].rooms.as_mut().unwrap();
                let envelope = (message, envelope.signature);
                if rooms.receive(id, envelope, frame, now).is_ok() {
                    progressed = true;
                    self.totals.gap_filled += 1;
                    self.totals.gap_filled_made_again += u64::from(made_again);
                }
                self.drain(asker)?;
            }
            if !(answer.more && progressed) {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Member `i` writes in the room, if it may; the message goes to every member it reaches.
    fn send(&mut self, i: usize, round: &'static str) -> Result<(), String> {
        if !self.members[i].up() {
            return Ok(());
        }
        let now = self.now;
        let member = &mut self.members[i];
        let rooms = member.rooms.as_mut().unwrap();
        let Ok(room) = rooms.writable(&team()) else {
            return Ok(());
        };
        let allowed: BTreeSet<usize> = rooms
            .room(&room)
            .unwrap()
            .members()
            .iter()
            .map(|key| {
                self.members
                    .iter()
                    .position(|m| m.identity.public() == *key)
                    .unwrap()
            })
            .collect();
        let member = &mut self.members[i];
        let rooms = member.rooms.as_mut().unwrap();
        member.disk.seq += 1;
        let seq = member.disk.seq;
        let text = format!("{round} from m{i}");
        let content = Content {
            sent_at_ms: now,
            stamp: Stamp(now),
            seq,
            payload: Payload::Text(text.clone()),
        };
        let sealed = rooms.seal(room, &content).map_err(|e| e.to_string())?;
        // The chain moved: the room is written with the message, and the message to the log;
        // that is durable at once here.
        rooms.settled(&sealed.id);
        let key = member.identity.public().to_bytes();
        self.totals.sent += 1;
        self.totals.logged_without_text += u64::from(sealed.log.text_of().is_some());
        member.disk.log.insert((key, seq), sealed.log.clone());
        member.disk.texts.insert(sealed.id, text);
        self.save(i, room);
        self.sealed.insert(sealed.id, (allowed, i, round));
        let envelope = Envelope::from_bytes(&sealed.frame).unwrap();
        let Body::Room(message) = envelope.body else {
            unreachable!()
        };
        let message = (message, envelope.signature);
        if self.members[i].cut_off {
            return Ok(()); // published into the void; gap fill brings it later
        }
        for to in (0..MEMBERS).filter(|to| *to != i) {
            if !self.healed && self.chance(50) {
                continue;
            }
            let delay = 10 + self.below(500);
            let (id, frame, message) = (sealed.id, sealed.frame.clone(), message.clone());
            self.at(
                delay,
                Event::Gossip {
                    to,
                    id,
                    message,
                    frame,
                },
            );
        }
        Ok(())
    }

    fn check(&mut self) -> Result<(), String> {
        let owner = self.members[0].rooms.as_ref().unwrap();
        let room = owner.room(&self.room.unwrap()).unwrap();
        let (epoch, members) = (room.epoch(), room.members());
        let in_room: Vec<usize> = members.iter().map(|k| self.index(k)).collect();
        self.totals.full_rooms += u64::from(in_room.len() >= 3);
        for &i in &in_room {
            let theirs = self.members[i].rooms.as_ref().unwrap();
            let Ok(id) = theirs.writable(&team()) else {
                return Err(format!("m{i} is in the owner's list but cannot write"));
            };
            let theirs = theirs.room(&id).unwrap();
            if theirs.epoch() != epoch || theirs.members() != members {
                return Err(format!(
                    "m{i} holds epoch {:?} with {} members; the owner {epoch:?} with {}",
                    theirs.epoch(),
                    theirs.members().len(),
                    members.len()
                ));
            }
        }
        for i in (0..MEMBERS).filter(|i| !in_room.contains(i)) {
            if self.members[i]
                .rooms
                .as_ref()
                .unwrap()
                .writable(&team())
                .is_ok()
            {
                return Err(format!("m{i} was removed but still writes in the room"));
            }
        }
        for (id, (_, sender, round)) in &self.sealed {
            if *round != "last" || !in_room.contains(sender) {
                continue;
            }
            for &reader in in_room.iter().filter(|r| *r != sender) {
                if !self.members[reader].disk.read.contains_key(id) {
                    return Err(format!(
                        "m{reader} did not read m{sender}'s last message (members {in_room:?})"
                    ));
                }
            }
        }
        Ok(())
    }
}
