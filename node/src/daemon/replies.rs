//! Control-socket calls that wait for something (a rendezvous answer, a send under way): what
//! they wait on carries a token ([`super::Pending`] and the send pipeline's jobs are plain
//! data), and the driver keeps the reply here until the answer, or the failure, comes. Every
//! parked reply belongs to a request the session machine holds or a job the send pipeline
//! holds (both bounded), or to a sealed message waiting for its flush; each of those ends in an
//! answer or a failure, so this is bounded too.

use std::collections::HashMap;

use serde_json::Value;

use crate::rpc::{Reply, RpcError};

/// Which parked reply an answer is for.
pub(crate) type ReplyToken = u64;

#[derive(Debug, Default)]
pub(crate) struct Replies {
    next: ReplyToken,
    waiting: HashMap<ReplyToken, Reply>,
}

impl Replies {
    pub(crate) fn park(&mut self, reply: Reply) -> ReplyToken {
        self.next += 1;
        self.waiting.insert(self.next, reply);
        self.next
    }

    /// The reply for `token`, to hand on to what answers it.
    pub(crate) fn take(&mut self, token: ReplyToken) -> Option<Reply> {
        self.waiting.remove(&token)
    }

    pub(crate) fn answer(&mut self, token: ReplyToken, result: Result<Value, RpcError>) {
        if let Some(reply) = self.take(token) {
            let _ = reply.send(result);
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use tokio::sync::oneshot;

    use super::Replies;

    #[test]
    fn each_parked_reply_is_answered_once_by_its_token() {
        let mut replies = Replies::default();
        let (first, mut first_rx) = oneshot::channel();
        let (second, mut second_rx) = oneshot::channel();
        let (a, b) = (replies.park(first), replies.park(second));
        assert_ne!(a, b);
        replies.answer(b, Ok(json!("second")));
        assert_eq!(second_rx.try_recv().unwrap().unwrap(), json!("second"));
        assert!(first_rx.try_recv().is_err(), "not answered yet");
        // A token answered (or taken) is gone: a second answer goes nowhere.
        replies.answer(b, Ok(json!("again")));
        assert!(replies.take(a).is_some() && replies.take(a).is_none());
    }
}
