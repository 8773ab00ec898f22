//! Refusing a TCP port another process already listens on, before libp2p listens there.
//!
//! libp2p's TCP transport sets `SO_REUSEPORT` on every listening socket (for port reuse when
//! dialing), so a second server started on a taken port listens too, and the kernel then splits
//! incoming connections between the two: users on one never see users on the other. So each
//! fixed TCP port is first bound the ordinary way, without `SO_REUSEPORT`, which the kernel refuses
//! while any socket listens there; that probe socket is closed at once (it never listened, so it
//! leaves nothing behind). Port 0 (any free port) needs no check.

use std::net::{IpAddr, SocketAddr};

use libp2p::Multiaddr;
use libp2p::multiaddr::Protocol;

/// Fails if `addr` is a TCP address with a fixed port that cannot be bound right now; the error
/// says why (for a port in use: that another process listens there). Other addresses (QUIC, port
/// 0, relay circuits) pass.
pub fn ensure_tcp_port_free(addr: &Multiaddr) -> std::io::Result<()> {
    let Some(socket) = fixed_tcp_socket(addr) else {
        return Ok(());
    };
    match std::net::TcpListener::bind(socket) {
        Ok(probe) => {
            drop(probe);
            Ok(())
        }
        Err(err) if err.kind() == std::io::ErrorKind::AddrInUse => Err(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            "the address is already in use: another process is listening there",
        )),
        Err(err) => Err(err),
    }
}

/// The socket address of `/ip4|ip6/…/tcp/PORT` (optionally ending in `/p2p/…`) with a port other
/// than 0.
fn fixed_tcp_socket(addr: &Multiaddr) -> Option<SocketAddr> {
    let mut parts = addr.iter();
    let ip = match parts.next()? {
        Protocol::Ip4(ip) => IpAddr::V4(ip),
        Protocol::Ip6(ip) => IpAddr::V6(ip),
        _ => return None,
    };
    let Protocol::Tcp(port) = parts.next()? else {
        return None;
    };
    match parts.next() {
        None | Some(Protocol::P2p(_)) if port != 0 => Some(SocketAddr::new(ip, port)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn tcp(port: u16) -> Multiaddr {
        format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap()
    }

    #[test]
    fn a_port_someone_listens_on_is_refused_and_a_free_one_stays_free() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let err = ensure_tcp_port_free(&tcp(port)).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
        assert!(err.to_string().contains("already in use"), "{err}");
        drop(taken);
        ensure_tcp_port_free(&tcp(port)).unwrap();
        // The check left nothing behind: the port can be listened on right after.
        std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    }

    #[test]
    fn only_fixed_tcp_ports_are_checked() {
        let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        for addr in [
            "/ip4/127.0.0.1/tcp/0".to_owned(),
            format!("/ip4/127.0.0.1/udp/{port}/quic-v1"),
            "/dns4/localhost/tcp/4001".to_owned(),
        ] {
            ensure_tcp_port_free(&addr.parse().unwrap()).unwrap();
        }
        assert_eq!(
            fixed_tcp_socket(
                &"/ip6/::1/tcp/4001/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN"
                    .parse()
                    .unwrap()
            ),
            Some("[::1]:4001".parse().unwrap())
        );
    }
}
