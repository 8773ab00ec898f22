//! Load generator: what Palaver's layers cost over raw libp2p, measured in one run on 127.0.0.1.
//!
//! ```sh
//! cargo run --release --example loadgen -- --json
//! cargo run --release --example loadgen -- --sweep 2,4,8 --chart docs/benchmarks-room.svg
//! ```
//!
//! 1. room: `--peers` in-process daemons (a rendezvous beside them) share a private room; the same
//!    number of plain rust-libp2p gossipsub swarms (default config, signed messages) share a topic.
//!    `--messages` messages of `--size` bytes go out on each, in rounds alternating Palaver and
//!    baseline (ABBA order, so drift and neighbours' noise fall on both). Latency is from just
//!    before the publish call to the message reaching the application on every other peer (for
//!    Palaver: the `message` event on each daemon's control socket).
//! 2. dm: round trips `send` → `delivery: delivered` event through the daemons, direct and to a
//!    daemon that listens only through the rendezvous relay.
//! 3. file: one `--file-size` file between two daemons, beside a plain libp2p stream copying
//!    the same bytes (see `loadgen/file.rs`).
//! 4. history: the node's store, one `record` per message as the daemon does, then reading the
//!    last 100.
//! 5. rendezvous: a server in a child process (this binary re-executed), `--sessions` light
//!    clients logged in from here; its RSS per session (beside a bare rust-libp2p listener's per
//!    connection, the library floor), logins per second, presence fan-out.
//!
//! Every loop is bounded in count and time; only 127.0.0.1 is used; `--json` prints one JSON
//! object as the last line of stdout.

#[path = "loadgen/baseline.rs"]
mod baseline;
#[path = "loadgen/chart.rs"]
mod chart;
#[path = "loadgen/dm.rs"]
mod dm;
#[path = "loadgen/dm_baseline.rs"]
mod dm_baseline;
#[path = "loadgen/file.rs"]
mod file;
#[path = "loadgen/history.rs"]
mod history;
#[path = "loadgen/palaver.rs"]
mod palaver;
#[path = "loadgen/room.rs"]
mod room;
#[path = "loadgen/sessions.rs"]
mod sessions;
#[path = "loadgen/stats.rs"]
mod stats;

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use serde_json::{Value, json};

/// The allocator the binaries ship with, so the load measured is theirs (the baseline runs on it
/// too: it shares this process).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// One of the room's two networks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Network {
    Palaver,
    Baseline,
}

/// Palaver's load generator (see the source's module documentation for what is measured).
#[derive(Debug, Clone, Parser)]
#[command(name = "loadgen")]
pub(crate) struct Args {
    /// Peers in the room (and baseline swarms).
    #[arg(long, default_value_t = 8)]
    peers: usize,
    /// Message size in bytes (the room message's text; the baseline's payload).
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// Messages per network (Palaver and baseline each), split over the rounds.
    #[arg(long, default_value_t = 4000)]
    messages: usize,
    /// Alternating rounds per network.
    #[arg(long, default_value_t = 4)]
    rounds: usize,
    /// Messages in flight at once (a message is in flight until every other peer has it).
    #[arg(long, default_value_t = 32)]
    window: usize,
    /// Publish calls each peer has outstanding at once, on both networks (Palaver: that many
    /// control connections, whose `room.send`s share flushes). 1: each sender waits for its last
    /// call's answer before the next, as a simple script does.
    #[arg(long, default_value_t = 1)]
    callers: usize,
    /// Direct-message round trips per path (direct, relayed).
    #[arg(long, default_value_t = 200)]
    dms: usize,
    /// History entries appended (then the last 100 read).
    #[arg(long, default_value_t = 20_000)]
    history: usize,
    /// The file part's file, in bytes.
    #[arg(long, default_value_t = 64 << 20)]
    file_size: usize,
    /// Alternating rounds of the file part (each network sends the file this many times).
    #[arg(long, default_value_t = 4)]
    file_rounds: usize,
    /// Logged-in rendezvous sessions.
    #[arg(long, default_value_t = 10_000)]
    sessions: usize,
    /// Also run the room part for each of these peer counts (e.g. 2,4,8) and draw the chart.
    #[arg(long, value_delimiter = ',')]
    sweep: Vec<usize>,
    /// Where the sweep's chart goes (SVG).
    #[arg(long, default_value = "docs/benchmarks-room.svg")]
    chart: PathBuf,
    /// Skip parts: any of room, dm, file, history, rendezvous.
    #[arg(long, value_delimiter = ',')]
    skip: Vec<String>,
    /// Run the room rounds of one network only (`palaver` or `baseline`), for profiling.
    #[arg(long)]
    only: Option<Network>,
    /// Print one JSON object as the last line.
    #[arg(long)]
    json: bool,
}

impl Args {
    fn runs(&self, part: &str) -> bool {
        !self.skip.iter().any(|s| s == part)
    }
}

/// The whole run's wall-clock bound: the loadgen stops by itself even if something hangs.
const RUN_LIMIT: Duration = Duration::from_secs(900);

fn main() -> anyhow::Result<()> {
    let mut argv = std::env::args().skip(1);
    match argv.next().as_deref() {
        Some(sessions::SERVE_ARG) => {
            let dir = PathBuf::from(argv.next().unwrap_or_default());
            return sessions::serve(dir);
        }
        Some(sessions::BARE_ARG) => return sessions::serve_bare(),
        _ => {}
    }
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("off")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let report = runtime.block_on(async {
        tokio::time::timeout(RUN_LIMIT, run(&args))
            .await
            .map_err(|_| anyhow::anyhow!("gave up after {} s", RUN_LIMIT.as_secs()))?
    })?;
    // Daemons and swarms still winding down must not hold the exit.
    runtime.shutdown_timeout(Duration::from_secs(2));
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    }
    Ok(())
}

async fn run(args: &Args) -> anyhow::Result<Value> {
    let mut report = json!({});
    eprintln!(
        "loadgen: {} peers, {} B messages, {} messages per network in {} rounds, window {}, \
         {} caller(s) a peer",
        args.peers, args.size, args.messages, args.rounds, args.window, args.callers
    );
    if args.runs("room") || args.runs("dm") {
        let (room, dm) = room::run(args, args.peers, args.messages, args.runs("dm")).await?;
        if args.runs("room") {
            report["room"] = room;
        }
        if args.runs("dm") {
            report["dm"] = dm;
        }
    }
    if args.runs("file") {
        report["file"] = file::run(args.file_size, args.file_rounds).await?;
    }
    if args.runs("history") {
        report["history"] = history::run(args.history)?;
    }
    if args.runs("rendezvous") {
        report["rendezvous"] = sessions::run(args.sessions).await?;
    }
    if !args.sweep.is_empty() {
        let mut points = Vec::new();
        for &peers in &args.sweep {
            let messages = (args.messages / 2).max(args.rounds * 50);
            // One point failing (a room that never forms) leaves the others standing.
            match room::run(args, peers, messages, false).await {
                Ok((room, _)) => points.push(room),
                Err(err) => eprintln!("sweep: {peers} peers failed: {err:#}"),
            }
        }
        chart::draw(&args.chart, &points)?;
        eprintln!("chart written to {}", args.chart.display());
        report["sweep"] = Value::Array(points);
    }
    Ok(report)
}
