//! One person, several devices. A new device is linked with a code from the first; then a
//! message to the person reaches every device, what one device sends shows on the others as
//! sent by the person, and the other side sees one contact. A revoked device gets nothing new.
//! One key still runs in one daemon at a time: a home copied to a second machine is refused at
//! login, with what to do instead, and the daemon already running keeps working (before, both
//! ran, and later first messages from new contacts were lost for good: the copies consumed each
//! other's one-time prekeys).
#![allow(clippy::unwrap_used)] // test helpers: a failure here is a failed test

use palaver_tests::{Rendezvous, User, started_users, texts, wait_for};
use serde_json::Value;

/// How many devices `user` knows `of` to have (its own with `of` = its own name).
fn devices_known(user: &User, of: &str) -> usize {
    user.json(&["device", "list", of])
        .map_or(0, |list| list.len())
}

/// The history line of `user`'s conversation with `with` whose text is `text`, once it is there.
fn line(user: &User, with: &str, text: &str) -> anyhow::Result<Value> {
    wait_for(&format!("{}: {text:?} with {with}", user.name), || {
        user.history_with(with)
            .ok()?
            .into_iter()
            .find(|e| e["text"] == text)
    })
}

#[test]
fn a_linked_device_gets_every_message_shows_what_the_other_sent_and_stops_once_revoked()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = Rendezvous::start(&dir.path().join("rv"))?;
    let mut users = started_users(dir.path(), &server.addr, &["alice", "bob"])?;
    let bob = users.pop().unwrap();
    let mut alice = users.pop().unwrap();
    let id = bob.send("alice", "hello")?;
    bob.wait_status("alice", &id, "delivered")?;

    // The code from alice's first device; the new device uses it and is linked.
    let (mut laptop, linked) = link_with_history(&alice, dir.path(), "laptop", 10)?;
    assert!(linked.contains("linked to alice's account"), "{linked}");
    // The conversation so far came along, offline-readable before the daemon starts.
    let before = laptop.history_with("bob")?;
    assert_eq!(texts(&before), ["hello"]);
    assert_eq!(before[0]["from"], "bob");
    laptop.start(&server.addr)?;
    let mine = alice.json(&["device", "list"])?;
    assert_eq!(mine.len(), 2, "{mine:?}");
    assert!(
        mine.iter()
            .any(|d| d["label"] == "laptop" && d["this_device"] == false)
    );

    // bob learns of the laptop (the rendezvous tells him alice's list changed); his message
    // reaches both of alice's devices.
    wait_for("bob to know alice's laptop", || {
        (devices_known(&bob, "alice") == 2).then_some(())
    })?;
    let id = bob.send("alice", "to both")?;
    bob.wait_status("alice", &id, "delivered")?;
    line(&alice, "bob", "to both")?;
    let on_laptop = line(&laptop, "bob", "to both")?;
    assert_eq!(on_laptop["from"], "bob");
    // bob's --json shows how the copy for the laptop fared.
    wait_for("bob to see the laptop's copy delivered", || {
        let sent = line(&bob, "alice", "to both").ok()?;
        let copies = sent["copies"].as_array()?.clone();
        (copies.len() == 1 && copies[0]["for"] == "recipient" && copies[0]["status"] == "delivered")
            .then_some(())
    })?;

    // What the laptop sends shows at bob as alice's, in the one conversation, and on alice's
    // first device as sent by alice.
    wait_for("the laptop to know alice's devices", || {
        (devices_known(&laptop, "alice") == 2).then_some(())
    })?;
    laptop.send("bob", "from the laptop")?;
    let at_bob = line(&bob, "alice", "from the laptop")?;
    assert_eq!(at_bob["from"], "alice");
    let on_desk = line(&alice, "bob", "from the laptop")?;
    assert_eq!(on_desk["from"], "alice");
    assert_eq!(on_desk["status"], "sent");
    let conversations = bob.json(&["conversations"])?;
    assert_eq!(conversations.len(), 1, "{conversations:?}");
    // And the other way round.
    alice.send("bob", "from the desk")?;
    let on_laptop = line(&laptop, "bob", "from the desk")?;
    assert_eq!(on_laptop["from"], "alice");
    assert_eq!(
        texts(&bob.history_with("alice")?),
        ["hello", "to both", "from the laptop", "from the desk"]
    );

    // The laptop offline: what bob sends meanwhile reaches it when it is back (deposited in the
    // laptop's own mailbox at the rendezvous).
    laptop.stop()?;
    let id = bob.send("alice", "while the laptop sleeps")?;
    bob.wait_status("alice", &id, "delivered")?;
    laptop.start(&server.addr)?;
    line(&laptop, "bob", "while the laptop sleeps")?;

    // Someone alice never wrote to hears from the laptop first: carol's node learns the key is
    // one of alice's devices (her signed list names it), and files it with alice.
    let mut carol = User::init(dir.path(), "carol")?;
    carol.start(&server.addr)?;
    laptop.send("carol", "hi carol")?;
    let first = line(&carol, "alice", "hi carol")?;
    assert_eq!(first["from"], "alice");
    let conversations = carol.json(&["conversations"])?;
    assert_eq!(conversations.len(), 1, "{conversations:?}");
    assert_eq!(conversations[0]["conversation"], "alice");

    // alice's first device offline, her laptop online: bob's message is delivered (to alice, on
    // one of her devices), not left queued.
    alice.stop()?;
    let id = bob.send("alice", "desk asleep")?;
    bob.wait_status("alice", &id, "delivered")?;
    line(&laptop, "bob", "desk asleep")?;
    alice.start(&server.addr)?;
    line(&alice, "bob", "desk asleep")?;

    // Revoked: bob learns of it, and what he sends next reaches only the first device.
    let left = alice.json(&["device", "revoke", "laptop"])?;
    assert_eq!(left.len(), 1);
    wait_for("bob to know the laptop is gone", || {
        (devices_known(&bob, "alice") == 1).then_some(())
    })?;
    let id = bob.send("alice", "after the revoke")?;
    bob.wait_status("alice", &id, "delivered")?;
    line(&alice, "bob", "after the revoke")?;
    laptop.stop().ok();
    let history = texts(&laptop.history_with("bob")?);
    assert!(
        !history.iter().any(|t| t == "after the revoke"),
        "{history:?}"
    );
    Ok(())
}

/// Links a new device of `account`'s in `dir/label` (its daemon not started).
fn link(account: &User, dir: &std::path::Path, label: &str) -> anyhow::Result<User> {
    Ok(link_with_history(account, dir, label, 0)?.0)
}

/// Links a new device, handed the last `history` lines of each conversation and room; what
/// `init --link` printed.
fn link_with_history(
    account: &User,
    dir: &std::path::Path,
    label: &str,
    history: u32,
) -> anyhow::Result<(User, String)> {
    let started = account.json(&["device", "link", "--no-wait"])?;
    let code = started[0]["code"].as_str().unwrap().to_owned();
    let device = User::at_home(&account.name, dir.join(label));
    let history = history.to_string();
    let args = [
        "init",
        "--link",
        &code,
        "--label",
        label,
        "--history",
        &history,
    ];
    let printed = device.ok(&args)?;
    Ok((device, printed))
}

#[test]
fn a_copy_that_could_not_be_sealed_goes_out_after_a_restart() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = Rendezvous::start(&dir.path().join("rv"))?;
    let mut users = started_users(dir.path(), &server.addr, &["alice", "bob"])?;
    let mut bob = users.pop().unwrap();
    let alice = users.pop().unwrap();
    let id = bob.send("alice", "hello")?;
    bob.wait_status("alice", &id, "delivered")?;
    // The laptop is linked but not started: it has published no prekeys, so bob's copy for it
    // waits (and would fail after the pipeline's prekey wait).
    let mut laptop = link(&alice, dir.path(), "laptop")?;
    wait_for("bob to know alice's laptop", || {
        (devices_known(&bob, "alice") == 2).then_some(())
    })?;
    let id = bob.send("alice", "sealed later")?;
    bob.wait_status("alice", &id, "delivered")?;
    // bob's daemon stops with the copy still owed; started again, it sends it.
    bob.stop()?;
    laptop.start(&server.addr)?;
    bob.start(&server.addr)?;
    line(&laptop, "bob", "sealed later")?;
    Ok(())
}

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

/// `device link` as a person runs it: the code on stdout, then the question, answered `answer`.
/// The new device's `init --link` runs meanwhile; what each printed, and how each ended.
fn link_asking(
    alice: &User,
    laptop: &User,
    answer: &str,
) -> anyhow::Result<(
    std::process::ExitStatus,
    String,
    Option<std::process::ExitStatus>,
)> {
    use std::io::{BufRead, Read, Write};
    use std::process::Stdio;
    let mut asking = alice
        .command()
        .args(["device", "link"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut stdout = std::io::BufReader::new(asking.stdout.take().unwrap());
    let code = loop {
        let mut line = String::new();
        anyhow::ensure!(stdout.read_line(&mut line)? > 0, "no code printed");
        if let Some(at) = line.find("palaver-link:") {
            let code = line[at..].split_whitespace().next().unwrap_or_default();
            break code.to_owned();
        }
    };
    let mut joining = laptop
        .command()
        .args(["init", "--link", &code, "--label", "laptop"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    asking.stdin.take().unwrap().write_all(answer.as_bytes())?;
    let mut stderr = asking.stderr.take().unwrap();
    let asked = wait_for("`device link` to end", || asking.try_wait().ok().flatten());
    if asked.is_err() {
        let _ = asking.kill();
        let _ = joining.kill();
    }
    let asked = asked?;
    let mut said = String::new();
    stderr.read_to_string(&mut said)?;
    // Refused, the new device would wait out the code: it is stopped here.
    let joined = if asked.success() {
        let joined = wait_for("`init --link` to end", || joining.try_wait().ok().flatten());
        if joined.is_err() {
            let _ = joining.kill();
        }
        Some(joined?)
    } else {
        joining.kill()?;
        joining.wait()?;
        None
    };
    Ok((asked, said, joined))
}

#[test]
fn device_link_asks_before_it_adds_the_device_that_used_the_code() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = Rendezvous::start(&dir.path().join("rv"))?;
    let users = started_users(dir.path(), &server.addr, &["alice"])?;
    let alice = &users[0];

    // "n": nothing is added.
    let intruder = User::at_home("alice", dir.path().join("intruder"));
    let (asked, said, _) = link_asking(alice, &intruder, "n\n")?;
    assert!(!asked.success(), "{said}");
    assert!(
        said.contains("asks to join this account as \"laptop\""),
        "{said}"
    );
    assert_eq!(alice.json(&["device", "list"])?.len(), 1);

    // "y": the laptop is linked.
    let laptop = User::at_home("alice", dir.path().join("laptop"));
    let (asked, said, joined) = link_asking(alice, &laptop, "y\n")?;
    assert!(asked.success(), "{said}");
    assert!(joined.is_some_and(|status| status.success()));
    let listed = alice.json(&["device", "list"])?;
    assert!(listed.iter().any(|d| d["label"] == "laptop"), "{listed:?}");
    Ok(())
}

/// The room `room` as `user`'s `room list` shows it, once its state is `state`.
fn room_in_state(user: &User, room: &str, state: &str) -> anyhow::Result<()> {
    wait_for(&format!("{}: {room} {state}", user.name), || {
        let rooms = user.json(&["room", "list"]).ok()?;
        rooms
            .iter()
            .any(|r| r["room"] == room && r["state"] == state)
            .then_some(())
    })
}

#[test]
fn rooms_follow_the_account_onto_a_linked_device_and_a_revoked_one_reads_nothing_new()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = Rendezvous::start(&dir.path().join("rv"))?;
    let mut users = started_users(dir.path(), &server.addr, &["alice", "bob"])?;
    let bob = users.pop().unwrap();
    let alice = users.pop().unwrap();
    alice.ok(&["room", "create", "team"])?;
    alice.ok(&["room", "invite", "team", "bob"])?;
    bob.accept_invitation("team")?;

    bob.ok(&["room", "send", "team", "before the link"])?;
    alice.wait_room_texts("team", &["before the link"])?;

    // The laptop is handed the room with the link (and its last lines), and is in it once it
    // starts: one member, alice, on two devices.
    let (mut laptop, linked) = link_with_history(&alice, dir.path(), "laptop", 5)?;
    assert!(linked.contains("rooms        1 handed over"), "{linked}");
    let before = laptop.room_history("team")?;
    assert_eq!(texts(&before), ["before the link"]);
    assert_eq!(before[0]["from"], "bob");
    laptop.start(&server.addr)?;
    room_in_state(&laptop, "team", "joined")?;
    let members = bob.json(&["room", "members", "team"])?;
    assert_eq!(members.len(), 2, "{members:?}");

    // bob's message reaches both devices; what the laptop writes shows as alice's, at bob and
    // on the desk.
    bob.ok(&["room", "send", "team", "hi both"])?;
    alice.wait_room_texts("team", &["hi both"])?;
    laptop.wait_room_texts("team", &["hi both"])?;
    laptop.ok(&["room", "send", "team", "from the laptop"])?;
    bob.wait_room_texts("team", &["from the laptop"])?;
    alice.wait_room_texts("team", &["from the laptop"])?;
    let at_bob = bob.room_history("team")?;
    let line = at_bob
        .iter()
        .find(|e| e["text"] == "from the laptop")
        .unwrap();
    assert_eq!(line["from"], "alice");

    // Joining on one device joins the account's other devices too.
    bob.ok(&["room", "create", "bobs"])?;
    bob.ok(&["room", "invite", "bobs", "alice"])?;
    laptop.accept_invitation("bobs")?;
    room_in_state(&alice, "bobs", "joined")?;
    bob.ok(&["room", "send", "bobs", "welcome"])?;
    alice.wait_room_texts("bobs", &["welcome"])?;
    laptop.wait_room_texts("bobs", &["welcome"])?;

    // Revoked: bob's next room message reaches the desk, never the laptop.
    alice.json(&["device", "revoke", "laptop"])?;
    wait_for("bob to know the laptop is gone", || {
        (devices_known(&bob, "alice") == 1).then_some(())
    })?;
    bob.ok(&["room", "send", "team", "after the revoke"])?;
    alice.wait_room_texts("team", &["after the revoke"])?;
    laptop.stop().ok();
    let history = texts(&laptop.room_history("team")?);
    assert!(
        !history.iter().any(|t| t == "after the revoke"),
        "{history:?}"
    );
    Ok(())
}

#[test]
fn a_file_sent_to_a_person_reaches_each_of_their_devices() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = Rendezvous::start(&dir.path().join("rv"))?;
    let mut users = started_users(dir.path(), &server.addr, &["alice", "bob"])?;
    let bob = users.pop().unwrap();
    let alice = users.pop().unwrap();
    let id = bob.send("alice", "hello")?;
    bob.wait_status("alice", &id, "delivered")?;
    let mut laptop = link(&alice, dir.path(), "laptop")?;
    laptop.start(&server.addr)?;
    wait_for("bob to know alice's laptop", || {
        (devices_known(&bob, "alice") == 2).then_some(())
    })?;

    // Too big to go whole in its message: each device fetches it from bob.
    let bytes: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let source = dir.path().join("plan.pdf");
    std::fs::write(&source, &bytes)?;
    bob.ok(&["send-file", "alice", source.to_str().unwrap()])?;
    for device in [&alice, &laptop] {
        let offered = line_containing(device, "bob", "plan.pdf")?;
        let id = offered["id"].as_str().unwrap().to_owned();
        let path = wait_for(&format!("{}'s file", device.home.display()), || {
            let info = device
                .json(&["file", "info", &id])
                .ok()?
                .into_iter()
                .next()?;
            (info["status"] == "done").then(|| info["path"].as_str().unwrap().to_owned())
        })?;
        assert_eq!(std::fs::read(path)?, bytes);
    }
    // One alice sends shows on her other device as sent by her.
    let notes = dir.path().join("notes.txt");
    std::fs::write(&notes, b"minutes")?;
    alice.ok(&["send-file", "bob", notes.to_str().unwrap()])?;
    let on_laptop = line_containing(&laptop, "bob", "notes.txt")?;
    assert_eq!(on_laptop["from"], "alice");
    line_containing(&bob, "alice", "notes.txt")?;
    Ok(())
}

/// The history line of `user`'s conversation with `with` whose text contains `part`.
fn line_containing(user: &User, with: &str, part: &str) -> anyhow::Result<Value> {
    wait_for(&format!("{}: a line with {part:?}", user.name), || {
        user.history_with(with)
            .ok()?
            .into_iter()
            .find(|e| e["text"].as_str().is_some_and(|t| t.contains(part)))
    })
}
