use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

use super::*;

type S = Session<u32>;
type R = RendezvousResponse;

const T0: u64 = 1_700_000_000_000;
const HEARTBEAT: u64 = 10_000;

fn alice() -> SigningKey {
    SigningKey::from_bytes(&[7; 32])
}

fn session(rng: &mut ChaCha20Rng) -> S {
    let config = SessionConfig {
        name: UserName::new("alice").expect("name"),
        registration_token: Some("letmein".into()),
        heartbeat_ms: HEARTBEAT,
        instance: 1,
    };
    let prekeys = PrekeyState::generate(rng, &alice());
    Session::new(config, alice(), prekeys)
}

fn drain(s: &mut S) -> Vec<Output<u32>> {
    std::iter::from_fn(|| s.poll_output()).collect()
}

/// The requests sent, with their keys.
fn sent(outputs: &[Output<u32>]) -> Vec<(RequestKey, RendezvousRequest)> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Send { key, request } => Some((*key, request.clone())),
            _ => None,
        })
        .collect()
}

/// Request `key` got no answer: the transport gives up on it.
fn lose(s: &mut S, key: RequestKey, now: u64, rng: &mut ChaCha20Rng) {
    let error = "timed out".into();
    s.handle(Input::Failed { key, error }, now, rng);
}

fn refusal(reason: RefusalReason) -> R {
    R::Refused(Refusal {
        reason,
        detail: "because".into(),
    })
}

fn logged_in(mail_waiting: u32, left: u32) -> R {
    R::LoggedIn {
        name: UserName::new("alice").expect("name"),
        mail_waiting,
        one_time_prekeys_left: left,
    }
}

/// Connects and answers the login; returns the outputs after the login.
fn log_in(s: &mut S, rng: &mut ChaCha20Rng, mail_waiting: u32, left: u32) -> Vec<Output<u32>> {
    s.handle(Input::Connected, T0, rng);
    let out = sent(&drain(s));
    assert!(
        matches!(out[..], [(_, RendezvousRequest::Login { .. })]),
        "{out:?}"
    );
    s.handle(
        Input::Response {
            key: out[0].0,
            response: logged_in(mail_waiting, left),
        },
        T0,
        rng,
    );
    drain(s)
}

#[test]
fn a_first_login_registers_once_then_publishes_prekeys_only_once_they_are_durable() {
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let mut s = session(&mut rng);
    s.handle(Input::Connected, T0, &mut rng);
    let login = sent(&drain(&mut s));
    s.handle(
        Input::Response {
            key: login[0].0,
            response: refusal(RefusalReason::UnknownUser),
        },
        T0,
        &mut rng,
    );
    let register = sent(&drain(&mut s));
    assert!(
        matches!(&register[..], [(_, RendezvousRequest::Register { token: Some(t), .. })] if t == "letmein"),
        "{register:?}"
    );
    s.handle(
        Input::Response {
            key: register[0].0,
            response: R::Registered {
                name: UserName::new("alice").expect("name"),
            },
        },
        T0,
        &mut rng,
    );
    let login = sent(&drain(&mut s));
    s.handle(
        Input::Response {
            key: login[0].0,
            response: logged_in(0, 0),
        },
        T0,
        &mut rng,
    );
    let out = drain(&mut s);
    assert!(matches!(out[0], Output::LoggedIn { mail_waiting: 0 }));
    assert!(s.is_logged_in());
    // The secrets go to disk first; nothing public leaves before that.
    assert!(matches!(
        out[1],
        Output::PersistPrekeys { then_publish: true }
    ));
    assert!(
        !sent(&out)
            .iter()
            .any(|(_, r)| matches!(r, RendezvousRequest::PublishPrekeys(_)))
    );
    assert!(
        sent(&out)
            .iter()
            .any(|(_, r)| matches!(r, RendezvousRequest::Heartbeat { .. }))
    );
    s.handle(Input::PrekeysDurable { durable: true }, T0, &mut rng);
    let publish = sent(&drain(&mut s));
    assert!(
        matches!(&publish[..], [(_, RendezvousRequest::PublishPrekeys(upload))] if upload.one_time_prekeys.len() == ONE_TIME_PREKEYS),
        "{publish:?}"
    );
    s.handle(
        Input::Response {
            key: publish[0].0,
            response: R::Done,
        },
        T0,
        &mut rng,
    );
    assert!(s.prekeys().published);
    assert!(matches!(
        drain(&mut s)[..],
        [Output::PersistPrekeys {
            then_publish: false
        }]
    ));
    // The next login publishes nothing: enough one-time prekeys left, signed prekey fresh.
    s.handle(Input::Disconnected, T0, &mut rng);
    drain(&mut s);
    let out = log_in(&mut s, &mut rng, 0, 50);
    assert!(
        !out.iter()
            .any(|o| matches!(o, Output::PersistPrekeys { .. }))
    );
}

#[test]
fn a_key_in_use_elsewhere_stops_the_daemon_instead_of_trying_elsewhere() {
    let mut rng = ChaCha20Rng::seed_from_u64(2);
    let mut s = session(&mut rng);
    s.handle(Input::Connected, T0, &mut rng);
    let login = sent(&drain(&mut s));
    assert!(
        matches!(
            login[..],
            [(_, RendezvousRequest::Login { instance: 1, .. })]
        ),
        "the login names this run: {login:?}"
    );
    s.handle(
        Input::Response {
            key: login[0].0,
            response: refusal(RefusalReason::InUse),
        },
        T0,
        &mut rng,
    );
    let out = drain(&mut s);
    assert!(
        matches!(&out[..], [Output::Stop(r)] if r.reason == RefusalReason::InUse),
        "{out:?}"
    );
    assert_eq!(s.refusal().map(|r| r.reason), Some(RefusalReason::InUse));
    assert!(!s.is_logged_in());
}

#[test]
fn a_login_refused_after_registering_stays_refused_and_says_why() {
    let mut rng = ChaCha20Rng::seed_from_u64(2);
    let mut s = session(&mut rng);
    s.handle(Input::Connected, T0, &mut rng);
    let login = sent(&drain(&mut s));
    s.handle(
        Input::Response {
            key: login[0].0,
            response: refusal(RefusalReason::UnknownUser),
        },
        T0,
        &mut rng,
    );
    let register = sent(&drain(&mut s));
    s.handle(
        Input::Response {
            key: register[0].0,
            response: refusal(RefusalReason::BadToken),
        },
        T0,
        &mut rng,
    );
    let out = drain(&mut s);
    assert!(
        matches!(&out[..], [Output::LoginRefused(r)] if r.reason == RefusalReason::BadToken),
        "{out:?}"
    );
    assert_eq!(s.refusal().map(|r| r.reason), Some(RefusalReason::BadToken));
    assert!(!s.is_logged_in());
    assert_eq!(s.poll_timeout(), None, "no heartbeats without a login");
}

#[test]
fn at_most_eight_requests_are_in_flight_and_the_queue_is_bounded() {
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    let mut s = session(&mut rng);
    let after_login = log_in(&mut s, &mut rng, 0, 50);
    let busy = sent(&after_login).len(); // the heartbeat
    for token in 0..(QUEUED as u32 + 20) {
        s.request(RendezvousRequest::FetchMail { max: 1 }, token);
    }
    let out = drain(&mut s);
    assert_eq!(sent(&out).len() + busy, IN_FLIGHT);
    let failed: Vec<u32> = out
        .iter()
        .filter_map(|o| match o {
            Output::Failed { token, .. } => Some(*token),
            _ => None,
        })
        .collect();
    let expected_failures = QUEUED as u32 + 20 - (IN_FLIGHT - busy) as u32 - QUEUED as u32;
    assert_eq!(failed.len() as u32, expected_failures);
    // An answer lets the next one go.
    let (key, _) = sent(&out)[0].clone();
    s.handle(
        Input::Response {
            key,
            response: R::Done,
        },
        T0,
        &mut rng,
    );
    let out = drain(&mut s);
    assert!(matches!(out[0], Output::Answer { token: 0, .. }));
    assert_eq!(sent(&out).len(), 1);
}

#[test]
fn losing_the_connection_fails_what_waited_and_logs_out() {
    let mut rng = ChaCha20Rng::seed_from_u64(4);
    let mut s = session(&mut rng);
    log_in(&mut s, &mut rng, 0, 50);
    for token in 0..10 {
        s.request(RendezvousRequest::FetchMail { max: 1 }, token);
    }
    drain(&mut s);
    s.handle(Input::Disconnected, T0, &mut rng);
    let out = drain(&mut s);
    let failed = out
        .iter()
        .filter(|o| matches!(o, Output::Failed { .. }))
        .count();
    assert_eq!(
        failed,
        10 - (IN_FLIGHT - 1),
        "the queued ones; in-flight ones fail by transport"
    );
    assert!(matches!(out.last(), Some(Output::LoggedOut)));
    s.request(RendezvousRequest::FetchMail { max: 1 }, 99);
    assert!(matches!(
        drain(&mut s)[..],
        [Output::Failed { token: 99, .. }]
    ));
}

#[test]
fn a_server_that_forgot_our_login_gets_a_new_one() {
    let mut rng = ChaCha20Rng::seed_from_u64(5);
    let mut s = session(&mut rng);
    let out = log_in(&mut s, &mut rng, 0, 50);
    let heartbeat = sent(&out)[0].0;
    s.handle(
        Input::Response {
            key: heartbeat,
            response: refusal(RefusalReason::NotLoggedIn),
        },
        T0,
        &mut rng,
    );
    let out = drain(&mut s);
    assert!(matches!(out[0], Output::LoggedOut));
    assert!(matches!(
        sent(&out)[..],
        [(_, RendezvousRequest::Login { .. })]
    ));
}

#[test]
fn heartbeats_follow_the_period_while_logged_in() {
    let mut rng = ChaCha20Rng::seed_from_u64(6);
    let mut s = session(&mut rng);
    log_in(&mut s, &mut rng, 0, 50);
    assert_eq!(s.poll_timeout(), Some(T0 + HEARTBEAT));
    s.handle_timeout(T0 + HEARTBEAT - 1, &mut rng);
    assert!(sent(&drain(&mut s)).is_empty());
    s.handle_timeout(T0 + HEARTBEAT, &mut rng);
    assert!(matches!(
        sent(&drain(&mut s))[..],
        [(_, RendezvousRequest::Heartbeat { .. })]
    ));
    assert_eq!(s.poll_timeout(), Some(T0 + 2 * HEARTBEAT));
}

#[test]
fn the_signed_prekey_is_replaced_weekly_and_one_time_prekeys_topped_up_when_low() {
    let mut rng = ChaCha20Rng::seed_from_u64(7);
    let mut s = session(&mut rng);
    s.prekeys_mut().published = true;
    s.prekeys_mut().signed_at_ms = Some(T0);
    let out = log_in(&mut s, &mut rng, 0, PREKEYS_LOW - 1);
    assert!(matches!(
        out[1],
        Output::PersistPrekeys { then_publish: true }
    ));
    s.handle(Input::PrekeysDurable { durable: true }, T0, &mut rng);
    assert!(matches!(
        sent(&drain(&mut s))[..],
        [(_, RendezvousRequest::AddOneTimePrekeys(ref keys))] if keys.len() == ONE_TIME_PREKEYS
    ));
    let week_later = T0 + SIGNED_PREKEY_LIFETIME_MS + 1;
    s.handle(
        Input::Push(ServerPush::PrekeysLow { remaining: 50 }),
        week_later,
        &mut rng,
    );
    drain(&mut s);
    s.handle(
        Input::PrekeysDurable { durable: true },
        week_later,
        &mut rng,
    );
    let publish = sent(&drain(&mut s));
    assert!(
        matches!(&publish[..], [(_, RendezvousRequest::PublishPrekeys(_))]),
        "{publish:?}"
    );
    assert_eq!(s.prekeys().signed_at_ms, Some(week_later));
    // A write that failed publishes nothing.
    s.handle(
        Input::Push(ServerPush::PrekeysLow { remaining: 0 }),
        week_later,
        &mut rng,
    );
    drain(&mut s);
    s.handle(
        Input::PrekeysDurable { durable: false },
        week_later,
        &mut rng,
    );
    assert!(sent(&drain(&mut s)).is_empty());
}

#[test]
fn held_mail_is_fetched_in_batches_and_acknowledged_once_stored() {
    let mut rng = ChaCha20Rng::seed_from_u64(8);
    let mut s = session(&mut rng);
    let out = log_in(&mut s, &mut rng, 100, 50);
    let fetch = sent(&out)
        .into_iter()
        .find(|(_, r)| matches!(r, RendezvousRequest::FetchMail { .. }))
        .expect("a fetch at login");
    s.handle(
        Input::Response {
            key: fetch.0,
            response: R::Mail {
                items: Vec::new(),
                remaining: 36,
            },
        },
        T0,
        &mut rng,
    );
    assert!(matches!(
        drain(&mut s)[..],
        [Output::Mail { remaining: 36, .. }]
    ));
    let id = MessageId([3; 32]);
    s.handle(
        Input::MailStored {
            acks: vec![id],
            more: true,
        },
        T0,
        &mut rng,
    );
    let requests: Vec<RendezvousRequest> =
        sent(&drain(&mut s)).into_iter().map(|(_, r)| r).collect();
    assert!(matches!(
        &requests[..],
        [RendezvousRequest::AckMail { ids }, RendezvousRequest::FetchMail { .. }] if ids == &[id]
    ));
    // A push that more mail arrived fetches again.
    s.handle(
        Input::Push(ServerPush::MailWaiting { count: 1 }),
        T0,
        &mut rng,
    );
    assert!(matches!(
        sent(&drain(&mut s))[..],
        [(_, RendezvousRequest::FetchMail { .. })]
    ));
}

#[test]
fn a_login_that_got_no_answer_is_tried_again() {
    let mut rng = ChaCha20Rng::seed_from_u64(9);
    let mut s = session(&mut rng);
    s.handle(Input::Connected, T0, &mut rng);
    let login = sent(&drain(&mut s));
    lose(&mut s, login[0].0, T0, &mut rng);
    assert!(sent(&drain(&mut s)).is_empty());
    assert_eq!(s.poll_timeout(), Some(T0 + LOGIN_RETRY_MS));
    s.handle_timeout(T0 + LOGIN_RETRY_MS, &mut rng);
    assert!(matches!(
        sent(&drain(&mut s))[..],
        [(_, RendezvousRequest::Login { .. })]
    ));
}

#[test]
fn a_rate_limited_login_is_tried_again_rather_than_given_up() {
    let mut rng = ChaCha20Rng::seed_from_u64(10);
    let mut s = session(&mut rng);
    s.handle(Input::Connected, T0, &mut rng);
    let login = sent(&drain(&mut s));
    s.handle(
        Input::Response {
            key: login[0].0,
            response: refusal(RefusalReason::RateLimited),
        },
        T0,
        &mut rng,
    );
    assert!(drain(&mut s).is_empty());
    assert_eq!(s.refusal(), None);
    s.handle_timeout(T0 + LOGIN_RETRY_MS, &mut rng);
    assert!(matches!(
        sent(&drain(&mut s))[..],
        [(_, RendezvousRequest::Login { .. })]
    ));
}

#[test]
fn an_acknowledgement_that_did_not_go_through_is_sent_again() {
    let mut rng = ChaCha20Rng::seed_from_u64(11);
    let mut s = session(&mut rng);
    log_in(&mut s, &mut rng, 0, 50);
    let id = MessageId([4; 32]);
    s.handle(
        Input::MailStored {
            acks: vec![id],
            more: false,
        },
        T0,
        &mut rng,
    );
    let ack = sent(&drain(&mut s));
    assert!(matches!(&ack[..], [(_, RendezvousRequest::AckMail { ids })] if ids == &[id]));
    // Lost in transport while still logged in: sent again after a pause.
    lose(&mut s, ack[0].0, T0, &mut rng);
    assert!(sent(&drain(&mut s)).is_empty());
    assert_eq!(s.poll_timeout(), Some(T0 + RETRY_MS));
    s.handle_timeout(T0 + RETRY_MS, &mut rng);
    let again = sent(&drain(&mut s));
    assert!(matches!(&again[..], [(_, RendezvousRequest::AckMail { ids })] if ids == &[id]));
    // Lost with the connection: sent after the next login.
    s.handle(
        Input::Failed {
            key: again[0].0,
            error: "connection closed".into(),
        },
        T0,
        &mut rng,
    );
    drain(&mut s);
    s.handle(Input::Disconnected, T0, &mut rng);
    drain(&mut s);
    let out = log_in(&mut s, &mut rng, 0, 50);
    assert!(
        sent(&out)
            .iter()
            .any(|(_, r)| matches!(r, RendezvousRequest::AckMail { ids } if ids == &[id])),
        "{out:?}"
    );
}

#[test]
fn a_lost_fetch_subscription_or_publish_is_sent_again_while_logged_in() {
    let mut rng = ChaCha20Rng::seed_from_u64(12);
    let mut s = session(&mut rng);
    let out = log_in(&mut s, &mut rng, 5, 50);
    s.handle(Input::PrekeysDurable { durable: true }, T0, &mut rng);
    let mut lost = sent(&out);
    lost.extend(sent(&drain(&mut s)));
    s.subscribe_presence(vec![UserName::new("bob").expect("name")]);
    lost.extend(sent(&drain(&mut s)));
    for (key, _) in &lost {
        lose(&mut s, *key, T0, &mut rng);
    }
    assert!(sent(&drain(&mut s)).is_empty());
    s.handle_timeout(T0 + RETRY_MS, &mut rng);
    let again: Vec<RendezvousRequest> = sent(&drain(&mut s)).into_iter().map(|(_, r)| r).collect();
    assert!(
        again
            .iter()
            .any(|r| matches!(r, RendezvousRequest::FetchMail { .. })),
        "{again:?}"
    );
    assert!(
        again
            .iter()
            .any(|r| matches!(r, RendezvousRequest::SubscribePresence { .. }))
    );
    // The upload goes out again, made afresh, once its secrets are on disk.
    s.handle(
        Input::PrekeysDurable { durable: true },
        T0 + RETRY_MS,
        &mut rng,
    );
    let first = lost
        .iter()
        .find_map(|(_, r)| match r {
            RendezvousRequest::PublishPrekeys(upload) => Some(upload.clone()),
            _ => None,
        })
        .expect("the first upload");
    let second = sent(&drain(&mut s))
        .into_iter()
        .find_map(|(_, r)| match r {
            RendezvousRequest::PublishPrekeys(upload) => Some(upload),
            _ => None,
        })
        .expect("the upload sent again");
    assert_eq!(second.signed_prekey, first.signed_prekey);
    assert!(
        second
            .one_time_prekeys
            .iter()
            .all(|k| !first.one_time_prekeys.iter().any(|f| f.id == k.id)),
        "no one-time prekey of the first upload is published twice"
    );
}

#[test]
fn a_lost_top_up_is_not_sent_again_as_the_same_batch() {
    let mut rng = ChaCha20Rng::seed_from_u64(14);
    let mut s = session(&mut rng);
    s.prekeys_mut().published = true;
    s.prekeys_mut().signed_at_ms = Some(T0);
    log_in(&mut s, &mut rng, 0, PREKEYS_LOW - 1);
    s.handle(Input::PrekeysDurable { durable: true }, T0, &mut rng);
    let top_up = sent(&drain(&mut s));
    assert!(matches!(
        top_up[..],
        [(_, RendezvousRequest::AddOneTimePrekeys(_))]
    ));
    lose(&mut s, top_up[0].0, T0, &mut rng);
    s.handle_timeout(T0 + RETRY_MS, &mut rng);
    assert!(
        !sent(&drain(&mut s))
            .iter()
            .any(|(_, r)| matches!(r, RendezvousRequest::AddOneTimePrekeys(_)))
    );
}

#[test]
fn mail_announced_before_the_login_answer_is_fetched_once_logged_in() {
    let mut rng = ChaCha20Rng::seed_from_u64(13);
    let mut s = session(&mut rng);
    s.handle(Input::Connected, T0, &mut rng);
    let login = sent(&drain(&mut s));
    // The push overtakes the login's answer, whose count predates the deposit.
    s.handle(
        Input::Push(ServerPush::MailWaiting { count: 1 }),
        T0,
        &mut rng,
    );
    assert!(sent(&drain(&mut s)).is_empty());
    s.handle(
        Input::Response {
            key: login[0].0,
            response: logged_in(0, 50),
        },
        T0,
        &mut rng,
    );
    assert!(
        sent(&drain(&mut s))
            .iter()
            .any(|(_, r)| matches!(r, RendezvousRequest::FetchMail { .. }))
    );
}

#[test]
fn a_new_contact_is_watched_with_the_others_and_its_keys_checked_as_contacts_only() {
    let mut rng = ChaCha20Rng::seed_from_u64(9);
    let mut s = session(&mut rng);
    log_in(&mut s, &mut rng, 0, 100);
    let name = |n: &str| UserName::new(n).expect("name");
    let subscriptions = |s: &mut S| -> Vec<(RequestKey, Vec<UserName>)> {
        sent(&drain(s))
            .into_iter()
            .filter_map(|(key, r)| match r {
                RendezvousRequest::SubscribePresence { names } => Some((key, names)),
                _ => None,
            })
            .collect()
    };
    s.subscribe_presence(vec![name("bob")]);
    assert_eq!(subscriptions(&mut s)[0].1, [name("bob")]);
    // One already watched changes nothing; a new one is added to the rest.
    s.watch_too(&[name("bob")]);
    assert!(subscriptions(&mut s).is_empty());
    s.watch_too(&[name("bob"), name("carol")]);
    let subscribed = subscriptions(&mut s);
    assert_eq!(subscribed[0].1, [name("bob"), name("carol")]);
    s.handle(
        Input::Response {
            key: subscribed[0].0,
            response: R::Users(Vec::new()),
        },
        T0,
        &mut rng,
    );
    let asked = drain(&mut s).into_iter().find_map(|o| match o {
        Output::Subscribed { asked, .. } => Some(asked),
        _ => None,
    });
    assert_eq!(
        asked,
        Some(Asked::ContactsAmong(vec![name("bob"), name("carol")]))
    );
}
