//! The NAT lab: the real `palaver-rendezvous` and `palaver` binaries in Linux network namespaces
//! behind nftables NATs (the `patchbay` crate), driven through the CLI like a user would.
//!
//! Topology: a public network ("dc", no NAT) holds the rendezvous (which is also the relay);
//! peers sit behind home routers (endpoint-independent mapping, address-and-port-dependent
//! filtering: `RouterPreset::Home`), behind a symmetric carrier NAT (endpoint-dependent mapping
//! with random ports: `RouterPreset::IspCgnatSymmetric`), or in the public network. Scenarios:
//!
//! - `home_nats`: two peers behind home NATs. The first message goes over the relay, DCUtR then
//!   punches a direct connection within seconds, the relayed one is closed, and later messages
//!   go direct (the relay's byte counter does not move while they travel).
//! - `symmetric_nat`: one peer behind a home NAT, one behind a symmetric NAT. Hole punching
//!   cannot work, so everything goes over the relay — and keeps going. The relay here is set to
//!   cut every circuit after 10 s or 16 KiB (reservations last 20 s): what "several minutes of
//!   chat" would do to a relay sized like libp2p's defaults (2 min, 128 KiB), compressed into
//!   seconds. Messages flow both ways for 30 s across those cut-offs; every one must arrive and be
//!   acknowledged, and the peers must never claim a direct connection.
//! - `public_and_restart`: one public peer, one behind a home NAT. The public peer learns through
//!   AutoNAT that it is reachable (and holds no relay slot); the NATed one is reached over the
//!   relay and then directly. The rendezvous is killed mid-conversation: the direct conversation
//!   goes on, both peers log back in when it returns, the NATed peer takes a relay slot again,
//!   and a newcomer behind another NAT reaches it through the restarted relay.
//!
//! - `network_change`: two peers behind home NATs talk directly; then one moves to another
//!   network (its interface is replugged behind a third home router: new address, new NAT). It
//!   notices its address went away, reconnects, logs in, takes a relay slot again, and the two
//!   reach each other again — relayed, then direct — without restarting anything.
//!
//! - `relayed_file`: a 20 MiB file from a peer behind a home NAT to one behind a symmetric NAT,
//!   so over the relay all the way, through a relay that cuts each circuit after 8 MiB: the
//!   fetch ends at each cut-off and resumes over a new circuit from its last verified chunk,
//!   and the file arrives byte-identical.
//!
//! Each scenario reports the time to the first message (send → the recipient's `listen` event)
//! and the time to a direct connection (send → the sender's `listen` event saying `direct`).
//!
//! Runs as its own test binary (`harness = false`): `patchbay::init_userns()` must run before any
//! thread starts. It needs `nft` and `tc` (Debian's `nftables` and `iproute2`): without them it
//! says so loudly and skips, unless `PALAVER_REQUIRE_NATLAB=1` (set by `.ci/run`), which makes it
//! fail instead (there, as real root, it also runs without a user namespace if it cannot make
//! one). Arguments that do not start with `-` select scenarios by name. With
//! `NATLAB_KEEP=1` the logs (one per process, and each peer's `listen` events) are kept; otherwise
//! they are printed on failure. `NATLAB_VERBOSE=1` prints the peers' events around the key moments.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use palaver_tests::{User, rendezvous_command};
use patchbay::{Device, Lab, RouterPreset};
use serde_json::Value;

type Scenario = fn(&tokio::runtime::Runtime, &Path) -> anyhow::Result<Report>;

const SCENARIOS: &[(&str, Scenario)] = &[
    ("home_nats", home_nats),
    ("symmetric_nat", symmetric_nat),
    ("public_and_restart", public_and_restart),
    ("network_change", network_change),
    ("relayed_file", relayed_file),
];

/// The rendezvous' ports inside its namespace.
const RENDEZVOUS_PORT: u16 = 4001;
const METRICS_PORT: u16 = 9464;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let filters: Vec<&str> = args
        .iter()
        .map(String::as_str)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let selected: Vec<&(&str, Scenario)> = SCENARIOS
        .iter()
        .filter(|(name, _)| filters.is_empty() || filters.iter().any(|f| name.contains(f)))
        .collect();
    if args.iter().any(|a| a == "--list") {
        for (name, _) in &selected {
            println!("{name}: test");
        }
        return ExitCode::SUCCESS;
    }
    if selected.is_empty() {
        return ExitCode::SUCCESS;
    }
    if let Err(missing) = lab_tools() {
        return skip(&missing);
    }
    // Before any thread: the lab's namespaces live in this user namespace.
    if let Err(err) = patchbay::init_userns() {
        // Real root may build the lab without one; only where the lab is required (CI, in a
        // throwaway machine), since patchbay's mounts are then not confined to a namespace.
        if !(required() && is_root()) {
            return skip(&format!("cannot enter a user namespace: {err:#}"));
        }
        eprintln!("natlab: no user namespace ({err:#}); running as real root");
        let _ = REAL_ROOT.set(true);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("natlab: tokio runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let mut reports = Vec::new();
    let mut failed = false;
    let total = selected.len();
    for (name, scenario) in selected {
        println!("natlab: {name} ...");
        let dir = match tempfile::Builder::new().prefix("natlab-").tempdir() {
            Ok(dir) => dir,
            Err(err) => {
                eprintln!("natlab: temp dir: {err}");
                return ExitCode::FAILURE;
            }
        };
        let started = Instant::now();
        match scenario(&runtime, dir.path()) {
            Ok(report) => {
                println!(
                    "natlab: {name} ok ({:.0} s)",
                    started.elapsed().as_secs_f64()
                );
                reports.push(report);
            }
            Err(err) => {
                failed = true;
                eprintln!("natlab: {name} FAILED: {err:#}");
                print_logs(dir.path());
            }
        }
        if std::env::var("NATLAB_KEEP").is_ok_and(|v| v == "1") {
            let kept = dir.keep();
            println!("natlab: logs kept in {}", kept.display());
        }
    }
    if !reports.is_empty() {
        println!("\nnatlab results (times from `send`):");
        println!(
            "  {:<22} {:>14} {:>14}  notes",
            "scenario", "first message", "direct after"
        );
        for report in &reports {
            println!(
                "  {:<22} {:>14} {:>14}  {}",
                report.scenario,
                secs(Some(report.first_message)),
                secs(report.direct),
                report.notes.join("; ")
            );
        }
        println!();
    }
    // The plain closing line test summaries use.
    println!(
        "natlab: {} passed, {} failed",
        reports.len(),
        total - reports.len()
    );
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Set when the lab runs as real root, outside a user namespace.
static REAL_ROOT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

fn required() -> bool {
    std::env::var("PALAVER_REQUIRE_NATLAB").is_ok_and(|v| v == "1")
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|status| {
        status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().nth(1))
            == Some("0")
    })
}

fn skip(why: &str) -> ExitCode {
    let required = required();
    let bar = "!".repeat(78);
    eprintln!("\n{bar}\n!! NAT LAB NOT RUN: {why}");
    eprintln!("!! It needs `nft` and `tc` (Debian: apt-get install nftables iproute2) and user");
    eprintln!("!! namespaces. NAT traversal is untested on this machine.");
    if required {
        eprintln!("!! PALAVER_REQUIRE_NATLAB=1, so this is a failure.\n{bar}\n");
        ExitCode::FAILURE
    } else {
        eprintln!("!! Skipping (set PALAVER_REQUIRE_NATLAB=1 to make this fail).\n{bar}\n");
        ExitCode::SUCCESS
    }
}

/// `Ok` when `nft` and `tc` can be found where patchbay looks for them.
fn lab_tools() -> Result<(), String> {
    let on_path = |tool: &str| {
        std::env::var_os("PATH")
            .map(|path| std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()))
            .unwrap_or(false)
    };
    let mut missing = Vec::new();
    if !(Path::new("/usr/sbin/nft").is_file() || on_path("nft")) {
        missing.push("`nft` (nftables)");
    }
    if !on_path("tc") {
        missing.push("`tc` (iproute2) on PATH");
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!("missing {}", missing.join(" and ")))
    }
}

fn secs(d: Option<Duration>) -> String {
    match d {
        Some(d) => format!("{:.2} s", d.as_secs_f64()),
        None => "never".into(),
    }
}

/// What a scenario measured.
struct Report {
    scenario: &'static str,
    first_message: Duration,
    direct: Option<Duration>,
    notes: Vec<String>,
}

// ---- processes in namespaces --------------------------------------------------------------

fn log_file(dir: &Path, name: &str) -> anyhow::Result<(PathBuf, std::fs::File)> {
    let path = dir.join(format!("{name}.log"));
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    Ok((path, file))
}

fn print_logs(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut logs: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    logs.sort();
    for log in logs {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = &lines[lines.len().saturating_sub(60)..];
        eprintln!("---- {} (last {} lines)", log.display(), tail.len());
        for line in tail {
            eprintln!("{line}");
        }
    }
}

/// The rendezvous (and relay) in its namespace; killed on drop.
struct Server {
    name: &'static str,
    device: Device,
    child: Option<Child>,
    data: PathBuf,
    dir: PathBuf,
    extra: Vec<String>,
    /// `/ip4/<ip>/tcp/4001/p2p/<id>`
    addr: String,
}

impl Server {
    fn start(device: &Device, dir: &Path, extra: &[&str]) -> anyhow::Result<Self> {
        Self::start_named("rendezvous", device, dir, extra)
    }

    fn start_named(
        name: &'static str,
        device: &Device,
        dir: &Path,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        let mut server = Self {
            name,
            device: device.clone(),
            child: None,
            data: dir.join(format!("{name}-data")),
            dir: dir.to_path_buf(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            addr: String::new(),
        };
        server.launch()?;
        Ok(server)
    }

    fn launch(&mut self) -> anyhow::Result<()> {
        let ip = self
            .device
            .ip()
            .context("the rendezvous has no IPv4 address")?;
        let (_, log) = log_file(&self.dir, self.name)?;
        let mut command = rendezvous_command();
        command
            .args(["--listen", &format!("/ip4/0.0.0.0/tcp/{RENDEZVOUS_PORT}")])
            .args([
                "--listen",
                &format!("/ip4/0.0.0.0/udp/{RENDEZVOUS_PORT}/quic-v1"),
            ])
            .arg("--data")
            .arg(&self.data)
            .args(["--metrics", &format!("127.0.0.1:{METRICS_PORT}")])
            .args(&self.extra)
            .env("RUST_LOG", "info,libp2p_relay=debug")
            .stdout(Stdio::piped())
            .stderr(log);
        let mut child = self
            .device
            .spawn_command_sync(command)
            .context("starting palaver-rendezvous in its namespace")?;
        let stdout = child.stdout.take().context("rendezvous stdout")?;
        let wanted = format!("/ip4/{ip}/tcp/{RENDEZVOUS_PORT}/p2p/");
        let mut printed = Vec::new();
        let mut lines = BufReader::new(stdout).lines();
        for line in lines.by_ref() {
            let line = line.context("reading the rendezvous addresses")?;
            if line.starts_with(&wanted) {
                self.addr = line.trim().to_owned();
                break;
            }
            printed.push(line);
        }
        // Keep reading: a closed pipe would fail the server's next write.
        std::thread::spawn(move || lines.for_each(drop));
        self.child = Some(child);
        ensure!(
            !self.addr.is_empty(),
            "the rendezvous printed {printed:?}, none of them {wanted}…"
        );
        Ok(())
    }

    /// SIGKILL: a crash, no goodbye.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts again on the same address and data (so the same peer id).
    fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        let before = self.addr.clone();
        self.launch()?;
        ensure!(
            self.addr == before,
            "restarted as {} not {before}",
            self.addr
        );
        Ok(())
    }

    /// One metric's value (summed over its label sets) from `/metrics`.
    fn metric(&self, name: &str) -> anyhow::Result<f64> {
        let text = self
            .device
            .spawn_thread(|| {
                let mut stream = std::net::TcpStream::connect(("127.0.0.1", METRICS_PORT))?;
                stream.set_read_timeout(Some(Duration::from_secs(5)))?;
                stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: lab\r\n\r\n")?;
                let mut text = String::new();
                stream.read_to_string(&mut text)?;
                Ok(text)
            })?
            .join()
            .map_err(|_| anyhow::anyhow!("metrics thread panicked"))??;
        let mut total = 0.0;
        let mut found = false;
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((key, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let metric = key.split('{').next().unwrap_or_default();
            if metric == name {
                total += value.parse::<f64>().unwrap_or(0.0);
                found = true;
            }
        }
        ensure!(found, "no metric {name} in:\n{text}");
        Ok(total)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A user whose daemon runs in a lab namespace; its CLI runs here (the control socket is a
/// Unix socket on the shared file system, which does not care about network namespaces).
struct Peer {
    user: User,
    peer_id: String,
    device: Device,
    dir: PathBuf,
    daemon: Option<Child>,
    listen: Option<Events>,
}

impl Peer {
    fn new(dir: &Path, name: &str, device: &Device) -> anyhow::Result<Self> {
        let user = User::init(&dir.join("homes"), name)?;
        let peer_id = user
            .json(&["whoami"])?
            .first()
            .and_then(|me| me["peer_id"].as_str().map(str::to_owned))
            .context("whoami has no peer id")?;
        Ok(Self {
            user,
            peer_id,
            device: device.clone(),
            dir: dir.to_path_buf(),
            daemon: None,
            listen: None,
        })
    }

    fn name(&self) -> &str {
        &self.user.name
    }

    /// Starts the daemon (default listeners: TCP and QUIC on every interface), waits for login,
    /// and starts recording its `listen --json` events.
    fn start(&mut self, rendezvous: &str) -> anyhow::Result<()> {
        self.start_with(rendezvous, &[])
    }

    fn start_with(&mut self, rendezvous: &str, extra: &[&str]) -> anyhow::Result<()> {
        let (_, log) = log_file(&self.dir, &format!("node-{}", self.user.name))?;
        let mut command = self.user.command();
        command
            .args(["daemon", "--rendezvous", rendezvous])
            .args(extra)
            .env(
                "RUST_LOG",
                "info,palaver_node=debug,libp2p_tcp=debug,libp2p_dcutr=debug,libp2p_relay=debug,libp2p_autonat=debug",
            )
            .stdout(Stdio::null())
            .stderr(log);
        let child = self
            .device
            .spawn_command_sync(command)
            .context("starting the daemon in its namespace")?;
        self.daemon = Some(child);
        wait_until(
            &format!("{} to log in", self.name()),
            Duration::from_secs(20),
            || Ok(self.logged_in()),
        )?;
        self.listen = Some(Events::start(&self.user, &self.dir)?);
        Ok(())
    }

    fn status(&self) -> anyhow::Result<Value> {
        self.user
            .json(&["status"])?
            .into_iter()
            .next()
            .context("empty status")
    }

    fn logged_in(&self) -> bool {
        self.status()
            .is_ok_and(|s| s["rendezvous"]["logged_in"] == Value::Bool(true))
    }

    /// Whether the daemon listens through a relay (holds a slot).
    fn has_relay_slot(&self) -> bool {
        self.status().is_ok_and(|s| {
            s["listen"]
                .as_array()
                .is_some_and(|l| l.iter().any(|a| a.as_str().is_some_and(is_circuit)))
        })
    }

    /// How `peers --json` says we are connected to `other` (`None`: not connected).
    fn connection_to(&self, other: &Peer) -> anyhow::Result<Option<String>> {
        Ok(self
            .user
            .json(&["peers"])?
            .into_iter()
            .find(|p| p["peer_id"] == other.peer_id.as_str())
            .and_then(|p| p["connection"].as_str().map(str::to_owned)))
    }

    fn send(&self, to: &str, text: &str) -> anyhow::Result<String> {
        self.user.send(to, text)
    }

    fn events(&self) -> anyhow::Result<&Events> {
        self.listen.as_ref().context("not started")
    }

    /// Waits for a message with `text`; when it arrived.
    fn received(&self, text: &str, within: Duration) -> anyhow::Result<Instant> {
        self.events()?.wait(
            &format!("{} to receive {text:?}", self.name()),
            within,
            |e| e["type"] == "message" && e["text"] == text,
        )
    }

    /// Waits until every message in `ids` is delivered (acknowledged) in the conversation.
    fn all_delivered(&self, other: &str, ids: &[String], within: Duration) -> anyhow::Result<()> {
        wait_until(
            &format!(
                "{} messages from {} to be delivered",
                ids.len(),
                self.name()
            ),
            within,
            || {
                let history = self.user.history_with(other)?;
                Ok(ids.iter().all(|id| {
                    history
                        .iter()
                        .any(|e| e["id"] == id.as_str() && e["status"] == "delivered")
                }))
            },
        )
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.daemon.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.listen = None;
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Neither of `a` and `b` ever said it was connected to the other directly (a symmetric NAT
/// between them).
fn ensure_never_direct(a: &Peer, b: &Peer) -> anyhow::Result<()> {
    for (peer, other) in [(a, b), (b, a)] {
        let changes = peer.events()?.connection_changes(other);
        ensure!(
            changes.iter().all(|(_, kind)| kind != "direct"),
            "{} claimed a direct connection through a symmetric NAT: {changes:?}",
            peer.name()
        );
    }
    Ok(())
}

/// Waits until each of `peers` holds a relay slot.
fn wait_relay_slots(peers: &[&Peer]) -> anyhow::Result<()> {
    for peer in peers {
        wait_until(
            &format!("{} to hold a relay slot", peer.name()),
            Duration::from_secs(20),
            || Ok(peer.has_relay_slot()),
        )?;
    }
    Ok(())
}

/// Whether `e` is a `listen` event saying the connection to `peer` is now `kind`.
fn is_connection(e: &Value, peer: &Peer, kind: &str) -> bool {
    e["type"] == "connection" && e["peer_id"] == peer.peer_id.as_str() && e["connection"] == kind
}

fn is_circuit(addr: &str) -> bool {
    addr.contains("/p2p-circuit")
}

/// A `palaver listen --json` process, its events timestamped as they arrive.
struct Events {
    child: Child,
    started: Instant,
    seen: Arc<Mutex<Vec<(Instant, Value)>>>,
}

impl Events {
    /// Also appends each event, timestamped, to `<dir>/events-<name>.log`.
    fn start(user: &User, dir: &Path) -> anyhow::Result<Self> {
        let (_, mut log) = log_file(dir, &format!("events-{}", user.name))?;
        let mut child = user
            .command()
            .args(["--json", "listen"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("palaver listen")?;
        let stdout = child.stdout.take().context("listen stdout")?;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = writeln!(log, "{:?} {line}", std::time::SystemTime::now());
                if let Ok(event) = serde_json::from_str::<Value>(&line)
                    && let Ok(mut seen) = sink.lock()
                {
                    seen.push((Instant::now(), event));
                }
            }
        });
        Ok(Self {
            child,
            started: Instant::now(),
            seen,
        })
    }

    /// The first event matching `pred` (waiting for it); when it arrived.
    fn wait(
        &self,
        what: &str,
        within: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Instant> {
        self.wait_after(what, self.started, within, pred)
    }

    /// The first event since `since` matching `pred` (waiting for it); when it arrived.
    fn wait_after(
        &self,
        what: &str,
        since: Instant,
        within: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Instant> {
        wait_until(what, within, || Ok(self.find(since, &pred).is_some()))
            .and_then(|()| self.find(since, &pred).context(what.to_owned()))
    }

    fn find(&self, since: Instant, pred: &impl Fn(&Value) -> bool) -> Option<Instant> {
        let seen = self.seen.lock().ok()?;
        seen.iter()
            .find(|(at, e)| *at >= since && pred(e))
            .map(|(at, _)| *at)
    }

    /// The connection kinds announced for `peer`, in order, with when.
    fn connection_changes(&self, peer: &Peer) -> Vec<(Instant, String)> {
        let Ok(seen) = self.seen.lock() else {
            return Vec::new();
        };
        seen.iter()
            .filter(|(_, e)| e["type"] == "connection" && e["peer_id"] == peer.peer_id.as_str())
            .filter_map(|(at, e)| Some((*at, e["connection"].as_str()?.to_owned())))
            .collect()
    }
}

impl Events {
    /// With `NATLAB_VERBOSE=1`: prints the events seen, timed from `since`.
    fn dump(&self, who: &str, since: Instant) {
        if !std::env::var("NATLAB_VERBOSE").is_ok_and(|v| v == "1") {
            return;
        }
        let Ok(seen) = self.seen.lock() else { return };
        for (at, event) in seen.iter() {
            let t = if *at >= since {
                format!("+{:.3}", (*at - since).as_secs_f64())
            } else {
                format!("-{:.3}", (since - *at).as_secs_f64())
            };
            println!("  {who:>6} {t:>8} s  {event}");
        }
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `check` every 50 ms until it says yes, for at most `within`.
fn wait_until(
    what: &str,
    within: Duration,
    mut check: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    let mut last_error = None;
    loop {
        match check() {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(err) => last_error = Some(err),
        }
        if Instant::now() > deadline {
            match last_error {
                Some(err) => bail!("gave up after {within:?} waiting for {what} ({err:#})"),
                None => bail!("gave up after {within:?} waiting for {what}"),
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---- the network ---------------------------------------------------------------------------

/// A lab with the public network and the rendezvous' device in it.
struct Net {
    lab: Lab,
    dc: patchbay::Router,
}

impl Net {
    fn new(rt: &tokio::runtime::Runtime) -> anyhow::Result<Self> {
        rt.block_on(async {
            let mut builder = Lab::builder().outdir_from_env();
            if REAL_ROOT.get().copied().unwrap_or(false) {
                builder = builder.allow_real_root();
            }
            let lab = builder.build().await.context("creating the lab")?;
            let dc = lab
                .add_router("dc")
                .preset(RouterPreset::PublicV4)
                .build()
                .await?;
            Ok(Self { lab, dc })
        })
    }

    fn router(
        &self,
        rt: &tokio::runtime::Runtime,
        name: &str,
        preset: RouterPreset,
    ) -> anyhow::Result<patchbay::Router> {
        rt.block_on(self.lab.add_router(name).preset(preset).build())
    }

    fn device(
        &self,
        rt: &tokio::runtime::Runtime,
        name: &str,
        router: &patchbay::Router,
    ) -> anyhow::Result<Device> {
        rt.block_on(self.lab.add_device(name).uplink(router.id()).build())
    }
}

// ---- scenarios -----------------------------------------------------------------------------

/// Two peers behind home NATs: relay first, then direct, then direct only.
fn home_nats(rt: &tokio::runtime::Runtime, dir: &Path) -> anyhow::Result<Report> {
    let net = Net::new(rt)?;
    let home1 = net.router(rt, "home1", RouterPreset::Home)?;
    let home2 = net.router(rt, "home2", RouterPreset::Home)?;
    let rv = net.device(rt, "rv", &net.dc)?;
    let server = Server::start(&rv, dir, &[])?;
    let mut alice = Peer::new(dir, "alice", &net.device(rt, "alice", &home1)?)?;
    let mut bob = Peer::new(dir, "bob", &net.device(rt, "bob", &home2)?)?;
    alice.start(&server.addr)?;
    bob.start(&server.addr)?;
    wait_relay_slots(&[&alice, &bob])?;

    let sent = Instant::now();
    let first = alice.send("bob", "hello over the relay")?;
    let arrived = bob.received("hello over the relay", Duration::from_secs(20))?;
    let direct = alice.events()?.wait(
        "alice's connection to bob to become direct",
        Duration::from_secs(15),
        |e| is_connection(e, &bob, "direct"),
    )?;
    let changes = alice.events()?.connection_changes(&bob);
    ensure!(
        changes.first().is_some_and(|(_, kind)| kind == "relayed"),
        "alice's first connection to bob should be relayed: {changes:?}"
    );
    ensure!(
        server.metric("palaver_relay_bytes_total")? > 0.0,
        "the first message did not cross the relay"
    );
    alice.all_delivered("bob", &[first], Duration::from_secs(20))?;
    alice.events()?.dump("alice", sent);
    bob.events()?.dump("bob", sent);

    // The relayed connection is closed once the direct one is up; then nothing crosses the relay.
    wait_until(
        "the relayed connection to close",
        Duration::from_secs(15),
        || Ok(server.metric("palaver_relay_circuits")? == 0.0),
    )?;
    let relayed_before = server.metric("palaver_relay_bytes_total")?;
    let mut ids = Vec::new();
    let mut back = Vec::new();
    for i in 0..5 {
        ids.push(alice.send("bob", &format!("direct {i}"))?);
        back.push(bob.send("alice", &format!("direct reply {i}"))?);
    }
    alice.all_delivered("bob", &ids, Duration::from_secs(20))?;
    bob.all_delivered("alice", &back, Duration::from_secs(20))?;
    bob.received("direct 4", Duration::from_secs(5))?;
    alice.received("direct reply 4", Duration::from_secs(5))?;
    let relayed_after = server.metric("palaver_relay_bytes_total")?;
    ensure!(
        relayed_after == relayed_before,
        "later messages crossed the relay ({relayed_before} → {relayed_after} bytes)"
    );
    for (peer, other) in [(&alice, &bob), (&bob, &alice)] {
        let kind = peer.connection_to(other)?;
        ensure!(
            kind.as_deref() == Some("direct"),
            "{} sees {} as {kind:?}, not direct",
            peer.name(),
            other.name()
        );
    }
    Ok(Report {
        scenario: "both behind home NATs",
        first_message: arrived - sent,
        direct: Some(direct - sent),
        notes: vec![format!(
            "later messages direct ({relayed_before} relayed bytes before, 0 after)"
        )],
    })
}

/// One peer behind a symmetric NAT: relayed throughout, across circuit cut-offs.
fn symmetric_nat(rt: &tokio::runtime::Runtime, dir: &Path) -> anyhow::Result<Report> {
    let net = Net::new(rt)?;
    let home = net.router(rt, "home", RouterPreset::Home)?;
    let carrier = net.router(rt, "carrier", RouterPreset::IspCgnatSymmetric)?;
    let rv = net.device(rt, "rv", &net.dc)?;
    let server = Server::start(
        &rv,
        dir,
        &[
            "--relay-circuit-secs",
            "10",
            "--relay-circuit-bytes",
            "16384",
            "--relay-reservation-secs",
            "20",
        ],
    )?;
    let mut alice = Peer::new(dir, "alice", &net.device(rt, "alice", &home)?)?;
    let mut sam = Peer::new(dir, "sam", &net.device(rt, "sam", &carrier)?)?;
    alice.start(&server.addr)?;
    sam.start(&server.addr)?;
    wait_relay_slots(&[&alice, &sam])?;

    let sent = Instant::now();
    let first = alice.send("sam", "hello through a symmetric NAT")?;
    let arrived = sam.received("hello through a symmetric NAT", Duration::from_secs(20))?;
    alice.all_delivered("sam", &[first], Duration::from_secs(20))?;

    // Traffic both ways, one message each per second, across several circuit cut-offs.
    let circuits_before = server.metric("palaver_relay_circuit_requests_total")?;
    let traffic = Duration::from_secs(30);
    let start = Instant::now();
    let (mut to_sam, mut to_alice) = (Vec::new(), Vec::new());
    let mut i = 0;
    while start.elapsed() < traffic {
        to_sam.push(alice.send("sam", &format!("a→s {i}"))?);
        to_alice.push(sam.send("alice", &format!("s→a {i}"))?);
        i += 1;
        std::thread::sleep(Duration::from_secs(1));
    }
    alice.all_delivered("sam", &to_sam, Duration::from_secs(60))?;
    sam.all_delivered("alice", &to_alice, Duration::from_secs(60))?;
    for n in 0..i {
        sam.received(&format!("a→s {n}"), Duration::from_secs(5))?;
        alice.received(&format!("s→a {n}"), Duration::from_secs(5))?;
    }
    let circuits = server.metric("palaver_relay_circuit_requests_total")? - circuits_before;
    ensure!(
        circuits >= 2.0,
        "expected the relay to cut circuits (10 s / 16 KiB) and the peers to open new ones, \
         saw {circuits} new circuit requests"
    );
    ensure_never_direct(&alice, &sam)?;
    Ok(Report {
        scenario: "home NAT + symmetric NAT",
        first_message: arrived - sent,
        direct: None,
        notes: vec![format!(
            "relayed throughout; {} messages over {} s, {circuits} circuits opened as the relay \
             cut them",
            2 * i,
            traffic.as_secs()
        )],
    })
}

/// A 20 MiB file over the relay, across the relay's circuit byte limit.
fn relayed_file(rt: &tokio::runtime::Runtime, dir: &Path) -> anyhow::Result<Report> {
    const SIZE: usize = 20 << 20;
    const CIRCUIT_BYTES: usize = 8 << 20;
    let net = Net::new(rt)?;
    let home = net.router(rt, "home", RouterPreset::Home)?;
    let carrier = net.router(rt, "carrier", RouterPreset::IspCgnatSymmetric)?;
    let rv = net.device(rt, "rv", &net.dc)?;
    let limit = CIRCUIT_BYTES.to_string();
    let server = Server::start(&rv, dir, &["--relay-circuit-bytes", &limit])?;
    let mut alice = Peer::new(dir, "alice", &net.device(rt, "alice", &home)?)?;
    let mut sam = Peer::new(dir, "sam", &net.device(rt, "sam", &carrier)?)?;
    alice.start(&server.addr)?;
    sam.start_with(&server.addr, &["--auto-accept-size", "1GiB"])?;
    wait_relay_slots(&[&alice, &sam])?;
    // Deterministic bytes that are not all alike (a pattern no compressor could shortcut).
    let source = dir.join("film.bin");
    let bytes: Vec<u8> = (0..SIZE as u64)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&source, &bytes)?;
    // (Counted from the first circuit on: none before.)
    let circuits_before = server
        .metric("palaver_relay_circuit_requests_total")
        .unwrap_or(0.0);

    let sent = Instant::now();
    let id = alice
        .user
        .ok(&["send-file", "sam", source.to_str().context("path")?])?
        .trim()
        .to_owned();
    let done = sam.events()?.wait(
        "sam to have the whole file",
        Duration::from_secs(240),
        |e| e["type"] == "file_done" && e["id"] == id.as_str(),
    )?;
    let took = done - sent;
    // The receiver is told the file comes over the relay.
    let relayed = |e: &Value| e["type"] == "file_progress" && e["via"] == "relayed";
    ensure!(
        sam.events()?.find(sent, &relayed).is_some(),
        "no file_progress event said the file came over the relay"
    );
    let info = sam.user.json(&["file", "info", &id])?;
    let path = info
        .first()
        .and_then(|info| info["path"].as_str())
        .context("no path for the file")?;
    ensure!(
        std::fs::read(path)? == bytes,
        "the relayed file is not byte-identical"
    );
    let circuits = server.metric("palaver_relay_circuit_requests_total")? - circuits_before;
    // (Each circuit carries at most CIRCUIT_BYTES, so the file needs at least three.)
    ensure!(
        circuits >= 3.0,
        "a {SIZE}-byte file through {CIRCUIT_BYTES}-byte circuits took {circuits} circuits"
    );
    ensure_never_direct(&alice, &sam)?;
    let rate = SIZE as f64 / took.as_secs_f64() / f64::from(1 << 20);
    Ok(Report {
        scenario: "file over the relay",
        first_message: took,
        direct: None,
        notes: vec![format!(
            "20 MiB relayed in {:.1} s ({rate:.2} MiB/s) over {circuits} circuits of at most 8 MiB",
            took.as_secs_f64()
        )],
    })
}

/// One public peer, one behind a home NAT; the rendezvous restarts mid-conversation.
fn public_and_restart(rt: &tokio::runtime::Runtime, dir: &Path) -> anyhow::Result<Report> {
    let net = Net::new(rt)?;
    let home = net.router(rt, "home", RouterPreset::Home)?;
    let home2 = net.router(rt, "home2", RouterPreset::Home)?;
    let rv = net.device(rt, "rv", &net.dc)?;
    let mut server = Server::start(&rv, dir, &[])?;
    let relay_device = net.device(rt, "relay", &net.dc)?;
    let relay = Server::start_named("relay", &relay_device, dir, &["--relay-only"])?;
    let mut pat = Peer::new(dir, "pat", &net.device(rt, "pat", &net.dc)?)?;
    let mut nina = Peer::new(dir, "nina", &net.device(rt, "nina", &home)?)?;
    pat.start(&server.addr)?;
    nina.start_with(&server.addr, &["--relay", &relay.addr])?;
    pat.events()?.wait(
        "pat to learn (AutoNAT) that it is publicly reachable",
        Duration::from_secs(30),
        |e| e["type"] == "reachability" && e["public"] == true,
    )?;
    nina.events()?.wait(
        "nina to hold slots at the rendezvous and at the extra relay",
        Duration::from_secs(20),
        |e| e["type"] == "reachability" && e["relays"].as_array().is_some_and(|r| r.len() == 2),
    )?;
    wait_until(
        "pat to give its relay slot back",
        Duration::from_secs(10),
        || Ok(!pat.has_relay_slot()),
    )?;

    let sent = Instant::now();
    let first = pat.send("nina", "hello from the public side")?;
    let arrived = nina.received("hello from the public side", Duration::from_secs(20))?;
    let direct = pat.events()?.wait(
        "pat's connection to nina to become direct",
        Duration::from_secs(15),
        |e| is_connection(e, &nina, "direct"),
    )?;
    pat.all_delivered("nina", &[first], Duration::from_secs(20))?;

    // The rendezvous dies mid-conversation; the direct conversation goes on.
    server.kill();
    let down = Instant::now();
    let during = vec![
        pat.send("nina", "while the server is down")?,
        pat.send("nina", "still here")?,
    ];
    let reply = nina.send("pat", "me too")?;
    pat.all_delivered("nina", &during, Duration::from_secs(20))?;
    nina.all_delivered("pat", &[reply], Duration::from_secs(20))?;
    std::thread::sleep(Duration::from_secs(2).saturating_sub(down.elapsed()));
    server.restart()?;
    let restarted = Instant::now();
    let mut relogin = Duration::ZERO;
    for peer in [&pat, &nina] {
        let at = peer.events()?.wait_after(
            &format!("{} to log in again", peer.name()),
            restarted,
            Duration::from_secs(30),
            |e| e["type"] == "rendezvous" && e["logged_in"] == true,
        )?;
        relogin = relogin.max(at - restarted);
    }
    let slot_again = nina.events()?.wait_after(
        "nina to hold both relay slots again",
        restarted,
        Duration::from_secs(20),
        |e| e["type"] == "reachability" && e["relays"].as_array().is_some_and(|r| r.len() == 2),
    )? - restarted;
    pat.events()?.dump("pat", restarted);
    nina.events()?.dump("nina", restarted);
    let after = pat.send("nina", "after the restart")?;
    nina.received("after the restart", Duration::from_secs(20))?;
    pat.all_delivered("nina", &[after], Duration::from_secs(20))?;

    // A newcomer behind another NAT finds nina through the restarted rendezvous and reaches her.
    let mut olga = Peer::new(dir, "olga", &net.device(rt, "olga", &home2)?)?;
    olga.start(&server.addr)?;
    let olga_sent = Instant::now();
    let hello = olga.send("nina", "found you after the restart")?;
    let olga_arrived = nina.received("found you after the restart", Duration::from_secs(30))?;
    olga.all_delivered("nina", &[hello], Duration::from_secs(20))?;
    let olga_direct = olga
        .events()?
        .wait(
            "olga's connection to nina to become direct",
            Duration::from_secs(15),
            |e| is_connection(e, &nina, "direct"),
        )
        .ok();
    Ok(Report {
        scenario: "public + home NAT",
        first_message: arrived - sent,
        direct: Some(direct - sent),
        notes: vec![
            "the NATed peer also held a slot at a `--relay-only` server".into(),
            "direct conversation went on while the rendezvous was down".into(),
            format!(
                "after its restart: both logged in within {}, NATed peer's relay slot back \
                 within {}",
                secs(Some(relogin)),
                secs(Some(slot_again))
            ),
            format!(
                "a newcomer reached the NATed peer in {} (direct after {})",
                secs(Some(olga_arrived - olga_sent)),
                secs(olga_direct.map(|d| d - olga_sent))
            ),
        ],
    })
}

/// One peer moves to another network mid-conversation.
fn network_change(rt: &tokio::runtime::Runtime, dir: &Path) -> anyhow::Result<Report> {
    let net = Net::new(rt)?;
    let home1 = net.router(rt, "home1", RouterPreset::Home)?;
    let home2 = net.router(rt, "home2", RouterPreset::Home)?;
    let cafe = net.router(rt, "cafe", RouterPreset::Home)?;
    let rv = net.device(rt, "rv", &net.dc)?;
    let server = Server::start(&rv, dir, &[])?;
    let bob_device = net.device(rt, "bob", &home2)?;
    let mut alice = Peer::new(dir, "alice", &net.device(rt, "alice", &home1)?)?;
    let mut bob = Peer::new(dir, "bob", &bob_device)?;
    alice.start(&server.addr)?;
    bob.start(&server.addr)?;
    wait_until("bob to hold a relay slot", Duration::from_secs(20), || {
        Ok(bob.has_relay_slot())
    })?;
    let first = alice.send("bob", "before the move")?;
    bob.received("before the move", Duration::from_secs(20))?;
    alice.all_delivered("bob", &[first], Duration::from_secs(20))?;
    bob.events()?.wait(
        "bob's connection to alice to become direct",
        Duration::from_secs(15),
        |e| is_connection(e, &alice, "direct"),
    )?;

    let old_ip = bob_device.ip();
    let moved = Instant::now();
    rt.block_on(async {
        bob_device
            .default_iface()
            .context("bob's interface")?
            .replug(cafe.id())
            .await
    })
    .context("moving bob to another network")?;
    ensure!(bob_device.ip() != old_ip, "bob kept its address");
    let relogin = bob.events()?.wait_after(
        "bob to log in again from the new network",
        moved,
        Duration::from_secs(30),
        |e| e["type"] == "rendezvous" && e["logged_in"] == true,
    )?;
    let back = bob.send("alice", "moved to the cafe")?;
    let arrived = alice.received("moved to the cafe", Duration::from_secs(45))?;
    bob.all_delivered("alice", &[back], Duration::from_secs(45))?;
    let reply = alice.send("bob", "welcome back")?;
    bob.received("welcome back", Duration::from_secs(45))?;
    alice.all_delivered("bob", &[reply], Duration::from_secs(45))?;
    let direct = bob.events()?.wait_after(
        "bob's connection to alice to become direct again",
        moved,
        Duration::from_secs(30),
        |e| is_connection(e, &alice, "direct"),
    )?;
    alice.events()?.dump("alice", moved);
    bob.events()?.dump("bob", moved);
    Ok(Report {
        scenario: "network change",
        first_message: arrived - moved,
        direct: Some(direct - moved),
        notes: vec![format!(
            "times from the move, not from a send; the moved peer logged in again after {}",
            secs(Some(relogin - moved))
        )],
    })
}
