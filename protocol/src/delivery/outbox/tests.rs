use std::collections::BTreeMap;

use proptest::prelude::*;
use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;

use super::*;
use crate::codec;

const T0: u64 = 1_700_000_000_000;

fn id(n: u32) -> MessageId {
    let mut bytes = [0u8; 32];
    bytes[..4].copy_from_slice(&n.to_be_bytes());
    MessageId(bytes)
}

fn rng() -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(7)
}

fn events(outbox: &mut Outbox) -> Vec<(MessageId, DeliveryStatus)> {
    std::iter::from_fn(|| outbox.poll_event())
        .map(|event| (event.id, event.status))
        .collect()
}

fn restart(outbox: &Outbox) -> Outbox {
    codec::decode(&codec::encode(outbox).unwrap()).unwrap()
}

fn retry_at(attempt: Attempt) -> u64 {
    match attempt {
        Attempt::Retry { at } | Attempt::DepositInMailbox { retry_at: at } => at,
        other => panic!("expected a retry, got {other:?}"),
    }
}

#[test]
fn new_message_is_due_at_once_then_in_flight() {
    let mut outbox = Outbox::default();
    outbox.insert(id(1), T0).unwrap();
    assert_eq!(outbox.status(&id(1)), Some(DeliveryStatus::Sending));
    assert_eq!(outbox.poll_timeout(), Some(T0));
    assert_eq!(outbox.poll_due(T0), vec![id(1)]);
    assert_eq!(events(&mut outbox), vec![(id(1), DeliveryStatus::Sent)]);
    // In flight: not handed out again, whatever the time, until the in-flight timeout.
    assert!(outbox.poll_due(T0 + 1).is_empty());
    let timeout = outbox.config().in_flight_timeout_ms;
    assert!(outbox.poll_due(T0 + timeout - 1).is_empty());
    assert_eq!(outbox.poll_timeout(), Some(T0 + timeout));
}

#[test]
fn an_unreported_attempt_is_handed_out_again_after_the_in_flight_timeout() {
    let mut outbox = Outbox::default();
    outbox.insert(id(1), T0).unwrap();
    assert_eq!(outbox.poll_due(T0), vec![id(1)]);
    let timeout = outbox.config().in_flight_timeout_ms;
    assert_eq!(outbox.poll_due(T0 + timeout), vec![id(1)]);
    // The stale report of the abandoned attempt counts against the new one, once.
    assert!(matches!(
        outbox.handle_failed(id(1), T0 + timeout + 5, &mut rng()),
        Attempt::DepositInMailbox { .. }
    ));
    assert_eq!(
        outbox.handle_failed(id(1), T0 + timeout + 6, &mut rng()),
        Attempt::Ignored
    );
}

#[test]
fn stored_delivers_and_reports_once() {
    let mut outbox = Outbox::default();
    outbox.insert(id(1), T0).unwrap();
    outbox.poll_due(T0);
    assert!(outbox.handle_stored(id(1)));
    assert!(!outbox.handle_stored(id(1)));
    assert!(!outbox.handle_receipt(id(1)));
    // Coalesced: Sent was not polled before Delivered replaced it.
    assert_eq!(
        events(&mut outbox),
        vec![(id(1), DeliveryStatus::Delivered)]
    );
    assert!(outbox.is_empty());
    assert_eq!(outbox.status(&id(1)), None);
    assert_eq!(outbox.poll_timeout(), None);
    assert!(!outbox.handle_receipt(id(1)));
    assert!(events(&mut outbox).is_empty());
}

#[test]
fn first_failure_asks_for_one_mailbox_deposit() {
    let mut outbox = Outbox::default();
    let mut rng = rng();
    outbox.insert(id(1), T0).unwrap();
    outbox.poll_due(T0);
    let at = match outbox.handle_failed(id(1), T0 + 10, &mut rng) {
        Attempt::DepositInMailbox { retry_at } => retry_at,
        other => panic!("{other:?}"),
    };
    assert!((T0 + 10 + 800..=T0 + 10 + 1200).contains(&at), "{at}");
    assert_eq!(outbox.poll_timeout(), Some(at));
    assert!(outbox.poll_due(at - 1).is_empty());
    assert_eq!(outbox.poll_due(at), vec![id(1)]);
    // The deposit is outstanding: the next failure only retries.
    assert!(matches!(
        outbox.handle_failed(id(1), at + 10, &mut rng),
        Attempt::Retry { .. }
    ));
}

#[test]
fn a_failed_deposit_is_asked_for_again_on_the_next_failure() {
    let mut outbox = Outbox::default();
    let mut rng = rng();
    outbox.insert(id(1), T0).unwrap();
    outbox.poll_due(T0);
    let at = retry_at(outbox.handle_failed(id(1), T0, &mut rng));
    assert!(outbox.handle_deposit_failed(id(1)));
    assert!(!outbox.handle_deposit_failed(id(1)));
    outbox.poll_due(at);
    assert!(matches!(
        outbox.handle_failed(id(1), at, &mut rng),
        Attempt::DepositInMailbox { .. }
    ));
}

#[test]
fn queued_message_retries_direct_at_the_slower_cadence_and_never_asks_again() {
    let mut outbox = Outbox::default();
    let mut rng = rng();
    let config = *outbox.config();
    outbox.insert(id(1), T0).unwrap();
    outbox.poll_due(T0);
    let mut now = retry_at(outbox.handle_failed(id(1), T0, &mut rng));
    assert!(outbox.handle_queued(id(1)));
    assert_eq!(
        events(&mut outbox),
        vec![(id(1), DeliveryStatus::Queued)],
        "Sent coalesced into Queued"
    );
    for _ in 0..20 {
        assert_eq!(outbox.poll_due(now), vec![id(1)]);
        let attempt = outbox.handle_failed(id(1), now, &mut rng);
        assert!(matches!(attempt, Attempt::Retry { .. }), "{attempt:?}");
        let delay = retry_at(attempt) - now;
        assert!(delay >= config.queued_retry_ms * 8 / 10, "{delay}");
        assert!(delay <= config.backoff_cap(true), "{delay}");
        now += delay;
    }
    assert_eq!(outbox.status(&id(1)), Some(DeliveryStatus::Queued));
    assert!(events(&mut outbox).is_empty());
}

#[test]
fn nominal_backoff_doubles_from_one_second_and_caps_at_five_minutes() {
    let config = OutboxConfig::default();
    let schedule: Vec<u64> = (1..=12)
        .map(|failures| config.nominal_backoff(failures, false))
        .collect();
    assert_eq!(
        schedule,
        [
            1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 64_000, 128_000, 256_000, 300_000, 300_000,
            300_000
        ]
    );
    assert_eq!(config.nominal_backoff(u32::MAX, false), 300_000);
    assert_eq!(config.nominal_backoff(1, true), 30 * 60_000);
    assert_eq!(config.nominal_backoff(0, false), 1_000);
}

#[test]
fn message_fails_at_the_give_up_deadline() {
    let mut outbox = Outbox::default();
    let mut rng = rng();
    let deadline = T0 + outbox.config().give_up_after_ms;
    let failed = DeliveryStatus::Failed {
        reason: FailureReason::Expired,
    };
    outbox.insert(id(1), T0).unwrap();
    outbox.insert(id(2), T0).unwrap();
    outbox.poll_due(T0);
    let _ = outbox.handle_failed(id(1), T0, &mut rng);
    let _ = outbox.handle_failed(id(2), T0, &mut rng);
    events(&mut outbox);
    assert_eq!(outbox.poll_due(deadline - 1), vec![id(1), id(2)]);
    // 1 waits for its retry across the deadline; 2 is still in flight at the deadline.
    let _ = outbox.handle_failed(id(1), deadline - 1, &mut rng);
    assert!(outbox.poll_timeout() <= Some(deadline));
    assert!(outbox.poll_due(deadline).is_empty());
    assert_eq!(outbox.status(&id(1)), Some(failed));
    assert_eq!(outbox.status(&id(2)), Some(DeliveryStatus::Sent));
    assert_eq!(
        outbox.handle_failed(id(2), deadline + 5, &mut rng),
        Attempt::GaveUp
    );
    assert_eq!(events(&mut outbox), vec![(id(1), failed), (id(2), failed)]);
    assert!(outbox.is_empty());
}

#[test]
fn a_receipt_by_any_path_delivers_whatever_the_state() {
    let mut outbox = Outbox::default();
    for n in 1..=3 {
        outbox.insert(id(n), T0).unwrap();
    }
    outbox.poll_due(T0);
    let _ = outbox.handle_failed(id(2), T0, &mut rng());
    assert!(outbox.handle_queued(id(2)));
    events(&mut outbox);
    // In flight, queued, waiting for backoff: all delivered.
    let _ = outbox.handle_failed(id(3), T0, &mut rng());
    for n in 1..=3 {
        assert!(outbox.handle_receipt(id(n)));
    }
    assert_eq!(
        events(&mut outbox),
        (1..=3)
            .map(|n| (id(n), DeliveryStatus::Delivered))
            .collect::<Vec<_>>()
    );
}

#[test]
fn a_receipt_before_the_failure_is_polled_still_delivers() {
    let mut outbox = Outbox::default();
    outbox.insert(id(1), T0).unwrap();
    outbox.poll_due(T0 + outbox.config().give_up_after_ms);
    assert!(outbox.status(&id(1)).is_some_and(|s| s.is_final()));
    assert!(outbox.handle_receipt(id(1)));
    assert_eq!(
        events(&mut outbox),
        vec![(id(1), DeliveryStatus::Delivered)]
    );
}

#[test]
fn restart_makes_every_pending_message_due_and_forgets_attempts_in_flight() {
    let mut outbox = Outbox::default();
    let mut rng = rng();
    for n in 1..=4 {
        outbox.insert(id(n), T0 + u64::from(n)).unwrap();
    }
    outbox.poll_due(T0 + 10);
    let _ = outbox.handle_failed(id(2), T0 + 10, &mut rng); // waiting for backoff
    let _ = outbox.handle_failed(id(3), T0 + 10, &mut rng);
    assert!(outbox.handle_queued(id(3)));
    assert!(outbox.handle_stored(id(4)));
    let mut restarted = restart(&outbox);
    // Statuses and unpolled events survive; timers and in-flight markers do not.
    assert_eq!(restarted.status(&id(3)), Some(DeliveryStatus::Queued));
    assert_eq!(restarted.poll_timeout(), Some(0));
    assert_eq!(restarted.poll_due(T0 + 11), vec![id(1), id(2), id(3)]);
    assert_eq!(events(&mut restarted), events(&mut outbox));
    assert_eq!(restarted.len(), 3);
}

#[test]
fn restart_asks_again_for_a_deposit_that_was_outstanding() {
    let mut outbox = Outbox::default();
    let mut rng = rng();
    outbox.insert(id(1), T0).unwrap();
    outbox.poll_due(T0);
    assert!(matches!(
        outbox.handle_failed(id(1), T0, &mut rng),
        Attempt::DepositInMailbox { .. }
    ));
    let mut restarted = restart(&outbox);
    restarted.poll_due(T0 + 1);
    assert!(matches!(
        restarted.handle_failed(id(1), T0 + 1, &mut rng),
        Attempt::DepositInMailbox { .. }
    ));
}

#[test]
fn backoff_continues_from_the_persisted_failure_count_after_restart() {
    let mut outbox = Outbox::default();
    let mut rng = rng();
    outbox.insert(id(1), T0).unwrap();
    let mut now = T0;
    for _ in 0..5 {
        outbox.poll_due(now);
        now = retry_at(outbox.handle_failed(id(1), now, &mut rng));
    }
    let mut restarted = restart(&outbox);
    restarted.poll_due(now);
    let delay = retry_at(restarted.handle_failed(id(1), now, &mut rng)) - now;
    let nominal = restarted.config().nominal_backoff(6, false);
    assert!(delay >= nominal * 8 / 10, "{delay} after 6 failures");
}

#[test]
fn a_full_outbox_refuses_insert_with_a_clear_error() {
    let mut outbox = Outbox::new(OutboxConfig {
        capacity: 2,
        ..OutboxConfig::default()
    });
    outbox.insert(id(1), T0).unwrap();
    assert_eq!(
        outbox.insert(id(1), T0),
        Err(OutboxError::AlreadyPresent(id(1)))
    );
    outbox.insert(id(2), T0).unwrap();
    let err = outbox.insert(id(3), T0).unwrap_err();
    assert_eq!(err, OutboxError::Full { capacity: 2 });
    assert!(err.to_string().contains("full"), "{err}");
    // A delivered message holds its slot until its event is polled.
    assert!(outbox.handle_stored(id(1)));
    assert_eq!(
        outbox.insert(id(3), T0),
        Err(OutboxError::Full { capacity: 2 })
    );
    events(&mut outbox);
    outbox.insert(id(3), T0).unwrap();
}

#[test]
fn a_full_default_outbox_encodes_within_the_frame_limit() {
    let mut outbox = Outbox::default();
    for n in 0..outbox.config().capacity as u32 {
        outbox.insert(id(n), T0).unwrap();
    }
    // Every field at its widest encoding, every id also waiting in the event queue.
    for (&id, entry) in &mut outbox.entries {
        entry.order = u64::MAX;
        entry.inserted_at = u64::MAX;
        entry.failures = u32::MAX;
        entry.set_status(
            id,
            DeliveryStatus::Failed {
                reason: FailureReason::Expired,
            },
            &mut outbox.changed,
        );
    }
    outbox.next_order = u64::MAX;
    let frame = codec::encode(&outbox).unwrap();
    assert!(frame.len() < codec::MAX_FRAME_LEN / 2, "{}", frame.len());
}

#[test]
fn due_messages_come_out_oldest_first() {
    let mut outbox = Outbox::default();
    for n in [9, 3, 7, 1] {
        outbox.insert(id(n), T0).unwrap();
    }
    assert_eq!(outbox.poll_due(T0), vec![id(9), id(3), id(7), id(1)]);
}

#[test]
fn retry_now_makes_a_waiting_message_due_but_not_one_in_flight() {
    let mut outbox = Outbox::default();
    outbox.insert(id(1), T0).unwrap();
    outbox.poll_due(T0);
    assert!(!outbox.retry_now(id(1), T0 + 1));
    let _ = outbox.handle_failed(id(1), T0 + 1, &mut rng());
    assert!(outbox.retry_now(id(1), T0 + 2));
    assert_eq!(outbox.poll_timeout(), Some(T0 + 2));
    assert_eq!(outbox.poll_due(T0 + 2), vec![id(1)]);
    assert!(!outbox.retry_now(id(99), T0));
}

#[test]
fn a_wall_clock_stepping_back_cannot_wedge_a_message() {
    let mut outbox = Outbox::default();
    let mut rng = rng();
    let config = *outbox.config();
    outbox.insert(id(1), T0).unwrap();
    outbox.insert(id(2), T0).unwrap();
    outbox.poll_due(T0);
    for _ in 0..12 {
        let _ = outbox.handle_failed(id(2), T0, &mut rng);
        outbox.retry_now(id(2), T0);
        outbox.poll_due(T0);
    }
    let _ = outbox.handle_failed(id(2), T0, &mut rng);
    // The clock steps back a day: neither 1's in-flight marker nor 2's backoff is trusted.
    let day = 24 * 3_600_000;
    assert!(config.backoff_cap(true) < day && config.in_flight_timeout_ms < day);
    assert_eq!(outbox.poll_due(T0 - day), vec![id(1), id(2)]);
}

#[test]
fn stale_and_unknown_reports_are_ignored() {
    let mut outbox = Outbox::default();
    let mut rng = rng();
    assert_eq!(outbox.handle_failed(id(1), T0, &mut rng), Attempt::Ignored);
    assert!(!outbox.handle_queued(id(1)));
    outbox.insert(id(1), T0).unwrap();
    // Never handed out, so nothing of it is in flight.
    assert_eq!(outbox.handle_failed(id(1), T0, &mut rng), Attempt::Ignored);
    outbox.poll_due(T0);
    let _ = outbox.handle_failed(id(1), T0, &mut rng);
    assert_eq!(outbox.handle_failed(id(1), T0, &mut rng), Attempt::Ignored);
}

#[derive(Debug, Clone)]
enum Op {
    Insert(u32),
    Poll,
    Stored(u32),
    Receipt(u32),
    Failed(u32),
    Queued(u32),
    DepositFailed(u32),
    RetryNow(u32),
    Event,
    Advance(u64),
    Restart,
}

fn any_op() -> impl Strategy<Value = Op> {
    let n = 0u32..12;
    prop_oneof![
        3 => n.clone().prop_map(Op::Insert),
        4 => Just(Op::Poll),
        1 => n.clone().prop_map(Op::Stored),
        1 => n.clone().prop_map(Op::Receipt),
        4 => n.clone().prop_map(Op::Failed),
        1 => n.clone().prop_map(Op::Queued),
        1 => n.clone().prop_map(Op::DepositFailed),
        1 => n.prop_map(Op::RetryNow),
        2 => Just(Op::Event),
        3 => prop_oneof![0u64..2_000, 0u64..600_000, Just(31 * 24 * 3_600_000)].prop_map(Op::Advance),
        1 => Just(Op::Restart),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any sequence of inputs: an id is never handed out while an attempt of it is in flight
    /// (before its timeout), every delay is within the jitter band and under the cap, each
    /// message reaches exactly one final event, and the outbox never exceeds its capacity.
    #[test]
    fn invariants_hold_under_any_input_sequence(
        ops in proptest::collection::vec(any_op(), 1..120),
        seed in any::<u64>(),
    ) {
        let config = OutboxConfig { capacity: 8, ..OutboxConfig::default() };
        let mut outbox = Outbox::new(config);
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut now = T0;
        // Model: id -> in flight since; inserted ids; final events seen.
        let mut in_flight: BTreeMap<MessageId, u64> = BTreeMap::new();
        let mut inserted: BTreeMap<MessageId, u64> = BTreeMap::new();
        let mut finals: BTreeMap<MessageId, DeliveryStatus> = BTreeMap::new();
        let mut failures: BTreeMap<MessageId, u32> = BTreeMap::new();
        for op in ops {
            match op {
                // Ids are hashes of unique envelopes: one that reached a final state never recurs.
                Op::Insert(n) if finals.contains_key(&id(n)) => {}
                Op::Insert(n) => {
                    match outbox.insert(id(n), now) {
                        Ok(()) => {
                            prop_assert!(!inserted.contains_key(&id(n)));
                            inserted.insert(id(n), now);
                        }
                        Err(OutboxError::AlreadyPresent(_)) => prop_assert!(inserted.contains_key(&id(n))),
                        Err(OutboxError::Full { .. }) => {}
                    }
                }
                Op::Poll => {
                    let due = outbox.poll_due(now);
                    // Progress: what poll_due leaves is never due at once again.
                    prop_assert!(outbox.poll_timeout().is_none_or(|t| t > now));
                    for due in due {
                        if let Some(since) = in_flight.get(&due) {
                            prop_assert!(now >= since + config.in_flight_timeout_ms);
                        }
                        prop_assert!(inserted.contains_key(&due));
                        in_flight.insert(due, now);
                    }
                }
                Op::Stored(n) => { outbox.handle_stored(id(n)); in_flight.remove(&id(n)); }
                Op::Receipt(n) => { outbox.handle_receipt(id(n)); in_flight.remove(&id(n)); }
                Op::Failed(n) => {
                    let queued = outbox.status(&id(n)) == Some(DeliveryStatus::Queued);
                    let attempt = outbox.handle_failed(id(n), now, &mut rng);
                    if attempt != Attempt::Ignored {
                        prop_assert!(in_flight.remove(&id(n)).is_some());
                    }
                    if let Attempt::Retry { at } | Attempt::DepositInMailbox { retry_at: at } = attempt {
                        let count = failures.entry(id(n)).or_default();
                        *count += 1;
                        let nominal = config.nominal_backoff(*count, queued);
                        let delay = at - now;
                        prop_assert!(delay >= nominal * 8 / 10 && delay <= nominal * 12 / 10);
                        prop_assert!(delay <= config.backoff_cap(queued));
                        if let Attempt::DepositInMailbox { .. } = attempt {
                            prop_assert!(!queued);
                        }
                    }
                }
                Op::Queued(n) => { outbox.handle_queued(id(n)); }
                Op::DepositFailed(n) => { outbox.handle_deposit_failed(id(n)); }
                Op::RetryNow(n) => { outbox.retry_now(id(n), now); }
                Op::Event => {
                    if let Some(event) = outbox.poll_event()
                        && event.status.is_final()
                    {
                        prop_assert!(finals.insert(event.id, event.status).is_none());
                        prop_assert!(inserted.remove(&event.id).is_some());
                        in_flight.remove(&event.id);
                    }
                }
                Op::Advance(ms) => now += ms,
                Op::Restart => {
                    outbox = restart(&outbox);
                    in_flight.clear();
                    prop_assert!(outbox.poll_timeout().is_none_or(|t| t <= now));
                }
            }
            prop_assert!(outbox.len() <= config.capacity);
            if let Some(timeout) = outbox.poll_timeout() {
                // Nothing due is ever hidden behind the reported timeout.
                let mut probe = outbox.clone();
                if timeout > now {
                    prop_assert!(probe.poll_due(now).is_empty());
                }
            }
        }
        // Past every deadline, every message still held ends in exactly one final event.
        for pending in inserted.keys() {
            prop_assert!(outbox.status(pending).is_some());
        }
        now += config.give_up_after_ms + config.in_flight_timeout_ms;
        prop_assert!(outbox.poll_due(now).is_empty());
        while let Some(event) = outbox.poll_event() {
            if event.status.is_final() {
                prop_assert!(finals.insert(event.id, event.status).is_none());
                prop_assert!(inserted.remove(&event.id).is_some());
            }
        }
        prop_assert!(inserted.is_empty());
        prop_assert!(outbox.is_empty() && outbox.poll_timeout().is_none());
    }
}

#[test]
fn a_held_message_waits_for_its_release_and_a_restart_releases_it() {
    let mut outbox = Outbox::default();
    outbox.insert_held(id(1), T0).unwrap();
    outbox.insert(id(2), T0).unwrap();
    assert_eq!(outbox.status(&id(1)), Some(DeliveryStatus::Sending));
    assert_eq!(
        outbox.poll_due(T0),
        vec![id(2)],
        "the held one is not handed out"
    );
    assert!(outbox.poll_due(T0 + 60_000).is_empty());
    let after_crash = restart(&outbox);
    assert!(outbox.release(id(1)));
    assert!(!outbox.release(id(1)), "released once");
    assert_eq!(outbox.poll_due(T0 + 60_000), vec![id(1)]);
    // What was persisted is durable, so a restart hands it out without a release.
    let mut after_crash = after_crash;
    assert!(after_crash.poll_due(T0 + 60_000).contains(&id(1)));
}
