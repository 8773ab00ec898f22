//! Whole-network simulation of the rendezvous path: several nodes' sessions
//! (`palaver_protocol::node::session`) and the rendezvous server's own decisions
//! (`palaver_rendezvous::sim::SimServer`, over a real store) on one simulated clock, over a seeded
//! network that delays, reorders and loses requests and answers, partitions nodes, crashes and
//! restarts them (state reloaded from what they persisted) and restarts the server.
//!
//! Every node writes to the others through the mailbox only (direct delivery is not simulated
//! yet): a message is on the sender's disk when sent, deposited until the server acknowledges it,
//! and fetched, stored and acknowledged by its recipient. After a chaotic phase the network heals;
//! then every node must be logged in, every sent message acknowledged and in its recipient's
//! history exactly once, nothing left in any mailbox, and no login refused. `PALAVER_SIM_SEEDS`
//! sets how many seeds run (200 by default); a failure names its seed.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashSet};

use palaver_protocol::crypto::ratchet::{Header, RatchetMessage};
use palaver_protocol::crypto::x3dh::PrekeySecrets;
use palaver_protocol::identity::peer_id_of;
use palaver_protocol::node::session::{
    Input, Output, PrekeyState, RequestKey, Session, SessionConfig,
};
use palaver_protocol::wire::{
    Body, DirectMessage, Envelope, MessageId, RendezvousRequest, RendezvousResponse, ServerPush,
};
use palaver_protocol::{PeerId, SigningKey, UserName};
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
/// How often a node tries its unacknowledged deposits again.
const RETRY_MS: u64 = 2_000;
const LOSS: f64 = 0.05;

#[test]
fn every_acknowledged_message_reaches_its_recipient_once_through_faults() {
    let seeds: u64 = std::env::var("PALAVER_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    for seed in 0..seeds {
        if let Err(failure) = Sim::new(seed).run() {
            panic!("seed {seed}: {failure}");
        }
    }
}

/// What a node asked the server for, when it wants the answer back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    Deposit(MessageId),
    FinalFetch,
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
}

/// What a node keeps on disk: survives its crashes.
#[derive(Debug, Default)]
struct Disk {
    prekeys: Option<(Vec<u8>, Option<u64>, bool, bool)>,
    history: BTreeSet<MessageId>,
    /// Sent, not yet acknowledged by the server: (recipient, envelope).
    outbox: BTreeMap<MessageId, (usize, Envelope)>,
}

#[derive(Debug)]
struct Node {
    key: SigningKey,
    peer: PeerId,
    name: UserName,
    disk: Disk,
    /// `None` while crashed.
    session: Option<Session<Token>>,
    /// Whether the network lets it reach the server (not partitioned).
    link_up: bool,
    /// The current connection's number; 0 while not connected.
    epoch: u64,
    in_flight: HashSet<RequestKey>,
    depositing: HashSet<MessageId>,
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
    /// Every message sent: id → recipient.
    sent: BTreeMap<MessageId, usize>,
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
                    session: None,
                    link_up: true,
                    epoch: 0,
                    in_flight: HashSet::new(),
                    depositing: HashSet::new(),
                    final_fetch: None,
                }
            })
            .collect();
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
            refusals: Vec::new(),
            loss: LOSS,
        };
        sim.open_server();
        for i in 0..NODES {
            sim.boot(i);
        }
        sim
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

    fn run(mut self) -> Result<(), String> {
        let start = self.now;
        self.schedule_chaos();
        self.at(1_000, Event::Tick);
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
            }
            Event::LinkUp(i) => {
                self.nodes[i].link_up = true;
                self.connect(i);
            }
            Event::Crash(i) => {
                self.disconnect(i);
                self.nodes[i].session = None;
                self.nodes[i].depositing.clear();
            }
            Event::Restart(i) => {
                if self.nodes[i].session.is_none() {
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
            }
            Event::ServerUp => {
                if self.server.is_none() {
                    self.open_server();
                    for i in 0..NODES {
                        self.connect(i);
                    }
                }
            }
            Event::Send { from, to } => self.send(from, to),
            Event::Tick => {
                for i in 0..NODES {
                    if let Some(session) = &mut self.nodes[i].session {
                        session.handle_timeout(self.now, &mut self.rng);
                    }
                    self.drive(i);
                    self.retry_deposits(i);
                }
                if let Some(server) = &mut self.server {
                    server.tick(self.now);
                    self.server_outputs();
                }
                self.at(RETRY_MS, Event::Tick);
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
        };
        node.session = Some(Session::new(config, node.key.clone(), prekeys));
        self.connect(i);
    }

    fn connect(&mut self, i: usize) {
        let node = &self.nodes[i];
        if node.epoch != 0 || !node.link_up || node.session.is_none() || self.server.is_none() {
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

    fn input(&mut self, i: usize, input: Input) {
        let Some(session) = &mut self.nodes[i].session else {
            return;
        };
        session.handle(input, self.now, &mut self.rng);
        self.drive(i);
    }

    /// Carries out node `i`'s session outputs, as the daemon's driver does.
    fn drive(&mut self, i: usize) {
        loop {
            let Some(output) = self.nodes[i]
                .session
                .as_mut()
                .and_then(Session::poll_output)
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
                    let session = self.nodes[i].session.as_ref().expect("running");
                    self.nodes[i].disk.prekeys = Some(persist(session.prekeys()));
                    if then_publish {
                        let session = self.nodes[i].session.as_mut().expect("running");
                        session.handle(Input::PrekeysDurable(Ok(())), self.now, &mut self.rng);
                    }
                }
                Output::LoggedIn { .. } => self.retry_deposits(i),
                Output::LoggedOut | Output::Presence(_) | Output::Subscribed(_) => {}
                Output::LoginRefused(refusal) => self
                    .refusals
                    .push(format!("{} refused: {refusal}", self.nodes[i].name)),
                Output::Answer { token, response } => self.on_answer(i, token, response),
                Output::Failed { token, .. } => {
                    if let Token::Deposit(id) = token {
                        self.nodes[i].depositing.remove(&id);
                    } else {
                        self.nodes[i].final_fetch = Some(Err("final fetch failed".into()));
                    }
                }
                Output::Mail { items, remaining } => {
                    let node = &mut self.nodes[i];
                    let acks: Vec<MessageId> = items.iter().map(|m| m.envelope.id()).collect();
                    // The node's durable dedup: an id already in history is not stored again.
                    node.disk.history.extend(acks.iter().copied());
                    let more = remaining > 0;
                    let session = node.session.as_mut().expect("running");
                    session.handle(Input::MailStored { acks, more }, self.now, &mut self.rng);
                }
            }
        }
    }

    fn on_answer(&mut self, i: usize, token: Token, response: RendezvousResponse) {
        match (token, response) {
            (Token::Deposit(id), RendezvousResponse::Deposited { id: stored }) if stored == id => {
                self.nodes[i].depositing.remove(&id);
                self.nodes[i].disk.outbox.remove(&id);
            }
            (Token::Deposit(id), _) => {
                self.nodes[i].depositing.remove(&id);
            }
            (Token::FinalFetch, RendezvousResponse::Mail { items, .. }) => {
                self.nodes[i].final_fetch = Some(Ok(items.len()));
            }
            (Token::FinalFetch, other) => {
                self.nodes[i].final_fetch = Some(Err(format!("final fetch: {other:?}")));
            }
        }
    }

    /// A user sends a message: on the sender's disk at once, deposited when it can be.
    fn send(&mut self, from: usize, to: usize) {
        if self.nodes[from].session.is_none() {
            return; // Nobody types into a crashed node.
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
        self.sent.insert(id, to);
        self.nodes[from].disk.outbox.insert(id, (to, envelope));
        self.retry_deposits(from);
    }

    fn retry_deposits(&mut self, i: usize) {
        let logged_in = self.nodes[i]
            .session
            .as_ref()
            .is_some_and(Session::is_logged_in);
        if !logged_in {
            return;
        }
        let due: Vec<(MessageId, usize, Envelope)> = self.nodes[i]
            .disk
            .outbox
            .iter()
            .filter(|(id, _)| !self.nodes[i].depositing.contains(id))
            .map(|(id, (to, envelope))| (*id, *to, envelope.clone()))
            .collect();
        for (id, to, envelope) in due {
            self.nodes[i].depositing.insert(id);
            let request = RendezvousRequest::Deposit {
                to: self.nodes[to].name.clone(),
                envelope: Box::new(envelope),
            };
            if let Some(session) = &mut self.nodes[i].session {
                session.request(request, Token::Deposit(id));
            }
            self.drive(i);
        }
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
    fn check(&mut self) -> Result<(), String> {
        if let Some(refusal) = self.refusals.first() {
            return Err(refusal.clone());
        }
        for i in 0..NODES {
            let node = &self.nodes[i];
            let Some(session) = &node.session else {
                return Err(format!("{} never restarted", node.name));
            };
            if !session.is_logged_in() {
                return Err(format!(
                    "{} is not logged in after the network healed",
                    node.name
                ));
            }
            if !node.disk.outbox.is_empty() {
                return Err(format!(
                    "{} still has {} unacknowledged messages",
                    node.name,
                    node.disk.outbox.len()
                ));
            }
        }
        for (id, to) in &self.sent {
            if !self.nodes[*to].disk.history.contains(id) {
                return Err(format!("{id:?} never reached {}", self.nodes[*to].name));
            }
        }
        for node in &self.nodes {
            if let Some(stray) = node
                .disk
                .history
                .iter()
                .find(|id| !self.sent.contains_key(id))
            {
                return Err(format!("{} holds {stray:?}, which nobody sent", node.name));
            }
        }
        // Nothing is left held: every delivered message was acknowledged and removed. (Asked
        // over a lossless network, so the answer always comes.)
        self.loss = 0.0;
        for i in 0..NODES {
            if let Some(session) = &mut self.nodes[i].session {
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
        Ok(())
    }
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
