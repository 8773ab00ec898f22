//! Group commit: the store is flushed by one flush at a time, off the actor, and whatever must wait
//! until earlier writes are on disk (an acknowledgement, a reply, the first send of a new
//! ciphertext) waits for the next flush to finish. Writes made while a flush runs go with the next
//! one, so a burst of messages costs a couple of fsyncs, not one each, and the actor never blocks
//! on the disk. (sled 0.34 can stall when many `flush_async` calls share its thread pool; one
//! flush at a time never does.)

use super::direct::Reply;
use super::{Internal, Node};
use crate::rpc::RpcError;
use serde_json::Value;

/// What to do once the writes made before it are durable (or the flush failed).
pub(crate) type AfterFlush = Box<dyn FnOnce(&mut Node, Result<(), String>) + Send>;

#[derive(Default)]
pub(crate) struct GroupCommit {
    /// Waiting for the next flush.
    waiting: Vec<AfterFlush>,
    /// Waiting for the flush under way, if one is.
    flushing: Option<Vec<AfterFlush>>,
}

impl Node {
    /// Runs `then` once everything written to the store so far is on disk.
    pub(crate) fn when_durable(
        &mut self,
        then: impl FnOnce(&mut Node, Result<(), String>) + Send + 'static,
    ) {
        self.commit.waiting.push(Box::new(then));
        if self.commit.flushing.is_none() {
            self.start_flush();
        }
    }

    /// Answers a command once what it wrote is durable (an error at once).
    pub(crate) fn answer_when_durable(&mut self, reply: Reply, result: Result<Value, RpcError>) {
        match result {
            Ok(value) => self.when_durable(move |_, flushed| {
                let _ = reply.send(flushed.map(|()| value).map_err(RpcError::failed));
            }),
            Err(err) => drop(reply.send(Err(err))),
        }
    }

    fn start_flush(&mut self) {
        self.commit.flushing = Some(std::mem::take(&mut self.commit.waiting));
        let store = self.store.clone();
        let internal = self.internal_tx.clone();
        tokio::spawn(async move {
            let result = match tokio::task::spawn_blocking(move || store.flush()).await {
                Ok(flushed) => flushed.map_err(|e| e.to_string()),
                Err(join) => Err(format!("the flush did not finish: {join}")),
            };
            let _ = internal.send(Internal::Flushed(result)).await;
        });
    }

    pub(crate) fn on_flushed(&mut self, result: Result<(), String>) {
        if let Err(err) = &result {
            tracing::error!("cannot make the store durable: {err}");
        }
        for then in self.commit.flushing.take().unwrap_or_default() {
            then(self, result.clone());
        }
        if !self.commit.waiting.is_empty() {
            self.start_flush();
        }
    }

    /// On the way out: flushes in place until nobody waits any more (what runs may write again).
    pub(crate) fn flush_before_exit(&mut self) {
        self.save_dirty_rooms();
        // A continuation rarely writes again; the bound only guards against a cycle.
        for _ in 0..8 {
            let result = self.store.flush().map_err(|e| e.to_string());
            let mut waiting = self.commit.flushing.take().unwrap_or_default();
            waiting.append(&mut self.commit.waiting);
            if waiting.is_empty() {
                return;
            }
            for then in waiting {
                then(self, result.clone());
            }
        }
    }
}
