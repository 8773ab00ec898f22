use super::*;
use crate::wire::{PresenceRecord, PresenceState, Refusal};

type S = Step<u8, &'static str>;

fn name(n: &str) -> UserName {
    UserName::new(n).unwrap()
}

fn user(n: &str, seed: u8) -> UserRecord {
    UserRecord {
        name: name(n),
        identity: ed25519_dalek::SigningKey::from_bytes(&[seed; 32]).verifying_key(),
        presence: PresenceRecord {
            name: name(n),
            state: PresenceState::Online,
            last_seen_ms: Some(1),
        },
    }
}

fn refused(reason: RefusalReason) -> Result<RendezvousResponse, String> {
    Ok(RendezvousResponse::Refused(Refusal {
        reason,
        detail: "no".into(),
    }))
}

#[test]
fn a_sends_lookup_is_learned_then_the_send_goes_on_and_a_failure_says_why() {
    let ask = |call| Ask::<u8, &str>::Lookup {
        names: vec![name("bob")],
        call,
    };
    let users = vec![user("bob", 2)];
    let steps: Vec<S> = answered(ask(4), Ok(RendezvousResponse::Users(users.clone())));
    assert_eq!(
        steps,
        [
            Step::Learn {
                users: users.clone(),
                asked: Asked::Names(vec![name("bob")])
            },
            Step::Pipeline {
                call: 4,
                answer: PipelineAnswer::Learned
            }
        ]
    );
    let steps: Vec<S> = answered(ask(4), Err("timed out".into()));
    assert!(
        matches!(&steps[..], [Step::Pipeline { call: 4, answer: PipelineAnswer::Failed(e) }]
            if e.contains("did not answer") && e.contains("timed out")),
        "{steps:?}"
    );
}

#[test]
fn checking_contacts_keys_pins_nobody_new_and_silence_teaches_nothing() {
    let check = || Ask::<u8, &str>::CheckKeys {
        names: vec![name("bob")],
    };
    let users = vec![user("bob", 2)];
    let steps: Vec<S> = answered(check(), Ok(RendezvousResponse::Users(users.clone())));
    assert_eq!(
        steps,
        [Step::Learn {
            users,
            asked: Asked::ContactsAmong(vec![name("bob")])
        }]
    );
    assert!(answered::<u8, &str>(check(), Err("gone".into())).is_empty());
    assert!(answered::<u8, &str>(check(), refused(RefusalReason::RateLimited)).is_empty());
}

#[test]
fn prekeys_not_yet_published_wait_and_other_refusals_fail() {
    let steps: Vec<S> = answered(Ask::Prekeys { call: 1 }, refused(RefusalReason::NoPrekeys));
    assert!(matches!(
        &steps[..],
        [Step::Pipeline {
            answer: PipelineAnswer::NoPrekeys(_),
            ..
        }]
    ));
    // Asked too fast: waits and asks again, as for prekeys not yet published; so does a lookup.
    let steps: Vec<S> = answered(
        Ask::Prekeys { call: 1 },
        refused(RefusalReason::RateLimited),
    );
    assert!(matches!(
        &steps[..],
        [Step::Pipeline {
            answer: PipelineAnswer::NoPrekeys(_),
            ..
        }]
    ));
    let lookup = Ask::Lookup {
        call: 1,
        names: vec![crate::UserName::new("bob").unwrap()],
    };
    let steps: Vec<S> = answered(lookup, refused(RefusalReason::RateLimited));
    assert!(
        matches!(
            &steps[..],
            [Step::Pipeline {
                answer: PipelineAnswer::NoPrekeys(_),
                ..
            }]
        ),
        "{steps:?}"
    );
    let steps: Vec<S> = answered(
        Ask::Prekeys { call: 1 },
        refused(RefusalReason::UnknownUser),
    );
    assert!(
        matches!(&steps[..], [Step::Pipeline { answer: PipelineAnswer::Failed(e), .. }]
            if e.starts_with("cannot start a session")),
        "{steps:?}"
    );
}

#[test]
fn a_who_is_names_whom_it_can_and_releases_the_rest() {
    let keys = vec![user("bob", 2).identity.to_bytes(), [3; 32]];
    let ask = || Ask::<u8, &str>::WhoIs {
        keys: keys.clone(),
        call: None,
    };
    let users = vec![user("bob", 2)];
    let steps: Vec<S> = answered(ask(), Ok(RendezvousResponse::Users(users)));
    assert!(matches!(&steps[..], [Step::Learn { .. }, Step::Unnamed(k)] if *k == keys));
    let steps: Vec<S> = answered(ask(), Err("no".into()));
    assert_eq!(steps, [Step::Unnamed(keys.clone())]);
}

#[test]
fn a_key_named_for_a_user_whose_account_key_it_is_not_waits_for_their_device_list() {
    let device = [9; 32];
    let ask = || Ask::<u8, &str>::WhoIs {
        keys: vec![device],
        call: None,
    };
    let steps: Vec<S> = answered(ask(), Ok(RendezvousResponse::Users(vec![user("alice", 4)])));
    // alice is not pinned on the rendezvous's word: her list must bear the claim out first.
    let alice = user("alice", 4);
    assert!(
        matches!(&steps[..], [
            Step::Learn { users: own, .. },
            Step::FetchDevices { claims, waiting, call: None },
        ] if own.is_empty() && *claims == [(name("alice"), alice.identity)] && *waiting == [device]),
        "{steps:?}"
    );
    // However many users the rendezvous names, one claim per key asked about.
    let many = vec![user("alice", 4), user("mallory", 5), user("eve", 6)];
    let steps: Vec<S> = answered(ask(), Ok(RendezvousResponse::Users(many)));
    assert!(
        matches!(&steps[..], [_, Step::FetchDevices { claims, .. }] if claims.len() == 1),
        "{steps:?}"
    );
    // Once the lists are in (or not), the senders are named or get their stand-ins.
    let steps: Vec<S> = answered(
        Ask::Devices {
            claims: vec![(name("alice"), alice.identity)],
            waiting: vec![device],
            call: Some(5),
        },
        Err("gone".into()),
    );
    assert!(
        matches!(&steps[..], [Step::Unnamed(w), Step::Pipeline { call: 5, .. }] if *w == [device]),
        "{steps:?}"
    );
}

#[test]
fn an_invite_waits_for_the_lookup_and_an_unknown_user_is_refused() {
    let ask = || Ask::<u8, &str>::Invite {
        room: RoomName::new("team").unwrap(),
        user: name("cat"),
        reply: 7,
    };
    let steps: Vec<S> = answered(ask(), Ok(RendezvousResponse::Users(vec![user("cat", 3)])));
    assert!(matches!(
        &steps[..],
        [Step::Learn { .. }, Step::Invite { reply: 7, .. }]
    ));
    let steps: Vec<S> = answered(ask(), Ok(RendezvousResponse::Users(Vec::new())));
    assert!(
        matches!(&steps[..], [Step::Learn { .. }, Step::Fail { reply: 7, error }]
            if error == "unknown user cat at this rendezvous"),
        "{steps:?}"
    );
    let steps: Vec<S> = answered(ask(), Err("gone".into()));
    assert!(matches!(&steps[..], [Step::Fail { reply: 7, .. }]));
}

#[test]
fn presence_falls_back_to_what_we_knew_and_deposits_report_both_ways() {
    let ask = || Ask::<u8, &str>::Presence {
        names: vec![name("bob")],
        explicit: true,
        reply: 1,
    };
    let steps: Vec<S> = answered(ask(), refused(RefusalReason::RateLimited));
    assert!(matches!(&steps[..], [Step::Presence { users: None, .. }]));
    // An answer checks the keys of those already contacts, and pins nobody new.
    let steps: Vec<S> = answered(ask(), Ok(RendezvousResponse::Users(vec![user("bob", 2)])));
    assert!(
        matches!(
            &steps[..],
            [
                Step::Learn {
                    asked: Asked::ContactsAmong(_),
                    ..
                },
                Step::Presence { users: Some(_), .. }
            ]
        ),
        "{steps:?}"
    );
    let id = MessageId([5; 32]);
    let steps: Vec<S> = answered(Ask::Deposit { id }, Err("lost".into()));
    assert!(matches!(&steps[..], [Step::DepositFailed { id: i, .. }] if *i == id));
    let steps: Vec<S> = answered(Ask::Discovery("ns"), Err("x".into()));
    assert_eq!(steps, [Step::Discovery("ns", Err("x".into()))]);
}
