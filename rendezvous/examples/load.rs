//! Load generator: how many logged-in sessions one server holds, at what memory each, how many
//! logins per second it answers, and how fast a presence change reaches subscribers.
//!
//! ```sh
//! cargo run --release -p palaver-rendezvous --example load -- --sessions 10000
//! ```
//!
//! The server runs in a child process (this binary re-executed as `load serve DIR`), so its
//! resident memory is measured alone, from `/proc/<pid>/status`. The driver opens `--sessions`
//! light clients over TCP on 127.0.0.1 (each its own swarm, key and connection), registers and
//! logs each in, then measures:
//!
//! 1. sessions: connect + Noise + register + login, end to end, per second;
//! 2. server RSS per session: (RSS with every session logged in − RSS before) / sessions;
//! 3. logins per second: a login request on every established session, `--concurrency` in flight;
//! 4. presence fan-out: `--targets` users each watched by `--watchers` sessions flip between
//!    online and away `--rounds` times; latency is from just before the heartbeat is sent to the
//!    push arriving at each watcher (so it includes the heartbeat's own trip).
//!
//! 5. deposit + fetch: each session leaves one letter for the next, who fetches and acks it;
//!    pairs per second.
//!
//! `--cluster N` runs all of it twice: against one sled instance, then against N instances over
//! a throw-away PostgreSQL (`testing::TestPostgres`; needs Debian's `postgresql`), sessions spread
//! round robin (so a letter and a presence change cross instances), and prints both.
//!
//! Everything is bounded in count and time and talks only to 127.0.0.1.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use palaver_protocol::rendezvous::RateLimit;
use palaver_protocol::wire::{
    PresenceRecord, PresenceState, RendezvousRequest, RendezvousResponse, ServerPush,
};
use palaver_protocol::{Identity, UserName};
use palaver_rendezvous::client::{Client, ClientConfig};
use palaver_rendezvous::{Config, Limits, Server};
use tokio::io::AsyncBufReadExt;
use tokio::sync::{Semaphore, mpsc};

/// The allocator the server binary ships with, so the server measured is that one.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug)]
struct Args {
    sessions: usize,
    concurrency: usize,
    targets: usize,
    watchers: usize,
    rounds: usize,
    cluster: usize,
}

fn parse() -> Args {
    let mut args = Args {
        sessions: 2_000,
        concurrency: 128,
        targets: 20,
        watchers: 100,
        rounds: 20,
        cluster: 0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value: usize = it.next().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
            eprintln!("usage: load [--sessions N] [--concurrency N] [--targets N] [--watchers N] [--rounds N] [--cluster N]");
            std::process::exit(2)
        });
        match flag.as_str() {
            "--sessions" => args.sessions = value,
            "--concurrency" => args.concurrency = value,
            "--targets" => args.targets = value,
            "--watchers" => args.watchers = value,
            "--rounds" => args.rounds = value,
            "--cluster" => args.cluster = value,
            other => {
                eprintln!("unknown flag {other}");
                std::process::exit(2)
            }
        }
    }
    args
}

fn main() {
    let mut argv = std::env::args().skip(1);
    if argv.next().as_deref() == Some("serve") {
        let dir = PathBuf::from(argv.next().unwrap());
        return serve(dir, argv.next());
    }
    drive(parse());
}

/// The server process: limits opened up for a load test (a real deployment keeps the per-peer
/// request limit; here one peer never comes near it anyway).
#[tokio::main]
async fn serve(dir: PathBuf, store: Option<String>) {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let mut config = Config::new(vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()], dir);
    if let Some(url) = store {
        config.store = palaver_rendezvous::StoreLocation::Postgres(url);
    }
    config.limits = Limits {
        login_timeout: Duration::from_secs(600),
        presence_timeout: Duration::from_secs(3600),
        idle_connection_timeout: Duration::from_secs(3600),
        requests: RateLimit::new(10_000, 10_000),
        store_cache_bytes: 16 << 20,
        ..Limits::default()
    };
    let server = Server::bind(config).await.unwrap();
    for addr in server.listen_addrs() {
        println!("{addr}");
    }
    // Runs until the driver closes our stdin.
    let stdin_closed = tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        while std::io::stdin().read_line(&mut line).is_ok_and(|n| n > 0) {}
    });
    server
        .run(async move {
            let _ = stdin_closed.await;
        })
        .await
        .unwrap();
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// CPU time (user + system) a process has used, from `/proc/<pid>/stat` (clock ticks of 10 ms).
fn cpu(pid: &str) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may contain spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|v| v.parse::<u64>().ok()))
        .sum();
    Duration::from_millis(ticks * 10)
}

/// CPU used by the server and by this driver since `since`, per operation.
fn cpu_report(what: &str, ops: usize, pid: u32, since: (Duration, Duration)) {
    let server = cpu(&pid.to_string()).saturating_sub(since.0);
    let driver = cpu("self").saturating_sub(since.1);
    println!(
        "  cpu for {what}: server {:.0?} ({:.1} µs/op), driver {:.0?} ({:.1} µs/op)",
        server,
        server.as_secs_f64() * 1e6 / ops.max(1) as f64,
        driver,
        driver.as_secs_f64() * 1e6 / ops.max(1) as f64,
    );
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

#[tokio::main]
async fn drive(args: Args) {
    println!("{args:?}");
    if args.cluster == 0 {
        return scenario(&args, 1, None).await;
    }
    println!("== one instance, sled ==");
    scenario(&args, 1, None).await;
    let Some(postgres) =
        palaver_rendezvous::testing::TestPostgres::start("load --cluster").unwrap()
    else {
        return;
    };
    println!("== {} instances, one PostgreSQL ==", args.cluster);
    scenario(&args, args.cluster, Some(postgres.url())).await;
}

/// A server child process, killed when dropped.
struct Instance {
    child: tokio::process::Child,
    pid: u32,
    addr: libp2p::Multiaddr,
    _dir: tempfile::TempDir,
}

async fn start_instance(store: Option<&str>) -> Instance {
    let dir = tempfile::tempdir().unwrap();
    // LOAD_SERVER_WRAPPER runs the server under a profiler, e.g. `heaptrack -o /tmp/server`.
    let exe = std::env::current_exe().unwrap();
    let wrapper = std::env::var("LOAD_SERVER_WRAPPER").unwrap_or_default();
    let mut command: Vec<String> = wrapper.split_whitespace().map(Into::into).collect();
    command.push(exe.display().to_string());
    let mut child = tokio::process::Command::new(&command[0])
        .args(&command[1..])
        .arg("serve")
        .arg(dir.path())
        .args(store)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    // The first line that is a multiaddr (a wrapper may print its own lines first).
    let addr: libp2p::Multiaddr = loop {
        let line = lines.next_line().await.unwrap().unwrap();
        if let Ok(addr) = line.parse() {
            break addr;
        }
    };
    Instance {
        child,
        pid,
        addr,
        _dir: dir,
    }
}

async fn scenario(args: &Args, count: usize, store: Option<String>) {
    let mut instances = Vec::new();
    for _ in 0..count {
        instances.push(start_instance(store.as_deref()).await);
    }
    let addrs: Vec<libp2p::Multiaddr> = instances.iter().map(|i| i.addr.clone()).collect();
    // CPU is reported for the first instance.
    let pid = instances[0].pid;
    let rss = |instances: &[Instance]| instances.iter().map(|i| rss_kib(i.pid)).sum::<u64>();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before = rss(&instances);
    println!("{count} server(s) at {addrs:?}; RSS before sessions: {rss_before} KiB");

    // 1. Establish sessions.
    let config = ClientConfig {
        push_buffer: 64,
        timeout: Duration::from_secs(120),
        ..ClientConfig::default()
    };
    let permits = Arc::new(Semaphore::new(args.concurrency));
    let cpu_start = (cpu(&pid.to_string()), cpu("self"));
    let start = Instant::now();
    let mut joins = Vec::with_capacity(args.sessions);
    for i in 0..args.sessions {
        let permits = permits.clone();
        let addr = addrs[i % addrs.len()].clone();
        let config = config.clone();
        joins.push(tokio::spawn(async move {
            let _permit = permits.acquire_owned().await.unwrap();
            let identity = Identity::generate(&mut rand_core::OsRng);
            let client = Client::connect_with(addr, &identity, config).await.unwrap();
            let name = UserName::new(format!("user{i}")).unwrap();
            let registered = client
                .request(RendezvousRequest::Register {
                    name: name.clone(),
                    token: None,
                })
                .await
                .unwrap();
            assert!(matches!(registered, RendezvousResponse::Registered { .. }));
            let login = client
                .request(RendezvousRequest::Login {
                    name: name.clone(),
                    instance: 1,
                })
                .await
                .unwrap();
            assert!(matches!(login, RendezvousResponse::LoggedIn { .. }));
            (client, name, identity)
        }));
    }
    let mut sessions = Vec::with_capacity(args.sessions);
    for join in joins {
        sessions.push(join.await.unwrap());
    }
    let elapsed = start.elapsed();
    println!(
        "sessions: {} connected+registered+logged in in {:.2?} ({:.0}/s)",
        sessions.len(),
        elapsed,
        sessions.len() as f64 / elapsed.as_secs_f64()
    );
    cpu_report("sessions", sessions.len(), pid, cpu_start);

    // 2. Memory per session.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_after = rss(&instances);
    println!(
        "server RSS with {} sessions: {rss_after} KiB; {:.1} KiB per session",
        sessions.len(),
        (rss_after.saturating_sub(rss_before)) as f64 / sessions.len() as f64
    );

    // 3. Logins per second on established connections.
    let sessions = Arc::new(sessions);
    for pass in 0..2 {
        let cpu_start = (cpu(&pid.to_string()), cpu("self"));
        let start = Instant::now();
        let mut joins = Vec::new();
        let stride = args.concurrency.max(1);
        for lane in 0..stride {
            let sessions = sessions.clone();
            joins.push(tokio::spawn(async move {
                let mut i = lane;
                while i < sessions.len() {
                    let (client, name, _) = &sessions[i];
                    let r = client
                        .request(RendezvousRequest::Login {
                            name: name.clone(),
                            instance: 1,
                        })
                        .await
                        .unwrap();
                    assert!(matches!(r, RendezvousResponse::LoggedIn { .. }));
                    i += stride;
                }
            }));
        }
        for join in joins {
            join.await.unwrap();
        }
        let elapsed = start.elapsed();
        println!(
            "logins (pass {}): {} in {:.2?} ({:.0}/s, {} in flight)",
            pass + 1,
            sessions.len(),
            elapsed,
            sessions.len() as f64 / elapsed.as_secs_f64(),
            stride
        );
        cpu_report("logins", sessions.len(), pid, cpu_start);
    }

    // 5 (before 4, which takes the sessions apart). Deposit + fetch: session i leaves a letter
    // for session i+1 (on the next instance in a cluster), who fetches and acknowledges it.
    {
        let start = Instant::now();
        let stride = args.concurrency.max(1);
        let mut joins = Vec::new();
        for lane in 0..stride {
            let sessions = sessions.clone();
            joins.push(tokio::spawn(async move {
                let mut i = lane;
                while i + 1 < sessions.len() {
                    let (sender, _, from) = &sessions[i];
                    let (recipient, to_name, to) = &sessions[i + 1];
                    let envelope = letter(from, to, i);
                    let r = sender
                        .request(RendezvousRequest::Deposit {
                            to: to_name.clone(),
                            envelope: Box::new(envelope.clone()),
                        })
                        .await
                        .unwrap();
                    assert!(matches!(r, RendezvousResponse::Deposited { .. }), "{r:?}");
                    let r = recipient
                        .request(RendezvousRequest::FetchMail { max: 16 })
                        .await
                        .unwrap();
                    let RendezvousResponse::Mail { items, .. } = r else {
                        panic!("{r:?}")
                    };
                    assert!(items.iter().any(|item| item.envelope == envelope));
                    let ids = items.iter().map(|item| item.envelope.id()).collect();
                    let r = recipient
                        .request(RendezvousRequest::AckMail { ids })
                        .await
                        .unwrap();
                    assert_eq!(r, RendezvousResponse::Done);
                    i += stride;
                }
            }));
        }
        for join in joins {
            join.await.unwrap();
        }
        let pairs = sessions.len().saturating_sub(1);
        let elapsed = start.elapsed();
        println!(
            "deposit + fetch + ack: {pairs} in {elapsed:.2?} ({:.0}/s, {stride} in flight)",
            pairs as f64 / elapsed.as_secs_f64()
        );
    }

    // 4. Presence fan-out (in a cluster, each watcher on another instance than its target).
    let sessions = Arc::into_inner(sessions).unwrap();
    let instances_n = addrs.len();
    let targets = args.targets.min(sessions.len() / 2);
    let watchers_per = args
        .watchers
        .min((sessions.len() - targets) / targets.max(1));
    let mut sessions: Vec<_> = sessions.into_iter().map(Some).collect();
    let (sample_tx, mut samples) = mpsc::channel::<(String, PresenceState, Instant)>(1 << 16);
    let mut watcher_tasks = Vec::new();
    let mut free: Vec<usize> = (targets..sessions.len()).collect();
    let mut subscribed = 0usize;
    for t in 0..targets {
        let target = sessions[t].as_ref().unwrap().1.clone();
        for _ in 0..watchers_per {
            // Round robin placed session `i` at instance `i % n`: in a cluster, a watcher on
            // another instance than its target's.
            let Some(k) = free
                .iter()
                .position(|i| instances_n == 1 || i % instances_n != t % instances_n)
            else {
                break;
            };
            let index = free.remove(k);
            let (mut client, _, _) = sessions[index].take().unwrap();
            subscribed += 1;
            let r = client
                .request(RendezvousRequest::SubscribePresence {
                    names: vec![target.clone()],
                })
                .await
                .unwrap();
            assert!(matches!(r, RendezvousResponse::Users(_)));
            let tx = sample_tx.clone();
            watcher_tasks.push(tokio::spawn(async move {
                while let Some(push) = client.next_push().await {
                    if let ServerPush::Presence(PresenceRecord { name, state, .. }) = push
                        && tx
                            .send((name.to_string(), state, Instant::now()))
                            .await
                            .is_err()
                    {
                        break;
                    }
                }
            }));
        }
    }
    drop(sample_tx);
    let target_clients: Vec<(Client, UserName)> = sessions[..targets]
        .iter_mut()
        .map(|s| {
            let (client, name, _) = s.take().unwrap();
            (client, name)
        })
        .collect();
    let mut latencies = Vec::new();
    let mut missing = 0usize;
    let cpu_start = (cpu(&pid.to_string()), cpu("self"));
    for round in 0..args.rounds {
        let state = if round % 2 == 0 {
            PresenceState::Away
        } else {
            PresenceState::Online
        };
        let sent = Instant::now();
        let mut sends = Vec::new();
        for (client, _) in &target_clients {
            sends.push(client.request(RendezvousRequest::Heartbeat { state }));
        }
        futures::future::join_all(sends).await;
        let expected = subscribed;
        let mut got = 0;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while got < expected {
            match tokio::time::timeout_at(deadline, samples.recv()).await {
                Ok(Some((_, s, at))) if s == state => {
                    latencies.push(at - sent);
                    got += 1;
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        missing += expected - got;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    latencies.sort();
    println!(
        "presence fan-out: {} targets x {} watchers x {} rounds = {} pushes ({} missing): p50 {:.2?}, p99 {:.2?}, max {:.2?}",
        targets,
        watchers_per,
        args.rounds,
        latencies.len(),
        missing,
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or_default(),
    );
    cpu_report(
        "presence rounds (per push; includes the 100 ms pauses' idle work)",
        latencies.len(),
        pid,
        cpu_start,
    );
    println!("server RSS at the end: {} KiB", rss(&instances));

    for task in watcher_tasks {
        task.abort();
    }
    for mut instance in instances {
        drop(instance.child.stdin.take());
        let _ = tokio::time::timeout(Duration::from_secs(10), instance.child.wait()).await;
    }
}

/// A signed direct envelope from `from` to `to` (what a deposit must carry).
fn letter(from: &Identity, to: &Identity, n: usize) -> palaver_protocol::Envelope {
    use palaver_protocol::crypto::ratchet::{Header, RatchetMessage};
    let body = palaver_protocol::wire::Body::Direct(palaver_protocol::wire::DirectMessage {
        sender: from.public(),
        recipient: to.public(),
        message: RatchetMessage {
            init: None,
            header: Header {
                dh: x25519_dalek::PublicKey::from([7; 32]),
                previous_chain_len: 0,
                index: u32::try_from(n).unwrap_or(u32::MAX),
            },
            ciphertext: vec![1; 200],
        },
    });
    palaver_protocol::Envelope::sign(body, from.signing_key()).unwrap()
}
