//! Idempotent sends, driven: which repeat is answered how is
//! [`palaver_protocol::node::direct::keyed`]'s to decide; this reads what the store holds under
//! the client's key, and answers.

use palaver_protocol::UserName;
use palaver_protocol::node::direct::keyed::{Begin, KeyedError, KeyedSend, text_digest};
use palaver_protocol::wire::Payload;
use serde_json::{Value, json};

use super::direct::Job;
use super::{Internal, Node};
use crate::rpc::Reply;
use crate::rpc::RpcError;
use crate::store::StateKey;

/// The key a keyed send is stored under, and what it records once the message is sealed.
#[derive(Debug, Clone)]
pub(crate) struct ClientKey {
    pub(crate) client_id: String,
    pub(crate) to: UserName,
    pub(crate) text_sha256: [u8; 32],
}

impl ClientKey {
    pub(crate) fn state_key(&self) -> String {
        state_key(&self.client_id)
    }

    /// What the store keeps under the key, with message `id`.
    pub(crate) fn record(&self, id: palaver_protocol::MessageId) -> KeyedSend {
        KeyedSend {
            id,
            to: self.to.clone(),
            text_sha256: self.text_sha256,
        }
    }
}

fn state_key(client_id: &str) -> String {
    format!("client_id/{client_id}")
}

impl Node {
    /// `send`, deduplicated on `client_id` when the caller gave one.
    pub(crate) fn send_text(
        &mut self,
        to: UserName,
        text: String,
        client_id: Option<String>,
        reply: Reply,
    ) {
        let Some(client_id) = client_id else {
            let reply = self.replies.park(reply);
            return self.send_direct(Job::to_name(to, Payload::Text(text), Some(reply)));
        };
        let text_sha256 = text_digest(&text);
        let stored = match self
            .store
            .get::<KeyedSend>(StateKey::Meta(&state_key(&client_id)))
        {
            Ok(stored) => stored,
            Err(err) => return drop(reply.send(Err(RpcError::failed(err.to_string())))),
        };
        let waiter = self.replies.park(reply);
        match self
            .keyed_sends
            .begin(&client_id, &to, text_sha256, stored.as_ref(), waiter)
        {
            Begin::Sent { id, waiter } => {
                let status = self.store.entry(&id).ok().flatten().map(|e| e.status);
                let status = status.map(|s| s.as_str()).unwrap_or("sending");
                // Once durable: the record may have been written by a send that is just now
                // being flushed.
                let answer = json!({"id": id.to_hex(), "status": status});
                if let Some(reply) = self.replies.take(waiter) {
                    self.answer_when_durable(reply, Ok(answer));
                }
            }
            Begin::Joined => {}
            Begin::Refused { waiter, error } => {
                let error = match error {
                    KeyedError::Reused(_) => RpcError::invalid(error.to_string()),
                    KeyedError::TooMany | KeyedError::TooManyRepeats(_) => {
                        RpcError::failed(error.to_string())
                    }
                };
                self.replies.answer(waiter, Err(error));
            }
            Begin::Start => self.start_keyed_send(client_id, to, text, text_sha256),
        }
    }

    fn start_keyed_send(&mut self, client_id: String, to: UserName, text: String, sha: [u8; 32]) {
        // The job answers into this channel; whoever waits (the first caller and any repeat
        // that came meanwhile) hears that answer through the actor.
        let (answer, answered) = tokio::sync::oneshot::channel();
        let internal = self.internal_tx.clone();
        let key = client_id.clone();
        tokio::spawn(async move {
            let result = answered
                .await
                .unwrap_or_else(|_| Err(RpcError::failed("the daemon is shutting down")));
            let _ = internal
                .send(Internal::SendAnswered {
                    client_id: key,
                    result,
                })
                .await;
        });
        let answer = self.replies.park(answer);
        let mut job = Job::to_name(to.clone(), Payload::Text(text), Some(answer));
        job.client_key = Some(ClientKey {
            client_id,
            to,
            text_sha256: sha,
        });
        self.send_direct(job);
    }

    /// A keyed send has its answer: everyone waiting for it hears the same.
    pub(crate) fn on_send_answered(&mut self, client_id: String, result: Result<Value, RpcError>) {
        for waiter in self.keyed_sends.answered(&client_id) {
            self.replies.answer(waiter, result.clone());
        }
    }
}
