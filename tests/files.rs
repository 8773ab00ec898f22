//! File transfers with real processes over loopback: byte-identical arrival, direct and in a
//! room, resumed after kill -9 of either side, fetched from another member when the sender is
//! gone.
#![allow(clippy::unwrap_used)] // test helpers: a failure here is a failed test

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use palaver_tests::{PATIENCE, Rendezvous, User, started_users, wait_for};
use rand::{RngCore, SeedableRng};
use serde_json::Value;

/// A file of `size` random bytes (seeded: the same test writes the same file).
fn random_file(dir: &Path, name: &str, size: usize, seed: u64) -> PathBuf {
    let mut bytes = vec![0; size];
    rand_chacha::ChaCha20Rng::seed_from_u64(seed).fill_bytes(&mut bytes);
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// Offers `path` to `to`; the offering message's id (the file's id).
fn send_file(from: &User, to: &str, path: &Path) -> anyhow::Result<String> {
    Ok(from
        .ok(&["send-file", to, path.to_str().unwrap()])?
        .trim()
        .to_owned())
}

/// `user`'s record of file `id`, once it has one.
fn file_info(user: &User, id: &str) -> Option<Value> {
    user.json(&["file", "info", id]).ok()?.into_iter().next()
}

/// Waits until `user` has file `id` whole (checked against its hash); where it is.
fn wait_done(user: &User, id: &str) -> anyhow::Result<PathBuf> {
    let wait = || {
        let info = file_info(user, id)?;
        (info["status"] == "done").then(|| PathBuf::from(info["path"].as_str().unwrap()))
    };
    // A resumed transfer waits out a retry backoff or two: more than one PATIENCE.
    let deadline = Instant::now() + PATIENCE * 3;
    loop {
        if let Ok(path) = wait_for(&format!("{} to have file {id}", user.name), wait) {
            return Ok(path);
        }
        if Instant::now() > deadline {
            let info = file_info(user, id);
            anyhow::bail!("{} never got file {id}: {info:?}", user.name);
        }
    }
}

fn same_bytes(a: &Path, b: &Path) -> bool {
    std::fs::read(a).unwrap() == std::fs::read(b).unwrap()
}

/// `user`'s partial file of transfer `id` has some chunks, and not all of them.
fn wait_partly_fetched(user: &User, id: &str, size: u64) -> anyhow::Result<()> {
    let partial = user.home.join("transfers/partial").join(id);
    let deadline = Instant::now() + PATIENCE;
    loop {
        let len = std::fs::metadata(&partial).map_or(0, |m| m.len());
        if len > 0 {
            anyhow::ensure!(
                len < size,
                "the whole file arrived before the kill: make the test's file larger"
            );
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "the fetch of {id} never started");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A rendezvous, and alice and bob logged in (bob's daemon with `bob_flags`).
fn alice_and_bob(dir: &Path, bob_flags: &[&str]) -> anyhow::Result<(Rendezvous, User, User)> {
    let server = Rendezvous::start(&dir.join("rv"))?;
    let mut alice = User::init(dir, "alice")?;
    let mut bob = User::init(dir, "bob")?;
    alice.start(&server.addr)?;
    bob.start_at_instances_with(&[&server.addr], &[], bob_flags)?;
    Ok((server, alice, bob))
}

#[test]
fn a_20_mib_file_arrives_byte_identical_once_accepted() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = Rendezvous::start(&dir.path().join("rv"))?;
    let users = started_users(dir.path(), &server.addr, &["alice", "bob"])?;
    let (alice, bob) = (&users[0], &users[1]);
    let source = random_file(dir.path(), "holiday.bin", 20 << 20, 1);

    let id = send_file(alice, "bob", &source)?;
    // Over the 16 MiB auto-accept size: it waits for bob.
    let offered = wait_for("bob to hear of the offer", || {
        file_info(bob, &id).filter(|info| info["status"] == "offered")
    })?;
    assert_eq!(offered["name"], "holiday.bin");
    assert_eq!(offered["size"], 20 << 20);
    let got = bob.json(&["file", "get", &id])?;
    let path = PathBuf::from(got[0]["path"].as_str().unwrap());
    assert_eq!(path, bob.home.join("files/holiday.bin"));
    assert!(same_bytes(&source, &path), "byte-identical");

    // The history shows it on both sides; a second copy never overwrites the first.
    let history = bob.history_with("alice")?;
    let entry = history.iter().find(|e| e["id"] == id.as_str()).unwrap();
    assert_eq!(entry["text"], "[file] holiday.bin (20.0 MiB)");
    assert_eq!(entry["file"]["status"], "done");
    let sent = alice.history_with("bob")?;
    assert!(sent.iter().any(|e| e["id"] == id.as_str()));
    let again = send_file(alice, "bob", &source)?;
    let second = bob.json(&["file", "get", &again])?;
    assert_eq!(
        second[0]["path"].as_str().unwrap(),
        bob.home.join("files/holiday (1).bin").to_str().unwrap()
    );
    assert!(same_bytes(&source, &path), "the first copy is untouched");
    Ok(())
}

#[test]
fn a_small_file_for_an_offline_user_travels_through_the_mailbox() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (server, mut alice, mut bob) = alice_and_bob(dir.path(), &[])?;
    alice.send("bob", "hello")?; // a session first
    bob.stop()?;

    let source = random_file(dir.path(), "note.txt", 20_000, 8);
    let id = send_file(&alice, "bob", &source)?;
    alice.wait_status("bob", &id, "queued")?;
    // The sender is gone too: nobody could serve a fetch.
    alice.stop()?;
    bob.start(&server.addr)?;
    let path = wait_done(&bob, &id)?;
    assert!(
        same_bytes(&source, &path),
        "byte-identical from the mailbox"
    );
    Ok(())
}

#[test]
fn a_file_over_the_size_limit_is_refused_with_the_reason() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (_server, alice, bob) = alice_and_bob(dir.path(), &["--max-file-size", "1MiB"])?;
    let source = random_file(dir.path(), "big.bin", 2 << 20, 2);
    // The sender, waiting for it, hears why bob will not fetch it.
    let waited = alice.run(&["send-file", "bob", source.to_str().unwrap(), "--wait"]);
    assert!(!waited.status.success());
    let said = String::from_utf8_lossy(&waited.stderr);
    assert!(said.contains("bob will not fetch big.bin"), "{said}");
    let id = send_file(&alice, "bob", &source)?;
    let failed = wait_for("bob to refuse it", || {
        file_info(&bob, &id).filter(|info| info["status"] == "failed")
    })?;
    let reason = failed["reason"].as_str().unwrap();
    assert!(reason.contains("over the 1048576-byte limit"), "{reason}");
    let refused = bob.run(&["file", "accept", &id]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("limit"));
    assert!(!bob.home.join("files/big.bin").exists());
    Ok(())
}

#[test]
fn a_file_larger_than_the_free_disk_space_waits_and_says_why() -> anyhow::Result<()> {
    // bob's download directory is a 2 MiB tmpfs of his daemon's own (a mount namespace).
    if !std::process::Command::new("unshare")
        .args(["-m", "true"])
        .status()
        .is_ok_and(|status| status.success())
    {
        // Where the lab is required (CI, as root), not being able to run is a failure.
        let required = std::env::var("PALAVER_REQUIRE_NATLAB").is_ok_and(|v| v == "1");
        anyhow::ensure!(
            !required,
            "`unshare -m` does not work here, and CI requires it"
        );
        eprintln!("skipped: `unshare -m` needs root (CI runs this as root)");
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let server = Rendezvous::start(&dir.path().join("rv"))?;
    let mut alice = User::init(dir.path(), "alice")?;
    let mut bob = User::init(dir.path(), "bob")?;
    alice.start(&server.addr)?;
    let small = dir.path().join("small-disk");
    std::fs::create_dir(&small)?;
    let small = small.to_str().unwrap();
    let mount = r#"mount -t tmpfs -o size=2m palaver-test "$0" && shift && exec "$@""#;
    let wrapper = [
        "unshare",
        "-m",
        "--propagation",
        "private",
        "sh",
        "-c",
        mount,
        small,
        "--",
    ];
    bob.start_wrapped(&server.addr, &wrapper, &["--download-dir", small])?;

    // Under the auto-accept size, but over the free space: it waits, and nothing is written.
    let source = random_file(dir.path(), "backup.tar", 3 << 20, 7);
    let id = send_file(&alice, "bob", &source)?;
    let info = wait_for("bob to hear of the offer", || {
        file_info(&bob, &id).filter(|info| info["status"] == "offered")
    })?;
    assert_eq!(info["bytes"], 0);
    let refused = bob.run(&["file", "get", &id]);
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        said.contains("the file needs 3145728 bytes and the disk has"),
        "{said}"
    );
    assert_eq!(
        file_info(&bob, &id).unwrap()["status"],
        "offered",
        "still there to accept"
    );
    Ok(())
}

/// A 96 MiB transfer, alice to bob, with the sender (or the receiver) killed -9 mid-way and
/// restarted: bob ends with the whole file, byte-identical.
fn resumes_after_kill_9(sender_crashes: bool) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let accept_all = ["--auto-accept-size", "1GiB"];
    let (server, mut alice, mut bob) = alice_and_bob(dir.path(), &accept_all)?;
    let size = 96 << 20;
    let source = random_file(dir.path(), "video.bin", size, 3);

    let id = send_file(&alice, "bob", &source)?;
    wait_partly_fetched(&bob, &id, size as u64)?;
    if sender_crashes {
        alice.kill();
        // The original may go once offered: what is served is the copy alice kept.
        std::fs::rename(&source, dir.path().join("moved.bin"))?;
        alice.start(&server.addr)?;
    } else {
        bob.kill();
        bob.start_at_instances_with(&[&server.addr], &[], &accept_all)?;
    }
    let path = wait_done(&bob, &id)?;
    let original = dir.path().join(if sender_crashes {
        "moved.bin"
    } else {
        "video.bin"
    });
    assert!(
        same_bytes(&original, &path),
        "byte-identical after the crash"
    );
    Ok(())
}

#[test]
fn a_transfer_resumes_after_kill_9_of_the_receiver() -> anyhow::Result<()> {
    resumes_after_kill_9(false)
}

#[test]
fn a_transfer_resumes_after_kill_9_of_the_sender() -> anyhow::Result<()> {
    resumes_after_kill_9(true)
}

#[test]
fn a_room_file_reaches_three_members_and_one_fetches_it_from_another() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = Rendezvous::start(&dir.path().join("rv"))?;
    let mut users = started_users(dir.path(), &server.addr, &["ann", "ben", "cat", "dan"])?;
    users[0].ok(&["room", "create", "share"])?;
    for guest in ["ben", "cat", "dan"] {
        users[0].ok(&["room", "invite", "share", guest])?;
    }
    for guest in &users[1..] {
        guest.accept_invitation("share")?;
    }
    users[0].ok(&["room", "send", "share", "files coming"])?;
    for user in &users {
        user.wait_room_texts("share", &["files coming"])?;
    }

    // Three members get it from ann.
    let menu = random_file(dir.path(), "menu.pdf", 3 << 20, 5);
    let path = menu.to_str().unwrap();
    let id = users[0].ok(&["room", "send-file", "share", path])?;
    let id = id.trim();
    for member in &users[1..] {
        let got = wait_done(member, id)?;
        assert!(
            same_bytes(&menu, &got),
            "{} has it byte-identical",
            member.name
        );
    }

    // dan is away when ann offers the next one, and ann is gone when dan is back: dan
    // fetches it from a member that has it.
    users[3].stop()?;
    let plan = random_file(dir.path(), "plan.pdf", 2 << 20, 6);
    let id = users[0].ok(&["room", "send-file", "share", plan.to_str().unwrap()])?;
    let id = id.trim();
    for member in &users[1..3] {
        wait_done(member, id)?;
    }
    users[0].stop()?;
    users[3].start(&server.addr)?;
    let got = wait_done(&users[3], id)?;
    assert!(same_bytes(&plan, &got), "dan has it from ben or cat");
    Ok(())
}
