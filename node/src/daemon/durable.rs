//! Group commit: the store is flushed by one flush at a time, off the actor (on [`Flusher`]'s
//! thread), and whatever must wait until earlier writes are on disk (an acknowledgement, a
//! reply, the first send of a new ciphertext) waits for the next flush to finish. Writes made
//! while a flush runs go with the next one, so a burst of messages costs a couple of fsyncs, not
//! one each, and the actor never blocks on the disk. (sled 0.34 can stall when many
//! `flush_async` calls share its thread pool; one flush at a time never does.)

use std::sync::Arc;

use libp2p::request_response::ResponseChannel;
use palaver_protocol::wire::PeerResponse;
use palaver_protocol::{MessageId, RoomId};
use serde_json::Value;

use super::{Internal, Node};
use crate::rpc::Reply;
use crate::rpc::RpcError;
use crate::store::StoreError;

/// Why the writes a waiter waited for could not be made durable (shared by all its waiters).
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum FlushError {
    #[error(transparent)]
    Store(Arc<StoreError>),
    #[error("the flush did not finish: {0}")]
    Interrupted(String),
}

impl From<StoreError> for FlushError {
    fn from(err: StoreError) -> Self {
        FlushError::Store(Arc::new(err))
    }
}

/// How a flush ended.
pub(crate) type Flushed = Result<(), FlushError>;

/// What waits for the writes made before it to be durable, and is done once they are (or
/// the flush failed).
#[derive(Debug)]
pub(crate) enum AfterFlush {
    /// Answer a call with `value` (with the failure if the flush failed).
    Answer { reply: Reply, value: Value },
    /// A direct message we sealed: the send is answered, and the delivery planner may hand it
    /// out unless it did already (`sent_ahead`; see [`Node::on_sealed_durable`]).
    Sealed {
        id: MessageId,
        reply: Option<super::replies::ReplyToken>,
        warning: Option<String>,
        sent_ahead: bool,
    },
    /// The sessions with `peer` that reserve `ahead` are on disk: what it covers may go out
    /// before its own flush.
    SendAhead {
        peer: [u8; 32],
        ahead: palaver_protocol::crypto::ratchet::SendAhead,
    },
    /// A room message of ours: published, and the send answered (see
    /// [`Node::on_room_message_durable`]).
    RoomSealed {
        room: RoomId,
        frame: Vec<u8>,
        id: MessageId,
        reply: Reply,
    },
    /// A peer's delivery is stored: it is acknowledged (a sender that hears nothing tries again).
    Acknowledge {
        channel: ResponseChannel<PeerResponse>,
        response: PeerResponse,
    },
    /// Held mail is stored: the mailbox lets it go, and its senders get receipts (see
    /// [`Node::on_mail_durable`]).
    MailStored {
        batch: palaver_protocol::node::direct::mail::MailBatch,
        more: bool,
    },
    /// Our prekeys' secrets are on disk: the session may publish their public halves.
    Prekeys,
}

/// The store's flush thread. A flush handed to it costs one wake-up there and one back to the
/// actor; a task that waited on tokio's blocking pool cost two more, a real share of a direct
/// message's round trip on a small machine (BENCHMARKS.md). One flush at a time (group commit),
/// so its queue holds one request.
pub(crate) struct Flusher {
    requests: Option<std::sync::mpsc::SyncSender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Flusher {
    /// Starts the thread. It holds a handle to the store (and so sled's lock on it) until
    /// [`Flusher::stop`], or until the flusher is dropped and it sees that.
    pub(crate) fn start(
        store: crate::store::Store,
        internal: tokio::sync::mpsc::Sender<Internal>,
    ) -> std::io::Result<Self> {
        let (requests, asked) = std::sync::mpsc::sync_channel::<()>(1);
        let thread = std::thread::Builder::new()
            .name("palaver-flush".into())
            .spawn(move || {
                while asked.recv().is_ok() {
                    // A panic in the store is a failed flush (the daemon stops), not a thread
                    // gone silent with the group commit waiting on it forever.
                    let flush = std::panic::AssertUnwindSafe(|| store.flush());
                    let flushed = match std::panic::catch_unwind(flush) {
                        Ok(flushed) => flushed.map_err(FlushError::from),
                        Err(_) => Err(FlushError::Interrupted(
                            "the store panicked while flushing".into(),
                        )),
                    };
                    if internal.blocking_send(Internal::Flushed(flushed)).is_err() {
                        break;
                    }
                }
            })?;
        Ok(Self {
            requests: Some(requests),
            thread: Some(thread),
        })
    }

    /// Hands the thread a flush; `false` if it is gone.
    fn request(&self) -> bool {
        match &self.requests {
            Some(requests) => match requests.try_send(()) {
                Ok(()) => true,
                // Group commit starts a flush only once the last one answered.
                Err(std::sync::mpsc::TrySendError::Full(())) => {
                    debug_assert!(false, "a second flush requested while one runs");
                    true
                }
                Err(std::sync::mpsc::TrySendError::Disconnected(())) => false,
            },
            None => false,
        }
    }

    /// Ends the thread and waits for it, so the store is closed once the daemon is: called
    /// after the actor's loop has dropped its channel (a flush under way finishes, and its
    /// answer has nowhere to go).
    fn stop(&mut self) {
        self.requests = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// What a caller hears when the flush its write waited for failed.
pub(crate) fn not_durable(err: &FlushError) -> String {
    format!(
        "the store could not confirm it is on disk ({err}); the daemon stops, and whatever \
         reached the disk goes out after a restart"
    )
}

impl Node {
    /// Does `then` once everything written to the store so far is on disk.
    pub(crate) fn when_durable(&mut self, then: AfterFlush) {
        if self.commit.wait(then) {
            self.start_flush();
        }
    }

    /// Answers a command once what it wrote is durable (an error at once).
    pub(crate) fn answer_when_durable(&mut self, reply: Reply, result: Result<Value, RpcError>) {
        match result {
            Ok(value) => self.when_durable(AfterFlush::Answer { reply, value }),
            Err(err) => drop(reply.send(Err(err))),
        }
    }

    /// What waited for a flush, done now that it ended.
    fn after_flush(&mut self, then: AfterFlush, flushed: Flushed) {
        match then {
            AfterFlush::Answer { reply, value } => {
                let answer = flushed
                    .map(|()| value)
                    .map_err(|e| RpcError::failed(not_durable(&e)));
                let _ = reply.send(answer);
            }
            AfterFlush::Sealed {
                id,
                reply,
                warning,
                sent_ahead,
            } => self.on_sealed_durable(id, reply, warning, sent_ahead, flushed),
            AfterFlush::SendAhead { peer, ahead } => {
                if flushed.is_ok() {
                    self.sends_ahead.insert(peer, ahead);
                }
            }
            AfterFlush::RoomSealed {
                room,
                frame,
                id,
                reply,
            } => self.on_room_message_durable(room, frame, id, reply, flushed),
            AfterFlush::Acknowledge { channel, response } => {
                if flushed.is_ok() {
                    let peer = &mut self.swarm.behaviour_mut().peer;
                    let _ = peer.send_response(channel, response);
                }
            }
            AfterFlush::MailStored { batch, more } => self.on_mail_durable(batch, more, flushed),
            AfterFlush::Prekeys => {
                if let Err(err) = &flushed {
                    tracing::error!("cannot store prekeys, not publishing them: {err}");
                }
                let durable = flushed.is_ok();
                self.session_input(palaver_protocol::node::session::Input::PrekeysDurable {
                    durable,
                });
            }
        }
    }

    fn start_flush(&mut self) {
        self.commit.start();
        if !self.flusher.request() {
            // Its thread is gone (a panic in the store): nothing can be made durable any more.
            let internal = self.internal_tx.clone();
            tokio::spawn(async move {
                let stopped = FlushError::Interrupted("the store's flush thread stopped".into());
                let _ = internal.send(Internal::Flushed(Err(stopped))).await;
            });
        }
    }

    pub(crate) fn on_flushed(&mut self, result: Flushed) {
        if let Err(err) = &result {
            // After a failed fsync nothing written since can be trusted to reach the disk, and
            // retrying it proves nothing: stop, rather than let anything that waited go out.
            tracing::error!("cannot make the store durable, stopping: {err}");
            self.stopping = true;
            self.fatal = Some(format!("cannot make the store durable: {err}"));
        }
        for then in self.commit.finish() {
            self.after_flush(then, result.clone());
        }
        if self.commit.settle() && !self.stopping {
            self.start_flush();
        }
    }

    /// On the way out (the actor's loop ended): stops the flush thread (waiting for a flush it
    /// runs), then flushes in place until nobody waits any more, since what runs may write
    /// again; then, if all of it is on disk, notes that the ratchet sessions are settled (the
    /// next start skips nothing, see [`crate::store::Store::resume_sessions`]). An error if the
    /// last flush failed.
    pub(crate) fn flush_before_exit(&mut self) -> Flushed {
        self.stopping = true;
        self.flusher.stop();
        self.save_dirty_rooms();
        // A waiter rarely writes again; the bound only guards against a cycle.
        let mut result = Ok(());
        let mut settled = false;
        for _ in 0..8 {
            result = self.store.flush().map_err(FlushError::from);
            let waiting = self.commit.drain();
            if waiting.is_empty() {
                settled = result.is_ok();
                break;
            }
            for then in waiting {
                self.after_flush(then, result.clone());
            }
        }
        // Nothing seals any more: only the actor does, and its loop is over.
        if settled && let Err(err) = self.store.settle_sessions() {
            tracing::warn!("the next start skips ahead in every ratchet session: {err}");
        }
        result
    }
}

#[cfg(test)]
mod tests {
    /// A store that cannot be made durable (a full disk, say) stops the daemon with an error,
    /// so the process exits non-zero and a supervisor restarts it.
    #[tokio::test]
    async fn a_failed_flush_stops_the_daemon_with_an_error() {
        use super::super::{DaemonConfig, Internal, Node};
        let dir = tempfile::tempdir().unwrap();
        let home = crate::home::Home::new(dir.path());
        home.init(
            palaver_protocol::UserName::new("disk").unwrap(),
            None,
            false,
        )
        .unwrap();
        let (identity, name) = home.open(None).unwrap();
        let store = crate::store::Store::open(&dir.path().join("store")).unwrap();
        // Nobody listens there: the daemon keeps trying, which is all this test needs.
        let mut config = DaemonConfig::new(
            dir.path().to_path_buf(),
            "/ip4/127.0.0.1/tcp/9".parse().unwrap(),
        );
        config.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()];
        let (events, _) = tokio::sync::broadcast::channel(16);
        let mut node = Node::new(identity, name, store, &config, events).unwrap();
        let (_calls, calls) = tokio::sync::mpsc::channel(1);
        node.internal_tx
            .send(Internal::Flushed(Err(super::FlushError::Interrupted(
                "No space left on device (os error 28)".into(),
            ))))
            .await
            .unwrap();
        let stopped = node.run(calls, std::future::pending()).await;
        let err = stopped.expect_err("a daemon whose store failed must not exit 0");
        assert!(err.to_string().contains("No space left"), "{err}");
    }
}
