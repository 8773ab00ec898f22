//! The file part: one file of `--file-size` random bytes sent `p0` → `p1`, timed from the
//! `send_file` call to the receiver's `file_done` event — the sender's copy (hashed as it is
//! copied), the offer, the fetch (each 64 KiB chunk sealed, sent, opened, written, made durable
//! every 16), the receiver's whole-file check and the move into place. Beside it, in alternating
//! rounds, the baseline: two plain rust-libp2p swarms (TCP, Noise, Yamux, `libp2p-stream`), the
//! same file read and written to one stream, the receiver writing it to a file and syncing it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::{AsyncReadExt as _, AsyncWriteExt as _, StreamExt as _};
use libp2p::{PeerId, StreamProtocol};
use palaver_node::rpc::Client;
use rand::RngCore;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::{mpsc, oneshot};

use crate::palaver::{Palaver, call};
use crate::stats::round3;

const PROTOCOL: StreamProtocol = StreamProtocol::new("/loadgen/copy/1");
const ROUND_LIMIT: Duration = Duration::from_secs(120);

pub(crate) async fn run(size: usize, rounds: usize) -> anyhow::Result<Value> {
    let dir = tempfile::tempdir()?;
    let source = dir.path().join("payload.bin");
    let mut bytes = vec![0; size];
    rand::thread_rng().fill_bytes(&mut bytes);
    std::fs::write(&source, &bytes)?;
    drop(bytes);
    let (deliveries, _) = mpsc::channel(1);
    let palaver = Palaver::start(2, false, deliveries).await?;
    let baseline = Baseline::start(dir.path()).await?;
    let result = async {
        // Warm-up: the session, the connection, the page cache.
        palaver_round(&palaver, &source).await?;
        baseline.round(&source).await?;
        let (mut ours, mut fetches, mut theirs) = (Vec::new(), Vec::new(), Vec::new());
        for round in 0..rounds {
            // ABBA: drift and neighbours' noise fall on both.
            if round % 2 == 1 {
                theirs.push(baseline.round(&source).await?);
            }
            let (whole, fetch) = palaver_round(&palaver, &source).await?;
            ours.push(whole);
            fetches.push(fetch);
            if round % 2 == 0 {
                theirs.push(baseline.round(&source).await?);
            }
        }
        let rate = |times: &[Duration]| {
            let total: f64 = times.iter().map(Duration::as_secs_f64).sum();
            (size * times.len()) as f64 / total / f64::from(1 << 20)
        };
        let (palaver_rate, baseline_rate) = (rate(&ours), rate(&theirs));
        let fetch_rate = rate(&fetches);
        let report = json!({
            "size_bytes": size,
            "rounds": rounds,
            "palaver_mib_s": round3(palaver_rate),
            "palaver_fetch_mib_s": round3(fetch_rate),
            "baseline_mib_s": round3(baseline_rate),
            "ratio": round3(palaver_rate / baseline_rate),
            "fetch_ratio": round3(fetch_rate / baseline_rate),
        });
        eprintln!("file: {report}");
        anyhow::Ok(report)
    }
    .await;
    palaver.stop().await;
    baseline.stop();
    result
}

/// One file through the daemons: how long from the `send_file` call to the receiver having it
/// whole, and how long of that from the offer reaching the receiver (the fetch, the check, the
/// move: what is left once the sender's copy is kept and the offer delivered).
async fn palaver_round(palaver: &Palaver, source: &Path) -> anyhow::Result<(Duration, Duration)> {
    let (from, to) = (&palaver.sockets[0], &palaver.sockets[1]);
    let mut events = Client::connect(to).await?;
    events.subscribe().await?;
    let started = Instant::now();
    let path = source.to_str().context("path")?;
    let sent = call(from, "send_file", json!({"to": "p1", "path": path})).await?;
    let id = sent["id"]
        .as_str()
        .context("send_file answered no id")?
        .to_owned();
    let mut offered = None;
    let done = tokio::time::timeout(ROUND_LIMIT, async {
        while let Some(event) = events.next_event().await? {
            if event["id"] != id.as_str() {
                continue;
            }
            if event["type"] == "file_offer" {
                offered = Some(Instant::now());
            }
            match event["type"].as_str() {
                // Over the auto-accept size: accepted as a user would.
                Some("file_offer") if event["accepted"] == false => {
                    call(to, "file.accept", json!({"id": id})).await?;
                }
                Some("file_done") => return Ok(event),
                Some("file_failed") => anyhow::bail!("the file failed: {event}"),
                _ => {}
            }
        }
        anyhow::bail!("the receiver stopped")
    })
    .await
    .context("the file did not arrive in time")??;
    let took = started.elapsed();
    let fetch = offered.map_or(took, |at| at.elapsed());
    if let Some(path) = done["path"].as_str() {
        std::fs::remove_file(path)?;
    }
    Ok((took, fetch))
}

enum Command {
    Copy {
        to: PeerId,
        path: PathBuf,
        done: oneshot::Sender<anyhow::Result<()>>,
    },
}

/// Two plain swarms, the second receiving into a file under `dir`.
struct Baseline {
    sender: mpsc::Sender<Command>,
    receiver: PeerId,
    /// Told once a copy is whole and synced (or how receiving it failed).
    received: tokio::sync::Mutex<mpsc::Receiver<std::io::Result<()>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Baseline {
    async fn start(dir: &Path) -> anyhow::Result<Self> {
        let crate::baseline::StreamPair {
            mut control,
            receiver: receiver_id,
            mut incoming,
            mut tasks,
        } = crate::baseline::stream_pair(PROTOCOL).await?;
        let (received_tx, received) = mpsc::channel::<std::io::Result<()>>(4);
        let into = dir.join("baseline.bin");
        tasks.push(tokio::spawn(async move {
            while let Some((_, mut stream)) = incoming.next().await {
                let written = async {
                    let mut file = tokio::fs::File::create(&into).await?;
                    let mut buffer = vec![0; 64 << 10];
                    loop {
                        match stream.read(&mut buffer).await? {
                            0 => break,
                            n => file.write_all(&buffer[..n]).await?,
                        }
                    }
                    file.sync_all().await?;
                    std::io::Result::Ok(())
                };
                let _ = received_tx.send(written.await).await;
            }
        }));
        let (commands, mut commands_rx) = mpsc::channel::<Command>(4);
        tasks.push(tokio::spawn(async move {
            while let Some(Command::Copy { to, path, done }) = commands_rx.recv().await {
                let copied = async {
                    let mut stream = control.open_stream(to, PROTOCOL).await?;
                    let mut file = tokio::fs::File::open(&path).await?;
                    let mut buffer = vec![0; 64 << 10];
                    loop {
                        match file.read(&mut buffer).await? {
                            0 => break,
                            n => stream.write_all(&buffer[..n]).await?,
                        }
                    }
                    stream.close().await?;
                    anyhow::Ok(())
                };
                let _ = done.send(copied.await);
            }
        }));
        Ok(Self {
            sender: commands,
            receiver: receiver_id,
            received: tokio::sync::Mutex::new(received),
            tasks,
        })
    }

    async fn round(&self, source: &Path) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let (done, copied) = oneshot::channel();
        let copy = Command::Copy {
            to: self.receiver,
            path: source.to_path_buf(),
            done,
        };
        self.sender.send(copy).await?;
        tokio::time::timeout(ROUND_LIMIT, async {
            copied.await??;
            let received = self.received.lock().await.recv().await;
            received.context("the baseline receiver stopped")??;
            anyhow::Ok(())
        })
        .await
        .context("the baseline copy did not finish in time")??;
        Ok(started.elapsed())
    }

    fn stop(self) {
        for task in self.tasks {
            task.abort();
        }
    }
}
