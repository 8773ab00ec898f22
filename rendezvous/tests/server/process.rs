//! The `palaver-rendezvous` binary: stdout, kill -9 durability, graceful SIGTERM.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use libp2p::Multiaddr;
use libp2p::multiaddr::Protocol;
use palaver_protocol::wire::{RendezvousRequest, RendezvousResponse};

use crate::common::*;

/// Starts the binary on loopback; returns it and the addresses it printed.
fn spawn(data: &Path) -> (Child, Vec<Multiaddr>) {
    spawn_with(data, &[])
}

/// Starts the binary on loopback with `extra` flags.
pub(crate) fn spawn_with(data: &Path, extra: &[&str]) -> (Child, Vec<Multiaddr>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_palaver-rendezvous"))
        .args([
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--listen",
            "/ip4/127.0.0.1/udp/0/quic-v1",
            "--data",
        ])
        .arg(data)
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let addrs: Vec<Multiaddr> = (0..2)
        .map(|_| lines.next().unwrap().unwrap().parse().unwrap())
        .collect();
    (child, addrs)
}

pub(crate) fn tcp(addrs: &[Multiaddr]) -> Multiaddr {
    addrs
        .iter()
        .find(|a| a.iter().any(|p| matches!(p, Protocol::Tcp(_))))
        .cloned()
        .unwrap()
}

#[tokio::test]
async fn the_binary_prints_its_addresses_and_a_kill_9_loses_no_registration_or_mail() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, addrs) = spawn(dir.path());
    let server_id = match addrs[0].iter().last() {
        Some(Protocol::P2p(id)) => id,
        other => panic!("address without /p2p: {other:?}"),
    };
    assert!(
        addrs
            .iter()
            .all(|a| a.iter().last() == Some(Protocol::P2p(server_id)))
    );

    let bob_id = identity();
    {
        let bob = connect(&tcp(&addrs), &bob_id).await;
        assert!(matches!(
            ask(
                &bob,
                RendezvousRequest::Register {
                    name: name("bob"),
                    token: None
                }
            )
            .await,
            RendezvousResponse::Registered { .. }
        ));
    }
    let (alice, alice_id) = session(&tcp(&addrs), "alice").await;
    let letter = envelope(&alice_id, &bob_id.public(), 1, 500);
    assert!(matches!(
        ask(
            &alice,
            RendezvousRequest::Deposit {
                to: name("bob"),
                envelope: Box::new(letter.clone()),
            }
        )
        .await,
        RendezvousResponse::Deposited { .. }
    ));
    // SIGKILL right after the acknowledgement: nothing gets flushed on the way out.
    child.kill().unwrap();
    child.wait().unwrap();
    drop(alice);

    let (mut child, addrs) = spawn(dir.path());
    assert!(addrs[0].to_string().ends_with(&server_id.to_string()));
    let bob = connect(&tcp(&addrs), &bob_id).await;
    match login(&bob, "bob").await {
        RendezvousResponse::LoggedIn { mail_waiting, .. } => assert_eq!(mail_waiting, 1),
        other => panic!("{other:?}"),
    }
    match ask(&bob, RendezvousRequest::FetchMail { max: 10 }).await {
        RendezvousResponse::Mail { items, .. } => assert_eq!(items[0].envelope, letter),
        other => panic!("{other:?}"),
    }
    let alice = connect(&tcp(&addrs), &alice_id).await;
    login(&alice, "alice").await;
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test]
async fn sigterm_shuts_the_binary_down_gracefully() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, addrs) = spawn(dir.path());
    let _ = session(&tcp(&addrs), "alice").await;
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "did not exit on SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status:?}");
    // The store was closed cleanly: a restart sees the registration.
    let (mut child, addrs) = spawn(dir.path());
    let alice = connect(&tcp(&addrs), &identity()).await;
    assert_eq!(
        refusal(
            ask(
                &alice,
                RendezvousRequest::Register {
                    name: name("alice"),
                    token: None
                }
            )
            .await
        )
        .reason,
        palaver_protocol::wire::RefusalReason::NameTaken
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

/// The TCP address `addrs` holds, without its `/p2p/…` suffix (what an admin types).
fn bare_tcp(addrs: &[Multiaddr]) -> Multiaddr {
    tcp(addrs)
        .into_iter()
        .filter(|p| !matches!(p, Protocol::P2p(_)))
        .collect()
}

/// A child process, killed when dropped (so a failed assertion leaves no server behind).
pub(crate) struct Running(pub(crate) Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_second_server_on_a_port_in_use_fails_to_start_and_says_which_address() {
    let first_dir = tempfile::tempdir().unwrap();
    let (first, addrs) = spawn(first_dir.path());
    let mut first = Running(first);
    let taken = bare_tcp(&addrs);
    let second_dir = tempfile::tempdir().unwrap();
    let second = Command::new(env!("CARGO_BIN_EXE_palaver-rendezvous"))
        .args(["--listen", &taken.to_string(), "--data"])
        .arg(second_dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut second = Running(second);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = second.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the second server is running on {taken} beside the first"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut second.0.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success());
    assert!(
        stderr.contains(&format!("cannot listen on {taken}")) && stderr.contains("already in use"),
        "{stderr}"
    );
    assert!(
        first.0.try_wait().unwrap().is_none(),
        "the first server stopped"
    );
}

/// Starts the binary with `args` (and `--data` a fresh directory) and returns the stderr lines up
/// to and including the one announcing the server, which comes once it listens.
fn stderr_until_listening(args: &[&str], env: &[(&str, &str)]) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_palaver-rendezvous"))
        .args(["--listen", "/ip4/127.0.0.1/tcp/0", "--data"])
        .arg(dir.path())
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("NO_COLOR")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = Running(child);
    let mut lines = Vec::new();
    for line in BufReader::new(child.0.stderr.take().unwrap()).lines() {
        let line = line.unwrap();
        let done = line.contains("rendezvous server listening");
        lines.push(line);
        if done {
            return lines;
        }
    }
    panic!("the server exited without saying it listens: {lines:?}");
}

#[test]
fn logs_into_a_pipe_carry_no_colour_codes() {
    let lines = stderr_until_listening(&[], &[]);
    assert!(
        lines.iter().all(|line| !line.contains('\u{1b}')),
        "{lines:?}"
    );
    assert!(lines.last().unwrap().contains("INFO"), "{lines:?}");
}

#[test]
fn log_format_json_writes_one_json_object_per_line() {
    for (args, env) in [
        (&["--log-format", "json"][..], &[][..]),
        (&[], &[("PALAVER_RENDEZVOUS_LOG_FORMAT", "json")]),
    ] {
        let lines = stderr_until_listening(args, env);
        for line in &lines {
            let event: serde_json::Value =
                serde_json::from_str(line).unwrap_or_else(|err| panic!("not JSON ({err}): {line}"));
            assert!(event["level"].is_string(), "{line}");
            assert!(
                event["fields"].is_object() && event["target"].is_string(),
                "{line}"
            );
        }
        let last: serde_json::Value = serde_json::from_str(lines.last().unwrap()).unwrap();
        assert_eq!(last["level"], "INFO");
        assert!(
            last["fields"]["message"].is_string() && last["fields"]["peer"].is_string(),
            "{last}"
        );
    }
}

#[test]
fn a_config_file_sets_flags_and_a_flag_wins_over_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("rendezvous.toml");
    std::fs::write(
        &config,
        format!(
            "data = {:?}\nlisten = [\"/ip4/127.0.0.1/udp/0/quic-v1\"]\nlog-format = \"json\"\n",
            dir.path().join("data").display().to_string()
        ),
    )
    .unwrap();
    // With --listen and --data given as flags, the file still sets the log format.
    let lines = stderr_until_listening(&["--config", config.to_str().unwrap()], &[]);
    serde_json::from_str::<serde_json::Value>(lines.last().unwrap()).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_palaver-rendezvous"))
        .args(["--config", config.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut child = Running(child);
    // Alone, it sets the listen address and the data directory too.
    let mut first = String::new();
    BufReader::new(child.0.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.starts_with("/ip4/127.0.0.1/udp/"), "{first}");
    assert!(
        dir.path()
            .join("data")
            .join(palaver_rendezvous::KEY_FILE)
            .exists()
    );

    std::fs::write(
        &config,
        "data = \"/tmp/x\"\nlisten-on = \"/ip4/127.0.0.1/tcp/0\"\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_palaver-rendezvous"))
        .args(["--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("unknown key `listen-on`"), "{stderr}");
    assert!(stderr.contains(config.to_str().unwrap()), "{stderr}");
}
