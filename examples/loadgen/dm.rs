//! The direct-message part: sequential round trips from `p0`, timed from just before the `send`
//! call to the `delivery` event saying `delivered` — the message encrypted, sent, received,
//! decrypted and stored by the recipient, its acknowledgement back and recorded. To `p1` over
//! their direct connection, and to the daemon that listens only through the rendezvous relay.
//! Each sample is kept under the connection kind `peers` reports right after it (DCUtR may
//! upgrade a relayed connection to a direct one mid-run). Then `direct_turns`: round trips
//! between `p0` and `p1` taking turns, so that every message is the first of a new turn (a new
//! ratchet key), as in a conversation or a bot answering commands. Then the same on plain
//! libp2p, with and without the two syncs a durable round trip needs ([`crate::dm_baseline`]).

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

use palaver_node::rpc::Client;
use serde_json::{Value, json};

use crate::palaver::{Palaver, RELAYED, call};
use crate::stats;

const FIRST_LIMIT: Duration = Duration::from_secs(30);
const TRIP_LIMIT: Duration = Duration::from_secs(10);

pub(crate) async fn run(palaver: &Palaver, count: usize) -> anyhow::Result<Value> {
    let from = &palaver.sockets[0];
    let mut direct = round_trips(from, "p1", count).await?;
    let direct_samples = direct.remove("direct").unwrap_or_default();
    let mut report = json!({"direct": summary(direct_samples, &direct)});
    let mut turns = taking_turns(palaver, count).await?;
    let turn_samples = turns.remove("direct").unwrap_or_default();
    report["direct_turns"] = summary(turn_samples, &turns);
    let baseline = crate::dm_baseline::run(count).await?;
    if let (Some(ours), Some(floor)) = (
        report["direct"]["p50_ms"].as_f64(),
        baseline["durable"]["p50_ms"].as_f64(),
    ) {
        report["direct_p50_over_durable_baseline"] = json!(crate::stats::round3(ours / floor));
    }
    report["baseline"] = baseline;
    report["relayed"] = if palaver.names.iter().any(|n| n == RELAYED) {
        let mut relayed = round_trips(from, RELAYED, count).await?;
        let samples = relayed.remove("relayed").unwrap_or_default();
        if samples.is_empty() {
            eprintln!(
                "dm: no round trip to {RELAYED} went over a relayed connection; reporting null"
            );
        }
        summary(samples, &relayed)
    } else {
        Value::Null
    };
    eprintln!("dm: {report}");
    Ok(report)
}

fn summary(
    mut samples: Vec<Duration>,
    others: &std::collections::HashMap<String, Vec<Duration>>,
) -> Value {
    if samples.is_empty() {
        return Value::Null;
    }
    let mut value = stats::latency(&mut samples);
    value["samples"] = json!(samples.len());
    for (kind, other) in others {
        if !other.is_empty() {
            value[format!("samples_over_{kind}")] = json!(other.len());
        }
    }
    value
}

/// Round trips to `to`, by the connection kind seen after each.
async fn round_trips(
    socket: &Path,
    to: &str,
    count: usize,
) -> anyhow::Result<std::collections::HashMap<String, Vec<Duration>>> {
    let mut events = Client::connect(socket).await?;
    events.subscribe().await?;
    let mut calls = Client::connect(socket).await?;
    let mut delivered = HashSet::new();
    let mut by_kind: std::collections::HashMap<String, Vec<Duration>> = Default::default();
    // Warm-up: the handshake, the dial, the relay circuit.
    for i in 0..5 {
        let limit = if i == 0 { FIRST_LIMIT } else { TRIP_LIMIT };
        let _ = trip(&mut calls, &mut events, &mut delivered, to, limit).await?;
    }
    let mut lost = 0;
    for _ in 0..count {
        match trip(&mut calls, &mut events, &mut delivered, to, TRIP_LIMIT).await? {
            Some(rtt) => {
                let kind = connection(socket, to).await?;
                by_kind.entry(kind).or_default().push(rtt);
            }
            None => lost += 1,
        }
    }
    if lost > 0 {
        eprintln!("dm to {to}: {lost} of {count} round trips not delivered within {TRIP_LIMIT:?}");
    }
    Ok(by_kind)
}

/// Round trips alternating `p0` → `p1` and `p1` → `p0`, by the connection kind seen after each.
async fn taking_turns(
    palaver: &Palaver,
    count: usize,
) -> anyhow::Result<std::collections::HashMap<String, Vec<Duration>>> {
    let mut sides = Vec::new();
    for (socket, to) in [(&palaver.sockets[0], "p1"), (&palaver.sockets[1], "p0")] {
        let mut events = Client::connect(socket).await?;
        events.subscribe().await?;
        let calls = Client::connect(socket).await?;
        sides.push((socket, to, calls, events, HashSet::new()));
    }
    let mut by_kind: std::collections::HashMap<String, Vec<Duration>> = Default::default();
    let mut lost = 0;
    for i in 0..count + 6 {
        let (socket, to, calls, events, delivered) = &mut sides[i % 2];
        let limit = if i < 2 { FIRST_LIMIT } else { TRIP_LIMIT };
        match trip(calls, events, delivered, to, limit).await? {
            // The first few set up both sessions and their turns.
            Some(_) if i < 6 => {}
            Some(rtt) => {
                let kind = connection(socket, to).await?;
                by_kind.entry(kind).or_default().push(rtt);
            }
            None => lost += 1,
        }
    }
    if lost > 0 {
        eprintln!(
            "dm taking turns: {lost} of {count} round trips not delivered within {TRIP_LIMIT:?}"
        );
    }
    Ok(by_kind)
}

async fn trip(
    calls: &mut Client,
    events: &mut Client,
    delivered: &mut HashSet<String>,
    to: &str,
    limit: Duration,
) -> anyhow::Result<Option<Duration>> {
    let start = Instant::now();
    let sent = calls
        .call(
            "send",
            json!({"to": to, "text": "a direct message of about sixty bytes, for timing."}),
        )
        .await?;
    let id = sent["id"].as_str().unwrap_or_default().to_owned();
    let deadline = tokio::time::Instant::now() + limit;
    while !delivered.remove(&id) {
        match tokio::time::timeout_at(deadline, events.next_event()).await {
            Ok(Ok(Some(event))) => {
                if event["type"] == "delivery"
                    && event["status"] == "delivered"
                    && let Some(id) = event["id"].as_str()
                {
                    delivered.insert(id.to_owned());
                }
            }
            Ok(Ok(None)) => anyhow::bail!("the daemon stopped"),
            Ok(Err(err)) => return Err(err.into()),
            Err(_) => return Ok(None),
        }
    }
    Ok(Some(start.elapsed()))
}

/// `direct`, `relayed` or `none`, as `peers` reports the connection to `name`.
async fn connection(socket: &Path, name: &str) -> anyhow::Result<String> {
    let peers = call(socket, "peers", Value::Null).await?;
    Ok(peers
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == name)
        .and_then(|p| p["connection"].as_str())
        .unwrap_or("none")
        .to_owned())
}
