//! Prometheus metrics (prometheus-client, the library libp2p-metrics uses) and the small HTTP
//! endpoint that serves them at `/metrics`.
//!
//! The actor updates [`Metrics`] as it handles events; [`serve`] answers scrapes from a shared,
//! read-only [`Registry`]. The endpoint reads at most one small request head per connection, with
//! a timeout and a bound on concurrent scrapes, so it cannot be used to tie the server up.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Why an input was rejected: the `reason` label of `palaver_rejected_inputs_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Rejection {
    /// A frame that did not decode or was over the protocol's size limit.
    MalformedFrame,
    /// A connection that failed before the Noise handshake completed (garbage on the port).
    Handshake,
    /// A peer that did not log in within the login timeout.
    LoginTimeout,
    /// A relay reservation or circuit that was denied (not logged in, over a limit).
    RelayDenied,
    /// A request refused with this reason.
    Refused(palaver_protocol::wire::RefusalReason),
}

impl Rejection {
    pub(crate) fn label(self) -> &'static str {
        use palaver_protocol::wire::RefusalReason as R;
        match self {
            Rejection::MalformedFrame => "malformed_frame",
            Rejection::Handshake => "handshake",
            Rejection::LoginTimeout => "login_timeout",
            Rejection::RelayDenied => "relay_denied",
            Rejection::Refused(reason) => match reason {
                R::NameTaken => "name_taken",
                R::TokenRequired => "token_required",
                R::BadToken => "bad_token",
                R::UnknownUser => "unknown_user",
                R::NotYourName => "not_your_name",
                R::NotLoggedIn => "not_logged_in",
                R::NoPrekeys => "no_prekeys",
                R::QuotaExceeded => "quota_exceeded",
                R::TooLarge => "too_large",
                R::RateLimited => "rate_limited",
                R::Invalid => "invalid",
                R::Unavailable => "unavailable",
                R::NotAllowed => "not_allowed",
                R::InUse => "in_use",
            },
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ReasonLabel {
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct KindLabel {
    kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct OutcomeLabel {
    outcome: &'static str,
}

/// Every metric the server keeps. Cloning shares them.
#[derive(Debug, Clone, Default)]
pub(crate) struct Metrics {
    pub(crate) connected_peers: Gauge,
    pub(crate) sessions: Gauge,
    pub(crate) online_users: Gauge,
    pub(crate) registrations: Counter,
    pub(crate) logins: Counter,
    pub(crate) requests: Family<KindLabel, Counter>,
    pub(crate) presence_updates: Counter,
    pub(crate) pushes_sent: Counter,
    pub(crate) pushes_dropped: Counter,
    pub(crate) mailbox_messages: Gauge,
    pub(crate) mailbox_bytes: Gauge,
    pub(crate) mailbox_deposits: Counter,
    pub(crate) mailbox_acked: Counter,
    pub(crate) mailbox_expired: Counter,
    pub(crate) relay_reservations: Gauge,
    pub(crate) relay_reservation_requests: Family<OutcomeLabel, Counter>,
    pub(crate) relay_circuits: Gauge,
    pub(crate) relay_circuit_requests: Family<OutcomeLabel, Counter>,
    pub(crate) relay_bytes: Counter,
    pub(crate) rejected: Family<ReasonLabel, Counter>,
}

impl Metrics {
    /// Creates the metrics and registers them (under `palaver_`) in `registry`.
    pub(crate) fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        let r = registry.sub_registry_with_prefix("palaver");
        r.register(
            "connected_peers",
            "Peers with at least one connection",
            m.connected_peers.clone(),
        );
        r.register("sessions", "Logged-in sessions", m.sessions.clone());
        r.register(
            "online_users",
            "Users shown online or away",
            m.online_users.clone(),
        );
        r.register("registrations", "Names registered", m.registrations.clone());
        r.register("logins", "Successful logins", m.logins.clone());
        r.register("requests", "Requests received, by kind", m.requests.clone());
        r.register(
            "presence_updates",
            "Presence state changes",
            m.presence_updates.clone(),
        );
        r.register(
            "pushes_sent",
            "Pushes sent to subscribers",
            m.pushes_sent.clone(),
        );
        r.register(
            "pushes_dropped",
            "Pushes dropped because the peer had too many unacknowledged",
            m.pushes_dropped.clone(),
        );
        r.register(
            "mailbox_messages",
            "Messages held in mailboxes",
            m.mailbox_messages.clone(),
        );
        r.register(
            "mailbox_bytes",
            "Bytes held in mailboxes",
            m.mailbox_bytes.clone(),
        );
        r.register(
            "mailbox_deposits",
            "Messages deposited",
            m.mailbox_deposits.clone(),
        );
        r.register(
            "mailbox_acked",
            "Messages acknowledged and deleted",
            m.mailbox_acked.clone(),
        );
        r.register(
            "mailbox_expired",
            "Messages deleted unread after their TTL",
            m.mailbox_expired.clone(),
        );
        r.register(
            "relay_reservations",
            "Active relay reservations",
            m.relay_reservations.clone(),
        );
        r.register(
            "relay_reservation_requests",
            "Relay reservation requests, by outcome",
            m.relay_reservation_requests.clone(),
        );
        r.register(
            "relay_circuits",
            "Active relay circuits",
            m.relay_circuits.clone(),
        );
        r.register(
            "relay_circuit_requests",
            "Relay circuit requests, by outcome",
            m.relay_circuit_requests.clone(),
        );
        r.register(
            "relay_bytes",
            "Bytes carried by relay circuits (each relayed byte counted once)",
            m.relay_bytes.clone(),
        );
        r.register(
            "rejected_inputs",
            "Inputs rejected, by reason",
            m.rejected.clone(),
        );
        m
    }

    pub(crate) fn reject(&self, why: Rejection) {
        self.rejected
            .get_or_create(&ReasonLabel {
                reason: why.label(),
            })
            .inc();
    }

    pub(crate) fn request(&self, kind: &'static str) {
        self.requests.get_or_create(&KindLabel { kind }).inc();
    }

    pub(crate) fn relay_reservation(&self, outcome: &'static str) {
        self.relay_reservation_requests
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }

    pub(crate) fn relay_circuit(&self, outcome: &'static str) {
        self.relay_circuit_requests
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }
}

const MAX_CONCURRENT_SCRAPES: usize = 8;
const MAX_REQUEST_HEAD: usize = 8 * 1024;
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves `registry` at `http://{listener}/metrics` until the task is dropped.
pub(crate) async fn serve(listener: TcpListener, registry: Arc<Registry>) {
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT_SCRAPES));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        // Over the bound: the connection is simply closed.
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            continue;
        };
        let registry = registry.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(SCRAPE_TIMEOUT, answer(stream, &registry)).await;
            drop(permit);
        });
    }
}

async fn answer(mut stream: tokio::net::TcpStream, registry: &Registry) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_REQUEST_HEAD {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let mut parts = line.split(|&b| b == b' ');
    let (method, path) = (parts.next(), parts.next());
    let path = path.map(|p| p.split(|&b| b == b'?').next().unwrap_or_default());
    let (status, content_type, body) = match (method, path) {
        (Some(b"GET"), Some(b"/metrics")) => {
            let mut body = String::new();
            match prometheus_client::encoding::text::encode(&mut body, registry) {
                Ok(()) => (
                    "200 OK",
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    body,
                ),
                Err(_) => (
                    "500 Internal Server Error",
                    "text/plain",
                    "encoding failed\n".into(),
                ),
            }
        }
        (Some(b"GET"), _) => ("404 Not Found", "text/plain", "try /metrics\n".into()),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "GET /metrics\n".into(),
        ),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// Binds the metrics endpoint (so a bad address is an error at startup, not later).
pub(crate) async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}
