//! The room part: Palaver rooms against plain gossipsub, the same peers, sizes and counts, in
//! alternating rounds (ABBA), then the direct-message part on the same daemons.
//!
//! A round: one sender task per peer publishes its share (message `seq` goes from peer
//! `seq % peers`); at most `--window` messages are in flight, a message leaving flight when every
//! other peer has it. Throughput is the round's messages over the time from the first publish to
//! the last delivery; latency samples are one per (message, receiver).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use indicatif::{ProgressBar, ProgressStyle};
use palaver_node::rpc;
use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::baseline::Baseline;
use crate::palaver::Palaver;
use crate::stats::{self, round3};
use crate::{Args, Network, dm};

/// A message reaching the application on a peer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Delivery {
    pub(crate) round: u32,
    pub(crate) seq: u32,
    pub(crate) receiver: u16,
    pub(crate) at: Instant,
}

/// How a sender task publishes: one call outstanding on each (a peer's task may hold several).
pub(crate) enum Publisher {
    /// `room.send` on the daemon's control socket.
    Rpc(rpc::Client),
    /// To the baseline swarm's task, which answers once `publish` has returned — as `room.send`
    /// answers once the daemon has published, so each sender has one publish call outstanding
    /// on both networks.
    Gossip(mpsc::Sender<(Vec<u8>, oneshot::Sender<()>)>),
}

impl Publisher {
    /// [`Publisher::publish`], handing the publisher back for the next call.
    async fn publish_owned(mut self, text: String) -> (Self, anyhow::Result<()>) {
        let published = self.publish(text).await;
        (self, published)
    }

    async fn publish(&mut self, text: String) -> anyhow::Result<()> {
        match self {
            Publisher::Rpc(client) => {
                client
                    .call(
                        "room.send",
                        json!({"room": crate::palaver::ROOM, "text": text}),
                    )
                    .await?;
            }
            Publisher::Gossip(tx) => {
                let (done, published) = oneshot::channel();
                tx.send((text.into_bytes(), done)).await?;
                published.await?;
            }
        }
        Ok(())
    }
}

/// `lg <round> <seq> <sender> xxx…`, `size` bytes long (at least the header).
pub(crate) fn payload(round: u32, seq: u32, sender: u16, size: usize) -> String {
    let mut text = format!("lg {round} {seq} {sender} ");
    while text.len() < size {
        text.push('x');
    }
    text
}

pub(crate) fn parse_payload(data: &[u8]) -> Option<(u32, u32, u16)> {
    let head = data.get(..data.len().min(40))?;
    let head = std::str::from_utf8(head).ok()?;
    let mut it = head.strip_prefix("lg ")?.split(' ');
    Some((
        it.next()?.parse().ok()?,
        it.next()?.parse().ok()?,
        it.next()?.parse().ok()?,
    ))
}

/// One network's accumulated figures.
#[derive(Default)]
struct Tally {
    messages: usize,
    elapsed: Duration,
    samples: Vec<Duration>,
    missing: usize,
}

impl Tally {
    fn add(&mut self, round: RoundResult) {
        self.messages += round.messages;
        self.elapsed += round.elapsed;
        self.samples.extend(round.samples);
        self.missing += round.missing;
    }

    fn msgs_per_s(&self) -> f64 {
        self.messages as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn report(&mut self) -> Value {
        let mut value = stats::latency(&mut self.samples);
        value["msgs_per_s"] = json!(self.msgs_per_s().round());
        value["missing_deliveries"] = json!(self.missing);
        value
    }
}

struct RoundResult {
    messages: usize,
    elapsed: Duration,
    samples: Vec<Duration>,
    missing: usize,
}

/// How long a round may go without any delivery before the rest count as missing.
const IDLE_LIMIT: Duration = Duration::from_secs(10);

/// Runs one round: `count` messages of `size` bytes, at most `window` in flight, each peer
/// publishing through its publishers, one call outstanding on each.
async fn round(
    publishers: Vec<Vec<Publisher>>,
    deliveries: &mut mpsc::Receiver<Delivery>,
    number: u32,
    count: usize,
    size: usize,
    window: usize,
    progress: &ProgressBar,
) -> (Vec<Vec<Publisher>>, RoundResult) {
    let peers = publishers.len();
    let window = Arc::new(Semaphore::new(window));
    let sent: Arc<Mutex<Vec<Option<Instant>>>> = Arc::new(Mutex::new(vec![None; count]));
    let start = Instant::now();
    let mut senders = Vec::new();
    for (index, mut idle) in publishers.into_iter().enumerate() {
        let window = window.clone();
        let sent = sent.clone();
        senders.push(tokio::spawn(async move {
            let mut busy = futures::stream::FuturesUnordered::new();
            let mut failed = false;
            for seq in (index..count).step_by(peers) {
                // A publisher free first, then a place in the window.
                if idle.is_empty()
                    && let Some((publisher, published)) = busy.next().await
                {
                    idle.push(publisher);
                    failed |= report_failure(index, published);
                }
                if failed {
                    break;
                }
                let Some(publisher) = idle.pop() else {
                    break;
                };
                match window.acquire().await {
                    Ok(permit) => permit.forget(),
                    Err(_) => {
                        idle.push(publisher);
                        break;
                    }
                }
                let text = payload(number, seq as u32, index as u16, size);
                if let Ok(mut sent) = sent.lock() {
                    sent[seq] = Some(Instant::now());
                }
                busy.push(publisher.publish_owned(text));
            }
            while let Some((publisher, published)) = busy.next().await {
                idle.push(publisher);
                report_failure(index, published);
            }
            idle
        }));
    }
    // Which receivers each message has reached (bit per peer).
    let everyone: u64 = if peers >= 64 {
        u64::MAX
    } else {
        (1u64 << peers) - 1
    };
    let mut reached: Vec<u64> = (0..count).map(|seq| 1u64 << (seq % peers)).collect();
    let mut samples = Vec::with_capacity(count * (peers - 1));
    let mut done = 0usize;
    let mut last = start;
    while done < count {
        let Ok(Some(delivery)) = tokio::time::timeout(IDLE_LIMIT, deliveries.recv()).await else {
            eprintln!("round {number}: no delivery for {IDLE_LIMIT:?}; {done} of {count} complete");
            break;
        };
        if delivery.round != number || delivery.seq as usize >= count {
            continue;
        }
        let seq = delivery.seq as usize;
        let bit = 1u64 << delivery.receiver;
        if reached[seq] & bit != 0 {
            continue;
        }
        let Some(at) = sent.lock().ok().and_then(|sent| sent[seq]) else {
            continue;
        };
        reached[seq] |= bit;
        samples.push(delivery.at.saturating_duration_since(at));
        if reached[seq] == everyone {
            done += 1;
            last = delivery.at;
            window.add_permits(1);
            progress.inc(1);
        }
    }
    window.close();
    let mut publishers = Vec::new();
    for sender in senders {
        if let Ok(Ok(publisher)) = tokio::time::timeout(Duration::from_secs(10), sender).await {
            publishers.push(publisher);
        }
    }
    let missing = reached
        .iter()
        .map(|r| (everyone & !r).count_ones() as usize)
        .sum();
    if missing > 0 {
        report_missing(number, &reached, everyone, peers);
    }
    (
        publishers,
        RoundResult {
            messages: done,
            elapsed: last.saturating_duration_since(start),
            samples,
            missing,
        },
    )
}

/// Whether a publish failed (and says so).
fn report_failure(peer: usize, published: anyhow::Result<()>) -> bool {
    match published {
        Ok(()) => false,
        Err(err) => {
            eprintln!("peer {peer}: publish failed: {err}");
            true
        }
    }
}

/// Which sender → receiver pairs lost messages, most first (a stalled round's diagnosis).
fn report_missing(number: u32, reached: &[u64], everyone: u64, peers: usize) {
    let mut pairs = std::collections::BTreeMap::<(usize, u32), usize>::new();
    for (seq, r) in reached.iter().enumerate() {
        let mut lost = everyone & !r;
        while lost != 0 {
            let receiver = lost.trailing_zeros();
            lost &= lost - 1;
            *pairs.entry((seq % peers, receiver)).or_default() += 1;
        }
    }
    let mut pairs: Vec<_> = pairs.into_iter().collect();
    pairs.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
    let listed: Vec<String> = pairs
        .iter()
        .take(8)
        .map(|((from, to), n)| format!("{from}→{to}: {n}"))
        .collect();
    eprintln!(
        "round {number}: undelivered by sender→receiver (of {} pairs): {}",
        pairs.len(),
        listed.join(", ")
    );
}

fn progress_bar(total: usize, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(total as u64);
    bar.set_style(
        ProgressStyle::with_template("{msg:>22} [{bar:30}] {pos}/{len} {per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message(what.to_owned());
    bar
}

/// The room comparison for `peers` peers, and (with `with_dm`) the direct-message part on the
/// same daemons. Returns the `room` and `dm` objects of the report.
pub(crate) async fn run(
    args: &Args,
    peers: usize,
    messages: usize,
    with_dm: bool,
) -> anyhow::Result<(Value, Value)> {
    anyhow::ensure!((2..=64).contains(&peers), "--peers must be 2..=64");
    let rounds = args.rounds.max(1);
    let per_round = (messages / rounds).max(1);
    let setup = Instant::now();
    let (palaver_tx, mut palaver_rx) = mpsc::channel(1 << 16);
    let palaver = Palaver::start(peers, with_dm, palaver_tx).await?;
    let (baseline_tx, mut baseline_rx) = mpsc::channel(1 << 16);
    let baseline = Baseline::start(peers, baseline_tx).await?;
    eprintln!(
        "room: {peers} daemons in a room and {peers} baseline swarms ready in {:.1?}",
        setup.elapsed()
    );

    let mut palaver_publishers = palaver.publishers(args.callers).await?;
    let mut baseline_publishers = baseline.publishers(args.callers);
    // Warm-up: sender keys, meshes, connection windows; not counted.
    let warm = (peers * 10).min(per_round);
    let hidden = ProgressBar::hidden();
    let (p, r) = round(
        palaver_publishers,
        &mut palaver_rx,
        0,
        warm,
        args.size,
        args.window,
        &hidden,
    )
    .await;
    palaver_publishers = p;
    if r.missing > 0 {
        eprintln!("room: palaver warm-up missed {} deliveries", r.missing);
    }
    let (p, _) = round(
        baseline_publishers,
        &mut baseline_rx,
        0,
        warm,
        args.size,
        args.window,
        &hidden,
    )
    .await;
    baseline_publishers = p;

    let progress = progress_bar(per_round * rounds * 2, &format!("room, {peers} peers"));
    let mut palaver_tally = Tally::default();
    let mut baseline_tally = Tally::default();
    for number in 1..=rounds as u32 {
        // ABBA: P B, B P, P B, …
        let palaver_first = number % 2 == 1;
        for step in 0..2 {
            let on_palaver = (step == 0) == palaver_first;
            if args
                .only
                .is_some_and(|only| (only == Network::Palaver) != on_palaver)
            {
                continue;
            }
            if on_palaver {
                anyhow::ensure!(
                    palaver_publishers.len() == peers,
                    "a Palaver sender stopped"
                );
                let (p, r) = round(
                    palaver_publishers,
                    &mut palaver_rx,
                    number,
                    per_round,
                    args.size,
                    args.window,
                    &progress,
                )
                .await;
                palaver_publishers = p;
                palaver_tally.add(r);
            } else {
                anyhow::ensure!(
                    baseline_publishers.len() == peers,
                    "a baseline sender stopped"
                );
                let (p, r) = round(
                    baseline_publishers,
                    &mut baseline_rx,
                    number,
                    per_round,
                    args.size,
                    args.window,
                    &progress,
                )
                .await;
                baseline_publishers = p;
                baseline_tally.add(r);
            }
        }
    }
    progress.finish_and_clear();
    baseline.stop();
    let mut room = json!({
        "peers": peers,
        "size": args.size,
        "messages": per_round * rounds,
        "palaver": palaver_tally.report(),
        "baseline": baseline_tally.report(),
    });
    // With one network only (`--only`) there is nothing to compare: null, not a division by 0.
    let ratio = |field: &str| match args.only {
        Some(_) => Value::Null,
        None => json!(round3(
            room["palaver"][field].as_f64().unwrap_or(0.0)
                / room["baseline"][field].as_f64().unwrap_or(1.0).max(1e-9)
        )),
    };
    let (ratio, p99_ratio) = (ratio("msgs_per_s"), ratio("p99_ms"));
    room["ratio"] = ratio;
    room["p99_ratio"] = p99_ratio;
    eprintln!("room: {room}");

    let dm = if with_dm {
        dm::run(&palaver, args.dms).await?
    } else {
        Value::Null
    };
    palaver.stop().await;
    Ok((room, dm))
}
