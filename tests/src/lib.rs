//! Helpers for the workspace-level tests: run the real `palaver-rendezvous` and `palaver` binaries
//! as separate processes on 127.0.0.1, drive them through the CLI, and clean up on drop.
//!
//! The binaries are built once per test process (`cargo build --workspace --tests`, which builds
//! them for the packages' own tests), so a test never runs a stale binary, whichever way the tests
//! were started.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::Value;

/// Every wait in these tests gives up after this long.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// The longest a single CLI command may take (the CLI itself gives up on a silent daemon after
/// 30 s).
pub const COMMAND_PATIENCE: Duration = Duration::from_secs(45);

/// Waits up to `patience` for `child` to exit; one still running then is killed (`None`).
fn exit_within(child: &mut Child, patience: Duration) -> std::io::Result<Option<ExitStatus>> {
    let deadline = Instant::now() + patience;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Reads a child's pipe to its end on a thread of its own.
fn read_all(pipe: Option<impl std::io::Read + Send + 'static>) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut bytes);
        }
        bytes
    })
}

struct Bins {
    palaver: PathBuf,
    rendezvous: PathBuf,
}

fn bins() -> &'static Bins {
    static BINS: OnceLock<Bins> = OnceLock::new();
    BINS.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = Command::new(cargo);
        // What cargo sets for a test process (its package's CARGO_PKG_*, the library path) is
        // not what it had when it built: some build scripts (ring's) watch such variables, and
        // would run again, with everything after them, here and then again in the next build.
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy();
            if name == "LD_LIBRARY_PATH"
                || name == "OUT_DIR"
                || name == "CARGO_PRIMARY_PACKAGE"
                || name == "CARGO_TARGET_TMPDIR"
                || [
                    "CARGO_PKG_",
                    "CARGO_MANIFEST_",
                    "CARGO_CRATE_",
                    "CARGO_BIN_",
                ]
                .iter()
                .any(|prefix| name.starts_with(prefix))
            {
                build.env_remove(name.as_ref());
            }
        }
        let status = build
            // `--workspace --tests` resolves features as `cargo test --workspace` does, so under
            // it this build finds everything fresh instead of compiling a second feature set.
            .args(["build", "--workspace", "--tests"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("running cargo build");
        assert!(status.success(), "building the binaries failed");
        // target/debug/deps/<this test> → target/debug
        let dir = std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent()?.parent().map(Path::to_path_buf))
            .expect("locating the target directory");
        Bins {
            palaver: dir.join("palaver"),
            rendezvous: dir.join("palaver-rendezvous"),
        }
    })
}

/// A command that runs the `palaver-rendezvous` binary (built first), for tests that start it
/// their own way (the NAT lab starts it inside a network namespace).
pub fn rendezvous_command() -> Command {
    Command::new(&bins().rendezvous)
}

/// Polls `check` until it returns `Some`, for at most [`PATIENCE`].
pub fn wait_for<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> anyhow::Result<T> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(value) = check() {
            return Ok(value);
        }
        if Instant::now() > deadline {
            bail!("gave up waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A `palaver-rendezvous` process; killed on drop.
#[derive(Debug)]
pub struct Rendezvous {
    child: Child,
    pub addr: String,
    pub data: PathBuf,
}

impl Rendezvous {
    pub fn start(data: &Path) -> anyhow::Result<Self> {
        Self::start_at(data, "/ip4/127.0.0.1/tcp/0")
    }

    /// Starts on a given listen address (to restart a server where its clients expect it).
    pub fn start_at(data: &Path, listen: &str) -> anyhow::Result<Self> {
        Self::start_with(data, listen, &[])
    }

    /// Starts with `extra` flags (`--store postgres://…`, say).
    pub fn start_with(data: &Path, listen: &str, extra: &[&str]) -> anyhow::Result<Self> {
        let mut child = Command::new(&bins().rendezvous)
            .args(["--listen", listen, "--data"])
            .arg(data)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting palaver-rendezvous")?;
        let stdout = child.stdout.take().context("rendezvous stdout")?;
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .context("reading the rendezvous address")?;
        let addr = line.trim().to_owned();
        if !addr.contains("/p2p/") {
            let _ = child.kill();
            bail!("the rendezvous printed {addr:?} instead of its address");
        }
        Ok(Self {
            child,
            addr,
            data: data.to_path_buf(),
        })
    }

    /// The TCP listen address without the `/p2p/…` suffix.
    pub fn listen_addr(&self) -> String {
        self.addr
            .split("/p2p/")
            .next()
            .unwrap_or_default()
            .to_owned()
    }

    /// SIGKILL: no flush, no goodbye.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Rendezvous {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A user: a home directory, and its daemon process while it runs (killed on drop).
#[derive(Debug)]
pub struct User {
    pub name: String,
    pub home: PathBuf,
    daemon: Option<Child>,
}

impl User {
    /// `palaver init --name NAME` in `root/NAME`.
    pub fn init(root: &Path, name: &str) -> anyhow::Result<Self> {
        Self::init_with_env(root, name, &[])
    }

    /// [`User::init`] with extra environment (`PALAVER_PASSPHRASE`, say).
    pub fn init_with_env(root: &Path, name: &str, env: &[(&str, &str)]) -> anyhow::Result<Self> {
        let user = Self {
            name: name.to_owned(),
            home: root.join(name),
            daemon: None,
        };
        let out = user
            .command()
            .envs(env.iter().copied())
            .args(["init", "--name", name])
            .output()?;
        if !out.status.success() {
            bail!("init {name}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(user)
    }

    /// A user whose home is already there (made by hand, copied), no daemon running.
    pub fn at_home(name: &str, home: PathBuf) -> Self {
        Self {
            name: name.to_owned(),
            home,
            daemon: None,
        }
    }

    pub fn command(&self) -> Command {
        let mut command = Command::new(&bins().palaver);
        command
            .arg("--home")
            .arg(&self.home)
            .env_remove("PALAVER_PASSPHRASE");
        command
    }

    /// Runs a CLI command to completion; one still running after [`COMMAND_PATIENCE`] is killed
    /// and fails the test, so a stuck daemon shows up as a failure rather than a hung run.
    pub fn run(&self, args: &[&str]) -> Output {
        let mut child = self
            .command()
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("running palaver");
        let stdout = read_all(child.stdout.take());
        let stderr = read_all(child.stderr.take());
        let Some(status) = exit_within(&mut child, COMMAND_PATIENCE).expect("waiting for palaver")
        else {
            panic!(
                "{}: `palaver {}` did not finish within {COMMAND_PATIENCE:?}",
                self.name,
                args.join(" ")
            );
        };
        Output {
            status,
            stdout: stdout.join().unwrap_or_default(),
            stderr: stderr.join().unwrap_or_default(),
        }
    }

    /// Runs a CLI command that must succeed, returning its stdout.
    pub fn ok(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.run(args);
        if !out.status.success() {
            bail!(
                "{} {args:?}: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs a `--json` command, parsing JSON lines.
    pub fn json(&self, args: &[&str]) -> anyhow::Result<Vec<Value>> {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        self.ok(&all)?
            .lines()
            .filter(|line| !line.trim().is_empty())
            .map(|line| serde_json::from_str(line).with_context(|| format!("parsing {line:?}")))
            .collect()
    }

    /// Starts the daemon and waits until it is logged in at `rendezvous`.
    pub fn start(&mut self, rendezvous: &str) -> anyhow::Result<()> {
        self.start_with_env(rendezvous, &[])
    }

    /// Like [`User::start`], with extra environment (the daemon's fault hooks, say).
    pub fn start_with_env(&mut self, rendezvous: &str, env: &[(&str, &str)]) -> anyhow::Result<()> {
        self.start_at_instances(&[rendezvous], env)
    }

    /// Starts the daemon with several `--rendezvous` instances (the first preferred) and waits
    /// until it is logged in at one.
    pub fn start_at_instances(
        &mut self,
        instances: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<()> {
        self.start_at_instances_with(instances, env, &[])
    }

    /// [`User::start_at_instances`] with more daemon flags.
    pub fn start_at_instances_with(
        &mut self,
        instances: &[&str],
        env: &[(&str, &str)],
        flags: &[&str],
    ) -> anyhow::Result<()> {
        let child = self
            .command()
            .envs(env.iter().copied())
            .arg("daemon")
            .args(instances.iter().flat_map(|addr| ["--rendezvous", addr]))
            .args(["--listen", "/ip4/127.0.0.1/tcp/0"])
            .args(flags)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting the daemon")?;
        self.daemon = Some(child);
        self.wait_logged_in()
    }

    /// Starts the daemon under `wrapper` (a command that ends by running the rest of its
    /// arguments: `unshare -m sh -c '…; exec "$@"' sh`, say), with more daemon flags.
    pub fn start_wrapped(
        &mut self,
        rendezvous: &str,
        wrapper: &[&str],
        flags: &[&str],
    ) -> anyhow::Result<()> {
        let (program, wrapper_args) = wrapper.split_first().context("an empty wrapper")?;
        let child = Command::new(program)
            .args(wrapper_args)
            .arg(&bins().palaver)
            .arg("--home")
            .arg(&self.home)
            .env_remove("PALAVER_PASSPHRASE")
            .args(["daemon", "--rendezvous", rendezvous])
            .args(["--listen", "/ip4/127.0.0.1/tcp/0"])
            .args(flags)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting the wrapped daemon")?;
        self.daemon = Some(child);
        self.wait_logged_in()
    }

    pub fn wait_logged_in(&self) -> anyhow::Result<()> {
        wait_for(&format!("{} to log in", self.name), || {
            let status = self.json(&["status"]).ok()?;
            (status.first()?["rendezvous"]["logged_in"] == Value::Bool(true)).then_some(())
        })
    }

    /// SIGKILL the daemon: what a crash or a power cut looks like to it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.daemon.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// A clean stop (SIGTERM), waiting for the daemon to flush and exit.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.daemon.take() {
            let pid = child.id().to_string();
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .context("kill -TERM")?;
            if exit_within(&mut child, PATIENCE)?.is_none() {
                bail!("{}'s daemon did not stop on SIGTERM", self.name);
            }
        }
        Ok(())
    }

    /// Sends a direct message; its id.
    pub fn send(&self, to: &str, text: &str) -> anyhow::Result<String> {
        Ok(self.ok(&["send", to, text])?.trim().to_owned())
    }

    pub fn history_with(&self, other: &str) -> anyhow::Result<Vec<Value>> {
        self.json(&["history", "--with", other, "--limit", "1000"])
    }

    pub fn room_history(&self, room: &str) -> anyhow::Result<Vec<Value>> {
        self.json(&["history", "--room", room, "--limit", "1000"])
    }

    /// Waits for the invitation to `room`, then joins it.
    pub fn accept_invitation(&self, room: &str) -> anyhow::Result<()> {
        wait_for(&format!("{} to be invited to {room}", self.name), || {
            let rooms = self.json(&["room", "list"]).ok()?;
            rooms.iter().any(|r| r["room"] == room).then_some(())
        })?;
        self.ok(&["room", "join", room]).map(drop)
    }

    /// Waits until `room`'s history holds every text in `wanted`; the error names those missing.
    pub fn wait_room_texts(&self, room: &str, wanted: &[impl AsRef<str>]) -> anyhow::Result<()> {
        let missing = || {
            let have = texts(&self.room_history(room).unwrap_or_default());
            wanted
                .iter()
                .map(AsRef::as_ref)
                .filter(|t| !have.iter().any(|h| h == t))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        wait_for(&format!("{} to read {room}", self.name), || {
            missing().is_empty().then_some(())
        })
        .map_err(|err| anyhow::anyhow!("{err}; missing {:?}", missing()))
    }

    /// Waits until message `id` has `status` in the conversation with `other`.
    pub fn wait_status(&self, other: &str, id: &str, status: &str) -> anyhow::Result<()> {
        wait_for(&format!("{id} to be {status} at {}", self.name), || {
            let history = self.history_with(other).ok()?;
            history
                .iter()
                .any(|e| e["id"] == id && e["status"] == status)
                .then_some(())
        })
    }
}

impl Drop for User {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Initialises and starts a user for each name, all logged in at `rendezvous`.
pub fn started_users(
    root: &Path,
    rendezvous: &str,
    names: &[impl AsRef<str>],
) -> anyhow::Result<Vec<User>> {
    names
        .iter()
        .map(|name| {
            let mut user = User::init(root, name.as_ref())?;
            user.start(rendezvous)?;
            Ok(user)
        })
        .collect()
}

/// The texts of a conversation's history, in order.
pub fn texts(history: &[Value]) -> Vec<String> {
    history
        .iter()
        .map(|e| e["text"].as_str().unwrap_or_default().to_owned())
        .collect()
}
