//! The gate between two real swarms on loopback: one gated, one plain gossipsub that is not a
//! member until it is, then is not again.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::time::Duration;

use futures::StreamExt;
use libp2p::gossipsub::{self, IdentTopic, PublishError};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, Swarm, noise, tcp, yamux};

use super::GossipGate;

fn gossipsub() -> gossipsub::Behaviour {
    let config = gossipsub::ConfigBuilder::default()
        .validation_mode(gossipsub::ValidationMode::Anonymous)
        .message_id_fn(|m: &gossipsub::Message| gossipsub::MessageId::from(m.data.clone()))
        .heartbeat_interval(Duration::from_millis(100))
        .build()
        .unwrap();
    gossipsub::Behaviour::new(gossipsub::MessageAuthenticity::Anonymous, config).unwrap()
}

fn swarm<B: NetworkBehaviour>(behaviour: impl FnOnce() -> B) -> Swarm<B> {
    libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            tcp::Config::default(),
            noise::Config::new,
            yamux::Config::default,
        )
        .unwrap()
        .with_behaviour(|_| behaviour())
        .unwrap()
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(30)))
        .build()
}

type Plain = Swarm<gossipsub::Behaviour>;
type PlainEvent = SwarmEvent<gossipsub::Event>;

/// Drives both swarms until the gated one is `ready` or the plain one `saw` what it waits for.
async fn until(
    gated: &mut Swarm<GossipGate>,
    plain: &mut Plain,
    mut ready: impl FnMut(&Swarm<GossipGate>) -> bool,
    mut saw: impl FnMut(&PlainEvent) -> bool,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !ready(gated) {
        tokio::select! {
            _ = gated.select_next_some() => {}
            event = plain.select_next_some() => if saw(&event) { return },
            () = tokio::time::sleep_until(deadline) => panic!("gave up waiting"),
        }
    }
}

fn never<T>(_: &T) -> bool {
    false
}

fn no_peers(result: Result<gossipsub::MessageId, PublishError>) -> bool {
    matches!(result, Err(PublishError::NoPeersSubscribedToTopic))
}

#[tokio::test]
async fn a_peer_is_kept_out_of_a_gated_topic_until_it_is_a_member_and_pushed_out_after() {
    let topic = IdentTopic::new("palaver/room/test");
    let mut gated = swarm(|| GossipGate::new(gossipsub()));
    let mut plain = swarm(gossipsub);
    let plain_id = *plain.local_peer_id();
    gated
        .listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap())
        .unwrap();
    let addr: Multiaddr = loop {
        if let SwarmEvent::NewListenAddr { address, .. } = gated.select_next_some().await {
            break address;
        }
    };
    gated.behaviour_mut().subscribe(&topic).unwrap();
    gated
        .behaviour_mut()
        .set_members(topic.hash(), HashSet::new());
    plain.behaviour_mut().subscribe(&topic).unwrap();
    plain.dial(addr.clone()).unwrap();

    // Not a member: its subscription is refused, so there is nobody to publish to.
    let refused = |n| {
        move |g: &Swarm<GossipGate>| g.behaviour().counters().outsider_subscriptions_refused == n
    };
    until(&mut gated, &mut plain, refused(1), never).await;
    assert!(no_peers(
        gated.behaviour_mut().publish(topic.clone(), b"1".to_vec())
    ));

    // A member now: the subscription it sent earlier counts after all, with no reconnect.
    gated
        .behaviour_mut()
        .set_members(topic.hash(), HashSet::from([plain_id]));
    gated
        .behaviour_mut()
        .publish(topic.clone(), b"2".to_vec())
        .unwrap();
    let mut received = false;
    until(&mut gated, &mut plain, |_| false, |event| {
        received = matches!(event, SwarmEvent::Behaviour(gossipsub::Event::Message { message, .. })
            if message.data == b"2");
        received
    })
    .await;
    assert!(received);

    // No longer a member: pushed out at once, and refused when it comes back.
    gated
        .behaviour_mut()
        .set_members(topic.hash(), HashSet::new());
    until(
        &mut gated,
        &mut plain,
        |g| !g.is_connected(&plain_id),
        never,
    )
    .await;
    assert_eq!(gated.behaviour().counters().members_evicted, 1);
    plain.dial(addr).unwrap();
    until(&mut gated, &mut plain, refused(2), never).await;
    assert!(no_peers(
        gated.behaviour_mut().publish(topic.clone(), b"3".to_vec())
    ));
}
