//! The server without its network, for whole-network simulations: the same decisions
//! (`service`) over the same store, driven by simulated time and a simulated network.

use std::path::Path;

use libp2p::PeerId;
use palaver_protocol::wire::{RendezvousRequest, RendezvousResponse, ServerPush};
use prometheus_client::registry::Registry;

use crate::config::Limits;
use crate::metrics::Metrics;
use crate::service::{RelayGate, Service};
use crate::store::{StoreError, StoreLocation};

/// One rendezvous instance's decisions over a store directory. Opening the same directory again
/// is a restart: what was stored survives, sessions and presence do not.
#[derive(Debug)]
pub struct SimServer {
    service: Service,
}

impl SimServer {
    /// Opens the store in `dir` (accounts open to anyone without `tokens`).
    pub fn open(dir: &Path, limits: Limits, tokens: Vec<String>) -> Result<Self, StoreError> {
        let store = StoreLocation::Sled.open(dir, limits.store_cache_bytes)?;
        let metrics = Metrics::register(&mut Registry::default());
        let service = Service::new(store, limits, tokens, false, RelayGate::new(false), metrics)?;
        Ok(Self { service })
    }

    /// `peer`'s first connection opened.
    pub fn connected(&mut self, peer: PeerId, now_ms: u64) {
        self.service.connected(peer, now_ms);
    }

    /// `peer`'s last connection closed.
    pub fn disconnected(&mut self, peer: PeerId, now_ms: u64) {
        self.service.disconnected(peer, now_ms);
    }

    /// Answers one request. An answer that promises something is stored is sent only once the
    /// store is flushed, as the real server does.
    pub fn handle(
        &mut self,
        peer: PeerId,
        request: RendezvousRequest,
        now_ms: u64,
    ) -> Result<RendezvousResponse, StoreError> {
        let reply = self.service.handle(peer, request, now_ms);
        if reply.durable {
            self.service.store().flush_blocking()?;
        }
        Ok(reply.response)
    }

    /// When [`SimServer::tick`] next has something to do.
    pub fn next_due(&self) -> Option<u64> {
        self.service.next_due()
    }

    /// Login timeouts, presence expiry, the mail sweep.
    pub fn tick(&mut self, now_ms: u64) {
        self.service.tick(now_ms);
    }

    /// Pushes to deliver, in order.
    pub fn take_pushes(&mut self) -> Vec<(PeerId, ServerPush)> {
        self.service.take_pushes()
    }

    /// Peers to disconnect.
    pub fn take_disconnects(&mut self) -> Vec<PeerId> {
        self.service.take_disconnects()
    }

    /// Stops the instance (as before a restart): everything stored is flushed.
    pub fn shut_down(mut self, now_ms: u64) -> Result<(), StoreError> {
        self.service.shutdown(now_ms);
        self.service.store().flush_blocking()
    }
}
