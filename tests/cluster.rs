//! A rendezvous cluster end to end: two `palaver-rendezvous --store postgres://…` instances over
//! one throw-away PostgreSQL, and daemons given both (`--rendezvous A --rendezvous B`). Users on
//! different instances write to each other; killing the instance a user is on moves that user
//! to the other, with nothing lost. (Without PostgreSQL installed it says so and passes, unless
//! PALAVER_REQUIRE_POSTGRES=1.)
#![allow(clippy::unwrap_used)] // test helpers: a failure here is a failed test

use palaver_rendezvous::testing::TestPostgres;
use palaver_tests::{Rendezvous, User, texts, wait_for};
use serde_json::Value;

/// Two instances over one throw-away PostgreSQL (`None`: PostgreSQL is not installed).
struct Cluster {
    _postgres: TestPostgres,
    dir: tempfile::TempDir,
    a: Rendezvous,
    b: Rendezvous,
}

impl Cluster {
    fn start(label: &str) -> anyhow::Result<Option<Self>> {
        let Some(postgres) = TestPostgres::start(label).map_err(anyhow::Error::msg)? else {
            return Ok(None);
        };
        let url = postgres.url();
        let dir = tempfile::tempdir()?;
        let store = ["--store", url.as_str()];
        let a = Rendezvous::start_with(&dir.path().join("a"), "/ip4/127.0.0.1/tcp/0", &store)?;
        let b = Rendezvous::start_with(&dir.path().join("b"), "/ip4/127.0.0.1/tcp/0", &store)?;
        Ok(Some(Self {
            _postgres: postgres,
            dir,
            a,
            b,
        }))
    }
}

fn instance_of(user: &User) -> anyhow::Result<(String, bool)> {
    let status = user.json(&["status"])?;
    let rendezvous = &status[0]["rendezvous"];
    Ok((
        rendezvous["address"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        rendezvous["logged_in"] == Value::Bool(true),
    ))
}

fn wait_text(user: &User, with: &str, text: &str) -> anyhow::Result<()> {
    wait_for(&format!("{} to hold {text:?}", user.name), || {
        let history = user.history_with(with).ok()?;
        texts(&history).iter().any(|t| t == text).then_some(())
    })
}

#[test]
fn users_on_two_instances_talk_and_a_killed_instance_moves_its_user_to_the_other()
-> anyhow::Result<()> {
    let Some(Cluster {
        _postgres,
        dir,
        a,
        b,
    }) = Cluster::start("cluster e2e")?
    else {
        return Ok(());
    };
    let mut alice = User::init(dir.path(), "alice")?;
    let mut bob = User::init(dir.path(), "bob")?;
    alice.start_at_instances(&[&a.addr, &b.addr], &[])?;
    bob.start_at_instances(&[&b.addr, &a.addr], &[])?;
    assert_eq!(instance_of(&alice)?, (a.addr.clone(), true));
    assert_eq!(instance_of(&bob)?, (b.addr.clone(), true));
    // The instances remembered, in order, for the next start.
    let config = std::fs::read_to_string(alice.home.join("config.toml"))?;
    assert!(
        config.find(&a.addr) < config.find(&b.addr) && config.contains(&b.addr),
        "{config}"
    );

    // Alice at A and bob at B write to each other.
    alice.send("bob", "hello from A")?;
    wait_text(&bob, "alice", "hello from A")?;
    bob.send("alice", "hello from B")?;
    wait_text(&alice, "bob", "hello from B")?;

    // A dies: alice moves to B within seconds, and the conversation goes on.
    a.kill();
    let moved = wait_for("alice to log in at B", || {
        matches!(instance_of(&alice), Ok((addr, true)) if addr == b.addr).then_some(())
    });
    moved?;
    bob.send("alice", "still there?")?;
    wait_text(&alice, "bob", "still there?")?;
    alice.send("bob", "yes, at B now")?;
    wait_text(&bob, "alice", "yes, at B now")?;
    // Nothing twice.
    let at_alice = texts(&alice.history_with("bob")?);
    for text in [
        "hello from A",
        "hello from B",
        "still there?",
        "yes, at B now",
    ] {
        assert_eq!(
            at_alice.iter().filter(|t| *t == text).count(),
            1,
            "{text:?} in {at_alice:?}"
        );
    }
    Ok(())
}

/// Our listen addresses through the relay at `instance` (its `/p2p-circuit` slot).
fn circuits_at(user: &User, instance: &str) -> anyhow::Result<usize> {
    let status = user.json(&["status"])?;
    let listen = status[0]["listen"].as_array().cloned().unwrap_or_default();
    Ok(listen
        .iter()
        .filter_map(Value::as_str)
        .filter(|addr| addr.starts_with(instance) && addr.contains("/p2p-circuit"))
        .count())
}

/// A peer reachable only through a relay holds its slot at the instance it is logged in at; when
/// that instance dies it reserves again at the one it moves to, and is reached there.
#[test]
fn a_relayed_peer_reserves_its_slot_again_at_the_instance_it_moves_to() -> anyhow::Result<()> {
    let Some(Cluster {
        _postgres,
        dir,
        a,
        b,
    }) = Cluster::start("cluster relay e2e")?
    else {
        return Ok(());
    };
    let mut alice = User::init(dir.path(), "alice")?;
    let mut bob = User::init(dir.path(), "bob")?;
    let relay_only = ["--relay-only-transport"];
    alice.start_at_instances_with(&[&a.addr, &b.addr], &[], &relay_only)?;
    bob.start_at_instances(&[&b.addr, &a.addr], &[])?;
    wait_for("alice's relay slot at A", || {
        (circuits_at(&alice, &a.addr).ok()? > 0).then_some(())
    })?;

    let a_addr = a.addr.clone();
    a.kill();
    wait_for("alice's relay slot at B, and none at A", || {
        let moved = matches!(instance_of(&alice), Ok((addr, true)) if addr == b.addr);
        let at_b = circuits_at(&alice, &b.addr).ok()?;
        let at_a = circuits_at(&alice, &a_addr).ok()?;
        (moved && at_b > 0 && at_a == 0).then_some(())
    })?;
    // Bob, at B, reaches her (through B's relay, or B's mailbox until he finds her there).
    bob.send("alice", "found you at B")?;
    wait_text(&alice, "bob", "found you at B")?;
    alice.send("bob", "through B")?;
    wait_text(&bob, "alice", "through B")?;
    Ok(())
}
