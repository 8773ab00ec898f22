use super::*;

type Planner = Reach<u32, u32>;
type Out = Output<u32, u32>;

fn peer(n: u8) -> PeerId {
    crate::identity::peer_id_of(&ed25519_dalek::SigningKey::from_bytes(&[n; 32]).verifying_key())
}

fn addr(s: &str) -> Multiaddr {
    s.parse().expect("test address")
}

fn rendezvous() -> Multiaddr {
    addr(&format!("/ip4/10.0.0.1/tcp/4001/p2p/{}", peer(1)))
}

fn circuit_to(target: PeerId) -> Multiaddr {
    addr(&format!(
        "/ip4/10.0.0.1/tcp/4001/p2p/{}/p2p-circuit/p2p/{target}",
        peer(1)
    ))
}

fn drain(reach: &mut Planner) -> Vec<Out> {
    std::iter::from_fn(|| reach.poll_output()).collect()
}

fn dials(outputs: &[Out]) -> Vec<(DialPurpose, Option<PeerId>)> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Dial { purpose, peer, .. } => Some((*purpose, *peer)),
            _ => None,
        })
        .collect()
}

/// A planner with no listeners to wait for, connected to the rendezvous as connection 1.
fn connected(t0: Instant) -> Planner {
    let mut reach = Planner::new(rendezvous(), &[], Vec::new(), t0).expect("planner");
    assert_eq!(
        dials(&drain(&mut reach)),
        [(DialPurpose::Rendezvous, Some(peer(1)))]
    );
    reach.handle(
        Input::Connected {
            peer: peer(1),
            conn: 1,
            addr: rendezvous(),
            dialed: Some(rendezvous()),
        },
        t0,
    );
    assert_eq!(drain(&mut reach), [Output::RendezvousConnected(peer(1))]);
    reach
}

#[test]
fn relays_must_name_their_peer_and_not_be_circuits() {
    let no_id = addr("/ip4/10.0.0.2/tcp/1");
    let err = Planner::new(
        rendezvous(),
        std::slice::from_ref(&no_id),
        Vec::new(),
        Instant::now(),
    );
    assert_eq!(err.err(), Some(ReachError::RelayWithoutPeerId(no_id)));
    let circuit = circuit_to(peer(9));
    let err = Planner::new(
        rendezvous(),
        std::slice::from_ref(&circuit),
        Vec::new(),
        Instant::now(),
    );
    assert_eq!(err.err(), Some(ReachError::RelayIsCircuit(circuit)));
}

#[test]
fn the_rendezvous_waits_for_listeners_then_is_redialled_until_connected() {
    let t0 = Instant::now();
    let listen = addr("/ip4/0.0.0.0/tcp/0");
    let mut reach = Planner::new(rendezvous(), &[], vec![(7, listen)], t0).expect("planner");
    assert!(
        drain(&mut reach).is_empty(),
        "no dial before our listener reports"
    );
    // Loopback alone is not enough for a listener on every interface.
    reach.handle(
        Input::ListenAddr {
            listener: 7,
            addr: addr("/ip4/127.0.0.1/tcp/5000"),
        },
        t0,
    );
    assert!(dials(&drain(&mut reach)).is_empty());
    let t1 = t0 + Duration::from_millis(10);
    reach.handle(
        Input::ListenAddr {
            listener: 7,
            addr: addr("/ip4/192.168.1.2/tcp/5000"),
        },
        t1,
    );
    let out = drain(&mut reach);
    assert_eq!(
        dials(&out),
        [(DialPurpose::Rendezvous, Some(peer(1)))],
        "{out:?}"
    );
    assert!(out.contains(&Output::AddExternalAddress(addr(
        "/ip4/192.168.1.2/tcp/5000"
    ))));
    // The dial failed: redialled a second later, not before.
    assert_eq!(reach.poll_timeout(), Some(t1 + RENDEZVOUS_REDIAL));
    reach.handle_timeout(t1 + RENDEZVOUS_REDIAL / 2);
    assert!(dials(&drain(&mut reach)).is_empty());
    reach.handle_timeout(t1 + RENDEZVOUS_REDIAL);
    assert_eq!(
        dials(&drain(&mut reach)),
        [(DialPurpose::Rendezvous, Some(peer(1)))]
    );
}

#[test]
fn listeners_that_never_report_hold_the_rendezvous_back_only_for_the_grace() {
    let t0 = Instant::now();
    let mut reach =
        Planner::new(rendezvous(), &[], vec![(7, addr("/ip4/0.0.0.0/tcp/0"))], t0).expect("new");
    assert_eq!(reach.poll_timeout(), Some(t0 + LISTENERS_GRACE));
    reach.handle_timeout(t0 + LISTENERS_GRACE);
    assert_eq!(
        dials(&drain(&mut reach)),
        [(DialPurpose::Rendezvous, Some(peer(1)))]
    );
}

#[test]
fn a_rendezvous_address_without_an_id_is_recognised_by_the_address_dialed() {
    let t0 = Instant::now();
    let bare = addr("/ip4/10.0.0.1/tcp/4001");
    let mut reach = Planner::new(bare.clone(), &[], Vec::new(), t0).expect("planner");
    assert_eq!(dials(&drain(&mut reach)), [(DialPurpose::Rendezvous, None)]);
    reach.handle(
        Input::Connected {
            peer: peer(1),
            conn: 1,
            addr: bare.clone(),
            dialed: Some(bare.with(Protocol::P2p(peer(1)))),
        },
        t0,
    );
    assert_eq!(drain(&mut reach), [Output::RendezvousConnected(peer(1))]);
    assert!(reach.rendezvous_connected());
    assert!(reach.is_relay_server(&peer(1)));
}

#[test]
fn losing_the_rendezvous_redials_at_once() {
    let t0 = Instant::now();
    let mut reach = connected(t0);
    let t1 = t0 + Duration::from_millis(300);
    reach.handle(
        Input::Disconnected {
            peer: peer(1),
            conn: 1,
            broke: true,
        },
        t1,
    );
    let out = drain(&mut reach);
    assert_eq!(out[0], Output::RendezvousLost);
    assert_eq!(dials(&out), [(DialPurpose::Rendezvous, Some(peer(1)))]);
}

#[test]
fn a_peer_is_dialed_direct_first_and_through_a_relay_after_the_head_start() {
    let t0 = Instant::now();
    let mut reach = connected(t0);
    let bob = peer(2);
    let direct = addr("/ip4/192.168.1.9/tcp/6000");
    reach.handle(
        Input::DialPeer {
            peer: bob,
            addrs: vec![direct.clone(), circuit_to(bob)],
        },
        t0,
    );
    let out = drain(&mut reach);
    assert_eq!(
        out,
        [Output::Dial {
            purpose: DialPurpose::Direct,
            peer: Some(bob),
            addrs: vec![direct],
            condition: DialCondition::DisconnectedAndNotDialing,
        }]
    );
    reach.handle(
        Input::DialStarted {
            purpose: DialPurpose::Direct,
            peer: Some(bob),
            result: Ok(10),
        },
        t0,
    );
    assert_eq!(reach.poll_timeout(), Some(t0 + DIRECT_HEAD_START));
    reach.handle_timeout(t0 + DIRECT_HEAD_START);
    assert_eq!(
        dials(&drain(&mut reach)),
        [(DialPurpose::Circuit, Some(bob))]
    );
    reach.handle(
        Input::DialStarted {
            purpose: DialPurpose::Circuit,
            peer: Some(bob),
            result: Ok(11),
        },
        t0,
    );
    // The direct dial fails: the circuit is still under way, no verdict.
    reach.handle(
        Input::DialFailed {
            peer: Some(bob),
            conn: 10,
        },
        t0,
    );
    assert!(drain(&mut reach).is_empty());
    // The circuit fails too: unreachable.
    reach.handle(
        Input::DialFailed {
            peer: Some(bob),
            conn: 11,
        },
        t0,
    );
    assert_eq!(drain(&mut reach), [Output::Unreachable(bob)]);
    // The relay the circuit went through is a relay server, not a peer.
    assert!(reach.is_relay_server(&peer(1)));
}

#[test]
fn a_failed_direct_dial_tries_the_circuit_at_once() {
    let t0 = Instant::now();
    let mut reach = connected(t0);
    let bob = peer(2);
    reach.handle(
        Input::DialPeer {
            peer: bob,
            addrs: vec![addr("/ip4/192.168.1.9/tcp/6000"), circuit_to(bob)],
        },
        t0,
    );
    drain(&mut reach);
    reach.handle(
        Input::DialStarted {
            purpose: DialPurpose::Direct,
            peer: Some(bob),
            result: Err(DialRefusal::Failed),
        },
        t0,
    );
    assert_eq!(
        dials(&drain(&mut reach)),
        [(DialPurpose::Circuit, Some(bob))]
    );
    assert_eq!(
        reach.poll_timeout(),
        None,
        "nothing waits for the head start any more"
    );
}

#[test]
fn only_circuit_addresses_are_dialed_at_once_and_no_address_is_unreachable() {
    let t0 = Instant::now();
    let mut reach = connected(t0);
    let bob = peer(2);
    reach.handle(
        Input::DialPeer {
            peer: bob,
            addrs: vec![circuit_to(bob)],
        },
        t0,
    );
    assert_eq!(
        dials(&drain(&mut reach)),
        [(DialPurpose::Circuit, Some(bob))]
    );
    let carol = peer(3);
    reach.handle(
        Input::DialPeer {
            peer: carol,
            addrs: Vec::new(),
        },
        t0,
    );
    assert_eq!(drain(&mut reach), [Output::Unreachable(carol)]);
}

#[test]
fn a_relayed_connection_closes_after_a_direct_one_is_up_but_not_under_a_delivery() {
    let t0 = Instant::now();
    let mut reach = connected(t0);
    let bob = peer(2);
    reach.handle(
        Input::Connected {
            peer: bob,
            conn: 20,
            addr: circuit_to(bob),
            dialed: Some(circuit_to(bob)),
        },
        t0,
    );
    assert_eq!(drain(&mut reach), [Output::PeerConnected(bob)]);
    assert_eq!(
        reach.connection_kind(&bob).map(|(k, _)| k),
        Some(ConnectionKind::Relayed)
    );
    reach.handle(Input::DeliveryStarted(bob), t0);
    // DCUtR punched through.
    reach.handle(
        Input::Connected {
            peer: bob,
            conn: 21,
            addr: addr("/ip4/203.0.113.7/tcp/6000"),
            dialed: None,
        },
        t0,
    );
    assert_eq!(drain(&mut reach), [Output::PeerConnected(bob)]);
    assert_eq!(
        reach.connection_kind(&bob).map(|(k, _)| k),
        Some(ConnectionKind::Direct)
    );
    assert_eq!(reach.poll_timeout(), Some(t0 + RELAYED_GRACE));
    reach.handle_timeout(t0 + RELAYED_GRACE);
    assert!(drain(&mut reach).is_empty(), "a delivery is in flight");
    reach.handle(Input::DeliveryEnded(bob), t0 + RELAYED_GRACE);
    assert_eq!(drain(&mut reach), [Output::Close(20)]);
    reach.handle(
        Input::Disconnected {
            peer: bob,
            conn: 20,
            broke: false,
        },
        t0 + RELAYED_GRACE,
    );
    assert_eq!(drain(&mut reach), [Output::ConnectionChanged(bob)]);
    assert!(reach.is_connected(&bob));
    // The last one closing is the peer's disconnection (the delivery planner waits for it).
    reach.handle(
        Input::Disconnected {
            peer: bob,
            conn: 21,
            broke: true,
        },
        t0 + RELAYED_GRACE,
    );
    let out = drain(&mut reach);
    assert!(out.contains(&Output::PeerDisconnected(bob)), "{out:?}");
    assert!(!reach.is_connected(&bob));
}

#[test]
fn a_slot_is_reserved_once_the_relay_observed_us_and_we_logged_in_and_given_back_when_public() {
    let t0 = Instant::now();
    let mut reach = connected(t0);
    reach.handle(
        Input::ListenAddr {
            listener: 7,
            addr: addr("/ip4/192.168.1.2/tcp/5000"),
        },
        t0,
    );
    drain(&mut reach);
    reach.handle(
        Input::Identified {
            peer: peer(1),
            listen_addrs: vec![addr("/ip4/10.0.0.1/tcp/4001")],
        },
        t0,
    );
    assert!(drain(&mut reach).is_empty(), "not logged in yet");
    reach.handle(Input::LoggedIn(true), t0);
    let circuit = rendezvous().with(Protocol::P2pCircuit);
    assert_eq!(
        drain(&mut reach),
        [Output::ReserveSlot {
            relay: peer(1),
            circuit: circuit.clone()
        }]
    );
    // Asked once, however often the conditions are met again.
    reach.handle(Input::LoggedIn(true), t0);
    assert!(drain(&mut reach).is_empty());
    reach.handle(
        Input::SlotListener {
            relay: peer(1),
            listener: Some(8),
        },
        t0,
    );
    reach.handle(
        Input::SlotReserved {
            relay: peer(1),
            renewal: false,
        },
        t0,
    );
    assert_eq!(
        drain(&mut reach),
        [Output::Reachability {
            public: false,
            relays: vec![rendezvous()]
        }]
    );
    reach.handle(Input::ReachableFromOutside, t0);
    assert_eq!(
        drain(&mut reach),
        [
            Output::ReleaseSlot(8),
            Output::Reachability {
                public: true,
                relays: Vec::new()
            }
        ]
    );
}

#[test]
fn a_lost_slot_is_asked_for_again_after_the_retry_pause() {
    let t0 = Instant::now();
    let mut reach = connected(t0);
    reach.handle(Input::LoggedIn(true), t0);
    reach.handle(
        Input::Identified {
            peer: peer(1),
            listen_addrs: Vec::new(),
        },
        t0,
    );
    drain(&mut reach);
    reach.handle(
        Input::SlotListener {
            relay: peer(1),
            listener: Some(8),
        },
        t0,
    );
    reach.handle(
        Input::ListenerClosed {
            listener: 8,
            addrs: Vec::new(),
            error: Some("relay went away".into()),
        },
        t0,
    );
    let out = drain(&mut reach);
    assert!(!out.iter().any(|o| matches!(o, Output::ReserveSlot { .. })));
    assert_eq!(reach.poll_timeout(), Some(t0 + RELAY_RETRY));
    reach.handle_timeout(t0 + RELAY_RETRY);
    assert!(
        drain(&mut reach)
            .iter()
            .any(|o| matches!(o, Output::ReserveSlot { relay, .. } if *relay == peer(1)))
    );
}

#[test]
fn an_extra_relay_is_dialed_and_redialled_while_unreachable() {
    let t0 = Instant::now();
    let relay = addr(&format!("/ip4/10.0.0.5/tcp/4002/p2p/{}", peer(5)));
    let mut reach = Planner::new(rendezvous(), &[relay], Vec::new(), t0).expect("planner");
    let out = dials(&drain(&mut reach));
    assert!(
        out.contains(&(DialPurpose::Relay, Some(peer(5)))),
        "{out:?}"
    );
    reach.handle_timeout(t0 + RELAY_RETRY / 2);
    assert!(!dials(&drain(&mut reach)).contains(&(DialPurpose::Relay, Some(peer(5)))));
    reach.handle_timeout(t0 + RELAY_RETRY);
    assert!(dials(&drain(&mut reach)).contains(&(DialPurpose::Relay, Some(peer(5)))));
}

#[test]
fn a_network_change_closes_every_connection() {
    let t0 = Instant::now();
    let mut reach = connected(t0);
    reach.handle(
        Input::Connected {
            peer: peer(2),
            conn: 30,
            addr: addr("/ip4/192.168.1.9/tcp/6000"),
            dialed: None,
        },
        t0,
    );
    drain(&mut reach);
    reach.handle(
        Input::ListenAddrExpired {
            addr: addr("/ip4/192.168.1.2/tcp/5000"),
        },
        t0,
    );
    let mut out = drain(&mut reach);
    out.sort_by_key(|o| format!("{o:?}"));
    assert_eq!(
        out,
        [
            Output::Close(1),
            Output::Close(30),
            Output::RemoveExternalAddress(addr("/ip4/192.168.1.2/tcp/5000")),
        ]
    );
    // Loopback going away is no network change.
    reach.handle(
        Input::ListenAddrExpired {
            addr: addr("/ip4/127.0.0.1/tcp/5000"),
        },
        t0,
    );
    assert_eq!(
        drain(&mut reach),
        [Output::RemoveExternalAddress(addr(
            "/ip4/127.0.0.1/tcp/5000"
        ))]
    );
}

#[test]
fn a_stopping_node_dials_nothing() {
    let t0 = Instant::now();
    let mut reach = connected(t0);
    reach.handle(Input::Stopping, t0);
    reach.handle(
        Input::Disconnected {
            peer: peer(1),
            conn: 1,
            broke: false,
        },
        t0,
    );
    assert_eq!(drain(&mut reach), [Output::RendezvousLost]);
    reach.handle(
        Input::DialPeer {
            peer: peer(2),
            addrs: vec![addr("/ip4/192.168.1.9/tcp/6000")],
        },
        t0,
    );
    assert!(drain(&mut reach).is_empty());
    assert_eq!(reach.poll_timeout(), None);
}

/// Time moves only to the planner's own deadlines, as in the daemon.
fn run_until_dialed(reach: &mut Planner, relay: PeerId, limit: Instant) -> Option<Instant> {
    while let Some(at) = reach.poll_timeout().filter(|at| *at <= limit) {
        reach.handle_timeout(at);
        if dials(&drain(reach)).contains(&(DialPurpose::Relay, Some(relay))) {
            return Some(at);
        }
    }
    None
}

#[test]
fn a_relay_that_went_away_is_dialed_again_on_the_planners_own_deadline() {
    let t0 = Instant::now();
    let relay_addr = addr(&format!("/ip4/10.0.0.5/tcp/4002/p2p/{}", peer(5)));
    let mut reach = Planner::new(
        rendezvous(),
        std::slice::from_ref(&relay_addr),
        Vec::new(),
        t0,
    )
    .expect("new");
    let out = dials(&drain(&mut reach));
    assert!(
        out.contains(&(DialPurpose::Relay, Some(peer(5)))),
        "dialed at start: {out:?}"
    );
    for (conn, peer, addr) in [(1, peer(1), rendezvous()), (5, peer(5), relay_addr)] {
        reach.handle(
            Input::Connected {
                peer,
                conn,
                addr: addr.clone(),
                dialed: Some(addr),
            },
            t0,
        );
    }
    drain(&mut reach);
    let t1 = t0 + Duration::from_secs(30);
    reach.handle(
        Input::Disconnected {
            peer: peer(5),
            conn: 5,
            broke: true,
        },
        t1,
    );
    // Long past its retry pause: dialed at once.
    assert!(dials(&drain(&mut reach)).contains(&(DialPurpose::Relay, Some(peer(5)))));
    // That dial fails; the next comes at the pause, with nothing else pending.
    reach.handle(
        Input::DialFailed {
            peer: Some(peer(5)),
            conn: 6,
        },
        t1,
    );
    let again = run_until_dialed(&mut reach, peer(5), t1 + RELAY_RETRY * 2);
    assert_eq!(again, Some(t1 + RELAY_RETRY));
}

#[test]
fn a_rendezvous_without_an_id_is_not_redialled_while_its_dial_is_under_way() {
    let t0 = Instant::now();
    let bare = addr("/ip4/10.0.0.1/tcp/4001");
    let mut reach = Planner::new(bare, &[], Vec::new(), t0).expect("planner");
    assert_eq!(dials(&drain(&mut reach)), [(DialPurpose::Rendezvous, None)]);
    reach.handle(
        Input::DialStarted {
            purpose: DialPurpose::Rendezvous,
            peer: None,
            result: Ok(1),
        },
        t0,
    );
    reach.handle_timeout(t0 + RENDEZVOUS_REDIAL * 5);
    assert!(
        dials(&drain(&mut reach)).is_empty(),
        "the first dial is still under way"
    );
    reach.handle(
        Input::DialFailed {
            peer: None,
            conn: 1,
        },
        t0 + RENDEZVOUS_REDIAL * 5,
    );
    reach.handle_timeout(t0 + RENDEZVOUS_REDIAL * 6);
    assert_eq!(dials(&drain(&mut reach)), [(DialPurpose::Rendezvous, None)]);
}

#[path = "reach_failover_tests.rs"]
mod failover;
