//! Several rendezvous instances: the planner moves to the next when one dies, cannot be
//! dialed or refuses us, backs off once all have failed, and starts over after a login.

use super::*;

fn instance(n: u8) -> Multiaddr {
    addr(&format!("/ip4/10.0.0.{n}/tcp/4001/p2p/{}", peer(n)))
}

fn rendezvous_dials(outputs: &[Out]) -> Vec<Multiaddr> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Dial {
                purpose: DialPurpose::Rendezvous,
                addrs,
                ..
            } => Some(addrs[0].clone()),
            _ => None,
        })
        .collect()
}

/// A planner over instances 1..=n, its first dial (to instance 1) started as connection 100.
fn planner(n: u8, t0: Instant) -> Planner {
    let all = (1..=n).map(instance).collect();
    let mut reach = Planner::with_instances(all, &[], Vec::new(), t0).expect("planner");
    assert_eq!(rendezvous_dials(&drain(&mut reach)), [instance(1)]);
    started(&mut reach, n_conn(1), 1, t0);
    reach
}

fn n_conn(instance: u8) -> u32 {
    100 + u32::from(instance)
}

fn started(reach: &mut Planner, conn: u32, n: u8, now: Instant) {
    reach.handle(
        Input::DialStarted {
            purpose: DialPurpose::Rendezvous,
            peer: Some(peer(n)),
            result: Ok(conn),
        },
        now,
    );
}

fn fail(reach: &mut Planner, n: u8, now: Instant) -> Vec<Out> {
    reach.handle(
        Input::DialFailed {
            peer: Some(peer(n)),
            conn: n_conn(n),
        },
        now,
    );
    drain(reach)
}

fn connect(reach: &mut Planner, n: u8, now: Instant) -> Vec<Out> {
    reach.handle(
        Input::Connected {
            peer: peer(n),
            conn: n_conn(n),
            addr: instance(n),
            dialed: Some(instance(n)),
        },
        now,
    );
    drain(reach)
}

#[test]
fn an_empty_list_of_instances_is_refused() {
    let error = Planner::with_instances(Vec::new(), &[], Vec::new(), Instant::now()).unwrap_err();
    assert_eq!(error, ReachError::NoRendezvous);
}

#[test]
fn losing_the_instance_in_use_moves_to_the_next_at_once() {
    let t0 = Instant::now();
    let mut reach = planner(2, t0);
    assert_eq!(
        connect(&mut reach, 1, t0),
        [Output::RendezvousConnected(peer(1))]
    );
    reach.handle(Input::LoggedIn(true), t0);
    drain(&mut reach);
    let t1 = t0 + Duration::from_secs(5);
    reach.handle(
        Input::Disconnected {
            peer: peer(1),
            conn: n_conn(1),
            broke: true,
        },
        t1,
    );
    let out = drain(&mut reach);
    assert_eq!(out[0], Output::RendezvousLost);
    assert_eq!(rendezvous_dials(&out), [instance(2)]);
    assert_eq!(reach.rendezvous_addr(), &instance(2));
    started(&mut reach, n_conn(2), 2, t1);
    assert_eq!(
        connect(&mut reach, 2, t1),
        [Output::RendezvousConnected(peer(2))]
    );
    assert!(reach.rendezvous_connected());
    assert_eq!(reach.rendezvous_peer(), Some(peer(2)));
    assert!(!reach.is_rendezvous(&peer(1)));
    assert_eq!(reach.rendezvous_instances(), [instance(1), instance(2)]);
}

#[test]
fn when_every_instance_fails_the_next_round_backs_off_doubling_until_a_login() {
    let t0 = Instant::now();
    let mut reach = planner(3, t0);
    // A round: each failure moves on at once.
    assert_eq!(rendezvous_dials(&fail(&mut reach, 1, t0)), [instance(2)]);
    started(&mut reach, n_conn(2), 2, t0);
    assert_eq!(rendezvous_dials(&fail(&mut reach, 2, t0)), [instance(3)]);
    started(&mut reach, n_conn(3), 3, t0);
    // The round is over: nothing until the backoff has passed, and the timer says when.
    assert!(rendezvous_dials(&fail(&mut reach, 3, t0)).is_empty());
    assert_eq!(reach.poll_timeout(), Some(t0 + FAILOVER_BACKOFF));
    reach.handle_timeout(t0 + FAILOVER_BACKOFF - Duration::from_millis(1));
    assert!(rendezvous_dials(&drain(&mut reach)).is_empty());
    let t1 = t0 + FAILOVER_BACKOFF;
    reach.handle_timeout(t1);
    assert_eq!(rendezvous_dials(&drain(&mut reach)), [instance(1)]);
    // The second round fails too: twice the pause.
    for n in 1..=3 {
        started(&mut reach, n_conn(n), n, t1);
        fail(&mut reach, n, t1);
    }
    assert_eq!(reach.poll_timeout(), Some(t1 + 2 * FAILOVER_BACKOFF));
    let t2 = t1 + 2 * FAILOVER_BACKOFF;
    reach.handle_timeout(t2);
    assert_eq!(rendezvous_dials(&drain(&mut reach)), [instance(1)]);
    // A login ends the run: the next failure moves on without waiting.
    started(&mut reach, n_conn(1), 1, t2);
    connect(&mut reach, 1, t2);
    reach.handle(Input::LoggedIn(true), t2);
    drain(&mut reach);
    reach.handle(
        Input::Disconnected {
            peer: peer(1),
            conn: n_conn(1),
            broke: true,
        },
        t2,
    );
    assert_eq!(rendezvous_dials(&drain(&mut reach)), [instance(2)]);
}

#[test]
fn a_refused_login_closes_the_instance_gives_its_slot_back_and_moves_on() {
    let t0 = Instant::now();
    let mut reach = planner(2, t0);
    connect(&mut reach, 1, t0);
    reach.handle(
        Input::Identified {
            peer: peer(1),
            listen_addrs: vec![instance(1)],
        },
        t0,
    );
    reach.handle(Input::LoggedIn(true), t0);
    let slot = drain(&mut reach).into_iter().find_map(|o| match o {
        Output::ReserveSlot { relay, .. } => Some(relay),
        _ => None,
    });
    assert_eq!(slot, Some(peer(1)));
    reach.handle(
        Input::SlotListener {
            relay: peer(1),
            listener: Some(7),
        },
        t0,
    );
    reach.handle(Input::LoggedIn(false), t0);
    reach.handle(Input::RendezvousRefused, t0);
    let out = drain(&mut reach);
    assert!(out.contains(&Output::Close(n_conn(1))), "{out:?}");
    assert!(out.contains(&Output::ReleaseSlot(7)), "{out:?}");
    assert_eq!(rendezvous_dials(&out), [instance(2)]);
    // The old instance's connection closing is no peer's business.
    reach.handle(
        Input::Disconnected {
            peer: peer(1),
            conn: n_conn(1),
            broke: false,
        },
        t0,
    );
    assert!(drain(&mut reach).is_empty());
}

#[test]
fn with_one_instance_a_refusal_or_failure_changes_nothing() {
    let t0 = Instant::now();
    let mut reach = planner(1, t0);
    reach.handle(Input::RendezvousRefused, t0);
    assert!(drain(&mut reach).is_empty());
    // A failed dial is retried on the usual redial timer, never backed off.
    assert!(rendezvous_dials(&fail(&mut reach, 1, t0)).is_empty());
    assert_eq!(reach.poll_timeout(), Some(t0 + RENDEZVOUS_REDIAL));
    reach.handle_timeout(t0 + RENDEZVOUS_REDIAL);
    assert_eq!(rendezvous_dials(&drain(&mut reach)), [instance(1)]);
}

#[test]
fn an_address_without_an_id_may_lead_to_another_instance_after_a_loss() {
    // A load balancer in front of the instances: one address, whichever instance answers.
    let t0 = Instant::now();
    let balancer = addr("/ip4/10.0.0.9/tcp/4001");
    let mut reach = Planner::new(balancer.clone(), &[], Vec::new(), t0).expect("planner");
    assert_eq!(dials(&drain(&mut reach)), [(DialPurpose::Rendezvous, None)]);
    let behind = |n: u8| balancer.clone().with(Protocol::P2p(peer(n)));
    reach.handle(
        Input::Connected {
            peer: peer(1),
            conn: 1,
            addr: balancer.clone(),
            dialed: Some(behind(1)),
        },
        t0,
    );
    assert_eq!(drain(&mut reach), [Output::RendezvousConnected(peer(1))]);
    reach.handle(
        Input::Disconnected {
            peer: peer(1),
            conn: 1,
            broke: true,
        },
        t0,
    );
    // Redialed without the old id, so another instance behind the balancer is accepted.
    let out = drain(&mut reach);
    assert_eq!(out[0], Output::RendezvousLost);
    assert_eq!(dials(&out), [(DialPurpose::Rendezvous, None)]);
    reach.handle(
        Input::Connected {
            peer: peer(2),
            conn: 2,
            addr: balancer.clone(),
            dialed: Some(behind(2)),
        },
        t0,
    );
    assert_eq!(drain(&mut reach), [Output::RendezvousConnected(peer(2))]);
    assert_eq!(reach.rendezvous_peer(), Some(peer(2)));
}
