//! One peer's machines together: the rendezvous [`Session`], the direct [`Delivery`] planner
//! (with its outbox), the [`SendPipeline`] in front of it and the [`Rooms`]. Each keeps its own
//! inputs and outputs; [`NodeState`] gives the driver one deadline to sleep until — the earliest
//! of theirs — and wakes those whose time came. (The reach planner stays beside it: its
//! deadlines are on the monotonic clock, these on the wall clock the session persists.)
//!
//! The type parameters are the driver's: `P` what a session request carries back, `R` a direct
//! delivery's request handle, `J` a send's job.

use rand_core::{CryptoRng, RngCore};

use super::direct::Delivery;
use super::direct::pipeline::{Facts, SendPipeline};
use super::rooms::Rooms;
use super::session::Session;

#[derive(Debug)]
pub struct NodeState<P, R, J> {
    pub session: Session<P>,
    pub delivery: Delivery<R>,
    pub sends: SendPipeline<J>,
    pub rooms: Rooms,
}

/// Which machines acted at a deadline: the driver carries out their outputs.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Woken {
    pub session: bool,
    pub delivery: bool,
    pub sends: bool,
    pub rooms: bool,
}

impl<P: std::fmt::Debug, R: Clone + Eq + std::hash::Hash, J> NodeState<P, R, J> {
    /// The earliest deadline of any machine (wall-clock ms).
    pub fn poll_timeout(&self) -> Option<u64> {
        [
            self.session.poll_timeout(),
            self.delivery.poll_timeout(),
            self.sends.poll_timeout(),
            self.rooms.poll_timeout(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Wakes every machine whose deadline is `now` or past.
    pub fn handle_timeout(
        &mut self,
        now: u64,
        rng: &mut (impl CryptoRng + RngCore),
        facts: &mut impl Facts,
    ) -> Woken {
        let due = |deadline: Option<u64>| deadline.is_some_and(|at| at <= now);
        let woken = Woken {
            session: due(self.session.poll_timeout()),
            delivery: due(self.delivery.poll_timeout()),
            sends: due(self.sends.poll_timeout()),
            rooms: due(self.rooms.poll_timeout()),
        };
        if woken.session {
            self.session.handle_timeout(now, rng);
        }
        if woken.delivery {
            self.delivery.handle_timeout(now, rng);
        }
        if woken.sends {
            self.sends.handle_timeout(now, facts);
        }
        if woken.rooms {
            self.rooms.handle_timeout(now);
        }
        woken
    }
}
