//! How instances over one database talk: a [`ClusterBus`] carries each instance's
//! [`ClusterEvent`]s to all the others. [`PgBus`] uses PostgreSQL's LISTEN/NOTIFY on the same
//! database, so a cluster needs nothing beyond it; a broker (NATS, Redis) can implement the
//! same trait later.
//!
//! Notes are best effort, as presence is: a queue that is full drops the note (counted in the
//! log), and a lost connection is re-opened with backoff. Nothing durable travels here — mail
//! and prekeys are in the database; a lost "mail waiting" push is made good at the next login.

use std::time::Duration;

use futures::StreamExt;
use palaver_protocol::codec;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, NoTls};

use crate::service::ClusterEvent;
use crate::store::{StoreError, redact};

/// A [`ClusterEvent`] and the instance (its peer id) that sent it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ClusterNote {
    pub(crate) from: String,
    pub(crate) event: ClusterEvent,
}

/// Carries notes to the other instances.
pub(crate) trait ClusterBus: Send + std::fmt::Debug {
    /// Sends `note` to every instance (this one included; receivers skip their own). Never blocks.
    fn publish(&self, note: ClusterNote);
}

/// The NOTIFY channel all instances listen on.
const CHANNEL: &str = "palaver_cluster";
/// Notes waiting to be sent, and received notes waiting for the actor.
const QUEUE: usize = 4096;
/// PostgreSQL refuses a NOTIFY payload of 8000 bytes or more.
const MAX_PAYLOAD: usize = 7900;
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// LISTEN/NOTIFY over one dedicated connection (outside the store's pool: a listening
/// connection must stay open and is not shared).
#[derive(Debug)]
pub(crate) struct PgBus {
    outgoing: mpsc::Sender<ClusterNote>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for PgBus {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ClusterBus for PgBus {
    fn publish(&self, note: ClusterNote) {
        if self.outgoing.try_send(note).is_err() {
            tracing::warn!("cluster notes are not being sent fast enough; one was dropped");
        }
    }
}

fn encode_note(note: &ClusterNote) -> Option<String> {
    let text = hex::encode(codec::encode(note).ok()?);
    (text.len() <= MAX_PAYLOAD).then_some(text)
}

fn decode_note(payload: &str) -> Option<ClusterNote> {
    let bytes = hex::decode(payload).ok()?;
    codec::decode_bounded(&bytes, MAX_PAYLOAD).ok()
}

impl PgBus {
    /// Starts listening on `url` (on the current tokio runtime); notes from the others arrive on
    /// the returned receiver.
    pub(crate) fn start(url: &str) -> Result<(Self, mpsc::Receiver<ClusterNote>), StoreError> {
        let config: tokio_postgres::Config =
            url.parse()
                .map_err(|e: tokio_postgres::Error| StoreError::Location {
                    url: redact(url),
                    reason: e.to_string(),
                })?;
        let (outgoing, to_send) = mpsc::channel(QUEUE);
        let (received, incoming) = mpsc::channel(QUEUE);
        let task = tokio::spawn(run(config, redact(url), to_send, received));
        Ok((Self { outgoing, task }, incoming))
    }
}

async fn run(
    config: tokio_postgres::Config,
    url: String,
    mut to_send: mpsc::Receiver<ClusterNote>,
    received: mpsc::Sender<ClusterNote>,
) {
    const FIRST_BACKOFF: Duration = Duration::from_millis(100);
    let mut backoff = FIRST_BACKOFF;
    loop {
        let mut listened = false;
        match session(&config, &mut to_send, &received, &mut listened).await {
            Ok(()) => return,
            Err(error) => {
                tracing::warn!(%url, %error, "cluster bus: no connection; reconnecting");
            }
        }
        if listened {
            backoff = FIRST_BACKOFF;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One connection's life: listen, forward, send. `Ok` when the server is shutting down.
async fn session(
    config: &tokio_postgres::Config,
    to_send: &mut mpsc::Receiver<ClusterNote>,
    received: &mpsc::Sender<ClusterNote>,
    listened: &mut bool,
) -> Result<(), tokio_postgres::Error> {
    let (client, mut connection) = config.connect(NoTls).await?;
    let received = received.clone();
    let (closed_tx, mut closed) = tokio::sync::oneshot::channel::<tokio_postgres::Error>();
    let listener = tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(notification)) => {
                    match decode_note(notification.payload()) {
                        Some(note) => {
                            if received.try_send(note).is_err() {
                                tracing::warn!(
                                    "cluster notes arrive faster than they are handled; one was dropped"
                                );
                            }
                        }
                        None => tracing::warn!("cluster bus: a note that does not decode"),
                    }
                }
                Ok(_) => {}
                Err(error) => {
                    let _ = closed_tx.send(error);
                    return;
                }
            }
        }
    });
    let _abort_listener = AbortOnDrop(listener);
    client.batch_execute(&format!("LISTEN {CHANNEL}")).await?;
    *listened = true;
    tracing::info!("cluster bus: listening");
    loop {
        tokio::select! {
            note = to_send.recv() => {
                let Some(note) = note else { return Ok(()) };
                let Some(payload) = encode_note(&note) else {
                    tracing::warn!("cluster bus: a note too large to send was dropped");
                    continue;
                };
                client.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &payload]).await?;
            }
            error = &mut closed => {
                if let Ok(error) = error {
                    return Err(error);
                }
                // The listener ended without an error: the connection closed.
                return client.batch_execute("SELECT 1").await;
            }
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use palaver_protocol::UserName;
    use palaver_protocol::wire::{PresenceRecord, PresenceState, ServerPush};

    #[test]
    fn a_note_survives_the_payload_encoding_and_garbage_is_refused() {
        let notes = [
            ClusterNote {
                from: "12D3KooW".into(),
                event: ClusterEvent::Presence(PresenceRecord {
                    name: UserName::new("alice").unwrap(),
                    state: PresenceState::Away,
                    last_seen_ms: Some(7),
                }),
            },
            ClusterNote {
                from: "x".into(),
                event: ClusterEvent::ForUser {
                    name: UserName::new("bob").unwrap(),
                    push: ServerPush::MailWaiting { count: 3 },
                },
            },
        ];
        for note in notes {
            assert_eq!(decode_note(&encode_note(&note).unwrap()), Some(note));
        }
        assert_eq!(decode_note("zz"), None);
        assert_eq!(decode_note("00ff"), None);
    }
}
