//! Key pinning and safety numbers, end to end, against a rendezvous that really rebinds names: its
//! admin frees `bob` and `carol` (`palaver-rendezvous remove-user`), and new keys register them.
//! What the server did is indistinguishable, to alice, from a server that lies — so she must
//! notice, and for the contact she verified, must not send until she confirms.
#![allow(clippy::unwrap_used)] // test helpers: a failure here is a failed test

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::mpsc;

use palaver_tests::{Rendezvous, User, rendezvous_command, started_users, texts, wait_for};
use serde_json::Value;

fn first(values: Vec<Value>) -> Value {
    values.into_iter().next().unwrap_or(Value::Null)
}

#[test]
fn a_rebound_name_is_caught_and_a_verified_contact_is_not_sent_to_until_confirmed()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("rv");
    let server = Rendezvous::start(&data)?;
    let listen = server.listen_addr();
    let mut users = started_users(dir.path(), &server.addr, &["alice", "bob", "carol"])?;
    for to in ["bob", "carol"] {
        let id = users[0].send(to, &format!("hello {to}"))?;
        users[0].wait_status(to, &id, "delivered")?;
    }

    // Both sides compute the same safety number; alice compares it with bob and confirms.
    let at_alice = first(users[0].json(&["verify", "bob"])?);
    let at_bob = first(users[1].json(&["verify", "alice"])?);
    assert_eq!(at_alice["safety_number"], at_bob["safety_number"]);
    assert_eq!(
        at_alice["safety_number"].as_str().unwrap().len(),
        12 * 6 - 1
    );
    assert_eq!(at_alice["verified"], false);
    let confirmed = first(users[0].json(&["verify", "bob", "--confirm"])?);
    assert_eq!(confirmed["verified"], true);
    let presence = users[0].json(&["presence"])?;
    let verified = |name: &str| {
        presence
            .iter()
            .find(|p| p["name"] == name)
            .map(|p| p["verified"].clone())
    };
    assert_eq!(verified("bob"), Some(Value::Bool(true)));
    assert_eq!(verified("carol"), Some(Value::Bool(false)));

    // The admin frees both names while bob and carol are away.
    let [alice, bob, carol] = &mut users[..] else {
        unreachable!()
    };
    bob.stop()?;
    carol.stop()?;
    // Sealed for the old carol, it waits in her mailbox; her key will change before she reads.
    let stranded = alice.send("carol", "are you away?")?;
    alice.wait_status("carol", &stranded, "queued")?;
    let kept = alice.send("bob", "are you away, bob?")?;
    alice.wait_status("bob", &kept, "queued")?;
    let mut events = alice
        .command()
        .args(["--json", "listen"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    // It says when it is subscribed: from then on it misses nothing.
    let mut said = BufReader::new(events.stderr.take().unwrap()).lines();
    assert_eq!(said.next().transpose()?.as_deref(), Some("listening"));
    std::thread::spawn(move || said.for_each(drop));
    let (seen, heard) = mpsc::channel();
    let stdout = events.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(event) = serde_json::from_str::<Value>(&line)
                && seen.send(event).is_err()
            {
                break;
            }
        }
    });
    let next = |wanted: &str| -> anyhow::Result<Value> {
        loop {
            let event: Value = heard
                .recv_timeout(palaver_tests::PATIENCE)
                .map_err(|_| anyhow::anyhow!("no {wanted} event from listen"))?;
            if event["type"] == wanted {
                return Ok(event);
            }
        }
    };
    server.kill();
    for name in ["bob", "carol"] {
        let out = rendezvous_command()
            .arg("--data")
            .arg(&data)
            .args(["remove-user", name])
            .output()?;
        assert!(
            out.status.success(),
            "remove-user {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let server = Rendezvous::start_at(&data, &listen)?;
    alice.wait_logged_in()?;
    while next("rendezvous")?["logged_in"] != true {}

    // New keys register the names and log in; alice, who watches both, hears of it.
    let new_home = dir.path().join("new");
    let mut new_bob = User::init(&new_home, "bob")?;
    let mut new_carol = User::init(&new_home, "carol")?;
    new_bob.start(&server.addr)?;
    new_carol.start(&server.addr)?;
    let mut changed = Vec::new();
    for _ in 0..2 {
        let event = next("key_changed")?;
        changed.push((event["name"].clone(), event["verified"].clone()));
        assert_ne!(event["old_fingerprint"], event["new_fingerprint"]);
    }
    changed.sort_by_key(|(name, _)| name.to_string());
    assert_eq!(
        changed,
        [
            (Value::from("bob"), Value::Bool(true)),
            (Value::from("carol"), Value::Bool(false))
        ]
    );
    let _ = events.kill();
    let _ = events.wait();
    // What was sealed for the old key fails, rather than wait for a key that is gone.
    alice.wait_status("carol", &stranded, "failed")?;
    // Verified bob keeps his key until alice confirms the new one: his message still waits.
    let status = |id: &str| {
        let history = alice.history_with("bob").unwrap_or_default();
        let entry = history.into_iter().find(|e| e["id"] == id);
        entry.map(|e| e["status"].clone())
    };
    assert_eq!(status(&kept), Some(Value::from("queued")));
    let notice = |name: &str| {
        alice
            .history_with(name)
            .unwrap_or_default()
            .into_iter()
            .find(|e| {
                e["notice"] == true
                    && e["text"]
                        .as_str()
                        .unwrap()
                        .contains("safety number changed")
            })
    };
    wait_for("the notices in alice's conversations", || {
        notice("bob").and(notice("carol"))
    })?;

    // Verified bob: the send is refused, naming the change and the way out.
    let refused = alice.run(&["send", "bob", "are you there?"]);
    assert!(!refused.status.success());
    let error = String::from_utf8_lossy(&refused.stderr);
    assert!(error.contains("safety number changed"), "{error}");
    assert!(error.contains("palaver verify bob --confirm"), "{error}");
    // Unverified carol: it goes to the new key, with a warning on stderr (once).
    let warned = alice.run(&["send", "carol", "hi new carol"]);
    assert!(warned.status.success());
    let warning = String::from_utf8_lossy(&warned.stderr);
    assert!(
        warning.contains("warning: carol's safety number changed"),
        "{warning}"
    );
    let again = alice.run(&["send", "carol", "second"]);
    assert!(again.status.success());
    assert!(!String::from_utf8_lossy(&again.stderr).contains("warning"));
    wait_for("the new carol to read alice", || {
        let have = texts(&new_carol.history_with("alice").ok()?);
        (have == ["hi new carol", "second"]).then_some(())
    })?;

    // Alice compares with the new bob, then confirms: sending works again, to the new key.
    let pending = first(alice.json(&["verify", "bob"])?);
    assert_eq!(pending["key_changed"], true);
    assert_eq!(pending["verified"], false);
    let at_new_bob = first(new_bob.json(&["verify", "alice"])?);
    assert_eq!(pending["safety_number"], at_new_bob["safety_number"]);
    assert_ne!(pending["safety_number"], at_alice["safety_number"]);
    let accepted = first(alice.json(&["verify", "bob", "--confirm"])?);
    assert_eq!(accepted["verified"], true);
    assert_eq!(accepted["key_changed"], false);
    // Confirmed: the old key is replaced, and what was sealed for it fails.
    alice.wait_status("bob", &kept, "failed")?;
    let id = alice.send("bob", "hello new bob")?;
    alice.wait_status("bob", &id, "delivered")?;
    assert_eq!(texts(&new_bob.history_with("alice")?), ["hello new bob"]);

    // One conversation with bob throughout: the old message, the notices, the new one.
    let history = alice.history_with("bob")?;
    let shown: Vec<(bool, String)> = history
        .iter()
        .map(|e| (e["notice"] == true, e["text"].as_str().unwrap().to_owned()))
        .collect();
    assert_eq!(shown.first(), Some(&(false, "hello bob".to_owned())));
    assert_eq!(shown.last(), Some(&(false, "hello new bob".to_owned())));
    assert!(
        shown.iter().filter(|(notice, _)| *notice).count() >= 3,
        "{shown:?}"
    );
    Ok(())
}

/// A passphrase-protected home seals its sessions and room keys at rest (unit-tested in the
/// store); here: the daemon works with them across a restart, and history is still readable
/// without the daemon and without the passphrase.
#[test]
fn a_passphrase_protected_home_keeps_working_and_reads_offline() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = Rendezvous::start(&dir.path().join("rv"))?;
    let secret = [("PALAVER_PASSPHRASE", "correct horse battery")];
    let mut alice = User::init_with_env(dir.path(), "alice", &secret)?;
    let mut bob = User::init(dir.path(), "bob")?;
    alice.start_with_env(&server.addr, &secret)?;
    bob.start(&server.addr)?;
    let id = alice.send("bob", "sealed hello")?;
    alice.wait_status("bob", &id, "delivered")?;
    alice.ok(&["room", "create", "den"])?;
    alice.ok(&["room", "invite", "den", "bob"])?;
    bob.accept_invitation("den")?;
    alice.ok(&["room", "send", "den", "in the den"])?;
    bob.wait_room_texts("den", &["in the den"])?;
    alice.stop()?;

    // Offline, without the passphrase: the history reads (it is not what the passphrase seals).
    assert_eq!(texts(&alice.history_with("bob")?), ["sealed hello"]);
    assert_eq!(texts(&alice.room_history("den")?), ["in the den"]);

    // Back with the passphrase: the sealed session and room keys carry on.
    alice.start_with_env(&server.addr, &secret)?;
    let id = bob.send("alice", "still there?")?;
    bob.wait_status("alice", &id, "delivered")?;
    let id = alice.send("bob", "yes")?;
    alice.wait_status("bob", &id, "delivered")?;
    alice.ok(&["room", "send", "den", "again"])?;
    bob.wait_room_texts("den", &["in the den", "again"])?;
    assert_eq!(
        texts(&bob.history_with("alice")?),
        ["sealed hello", "still there?", "yes"]
    );
    Ok(())
}
