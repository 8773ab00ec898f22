//! `--wait` for scripts (and the README's quick start, pasted in one go): `status --wait` returns
//! once the daemon is up and logged in at the rendezvous; `send --wait` once the message is
//! delivered or queued in the recipient's mailbox. Both give up, with what they saw, after
//! [`PATIENCE`].

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;

use crate::rpc::{Client, ClientError};

/// How long a wait may take: a daemon just started logs in within a second or two, and a
/// message to someone online is delivered in about as long.
pub(super) const PATIENCE: Duration = Duration::from_secs(60);

const POLL: Duration = Duration::from_millis(100);

/// The daemon's status once it is logged in, waiting for it to start (its socket to appear) and
/// log in. A login the rendezvous refused ends the wait with the refusal.
pub(super) async fn until_logged_in(socket: &Path) -> anyhow::Result<Value> {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut last: Option<Value> = None;
    loop {
        match Client::connect(socket).await {
            Ok(mut client) => {
                let status = client.call("status", Value::Null).await?;
                let rendezvous = &status["rendezvous"];
                if rendezvous["logged_in"] == Value::Bool(true) {
                    return Ok(status);
                }
                if let Some(refused) = rendezvous["refused"].as_str() {
                    bail!("the rendezvous refused to log us in: {refused}");
                }
                last = Some(status);
            }
            // Up a moment ago, gone now: it stopped rather than logged in (a copied home's
            // daemon does, refused by the rendezvous), and said why where it runs.
            Err(ClientError::NotRunning(_)) if last.is_some() => {
                bail!("the daemon stopped before it logged in: its output (or log) says why")
            }
            // Not started yet (or just starting): its socket is not there.
            Err(ClientError::NotRunning(_)) => {}
            Err(err) => return Err(err.into()),
        }
        if tokio::time::Instant::now() >= deadline {
            let state = match last {
                None => "the daemon did not start".to_owned(),
                Some(status) if status["rendezvous"]["connected"] == Value::Bool(true) => {
                    "connected to the rendezvous, still logging in".to_owned()
                }
                Some(status) => format!(
                    "the rendezvous at {} is not reachable",
                    status["rendezvous"]["address"].as_str().unwrap_or("?")
                ),
            };
            bail!("not logged in after {} s: {state}", PATIENCE.as_secs());
        }
        tokio::time::sleep(POLL).await;
    }
}

/// A subscription opened before a call (a send, a file offer), so the events it leads to cannot
/// slip past.
#[derive(Debug)]
pub(super) struct Watch(pub(super) Client);

impl Watch {
    pub(super) async fn open(socket: &Path) -> anyhow::Result<Self> {
        let mut client = Client::connect(socket).await?;
        client.subscribe().await?;
        Ok(Self(client))
    }

    /// Waits until message `id` (hex) is `delivered` or `queued`; `failed` is an error.
    pub(super) async fn settled(mut self, id: &str) -> anyhow::Result<String> {
        let wait = async {
            while let Some(event) = self.0.next_event().await? {
                if event["type"] != "delivery" || event["id"] != id {
                    continue;
                }
                match event["status"].as_str() {
                    Some(status @ ("delivered" | "queued")) => return Ok(status.to_owned()),
                    Some("failed") => bail!("message {id} failed (`palaver listen` says why)"),
                    _ => {}
                }
            }
            bail!("the daemon stopped before message {id} was delivered")
        };
        tokio::time::timeout(PATIENCE, wait).await.with_context(|| {
            format!(
                "message {id} is neither delivered nor queued after {} s; it stays in the outbox",
                PATIENCE.as_secs()
            )
        })?
    }
}
