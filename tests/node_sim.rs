//! Whole-network simulation of the node's message path: several nodes' `NodeState`s
//! (`palaver_protocol::node::state`: the rendezvous session, the send pipeline and the
//! direct-delivery planner, woken as the daemon wakes them), and the
//! rendezvous server's own decisions
//! (`palaver_rendezvous::sim::SimServer`, over a real store), on one simulated clock, over a
//! seeded network that delays, reorders and loses requests and answers, partitions nodes,
//! crashes and restarts them (state reloaded from what they persisted) and restarts the server.
//!
//! Every node writes to the others as the daemon does: a message is on the sender's disk when
//! sent; the planner delivers it over a direct connection (found through discovery; some pairs
//! of nodes cannot connect directly, as behind NATs) or deposits it in the recipient's mailbox;
//! the recipient stores it once and confirms it — by its `Stored` answer, or by a receipt
//! message (itself delivered the same way) for mail. After a chaotic phase the network heals;
//! then every node must be logged in, every message in its recipient's history exactly once and
//! confirmed at its sender, nothing left in any mailbox, and no login refused.
//! `PALAVER_SIM_SEEDS` sets how many seeds run (200 by default); a failure names its seed.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashSet};

use palaver_protocol::crypto::ratchet::{Header, RatchetMessage};
use palaver_protocol::crypto::x3dh::PrekeySecrets;
use palaver_protocol::delivery::{DeliveryStatus, Outbox};
use palaver_protocol::identity::peer_id_of;
use palaver_protocol::node::direct::pipeline::{self, CallId, SendPipeline};
use palaver_protocol::node::direct::{self, Answer, Delivery, Route};
use palaver_protocol::node::discovery::Publisher;
use palaver_protocol::node::rooms::Rooms;
use palaver_protocol::node::session::{
    Input, Output, PrekeyState, RequestKey, Session, SessionConfig,
};
use palaver_protocol::node::state::NodeState;
use palaver_protocol::wire::RefusalReason;
use palaver_protocol::wire::{
    Body, DirectMessage, Envelope, MessageId, RendezvousRequest, RendezvousResponse, ServerPush,
};
use palaver_protocol::{Identity, PeerId, SigningKey, UserName, VerifyingKey};
use palaver_rendezvous::Limits;
use palaver_rendezvous::sim::SimServer;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

const NODES: usize = 4;
const MESSAGES_PER_NODE: usize = 6;
/// Chaos for this long, then a healed network for as long again.
const CHAOS_MS: u64 = 4 * 60_000;
const HEALED_MS: u64 = 4 * 60_000;
/// A request that got no answer fails after this (request-response's timeout).
const REQUEST_TIMEOUT_MS: u64 = 10_000;
const HEARTBEAT_MS: u64 = 10_000;
/// How often the simulation wakes every machine whose deadline has passed.
const TICK_MS: u64 = 1_000;
const LOSS: f64 = 0.05;
/// The chance that two nodes cannot connect directly (both behind NATs, no punch).
const NO_DIRECT_PATH: f64 = 0.3;

#[test]
fn every_acknowledged_message_reaches_its_recipient_once_through_faults() {
    let seeds: u64 = std::env::var("PALAVER_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let mut paths = Paths::default();
    for seed in 0..seeds {
        match Sim::new(seed).run() {
            Ok(taken) => paths.add(taken),
            Err(failure) => panic!("seed {seed}: {failure}"),
        }
    }
    eprintln!("{seeds} seeds: {paths:?}");
    // The runs took every path (else they would prove little about the ones not taken).
    assert!(
        paths.direct > 0 && paths.mailbox > 0 && paths.receipts > 0,
        "{paths:?}"
    );
    // Most sends got past the pipeline (some fail honestly: sent while logged out, a lookup
    // lost), and first messages started sessions from prekey bundles.
    assert!(paths.sealed > 3 * paths.refused_sends, "{paths:?}");
    assert!(paths.prekey_fetches > 0, "{paths:?}");
}

/// How messages went, over the runs.
#[derive(Debug, Default, Clone, Copy)]
struct Paths {
    /// Confirmed by the recipient's `Stored` answer.
    direct: u64,
    /// Deposited in a mailbox.
    mailbox: u64,
    /// Receipts sent for mail.
    receipts: u64,
    /// Texts sealed and sent (past the send pipeline).
    sealed: u64,
    /// Sends that failed before they were sealed (not logged in, a lookup lost, …).
    refused_sends: u64,
    /// Prekey fetches a send made.
    prekey_fetches: u64,
}

impl Paths {
    fn add(&mut self, other: Paths) {
        self.direct += other.direct;
        self.mailbox += other.mailbox;
        self.receipts += other.receipts;
        self.sealed += other.sealed;
        self.refused_sends += other.refused_sends;
        self.prekey_fetches += other.prekey_fetches;
    }
}

/// Found in session 3 (and fixed there in the daemon): a message to a user who was offline
/// across a rendezvous restart stayed `sent`, never deposited — the restarted server has no
/// discovery record for the user, and the lookup's empty answer was not taken as a failure.
#[test]
fn a_message_to_a_user_offline_across_a_rendezvous_restart_reaches_the_mailbox_then_the_user() {
    let mut sim = Sim::new(0);
    sim.loss = 0.0;
    let (alice, bob) = (0, 1);
    sim.at(5_000, Event::Crash(bob));
    sim.at(10_000, Event::ServerDown);
    sim.at(12_000, Event::ServerUp);
    sim.at(
        20_000,
        Event::Send {
            from: alice,
            to: bob,
        },
    );
    sim.at(90_000, Event::Restart(bob));
    let paths = sim
        .run_scheduled()
        .unwrap_or_else(|failure| panic!("{failure}"));
    assert!(paths.mailbox >= 1, "it went through the mailbox: {paths:?}");
    assert!(paths.receipts >= 1, "bob's receipt confirmed it: {paths:?}");
}

/// The bug `pipeline::PREKEY_WAIT_MS` is for: a first message to a user who has logged in but
/// not published prekeys yet waits for them instead of failing, and arrives.
#[test]
fn a_first_message_to_a_user_without_prekeys_yet_waits_for_them_and_arrives() {
    let mut sim = Sim::new(0);
    sim.loss = 0.0;
    let (alice, bob) = (0, 1);
    // Bob is new and his disk is slow: his prekeys are published only once they are stored,
    // 8 s after his first login; alice writes to him at 5 s.
    sim.crash_and_boot_slowly(bob, 8_000);
    sim.at(
        5_000,
        Event::Send {
            from: alice,
            to: bob,
        },
    );
    let paths = sim
        .run_scheduled()
        .unwrap_or_else(|failure| panic!("{failure}"));
    assert_eq!((paths.sealed, paths.refused_sends), (1, 0), "{paths:?}");
    assert!(
        paths.prekey_fetches >= 3,
        "asked again while waiting: {paths:?}"
    );
}

/// What a node asked the server for, when it wants the answer back.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Deposit(MessageId),
    FinalFetch,
    /// A send's lookup of its recipient's name.
    Lookup(CallId, UserName),
    /// A send's prekey fetch.
    Prekeys(CallId),
}

/// What a simulated envelope stands for (its ciphertext is only a counter).
#[derive(Debug, Clone)]
enum Kind {
    /// A user's message: it must reach the recipient's history and be confirmed.
    Text,
    /// A receipt for mail: it confirms these messages at their sender.
    Receipt(Vec<MessageId>),
}

#[derive(Debug)]
enum Event {
    ToServer {
        node: usize,
        epoch: u64,
        key: RequestKey,
        request: RendezvousRequest,
    },
    ToNode {
        node: usize,
        epoch: u64,
        key: RequestKey,
        response: RendezvousResponse,
    },
    Push {
        node: usize,
        epoch: u64,
        push: ServerPush,
    },
    /// No answer came for `key`: the transport gives up on it.
    Timeout {
        node: usize,
        epoch: u64,
        key: RequestKey,
    },
    LinkDown(usize),
    LinkUp(usize),
    Crash(usize),
    Restart(usize),
    ServerDown,
    ServerUp,
    Send {
        from: usize,
        to: usize,
    },
    Tick,
    /// Node `node`'s prekeys are on its disk now (its run `life`), to be published.
    PrekeysStored {
        node: usize,
        life: u64,
    },
    /// The rendezvous's discovery answer for `target` reaches `node`.
    Discovered {
        node: usize,
        epoch: u64,
        target: usize,
        found: bool,
    },
    /// `from`'s dial to `to` ended.
    Dialed {
        from: usize,
        to: usize,
    },
    /// A delivery of the envelope `id` reaches its recipient over connection `conn`.
    Deliver {
        from: usize,
        to: usize,
        conn: u64,
        request: u64,
        id: MessageId,
    },
    /// The recipient's `Stored` answer reaches the sender.
    Stored {
        from: usize,
        to: usize,
        conn: u64,
        request: u64,
        id: MessageId,
    },
    /// The delivery `request` got no answer in time.
    DeliveryTimeout {
        from: usize,
        life: u64,
        request: u64,
    },
}

/// What a node keeps on disk: survives its crashes.
#[derive(Debug, Default)]
struct Disk {
    /// Pinned names → keys, learned from lookups.
    contacts: BTreeMap<UserName, VerifyingKey>,
    /// Whom it has a session with (started from a prekey bundle).
    sessions: BTreeSet<[u8; 32]>,
    prekeys: Option<(Vec<u8>, Option<u64>, bool, bool)>,
    history: BTreeSet<MessageId>,
    /// Sent, not yet confirmed: (recipient, envelope, whether it is shown in history).
    outbox: BTreeMap<MessageId, (usize, Envelope, bool)>,
    /// The delivery planner's outbox, as last persisted.
    outbox_state: Option<Vec<u8>>,
}

#[derive(Debug)]
struct Node {
    key: SigningKey,
    peer: PeerId,
    name: UserName,
    disk: Disk,
    /// The node's machines (session, delivery planner, send pipeline, rooms) as the daemon
    /// composes them; `None` while crashed (sends waiting in the pipeline are lost with it, as
    /// nothing about them was acknowledged yet).
    state: Option<NodeState<Token, u64, usize>>,
    /// Whether the network lets it reach the server (not partitioned).
    link_up: bool,
    /// The current connection's number; 0 while not connected.
    epoch: u64,
    in_flight: HashSet<RequestKey>,
    /// Sends that failed before they were sealed (the user was told).
    sends_failed: Vec<String>,
    /// How long storing its prekeys takes (a slow disk); they are published only then.
    prekey_store_ms: u64,
    /// Which run this is (one per boot): answers to a crashed run's requests are dropped.
    life: u64,
    next_request: u64,
    final_fetch: Option<Result<usize, String>>,
}

struct Sim {
    seed: u64,
    rng: ChaCha20Rng,
    now: u64,
    seq: u64,
    queue: BinaryHeap<Reverse<(u64, u64)>>,
    events: BTreeMap<u64, Event>,
    dir: tempfile::TempDir,
    server: Option<SimServer>,
    nodes: Vec<Node>,
    next_epoch: u64,
    next_message: u32,
    /// Every message sent: id → (sender, recipient, what it is).
    sent: BTreeMap<MessageId, (usize, usize, Kind)>,
    /// Text messages whose sender saw them confirmed.
    confirmed: BTreeSet<MessageId>,
    /// Nodes whose discovery record the server holds (lost when it restarts, in this model).
    registered: BTreeSet<usize>,
    /// Open connections between nodes: (lower, higher) → connection number.
    links: BTreeMap<(usize, usize), u64>,
    /// Pairs of nodes that cannot connect directly.
    no_direct_path: BTreeSet<(usize, usize)>,
    failures: Vec<String>,
    paths: Paths,
    refusals: Vec<String>,
    /// The chance a request or answer is lost ([`LOSS`]; none for the final checks).
    loss: f64,
}

impl Sim {
    fn new(seed: u64) -> Self {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let nodes = (0..NODES)
            .map(|i| {
                let key = SigningKey::from_bytes(&rng.r#gen());
                Node {
                    peer: peer_id_of(&key.verifying_key()),
                    name: UserName::new(format!("user{i}")).expect("name"),
                    key,
                    disk: Disk::default(),
                    state: None,
                    link_up: true,
                    epoch: 0,
                    in_flight: HashSet::new(),
                    sends_failed: Vec::new(),
                    prekey_store_ms: 0,
                    life: 0,
                    next_request: 0,
                    final_fetch: None,
                }
            })
            .collect();
        let mut no_direct_path = BTreeSet::new();
        for a in 0..NODES {
            for b in a + 1..NODES {
                if rng.gen_bool(NO_DIRECT_PATH) {
                    no_direct_path.insert((a, b));
                }
            }
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let mut sim = Self {
            seed,
            rng,
            now: 1_700_000_000_000,
            seq: 0,
            queue: BinaryHeap::new(),
            events: BTreeMap::new(),
            server: None,
            dir,
            nodes,
            next_epoch: 1,
            next_message: 0,
            sent: BTreeMap::new(),
            confirmed: BTreeSet::new(),
            registered: BTreeSet::new(),
            links: BTreeMap::new(),
            no_direct_path,
            failures: Vec::new(),
            paths: Paths::default(),
            refusals: Vec::new(),
            loss: LOSS,
        };
        sim.open_server();
        for i in 0..NODES {
            sim.boot(i);
        }
        sim
    }

    /// Node `i` crashes, loses its disk (its prekeys with it), and starts again with a disk
    /// this slow to store its new prekeys.
    fn crash_and_boot_slowly(&mut self, i: usize, prekey_store_ms: u64) {
        self.on_event(Event::Crash(i));
        self.nodes[i].disk = Disk::default();
        self.nodes[i].prekey_store_ms = prekey_store_ms;
        self.boot(i);
    }

    fn at(&mut self, delay: u64, event: Event) {
        self.seq += 1;
        self.queue.push(Reverse((self.now + delay, self.seq)));
        self.events.insert(self.seq, event);
    }

    fn latency(&mut self) -> u64 {
        self.rng.gen_range(1..80)
    }

    /// Carries `event` (a request or its answer) over node `i`'s connection: lost with
    /// probability `self.loss`, and then the transport reports a timeout for `key`; else delivered
    /// after a random latency.
    fn over_the_network(&mut self, i: usize, epoch: u64, key: RequestKey, event: Event) {
        if self.rng.gen_bool(self.loss) {
            self.at(
                REQUEST_TIMEOUT_MS,
                Event::Timeout {
                    node: i,
                    epoch,
                    key,
                },
            );
        } else {
            let delay = self.latency();
            self.at(delay, event);
        }
    }

    fn run(mut self) -> Result<Paths, String> {
        self.schedule_chaos();
        self.run_scheduled()
    }

    /// Runs what is scheduled (and the ticks) for the chaos and healed phases, then checks.
    fn run_scheduled(mut self) -> Result<Paths, String> {
        let start = self.now;
        self.at(TICK_MS, Event::Tick);
        let end = start + CHAOS_MS + HEALED_MS;
        while let Some(Reverse((at, seq))) = self.queue.pop() {
            if at > end {
                break;
            }
            self.now = at;
            let event = self.events.remove(&seq).expect("scheduled event");
            self.on_event(event);
        }
        self.check()
    }

    /// Faults during the chaotic phase, and the messages every node sends.
    fn schedule_chaos(&mut self) {
        for from in 0..NODES {
            for _ in 0..MESSAGES_PER_NODE {
                let to = (from + self.rng.gen_range(1..NODES)) % NODES;
                let at = self.rng.gen_range(0..CHAOS_MS);
                self.at(at, Event::Send { from, to });
            }
            for _ in 0..self.rng.gen_range(0..4) {
                let at = self.rng.gen_range(0..CHAOS_MS);
                let down = self.rng.gen_range(1_000..40_000);
                self.at(at, Event::LinkDown(from));
                self.at((at + down).min(CHAOS_MS), Event::LinkUp(from));
            }
            for _ in 0..self.rng.gen_range(0..3) {
                let at = self.rng.gen_range(0..CHAOS_MS);
                let down = self.rng.gen_range(100..30_000);
                self.at(at, Event::Crash(from));
                self.at((at + down).min(CHAOS_MS), Event::Restart(from));
            }
        }
        for _ in 0..self.rng.gen_range(0..3) {
            let at = self.rng.gen_range(0..CHAOS_MS);
            let down = self.rng.gen_range(100..20_000);
            self.at(at, Event::ServerDown);
            self.at((at + down).min(CHAOS_MS), Event::ServerUp);
        }
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::ToServer {
                node,
                epoch,
                key,
                request,
            } => self.server_receives(node, epoch, key, request),
            Event::ToNode {
                node,
                epoch,
                key,
                response,
            } => {
                if self.nodes[node].epoch == epoch && self.nodes[node].in_flight.remove(&key) {
                    self.input(node, Input::Response { key, response });
                }
            }
            Event::Push { node, epoch, push } => {
                if self.nodes[node].epoch == epoch {
                    self.input(node, Input::Push(push));
                }
            }
            Event::Timeout { node, epoch, key } => {
                if self.nodes[node].epoch == epoch && self.nodes[node].in_flight.remove(&key) {
                    let error = "timed out".to_string();
                    self.input(node, Input::Failed { key, error });
                }
            }
            Event::LinkDown(i) => {
                self.nodes[i].link_up = false;
                self.disconnect(i);
                self.drop_links(i);
            }
            Event::LinkUp(i) => {
                self.nodes[i].link_up = true;
                self.connect(i);
            }
            Event::Crash(i) => {
                self.disconnect(i);
                self.drop_links(i);
                self.nodes[i].state = None;
            }
            Event::Restart(i) => {
                if self.nodes[i].state.is_none() {
                    self.boot(i);
                }
            }
            Event::ServerDown => {
                for i in 0..NODES {
                    self.disconnect(i);
                }
                if let Some(server) = self.server.take() {
                    server.shut_down(self.now).expect("server shut down");
                }
                // The model drops discovery records with the server (the harsher case: the real
                // one keeps them in its store until they expire).
                self.registered.clear();
            }
            Event::ServerUp => {
                if self.server.is_none() {
                    self.open_server();
                    for i in 0..NODES {
                        self.connect(i);
                    }
                }
            }
            Event::Send { from, to } => {
                // Nobody types into a crashed node.
                if self.nodes[from].state.is_some() {
                    let to = pipeline::Recipient::Name(self.nodes[to].name.clone());
                    let input = pipeline::Input::Send {
                        job: self.index_by_name(&to),
                        to,
                    };
                    self.pipeline_input(from, input);
                }
            }
            Event::PrekeysStored { node, life } => {
                if self.nodes[node].life == life
                    && let Some(session) = self.nodes[node].state.as_mut().map(|s| &mut s.session)
                {
                    session.handle(
                        Input::PrekeysDurable { durable: true },
                        self.now,
                        &mut self.rng,
                    );
                    self.drive(node);
                }
            }
            Event::Tick => {
                // Each node's machines whose deadline came, as the daemon wakes them.
                for i in 0..NODES {
                    let Some((state, mut facts)) = Known::split(&mut self.nodes[i]) else {
                        continue;
                    };
                    state.handle_timeout(self.now, &mut self.rng, &mut facts);
                    self.drive(i);
                    self.drive_pipeline(i);
                    self.drive_delivery(i);
                }
                if let Some(server) = &mut self.server {
                    server.tick(self.now);
                    self.server_outputs();
                }
                self.at(TICK_MS, Event::Tick);
            }
            Event::Discovered {
                node,
                epoch,
                target,
                found,
            } => {
                let peer = self.nodes[target].peer;
                let input = if found && self.nodes[node].epoch == epoch {
                    direct::Input::Discovered {
                        peer,
                        addrs: vec![address_of(target)],
                    }
                } else {
                    direct::Input::DiscoveryFailed(peer)
                };
                self.delivery_input(node, input);
            }
            Event::Dialed { from, to } => {
                let pair = (from.min(to), from.max(to));
                let up = |n: &Node| n.state.is_some() && n.link_up;
                if up(&self.nodes[from])
                    && up(&self.nodes[to])
                    && !self.no_direct_path.contains(&pair)
                {
                    if !self.links.contains_key(&pair) {
                        self.next_epoch += 1;
                        self.links.insert(pair, self.next_epoch);
                    }
                    let (a, b) = (self.nodes[from].peer, self.nodes[to].peer);
                    self.delivery_input(from, direct::Input::Connected(b));
                    self.delivery_input(to, direct::Input::Connected(a));
                } else {
                    let peer = self.nodes[to].peer;
                    self.delivery_input(from, direct::Input::Unreachable(peer));
                }
            }
            Event::Deliver {
                from,
                to,
                conn,
                request,
                id,
            } => {
                if self.links.get(&(from.min(to), from.max(to))) != Some(&conn) {
                    return; // The connection closed under it: the sender times out.
                }
                self.receive(to, from, id);
                let event = Event::Stored {
                    from,
                    to,
                    conn,
                    request,
                    id,
                };
                if !self.rng.gen_bool(self.loss) {
                    let delay = self.latency();
                    self.at(delay, event);
                }
            }
            Event::Stored {
                from,
                to,
                conn,
                request,
                id,
            } => {
                if self.links.get(&(from.min(to), from.max(to))) == Some(&conn) {
                    self.paths.direct += 1;
                    let answer = Answer::Stored(id);
                    self.delivery_input(from, direct::Input::DeliveryAnswered { request, answer });
                }
            }
            Event::DeliveryTimeout {
                from,
                life,
                request,
            } => {
                if self.nodes[from].life == life {
                    let answer = Answer::Failed;
                    self.delivery_input(from, direct::Input::DeliveryAnswered { request, answer });
                }
            }
        }
    }

    fn open_server(&mut self) {
        // A restarted server in the same process may find the store's lock not yet released:
        // wait for it, up to 10 s.
        for _ in 0..2_000 {
            match SimServer::open(self.dir.path(), Limits::default(), Vec::new()) {
                Ok(server) => return self.server = Some(server),
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(5)),
            }
        }
        panic!("seed {}: cannot reopen the server's store", self.seed);
    }

    /// Starts node `i` from its disk.
    fn boot(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let prekeys = match &node.disk.prekeys {
            Some((secrets, signed_at_ms, published, upload_sent)) => PrekeyState {
                secrets: palaver_protocol::codec::decode::<PrekeySecrets>(secrets)
                    .expect("stored prekeys"),
                signed_at_ms: *signed_at_ms,
                published: *published,
                upload_sent: *upload_sent,
            },
            None => {
                let prekeys = PrekeyState::generate(&mut self.rng, &node.key);
                node.disk.prekeys = Some(persist(&prekeys));
                prekeys
            }
        };
        let config = SessionConfig {
            name: node.name.clone(),
            registration_token: None,
            heartbeat_ms: HEARTBEAT_MS,
            // Each boot is a new run of the daemon.
            instance: self.rng.r#gen(),
        };
        let session = Session::new(config, node.key.clone(), prekeys);
        let outbox: Outbox = match &node.disk.outbox_state {
            Some(bytes) => palaver_protocol::codec::decode(bytes).expect("stored outbox"),
            None => Outbox::default(),
        };
        let stored: Vec<(MessageId, Route)> = self.nodes[i]
            .disk
            .outbox
            .iter()
            .map(|(id, (to, _, in_history))| (*id, route(&self.nodes, *to, *in_history)))
            .collect();
        let node = &mut self.nodes[i];
        let identity = Identity::from_secret_bytes(&node.key.to_bytes());
        node.state = Some(NodeState {
            session,
            delivery: Delivery::new(node.peer, outbox, stored, self.now),
            sends: SendPipeline::default(),
            rooms: Rooms::new(identity, []),
            discovery: Publisher::new(node.peer),
            files: palaver_protocol::node::files::Transfers::new(Default::default(), [], 0),
            link: None,
        });
        node.life += 1;
        self.connect(i);
    }

    fn connect(&mut self, i: usize) {
        let node = &self.nodes[i];
        if node.epoch != 0 || !node.link_up || node.state.is_none() || self.server.is_none() {
            return;
        }
        let peer = node.peer;
        self.nodes[i].epoch = self.next_epoch;
        self.next_epoch += 1;
        if let Some(server) = &mut self.server {
            server.connected(peer, self.now);
        }
        self.input(i, Input::Connected);
    }

    /// Node `i`'s connection closes: its requests in flight fail, and both sides hear of it.
    fn disconnect(&mut self, i: usize) {
        if self.nodes[i].epoch == 0 {
            return;
        }
        self.nodes[i].epoch = 0;
        let peer = self.nodes[i].peer;
        if let Some(server) = &mut self.server {
            server.disconnected(peer, self.now);
        }
        for key in std::mem::take(&mut self.nodes[i].in_flight) {
            let error = "connection closed".to_string();
            self.input(i, Input::Failed { key, error });
        }
        self.input(i, Input::Disconnected);
    }

    /// Node `i`'s direct connections to other nodes close.
    fn drop_links(&mut self, i: usize) {
        let pairs: Vec<(usize, usize)> = self
            .links
            .keys()
            .filter(|(a, b)| *a == i || *b == i)
            .copied()
            .collect();
        for (a, b) in pairs {
            self.links.remove(&(a, b));
            let (pa, pb) = (self.nodes[a].peer, self.nodes[b].peer);
            self.delivery_input(a, direct::Input::Disconnected(pb));
            self.delivery_input(b, direct::Input::Disconnected(pa));
        }
    }

    fn input(&mut self, i: usize, input: Input) {
        let Some(session) = self.nodes[i].state.as_mut().map(|s| &mut s.session) else {
            return;
        };
        session.handle(input, self.now, &mut self.rng);
        self.drive(i);
    }

    fn delivery_input(&mut self, i: usize, input: direct::Input<u64>) {
        let Some(delivery) = self.nodes[i].state.as_mut().map(|s| &mut s.delivery) else {
            return;
        };
        delivery.handle(input, self.now, &mut self.rng);
        self.drive_delivery(i);
    }

    /// Carries out node `i`'s session outputs, as the daemon's driver does.
    fn drive(&mut self, i: usize) {
        loop {
            let Some(output) = self.nodes[i]
                .state
                .as_mut()
                .and_then(|s| s.session.poll_output())
            else {
                return;
            };
            match output {
                Output::Send { key, request } => {
                    let epoch = self.nodes[i].epoch;
                    self.nodes[i].in_flight.insert(key);
                    let event = Event::ToServer {
                        node: i,
                        epoch,
                        key,
                        request,
                    };
                    self.over_the_network(i, epoch, key, event);
                }
                Output::PersistPrekeys { then_publish } => {
                    let session = &self.nodes[i].state.as_ref().expect("running").session;
                    self.nodes[i].disk.prekeys = Some(persist(session.prekeys()));
                    let slow = self.nodes[i].prekey_store_ms;
                    if then_publish && slow > 0 {
                        let life = self.nodes[i].life;
                        self.at(slow, Event::PrekeysStored { node: i, life });
                    } else if then_publish {
                        let session = &mut self.nodes[i].state.as_mut().expect("running").session;
                        session.handle(
                            Input::PrekeysDurable { durable: true },
                            self.now,
                            &mut self.rng,
                        );
                    }
                }
                // As the daemon does: the machines hear of it together (no contacts to watch, no
                // rooms, no external addresses here), then their outputs are carried out.
                Output::LoggedIn { .. } => {
                    self.registered.insert(i);
                    let state = self.nodes[i].state.as_mut().expect("running");
                    state.logged_in(self.now, &mut self.rng, Vec::new(), Vec::new());
                    self.drive_delivery(i);
                }
                Output::LoggedOut => {
                    let state = self.nodes[i].state.as_mut().expect("running");
                    state.logged_out(self.now, &mut self.rng);
                    self.drive_delivery(i);
                }
                Output::Presence(_) | Output::Subscribed { .. } | Output::DevicesChanged(_) => {}
                Output::LoginRefused(refusal) | Output::Stop(refusal) => self
                    .refusals
                    .push(format!("{} refused: {refusal}", self.nodes[i].name)),
                Output::Answer { token, response } => self.on_answer(i, token, response),
                Output::Failed { token, error } => match token {
                    Token::Deposit(id) => {
                        self.delivery_input(i, direct::Input::DepositFailed(id));
                    }
                    Token::FinalFetch => {
                        self.nodes[i].final_fetch = Some(Err("final fetch failed".into()))
                    }
                    Token::Lookup(call, _) | Token::Prekeys(call) => {
                        let answer = pipeline::Answer::Failed(error);
                        self.pipeline_input(i, pipeline::Input::Answered { call, answer });
                    }
                },
                Output::Mail { items, remaining } => {
                    let envelopes = items.into_iter().map(|m| m.envelope).collect();
                    self.on_mail(i, envelopes, remaining);
                }
            }
        }
    }

    /// Carries out node `i`'s delivery planner's outputs, as the daemon's driver does.
    fn drive_delivery(&mut self, i: usize) {
        loop {
            let Some(output) = self.nodes[i]
                .state
                .as_mut()
                .and_then(|s| s.delivery.poll_output())
            else {
                return;
            };
            match output {
                direct::Output::Deliver { peer, id } => {
                    let to = self.index_of(&peer);
                    let request = self.nodes[i].next_request;
                    self.nodes[i].next_request += 1;
                    let delivery = &mut self.nodes[i].state.as_mut().expect("running").delivery;
                    let sent = direct::Input::DeliverySent { id, request };
                    delivery.handle(sent, self.now, &mut self.rng);
                    let life = self.nodes[i].life;
                    let timeout = Event::DeliveryTimeout {
                        from: i,
                        life,
                        request,
                    };
                    self.at(REQUEST_TIMEOUT_MS, timeout);
                    let conn = self.links.get(&(i.min(to), i.max(to))).copied();
                    let stored = self.nodes[i].disk.outbox.contains_key(&id);
                    if let Some(conn) = conn
                        && stored
                        && !self.rng.gen_bool(self.loss)
                    {
                        let delay = self.latency();
                        let event = Event::Deliver {
                            from: i,
                            to,
                            conn,
                            request,
                            id,
                        };
                        self.at(delay, event);
                    }
                }
                direct::Output::Dial { peer, .. } => {
                    let to = self.index_of(&peer);
                    let delay = self.latency();
                    self.at(delay, Event::Dialed { from: i, to });
                }
                direct::Output::Discover(peer) => {
                    let target = self.index_of(&peer);
                    let epoch = self.nodes[i].epoch;
                    // A lost lookup fails when the request times out.
                    let lost = self.rng.gen_bool(self.loss);
                    let event = Event::Discovered {
                        node: i,
                        epoch,
                        target,
                        found: !lost && self.registered.contains(&target),
                    };
                    if epoch == 0 {
                        self.on_event(event); // Not connected: it fails at once.
                    } else {
                        let delay = if lost {
                            REQUEST_TIMEOUT_MS
                        } else {
                            self.latency()
                        };
                        self.at(delay, event);
                    }
                }
                direct::Output::Deposit { id, to } => {
                    let Some(envelope) = self.nodes[i].disk.outbox.get(&id).map(|m| m.1.clone())
                    else {
                        self.delivery_input(i, direct::Input::DepositFailed(id));
                        continue;
                    };
                    let request = RendezvousRequest::Deposit {
                        to,
                        envelope: Box::new(envelope),
                    };
                    if let Some(session) = self.nodes[i].state.as_mut().map(|s| &mut s.session) {
                        session.request(request, Token::Deposit(id));
                    }
                    self.drive(i);
                }
                direct::Output::DeliveryEnded(_) => {}
                direct::Output::Status { id, status, .. } => match status {
                    DeliveryStatus::Delivered => {
                        self.confirmed.insert(id);
                    }
                    DeliveryStatus::Failed { reason } => self.failures.push(format!(
                        "{id:?} from {} failed: {reason}",
                        self.nodes[i].name
                    )),
                    _ => {}
                },
                direct::Output::Forget(id) => {
                    self.nodes[i].disk.outbox.remove(&id);
                }
                direct::Output::SaveOutbox => self.save_outbox(i),
            }
        }
    }

    fn save_outbox(&mut self, i: usize) {
        if let Some(delivery) = self.nodes[i].state.as_ref().map(|s| &s.delivery) {
            let bytes = palaver_protocol::codec::encode(delivery.outbox()).expect("outbox");
            self.nodes[i].disk.outbox_state = Some(bytes);
        }
    }

    fn index_of(&self, peer: &PeerId) -> usize {
        self.nodes
            .iter()
            .position(|n| &n.peer == peer)
            .unwrap_or_else(|| panic!("seed {}: no node is {peer}", self.seed))
    }

    fn on_answer(&mut self, i: usize, token: Token, response: RendezvousResponse) {
        match (token, response) {
            (Token::Deposit(id), RendezvousResponse::Deposited { id: stored }) if stored == id => {
                self.paths.mailbox += 1;
                self.delivery_input(i, direct::Input::Deposited(id));
            }
            (Token::Deposit(id), _) => {
                self.delivery_input(i, direct::Input::DepositFailed(id));
            }
            (Token::FinalFetch, RendezvousResponse::Mail { items, .. }) => {
                self.nodes[i].final_fetch = Some(Ok(items.len()));
            }
            (Token::FinalFetch, other) => {
                self.nodes[i].final_fetch = Some(Err(format!("final fetch: {other:?}")));
            }
            (Token::Lookup(call, name), RendezvousResponse::Users(users)) => {
                let node = &mut self.nodes[i];
                for user in users.into_iter().filter(|u| u.name == name) {
                    // Pinned on first use (the server here never rebinds a name).
                    node.disk.contacts.entry(user.name).or_insert(user.identity);
                }
                let answer = pipeline::Answer::Learned;
                self.pipeline_input(i, pipeline::Input::Answered { call, answer });
            }
            (Token::Prekeys(call), RendezvousResponse::Prekeys(bundle)) => {
                let answer = pipeline::Answer::Prekeys(bundle);
                self.pipeline_input(i, pipeline::Input::Answered { call, answer });
            }
            (Token::Prekeys(call), RendezvousResponse::Refused(refusal))
                if refusal.reason == RefusalReason::NoPrekeys =>
            {
                let answer = pipeline::Answer::NoPrekeys(refusal.to_string());
                self.pipeline_input(i, pipeline::Input::Answered { call, answer });
            }
            (Token::Lookup(call, _) | Token::Prekeys(call), other) => {
                let answer = pipeline::Answer::Failed(format!("{other:?}"));
                self.pipeline_input(i, pipeline::Input::Answered { call, answer });
            }
        }
    }

    /// Node `i` takes in message `id` from `from` (a delivery or mail): a text is stored once
    /// (the durable dedup is the history's id check); a receipt confirms its messages.
    fn receive(&mut self, i: usize, from: usize, id: MessageId) {
        match self.sent.get(&id).map(|(_, _, kind)| kind.clone()) {
            Some(Kind::Text) => {
                self.nodes[i].disk.history.insert(id);
            }
            Some(Kind::Receipt(ids)) => {
                let from = self.nodes[from].peer;
                for id in ids {
                    self.delivery_input(i, direct::Input::Receipt { from, id });
                }
            }
            None => panic!(
                "seed {}: {} got {id:?} from {}, which nobody sent",
                self.seed, self.nodes[i].name, self.nodes[from].name
            ),
        }
    }

    /// Mail held for node `i`: each stored, then acknowledged, then a receipt to each sender of
    /// a text.
    fn on_mail(&mut self, i: usize, envelopes: Vec<Envelope>, remaining: u32) {
        let mut acks = Vec::new();
        let mut receipts: BTreeMap<usize, Vec<MessageId>> = BTreeMap::new();
        for envelope in envelopes {
            let id = envelope.id();
            let from = self.index_of(&peer_id_of(envelope.sender()));
            self.receive(i, from, id);
            if matches!(self.sent.get(&id), Some((_, _, Kind::Text))) {
                receipts.entry(from).or_default().push(id);
            }
            acks.push(id);
        }
        let more = remaining > 0;
        if let Some(session) = self.nodes[i].state.as_mut().map(|s| &mut s.session) {
            session.handle(Input::MailStored { acks, more }, self.now, &mut self.rng);
        }
        self.drive(i);
        for (sender, ids) in receipts {
            self.paths.receipts += 1;
            self.send(i, sender, Kind::Receipt(ids));
        }
    }

    /// Feeds node `i`'s send pipeline, then does what it asks, as the daemon's driver does.
    fn pipeline_input(&mut self, i: usize, input: pipeline::Input<usize>) {
        let Some((state, mut facts)) = Known::split(&mut self.nodes[i]) else {
            return; // crashed: nobody types into it
        };
        state.sends.handle(input, self.now, &mut facts);
        self.drive_pipeline(i);
    }

    fn drive_pipeline(&mut self, i: usize) {
        while let Some(output) = self.nodes[i]
            .state
            .as_mut()
            .and_then(|s| s.sends.poll_output())
        {
            let (call, request, token) = match output {
                pipeline::Output::Lookup { call, name } => {
                    let request = RendezvousRequest::Lookup {
                        names: vec![name.clone()],
                    };
                    (call, request, Token::Lookup(call, name))
                }
                pipeline::Output::FetchPrekeys { call, name, .. } => {
                    self.paths.prekey_fetches += 1;
                    let request = RendezvousRequest::FetchPrekeys { name };
                    (call, request, Token::Prekeys(call))
                }
                pipeline::Output::StartSession { call, key, bundle } => {
                    let answer = if bundle.verify().is_ok() {
                        self.nodes[i].disk.sessions.insert(key.to_bytes());
                        pipeline::Answer::SessionStarted
                    } else {
                        pipeline::Answer::Failed("a bad prekey bundle".into())
                    };
                    self.pipeline_input(i, pipeline::Input::Answered { call, answer });
                    continue;
                }
                // The server here never rebinds a name; the send's failure is counted below.
                pipeline::Output::KeyChanged { .. } => continue,
                pipeline::Output::WhoIs { call, .. } => {
                    let answer = pipeline::Answer::Failed("sends here go by name".into());
                    self.pipeline_input(i, pipeline::Input::Answered { call, answer });
                    continue;
                }
                pipeline::Output::Seal { job: to, .. } => {
                    self.paths.sealed += 1;
                    self.send(i, to, Kind::Text);
                    continue;
                }
                pipeline::Output::Fail { error, .. } => {
                    self.paths.refused_sends += 1;
                    self.nodes[i].sends_failed.push(error);
                    continue;
                }
            };
            match self.nodes[i].state.as_mut().map(|s| &mut s.session) {
                Some(session) if session.is_logged_in() => {
                    session.request(request, token);
                    self.drive(i);
                }
                _ => {
                    let answer = pipeline::Answer::Failed("not logged in".into());
                    self.pipeline_input(i, pipeline::Input::Answered { call, answer });
                }
            }
        }
    }

    fn index_by_name(&self, to: &pipeline::Recipient) -> usize {
        self.nodes
            .iter()
            .position(|n| matches!(to, pipeline::Recipient::Name(name) if *name == n.name))
            .expect("a node of the simulation")
    }

    /// Node `from` sends a message: on its disk, with the planner's outbox, before the planner
    /// may hand it out.
    fn send(&mut self, from: usize, to: usize, kind: Kind) {
        if self.nodes[from].state.is_none() {
            return;
        }
        self.next_message += 1;
        let sender = self.nodes[from].key.verifying_key();
        let body = Body::Direct(DirectMessage {
            sender,
            recipient: self.nodes[to].key.verifying_key(),
            message: RatchetMessage {
                init: None,
                header: Header {
                    dh: x25519_dalek::PublicKey::from([9; 32]),
                    previous_chain_len: 0,
                    index: self.next_message,
                },
                ciphertext: self.next_message.to_be_bytes().to_vec(),
            },
        });
        let envelope = Envelope::sign(body, &self.nodes[from].key).expect("envelope");
        let id = envelope.id();
        let in_history = matches!(kind, Kind::Text);
        self.sent.insert(id, (from, to, kind));
        let route = route(&self.nodes, to, in_history);
        let delivery = &mut self.nodes[from].state.as_mut().expect("running").delivery;
        delivery.hold(id, route, self.now).expect("outbox has room");
        self.nodes[from]
            .disk
            .outbox
            .insert(id, (to, envelope, in_history));
        // As the daemon does: the outbox is not written with the message (a crash before its
        // next `SaveOutbox` leaves a stored message the outbox does not know, taken in at start).
        self.delivery_input(from, direct::Input::Durable(id));
    }

    fn server_receives(
        &mut self,
        i: usize,
        epoch: u64,
        key: RequestKey,
        request: RendezvousRequest,
    ) {
        if self.nodes[i].epoch != epoch {
            return; // The connection it came over is gone.
        }
        let peer = self.nodes[i].peer;
        let Some(server) = &mut self.server else {
            return;
        };
        let response = server
            .handle(peer, request, self.now)
            .unwrap_or_else(|err| panic!("seed {}: server store: {err}", self.seed));
        let event = Event::ToNode {
            node: i,
            epoch,
            key,
            response,
        };
        self.over_the_network(i, epoch, key, event);
        self.server_outputs();
    }

    fn server_outputs(&mut self) {
        let Some(server) = &mut self.server else {
            return;
        };
        let pushes = server.take_pushes();
        let disconnects = server.take_disconnects();
        for (peer, push) in pushes {
            if let Some(node) = self.nodes.iter().position(|n| n.peer == peer) {
                let epoch = self.nodes[node].epoch;
                let delay = self.latency();
                self.at(delay, Event::Push { node, epoch, push });
            }
        }
        for peer in disconnects {
            if let Some(node) = self.nodes.iter().position(|n| n.peer == peer) {
                self.disconnect(node);
                // The node redials.
                self.at(1_000, Event::LinkUp(node));
            }
        }
    }

    /// The properties, once the network has healed.
    fn check(&mut self) -> Result<Paths, String> {
        if let Some(refusal) = self.refusals.first() {
            return Err(refusal.clone());
        }
        for i in 0..NODES {
            let node = &self.nodes[i];
            let Some(session) = node.state.as_ref().map(|s| &s.session) else {
                return Err(format!("{} never restarted", node.name));
            };
            if !session.is_logged_in() {
                return Err(format!(
                    "{} is not logged in after the network healed",
                    node.name
                ));
            }
        }
        if let Some(failure) = self.failures.first() {
            return Err(failure.clone());
        }
        let texts = self.sent.iter().filter(|(_, m)| matches!(m.2, Kind::Text));
        for (id, (from, to, _)) in texts {
            let (sender, recipient) = (&self.nodes[*from], &self.nodes[*to]);
            let (from, to) = (&sender.name, &recipient.name);
            if !recipient.disk.history.contains(id) {
                let status = sender
                    .state
                    .as_ref()
                    .map(|s| s.delivery.outbox().status(id));
                return Err(format!(
                    "{id:?} from {from} never reached {to} (at the sender: {status:?}, stored {}; links {:?}, no direct path {:?}, registered {:?})",
                    sender.disk.outbox.contains_key(id),
                    self.links,
                    self.no_direct_path,
                    self.registered
                ));
            }
            if !self.confirmed.contains(id) {
                return Err(format!("{id:?} from {from} to {to} was never confirmed"));
            }
        }
        // Nothing is left held: every delivered message was acknowledged and removed. (Asked
        // over a lossless network, so the answer always comes.)
        self.loss = 0.0;
        for i in 0..NODES {
            if let Some(session) = self.nodes[i].state.as_mut().map(|s| &mut s.session) {
                session.request(RendezvousRequest::FetchMail { max: 64 }, Token::FinalFetch);
            }
            self.drive(i);
        }
        let deadline = self.now + 2 * REQUEST_TIMEOUT_MS;
        while let Some(Reverse((at, seq))) = self.queue.pop() {
            if at > deadline || self.nodes.iter().all(|n| n.final_fetch.is_some()) {
                break;
            }
            self.now = at;
            let event = self.events.remove(&seq).expect("scheduled event");
            self.on_event(event);
        }
        for node in &self.nodes {
            match &node.final_fetch {
                Some(Ok(0)) => {}
                Some(Ok(n)) => return Err(format!("{n} messages still held for {}", node.name)),
                Some(Err(err)) => return Err(format!("{}: {err}", node.name)),
                None => return Err(format!("{}: the final fetch got no answer", node.name)),
            }
        }
        Ok(self.paths)
    }
}

/// What a simulated node knows, as its send pipeline asks it.
struct Known<'a> {
    me: VerifyingKey,
    disk: &'a Disk,
}

impl<'a> Known<'a> {
    /// A running node's machines, and what it knows.
    fn split(node: &'a mut Node) -> Option<(&'a mut NodeState<Token, u64, usize>, Self)> {
        let me = node.key.verifying_key();
        let state = node.state.as_mut()?;
        Some((
            state,
            Self {
                me,
                disk: &node.disk,
            },
        ))
    }
}

impl pipeline::Facts for Known<'_> {
    type Refusal = String;
    /// The driver here answers a question it cannot send (see `drive_pipeline`).
    fn unavailable(&self) -> Option<String> {
        None
    }
    fn me(&self) -> VerifyingKey {
        self.me
    }
    fn key_to_send(
        &mut self,
        name: &UserName,
    ) -> Result<Option<(VerifyingKey, Option<String>)>, String> {
        Ok(self.disk.contacts.get(name).map(|key| (*key, None)))
    }
    fn name_of(&self, key: &VerifyingKey) -> Option<UserName> {
        let mut contacts = self.disk.contacts.iter();
        contacts.find(|(_, k)| *k == key).map(|(n, _)| n.clone())
    }
    fn has_session(&self, key: &VerifyingKey) -> bool {
        self.disk.sessions.contains(&key.to_bytes())
    }
}

fn route(nodes: &[Node], to: usize, in_history: bool) -> Route {
    Route {
        peer: nodes[to].peer,
        to: nodes[to].name.clone(),
        in_history,
    }
}

/// The address a node's discovery record names (only its index matters here).
fn address_of(node: usize) -> multiaddr::Multiaddr {
    let port = 4000 + u16::try_from(node).expect("few nodes");
    format!("/ip4/10.0.0.1/tcp/{port}")
        .parse()
        .expect("address")
}

fn persist(prekeys: &PrekeyState) -> (Vec<u8>, Option<u64>, bool, bool) {
    let secrets = palaver_protocol::codec::encode(&prekeys.secrets).expect("prekeys encode");
    (
        secrets,
        prekeys.signed_at_ms,
        prekeys.published,
        prekeys.upload_sent,
    )
}
