//! One peer's machines together: the rendezvous [`Session`], the direct [`Delivery`] planner
//! (with its outbox), the [`SendPipeline`] in front of it, the [`Rooms`], the discovery
//! [`Publisher`] and the file [`Transfers`]. Each keeps its own
//! inputs and outputs; [`NodeState`] gives the driver one deadline to sleep until — the earliest
//! of theirs — and wakes them all then (each acts on what is due by its own reckoning). The
//! reach planner stays beside it: its deadlines are on the monotonic clock, these on the wall
//! clock the session persists.
//!
//! The type parameters are the driver's: `P` what a session request carries back, `R` a direct
//! delivery's request handle, `J` a send's job.

use multiaddr::Multiaddr;
use rand_core::{CryptoRng, RngCore};

use super::devices::Linker;
use super::direct::pipeline::{Facts, SendPipeline};
use super::direct::{Delivery, Input as DeliveryInput};
use super::discovery::Publisher;
use super::files::{Output as FileOutput, Transfers};
use super::rooms::{Output as RoomOutput, Rooms};
use super::session::Session;
use crate::UserName;

#[derive(Debug)]
pub struct NodeState<P, R, J> {
    pub session: Session<P>,
    pub delivery: Delivery<R>,
    pub sends: SendPipeline<J>,
    pub rooms: Rooms,
    pub discovery: Publisher,
    pub files: Transfers,
    /// A new device being linked (`palaver device link`), while it is.
    pub link: Option<Linker>,
}

impl<P: std::fmt::Debug, R: Clone + Eq + std::hash::Hash, J> NodeState<P, R, J> {
    /// The earliest deadline of any machine (wall-clock ms).
    pub fn poll_timeout(&self) -> Option<u64> {
        [
            self.session.poll_timeout(),
            self.delivery.poll_timeout(),
            self.sends.poll_timeout(),
            self.rooms.poll_timeout(),
            self.discovery.poll_timeout(),
            self.files.poll_timeout(),
            self.link.as_ref().and_then(Linker::poll_timeout),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// The session logged in (after every connection). In this order: the presence of our
    /// `contacts` is watched, our record (at our external `addrs`) is registered, the delivery
    /// planner hears of it (so the room members it is asked for next are looked up, and what
    /// failed while logged out goes now), and every room's members are sought.
    pub fn logged_in(
        &mut self,
        now: u64,
        rng: &mut (impl CryptoRng + RngCore),
        contacts: Vec<UserName>,
        addrs: Vec<Multiaddr>,
    ) {
        self.session.subscribe_presence(contacts);
        self.discovery
            .logged_in(now, addrs, &self.rooms.public_joined());
        self.delivery
            .handle(DeliveryInput::LoggedIn(true), now, rng);
        self.rooms.seek_all();
    }

    /// First keys of these users were pinned (and stored): their presence is watched from now
    /// on, as every contact's is.
    pub fn contacts_pinned(&mut self, new: &[UserName]) {
        self.session.watch_too(new);
    }

    /// The login is gone: discovery asks nothing, and the planner tries no mailbox.
    pub fn logged_out(&mut self, now: u64, rng: &mut (impl CryptoRng + RngCore)) {
        self.discovery.logged_out();
        self.delivery
            .handle(DeliveryInput::LoggedIn(false), now, rng);
    }

    /// The file transfers' next output. A fetch first asks the delivery planner to reach its
    /// source (connected to, or looked up and dialed), so the stream the driver opens for it
    /// has a connection to go over; the driver then carries out the planner's outputs too.
    pub fn poll_file_output(
        &mut self,
        now: u64,
        rng: &mut (impl CryptoRng + RngCore),
    ) -> Option<FileOutput> {
        let output = self.files.poll_output()?;
        if let FileOutput::Fetch { peer, .. } = &output {
            self.delivery.handle(DeliveryInput::Want(*peer), now, rng);
        }
        Some(output)
    }

    /// The rooms' next output. Members sought are asked of the delivery planner, which keeps
    /// a connection to each (looked up and dialed when there is none); the driver then
    /// carries out the planner's outputs too.
    pub fn poll_room_output(
        &mut self,
        now: u64,
        rng: &mut (impl CryptoRng + RngCore),
    ) -> Option<RoomOutput> {
        let output = self.rooms.poll_output()?;
        if let RoomOutput::Seek { members, .. } = &output {
            for member in members {
                let peer = crate::identity::peer_id_of(member);
                self.delivery.handle(DeliveryInput::Want(peer), now, rng);
            }
        }
        Some(output)
    }

    /// Wakes every machine at `now`. Each acts only on what is due by its own reckoning — which
    /// matters when the wall clock was stepped back: the outbox then forgets deadlines that now
    /// look implausibly far ahead, so it must be woken even though its deadline seems to lie
    /// in the future. The driver then carries out every machine's outputs.
    pub fn handle_timeout(
        &mut self,
        now: u64,
        rng: &mut (impl CryptoRng + RngCore),
        facts: &mut impl Facts,
    ) {
        self.session.handle_timeout(now, rng);
        self.delivery.handle_timeout(now, rng);
        self.sends.handle_timeout(now, facts);
        self.rooms.handle_timeout(now);
        self.discovery
            .handle_timeout(now, &self.rooms.public_joined());
        self.files.handle_timeout(now, &self.rooms);
    }
}

#[cfg(test)]
mod tests {
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    use super::*;
    use crate::Identity;
    use crate::crypto::file::FileKey;
    use crate::delivery::Outbox;
    use crate::identity::peer_id_of;
    use crate::name::RoomName;
    use crate::node::direct::Output as DeliveryOutput;
    use crate::node::files::{Input as FileInput, Limits};
    use crate::node::session::{PrekeyState, SessionConfig};
    use crate::wire::{FileOffer, MessageId, TransferId};

    type State = NodeState<u32, u32, ()>;

    fn state(me: &Identity, rng: &mut ChaCha20Rng) -> State {
        let config = SessionConfig {
            name: UserName::new("alice").unwrap(),
            registration_token: None,
            heartbeat_ms: 10_000,
            instance: 1,
        };
        let prekeys = PrekeyState::generate(rng, me.signing_key());
        let peer = me.peer_id();
        let mut state = NodeState {
            session: Session::new(config, me.signing_key().clone(), prekeys),
            delivery: Delivery::new(peer, Outbox::default(), [], 0),
            sends: SendPipeline::default(),
            rooms: Rooms::new(me.clone(), []),
            discovery: Publisher::new(peer),
            files: Transfers::new(Limits::default(), [], u64::MAX),
            link: None,
        };
        state.delivery.handle(DeliveryInput::LoggedIn(true), 0, rng);
        while state.delivery.poll_output().is_some() {}
        state
    }

    fn discovered(state: &mut State) -> Vec<libp2p_identity::PeerId> {
        std::iter::from_fn(|| state.delivery.poll_output())
            .filter_map(|o| match o {
                DeliveryOutput::Discover(peer) => Some(peer),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_fetch_asks_the_delivery_planner_to_reach_its_source() {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let me = Identity::from_secret_bytes(&[1; 32]);
        let bob = Identity::from_secret_bytes(&[2; 32]).public();
        let mut state = state(&me, &mut rng);
        let offer = FileOffer {
            transfer: TransferId([1; 16]),
            name: "photo.jpg".into(),
            size: 100_000,
            mime: "image/jpeg".into(),
            sha256: [9; 32],
            key: FileKey::random(&mut rng),
        };
        let offered = FileInput::Offered {
            file: MessageId([1; 32]),
            offer,
            sender: bob,
            room: None,
            free_space: u64::MAX,
            whole: false,
            stored: None,
        };
        state.files.handle(offered, 0).unwrap();
        state.files.handle_timeout(0, &state.rooms);
        let mut fetched = Vec::new();
        while let Some(output) = state.poll_file_output(0, &mut rng) {
            if let FileOutput::Fetch { peer, .. } = output {
                fetched.push(peer);
            }
        }
        assert_eq!(fetched, [peer_id_of(&bob)]);
        assert_eq!(discovered(&mut state), [peer_id_of(&bob)]);
    }

    #[test]
    fn the_members_a_room_seeks_are_asked_of_the_delivery_planner() {
        let mut rng = ChaCha20Rng::seed_from_u64(2);
        let me = Identity::from_secret_bytes(&[1; 32]);
        let bob = Identity::from_secret_bytes(&[2; 32]).public();
        let mut state = state(&me, &mut rng);
        let team = RoomName::new("team").unwrap();
        state
            .rooms
            .create(team.clone(), false, 0, &mut rng)
            .unwrap();
        let bob_name = UserName::new("bob").unwrap();
        state
            .rooms
            .invite(&team, &bob_name, bob, 0, &mut rng)
            .unwrap();
        state.rooms.seek_all();
        let mut sought = Vec::new();
        while let Some(output) = state.poll_room_output(0, &mut rng) {
            if let RoomOutput::Seek { members, .. } = output {
                sought.extend(members);
            }
        }
        assert!(sought.contains(&bob), "{sought:?}");
        assert!(discovered(&mut state).contains(&peer_id_of(&bob)));
    }
}
