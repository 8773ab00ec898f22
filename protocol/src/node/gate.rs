//! The gossip gate's rulebook: who may take part in which room topic, and what becomes of those
//! who may not. No swarm and no clock: the driver passes `now` (ms on a clock that does not go
//! back) and carries the decisions out against its gossip implementation.
//!
//! A private room's topic is *gated*: only its members' peers may subscribe to it or publish
//! into it. Every other topic (a public room's, or one we know nothing about) is open.
//!
//! - A subscription to a gated topic from an outsider is refused and counted
//!   ([`MeshAccess::on_refused_subscription`]); the driver keeps it aside and takes it after all
//!   if [`MeshAccess::set_members`] names the peer as newly admitted.
//! - An outsider's publications are dropped and counted ([`MeshAccess::on_outsider_messages`]);
//!   one that sends more than [`OFFENCES_BEFORE_DISCONNECT`] within [`OFFENCE_WINDOW_MS`] is
//!   disconnected and its connections refused for [`BAN_MS`]; warnings about it come at most
//!   every [`WARN_EVERY_MS`] per peer.
//! - A member removed while subscribed is pushed out: [`MeshAccess::set_members`] names, among
//!   the topic's subscribers, those it no longer admits.
//!
//! Offenders and bans are remembered for at most [`MAX_TRACKED`] peers each; the stalest go
//! first.
//!
//! The topic key is the driver's (gossipsub's topic hash in the daemon, anything in tests).

use std::collections::{HashMap, HashSet};
use std::hash::Hash;

use libp2p_identity::PeerId;
use serde::Serialize;

/// Outsider messages a peer may have dropped within [`OFFENCE_WINDOW_MS`] before it is
/// disconnected. Above what an honest peer sends in the moment before we learn that it joined
/// (its messages to us are dropped until then, and come back through gap fill).
pub const OFFENCES_BEFORE_DISCONNECT: u32 = 16;
/// The window over which an outsider's dropped messages are counted against it.
pub const OFFENCE_WINDOW_MS: u64 = 60_000;
/// How long a disconnected offender's connections are refused.
pub const BAN_MS: u64 = 600_000;
/// At most one warning per offending peer this often (what was dropped meanwhile is summed up).
pub const WARN_EVERY_MS: u64 = 60_000;
/// Offenders, and bans, remembered at once; the stalest go first.
pub const MAX_TRACKED: usize = 1024;

/// What the gate counted since it was made (`palaver status`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct GateCounters {
    /// Messages published into a private room's topic by a peer that is not a member.
    pub outsider_messages_dropped: u64,
    /// Subscriptions to a private room's topic refused to a peer that is not a member.
    pub outsider_subscriptions_refused: u64,
    /// Outsiders disconnected for publishing again and again.
    pub outsiders_disconnected: u64,
    /// Peers pushed out of a topic they were in when they stopped being members (a kick).
    pub members_evicted: u64,
}

/// What to do about an outsider whose messages were dropped.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    /// Log a warning now, saying this many messages were dropped since the last one.
    pub warn: Option<u64>,
    /// Close the peer's connections (it is banned from now on).
    pub disconnect: bool,
}

/// What a new member list for a gated topic means for the peers in it.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct MembershipChange {
    /// Not admitted before and admitted now: their refused subscriptions may be taken after
    /// all, and what they did as outsiders is forgiven.
    pub admitted: Vec<PeerId>,
    /// Subscribed to the topic and not admitted any more (removed just now, or subscribed
    /// before we knew the topic was gated): to be disconnected, since gossip has no other way
    /// to drop a peer from one topic.
    pub evicted: Vec<PeerId>,
}

#[derive(Debug)]
struct Offender {
    window_start: u64,
    in_window: u32,
    last_warned: Option<u64>,
    unwarned: u64,
    last_seen: u64,
}

/// The gate's state: gated topics and their members, offenders and bans, and the counters.
#[derive(Debug)]
pub struct MeshAccess<T> {
    /// Gated topics and the peers allowed in each.
    gated: HashMap<T, HashSet<PeerId>>,
    offenders: HashMap<PeerId, Offender>,
    /// Disconnected offenders, until when (ms).
    banned: HashMap<PeerId, u64>,
    counters: GateCounters,
}

impl<T> Default for MeshAccess<T> {
    fn default() -> Self {
        Self {
            gated: HashMap::new(),
            offenders: HashMap::new(),
            banned: HashMap::new(),
            counters: GateCounters::default(),
        }
    }
}

impl<T: Eq + Hash> MeshAccess<T> {
    /// Whether `peer` may subscribe to `topic` and publish into it.
    pub fn admits(&self, peer: &PeerId, topic: &T) -> bool {
        self.gated
            .get(topic)
            .is_none_or(|members| members.contains(peer))
    }

    /// Gates `topic` to `members` (replacing whom it admitted before). `subscribers` are the
    /// peers the driver's gossip has in the topic now; those no longer admitted are counted as
    /// evicted and named for the driver to disconnect.
    pub fn set_members(
        &mut self,
        topic: T,
        members: HashSet<PeerId>,
        subscribers: impl IntoIterator<Item = PeerId>,
    ) -> MembershipChange {
        let before = self.gated.get(&topic);
        // The first gating admits nobody anew: nobody was refused under it yet.
        let admitted: Vec<PeerId> = members
            .iter()
            .filter(|peer| before.is_some_and(|b| !b.contains(peer)))
            .copied()
            .collect();
        for peer in &admitted {
            self.pardon(peer);
        }
        let evicted: Vec<PeerId> = subscribers
            .into_iter()
            .filter(|peer| !members.contains(peer))
            .collect();
        self.counters.members_evicted += evicted.len() as u64;
        self.gated.insert(topic, members);
        MembershipChange { admitted, evicted }
    }

    /// Opens `topic` to everyone again (a room we left).
    pub fn open(&mut self, topic: &T) {
        self.gated.remove(topic);
    }
}

impl<T> MeshAccess<T> {
    /// A subscription to a gated topic was refused to an outsider.
    pub fn on_refused_subscription(&mut self) {
        self.counters.outsider_subscriptions_refused += 1;
    }

    /// `dropped` messages from outsider `peer` to gated topics, which arrived together, were
    /// dropped. Counting stops at the message that gets the peer disconnected.
    pub fn on_outsider_messages(&mut self, peer: PeerId, dropped: usize, now: u64) -> Verdict {
        let mut verdict = Verdict::default();
        for _ in 0..dropped {
            let one = self.on_outsider_message(peer, now);
            verdict.warn = verdict.warn.or(one.warn);
            if one.disconnect {
                verdict.disconnect = true;
                break;
            }
        }
        verdict
    }

    fn on_outsider_message(&mut self, peer: PeerId, now: u64) -> Verdict {
        self.counters.outsider_messages_dropped += 1;
        if !self.offenders.contains_key(&peer) && self.offenders.len() >= MAX_TRACKED {
            evict_stalest(&mut self.offenders, |o| o.last_seen);
        }
        let offender = self.offenders.entry(peer).or_insert(Offender {
            window_start: now,
            in_window: 0,
            last_warned: None,
            unwarned: 0,
            last_seen: now,
        });
        offender.last_seen = now;
        if now.saturating_sub(offender.window_start) > OFFENCE_WINDOW_MS {
            offender.window_start = now;
            offender.in_window = 0;
        }
        offender.in_window = offender.in_window.saturating_add(1);
        offender.unwarned += 1;
        let mut verdict = Verdict::default();
        if offender
            .last_warned
            .is_none_or(|at| now.saturating_sub(at) >= WARN_EVERY_MS)
        {
            offender.last_warned = Some(now);
            verdict.warn = Some(std::mem::take(&mut offender.unwarned));
        }
        if offender.in_window > OFFENCES_BEFORE_DISCONNECT {
            verdict.disconnect = true;
            offender.in_window = 0;
            self.counters.outsiders_disconnected += 1;
            if !self.banned.contains_key(&peer) && self.banned.len() >= MAX_TRACKED {
                evict_stalest(&mut self.banned, |until| *until);
            }
            self.banned.insert(peer, now.saturating_add(BAN_MS));
        }
        verdict
    }

    /// Whether connections from `peer` are refused at `now` (a ban that ran out is forgotten).
    pub fn is_banned(&mut self, peer: &PeerId, now: u64) -> bool {
        match self.banned.get(peer) {
            Some(until) if *until > now => true,
            Some(_) => {
                self.banned.remove(peer);
                false
            }
            None => false,
        }
    }

    pub fn counters(&self) -> GateCounters {
        self.counters
    }

    /// `peer` became a member: what it did before is forgiven.
    fn pardon(&mut self, peer: &PeerId) {
        self.offenders.remove(peer);
        self.banned.remove(peer);
    }
}

fn evict_stalest<V>(map: &mut HashMap<PeerId, V>, age: impl Fn(&V) -> u64) {
    if let Some(stalest) = map.iter().min_by_key(|(_, v)| age(v)).map(|(k, _)| *k) {
        map.remove(&stalest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Access = MeshAccess<&'static str>;

    fn peer(n: u32) -> PeerId {
        let mut seed = [1; 32];
        seed[..4].copy_from_slice(&n.to_le_bytes());
        let key = ed25519_dalek::SigningKey::from_bytes(&seed).verifying_key();
        crate::identity::peer_id_of(&key)
    }

    const NOBODY: [PeerId; 0] = [];

    #[test]
    fn a_gated_topic_admits_its_members_only_and_other_topics_admit_anyone() {
        let (member, outsider) = (peer(1), peer(2));
        let mut access = Access::default();
        access.set_members("private", HashSet::from([member]), NOBODY);
        assert!(access.admits(&member, &"private"));
        assert!(!access.admits(&outsider, &"private"));
        assert!(access.admits(&outsider, &"public"));
        access.open(&"private");
        assert!(access.admits(&outsider, &"private"));
    }

    #[test]
    fn a_membership_change_names_who_came_in_and_who_is_pushed_out() {
        let (a, b, c) = (peer(3), peer(4), peer(5));
        let mut access = Access::default();
        // First gating: nobody is "admitted" (nobody was refused under it yet), but a
        // subscriber that is not a member is pushed out.
        let outsider = peer(6);
        assert_eq!(
            access.set_members("t", HashSet::from([a, b]), [a, outsider]),
            MembershipChange {
                admitted: vec![],
                evicted: vec![outsider]
            }
        );
        assert_eq!(
            access.set_members("t", HashSet::from([a, c]), [a, b]),
            MembershipChange {
                admitted: vec![c],
                evicted: vec![b]
            }
        );
        assert!(!access.admits(&b, &"t"));
        assert!(access.admits(&c, &"t"));
        assert_eq!(access.counters().members_evicted, 2);
    }

    #[test]
    fn a_flooding_outsider_is_disconnected_and_banned_after_the_threshold() {
        let outsider = peer(7);
        let mut access = Access::default();
        access.set_members("t", HashSet::new(), NOBODY);
        let now = 1_000;
        for i in 0..OFFENCES_BEFORE_DISCONNECT {
            let verdict = access.on_outsider_messages(outsider, 1, now);
            assert!(!verdict.disconnect, "disconnected after {} messages", i + 1);
        }
        assert!(access.on_outsider_messages(outsider, 1, now).disconnect);
        assert!(access.is_banned(&outsider, now));
        assert!(access.is_banned(&outsider, now + BAN_MS - 1_000));
        assert!(!access.is_banned(&outsider, now + BAN_MS));
        let counters = access.counters();
        assert_eq!(
            counters.outsider_messages_dropped,
            u64::from(OFFENCES_BEFORE_DISCONNECT) + 1
        );
        assert_eq!(counters.outsiders_disconnected, 1);
    }

    #[test]
    fn a_burst_stops_counting_at_the_message_that_disconnects() {
        let outsider = peer(8);
        let mut access = Access::default();
        let verdict = access.on_outsider_messages(outsider, 100, 1_000);
        assert_eq!(
            verdict,
            Verdict {
                warn: Some(1),
                disconnect: true
            }
        );
        assert_eq!(
            access.counters().outsider_messages_dropped,
            u64::from(OFFENCES_BEFORE_DISCONNECT) + 1
        );
        assert!(access.is_banned(&outsider, 1_000));
    }

    #[test]
    fn a_slow_trickle_is_counted_but_not_disconnected() {
        let peer = peer(9);
        let mut access = Access::default();
        let start = 1_000;
        for i in 0..(OFFENCES_BEFORE_DISCONNECT * 3) {
            // One every few seconds: never more than the threshold in one window.
            let at = start + u64::from(i) * 5_000;
            assert!(!access.on_outsider_messages(peer, 1, at).disconnect);
        }
        assert!(!access.is_banned(&peer, start + 1_000_000));
    }

    #[test]
    fn warnings_come_at_most_once_a_minute_per_peer_and_sum_up_what_was_dropped() {
        let (peer, other) = (peer(10), peer(11));
        let mut access = Access::default();
        let start = 1_000;
        assert_eq!(access.on_outsider_messages(peer, 1, start).warn, Some(1));
        for s in 1..5 {
            let at = start + s * 1_000;
            assert_eq!(access.on_outsider_messages(peer, 1, at).warn, None);
        }
        // Another peer gets its own warning.
        assert_eq!(access.on_outsider_messages(other, 1, start).warn, Some(1));
        let later = start + WARN_EVERY_MS;
        assert_eq!(access.on_outsider_messages(peer, 1, later).warn, Some(5));
    }

    #[test]
    fn a_banned_peer_that_becomes_a_member_is_let_back_in() {
        let peer = peer(12);
        let mut access = Access::default();
        access.set_members("t", HashSet::new(), NOBODY);
        let now = 1_000;
        assert!(
            access
                .on_outsider_messages(peer, usize::MAX, now)
                .disconnect
        );
        assert!(access.is_banned(&peer, now));
        assert_eq!(
            access
                .set_members("t", HashSet::from([peer]), NOBODY)
                .admitted,
            vec![peer]
        );
        assert!(!access.is_banned(&peer, now));
        assert!(access.admits(&peer, &"t"));
    }

    #[test]
    fn offenders_and_bans_stay_bounded_and_the_stalest_go_first() {
        let mut access = Access::default();
        let peers: Vec<PeerId> = (0..=MAX_TRACKED as u32).map(peer).collect();
        for (i, peer) in peers.iter().enumerate() {
            let at = 1_000 + i as u64;
            assert!(
                access
                    .on_outsider_messages(*peer, usize::MAX, at)
                    .disconnect
            );
        }
        assert_eq!(access.offenders.len(), MAX_TRACKED);
        assert_eq!(access.banned.len(), MAX_TRACKED);
        // The first one, the stalest, made room for the last.
        assert!(!access.offenders.contains_key(&peers[0]));
        assert!(!access.is_banned(&peers[0], 1_000));
        assert!(access.is_banned(&peers[1], 1_001));
        assert!(access.is_banned(&peers[MAX_TRACKED], 1_001));
    }
}
