//! What a multiaddr says about the path it names: through a relay or not, on a local network or
//! not, over which transport.

use libp2p_identity::PeerId;
use multiaddr::{Multiaddr, Protocol};

/// Whether `addr` goes through a relay.
pub fn is_circuit(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| p == Protocol::P2pCircuit)
}

/// Whether `addr` is a direct address on a local network (loopback, private, link-local or
/// carrier-grade NAT space): worth advertising for peers on the same network, and never proof of
/// being reachable from outside.
pub fn is_local_network(addr: &Multiaddr) -> bool {
    if is_circuit(addr) {
        return false;
    }
    match addr.iter().next() {
        Some(Protocol::Ip4(ip)) => {
            let [a, b, ..] = ip.octets();
            ip.is_loopback()
                || ip.is_private()
                || ip.is_link_local()
                || (a == 100 && (64..128).contains(&b))
        }
        Some(Protocol::Ip6(ip)) => {
            let first = ip.segments()[0];
            ip.is_loopback() || (first & 0xfe00) == 0xfc00 || (first & 0xffc0) == 0xfe80
        }
        _ => false,
    }
}

/// Whether the host part of `addr` is a loopback address.
pub fn is_loopback(addr: &Multiaddr) -> bool {
    match addr.iter().next() {
        Some(Protocol::Ip4(ip)) => ip.is_loopback(),
        Some(Protocol::Ip6(ip)) => ip.is_loopback(),
        _ => false,
    }
}

/// Whether `addr` listens on every interface (`0.0.0.0` or `::`).
pub fn is_unspecified(addr: &Multiaddr) -> bool {
    match addr.iter().next() {
        Some(Protocol::Ip4(ip)) => ip.is_unspecified(),
        Some(Protocol::Ip6(ip)) => ip.is_unspecified(),
        _ => false,
    }
}

/// The transport of a direct address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    Quic,
}

impl Transport {
    /// `None` for a circuit address or one over neither transport.
    pub fn of(addr: &Multiaddr) -> Option<Self> {
        let mut kind = None;
        for protocol in addr.iter() {
            match protocol {
                Protocol::Tcp(_) => kind = Some(Self::Tcp),
                Protocol::QuicV1 => kind = Some(Self::Quic),
                Protocol::P2pCircuit => return None,
                _ => {}
            }
        }
        kind
    }
}

/// The relay of a circuit address (`…/p2p/<relay>/p2p-circuit/…`).
pub fn relay_of(addr: &Multiaddr) -> Option<PeerId> {
    let mut relay = None;
    for protocol in addr.iter() {
        match protocol {
            Protocol::P2p(peer) => relay = Some(peer),
            Protocol::P2pCircuit => return relay,
            _ => {}
        }
    }
    None
}

/// The peer id `addr` ends in, if it names one.
pub fn peer_of(addr: &Multiaddr) -> Option<PeerId> {
    match addr.iter().last() {
        Some(Protocol::P2p(peer)) => Some(peer),
        _ => None,
    }
}

/// `addr` ending in `/p2p/<peer>` (unchanged if it names a peer already).
pub fn with_peer(addr: &Multiaddr, peer: PeerId) -> Multiaddr {
    match addr.iter().last() {
        Some(Protocol::P2p(_)) => addr.clone(),
        _ => addr.clone().with(Protocol::P2p(peer)),
    }
}

/// `addr` without any `/p2p/<peer>` parts: the transport address a dial went to.
pub fn without_peers(addr: &Multiaddr) -> Multiaddr {
    addr.iter()
        .filter(|p| !matches!(p, Protocol::P2p(_)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> Multiaddr {
        s.parse().expect("test address")
    }

    fn peer(n: u8) -> PeerId {
        crate::identity::peer_id_of(
            &ed25519_dalek::SigningKey::from_bytes(&[n; 32]).verifying_key(),
        )
    }

    #[test]
    fn local_networks_are_told_apart_from_public_ones() {
        for local in [
            "/ip4/127.0.0.1/tcp/1",
            "/ip4/10.1.2.3/tcp/1",
            "/ip4/192.168.0.9/udp/1/quic-v1",
            "/ip4/100.64.0.1/tcp/1",
            "/ip6/fd00::1/tcp/1",
            "/ip6/fe80::1/tcp/1",
        ] {
            assert!(is_local_network(&addr(local)), "{local}");
        }
        for public in [
            "/ip4/203.0.113.5/tcp/1",
            "/ip4/100.128.0.1/tcp/1",
            "/ip6/2001:db8::1/tcp/1",
        ] {
            assert!(!is_local_network(&addr(public)), "{public}");
        }
    }

    #[test]
    fn circuits_name_their_relay_and_have_no_transport() {
        let relay = peer(1);
        let target = peer(2);
        let circuit = addr(&format!(
            "/ip4/10.0.0.1/tcp/4001/p2p/{relay}/p2p-circuit/p2p/{target}"
        ));
        assert!(is_circuit(&circuit));
        assert!(!is_local_network(&circuit));
        assert_eq!(relay_of(&circuit), Some(relay));
        assert_eq!(peer_of(&circuit), Some(target));
        assert_eq!(Transport::of(&circuit), None);
        assert_eq!(
            Transport::of(&addr("/ip4/1.2.3.4/udp/9/quic-v1")),
            Some(Transport::Quic)
        );
        assert_eq!(
            without_peers(&circuit),
            addr("/ip4/10.0.0.1/tcp/4001/p2p-circuit")
        );
    }
}
