//! `palaver-rendezvous`: parse flags → config → bind → print listen addresses → run until SIGINT
//! or SIGTERM. Every flag can also come from the environment (see `rendezvous/palaver-rendezvous.env`).

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use libp2p::Multiaddr;
use palaver_rendezvous::{Config, Limits, RelayLimits, Server};

/// Palaver's self-hosted rendezvous: accounts, presence, prekeys, encrypted mailbox, discovery
/// and relay.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Listen address (repeatable): TCP and/or QUIC multiaddrs.
    #[arg(long, env = "PALAVER_RENDEZVOUS_LISTEN", value_delimiter = ',',
          default_values = ["/ip4/0.0.0.0/tcp/4001", "/ip4/0.0.0.0/udp/4001/quic-v1"])]
    listen: Vec<Multiaddr>,
    /// Directory for the database and the server's key.
    #[arg(long, env = "PALAVER_RENDEZVOUS_DATA")]
    data: PathBuf,
    /// Require one of these tokens to register a name (repeatable).
    #[arg(
        long = "registration-token",
        env = "PALAVER_RENDEZVOUS_TOKENS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    registration_tokens: Vec<String>,
    /// Serve Prometheus metrics on http://ADDR/metrics.
    #[arg(long, env = "PALAVER_RENDEZVOUS_METRICS")]
    metrics: Option<SocketAddr>,
    /// Relay for NAT traversal only: no accounts, presence, mailbox or discovery.
    #[arg(long, env = "PALAVER_RENDEZVOUS_RELAY_ONLY")]
    relay_only: bool,
    /// Public address to announce (repeatable) when behind NAT; default: the listen addresses.
    #[arg(long, env = "PALAVER_RENDEZVOUS_EXTERNAL", value_delimiter = ',')]
    external: Vec<Multiaddr>,
    /// Messages held per recipient.
    #[arg(long, env = "PALAVER_RENDEZVOUS_MAILBOX_MESSAGES", default_value_t = Limits::default().mailbox.max_messages)]
    mailbox_messages: u32,
    /// Bytes held per recipient.
    #[arg(long, env = "PALAVER_RENDEZVOUS_MAILBOX_BYTES", default_value_t = Limits::default().mailbox.max_bytes)]
    mailbox_bytes: u64,
    /// Days a message is held before it expires unread.
    #[arg(
        long,
        env = "PALAVER_RENDEZVOUS_MAILBOX_TTL_DAYS",
        default_value_t = 14
    )]
    mailbox_ttl_days: u64,
    /// Seconds without a heartbeat before a user is shown offline.
    #[arg(
        long,
        env = "PALAVER_RENDEZVOUS_PRESENCE_TIMEOUT",
        default_value_t = 90
    )]
    presence_timeout: u64,
    /// Seconds one relayed connection (circuit) may last; the peers then open another.
    #[arg(long, env = "PALAVER_RENDEZVOUS_RELAY_CIRCUIT_SECS", default_value_t = RelayLimits::default().max_circuit_duration.as_secs())]
    relay_circuit_secs: u64,
    /// Bytes one relayed connection (circuit) may carry; the peers then open another.
    #[arg(long, env = "PALAVER_RENDEZVOUS_RELAY_CIRCUIT_BYTES", default_value_t = RelayLimits::default().max_circuit_bytes)]
    relay_circuit_bytes: u64,
    /// Seconds a relay slot is held before its holder must renew it.
    #[arg(long, env = "PALAVER_RENDEZVOUS_RELAY_RESERVATION_SECS", default_value_t = RelayLimits::default().reservation_duration.as_secs())]
    relay_reservation_secs: u64,
}

impl Args {
    fn config(&self) -> Config {
        let mut limits = Limits::default();
        limits.mailbox.max_messages = self.mailbox_messages;
        limits.mailbox.max_bytes = self.mailbox_bytes;
        limits.mailbox.ttl = Duration::from_secs(self.mailbox_ttl_days.saturating_mul(86_400));
        limits.presence_timeout = Duration::from_secs(self.presence_timeout);
        limits.relay.max_circuit_duration = Duration::from_secs(self.relay_circuit_secs);
        limits.relay.max_circuit_bytes = self.relay_circuit_bytes;
        limits.relay.reservation_duration = Duration::from_secs(self.relay_reservation_secs);
        Config {
            listen: self.listen.clone(),
            data_dir: self.data.clone(),
            registration_tokens: self.registration_tokens.clone(),
            metrics: self.metrics,
            relay_only: self.relay_only,
            limits,
        }
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

#[tokio::main]
async fn run(args: Args) -> anyhow::Result<()> {
    let mut server = Server::bind(args.config())
        .await
        .context("starting the server")?;
    for addr in &args.external {
        server.add_external_address(addr.clone());
    }
    // Whoever started us may stop reading after the first address: that is not a reason to stop.
    let mut stdout = std::io::stdout().lock();
    let printed = server
        .listen_addrs()
        .iter()
        .try_for_each(|addr| writeln!(stdout, "{addr}"))
        .and_then(|()| stdout.flush());
    if let Err(error) = printed {
        tracing::warn!(%error, "could not print the listen addresses");
    }
    drop(stdout);
    server.run(shutdown_signal()).await?;
    Ok(())
}

/// SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
