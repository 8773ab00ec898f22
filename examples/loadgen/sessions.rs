//! The rendezvous part (after `rendezvous/examples/load.rs`, the server's own load test): the
//! server runs in a child process — this binary re-executed as `loadgen __serve DIR` — so its
//! resident memory is its own. From here `sessions` light clients (each its own key, swarm and
//! TCP connection) log in the way a node does — the node's session machine registers the name,
//! logs in and publishes prekeys ([`ClientSession`]) — `CONCURRENCY` at a time; then:
//!
//! - `rss_kib_per_session`: (server RSS with every session logged in − RSS before) / sessions;
//! - `logins_per_s`: a login again on every established session (as after a reconnection),
//!   `CONCURRENCY` in flight;
//! - `presence_p99_ms`: `TARGETS` users each watched by `WATCHERS` sessions flip between online
//!   and away `ROUNDS` times; from just before the heartbeat is sent to the push at each watcher;
//! - `bare_rss_kib_per_connection`: the library floor, measured first in the same run — a bare
//!   rust-libp2p listener (TCP, Noise, Yamux and ping; no Palaver code) in a child process of its
//!   own (`loadgen __bare`), the same number of connections from the same clients, held open; and
//!   `rss_ratio_to_bare` = `rss_kib_per_session` / that;
//! - `connected_rss_kib_per_connection`: then Palaver's server with the same connections held
//!   open and none logged in (its libp2p stack: every protocol's handler, before any session).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use palaver_protocol::rendezvous::RateLimit;
use palaver_protocol::wire::{
    PresenceRecord, PresenceState, RendezvousRequest, RendezvousResponse, ServerPush,
};
use palaver_protocol::{Identity, UserName};
use palaver_rendezvous::client::session::ClientSession;
use palaver_rendezvous::client::{Client, ClientConfig};
use palaver_rendezvous::{Config, Limits, Server};
use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt;
use tokio::sync::{Semaphore, mpsc};

use crate::stats;

pub(crate) const SERVE_ARG: &str = "__serve";
pub(crate) const BARE_ARG: &str = "__bare";
const CONCURRENCY: usize = 128;
const TARGETS: usize = 10;
const WATCHERS: usize = 50;
const ROUNDS: usize = 10;
const PHASE_LIMIT: Duration = Duration::from_secs(240);
/// The server's presence timeout here; the sessions heartbeat at half of it.
const PRESENCE_TIMEOUT: Duration = Duration::from_secs(3600);

/// The server process: limits opened up for a load test, as the server's own load test does.
pub(crate) fn serve(dir: PathBuf) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async {
            let mut config = Config::new(vec!["/ip4/127.0.0.1/tcp/0".parse()?], dir);
            config.limits = Limits {
                login_timeout: Duration::from_secs(600),
                presence_timeout: PRESENCE_TIMEOUT,
                idle_connection_timeout: Duration::from_secs(3600),
                requests: RateLimit::new(10_000, 10_000),
                store_cache_bytes: 16 << 20,
                ..Limits::default()
            };
            let server = Server::bind(config).await?;
            for addr in server.listen_addrs() {
                println!("{addr}");
            }
            // Runs until the driver closes our stdin (or goes away).
            let stdin_closed = tokio::task::spawn_blocking(|| {
                let mut line = String::new();
                while std::io::stdin().read_line(&mut line).is_ok_and(|n| n > 0) {}
            });
            server
                .run(async move {
                    let _ = stdin_closed.await;
                })
                .await?;
            Ok(())
        })
}

/// The library floor: a bare rust-libp2p listener (TCP, Noise, Yamux, ping), which prints its
/// address and runs until its stdin closes.
pub(crate) fn serve_bare() -> anyhow::Result<()> {
    use futures::StreamExt;
    use libp2p::swarm::SwarmEvent;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async {
            let mut swarm = libp2p::SwarmBuilder::with_new_identity()
                .with_tokio()
                .with_tcp(
                    libp2p::tcp::Config::default().nodelay(true),
                    libp2p::noise::Config::new,
                    libp2p::yamux::Config::default,
                )?
                .with_behaviour(|_| libp2p::ping::Behaviour::default())?
                .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(3600)))
                .build();
            swarm.listen_on("/ip4/127.0.0.1/tcp/0".parse()?)?;
            let mut stdin_closed = tokio::task::spawn_blocking(|| {
                let mut line = String::new();
                while std::io::stdin().read_line(&mut line).is_ok_and(|n| n > 0) {}
            });
            loop {
                tokio::select! {
                    event = swarm.select_next_some() => {
                        if let SwarmEvent::NewListenAddr { address, .. } = event {
                            println!("{address}");
                        }
                    }
                    _ = &mut stdin_closed => return Ok(()),
                }
            }
        })
}

/// A server in a child process (this binary re-executed with `args`), its pid and the address
/// it printed; it stops when its stdin closes.
struct ChildServer {
    child: tokio::process::Child,
    pid: String,
    addr: libp2p::Multiaddr,
}

impl ChildServer {
    async fn start(args: &[&std::ffi::OsStr]) -> anyhow::Result<Self> {
        // `PALAVER_HEAPTRACK=1`: each server runs under heaptrack, for a heap profile (its RSS
        // figures then read the wrapper's, not the server's).
        let mut command = match std::env::var_os("PALAVER_HEAPTRACK") {
            Some(_) => {
                let mut heaptrack = tokio::process::Command::new("heaptrack");
                heaptrack.arg(std::env::current_exe()?);
                heaptrack
            }
            None => tokio::process::Command::new(std::env::current_exe()?),
        };
        let mut child = command
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let pid = child.id().context("server pid")?.to_string();
        let mut lines =
            tokio::io::BufReader::new(child.stdout.take().context("server stdout")?).lines();
        let addr = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                match lines.next_line().await? {
                    Some(line) => {
                        if let Ok(addr) = line.parse() {
                            return anyhow::Ok(addr);
                        }
                    }
                    None => anyhow::bail!("the server exited"),
                }
            }
        })
        .await??;
        // Settled before its RSS is read.
        tokio::time::sleep(Duration::from_millis(500)).await;
        Ok(Self { child, pid, addr })
    }

    async fn stop(mut self) {
        drop(self.child.stdin.take());
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
    }
}

pub(crate) async fn run(sessions: usize) -> anyhow::Result<Value> {
    let bare = ChildServer::start(&[BARE_ARG.as_ref()]).await?;
    let floor = tokio::time::timeout(PHASE_LIMIT, bare_floor(&bare, sessions)).await;
    bare.stop().await;
    let floor = floor.context("the bare floor took too long")??;

    // Palaver's server with the same connections, none logged in: its libp2p stack alone.
    let dir = tempfile::tempdir()?;
    let server = ChildServer::start(&[SERVE_ARG.as_ref(), dir.path().as_os_str()]).await?;
    let connected = tokio::time::timeout(PHASE_LIMIT, bare_floor(&server, sessions)).await;
    server.stop().await;
    let connected = connected.context("the connections took too long")??;

    let dir = tempfile::tempdir()?;
    let server = ChildServer::start(&[SERVE_ARG.as_ref(), dir.path().as_os_str()]).await?;
    let rss_before = stats::rss_kib(&server.pid);
    let result = tokio::time::timeout(
        PHASE_LIMIT,
        measure(server.addr.clone(), sessions, &server.pid, rss_before),
    )
    .await;
    server.stop().await;
    let mut report = result.context("the rendezvous part took too long")??;
    report["bare_rss_kib_per_connection"] = json!(stats::round3(floor));
    report["connected_rss_kib_per_connection"] = json!(stats::round3(connected));
    let per_session = report["rss_kib_per_session"].as_f64().unwrap_or(0.0);
    report["rss_ratio_to_bare"] = json!(stats::round3(per_session / floor.max(f64::EPSILON)));
    eprintln!("rendezvous: {report}");
    Ok(report)
}

fn client_config() -> ClientConfig {
    ClientConfig {
        push_buffer: 64,
        timeout: Duration::from_secs(120),
        ..ClientConfig::default()
    }
}

/// RSS per connection of `server` (the bare listener, or ours with nobody logged in): `count`
/// clients (the same light clients the
/// sessions use, `CONCURRENCY` connecting at a time) connect and stay connected.
async fn bare_floor(server: &ChildServer, count: usize) -> anyhow::Result<f64> {
    let rss_before = stats::rss_kib(&server.pid);
    let permits = Arc::new(Semaphore::new(CONCURRENCY));
    let mut joins = Vec::with_capacity(count);
    for _ in 0..count {
        let (permits, addr) = (permits.clone(), server.addr.clone());
        joins.push(tokio::spawn(async move {
            let _permit = permits.acquire_owned().await?;
            let identity = Identity::generate(&mut rand_core::OsRng);
            anyhow::Ok(Client::connect_with(addr, &identity, client_config()).await?)
        }));
    }
    let mut clients = Vec::with_capacity(count);
    for join in joins {
        clients.push(join.await??);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_after = stats::rss_kib(&server.pid);
    drop(clients);
    Ok(rss_after.saturating_sub(rss_before) as f64 / count as f64)
}

async fn measure(
    addr: libp2p::Multiaddr,
    count: usize,
    pid: &str,
    rss_before: u64,
) -> anyhow::Result<Value> {
    let config = client_config();
    let progress = ProgressBar::new(count as u64);
    progress.set_style(
        ProgressStyle::with_template("{msg:>22} [{bar:30}] {pos}/{len} {per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    progress.set_message("rendezvous sessions");
    let permits = Arc::new(Semaphore::new(CONCURRENCY));
    let start = Instant::now();
    let mut joins = Vec::with_capacity(count);
    for i in 0..count {
        let permits = permits.clone();
        let addr = addr.clone();
        let config = config.clone();
        let progress = progress.clone();
        joins.push(tokio::spawn(async move {
            let _permit = permits.acquire_owned().await?;
            let identity = Identity::generate(&mut rand_core::OsRng);
            let client = Client::connect_with(addr, &identity, config).await?;
            let name = UserName::new(format!("user{i}"))?;
            // Presence is flipped by hand below: the session's own heartbeat ("online") must
            // not come due during the run, or it undoes an "away" and the next "online" is no
            // change, so nobody is told (what lost ~2 000 pushes in a few earlier runs).
            let session = ClientSession::log_in_heartbeating_every(
                client,
                &identity,
                name.clone(),
                None,
                PRESENCE_TIMEOUT / 2,
            )
            .await?;
            anyhow::ensure!(session.prekeys_published(), "prekeys not published");
            progress.inc(1);
            anyhow::Ok(tokio::sync::Mutex::new((session, name)))
        }));
    }
    let mut sessions = Vec::with_capacity(count);
    let mut failed = 0;
    for join in joins {
        match join.await? {
            Ok(session) => sessions.push(session),
            Err(err) => {
                failed += 1;
                if failed == 1 {
                    eprintln!("a session failed: {err}");
                }
            }
        }
    }
    progress.finish_and_clear();
    let established = start.elapsed();
    anyhow::ensure!(
        sessions.len() > TARGETS * 2,
        "only {} sessions",
        sessions.len()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_after = stats::rss_kib(pid);
    let per_session = rss_after.saturating_sub(rss_before) as f64 / sessions.len() as f64;

    // Logins again on established sessions.
    let sessions = Arc::new(sessions);
    let start = Instant::now();
    let mut lanes = Vec::new();
    for lane in 0..CONCURRENCY {
        let sessions = sessions.clone();
        lanes.push(tokio::spawn(async move {
            for session in sessions.iter().skip(lane).step_by(CONCURRENCY) {
                session.lock().await.0.log_in_again().await?;
            }
            anyhow::Ok(())
        }));
    }
    for lane in lanes {
        lane.await??;
    }
    let logins_per_s = sessions.len() as f64 / start.elapsed().as_secs_f64();

    let sessions = Arc::into_inner(sessions).context("sessions still shared")?;
    let presence = presence(sessions.into_iter().map(|s| s.into_inner()).collect()).await?;
    Ok(json!({
        "sessions": count - failed,
        "failed": failed,
        "sessions_per_s": ((count - failed) as f64 / established.as_secs_f64()).round(),
        "rss_kib_before": rss_before,
        "rss_kib_after": rss_after,
        "rss_kib_per_session": stats::round3(per_session),
        "logins_per_s": logins_per_s.round(),
        "presence_p50_ms": presence.0,
        "presence_p99_ms": presence.1,
        "presence_pushes": presence.2,
        "presence_missing": presence.3,
    }))
}

/// Presence fan-out: (p50 ms, p99 ms, pushes seen, pushes missing).
async fn presence(
    sessions: Vec<(ClientSession, UserName)>,
) -> anyhow::Result<(f64, f64, usize, usize)> {
    let targets = TARGETS.min(sessions.len() / 2);
    let watchers = WATCHERS.min((sessions.len() - targets) / targets.max(1));
    let mut sessions: Vec<_> = sessions.into_iter().map(Some).collect();
    // Each push seen: its state, when, and which target it was about.
    let (sample_tx, mut samples) = mpsc::channel::<(PresenceState, Instant, usize)>(1 << 16);
    let mut watcher_tasks = Vec::new();
    for t in 0..targets {
        let target = sessions[t].as_ref().context("target")?.1.clone();
        for w in 0..watchers {
            let (mut session, _) = sessions[targets + t * watchers + w]
                .take()
                .context("watcher")?;
            let r = session
                .request(RendezvousRequest::SubscribePresence {
                    names: vec![target.clone()],
                })
                .await?;
            anyhow::ensure!(matches!(r, RendezvousResponse::Users(_)));
            let mut client = session.into_client();
            let tx = sample_tx.clone();
            watcher_tasks.push(tokio::spawn(async move {
                while let Some(push) = client.next_push().await {
                    if let ServerPush::Presence(PresenceRecord { state, .. }) = push
                        && tx.send((state, Instant::now(), t)).await.is_err()
                    {
                        break;
                    }
                }
            }));
        }
    }
    drop(sample_tx);
    let mut target_sessions: Vec<ClientSession> = sessions[..targets]
        .iter_mut()
        .filter_map(Option::take)
        .map(|(session, _)| session)
        .collect();
    let mut latencies = Vec::new();
    let mut missing = 0usize;
    for round in 0..ROUNDS {
        let state = if round % 2 == 0 {
            PresenceState::Away
        } else {
            PresenceState::Online
        };
        let sent = Instant::now();
        let sends = target_sessions
            .iter_mut()
            .map(|session| session.request(RendezvousRequest::Heartbeat { state }));
        let answers = futures::future::join_all(sends).await;
        let expected = targets * watchers;
        let mut got = 0;
        let mut got_per_target = vec![0usize; targets];
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while got < expected {
            match tokio::time::timeout_at(deadline, samples.recv()).await {
                Ok(Some((s, at, t))) if s == state => {
                    latencies.push(at - sent);
                    got += 1;
                    got_per_target[t] += 1;
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        if got < expected {
            // Where they went missing, for whoever looks into it.
            let answers: Vec<String> = answers
                .iter()
                .map(|a| match a {
                    Ok(response) => format!("{response:?}").chars().take(40).collect(),
                    Err(error) => format!("error: {error}"),
                })
                .collect();
            eprintln!(
                "presence round {round}: {got}/{expected} pushes; per target {got_per_target:?}; \
                 heartbeat answers {answers:?}"
            );
        }
        missing += expected - got;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for task in watcher_tasks {
        task.abort();
    }
    let pushes = latencies.len();
    Ok((
        stats::ms(stats::percentile(&mut latencies, 0.5)),
        stats::ms(stats::percentile(&mut latencies, 0.99)),
        pushes,
        missing,
    ))
}
