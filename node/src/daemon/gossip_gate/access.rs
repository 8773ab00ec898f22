//! Who may take part in which gossip topic, and what becomes of those who may not: the gate's
//! decisions, with no swarm and no clock of their own (the caller passes `now`).
//!
//! A private room's topic is *gated*: only its members' peers may subscribe to it or publish
//! into it. Every other topic (a public room's, or one we know nothing about) is open. An
//! outsider's publications are dropped and counted; one that keeps publishing is disconnected
//! and kept out for a while ([`BAN`]); warnings about it are rate-limited per peer.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use libp2p::PeerId;
use libp2p::gossipsub::TopicHash;
use serde::Serialize;

/// Outsider messages a peer may have dropped within [`OFFENCE_WINDOW`] before it is disconnected.
/// Above what an honest peer sends in the moment before we learn that it joined (its messages
/// to us are dropped until then, and come back through gap fill).
pub(crate) const OFFENCES_BEFORE_DISCONNECT: u32 = 16;
pub(crate) const OFFENCE_WINDOW: Duration = Duration::from_secs(60);
/// How long a disconnected offender's connections are refused.
pub(crate) const BAN: Duration = Duration::from_secs(600);
/// At most one warning per offending peer this often (what was dropped meanwhile is summed up).
pub(crate) const WARN_EVERY: Duration = Duration::from_secs(60);
/// Offenders and bans remembered at once; the stalest go first.
const MAX_TRACKED: usize = 1024;

/// What the gate counted since the daemon started (`palaver status`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub(crate) struct GateCounters {
    /// Messages published into a private room's topic by a peer that is not a member.
    pub(crate) outsider_messages_dropped: u64,
    /// Subscriptions to a private room's topic refused to a peer that is not a member.
    pub(crate) outsider_subscriptions_refused: u64,
    /// Outsiders disconnected for publishing again and again.
    pub(crate) outsiders_disconnected: u64,
    /// Peers pushed out of a topic they were in when they stopped being members (a kick).
    pub(crate) members_evicted: u64,
}

/// What to do about a dropped outsider message.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Verdict {
    /// Log a warning now, saying this many messages were dropped since the last one.
    pub(crate) warn: Option<u64>,
    /// Close the peer's connections (it is banned from now on).
    pub(crate) disconnect: bool,
}

#[derive(Debug)]
struct Offender {
    window_start: Instant,
    in_window: u32,
    last_warned: Option<Instant>,
    unwarned: u64,
    last_seen: Instant,
}

#[derive(Debug, Default)]
pub(crate) struct MeshAccess {
    /// Gated topics and the peers allowed in each.
    gated: HashMap<TopicHash, HashSet<PeerId>>,
    offenders: HashMap<PeerId, Offender>,
    /// Disconnected offenders, until when.
    banned: HashMap<PeerId, Instant>,
    counters: GateCounters,
}

impl MeshAccess {
    /// Whether `peer` may subscribe to `topic` and publish into it.
    pub(crate) fn admits(&self, peer: &PeerId, topic: &TopicHash) -> bool {
        self.gated
            .get(topic)
            .is_none_or(|members| members.contains(peer))
    }

    /// Gates `topic` to `members` (replacing whom it admitted before); returns who was not
    /// admitted before and is now (whose refused subscriptions may be taken after all). Who
    /// is out now the caller finds among the topic's subscribers with [`Self::admits`].
    pub(crate) fn set_members(
        &mut self,
        topic: TopicHash,
        members: HashSet<PeerId>,
    ) -> Vec<PeerId> {
        let before = self.gated.get(&topic);
        let admitted: Vec<PeerId> = members
            .iter()
            .filter(|peer| before.is_some_and(|b| !b.contains(peer)))
            .copied()
            .collect();
        for peer in &admitted {
            self.pardon(peer);
        }
        self.gated.insert(topic, members);
        admitted
    }

    /// Opens `topic` to everyone again (a room we left).
    pub(crate) fn open(&mut self, topic: &TopicHash) {
        self.gated.remove(topic);
    }

    pub(crate) fn on_refused_subscription(&mut self) {
        self.counters.outsider_subscriptions_refused += 1;
    }

    pub(crate) fn on_evicted(&mut self) {
        self.counters.members_evicted += 1;
    }

    /// An outsider's message to a gated topic was dropped.
    pub(crate) fn on_outsider_message(&mut self, peer: PeerId, now: Instant) -> Verdict {
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
        if now.saturating_duration_since(offender.window_start) > OFFENCE_WINDOW {
            offender.window_start = now;
            offender.in_window = 0;
        }
        offender.in_window = offender.in_window.saturating_add(1);
        offender.unwarned += 1;
        let mut verdict = Verdict::default();
        if offender
            .last_warned
            .is_none_or(|at| now.saturating_duration_since(at) >= WARN_EVERY)
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
            self.banned.insert(peer, now + BAN);
        }
        verdict
    }

    /// Whether connections from `peer` are refused now (a ban that ran out is forgotten).
    pub(crate) fn is_banned(&mut self, peer: &PeerId, now: Instant) -> bool {
        match self.banned.get(peer) {
            Some(until) if *until > now => true,
            Some(_) => {
                self.banned.remove(peer);
                false
            }
            None => false,
        }
    }

    /// `peer` became a member: what it did before is forgiven.
    fn pardon(&mut self, peer: &PeerId) {
        self.offenders.remove(peer);
        self.banned.remove(peer);
    }

    pub(crate) fn counters(&self) -> GateCounters {
        self.counters
    }
}

fn evict_stalest<V>(map: &mut HashMap<PeerId, V>, age: impl Fn(&V) -> Instant) {
    if let Some(stalest) = map.iter().min_by_key(|(_, v)| age(v)).map(|(k, _)| *k) {
        map.remove(&stalest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic(name: &str) -> TopicHash {
        TopicHash::from_raw(name)
    }

    #[test]
    fn a_gated_topic_admits_its_members_only_and_other_topics_admit_anyone() {
        let (member, outsider) = (PeerId::random(), PeerId::random());
        let mut access = MeshAccess::default();
        access.set_members(topic("private"), HashSet::from([member]));
        assert!(access.admits(&member, &topic("private")));
        assert!(!access.admits(&outsider, &topic("private")));
        assert!(access.admits(&outsider, &topic("public")));
        access.open(&topic("private"));
        assert!(access.admits(&outsider, &topic("private")));
    }

    #[test]
    fn a_membership_change_names_who_came_in_and_shuts_out_who_went() {
        let (a, b, c) = (PeerId::random(), PeerId::random(), PeerId::random());
        let mut access = MeshAccess::default();
        // First gating: nobody is "admitted" (nobody was refused under it yet).
        assert!(
            access
                .set_members(topic("t"), HashSet::from([a, b]))
                .is_empty()
        );
        assert_eq!(
            access.set_members(topic("t"), HashSet::from([a, c])),
            vec![c]
        );
        assert!(!access.admits(&b, &topic("t")));
        assert!(access.admits(&c, &topic("t")));
    }

    #[test]
    fn a_flooding_outsider_is_disconnected_and_banned_after_the_threshold() {
        let outsider = PeerId::random();
        let mut access = MeshAccess::default();
        access.set_members(topic("t"), HashSet::new());
        let now = Instant::now();
        for i in 0..OFFENCES_BEFORE_DISCONNECT {
            let verdict = access.on_outsider_message(outsider, now);
            assert!(!verdict.disconnect, "disconnected after {} messages", i + 1);
        }
        assert!(access.on_outsider_message(outsider, now).disconnect);
        assert!(access.is_banned(&outsider, now));
        assert!(access.is_banned(&outsider, now + BAN - Duration::from_secs(1)));
        assert!(!access.is_banned(&outsider, now + BAN));
        let counters = access.counters();
        assert_eq!(
            counters.outsider_messages_dropped,
            u64::from(OFFENCES_BEFORE_DISCONNECT) + 1
        );
        assert_eq!(counters.outsiders_disconnected, 1);
    }

    #[test]
    fn a_slow_trickle_is_counted_but_not_disconnected() {
        let peer = PeerId::random();
        let mut access = MeshAccess::default();
        let start = Instant::now();
        for i in 0..(OFFENCES_BEFORE_DISCONNECT * 3) {
            // One every few seconds: never more than the threshold in one window.
            let at = start + Duration::from_secs(u64::from(i) * 5);
            assert!(!access.on_outsider_message(peer, at).disconnect);
        }
        assert!(!access.is_banned(&peer, start + Duration::from_secs(1000)));
    }

    #[test]
    fn warnings_come_at_most_once_a_minute_per_peer_and_sum_up_what_was_dropped() {
        let peer = PeerId::random();
        let mut access = MeshAccess::default();
        let start = Instant::now();
        assert_eq!(access.on_outsider_message(peer, start).warn, Some(1));
        for s in 1..5 {
            let at = start + Duration::from_secs(s);
            assert_eq!(access.on_outsider_message(peer, at).warn, None);
        }
        // Another peer gets its own warning.
        assert_eq!(
            access.on_outsider_message(PeerId::random(), start).warn,
            Some(1)
        );
        let later = start + WARN_EVERY;
        assert_eq!(access.on_outsider_message(peer, later).warn, Some(5));
    }

    #[test]
    fn a_banned_peer_that_becomes_a_member_is_let_back_in() {
        let peer = PeerId::random();
        let mut access = MeshAccess::default();
        access.set_members(topic("t"), HashSet::new());
        let now = Instant::now();
        while !access.on_outsider_message(peer, now).disconnect {}
        assert!(access.is_banned(&peer, now));
        assert_eq!(
            access.set_members(topic("t"), HashSet::from([peer])),
            vec![peer]
        );
        assert!(!access.is_banned(&peer, now));
        assert!(access.admits(&peer, &topic("t")));
    }
}
