//! The server's side of `/palaver/push/2`: on [`PushStreams::open`] it opens one stream to a
//! connected peer and hands it back as [`Opened`]; the server writes that session's pushes to it
//! (see [`crate::transport::write_push`]).
//!
//! A behaviour of its own rather than `libp2p-stream`'s, which keeps a channel for every
//! connection the swarm ever had: a public server accepts connections without end. This one
//! holds nothing per connection beyond the opens asked of it, and never dials: a peer that is
//! not connected gets no stream.

use std::collections::VecDeque;
use std::task::{Context, Poll};

use libp2p::core::upgrade::{DeniedUpgrade, ReadyUpgrade};
use libp2p::core::{Endpoint, transport::PortUse};
use libp2p::swarm::handler::{
    ConnectionEvent, DialUpgradeError, FullyNegotiatedOutbound, StreamUpgradeError,
};
use libp2p::swarm::{
    ConnectionDenied, ConnectionHandler, ConnectionHandlerEvent, ConnectionId, FromSwarm,
    NetworkBehaviour, NotifyHandler, SubstreamProtocol, THandlerInEvent, THandlerOutEvent,
    ToSwarm,
};
use libp2p::{Multiaddr, PeerId, Stream, StreamProtocol};

use crate::transport::push_protocol;

/// Opens asked of one connection and not yet under way, at most (more are redundant: the
/// server keeps one stream per session).
const MAX_OPENS_WAITING: usize = 4;

/// A push stream opened to `peer` on `connection`, or why not.
#[derive(Debug)]
pub(crate) struct Opened {
    pub(crate) peer: PeerId,
    pub(crate) connection: ConnectionId,
    pub(crate) stream: Result<Stream, String>,
}

/// Opens push streams (see the module documentation).
#[derive(Default)]
pub(crate) struct PushStreams {
    events: VecDeque<ToSwarm<Opened, Open>>,
}

impl PushStreams {
    /// Opens a push stream to `peer` on `connection` (`None`: any of its connections);
    /// [`Opened`] follows (nothing if that connection is gone by then).
    pub(crate) fn open(&mut self, peer: PeerId, connection: Option<ConnectionId>) {
        let handler = connection.map_or(NotifyHandler::Any, NotifyHandler::One);
        self.events.push_back(ToSwarm::NotifyHandler {
            peer_id: peer,
            handler,
            event: Open,
        });
    }
}

/// What the behaviour asks of a connection: open a push stream.
#[derive(Debug)]
pub(crate) struct Open;

impl NetworkBehaviour for PushStreams {
    type ConnectionHandler = Handler;
    type ToSwarm = Opened;

    fn handle_established_inbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<Handler, ConnectionDenied> {
        Ok(Handler::default())
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<Handler, ConnectionDenied> {
        Ok(Handler::default())
    }

    fn on_swarm_event(&mut self, _: FromSwarm) {}

    fn on_connection_handler_event(
        &mut self,
        peer: PeerId,
        connection: ConnectionId,
        stream: THandlerOutEvent<Self>,
    ) {
        let opened = Opened {
            peer,
            connection,
            stream,
        };
        self.events.push_back(ToSwarm::GenerateEvent(opened));
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Opened, THandlerInEvent<Self>>> {
        // Polled again by the swarm after every event the server handles, which is when
        // `open` is called.
        self.events.pop_front().map_or(Poll::Pending, Poll::Ready)
    }
}

/// One connection's side: opens the streams asked for, accepts none.
#[derive(Default)]
pub(crate) struct Handler {
    asked: usize,
    opened: VecDeque<Result<Stream, String>>,
}

impl ConnectionHandler for Handler {
    type FromBehaviour = Open;
    type ToBehaviour = Result<Stream, String>;
    type InboundProtocol = DeniedUpgrade;
    type OutboundProtocol = ReadyUpgrade<StreamProtocol>;
    type InboundOpenInfo = ();
    type OutboundOpenInfo = ();

    fn listen_protocol(&self) -> SubstreamProtocol<DeniedUpgrade> {
        SubstreamProtocol::new(DeniedUpgrade, ())
    }

    fn poll(
        &mut self,
        _: &mut Context<'_>,
    ) -> Poll<ConnectionHandlerEvent<ReadyUpgrade<StreamProtocol>, (), Self::ToBehaviour>> {
        if let Some(opened) = self.opened.pop_front() {
            return Poll::Ready(ConnectionHandlerEvent::NotifyBehaviour(opened));
        }
        if self.asked > 0 {
            self.asked -= 1;
            let protocol = SubstreamProtocol::new(ReadyUpgrade::new(push_protocol()), ());
            return Poll::Ready(ConnectionHandlerEvent::OutboundSubstreamRequest { protocol });
        }
        Poll::Pending
    }

    fn on_behaviour_event(&mut self, Open: Open) {
        self.asked = (self.asked + 1).min(MAX_OPENS_WAITING);
    }

    fn on_connection_event(&mut self, event: ConnectionEvent<DeniedUpgrade, Self::OutboundProtocol>) {
        match event {
            ConnectionEvent::FullyNegotiatedOutbound(FullyNegotiatedOutbound {
                protocol: stream,
                ..
            }) => self.opened.push_back(Ok(stream)),
            ConnectionEvent::DialUpgradeError(DialUpgradeError { error, .. }) => {
                let why = match error {
                    StreamUpgradeError::NegotiationFailed => "the peer takes no pushes".into(),
                    StreamUpgradeError::Timeout => "timed out".into(),
                    StreamUpgradeError::Io(error) => error.to_string(),
                    StreamUpgradeError::Apply(never) => match never {},
                };
                self.opened.push_back(Err(why));
            }
            _ => {}
        }
    }
}
