#![allow(clippy::unwrap_used)]
//! A seeded simulation of one sender and one receiver exercising the delivery state machines the
//! way the daemon will: the sender's [`Outbox`] over a lossy, duplicating, reordering network, a
//! rendezvous mailbox, a receiver that comes and goes, and crashes of either side at random points
//! (state serialized with the real codec, dropped, decoded; everything volatile is lost).
//!
//! Each run checks, as it goes and at the end:
//! - no loss: every message ends `Delivered` or `Failed`; `Delivered` only if the receiver stored
//!   it; `Failed` only after the give-up deadline; without a month-long outage, none fails;
//! - no duplicates: the receiver's accepted stream holds each message once, and its
//!   [`SequenceTracker`] never calls a stored message new nor an unstored one a duplicate;
//! - order: the accepted seqs have no gaps (but for messages that failed) and history keys sort
//!   them in send order;
//! - backoff: the nominal delay never decreases, each actual delay is within the jitter band and
//!   under the cap, and delays strictly grow while the nominal one doubles;
//! - the mailbox deposit is asked for at most once per message, again only after that deposit
//!   failed or the sender restarted while it was outstanding, and never once the mailbox holds it.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};

use palaver_protocol::codec;
use palaver_protocol::delivery::{
    Attempt, Dedup, DeliveryStatus, HistoryOrder, HybridClock, Observation, Outbox, OutboxConfig,
    SequenceTracker, Stamp,
};
use palaver_protocol::{MessageId, SigningKey, VerifyingKey};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

const SECOND: u64 = 1_000;
const MINUTE: u64 = 60 * SECOND;
const HOUR: u64 = 60 * MINUTE;
const DAY: u64 = 24 * HOUR;
const T0: u64 = 1_700_000_000_000;
/// The daemon's request timeout (below the outbox's in-flight timeout).
const REQUEST_TIMEOUT: u64 = 10 * SECOND;
const MAILBOX_TTL: u64 = 30 * DAY;
const MAIL_POLL: u64 = 5 * MINUTE;
/// How long the receiver flaps on and off before staying online.
const ACTIVE: u64 = 6 * HOUR;
const HARD_STOP: u64 = T0 + 40 * DAY;

#[derive(Debug, Clone, Copy)]
struct Faults {
    messages: u32,
    /// Per network leg.
    loss_permille: u64,
    dup_permille: u64,
    /// Per leg, a latency of seconds: past the request timeout, so copies and answers reorder.
    slow_permille: u64,
    /// The daemon loses an attempt's outcome (so only the in-flight timeout frees it).
    lost_report_permille: u64,
    deposit_fail_permille: u64,
    /// The receiver stores fetched mail but dies before acknowledging it.
    unacked_mail_permille: u64,
    crashes_per_side: u32,
    /// The receiver goes away for over a month: messages must fail, not hang.
    long_outage: bool,
}

impl Faults {
    fn for_seed(seed: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0xfa17);
        let mut pick = |max: u64| rng.next_u64() % (max + 1);
        let long_outage = seed % 8 == 7;
        Self {
            messages: if long_outage {
                40
            } else {
                60 + pick(90) as u32
            },
            loss_permille: pick(150),
            dup_permille: pick(100),
            slow_permille: pick(100),
            lost_report_permille: pick(30),
            deposit_fail_permille: pick(250),
            unacked_mail_permille: pick(200),
            crashes_per_side: pick(15) as u32,
            long_outage,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    Compose,
    SenderCrash,
    ReceiverCrash,
    ReceiverOnline(bool),
    FetchMail,
    /// A copy of attempt `token`'s request reaches the receiver.
    DeliverArrives {
        msg: usize,
        token: u64,
    },
    AttemptStored {
        token: u64,
    },
    /// Dial failure or request timeout.
    AttemptFailed {
        token: u64,
    },
    DepositArrives {
        msg: usize,
        token: u64,
    },
    DepositOutcome {
        token: u64,
        ok: bool,
    },
    ReceiptArrives {
        msg: usize,
    },
}

#[derive(Debug, Default)]
struct Record {
    id: Option<MessageId>,
    seq: u64,
    stamp: Stamp,
    created_at: u64,
    outcome: Option<(DeliveryStatus, u64)>,
    failures: u32,
    last_nominal: u64,
    last_delay: u64,
    deposits_asked: u32,
    deposit_failures: u32,
    restarts_while_depositing: u32,
}

/// The sender: durable state (persisted after every step) and what dies with the process.
struct Sender {
    outbox: Outbox,
    seqs: SequenceTracker,
    clock: HybridClock,
    attempts: BTreeMap<u64, usize>,
    deposits: BTreeMap<u64, usize>,
}

struct Receiver {
    online: bool,
    seqs: SequenceTracker,
    clock: HybridClock,
    /// The durable store, by id; and the accepted stream in arrival order.
    store: BTreeMap<MessageId, usize>,
    accepted: Vec<usize>,
    dedup: Dedup,
}

struct Sim {
    seed: u64,
    faults: Faults,
    rng: ChaCha8Rng,
    now: u64,
    queue: BinaryHeap<Reverse<(u64, u64, Event)>>,
    pushed: u64,
    next_token: u64,
    key: VerifyingKey,
    records: Vec<Record>,
    ids: BTreeMap<MessageId, usize>,
    sender: Sender,
    receiver: Receiver,
    /// What the rendezvous mailbox holds: (message, deposited at).
    mailbox: Vec<(usize, u64)>,
    /// Messages whose deposit the sender's current incarnation is waiting on.
    depositing: BTreeSet<usize>,
    config: OutboxConfig,
    stats: Stats,
}

/// How often each fault actually happened, so a passing run is known to have exercised it.
#[derive(Debug, Default, Clone, Copy)]
struct Stats {
    sender_crashes: u32,
    receiver_crashes: u32,
    lost_reports: u32,
    duplicates_received: u32,
    out_of_order_received: u32,
    deposits: u32,
    redeposits: u32,
    delivered_by_receipt: u32,
    failed: u32,
}

impl std::ops::AddAssign for Stats {
    fn add_assign(&mut self, other: Self) {
        self.sender_crashes += other.sender_crashes;
        self.receiver_crashes += other.receiver_crashes;
        self.lost_reports += other.lost_reports;
        self.duplicates_received += other.duplicates_received;
        self.out_of_order_received += other.out_of_order_received;
        self.deposits += other.deposits;
        self.redeposits += other.redeposits;
        self.delivered_by_receipt += other.delivered_by_receipt;
        self.failed += other.failed;
    }
}

/// What a run produced, for the determinism check.
#[derive(Debug, PartialEq, Eq)]
struct Report {
    outcomes: Vec<(DeliveryStatus, u64)>,
    accepted: Vec<usize>,
}

impl Sim {
    fn new(seed: u64, faults: Faults) -> Self {
        let config = OutboxConfig::default();
        let mut sim = Self {
            seed,
            faults,
            rng: ChaCha8Rng::seed_from_u64(seed),
            now: T0,
            queue: BinaryHeap::new(),
            pushed: 0,
            next_token: 0,
            key: SigningKey::from_bytes(&[7; 32]).verifying_key(),
            records: Vec::new(),
            ids: BTreeMap::new(),
            sender: Sender {
                outbox: Outbox::new(config),
                seqs: SequenceTracker::new(),
                clock: HybridClock::new(),
                attempts: BTreeMap::new(),
                deposits: BTreeMap::new(),
            },
            receiver: Receiver {
                online: true,
                seqs: SequenceTracker::new(),
                clock: HybridClock::new(),
                store: BTreeMap::new(),
                accepted: Vec::new(),
                dedup: Dedup::new(64),
            },
            mailbox: Vec::new(),
            depositing: BTreeSet::new(),
            config,
            stats: Stats::default(),
        };
        sim.schedule_world();
        sim
    }

    fn chance(&mut self, permille: u64) -> bool {
        self.rng.next_u64() % 1000 < permille
    }

    fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.rng.next_u64() % (high - low + 1)
    }

    /// One network leg's latency: usually short, sometimes long enough to reorder past retries.
    fn latency(&mut self) -> u64 {
        if self.chance(self.faults.slow_permille) {
            self.between(SECOND, 30 * SECOND)
        } else {
            self.between(5, 400)
        }
    }

    fn at(&mut self, time: u64, event: Event) {
        self.pushed += 1;
        self.queue.push(Reverse((time, self.pushed, event)));
    }

    fn after(&mut self, delay: u64, event: Event) {
        self.at(self.now + delay, event);
    }

    /// Sends over a lossy, duplicating leg.
    fn send(&mut self, event: Event) {
        if self.chance(self.faults.loss_permille) {
            return;
        }
        let delay = self.latency();
        self.after(delay, event);
        if self.chance(self.faults.dup_permille) {
            let delay = self.latency();
            self.after(delay, event);
        }
    }

    fn schedule_world(&mut self) {
        for _ in 0..self.faults.messages {
            let at = T0 + self.between(0, HOUR);
            self.at(at, Event::Compose);
        }
        let mut t = T0;
        if self.faults.long_outage {
            t += self.between(10 * MINUTE, 50 * MINUTE);
            self.at(t, Event::ReceiverOnline(false));
            t += MAILBOX_TTL + DAY + self.between(0, 2 * DAY);
            self.at(t, Event::ReceiverOnline(true));
        }
        let active_until = t + ACTIVE;
        while t < active_until {
            t += self.between(MINUTE, HOUR);
            self.at(t, Event::ReceiverOnline(false));
            t += self.between(10 * SECOND, 90 * MINUTE);
            self.at(t, Event::ReceiverOnline(true));
        }
        for _ in 0..self.faults.crashes_per_side {
            let at = T0 + self.between(0, active_until - T0);
            self.at(at, Event::SenderCrash);
            let at = T0 + self.between(0, active_until - T0);
            self.at(at, Event::ReceiverCrash);
        }
        self.at(T0, Event::FetchMail);
    }

    fn run(&mut self) {
        loop {
            let composed = self.records.len() == self.faults.messages as usize;
            if composed && self.records.iter().all(|r| r.outcome.is_some()) {
                break;
            }
            let timer = self.sender.outbox.poll_timeout();
            let next_event = self.queue.peek().map(|Reverse((at, _, _))| *at);
            let next = match (timer, next_event) {
                (Some(timer), Some(event)) => timer.max(self.now).min(event),
                (Some(timer), None) => timer.max(self.now),
                (None, Some(event)) => event,
                (None, None) => panic!("seed {}: nothing left to happen", self.seed),
            };
            assert!(
                next <= HARD_STOP,
                "seed {}: messages still pending at the hard stop",
                self.seed
            );
            self.now = next;
            if timer.is_some_and(|timer| timer <= self.now) {
                let _ = self.poll_outbox();
                assert!(
                    self.sender
                        .outbox
                        .poll_timeout()
                        .is_none_or(|t| t > self.now),
                    "seed {}: poll_due left the outbox due at once (livelock)",
                    self.seed
                );
            } else if let Some(Reverse((_, _, event))) = self.queue.pop() {
                self.handle(event);
            }
            self.drain_outbox_events();
        }
        self.check_end();
    }

    fn report(&self) -> Report {
        Report {
            outcomes: self.records.iter().filter_map(|r| r.outcome).collect(),
            accepted: self.receiver.accepted.clone(),
        }
    }

    fn id(&self, msg: usize) -> MessageId {
        self.records[msg].id.unwrap()
    }

    /// Starts an attempt for each due message; returns how many.
    fn poll_outbox(&mut self) -> usize {
        let due = self.sender.outbox.poll_due(self.now);
        let count = due.len();
        for id in due {
            let msg = self.ids[&id];
            let token = self.next_token;
            self.next_token += 1;
            self.sender.attempts.insert(token, msg);
            if self.receiver.online {
                self.send(Event::DeliverArrives { msg, token });
                self.after(REQUEST_TIMEOUT, Event::AttemptFailed { token });
            } else {
                let dial = self.between(100, 3 * SECOND);
                self.after(dial, Event::AttemptFailed { token });
            }
        }
        count
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Compose => self.compose(),
            Event::SenderCrash => self.crash_sender(),
            Event::ReceiverCrash => self.crash_receiver(),
            Event::ReceiverOnline(online) => {
                self.receiver.online = online;
                if online {
                    // The server pushes "mail waiting" at login.
                    let delay = self.between(0, 5 * SECOND);
                    self.after(delay, Event::FetchMail);
                }
            }
            Event::FetchMail => self.fetch_mail(),
            Event::DeliverArrives { msg, token } => {
                if self.receiver.online {
                    self.receive(msg);
                    self.send(Event::AttemptStored { token });
                }
            }
            Event::AttemptStored { token } => {
                if let Some(msg) = self.sender.attempts.remove(&token) {
                    let id = self.id(msg);
                    self.sender.outbox.handle_stored(id);
                }
            }
            Event::AttemptFailed { token } => {
                if let Some(msg) = self.sender.attempts.remove(&token) {
                    if self.chance(self.faults.lost_report_permille) {
                        self.stats.lost_reports += 1;
                    } else {
                        self.attempt_failed(msg);
                    }
                }
            }
            Event::DepositArrives { msg, token } => {
                self.mailbox.push((msg, self.now));
                // If the answer is lost, the sender's timeout reports a failure it was not.
                self.send(Event::DepositOutcome { token, ok: true });
            }
            Event::DepositOutcome { token, ok } => {
                if let Some(msg) = self.sender.deposits.remove(&token) {
                    self.depositing.remove(&msg);
                    let id = self.id(msg);
                    if ok {
                        assert!(
                            self.sender.outbox.handle_queued(id)
                                || self.records[msg].outcome.is_some()
                        );
                    } else {
                        self.records[msg].deposit_failures += 1;
                        self.sender.outbox.handle_deposit_failed(id);
                    }
                }
            }
            Event::ReceiptArrives { msg } => {
                let id = self.id(msg);
                if self.sender.outbox.handle_receipt(id) {
                    self.stats.delivered_by_receipt += 1;
                }
            }
        }
    }

    fn compose(&mut self) {
        let mut id = [0u8; 32];
        self.rng.fill_bytes(&mut id);
        let id = MessageId(id);
        let seq = self.sender.seqs.next_own_seq();
        let stamp = self.sender.clock.tick(self.now);
        let msg = self.records.len();
        assert_eq!(
            seq,
            msg as u64 + 1,
            "own seqs run 1, 2, 3, … across restarts"
        );
        self.records.push(Record {
            id: Some(id),
            seq,
            stamp,
            created_at: self.now,
            ..Record::default()
        });
        self.ids.insert(id, msg);
        self.sender.outbox.insert(id, self.now).unwrap();
    }

    fn attempt_failed(&mut self, msg: usize) {
        let id = self.id(msg);
        let queued = self.sender.outbox.status(&id) == Some(DeliveryStatus::Queued);
        let attempt = self
            .sender
            .outbox
            .handle_failed(id, self.now, &mut self.rng);
        let retry_at = match attempt {
            Attempt::Retry { at } => at,
            Attempt::DepositInMailbox { retry_at } => {
                self.deposit(msg, queued);
                retry_at
            }
            Attempt::GaveUp | Attempt::Ignored => return,
        };
        self.check_backoff(msg, queued, retry_at - self.now);
    }

    fn check_backoff(&mut self, msg: usize, queued: bool, delay: u64) {
        let seed = self.seed;
        let config = self.config;
        let record = &mut self.records[msg];
        record.failures += 1;
        let nominal = config.nominal_backoff(record.failures, queued);
        let jitter = u64::from(config.jitter_permille);
        assert!(
            nominal >= record.last_nominal,
            "seed {seed}: backoff went down"
        );
        assert!(
            delay >= nominal * (1000 - jitter) / 1000 && delay <= nominal * (1000 + jitter) / 1000,
            "seed {seed}: delay {delay} outside the jitter band of {nominal}"
        );
        assert!(
            delay <= config.backoff_cap(queued),
            "seed {seed}: over the cap"
        );
        if 2 * nominal >= 3 * record.last_nominal && record.last_nominal > 0 {
            assert!(
                delay > record.last_delay,
                "seed {seed}: delay shrank while the backoff grew"
            );
        }
        record.last_nominal = nominal;
        record.last_delay = delay;
    }

    fn deposit(&mut self, msg: usize, queued: bool) {
        let seed = self.seed;
        assert!(
            !queued,
            "seed {seed}: deposit asked for a message the mailbox holds"
        );
        assert!(
            self.depositing.insert(msg),
            "seed {seed}: deposit asked for again while one is outstanding"
        );
        self.records[msg].deposits_asked += 1;
        self.stats.deposits += 1;
        if self.records[msg].deposits_asked > 1 {
            self.stats.redeposits += 1;
        }
        let token = self.next_token;
        self.next_token += 1;
        self.sender.deposits.insert(token, msg);
        if self.chance(self.faults.deposit_fail_permille) {
            let delay = self.latency();
            self.after(delay, Event::DepositOutcome { token, ok: false });
        } else {
            self.send(Event::DepositArrives { msg, token });
            self.after(REQUEST_TIMEOUT, Event::DepositOutcome { token, ok: false });
        }
    }

    fn fetch_mail(&mut self) {
        self.after(MAIL_POLL, Event::FetchMail);
        if !self.receiver.online {
            return;
        }
        let now = self.now;
        self.mailbox.retain(|&(_, at)| at + MAILBOX_TTL > now);
        let mut kept = Vec::new();
        for (msg, at) in std::mem::take(&mut self.mailbox) {
            self.receive(msg);
            self.send(Event::ReceiptArrives { msg });
            if self.chance(self.faults.unacked_mail_permille) {
                kept.push((msg, at));
            }
        }
        self.mailbox = kept;
    }

    /// The receiver's path for an envelope from anywhere: hot-path dedup, then the sequence
    /// tracker, cross-checked against the durable store.
    fn receive(&mut self, msg: usize) {
        let seed = self.seed;
        let now = self.now;
        let (id, seq, stamp) = {
            let record = &self.records[msg];
            (self.id(msg), record.seq, record.stamp)
        };
        let receiver = &mut self.receiver;
        if receiver.dedup.contains(&id) || receiver.store.contains_key(&id) {
            self.stats.duplicates_received += 1;
        }
        if seq > receiver.seqs.have_through(&self.key) + 1 {
            self.stats.out_of_order_received += 1;
        }
        if receiver.dedup.contains(&id) {
            assert!(
                receiver.store.contains_key(&id),
                "seed {seed}: dedup dropped a new message"
            );
            return;
        }
        match receiver.seqs.observe(&self.key, seq).unwrap() {
            Observation::New => {
                assert!(
                    receiver.store.insert(id, msg).is_none(),
                    "seed {seed}: a stored message observed as new"
                );
                receiver.accepted.push(msg);
                receiver.clock.observe(stamp, now);
            }
            Observation::Duplicate => assert!(
                receiver.store.contains_key(&id),
                "seed {seed}: a message never stored observed as a duplicate"
            ),
        }
        receiver.dedup.insert(id);
    }

    fn crash_sender(&mut self) {
        let frame =
            codec::encode(&(&self.sender.outbox, &self.sender.seqs, &self.sender.clock)).unwrap();
        let (outbox, seqs, clock) = codec::decode(&frame).unwrap();
        self.sender = Sender {
            outbox,
            seqs,
            clock,
            attempts: BTreeMap::new(),
            deposits: BTreeMap::new(),
        };
        self.stats.sender_crashes += 1;
        for msg in std::mem::take(&mut self.depositing) {
            self.records[msg].restarts_while_depositing += 1;
        }
        // Nothing the old process had in flight or was backing off from is trusted.
        let pending = self.sender.outbox.len();
        assert_eq!(
            self.poll_outbox(),
            pending,
            "seed {}: not every pending message is due after a restart",
            self.seed
        );
    }

    fn crash_receiver(&mut self) {
        let frame = codec::encode(&(&self.receiver.seqs, &self.receiver.clock)).unwrap();
        let (seqs, clock) = codec::decode(&frame).unwrap();
        self.receiver.seqs = seqs;
        self.receiver.clock = clock;
        self.receiver.dedup = Dedup::new(64);
        self.stats.receiver_crashes += 1;
    }

    fn drain_outbox_events(&mut self) {
        let seed = self.seed;
        while let Some(event) = self.sender.outbox.poll_event() {
            let msg = self.ids[&event.id];
            if !event.status.is_final() {
                continue;
            }
            let record = &mut self.records[msg];
            assert!(record.outcome.is_none(), "seed {seed}: two final events");
            record.outcome = Some((event.status, self.now));
            match event.status {
                DeliveryStatus::Delivered => assert!(
                    self.receiver.store.contains_key(&event.id),
                    "seed {seed}: delivered but not stored"
                ),
                _ => {
                    assert!(
                        self.now >= record.created_at + self.config.give_up_after_ms,
                        "seed {seed}: failed before the deadline"
                    );
                    self.stats.failed += 1;
                }
            }
        }
    }

    fn check_end(&self) {
        let seed = self.seed;
        assert!(self.sender.outbox.is_empty(), "seed {seed}");
        assert_eq!(self.sender.outbox.poll_timeout(), None, "seed {seed}");

        // No duplicates in the accepted stream.
        let accepted: BTreeSet<usize> = self.receiver.accepted.iter().copied().collect();
        assert_eq!(accepted.len(), self.receiver.accepted.len(), "seed {seed}");

        // No loss: what the receiver lacks, the sender reported failed.
        let failed: BTreeSet<usize> = (0..self.records.len())
            .filter(|&msg| {
                matches!(
                    self.records[msg].outcome,
                    Some((DeliveryStatus::Failed { .. }, _))
                )
            })
            .collect();
        for msg in 0..self.records.len() {
            assert!(
                accepted.contains(&msg) || failed.contains(&msg),
                "seed {seed}: message {msg} lost"
            );
        }
        if !self.faults.long_outage {
            assert!(failed.is_empty(), "seed {seed}: {} failed", failed.len());
        }

        // Per-sender order: the accepted seqs are 1..=n but for failed messages, and history keys
        // sort them in send order.
        let seqs: Vec<u64> = accepted.iter().map(|&m| self.records[m].seq).collect();
        let expected: Vec<u64> = (0..self.records.len())
            .filter(|m| accepted.contains(m))
            .map(|m| m as u64 + 1)
            .collect();
        assert_eq!(seqs, expected, "seed {seed}");
        let n = self.records.len() as u64;
        if failed.is_empty() {
            assert_eq!(self.receiver.seqs.have_through(&self.key), n, "seed {seed}");
            assert!(self.receiver.seqs.gaps(&self.key).is_empty(), "seed {seed}");
        }
        let mut by_key: Vec<([u8; 48], u64)> = self
            .receiver
            .accepted
            .iter()
            .map(|&m| {
                let r = &self.records[m];
                (
                    HistoryOrder::new(r.stamp, &self.key, r.seq).to_key_bytes(),
                    r.seq,
                )
            })
            .collect();
        by_key.sort();
        assert!(by_key.windows(2).all(|w| w[0].1 < w[1].1), "seed {seed}");
        let latest = accepted.iter().map(|&m| self.records[m].stamp).max();
        assert!(
            self.receiver.clock.current() >= latest.unwrap_or_default(),
            "seed {seed}"
        );

        // The mailbox deposit: at most once, unless the previous one failed or was forgotten.
        for (msg, record) in self.records.iter().enumerate() {
            assert!(
                record.deposits_asked
                    <= 1 + record.deposit_failures + record.restarts_while_depositing,
                "seed {seed}: message {msg}: {record:?}"
            );
        }
    }
}

fn run(seed: u64, faults: Faults) -> Sim {
    let mut sim = Sim::new(seed, faults);
    sim.run();
    sim
}

#[test]
fn every_message_is_delivered_once_in_order_or_fails_after_the_deadline() {
    let mut stats = Stats::default();
    for seed in 0..48 {
        stats += run(seed, Faults::for_seed(seed)).stats;
    }
    // Every fault the checks are about did happen, many times over.
    println!("{stats:?}");
    let Stats {
        sender_crashes,
        receiver_crashes,
        lost_reports,
        duplicates_received,
        out_of_order_received,
        deposits,
        redeposits,
        delivered_by_receipt,
        failed,
    } = stats;
    for (what, count) in [
        ("sender crashes", sender_crashes),
        ("receiver crashes", receiver_crashes),
        ("lost reports", lost_reports),
        ("duplicates received", duplicates_received),
        ("out-of-order arrivals", out_of_order_received),
        ("deposits", deposits),
        ("repeated deposits", redeposits),
        ("receipts that delivered", delivered_by_receipt),
        ("failures", failed),
    ] {
        assert!(count >= 10, "only {count} {what}");
    }
}

#[test]
fn runs_are_reproducible_from_their_seed() {
    for seed in [3, 7] {
        let faults = Faults::for_seed(seed);
        assert_eq!(run(seed, faults).report(), run(seed, faults).report());
    }
    let faults = Faults::for_seed(1);
    assert_ne!(run(1, faults).report(), run(2, faults).report());
}

#[test]
fn without_lost_or_failed_deposits_or_crashes_each_message_is_deposited_at_most_once() {
    let mut exercised = 0;
    for seed in 100..116 {
        let faults = Faults {
            loss_permille: 0,
            slow_permille: 0,
            deposit_fail_permille: 0,
            crashes_per_side: 0,
            ..Faults::for_seed(seed)
        };
        let sim = run(seed, faults);
        for record in &sim.records {
            assert!(record.deposits_asked <= 1, "seed {seed}: {record:?}");
            assert_eq!(record.deposit_failures, 0, "seed {seed}: {record:?}");
        }
        exercised += sim.records.iter().filter(|r| r.deposits_asked == 1).count();
    }
    assert!(exercised > 0, "the mailbox path was never exercised");
}

#[test]
fn a_month_long_outage_fails_messages_at_the_deadline_instead_of_hanging() {
    let seed = 7;
    let faults = Faults::for_seed(seed);
    assert!(faults.long_outage);
    let report = run(seed, faults).report();
    let failed: Vec<_> = report
        .outcomes
        .iter()
        .filter(|(status, _)| matches!(status, DeliveryStatus::Failed { .. }))
        .collect();
    assert!(!failed.is_empty());
    assert!(
        failed
            .iter()
            .all(|(_, at)| *at >= T0 + 30 * DAY && *at <= T0 + 30 * DAY + 2 * HOUR)
    );
}
