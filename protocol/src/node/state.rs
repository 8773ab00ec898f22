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
