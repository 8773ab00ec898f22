//! The node's own questions to the rendezvous, and what follows from each answer.
//!
//! A question goes out through the session's window ([`super::session::Session::request`])
//! with an [`Ask`] as its token: what it was for, and who waits on it. Its answer (or the
//! transport's failure) comes back to [`answered`], which says in order what follows
//! ([`Step`]): what to take in, which send goes on, which call is answered, and with what
//! words. The driver carries the steps out; it decides nothing about the answer itself.
//!
//! `T` is the driver's handle on a waiting call (a reply token); `D` its discovery question
//! (answered by [`super::discovery`], handed back untouched).

use crate::VerifyingKey;
use crate::identity::devices::SignedDeviceList;
use crate::node::direct::pipeline::{Answer as PipelineAnswer, CallId};
use crate::node::trust::Asked;
use crate::wire::rendezvous::AccountDevices;
use crate::wire::{MessageId, RefusalReason, RendezvousResponse, UserRecord};
use crate::{RoomName, UserName};

/// What a question to the rendezvous was for.
#[derive(Debug)]
pub enum Ask<T, D> {
    /// A name lookup for the send `call`.
    Lookup { names: Vec<UserName>, call: CallId },
    /// Contacts' keys, looked up again to notice a new one (a contact came back online): the
    /// answer pins nobody new.
    CheckKeys { names: Vec<UserName> },
    /// Who holds these keys (a send's, when `call` is set; else to name a stranger).
    WhoIs {
        keys: Vec<[u8; 32]>,
        call: Option<CallId>,
    },
    /// A prekey bundle, for the send `call`.
    Prekeys { call: CallId },
    /// A deposit of `id` in its recipient's mailbox.
    Deposit { id: MessageId },
    /// Presence of `names` for a call (`explicit`: named by the caller, not the contacts).
    Presence {
        names: Vec<UserName>,
        explicit: bool,
        reply: T,
    },
    /// `user`'s key, to invite them into `room`.
    Invite {
        room: RoomName,
        user: UserName,
        reply: T,
    },
    /// `name`'s key, to show (or confirm: `confirm`) its safety number.
    Verify {
        name: UserName,
        confirm: bool,
        reply: T,
    },
    /// A discovery question.
    Discovery(D),
    /// Device lists of these users (contacts', or our own), to take in. `claims`: users the
    /// rendezvous named, with their account keys, for the `waiting` senders' keys (see
    /// [`crate::node::devices::claim_holds`]); the senders are named once the lists are in (or
    /// get stand-ins); `call`: a send that asked who holds such a key.
    Devices {
        claims: Vec<(UserName, VerifyingKey)>,
        waiting: Vec<[u8; 32]>,
        call: Option<CallId>,
    },
    /// A step of the link under way ([`crate::node::devices::Linker`]).
    Link(LinkStep),
    /// Our new device list (a device revoked), published for a call.
    Revoke {
        list: Box<SignedDeviceList>,
        reply: T,
    },
}

/// What follows from an answer, in order.
#[derive(Debug, PartialEq, Eq)]
pub enum Step<T, D> {
    /// Take in what the rendezvous said of these users: keys (pinned, or a key change; only
    /// users `asked` covers) and presence.
    Learn {
        users: Vec<UserRecord>,
        asked: Asked,
    },
    /// The send `call` goes on with this.
    Pipeline {
        call: CallId,
        answer: PipelineAnswer,
    },
    /// These senders are not named here: what waited for their names goes out with stand-ins.
    Unnamed(Vec<[u8; 32]>),
    /// The mailbox holds `id`.
    Deposited(MessageId),
    /// The deposit of `id` did not happen; it stays in the outbox.
    DepositFailed { id: MessageId, reason: String },
    /// Answer the presence call: from `users`, or (`None`: the rendezvous could not say) from
    /// what we last knew.
    Presence {
        names: Vec<UserName>,
        explicit: bool,
        users: Option<Vec<UserRecord>>,
        reply: T,
    },
    /// `user` is known now (after the [`Step::Learn`] before this): invite them.
    Invite {
        room: RoomName,
        user: UserName,
        reply: T,
    },
    /// `name`'s key is as fresh as can be had: answer with its safety number.
    Verify {
        name: UserName,
        confirm: bool,
        reply: T,
    },
    /// The call fails with this.
    Fail { reply: T, error: String },
    /// The discovery question `D` was answered (or failed: `Err`, why).
    Discovery(D, Result<RendezvousResponse, String>),
    /// Take in these device lists (see [`crate::node::devices::learn`]); a user in `claims`
    /// who is no contact yet becomes one only if their list bears the claim out for one of the
    /// `waiting` keys ([`crate::node::devices::claim_holds`]).
    Devices {
        lists: Vec<AccountDevices>,
        claims: Vec<(UserName, VerifyingKey)>,
        waiting: Vec<[u8; 32]>,
    },
    /// The rendezvous named these users (with the account keys it gave) for keys that are not
    /// their account keys: fetch their device lists, then name the `waiting` senders (see
    /// [`Ask::Devices`]). Nobody is pinned on the rendezvous's word alone.
    FetchDevices {
        claims: Vec<(UserName, VerifyingKey)>,
        waiting: Vec<[u8; 32]>,
        call: Option<CallId>,
    },
    /// The link under way goes on with this.
    Link(LinkAnswer),
    /// Our device list is published: keep it as ours, and answer the call.
    Revoked {
        list: Box<SignedDeviceList>,
        reply: T,
    },
}

/// Which step of a link a question was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkStep {
    Take,
    Publish,
    Grant,
}

/// What the rendezvous said to a step of a link (`Err`: why it did not do it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkAnswer {
    /// What the link drop held at the slot asked for.
    Taken(Result<Option<Vec<u8>>, String>),
    Published(Result<(), String>),
    Granted(Result<(), String>),
}

/// What follows from `answer`, the rendezvous's answer to `ask` (`Err`: why none came).
pub fn answered<T, D>(
    ask: Ask<T, D>,
    answer: Result<RendezvousResponse, String>,
) -> Vec<Step<T, D>> {
    use RendezvousResponse as R;
    let no_answer = |error: &str| format!("the rendezvous did not answer: {error}");
    match (ask, answer) {
        (Ask::Discovery(asked), answer) => vec![Step::Discovery(asked, answer)],
        (
            Ask::Devices {
                claims,
                waiting,
                call,
            },
            answer,
        ) => {
            // Refused or unanswered: the lists are asked for again at the next login or push.
            let lists = match answer {
                Ok(R::Devices(lists)) => vec![Step::Devices {
                    lists,
                    claims,
                    waiting: waiting.clone(),
                }],
                _ => Vec::new(),
            };
            let unnamed = (!waiting.is_empty()).then_some(Step::Unnamed(waiting));
            lists
                .into_iter()
                .chain(unnamed)
                .chain(call.map(learned))
                .collect()
        }
        (Ask::Link(step), answer) => {
            let done = |answer: Result<RendezvousResponse, String>| match answer {
                Ok(R::Done) => Ok(()),
                Ok(R::Refused(refusal)) => Err(refusal.to_string()),
                Ok(other) => Err(format!("unexpected answer from the rendezvous: {other:?}")),
                Err(error) => Err(no_answer(&error)),
            };
            vec![Step::Link(match step {
                LinkStep::Take => LinkAnswer::Taken(match answer {
                    Ok(R::Link(held)) => Ok(held.map(|sealed| sealed.0)),
                    Ok(other) => Err(format!("unexpected answer from the rendezvous: {other:?}")),
                    Err(error) => Err(no_answer(&error)),
                }),
                LinkStep::Publish => LinkAnswer::Published(done(answer)),
                LinkStep::Grant => LinkAnswer::Granted(done(answer)),
            })]
        }
        (Ask::Revoke { list, reply }, Ok(R::Done)) => vec![Step::Revoked { list, reply }],
        (Ask::Revoke { reply, .. }, Ok(R::Refused(refusal))) => vec![Step::Fail {
            reply,
            error: format!("the rendezvous refused the new device list: {refusal}"),
        }],
        (Ask::Revoke { reply, .. }, Ok(other)) => vec![Step::Fail {
            reply,
            error: format!("unexpected answer from the rendezvous: {other:?}"),
        }],
        (Ask::Revoke { reply, .. }, Err(error)) => vec![Step::Fail {
            reply,
            error: no_answer(&error),
        }],
        (Ask::Lookup { names, call }, Ok(R::Users(users))) => {
            let learn = Step::Learn {
                users,
                asked: Asked::Names(names),
            };
            vec![learn, learned(call)]
        }
        (Ask::CheckKeys { names }, Ok(R::Users(users))) => vec![Step::Learn {
            users,
            asked: Asked::ContactsAmong(names),
        }],
        (Ask::WhoIs { keys, call }, Ok(R::Users(users)))
            if users.iter().any(|u| !keys.contains(&u.identity.to_bytes())) =>
        {
            // Named for a key that is not their account key: one of their linked devices, if
            // their device list (signed by that account key, fetched next) names it. At most
            // one claim per key asked about.
            let (own, by_device): (Vec<_>, Vec<_>) = users
                .into_iter()
                .partition(|u| keys.contains(&u.identity.to_bytes()));
            let claims = by_device
                .into_iter()
                .take(keys.len())
                .map(|u| (u.name, u.identity))
                .collect();
            vec![
                Step::Learn {
                    users: own,
                    asked: Asked::Keys(keys.clone()),
                },
                Step::FetchDevices {
                    claims,
                    waiting: keys,
                    call,
                },
            ]
        }
        (Ask::WhoIs { keys, call }, Ok(R::Users(users))) => {
            let learn = Step::Learn {
                users,
                asked: Asked::Keys(keys.clone()),
            };
            // Those named were released with their names.
            let rest = call.map(learned).into_iter().chain([Step::Unnamed(keys)]);
            std::iter::once(learn).chain(rest).collect()
        }
        (Ask::Prekeys { call }, Ok(R::Prekeys(bundle))) => {
            vec![pipeline(call, PipelineAnswer::Prekeys(bundle))]
        }
        // Not yet published, or asked too fast (a burst of invitations, say): asked again in a
        // moment, as a send to someone who just logged in is. Failing would drop the message.
        (Ask::Prekeys { call }, Ok(R::Refused(refusal)))
            if matches!(
                refusal.reason,
                RefusalReason::NoPrekeys | RefusalReason::RateLimited
            ) =>
        {
            vec![pipeline(
                call,
                PipelineAnswer::NoPrekeys(refusal.to_string()),
            )]
        }
        (Ask::Prekeys { call }, Ok(R::Refused(refusal))) => {
            let error = format!("cannot start a session: {refusal}");
            vec![pipeline(call, PipelineAnswer::Failed(error))]
        }
        (
            Ask::Lookup { call, .. }
            | Ask::WhoIs {
                call: Some(call), ..
            },
            Ok(R::Refused(refusal)),
        ) if refusal.reason == RefusalReason::RateLimited => {
            vec![pipeline(
                call,
                PipelineAnswer::NoPrekeys(refusal.to_string()),
            )]
        }
        (
            Ask::Lookup { call, .. }
            | Ask::WhoIs {
                call: Some(call), ..
            },
            Ok(R::Refused(refusal)),
        ) => {
            let error = format!("lookup failed: {refusal}");
            vec![pipeline(call, PipelineAnswer::Failed(error))]
        }
        (
            Ask::Lookup { call, .. }
            | Ask::WhoIs {
                call: Some(call), ..
            }
            | Ask::Prekeys { call },
            Err(error),
        ) => vec![pipeline(call, PipelineAnswer::Failed(no_answer(&error)))],
        (Ask::WhoIs { keys, call: None }, Ok(R::Refused(_)) | Err(_)) => {
            vec![Step::Unnamed(keys)]
        }
        (Ask::Deposit { id }, Ok(R::Deposited { .. })) => vec![Step::Deposited(id)],
        (Ask::Deposit { id }, Ok(R::Refused(refusal))) => vec![Step::DepositFailed {
            id,
            reason: refusal.to_string(),
        }],
        (Ask::Deposit { id }, Err(error)) => vec![Step::DepositFailed {
            id,
            reason: no_answer(&error),
        }],
        (
            Ask::Presence {
                names,
                explicit,
                reply,
            },
            answer,
        ) => {
            let (users, learn) = match answer {
                // A check of our contacts' keys too (asking about others pins nobody).
                Ok(R::Users(users)) => {
                    let learn = Step::Learn {
                        users: users.clone(),
                        asked: Asked::ContactsAmong(names.clone()),
                    };
                    (Some(users), Some(learn))
                }
                // Refused, or no answer: what we last knew, marked stale.
                _ => (None, None),
            };
            let presence = Step::Presence {
                names,
                explicit,
                users,
                reply,
            };
            learn.into_iter().chain([presence]).collect()
        }
        (Ask::Invite { room, user, reply }, Ok(R::Users(users))) => {
            let found = users.iter().any(|u| u.name == user);
            let learn = Step::Learn {
                users,
                asked: Asked::Names(vec![user.clone()]),
            };
            let then = if found {
                Step::Invite { room, user, reply }
            } else {
                let error = format!("unknown user {user} at this rendezvous");
                Step::Fail { reply, error }
            };
            vec![learn, then]
        }
        (
            Ask::Verify {
                name,
                confirm,
                reply,
            },
            Ok(R::Users(users)),
        ) => {
            let learn = Step::Learn {
                users,
                asked: Asked::Names(vec![name.clone()]),
            };
            vec![
                learn,
                Step::Verify {
                    name,
                    confirm,
                    reply,
                },
            ]
        }
        (Ask::Invite { reply, .. } | Ask::Verify { reply, .. }, Ok(R::Refused(refusal))) => {
            vec![Step::Fail {
                reply,
                error: refusal.to_string(),
            }]
        }
        (Ask::Invite { reply, .. } | Ask::Verify { reply, .. }, Err(error)) => {
            vec![Step::Fail {
                reply,
                error: no_answer(&error),
            }]
        }
        (Ask::Invite { reply, .. } | Ask::Verify { reply, .. }, Ok(other)) => {
            let error = format!("unexpected answer from the rendezvous: {other:?}");
            vec![Step::Fail { reply, error }]
        }
        (
            Ask::Lookup { call, .. }
            | Ask::WhoIs {
                call: Some(call), ..
            },
            Ok(other),
        )
        | (Ask::Prekeys { call }, Ok(other)) => {
            let error = format!("unexpected answer from the rendezvous: {other:?}");
            vec![pipeline(call, PipelineAnswer::Failed(error))]
        }
        (Ask::WhoIs { keys, call: None }, Ok(_)) => vec![Step::Unnamed(keys)],
        // Nobody waits on it: nothing to learn from a refusal or silence.
        (Ask::CheckKeys { .. }, _) => Vec::new(),
        (Ask::Deposit { id }, Ok(other)) => vec![Step::DepositFailed {
            id,
            reason: format!("unexpected answer: {other:?}"),
        }],
    }
}

fn learned<T, D>(call: CallId) -> Step<T, D> {
    pipeline(call, PipelineAnswer::Learned)
}

fn pipeline<T, D>(call: CallId, answer: PipelineAnswer) -> Step<T, D> {
    Step::Pipeline { call, answer }
}

#[cfg(test)]
#[path = "asks_tests.rs"]
mod tests;
