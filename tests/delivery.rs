//! Delivery guarantees under faults, with real processes: nothing lost, nothing twice, in order —
//! across kill -9 of the rendezvous, the sender and the recipient, offline peers and partitions.
#![allow(clippy::unwrap_used)] // test helpers: a failure here is a failed test

use palaver_tests::{Rendezvous, User, started_users, texts, wait_for};

/// How many times `text` is in `user`'s history with `other`.
fn copies(user: &User, other: &str, text: &str) -> usize {
    user.history_with(other)
        .map(|h| texts(&h).iter().filter(|t| *t == text).count())
        .unwrap_or(0)
}

#[test]
fn mail_for_an_offline_peer_survives_a_rendezvous_kill_and_arrives_once() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("rv");
    let server = Rendezvous::start(&data)?;
    let (addr, listen) = (server.addr.clone(), server.listen_addr());
    let mut alice = User::init(dir.path(), "alice")?;
    let mut bob = User::init(dir.path(), "bob")?;
    alice.start(&addr)?;
    bob.start(&addr)?;
    alice.send("bob", "hello")?; // a session and a contact first
    bob.stop()?;

    let id = alice.send("bob", "held while you were away")?;
    alice.wait_status("bob", &id, "queued")?;
    server.kill();
    let _server = Rendezvous::start_at(&data, &listen)?;
    alice.wait_logged_in()?;
    bob.start(&addr)?;
    alice.wait_status("bob", &id, "delivered")?;
    wait_for("bob to have it", || {
        (copies(&bob, "alice", "held while you were away") == 1).then_some(())
    })?;
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(
        copies(&bob, "alice", "held while you were away"),
        1,
        "delivered exactly once"
    );
    Ok(())
}

#[test]
fn a_sender_killed_right_after_send_delivers_after_restart_once() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = Rendezvous::start(&dir.path().join("rv"))?;
    let mut alice = User::init(dir.path(), "alice")?;
    let mut bob = User::init(dir.path(), "bob")?;
    alice.start(&server.addr)?;
    bob.start(&server.addr)?;
    alice.send("bob", "hello")?;
    bob.stop()?;

    let id = alice.send("bob", "sent just before the crash")?;
    alice.kill(); // kill -9 right after `send` returned
    alice.start(&server.addr)?;
    alice.wait_status("bob", &id, "queued")?;
    bob.start(&server.addr)?;
    alice.wait_status("bob", &id, "delivered")?;
    wait_for("bob to have it", || {
        (copies(&bob, "alice", "sent just before the crash") == 1).then_some(())
    })?;
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(copies(&bob, "alice", "sent just before the crash"), 1);
    Ok(())
}

#[test]
fn a_recipient_killed_while_messages_arrive_ends_with_each_once_in_order() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = Rendezvous::start(&dir.path().join("rv"))?;
    let mut alice = User::init(dir.path(), "alice")?;
    let mut bob = User::init(dir.path(), "bob")?;
    alice.start(&server.addr)?;
    bob.start(&server.addr)?;
    alice.send("bob", "warm-up")?;

    let sent: Vec<String> = (1..=20).map(|i| format!("message {i:02}")).collect();
    let mut ids = Vec::new();
    for (i, text) in sent.iter().enumerate() {
        ids.push(alice.send("bob", text)?);
        if i == 7 {
            bob.kill(); // mid-stream
        }
    }
    bob.start(&server.addr)?;
    for id in &ids {
        alice.wait_status("bob", id, "delivered")?;
    }
    let got: Vec<String> = texts(&bob.history_with("alice")?)
        .into_iter()
        .filter(|t| t.starts_with("message "))
        .collect();
    assert_eq!(got, sent, "every message exactly once, in the order sent");
    Ok(())
}

#[test]
fn a_partitioned_room_member_converges_to_the_same_history() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = Rendezvous::start(&dir.path().join("rv"))?;
    let mut users = started_users(dir.path(), &server.addr, &["ann", "ben", "cat", "dan"])?;
    users[0].ok(&["room", "create", "crew"])?;
    for guest in ["ben", "cat", "dan"] {
        users[0].ok(&["room", "invite", "crew", guest])?;
    }
    for guest in &users[1..] {
        guest.accept_invitation("crew")?;
    }
    users[0].ok(&["room", "send", "crew", "before the partition"])?;
    for user in &users {
        user.wait_room_texts("crew", &["before the partition"])?;
    }

    users[3].stop()?; // dan is cut off
    for (i, user) in users[..3].iter().enumerate() {
        for n in 0..3 {
            user.ok(&[
                "room",
                "send",
                "crew",
                &format!("while dan is away {i}.{n}"),
            ])?;
        }
    }
    users[3].start(&server.addr)?;
    let reference = wait_for("ann, ben and cat to agree", || {
        let histories: Vec<Vec<String>> = users[..3]
            .iter()
            .map(|u| u.room_history("crew").ok().map(|h| texts(&h)))
            .collect::<Option<_>>()?;
        (histories[0].len() == 10 && histories.iter().all(|h| h == &histories[0]))
            .then(|| histories[0].clone())
    })?;
    wait_for("dan to converge to the same history", || {
        (texts(&users[3].room_history("crew").ok()?) == reference).then_some(())
    })?;
    Ok(())
}

#[test]
fn peers_keep_talking_while_the_rendezvous_is_down_and_resume_presence_and_mail_after()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("rv");
    let server = Rendezvous::start(&data)?;
    let (addr, listen) = (server.addr.clone(), server.listen_addr());
    let mut alice = User::init(dir.path(), "alice")?;
    let mut bob = User::init(dir.path(), "bob")?;
    alice.start(&addr)?;
    bob.start(&addr)?;
    let id = alice.send("bob", "before")?;
    alice.wait_status("bob", &id, "delivered")?;

    server.kill();
    let id = alice.send("bob", "while the server is down")?;
    alice.wait_status("bob", &id, "delivered")?;
    let id = bob.send("alice", "still here")?;
    bob.wait_status("alice", &id, "delivered")?;

    let _server = Rendezvous::start_at(&data, &listen)?;
    alice.wait_logged_in()?;
    bob.wait_logged_in()?;
    wait_for("presence to show bob online", || {
        let presence = alice.json(&["presence", "bob"]).ok()?;
        (presence.first()?["state"] == "online").then_some(())
    })?;
    bob.stop()?;
    let id = alice.send("bob", "mailbox works again")?;
    alice.wait_status("bob", &id, "queued")?;
    bob.start(&addr)?;
    alice.wait_status("bob", &id, "delivered")?;
    Ok(())
}

#[test]
fn a_room_member_killed_right_after_reading_keeps_reading_after_restart() -> anyhow::Result<()> {
    // The receiving chains are written a moment after the messages they opened: a member killed
    // in between restarts with a chain a little behind, and must still read what follows, once.
    let dir = tempfile::tempdir()?;
    let server = Rendezvous::start(&dir.path().join("rv"))?;
    let mut users = started_users(dir.path(), &server.addr, &["ann", "ben"])?;
    let [ann, ben] = &mut users[..] else {
        unreachable!()
    };
    ann.ok(&["room", "create", "crash"])?;
    ann.ok(&["room", "invite", "crash", "ben"])?;
    ben.accept_invitation("crash")?;
    let sent: Vec<String> = (1..=10).map(|i| format!("room message {i:02}")).collect();
    for text in &sent[..5] {
        ann.ok(&["room", "send", "crash", text])?;
    }
    ben.wait_room_texts("crash", &sent[..5])?;
    ben.kill();
    ben.start(&server.addr)?;
    for text in &sent[5..] {
        ann.ok(&["room", "send", "crash", text])?;
    }
    ben.wait_room_texts("crash", &sent)?;
    let got: Vec<String> = texts(&ben.room_history("crash")?)
        .into_iter()
        .filter(|t| t.starts_with("room message "))
        .collect();
    assert_eq!(got, sent, "every message once, in order");
    Ok(())
}

#[test]
fn mail_from_two_senders_comes_back_delivered_to_both() -> anyhow::Result<()> {
    // Each sender learns of delivery from the recipient once it is back, by a direct retry or by
    // a receipt for the mail (sent once the fetched batch is on disk). The ordering of waiters
    // within one flush is pinned by `durable`'s unit test; this is the end-to-end view.
    let dir = tempfile::tempdir()?;
    let server = Rendezvous::start(&dir.path().join("rv"))?;
    let mut ann = User::init(dir.path(), "ann")?;
    let mut ben = User::init(dir.path(), "ben")?;
    let mut cat = User::init(dir.path(), "cat")?;
    ann.start(&server.addr)?;
    ben.start(&server.addr)?;
    cat.start(&server.addr)?;
    cat.stop()?;
    let from_ann = ann.send("cat", "from ann while you were away")?;
    let from_ben = ben.send("cat", "from ben while you were away")?;
    ann.wait_status("cat", &from_ann, "queued")?;
    ben.wait_status("cat", &from_ben, "queued")?;
    cat.start(&server.addr)?;
    ann.wait_status("cat", &from_ann, "delivered")?;
    ben.wait_status("cat", &from_ben, "delivered")?;
    assert_eq!(copies(&cat, "ann", "from ann while you were away"), 1);
    assert_eq!(copies(&cat, "ben", "from ben while you were away"), 1);
    Ok(())
}

/// Issue #12's first bug: a rendezvous restarted while the recipient was offline has lost its
/// discovery records, so the lookup of the recipient comes back empty. That must count as
/// unreachable (the message goes to the mailbox), not leave it `sent` until the recipient returns.
#[test]
fn a_message_to_a_user_offline_across_a_rendezvous_restart_is_queued() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("rv");
    let server = Rendezvous::start(&data)?;
    let (addr, listen) = (server.addr.clone(), server.listen_addr());
    let mut alice = User::init(dir.path(), "alice")?;
    let mut bob = User::init(dir.path(), "bob")?;
    alice.start(&addr)?;
    bob.start(&addr)?;
    alice.send("bob", "hello")?; // a session and a contact first
    bob.stop()?;
    server.kill();
    let _server = Rendezvous::start_at(&data, &listen)?;
    alice.wait_logged_in()?;

    let id = alice.send("bob", "sent after the restart")?;
    alice.wait_status("bob", &id, "queued")?;
    bob.start(&addr)?;
    alice.wait_status("bob", &id, "delivered")?;
    wait_for("bob to have it", || {
        (copies(&bob, "alice", "sent after the restart") == 1).then_some(())
    })?;
    Ok(())
}

/// Issue #12's second bug: a first message to a user who logged in a moment ago (before its
/// prekeys reached the rendezvous) waits for the prekeys instead of failing.
#[test]
fn a_first_message_right_after_the_recipients_first_login_is_sent() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = Rendezvous::start(&dir.path().join("rv"))?;
    let mut alice = User::init(dir.path(), "alice")?;
    alice.start(&server.addr)?;
    for n in 0..3 {
        let name = format!("new{n}");
        let mut newcomer = User::init(dir.path(), &name)?;
        newcomer.start(&server.addr)?; // returns as soon as `status` says logged in
        let id = alice.send(&name, "welcome")?;
        alice.wait_status(&name, &id, "delivered")?;
    }
    Ok(())
}

/// A sender's direct messages may leave before their flush when its sessions on disk reserve
/// their numbers; a restart skips past the reservation. Killed and restarted twice, and stopped
/// cleanly once, the sender keeps one conversation going both ways: every message opens, once,
/// in order, across the gaps the restarts leave in its sending chain.
#[test]
fn a_sender_restarted_mid_conversation_keeps_its_session_across_the_skipped_numbers()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = Rendezvous::start(&dir.path().join("rv"))?;
    let mut users = started_users(dir.path(), &server.addr, &["alice", "bob"])?;
    let [alice, bob] = &mut users[..] else {
        unreachable!()
    };
    let mut sent = Vec::new();
    for round in 0..3 {
        let mut ids = Vec::new();
        for i in 0..4 {
            let text = format!("round {round} message {i}");
            ids.push(alice.send("bob", &text)?);
            sent.push(text);
        }
        for id in &ids {
            alice.wait_status("bob", id, "delivered")?;
        }
        match round {
            1 => alice.stop()?,
            _ => alice.kill(),
        }
        alice.start(&server.addr)?;
    }
    let last = alice.send("bob", "after the restarts")?;
    sent.push("after the restarts".into());
    alice.wait_status("bob", &last, "delivered")?;
    assert_eq!(texts(&bob.history_with("alice")?), sent);
    let reply = bob.send("alice", "and back")?;
    bob.wait_status("alice", &reply, "delivered")?;
    let next = alice.send("bob", "a new turn")?;
    alice.wait_status("bob", &next, "delivered")?;
    assert_eq!(copies(bob, "alice", "a new turn"), 1);
    assert_eq!(copies(alice, "bob", "and back"), 1);
    Ok(())
}
