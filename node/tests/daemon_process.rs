//! The `palaver daemon` process as an admin sees it: what it logs at the default level, in which
//! format, and refusing a listen port another process holds.
#![allow(clippy::unwrap_used)] // test helpers: a failure here is a failed test

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use libp2p::Multiaddr;
use libp2p::multiaddr::Protocol;
use palaver_rendezvous::{Config, Server};

const PATIENCE: Duration = Duration::from_secs(30);

/// A rendezvous nobody listens on (port 1 on loopback refuses at once).
const NOWHERE: &str = "/ip4/127.0.0.1/tcp/1";

fn init(home: &Path, name: &str) {
    let out = Command::new(env!("CARGO_BIN_EXE_palaver"))
        .arg("--home")
        .arg(home)
        .args(["init", "--name", name])
        .env_remove("PALAVER_PASSPHRASE")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

/// A daemon whose stderr lines arrive on a channel; killed on drop.
struct Daemon {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Daemon {
    fn start(home: &Path, args: &[&str]) -> Daemon {
        let mut child = Command::new(env!("CARGO_BIN_EXE_palaver"))
            .arg("--home")
            .arg(home)
            .arg("daemon")
            .args(args)
            .env_remove("RUST_LOG")
            .env_remove("NO_COLOR")
            .env_remove("PALAVER_LOG_FORMAT")
            .env_remove("PALAVER_PASSPHRASE")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Daemon {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for a stderr line containing `wanted`; returns it.
    fn wait_line(&mut self, wanted: &str) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(wanted) {
                        return line;
                    }
                }
                Err(_) => panic!("no line with {wanted:?} in:\n{}", self.seen.join("\n")),
            }
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_second_daemon_on_a_listen_port_in_use_fails_naming_the_address() {
    let dir = tempfile::tempdir().unwrap();
    let (alice, bob) = (dir.path().join("alice"), dir.path().join("bob"));
    init(&alice, "alice");
    init(&bob, "bob");
    let mut first = Daemon::start(
        &alice,
        &["--rendezvous", NOWHERE, "--listen", "/ip4/127.0.0.1/tcp/0"],
    );
    let line = first.wait_line("listening on /ip4/127.0.0.1/tcp/");
    let taken = line[line.find("/ip4/").unwrap()..].trim().to_owned();
    let mut second = Daemon::start(&bob, &["--rendezvous", NOWHERE, "--listen", &taken]);
    let deadline = Instant::now() + PATIENCE;
    let status = loop {
        if let Some(status) = second.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the second daemon listens on {taken} beside the first"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(!status.success());
    let error = second.wait_line("error: ");
    assert!(
        error.contains(&format!("cannot listen on {taken}")) && error.contains("already in use"),
        "{error}"
    );
    assert!(
        first.child.try_wait().unwrap().is_none(),
        "the first daemon stopped"
    );
}

#[test]
fn log_format_json_writes_json_lines_and_an_unreachable_rendezvous_is_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    init(dir.path(), "alice");
    let mut daemon = Daemon::start(
        dir.path(),
        &[
            "--rendezvous",
            NOWHERE,
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--log-format",
            "json",
        ],
    );
    let line = daemon.wait_line("cannot reach the rendezvous");
    let event: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(event["level"], "WARN", "{line}");
    assert!(
        event["fields"]["message"]
            .as_str()
            .unwrap()
            .contains(NOWHERE),
        "{line}"
    );
    for line in &daemon.seen {
        let event: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|err| panic!("not a JSON line ({err}): {line}"));
        assert!(event["level"].is_string(), "{line}");
    }
}

/// Starts a rendezvous in this process on `listen`; it runs until the sender is dropped or used.
async fn rendezvous(
    data: &Path,
    listen: Multiaddr,
) -> (
    Multiaddr,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let deadline = Instant::now() + PATIENCE;
    let server = loop {
        // A server stopped a moment ago may still hold sled's lock for an instant.
        match Server::bind(Config::new(vec![listen.clone()], data)).await {
            Ok(server) => break server,
            Err(err) if Instant::now() < deadline && err.to_string().contains("lock") => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(err) => panic!("{err}"),
        }
    };
    let addr = server.listen_addrs()[0].clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        server
            .run(async move {
                let _ = stopped.await;
            })
            .await
            .unwrap();
    });
    (addr, stop, task)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_daemon_logs_where_it_listens_and_when_the_rendezvous_goes_and_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let (home, data) = (dir.path().join("alice"), dir.path().join("rendezvous"));
    init(&home, "alice");
    let (addr, stop, task) = rendezvous(&data, "/ip4/127.0.0.1/tcp/0".parse().unwrap()).await;
    let bare: Multiaddr = addr
        .iter()
        .filter(|p| !matches!(p, Protocol::P2p(_)))
        .collect();
    let mut daemon = Daemon::start(
        &home,
        &[
            "--rendezvous",
            &addr.to_string(),
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
        ],
    );
    let mut daemon = tokio::task::spawn_blocking(move || {
        daemon.wait_line("listening on /ip4/127.0.0.1/tcp/");
        daemon.wait_line(&format!("connected to the rendezvous at {addr}"));
        daemon.wait_line("logged in at the rendezvous as alice");
        daemon
    })
    .await
    .unwrap();

    stop.send(()).unwrap();
    task.await.unwrap();
    let mut daemon = tokio::task::spawn_blocking(move || {
        daemon.wait_line("lost the connection to the rendezvous");
        daemon
    })
    .await
    .unwrap();

    let (_addr, _stop, _task) = rendezvous(&data, bare).await;
    let daemon = tokio::task::spawn_blocking(move || {
        let back = daemon.wait_line("connected to the rendezvous at");
        assert!(back.contains("again"), "{back}");
        daemon.wait_line("logged in at the rendezvous as alice");
        daemon
    })
    .await
    .unwrap();
    let lines = daemon.seen.join("\n");
    assert!(
        !lines.contains('\u{1b}'),
        "colour codes into a pipe:\n{lines}"
    );
    assert!(
        !lines.contains("cannot reach the rendezvous"),
        "an outage already reported is not reported again for each retry:\n{lines}"
    );
}
