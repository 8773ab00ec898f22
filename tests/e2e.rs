//! End to end, with real processes on 127.0.0.1: a `palaver-rendezvous` and `palaver` daemons,
//! driven through the command line exactly as a person or a script would.
#![allow(clippy::unwrap_used)] // test helpers: a failure here is a failed test

use palaver_tests::{Rendezvous, User, started_users, texts, wait_for};

#[test]
fn two_users_exchange_messages_both_ways_and_their_histories_agree() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = Rendezvous::start(&dir.path().join("rv"))?;
    let mut alice = User::init(dir.path(), "alice")?;
    let mut bob = User::init(dir.path(), "bob")?;
    alice.start(&server.addr)?;
    bob.start(&server.addr)?;

    let mut ids = Vec::new();
    for (from, to, text) in [
        (&alice, "bob", "hi bob"),
        (&bob, "alice", "hi alice"),
        (&alice, "bob", "how are you?"),
        (&bob, "alice", "fine!"),
    ] {
        let id = from.send(to, text)?;
        assert_eq!(id.len(), 64, "send prints the message id, got {id:?}");
        from.wait_status(to, &id, "delivered")?;
        ids.push(id);
    }
    let at_alice = alice.history_with("bob")?;
    let at_bob = bob.history_with("alice")?;
    assert_eq!(
        texts(&at_alice),
        ["hi bob", "hi alice", "how are you?", "fine!"]
    );
    assert_eq!(
        texts(&at_alice),
        texts(&at_bob),
        "both histories in the same order"
    );
    let id_list = |h: &[serde_json::Value]| {
        h.iter()
            .map(|e| e["id"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(id_list(&at_alice), ids);
    assert_eq!(id_list(&at_bob), ids);
    // Each side sees its own messages delivered and the other's received.
    for entry in &at_bob {
        let expected = if entry["from"] == "bob" {
            "delivered"
        } else {
            "received"
        };
        assert_eq!(entry["status"], expected, "{entry}");
        assert_eq!(entry["conversation"], "alice");
    }
    Ok(())
}

#[test]
fn a_room_of_three_sees_everyone_and_a_kicked_member_sees_nothing_afterwards() -> anyhow::Result<()>
{
    let dir = tempfile::tempdir()?;
    let server = Rendezvous::start(&dir.path().join("rv"))?;
    let users = started_users(dir.path(), &server.addr, &["ann", "ben", "cat"])?;
    let [ann, ben, cat] = &users[..] else {
        unreachable!()
    };
    ann.ok(&["room", "create", "team"])?;
    ann.ok(&["room", "invite", "team", "ben"])?;
    ann.ok(&["room", "invite", "team", "cat"])?;
    for guest in [ben, cat] {
        guest.accept_invitation("team")?;
    }
    let members = ann.json(&["room", "members", "team"])?;
    assert_eq!(members.len(), 3);
    assert!(
        members
            .iter()
            .any(|m| m["name"] == "ann" && m["owner"] == true)
    );

    for (user, text) in [(ann, "from ann"), (ben, "from ben"), (cat, "from cat")] {
        // Each sends once its room keys have arrived; a message sent earlier still arrives
        // (held, then gap-filled), but waiting keeps the test about the steady state.
        user.ok(&["room", "send", "team", text])?;
    }
    for user in [ann, ben, cat] {
        user.wait_room_texts("team", &["from ann", "from ben", "from cat"])?;
    }

    ann.ok(&["room", "kick", "team", "cat"])?;
    wait_for("cat to learn she was removed", || {
        let rooms = cat.json(&["room", "list"]).ok()?;
        rooms
            .iter()
            .any(|r| r["room"] == "team" && r["state"] == "removed")
            .then_some(())
    })?;
    ann.ok(&["room", "send", "team", "after the kick"])?;
    ben.wait_room_texts("team", &["after the kick"])?;
    // Give any straggling copy time to reach cat too; she must still not have it.
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(
        !texts(&cat.room_history("team")?)
            .iter()
            .any(|t| t == "after the kick")
    );
    let err = cat.run(&["room", "send", "team", "let me back in"]);
    assert!(!err.status.success());
    assert!(String::from_utf8_lossy(&err.stderr).contains("removed"));
    Ok(())
}

/// A member back from away gets what it missed from whoever is there, including what that
/// member only received: those it keeps in its room log without their text and makes whole
/// again from its history when asked.
#[test]
fn a_member_back_from_away_gets_what_it_missed_from_a_member_who_only_received_it()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = Rendezvous::start(&dir.path().join("rv"))?;
    let mut users = started_users(dir.path(), &server.addr, &["ann", "ben", "cat"])?;
    let [ann, ben, cat] = &mut users[..] else {
        unreachable!()
    };
    ann.ok(&["room", "create", "team"])?;
    for guest in ["ben", "cat"] {
        ann.ok(&["room", "invite", "team", guest])?;
    }
    for guest in [&*ben, &*cat] {
        guest.accept_invitation("team")?;
    }
    ann.ok(&["room", "send", "team", "before"])?;
    cat.wait_room_texts("team", &["before"])?;
    cat.stop()?;
    let long = "a longer line, ".repeat(60);
    let missed = ["while cat was away", long.as_str()];
    for text in missed {
        ann.ok(&["room", "send", "team", text])?;
    }
    ben.wait_room_texts("team", &missed)?;
    // Only ben, who received them, is there to answer.
    ann.stop()?;
    cat.start(&server.addr)?;
    cat.wait_room_texts("team", &missed)?;
    let history = texts(&cat.room_history("team")?);
    assert_eq!(
        history
            .iter()
            .filter(|t| missed.contains(&t.as_str()))
            .count(),
        2
    );
    Ok(())
}

#[test]
fn a_room_of_a_dozen_joined_in_a_burst_hears_every_member() -> anyhow::Result<()> {
    // Every member joins at once and hands its sender key to everyone: a burst of sessions to
    // open and keys to pass, which once lost some keys for good.
    let dir = tempfile::tempdir()?;
    let server = Rendezvous::start(&dir.path().join("rv"))?;
    let names: Vec<String> = (0..12).map(|i| format!("m{i:02}")).collect();
    let users = started_users(dir.path(), &server.addr, &names)?;
    let (owner, guests) = users.split_first().expect("twelve users");
    owner.ok(&["room", "create", "dozen"])?;
    for guest in guests {
        owner.ok(&["room", "invite", "dozen", &guest.name])?;
    }
    for guest in guests {
        guest.accept_invitation("dozen")?;
    }
    for user in &users {
        user.ok(&[
            "room",
            "send",
            "dozen",
            &format!("hello from {}", user.name),
        ])?;
    }
    let expected: Vec<String> = names.iter().map(|n| format!("hello from {n}")).collect();
    for user in &users {
        user.wait_room_texts("dozen", &expected)?;
    }
    Ok(())
}

#[test]
fn sending_to_an_unknown_user_fails_clearly() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = Rendezvous::start(&dir.path().join("rv"))?;
    let mut alice = User::init(dir.path(), "alice")?;
    alice.start(&server.addr)?;
    let out = alice.run(&["send", "nobody", "hello?"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("error: ") && err.contains("unknown user nobody"),
        "{err}"
    );
    Ok(())
}

#[test]
fn the_rendezvous_data_directory_holds_no_plaintext() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = Rendezvous::start(&dir.path().join("rv"))?;
    let mut alice = User::init(dir.path(), "alice")?;
    let mut bob = User::init(dir.path(), "bob")?;
    alice.start(&server.addr)?;
    bob.start(&server.addr)?;
    // One message direct, one through the mailbox while bob is offline.
    let id = alice.send("bob", "SECRET-DIRECT-7f3a")?;
    alice.wait_status("bob", &id, "delivered")?;
    bob.stop()?;
    let id = alice.send("bob", "SECRET-MAILBOX-91c2")?;
    alice.wait_status("bob", &id, "queued")?;
    let server_data = server.data.clone();
    server.kill(); // no flush: what is on disk is what a kill -9 leaves
    for entry in walk(&server_data) {
        let bytes = std::fs::read(&entry)?;
        for secret in ["SECRET-DIRECT-7f3a", "SECRET-MAILBOX-91c2"] {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{secret} in {entry:?}"
            );
        }
    }
    Ok(())
}

#[test]
fn a_daemon_that_is_not_running_is_a_clear_error_and_history_still_reads() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = Rendezvous::start(&dir.path().join("rv"))?;
    let mut alice = User::init(dir.path(), "alice")?;
    let mut bob = User::init(dir.path(), "bob")?;
    let out = alice.run(&["status"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not running") && err.contains("palaver daemon"),
        "{err}"
    );

    alice.start(&server.addr)?;
    bob.start(&server.addr)?;
    let id = alice.send("bob", "kept on disk")?;
    alice.wait_status("bob", &id, "delivered")?;
    alice.stop()?;
    // No daemon: history reads the store directly.
    let history = alice.history_with("bob")?;
    assert_eq!(texts(&history), ["kept on disk"]);
    assert_eq!(history[0]["status"], "delivered");
    Ok(())
}

#[test]
fn the_echo_bot_answers_every_direct_message() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = Rendezvous::start(&dir.path().join("rv"))?;
    let mut bot = User::init(dir.path(), "bot")?;
    let mut alice = User::init(dir.path(), "alice")?;
    bot.start(&server.addr)?;
    alice.start(&server.addr)?;
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/echo-bot.sh");
    let palaver = bot.command().get_program().to_owned();
    let mut echo = std::process::Command::new("bash")
        .arg(&script)
        .env("PALAVER", &palaver)
        .env("PALAVER_HOME", &bot.home)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    // The bot subscribes asynchronously: send until the first echo shows it is listening.
    let first = wait_for("the bot to answer", || {
        alice.send("bot", "ping").ok()?;
        std::thread::sleep(std::time::Duration::from_millis(300));
        texts(&alice.history_with("bot").ok()?)
            .iter()
            .any(|t| t == "echo: ping")
            .then_some(())
    });
    let second = first.and_then(|()| {
        alice.send("bot", "second one")?;
        wait_for("the second echo", || {
            texts(&alice.history_with("bot").ok()?)
                .iter()
                .any(|t| t == "echo: second one")
                .then_some(())
        })
    });
    let _ = echo.kill();
    let _ = echo.wait();
    second
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

#[test]
fn two_users_writing_first_at_the_same_moment_still_understand_each_other() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = Rendezvous::start(&dir.path().join("rv"))?;
    let mut alice = User::init(dir.path(), "alice")?;
    let mut bob = User::init(dir.path(), "bob")?;
    alice.start(&server.addr)?;
    bob.start(&server.addr)?;
    // Both open a session before seeing the other's: two sessions, one per direction.
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| alice.send("bob", "first from alice"));
        let b = s.spawn(|| bob.send("alice", "first from bob"));
        (a.join().unwrap(), b.join().unwrap())
    });
    alice.wait_status("bob", &a?, "delivered")?;
    bob.wait_status("alice", &b?, "delivered")?;
    // And they keep understanding each other afterwards, both ways.
    for round in 0..3 {
        let id = alice.send("bob", &format!("alice {round}"))?;
        alice.wait_status("bob", &id, "delivered")?;
        let id = bob.send("alice", &format!("bob {round}"))?;
        bob.wait_status("alice", &id, "delivered")?;
    }
    assert_eq!(texts(&alice.history_with("bob")?).len(), 8);
    assert_eq!(
        texts(&bob.history_with("alice")?),
        texts(&alice.history_with("bob")?)
    );
    Ok(())
}
