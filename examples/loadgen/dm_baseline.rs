//! The direct-message baseline: two plain rust-libp2p swarms (TCP with nodelay, Noise, Yamux,
//! `libp2p-stream`), one new stream per message as a request-response exchange opens, a message of
//! the size of an encrypted direct message out and a receipt back. Twice: as it is (`transport`),
//! and with what durability alone costs a messenger (`durable`): the sender appends a record to a
//! file and syncs it before the message leaves (the ratchet step), the receiver does the same
//! before it answers (the history line). So `durable` is the floor under a DM round trip on this
//! machine for any design that acknowledges only what is on disk.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::{AsyncReadExt as _, AsyncWriteExt as _, StreamExt as _};
use libp2p::{PeerId, StreamProtocol};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

use crate::stats;

const PROTOCOL: StreamProtocol = StreamProtocol::new("/loadgen/dm/1");
/// About a sealed direct message on the wire: header, ratchet key, ciphertext, signature.
const MESSAGE_LEN: usize = 320;
const RECEIPT_LEN: usize = 48;
const TRIP_LIMIT: Duration = Duration::from_secs(10);

/// `count` round trips of each kind, alternating.
pub(crate) async fn run(count: usize) -> anyhow::Result<Value> {
    let dir = tempfile::tempdir()?;
    let baseline = Baseline::start(dir.path()).await?;
    let result = async {
        let (mut transport, mut durable) = (Vec::new(), Vec::new());
        for i in 0..count + 5 {
            let plain = baseline.trip(false).await?;
            let synced = baseline.trip(true).await?;
            // The first few set up the connection and warm the page cache.
            if i >= 5 {
                transport.push(plain);
                durable.push(synced);
            }
        }
        anyhow::Ok(json!({
            "transport": stats::latency(&mut transport),
            "durable": stats::latency(&mut durable),
        }))
    }
    .await;
    baseline.stop();
    result
}

struct Trip {
    durable: bool,
    done: oneshot::Sender<anyhow::Result<()>>,
}

struct Baseline {
    trips: mpsc::Sender<Trip>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Baseline {
    async fn start(dir: &Path) -> anyhow::Result<Self> {
        let crate::baseline::StreamPair {
            control,
            receiver,
            mut incoming,
            mut tasks,
        } = crate::baseline::stream_pair(PROTOCOL).await?;
        let history = Arc::new(std::fs::File::create(dir.join("receiver.log"))?);
        tasks.push(tokio::spawn(async move {
            while let Some((_, mut stream)) = incoming.next().await {
                let answered = async {
                    let mut message = vec![0; MESSAGE_LEN];
                    stream.read_exact(&mut message).await?;
                    if message[0] == 1 {
                        append_synced(&history, &message).await?;
                    }
                    stream.write_all(&[0; RECEIPT_LEN]).await?;
                    stream.close().await?;
                    std::io::Result::Ok(())
                };
                if let Err(err) = answered.await {
                    eprintln!("dm baseline: the receiver failed: {err}");
                }
            }
        }));
        let (trips, trips_rx) = mpsc::channel::<Trip>(1);
        let ratchet = Arc::new(std::fs::File::create(dir.join("sender.log"))?);
        tasks.push(tokio::spawn(send_trips(
            control, receiver, ratchet, trips_rx,
        )));
        Ok(Self { trips, tasks })
    }

    async fn trip(&self, durable: bool) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let (done, answered) = oneshot::channel();
        self.trips.send(Trip { durable, done }).await?;
        tokio::time::timeout(TRIP_LIMIT, answered)
            .await
            .context("a baseline direct message was not answered in time")???;
        Ok(started.elapsed())
    }

    fn stop(self) {
        for task in self.tasks {
            task.abort();
        }
    }
}

async fn send_trips(
    mut control: libp2p_stream::Control,
    to: PeerId,
    ratchet: Arc<std::fs::File>,
    mut trips: mpsc::Receiver<Trip>,
) {
    while let Some(Trip { durable, done }) = trips.recv().await {
        let mut message = vec![0x5a; MESSAGE_LEN];
        message[0] = u8::from(durable);
        let result = async {
            if durable {
                append_synced(&ratchet, &message[..64]).await?;
            }
            let mut stream = control.open_stream(to, PROTOCOL).await?;
            stream.write_all(&message).await?;
            let mut receipt = vec![0; RECEIPT_LEN];
            stream.read_exact(&mut receipt).await?;
            anyhow::Ok(())
        };
        let _ = done.send(result.await);
    }
}

/// Appends `record` to `file` and syncs its data, off the runtime's threads (as a store's flush).
async fn append_synced(file: &Arc<std::fs::File>, record: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let (file, record) = (file.clone(), record.to_vec());
    tokio::task::spawn_blocking(move || {
        (&*file).write_all(&record)?;
        file.sync_data()
    })
    .await
    .map_err(std::io::Error::other)?
}
