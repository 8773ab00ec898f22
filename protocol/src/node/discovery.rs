//! Our discovery registrations at the rendezvous: which namespaces our signed peer record goes
//! under, and when it is said again.
//!
//! The record holds our external addresses. It goes under our own peer namespace and each
//! public room's we are in, at each login and whenever those addresses change; it is renewed at
//! half its TTL ([`RENEW_MS`]), so it never lapses while we are logged in. A public room's
//! members are shown only to those registered there, so once our registration in a room is
//! kept, we look the room up. A registration refused or unanswered is tried again
//! [`REGISTER_RETRY_MS`] later. Discovery is served to logged-in sessions only, so between
//! [`Publisher::logged_out`] and [`Publisher::logged_in`] it asks nothing. The driver seals the
//! record (it holds the key) and sends the requests. What it finds it believes only as far as
//! the signatures go ([`signer`]).

use std::collections::{BTreeSet, HashMap, VecDeque};

use libp2p_identity::PeerId;
use multiaddr::Multiaddr;

use crate::rendezvous::discovery::{DEFAULT_TTL_SECS, Namespace};
use crate::wire::RoomId;

/// Registrations are renewed at half their TTL.
pub const RENEW_MS: u64 = DEFAULT_TTL_SECS as u64 * 1000 / 2;
/// A registration refused or unanswered is tried again this much later.
pub const REGISTER_RETRY_MS: u64 = 30_000;

/// What to ask the rendezvous.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Seal a record of `addrs` and register it under each of `namespaces` for `ttl_secs`;
    /// report each with [`Publisher::registered`].
    Register {
        namespaces: Vec<Namespace>,
        addrs: Vec<Multiaddr>,
        ttl_secs: u32,
    },
    Unregister(Namespace),
    Discover(Namespace),
}

/// Whose signature makes a record found under a namespace believable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signer {
    /// Only the peer's own: neither the server nor another instance can send us to addresses
    /// a peer did not publish.
    Exactly(PeerId),
    /// Any: a public room's members each sign their own record (the record is for its signer).
    Any,
}

/// Whose signature a record under `namespace` needs.
pub fn signer(namespace: &Namespace) -> Signer {
    match namespace {
        Namespace::Peer(peer) => Signer::Exactly(*peer),
        Namespace::Room(_) => Signer::Any,
    }
}

/// A record from a lookup's answer whose signature the driver checked: who signed it, its
/// version, and where that peer says it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    pub peer: PeerId,
    pub seq: u64,
    pub addrs: Vec<Multiaddr>,
}

/// What a lookup found, for the delivery planner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// `peer` says it is at `addrs`.
    At { peer: PeerId, addrs: Vec<Multiaddr> },
    /// A public room's member: keep a connection to it.
    Member(PeerId),
    /// No record of `peer` (offline, or never registered here): its messages go to the mailbox
    /// rather than wait.
    NotFound(PeerId),
}

#[derive(Debug)]
pub struct Publisher {
    me: PeerId,
    /// Discovery is served to logged-in sessions only: logged out, nothing is asked.
    logged_in: bool,
    /// The external addresses in our last record, sorted.
    addrs: Vec<Multiaddr>,
    /// When to renew it (wall-clock ms).
    renew_at: Option<u64>,
    /// The public rooms it went to with those addresses (so a login's room lookups do not
    /// register there twice).
    rooms: BTreeSet<RoomId>,
    /// Registrations refused or unanswered, and when to try each again.
    retry: HashMap<Namespace, u64>,
    outputs: VecDeque<Output>,
}

impl Publisher {
    pub fn new(me: PeerId) -> Self {
        Self {
            me,
            logged_in: false,
            addrs: Vec::new(),
            renew_at: None,
            rooms: BTreeSet::new(),
            retry: HashMap::new(),
            outputs: VecDeque::new(),
        }
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// We logged in: our record goes everywhere ([`Publisher::register_all`]).
    pub fn logged_in(&mut self, now: u64, addrs: Vec<Multiaddr>, public_rooms: &[RoomId]) {
        self.logged_in = true;
        self.register_all(now, addrs, public_rooms);
    }

    /// Registers our record — `addrs` now — under our own namespace and each of
    /// `public_rooms` (while logged in). Without external addresses there is nothing to tell
    /// yet: the change that brings one registers again.
    pub fn register_all(&mut self, now: u64, mut addrs: Vec<Multiaddr>, public_rooms: &[RoomId]) {
        if !self.logged_in {
            return;
        }
        addrs.sort();
        self.addrs = addrs.clone();
        self.rooms.clear();
        self.retry.clear();
        if addrs.is_empty() {
            self.renew_at = None;
            return;
        }
        self.renew_at = Some(now.saturating_add(RENEW_MS));
        self.rooms.extend(public_rooms.iter().copied());
        let own = std::iter::once(Namespace::Peer(self.me));
        let namespaces = own.chain(public_rooms.iter().map(|r| Namespace::Room(*r)));
        self.register(namespaces.collect(), addrs);
    }

    fn register(&mut self, namespaces: Vec<Namespace>, addrs: Vec<Multiaddr>) {
        let ttl_secs = DEFAULT_TTL_SECS;
        self.outputs.push_back(Output::Register {
            namespaces,
            addrs,
            ttl_secs,
        });
    }

    /// We are logged out: nothing is renewed or tried again until the next login registers
    /// everything afresh ([`Publisher::register_all`]); what was still to be asked is dropped.
    pub fn logged_out(&mut self) {
        self.logged_in = false;
        self.renew_at = None;
        self.retry.clear();
        self.rooms.clear();
        self.outputs.clear();
    }

    /// Our external addresses are now `addrs` (one confirmed by AutoNAT, a relay slot given
    /// back): registered again (while logged in) if the record says otherwise, as libp2p's
    /// own client does.
    pub fn addresses(&mut self, now: u64, mut addrs: Vec<Multiaddr>, public_rooms: &[RoomId]) {
        addrs.sort();
        if addrs != self.addrs {
            self.register_all(now, addrs, public_rooms);
        }
    }

    /// When our record is to be renewed, or a registration tried again (wall-clock ms).
    pub fn poll_timeout(&self) -> Option<u64> {
        self.renew_at
            .into_iter()
            .chain(self.retry.values().copied())
            .min()
    }

    /// Renews our record, half-way to its expiry, wherever it goes now; tries again the
    /// registrations whose time came.
    pub fn handle_timeout(&mut self, now: u64, public_rooms: &[RoomId]) {
        if self.renew_at.is_some_and(|at| at <= now) {
            return self.register_all(now, self.addrs.clone(), public_rooms);
        }
        let mut due: Vec<Namespace> = (self.retry.iter())
            .filter(|(_, at)| **at <= now)
            .map(|(namespace, _)| namespace.clone())
            .collect();
        if due.is_empty() {
            return;
        }
        due.sort_by_key(|namespace| matches!(namespace, Namespace::Room(_)));
        for namespace in &due {
            self.retry.remove(namespace);
        }
        self.register(due, self.addrs.clone());
    }

    /// Registers in public room `room` (just joined, or after login) unless our record is there
    /// already with these addresses. Even without an address: a member that cannot be dialed is
    /// still one to be dialed by.
    pub fn register_in_room(&mut self, room: RoomId, mut addrs: Vec<Multiaddr>) {
        addrs.sort();
        if !self.logged_in || self.rooms.contains(&room) && addrs == self.addrs {
            return;
        }
        self.rooms.insert(room);
        self.register(vec![Namespace::Room(room)], addrs);
    }

    /// We left public room `room`: our record comes out of it (logged out, it cannot be
    /// asked, and lapses at its TTL).
    pub fn leave_room(&mut self, room: RoomId) {
        self.rooms.remove(&room);
        self.retry.remove(&Namespace::Room(room));
        if self.logged_in {
            self.outputs
                .push_back(Output::Unregister(Namespace::Room(room)));
        }
    }

    /// What a lookup under `namespace` found: `records` opened (for a peer's namespace, only
    /// those that peer signed), or `None` if the lookup failed. For one peer: the newest of its
    /// records, or nothing found. For a public room: each member other than us, wanted, and
    /// where it is.
    pub fn found(&self, namespace: Namespace, records: Option<Vec<Opened>>) -> Vec<Found> {
        let records = records.unwrap_or_default();
        match namespace {
            Namespace::Peer(peer) => {
                let newest = records.into_iter().max_by_key(|record| record.seq);
                vec![match newest {
                    Some(record) => Found::At {
                        peer,
                        addrs: record.addrs,
                    },
                    None => Found::NotFound(peer),
                }]
            }
            Namespace::Room(_) => records
                .into_iter()
                .filter(|record| record.peer != self.me)
                .flat_map(|record| {
                    let at = Found::At {
                        peer: record.peer,
                        addrs: record.addrs,
                    };
                    [Found::Member(record.peer), at]
                })
                .collect(),
        }
    }

    /// The rendezvous kept our record under `namespace`, or refused it (or did not answer):
    /// then it is tried again [`REGISTER_RETRY_MS`] after `now`, while it still goes there.
    pub fn registered(&mut self, namespace: &Namespace, kept: bool, now: u64) {
        let still = match namespace {
            Namespace::Peer(peer) => *peer == self.me,
            Namespace::Room(room) => self.rooms.contains(room),
        };
        match (namespace, kept) {
            // The server shows a room's members to those registered there: now we are.
            (Namespace::Room(room), true) => self
                .outputs
                .push_back(Output::Discover(Namespace::Room(*room))),
            (_, true) => {}
            (_, false) if still => {
                let at = now.saturating_add(REGISTER_RETRY_MS);
                self.retry.entry(namespace.clone()).or_insert(at);
            }
            (_, false) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(seed: u8) -> PeerId {
        crate::identity::peer_id_of(&crate::Identity::from_secret_bytes(&[seed; 32]).public())
    }

    fn addr(port: u16) -> Multiaddr {
        format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap()
    }

    fn outputs(publisher: &mut Publisher) -> Vec<Output> {
        std::iter::from_fn(|| publisher.poll_output()).collect()
    }

    #[test]
    fn a_login_registers_everywhere_and_the_record_follows_the_addresses() {
        let me = peer(1);
        let mut publisher = Publisher::new(me);
        let room = RoomId([1; 32]);
        // Logged out: nothing is asked.
        publisher.register_all(0, vec![addr(1)], &[room]);
        publisher.register_in_room(room, vec![addr(1)]);
        publisher.leave_room(room);
        assert!(outputs(&mut publisher).is_empty());
        // No address yet: nothing to say.
        publisher.logged_in(0, Vec::new(), &[room]);
        assert!(outputs(&mut publisher).is_empty());
        assert_eq!(publisher.poll_timeout(), None);
        // One comes: registered under our namespace and the room's.
        publisher.addresses(1_000, vec![addr(2), addr(1)], &[room]);
        let registered = Output::Register {
            namespaces: vec![Namespace::Peer(me), Namespace::Room(room)],
            addrs: vec![addr(1), addr(2)],
            ttl_secs: DEFAULT_TTL_SECS,
        };
        assert_eq!(outputs(&mut publisher), vec![registered.clone()]);
        // The same addresses, in another order, before the renewal: nothing.
        publisher.addresses(2_000, vec![addr(1), addr(2)], &[room]);
        assert!(outputs(&mut publisher).is_empty());
        // Half the TTL later: again.
        assert_eq!(publisher.poll_timeout(), Some(1_000 + RENEW_MS));
        publisher.handle_timeout(RENEW_MS, &[room]);
        assert!(outputs(&mut publisher).is_empty(), "not due yet");
        publisher.handle_timeout(1_000 + RENEW_MS, &[room]);
        assert_eq!(outputs(&mut publisher), vec![registered]);
        assert_eq!(publisher.poll_timeout(), Some(1_000 + 2 * RENEW_MS));
        // An address goes: again, with what is left.
        publisher.addresses(1_000 + RENEW_MS + 1, vec![addr(2)], &[room]);
        assert!(matches!(&outputs(&mut publisher)[..],
            [Output::Register { addrs, .. }] if *addrs == vec![addr(2)]));
        // The last one goes: nothing to say, nothing to renew.
        publisher.addresses(1_000 + RENEW_MS + 2, Vec::new(), &[room]);
        assert!(outputs(&mut publisher).is_empty());
        assert_eq!(publisher.poll_timeout(), None);
        // Logged out: nothing is renewed until the next login.
        publisher.register_all(5_000, vec![addr(1)], &[room]);
        publisher.registered(&Namespace::Peer(me), false, 5_000);
        publisher.logged_out();
        assert!(outputs(&mut publisher).is_empty());
        assert_eq!(publisher.poll_timeout(), None);
        publisher.addresses(6_000, vec![addr(3)], &[room]);
        assert!(outputs(&mut publisher).is_empty());
    }

    #[test]
    fn a_lookup_finds_a_peers_newest_record_and_a_rooms_other_members() {
        let (me, ann, ben) = (peer(1), peer(2), peer(3));
        let publisher = Publisher::new(me);
        let opened = |peer, seq, port| Opened {
            peer,
            seq,
            addrs: vec![addr(port)],
        };
        let records = vec![opened(ann, 2, 20), opened(ann, 5, 50), opened(ann, 3, 30)];
        assert_eq!(
            publisher.found(Namespace::Peer(ann), Some(records)),
            [Found::At {
                peer: ann,
                addrs: vec![addr(50)]
            }]
        );
        assert_eq!(
            publisher.found(Namespace::Peer(ann), Some(Vec::new())),
            [Found::NotFound(ann)]
        );
        assert_eq!(
            publisher.found(Namespace::Peer(ann), None),
            [Found::NotFound(ann)]
        );
        let room = Namespace::Room(RoomId([1; 32]));
        let members = vec![opened(me, 1, 10), opened(ben, 1, 30)];
        assert_eq!(
            publisher.found(room.clone(), Some(members)),
            [
                Found::Member(ben),
                Found::At {
                    peer: ben,
                    addrs: vec![addr(30)]
                }
            ]
        );
        assert!(publisher.found(room.clone(), None).is_empty());
        // A peer's record must be its own; a room's, each its signer's.
        assert_eq!(signer(&Namespace::Peer(ann)), Signer::Exactly(ann));
        assert_eq!(signer(&room), Signer::Any);
    }

    #[test]
    fn a_room_is_registered_once_per_record_and_looked_up_once_kept() {
        let mut publisher = Publisher::new(peer(2));
        let room = RoomId([2; 32]);
        publisher.logged_in(0, Vec::new(), &[]);
        publisher.register_in_room(room, Vec::new());
        publisher.register_in_room(room, Vec::new());
        assert_eq!(outputs(&mut publisher).len(), 1, "once");
        publisher.registered(&Namespace::Room(room), false, 0);
        assert!(
            outputs(&mut publisher).is_empty(),
            "refused: nothing to look up"
        );
        // Tried again a while later.
        assert_eq!(publisher.poll_timeout(), Some(REGISTER_RETRY_MS));
        publisher.handle_timeout(REGISTER_RETRY_MS - 1, &[room]);
        assert!(outputs(&mut publisher).is_empty(), "not yet");
        publisher.handle_timeout(REGISTER_RETRY_MS, &[room]);
        assert!(matches!(&outputs(&mut publisher)[..],
            [Output::Register { namespaces, .. }] if *namespaces == vec![Namespace::Room(room)]));
        assert_eq!(publisher.poll_timeout(), None);
        publisher.registered(&Namespace::Room(room), true, REGISTER_RETRY_MS);
        assert_eq!(
            outputs(&mut publisher),
            vec![Output::Discover(Namespace::Room(room))]
        );
        publisher.leave_room(room);
        assert_eq!(
            outputs(&mut publisher),
            vec![Output::Unregister(Namespace::Room(room))]
        );
        // Joined again: registered again.
        publisher.register_in_room(room, Vec::new());
        assert_eq!(outputs(&mut publisher).len(), 1);
    }
}
