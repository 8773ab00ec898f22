//! The command line against running daemons: real `palaver` processes, and a rendezvous run in
//! this test process (the library, on 127.0.0.1, port 0) so each test can configure its own —
//! one that wants a registration token, say.
#![allow(clippy::unwrap_used)] // test helpers: a failure here is a failed test

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use palaver_rendezvous::{Config, Server};
use serde_json::Value;

/// Every wait gives up after this long.
const PATIENCE: Duration = Duration::from_secs(30);

/// A rendezvous on its own runtime; stopped on drop.
struct Rendezvous {
    addr: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Rendezvous {
    fn start(data: &Path, configure: impl FnOnce(&mut Config)) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let mut config = Config::new(vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()], data);
        configure(&mut config);
        let server = runtime.block_on(Server::bind(config)).unwrap();
        let addr = server.listen_addrs()[0].to_string();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        runtime.spawn(server.run(async {
            let _ = stopped.await;
        }));
        Self {
            addr,
            stop: Some(stop),
            runtime: Some(runtime),
        }
    }

    fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(Duration::from_secs(5));
        }
    }
}

impl Drop for Rendezvous {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A user's home, and its daemon while one runs (killed on drop).
struct User {
    home: PathBuf,
    daemon: Option<Child>,
}

impl User {
    fn init(root: &Path, dir: &str, name: &str) -> Self {
        let user = Self {
            home: root.join(dir),
            daemon: None,
        };
        let out = user.run(&["init", "--name", name]);
        assert!(out.status.success(), "init {name}: {}", stderr(&out));
        user
    }

    fn command(&self) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_palaver"));
        command
            .arg("--home")
            .arg(&self.home)
            .env_remove("PALAVER_PASSPHRASE");
        command
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command().args(args).output().unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn json(&self, args: &[&str]) -> Vec<Value> {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        self.ok(&all)
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }

    /// Like [`User::json`], `None` if the command fails (a conversation not there yet).
    fn try_json(&self, args: &[&str]) -> Option<Vec<Value>> {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.run(&all);
        out.status.success().then(|| {
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter_map(|line| serde_json::from_str(line).ok())
                .collect()
        })
    }

    /// Starts `palaver daemon ARGS…` and waits until it answers `status`.
    fn start(&mut self, args: &[&str]) {
        let child = self
            .command()
            .arg("daemon")
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.daemon = Some(child);
        self.wait_for("the daemon to answer", |user| {
            user.run(&["status"]).status.success().then_some(())
        });
    }

    fn start_at(&mut self, rendezvous: &str) {
        self.start(&[
            "--rendezvous",
            rendezvous,
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
        ]);
    }

    fn status(&self) -> Value {
        self.json(&["status"]).remove(0)
    }

    fn wait_logged_in(&self) {
        self.wait_for("the login", |user| {
            (user.status()["rendezvous"]["logged_in"] == true).then_some(())
        });
    }

    fn wait_for<T>(&self, what: &str, mut check: impl FnMut(&Self) -> Option<T>) -> T {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(value) = check(self) {
                return value;
            }
            assert!(Instant::now() < deadline, "gave up waiting for {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, and the daemon's exit status.
    fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.daemon.take().unwrap();
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        child.wait().unwrap()
    }
}

impl Drop for User {
    fn drop(&mut self) {
        if let Some(mut child) = self.daemon.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A rendezvous and two users logged in at it (the directory holds them all).
fn alice_and_bob() -> (tempfile::TempDir, Rendezvous, User, User) {
    let dir = tempfile::tempdir().unwrap();
    let server = Rendezvous::start(&dir.path().join("rv"), |_| {});
    let mut alice = User::init(dir.path(), "alice", "alice");
    let mut bob = User::init(dir.path(), "bob", "bob");
    alice.start_at(&server.addr);
    bob.start_at(&server.addr);
    alice.wait_logged_in();
    bob.wait_logged_in();
    (dir, server, alice, bob)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// An error the CLI prints: one line, `error: …`, exit code non-zero.
fn error_of(out: &Output) -> String {
    assert!(!out.status.success(), "expected a failure");
    let err = stderr(out);
    assert!(err.starts_with("error: "), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    err
}

/// Nobody listens on the discard port: a daemon pointed there starts and keeps trying.
const NO_RENDEZVOUS: &str = "/ip4/127.0.0.1/tcp/9";

#[test]
fn a_refused_registration_shows_in_status_and_send_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let server = Rendezvous::start(&dir.path().join("rv"), |config| {
        config.registration_tokens = vec!["sesame".into()];
    });
    let mut frank = User::init(dir.path(), "frank", "frank");
    frank.start_at(&server.addr);
    let refused = frank.wait_for("the refusal", |user| {
        user.status()["rendezvous"]["refused"]
            .as_str()
            .map(str::to_owned)
    });
    assert!(
        refused.starts_with("registration token required"),
        "{refused}"
    );
    let human = frank.ok(&["status"]);
    assert!(human.contains(&format!("refused: {refused}")), "{human}");
    assert!(human.contains("--registration-token"), "{human}");

    let err = error_of(&frank.run(&["send", "bob", "hello"]));
    assert!(err.contains("registration token required"), "{err}");
    assert!(!err.contains("try again shortly"), "{err}");
}

#[test]
fn a_name_held_by_another_key_is_shown_verbatim_without_debug_formatting() {
    let dir = tempfile::tempdir().unwrap();
    let server = Rendezvous::start(&dir.path().join("rv"), |_| {});
    let mut first = User::init(dir.path(), "first", "frank");
    first.start_at(&server.addr);
    first.wait_logged_in();
    let mut second = User::init(dir.path(), "second", "frank");
    second.start_at(&server.addr);
    let refused = second.wait_for("the refusal", |user| {
        user.status()["rendezvous"]["refused"]
            .as_str()
            .map(str::to_owned)
    });
    assert_eq!(
        refused,
        "name bound to another key: the name frank is registered to another key"
    );
    let human = second.ok(&["status"]);
    assert!(!human.contains("UserName("), "{human}");
    assert!(!human.contains("register first"), "{human}");
}

#[test]
fn a_daemon_error_is_printed_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut alice = User::init(dir.path(), "alice", "alice");
    alice.start_at(NO_RENDEZVOUS);
    let out = alice.run(&["send", "bob", ""]);
    assert_eq!(error_of(&out), "error: empty message\n");
}

/// A script polling `history` while the daemon starts must never make the daemon exit with "the
/// store is in use" (it did in 4 of 10 trials).
#[test]
fn history_polled_while_the_daemon_starts_never_stops_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut alice = User::init(dir.path(), "alice", "alice");
    for trial in 0..10 {
        let mut daemon = alice
            .command()
            .args(["daemon", "--rendezvous", NO_RENDEZVOUS])
            .args(["--listen", "/ip4/127.0.0.1/tcp/0"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // History, as fast as it goes, until the daemon answers (and a few more after that).
        let mut answered = 0;
        let deadline = Instant::now() + PATIENCE;
        while answered < 3 {
            let out = alice.run(&["history", "--with", "bob"]);
            let err = stderr(&out);
            // No conversation with bob yet: that error, or any success, is a fine answer.
            assert!(
                out.status.success() || err.contains("no conversation with bob"),
                "trial {trial}: {err}"
            );
            if let Some(status) = daemon.try_wait().unwrap() {
                let mut log = String::new();
                std::io::Read::read_to_string(&mut daemon.stderr.take().unwrap(), &mut log)
                    .unwrap();
                panic!("trial {trial}: the daemon exited ({status}) while history ran:\n{log}");
            }
            if alice.run(&["status"]).status.success() {
                answered += 1;
            }
            assert!(Instant::now() < deadline, "trial {trial}: no answer");
        }
        alice.daemon = Some(daemon);
        assert!(alice.stop().success(), "trial {trial}");
    }
}

#[test]
fn conversations_are_listed_by_the_daemon_and_without_it() {
    let (_dir, _server, mut alice, _bob) = alice_and_bob();
    alice.ok(&["send", "bob", "first words"]);
    let list = alice.json(&["conversations"]);
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["conversation"], "bob");
    assert_eq!(list[0]["last_text"], "first words");
    assert!(alice.ok(&["conversations"]).contains("first words"));
    assert!(alice.stop().success());
    assert_eq!(alice.json(&["conversations"]), list, "read from the store");
}

/// A sender cannot drive the reader's terminal: escape sequences in a message are shown defused
/// by `history` and `conversations`; `--json` keeps the exact text.
#[test]
fn control_characters_in_a_message_are_defused_in_plain_output_and_kept_in_json() {
    let (_dir, _server, alice, bob) = alice_and_bob();
    let hostile = "look\u{1b}]0;pwned\u{7}\u{1b}[2J here";
    alice.ok(&["send", "bob", hostile]);
    let history = bob.wait_for("the message at bob", |bob| {
        let history = bob.try_json(&["history", "--with", "alice"])?;
        (!history.is_empty()).then_some(history)
    });
    assert_eq!(history[0]["text"], hostile, "--json keeps the exact text");
    for args in [&["history", "--with", "alice"][..], &["conversations"][..]] {
        let shown = bob.ok(args);
        assert!(
            !shown.contains('\u{1b}') && !shown.contains('\u{7}'),
            "{shown:?}"
        );
        assert!(shown.contains("look\u{fffd}]0;pwned"), "{shown:?}");
    }
}

/// `send --id`: a retried send (the first one's answer lost, say) sends nothing new, also after a
/// daemon restart; a key reused for another text is refused.
#[test]
fn a_send_repeated_with_the_same_id_sends_one_message() {
    let (_dir, _server, mut alice, bob) = alice_and_bob();
    let send = |alice: &User| {
        alice
            .ok(&["send", "bob", "only once", "--id", "retry-7"])
            .trim()
            .to_owned()
    };
    let id = send(&alice);
    assert_eq!(id.len(), 64, "{id}");
    assert_eq!(send(&alice), id);
    assert!(alice.stop().success());
    alice.start(&[]);
    assert_eq!(send(&alice), id, "remembered across a restart");
    let err = error_of(&alice.run(&["send", "bob", "something else", "--id", "retry-7"]));
    assert!(err.contains("already used"), "{err}");
    let history = alice.json(&["history", "--with", "bob"]);
    assert_eq!(history.len(), 1, "{history:?}");
    bob.wait_for("the message at bob", |bob| {
        let history = bob.try_json(&["history", "--with", "alice"])?;
        (history.len() == 1 && history[0]["id"] == id.as_str()).then_some(())
    });
}

#[test]
fn send_reads_the_text_from_stdin_or_a_file() {
    let (dir, _server, alice, _bob) = alice_and_bob();
    let mut piped = alice
        .command()
        .args(["send", "bob", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    piped
        .stdin
        .take()
        .unwrap()
        .write_all(b"from a pipe\nsecond line\n")
        .unwrap();
    let out = piped.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let file = dir.path().join("letter.txt");
    std::fs::write(&file, "from a file").unwrap();
    alice.ok(&["send", "bob", "--file", file.to_str().unwrap()]);
    std::fs::write(&file, "x".repeat(70_000)).unwrap();
    let err = error_of(&alice.run(&["send", "bob", "--file", file.to_str().unwrap()]));
    assert!(err.contains("65536"), "{err}");
    let texts: Vec<Value> = alice
        .json(&["history", "--with", "bob"])
        .into_iter()
        .map(|e| e["text"].clone())
        .collect();
    assert_eq!(texts, ["from a pipe\nsecond line", "from a file"]);
}

/// With the rendezvous down, `presence` shows what was last known, marked stale; a user the
/// rendezvous does not know is an error.
#[test]
fn presence_is_last_known_and_stale_while_the_rendezvous_is_down() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Rendezvous::start(&dir.path().join("rv"), |_| {});
    let mut alice = User::init(dir.path(), "alice", "alice");
    let mut bob = User::init(dir.path(), "bob", "bob");
    alice.start_at(&server.addr);
    bob.start_at(&server.addr);
    alice.wait_logged_in();
    bob.wait_logged_in();
    let fresh = alice.json(&["presence", "bob"]);
    assert_eq!(fresh[0]["state"], "online");
    assert_eq!(fresh[0]["stale"], false);
    let err = error_of(&alice.run(&["presence", "nosuchuser"]));
    assert!(err.contains("unknown user nosuchuser"), "{err}");

    server.stop();
    alice.wait_for("the rendezvous to be gone", |alice| {
        (alice.status()["rendezvous"]["connected"] == false).then_some(())
    });
    let stale = alice.json(&["presence", "bob"]);
    assert_eq!(stale[0]["name"], "bob");
    assert_eq!(stale[0]["state"], "online", "the last known state");
    assert_eq!(stale[0]["stale"], true);
    assert!(alice.ok(&["presence", "bob"]).contains("stale"));
    // Restarted while the rendezvous is still down, the daemon still knows the last state.
    assert!(bob.stop().success());
    assert!(alice.stop().success());
    alice.start(&[]);
    let stale = alice.json(&["presence", "bob"]);
    assert_eq!(stale[0]["state"], "online", "{stale:?}");
    assert_eq!(stale[0]["stale"], true);
}

#[test]
fn listen_addresses_are_remembered_for_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut alice = User::init(dir.path(), "alice", "alice");
    alice.start(&[
        "--rendezvous",
        NO_RENDEZVOUS,
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
    ]);
    assert!(alice.stop().success());
    alice.start(&[]);
    let listen = alice.wait_for("a listen address", |alice| {
        let status = alice.status();
        let listen = status["listen"].as_array()?.clone();
        (!listen.is_empty()).then_some(listen)
    });
    for addr in &listen {
        assert!(
            addr.as_str().unwrap().starts_with("/ip4/127.0.0.1/tcp/"),
            "{listen:?}"
        );
    }
}

#[test]
fn bad_input_at_the_command_line_gets_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("h");
    let user = User {
        home: home.clone(),
        daemon: None,
    };
    for name in [".", "..", "-dash"] {
        let err = error_of(&user.run(&["init", &format!("--name={name}")]));
        assert!(err.contains("must start with"), "{name}: {err}");
    }
    let empty = dir.path().join("empty-passphrase");
    std::fs::write(&empty, "\n").unwrap();
    let err = error_of(&user.run(&[
        "--passphrase-file",
        empty.to_str().unwrap(),
        "init",
        "--name",
        "ann",
    ]));
    assert!(err.contains("empty"), "{err}");
    assert!(
        !home.join("identity.key").exists(),
        "no identity was created"
    );

    let ann = User::init(dir.path(), "ann", "ann");
    let out = ann.run(&["daemon", "--rendezvous", "garbage"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("/ip4/203.0.113.7/tcp/4001"), "{err}");
    let out = ann.run(&["daemon", "--rendezvous", "127.0.0.1:4001"]);
    assert!(stderr(&out).contains("write /ip4/127.0.0.1/tcp/4001"));
}

/// Members of a public room are not announced: those we heard from are shown, not "nobody".
#[test]
fn a_public_room_lists_the_members_who_posted() {
    let dir = tempfile::tempdir().unwrap();
    let server = Rendezvous::start(&dir.path().join("rv"), |_| {});
    let mut users: Vec<User> = ["ann", "ben", "cat"]
        .into_iter()
        .map(|name| User::init(dir.path(), name, name))
        .collect();
    for user in &mut users {
        user.start_at(&server.addr);
    }
    for user in &users {
        user.wait_logged_in();
    }
    // It says it is open to anyone, at creation and at every join.
    let created = users[0].ok(&["room", "create", "plaza", "--public"]);
    assert!(created.contains("anyone who knows its name"), "{created}");
    for user in &users[1..] {
        let joined = user.ok(&["room", "join", "plaza", "--public"]);
        assert!(joined.contains("anyone who knows its name"), "{joined}");
    }
    for (user, text) in users.iter().zip(["from ann", "from ben", "from cat"]) {
        user.ok(&["room", "send", "plaza", text]);
    }
    let deadline = Instant::now() + PATIENCE;
    while users[0].json(&["history", "--room", "plaza"]).len() < 3 {
        if Instant::now() > deadline {
            for user in &users {
                eprintln!(
                    "{:?}: {:?}",
                    user.home,
                    user.json(&["history", "--room", "plaza"])
                );
                eprintln!("{:?}: {:?}", user.home, user.json(&["peers"]));
            }
            panic!("gave up");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // A member first heard in the room is named once the rendezvous answers who holds its key,
    // a moment after its message is in the history.
    let names = || {
        let mut names: Vec<String> = users[0]
            .json(&["room", "members", "plaza"])
            .iter()
            .map(|m| m["name"].as_str().unwrap().to_owned())
            .collect();
        names.sort();
        names
    };
    let deadline = Instant::now() + PATIENCE;
    while names() != ["ann", "ben", "cat"] && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(names(), ["ann", "ben", "cat"]);
    let rooms = users[0].json(&["room", "list"]);
    assert_eq!(rooms[0]["members"], 3, "{rooms:?}");
}

/// Leaving a public room and joining it again starts a new sender chain (a new random key id):
/// the old one from index 0 again would repeat its message keys under the constant nonce, and
/// the others would drop the new messages as replays.
#[test]
fn a_member_who_leaves_a_public_room_and_joins_again_is_read_again() {
    let dir = tempfile::tempdir().unwrap();
    let server = Rendezvous::start(&dir.path().join("rv"), |_| {});
    let mut users: Vec<User> = ["ann", "ben"]
        .into_iter()
        .map(|name| User::init(dir.path(), name, name))
        .collect();
    for user in &mut users {
        user.start_at(&server.addr);
    }
    for user in &users {
        user.wait_logged_in();
    }
    let (ann, ben) = (&users[0], &users[1]);
    let reads = |text: &str| {
        let deadline = Instant::now() + PATIENCE;
        while !ann
            .json(&["history", "--room", "plaza"])
            .iter()
            .any(|m| m["text"] == text)
        {
            assert!(Instant::now() < deadline, "ann never read {text:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    ann.ok(&["room", "create", "plaza", "--public"]);
    ben.ok(&["room", "join", "plaza", "--public"]);
    ben.ok(&["room", "send", "plaza", "first time"]);
    reads("first time");
    ben.ok(&["room", "leave", "plaza"]);
    ben.ok(&["room", "join", "plaza", "--public"]);
    ben.ok(&["room", "send", "plaza", "back again"]);
    reads("back again");
}
