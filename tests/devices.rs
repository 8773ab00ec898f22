//! One person, several devices. Until linked devices exist, one key runs in one daemon at a
//! time: a home copied to a second machine is refused at login, with what to do instead, and
//! the daemon already running keeps working (before, both ran, and later first messages from
//! new contacts were lost for good: the copies consumed each other's one-time prekeys).
#![allow(clippy::unwrap_used)] // test helpers: a failure here is a failed test

use palaver_tests::{Rendezvous, User, started_users, texts};

#[test]
fn a_copied_home_is_refused_at_login_and_the_running_daemon_keeps_working() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = Rendezvous::start(&dir.path().join("rv"))?;
    let users = started_users(dir.path(), &server.addr, &["alice", "bob"])?;
    let (alice, bob) = (&users[0], &users[1]);

    // What a new user tries: alice's key and profile copied to a laptop, and its daemon started.
    let laptop = User::at_home("alice", dir.path().join("laptop"));
    std::fs::create_dir_all(&laptop.home)?;
    for file in ["identity.key", "profile.json"] {
        std::fs::copy(alice.home.join(file), laptop.home.join(file))?;
    }
    let copy = laptop.run(&[
        "daemon",
        "--rendezvous",
        &server.addr,
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
    ]);
    let said = String::from_utf8_lossy(&copy.stderr);
    assert!(!copy.status.success(), "the copy kept running: {said}");
    assert!(
        said.contains("another running daemon with this key")
            && said.contains("palaver device link"),
        "{said}"
    );

    // alice's own daemon is still logged in, and gets what bob sends her.
    alice.wait_logged_in()?;
    let id = bob.send("alice", "still there?")?;
    bob.wait_status("alice", &id, "delivered")?;
    assert_eq!(texts(&alice.history_with("bob")?), ["still there?"]);
    Ok(())
}
