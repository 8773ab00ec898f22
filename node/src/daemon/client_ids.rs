//! Idempotent sends. A client may name a send with a key of its own (`client_id` in the `send`
//! call, `palaver send --id`): an interrupted send can then be repeated safely. The key is stored
//! with the message, in the same transaction, so a repeat — also after a daemon restart —
//! answers with the first send's message id and sends nothing; a repeat while the first is still
//! under way waits for the first's answer. A key reused for a different recipient or text is an
//! error rather than a silent "already sent".

use palaver_protocol::wire::Payload;
use palaver_protocol::{MessageId, UserName};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::direct::Job;
use super::{Internal, Node};
use crate::rpc::Reply;
use crate::rpc::RpcError;
use crate::store::StateKey;

/// Keyed sends under way at once; past that, a new one is refused until some are answered.
const MAX_IN_FLIGHT: usize = 1024;

/// What a client's key stands for: the message it sent, and what was in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ClientSend {
    pub(crate) id: MessageId,
    pub(crate) to: UserName,
    pub(crate) text_sha256: [u8; 32],
}

/// A keyed send that is under way: what it is, and who waits for its answer.
#[derive(Debug)]
pub(crate) struct InFlight {
    to: UserName,
    text_sha256: [u8; 32],
    waiting: Vec<Reply>,
}

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
}

fn state_key(client_id: &str) -> String {
    format!("client_id/{client_id}")
}

fn sha256(text: &str) -> [u8; 32] {
    Sha256::digest(text.as_bytes()).into()
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
            return self.send_direct(Job::to_name(to, Payload::Text(text), Some(reply)));
        };
        let text_sha256 = sha256(&text);
        let reused = || {
            Err(RpcError::invalid(format!(
                "client_id {client_id:?} was already used for another message; pick a new one"
            )))
        };
        match self
            .store
            .get::<ClientSend>(StateKey::Meta(&state_key(&client_id)))
        {
            Ok(Some(sent)) if sent.to == to && sent.text_sha256 == text_sha256 => {
                let status = self.store.entry(&sent.id).ok().flatten().map(|e| e.status);
                let status = status.map(|s| s.as_str()).unwrap_or("sending");
                // Once durable: the record may have been written by a send that is just now
                // being flushed.
                let answer = json!({"id": sent.id.to_hex(), "status": status});
                return self.answer_when_durable(reply, Ok(answer));
            }
            Ok(Some(_)) => return drop(reply.send(reused())),
            Ok(None) => {}
            Err(err) => return drop(reply.send(Err(RpcError::failed(err.to_string())))),
        }
        if let Some(under_way) = self.sends_in_flight.get_mut(&client_id) {
            if under_way.to == to && under_way.text_sha256 == text_sha256 {
                under_way.waiting.push(reply);
            } else {
                let _ = reply.send(reused());
            }
            return;
        }
        if self.sends_in_flight.len() >= MAX_IN_FLIGHT {
            let _ = reply.send(Err(RpcError::failed(
                "too many sends with a client_id under way; try again in a moment",
            )));
            return;
        }
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
        self.sends_in_flight.insert(
            client_id.clone(),
            InFlight {
                to: to.clone(),
                text_sha256,
                waiting: vec![reply],
            },
        );
        let mut job = Job::to_name(to.clone(), Payload::Text(text), Some(answer));
        job.client_key = Some(ClientKey {
            client_id,
            to,
            text_sha256,
        });
        self.send_direct(job);
    }

    /// A keyed send has its answer: everyone waiting for it hears the same.
    pub(crate) fn on_send_answered(&mut self, client_id: String, result: Result<Value, RpcError>) {
        for reply in self
            .sends_in_flight
            .remove(&client_id)
            .map(|f| f.waiting)
            .unwrap_or_default()
        {
            let _ = reply.send(result.clone());
        }
    }
}
