//! The Double Ratchet (Signal's spec) over a session set up with X3DH.
//!
//! 1. Alice: [`Session::initiate`] against Bob's [`PrekeyBundle`]. Every [`RatchetMessage`] she
//!    sends carries her [`SessionInit`] until one of Bob's messages decrypts, so Bob can start the
//!    session from whichever of her messages reaches him first.
//! 2. Bob: [`Session::respond`] to the first message to arrive, then [`Session::decrypt`] the
//!    rest, including late copies of her earlier messages.
//! 3. Both: every turn of the conversation steps the DH ratchet. Receiving a new ratchet key
//!    derives a receiving chain and draws our next ratchet key, as the spec does; our next send
//!    steps with it to a new sending chain. Message keys are deleted once used (forward
//!    secrecy), and a stolen state stops decrypting once both sides have stepped with ratchet
//!    keys drawn after the theft (post-compromise security, the spec's bound).
//!
//! Two departures from the spec's pseudocode, neither visible on the wire:
//! - the step to our new sending chain is taken at our next send, not on receipt (the key it
//!   uses is drawn on receipt), so a second new ratchet key from the peer before we answer (its
//!   chain ran out) is still stepped against the key the peer knows;
//! - decryption is transactional: the new state is computed aside and committed only once the
//!   AEAD tag checks, so forged, replayed or corrupted messages change nothing.
//!
//! And one addition, also invisible on the wire: message numbers reserved ahead
//! ([`SendAhead`]), for the chain we send under and, on receipt, for the one our next turn will
//! start, so that a message may leave before the state that sealed it is on disk without a crash
//! ever making a message key encrypt twice.
//!
//! ```text
//! KDF_RK(rk, dh) = HKDF-SHA256(salt = rk, ikm = dh, info = "palaver/v1/ratchet") → rk' || ck
//! KDF_CK(ck)     = HMAC-SHA256(ck, 0x01) → message key,  HMAC-SHA256(ck, 0x02) → ck'
//! ENCRYPT(mk)    = ChaCha20-Poly1305 with key mk and a constant nonce (each mk encrypts once)
//! AD             = IK_initiator || IK_responder || dh || pn || n || (0 | 1 || SessionInit)
//! ```
//!
//! A session must not be copied and used twice: restoring an older saved state and encrypting
//! again would reuse message keys. Persist the session after every `encrypt`, and send only
//! once it is durable — or once a durable copy's [`SendAhead`] covers the message
//! ([`SendAhead::covers`]); a copy read back after a restart is [`Session::resume`]d before it
//! encrypts.

use std::collections::VecDeque;

use ed25519_dalek::{SigningKey, VerifyingKey};
use rand_core::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};
use x25519_dalek::{PublicKey, StaticSecret};

use super::CryptoError;
use super::primitives::{Chain, SecretKey, dh, hkdf, open, seal, split_keys};
use super::x3dh::{self, PrekeyBundle, PrekeySecrets, SessionInit};

/// The most message keys one message may make us skip in one chain (the spec's MAX_SKIP).
pub const MAX_SKIP: u32 = 1000;

/// The most skipped message keys a session keeps across all chains; the oldest go first.
pub const MAX_SKIPPED_KEYS: usize = 2000;

/// How many of the peer's past ratchet keys we remember, so a replay from an old chain is
/// reported as [`CryptoError::DuplicateMessage`] rather than attempted as a new ratchet step.
const MAX_RETIRED_RATCHET_KEYS: usize = 32;

const RATCHET_INFO: &[u8] = b"palaver/v1/ratchet";

/// How many message numbers of a sending chain are reserved at a time ([`SendAhead`]); a
/// reservation is renewed once fewer than half of it are left, so a durable copy keeps covering
/// the next messages while the one renewing it is written. A crash costs the peer at most this
/// many skipped keys.
pub const SEND_AHEAD: u32 = 32;

/// The cleartext part of a ratchet message. It is authenticated as associated data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// The sender's current ratchet public key.
    pub dh: PublicKey,
    /// How many messages the sender sent in its previous sending chain ("PN").
    pub previous_chain_len: u32,
    /// This message's index in the current sending chain ("N").
    pub index: u32,
}

impl Header {
    fn encode(&self) -> [u8; 40] {
        let mut out = [0; 40];
        out[..32].copy_from_slice(self.dh.as_bytes());
        out[32..36].copy_from_slice(&self.previous_chain_len.to_be_bytes());
        out[36..].copy_from_slice(&self.index.to_be_bytes());
        out
    }
}

/// One encrypted message of a pairwise session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RatchetMessage {
    /// Attached by the initiator to every message until it has received a reply, so that losing
    /// the first message does not lose the session.
    pub init: Option<SessionInit>,
    pub header: Header,
    #[serde(with = "serde_bytes")]
    pub ciphertext: Vec<u8>,
}

/// One side of a pairwise Double Ratchet session. Serialize it to persist it; its secrets are
/// wiped when it is dropped.
#[derive(Serialize, Deserialize)]
pub struct Session {
    our_identity: VerifyingKey,
    their_identity: VerifyingKey,
    role: Role,
    root_key: SecretKey,
    our_ratchet_key: StaticSecret,
    our_ratchet_public: PublicKey,
    /// The peer's latest ratchet key: our next sending chain is derived against it.
    their_ratchet_key: PublicKey,
    /// `None` when our next message starts a new DH ratchet step.
    sending: Option<Chain>,
    /// The chain of messages under `their_ratchet_key`; `None` until they have sent under it.
    receiving: Option<Chain>,
    /// Length of our previous sending chain, announced in our headers as `previous_chain_len`.
    previous_sending_len: u32,
    /// Keys of messages that were skipped over, oldest first.
    skipped: VecDeque<SkippedKey>,
    retired_ratchet_keys: VecDeque<PublicKey>,
    /// The message numbers of our sending chain this state reserves (see [`SendAhead`]): of
    /// the current one, or, while it is our turn to answer, of the one `next_ratchet_key` starts.
    ahead: Option<SendAhead>,
    /// The ratchet key our next step takes, drawn when the peer's new ratchet key arrived (so a
    /// reservation can name the chain before it exists). `None` until then; a step without one
    /// draws its own.
    next_ratchet_key: Option<StaticSecret>,
}

/// Message numbers reserved ahead: every message of the sending chain between our ratchet key
/// `ours` and their `theirs` numbered below `until` may be on the wire, even if the state that
/// sealed it never reached the disk. A session read back from disk after a crash skips past
/// them ([`Session::resume`]), so a number, and the message key under it, is never used twice;
/// the peer sees a gap of at most [`SEND_AHEAD`] and keeps the keys it skips.
///
/// So a message may leave before its state is durable exactly when a copy of the session
/// that is already durable holds a reservation covering it ([`SendAhead::covers`]). Which copy is
/// durable only the caller knows: it takes [`Session::send_ahead`] after writing the session and
/// keeps it once that write is flushed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendAhead {
    ours: PublicKey,
    theirs: PublicKey,
    until: u32,
}

impl SendAhead {
    /// Whether this reservation covers the message at `place`.
    pub fn covers(&self, place: &ChainPlace) -> bool {
        self.ours == place.ours && self.theirs == place.theirs && place.index < self.until
    }
}

/// Where a message we encrypted sits: its sending chain (our ratchet key and theirs) and its
/// number in it ([`Session::place_of`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainPlace {
    ours: PublicKey,
    theirs: PublicKey,
    index: u32,
}

/// A session as stored before [`SendAhead`] (the same fields but the last), read back once.
#[derive(Deserialize)]
pub(crate) struct LegacySession {
    our_identity: VerifyingKey,
    their_identity: VerifyingKey,
    role: Role,
    root_key: SecretKey,
    our_ratchet_key: StaticSecret,
    our_ratchet_public: PublicKey,
    their_ratchet_key: PublicKey,
    sending: Option<Chain>,
    receiving: Option<Chain>,
    previous_sending_len: u32,
    skipped: VecDeque<SkippedKey>,
    retired_ratchet_keys: VecDeque<PublicKey>,
}

impl From<LegacySession> for Session {
    /// Nothing was sent ahead under the old layout, so nothing is reserved.
    fn from(old: LegacySession) -> Self {
        Session {
            our_identity: old.our_identity,
            their_identity: old.their_identity,
            role: old.role,
            root_key: old.root_key,
            our_ratchet_key: old.our_ratchet_key,
            our_ratchet_public: old.our_ratchet_public,
            their_ratchet_key: old.their_ratchet_key,
            sending: old.sending,
            receiving: old.receiving,
            previous_sending_len: old.previous_sending_len,
            skipped: old.skipped,
            retired_ratchet_keys: old.retired_ratchet_keys,
            ahead: None,
            next_ratchet_key: None,
        }
    }
}

#[derive(Serialize, Deserialize)]
enum Role {
    /// We ran X3DH against their bundle; `unacknowledged` rides on our messages until they reply.
    Initiator { unacknowledged: Option<SessionInit> },
    /// We answered this initiation; retransmissions that carry it belong to this session.
    Responder { accepted: SessionInit },
}

#[derive(Serialize, Deserialize)]
struct SkippedKey {
    ratchet_key: PublicKey,
    index: u32,
    message_key: SecretKey,
}

/// The state a received message would move the session to, computed without touching the
/// session so that a message that fails to authenticate leaves it exactly as it was.
struct Receive {
    message_key: SecretKey,
    receiving: Chain,
    skipped: Vec<SkippedKey>,
    /// Set when the message carries a new ratchet key: the root key after the step.
    step: Option<(SecretKey, PublicKey)>,
}

/// A new sending ratchet key and what it derives, likewise computed before committing.
struct SendingStep {
    root_key: SecretKey,
    our_ratchet_key: StaticSecret,
    our_ratchet_public: PublicKey,
    previous_chain_len: u32,
}

impl Session {
    /// Starts a session with the owner of `bundle` (after verifying its signature). The returned
    /// session can encrypt at once; its messages carry the X3DH initiation until a reply arrives.
    pub fn initiate(
        rng: &mut (impl CryptoRng + RngCore),
        ours: &SigningKey,
        bundle: &PrekeyBundle,
    ) -> Result<Session, CryptoError> {
        let (shared_secret, init) = x3dh::initiate(rng, ours, bundle)?;
        // Bob's signed prekey doubles as his first ratchet key, so Alice can step at once.
        let our_ratchet_key = StaticSecret::random_from_rng(&mut *rng);
        let (root_key, sending) = kdf_rk(
            &shared_secret,
            &*dh(&our_ratchet_key, &bundle.signed_prekey.key)?,
        );
        Ok(Session {
            our_identity: ours.verifying_key(),
            their_identity: bundle.identity,
            role: Role::Initiator {
                unacknowledged: Some(init),
            },
            root_key,
            our_ratchet_public: PublicKey::from(&our_ratchet_key),
            our_ratchet_key,
            their_ratchet_key: bundle.signed_prekey.key,
            sending: Some(sending),
            receiving: None,
            previous_sending_len: 0,
            skipped: VecDeque::new(),
            retired_ratchet_keys: VecDeque::new(),
            ahead: None,
            next_ratchet_key: None,
        })
    }

    /// Answers an initiation from `their_identity` (authenticated by the caller, e.g. from the
    /// signed envelope): derives the session and decrypts `first`. Only once `first` decrypts is
    /// the one-time prekey it names deleted, so a second initiation with it fails with
    /// [`CryptoError::MissingPrekey`] and a forged one consumes nothing.
    ///
    /// If a session with this peer already exists, try its [`Session::decrypt`] first: a late
    /// copy of an initial message belongs there, and [`CryptoError::SessionMismatch`] means the
    /// peer has started a new session, which is what `respond` is for.
    pub fn respond(
        rng: &mut (impl CryptoRng + RngCore),
        ours: &SigningKey,
        prekeys: &mut PrekeySecrets,
        their_identity: &VerifyingKey,
        first: &RatchetMessage,
    ) -> Result<(Session, Vec<u8>), CryptoError> {
        let init = first.init.ok_or(CryptoError::MissingSessionInit)?;
        let (root_key, signed_prekey) = x3dh::respond(ours, prekeys, their_identity, &init)?;
        let mut session = Session {
            our_identity: ours.verifying_key(),
            their_identity: *their_identity,
            role: Role::Responder { accepted: init },
            root_key,
            our_ratchet_public: PublicKey::from(&signed_prekey),
            our_ratchet_key: signed_prekey,
            their_ratchet_key: first.header.dh,
            sending: None,
            receiving: None,
            previous_sending_len: 0,
            skipped: VecDeque::new(),
            retired_ratchet_keys: VecDeque::new(),
            ahead: None,
            next_ratchet_key: None,
        };
        let plaintext = session.decrypt(rng, first)?;
        if let Some(id) = init.one_time_prekey_id {
            prekeys.consume_one_time(id);
        }
        Ok((session, plaintext))
    }

    /// The peer's identity key.
    pub fn their_identity(&self) -> &VerifyingKey {
        &self.their_identity
    }

    /// Encrypts the next message. The first message of each of our turns steps the DH ratchet.
    /// Fails only for plaintexts over ChaCha20-Poly1305's 256 GiB limit, changing nothing.
    pub fn encrypt(
        &mut self,
        rng: &mut (impl CryptoRng + RngCore),
        plaintext: &[u8],
    ) -> Result<RatchetMessage, CryptoError> {
        // A full chain (2^32 - 1 messages without a reply) also takes a step.
        let (step, mut sending) = match self.sending.as_ref().filter(|chain| !chain.is_exhausted())
        {
            Some(chain) => (None, chain.clone()),
            None => {
                let our_ratchet_key = (self.next_ratchet_key.clone())
                    .unwrap_or_else(|| StaticSecret::random_from_rng(&mut *rng));
                let (step, chain) = self.sending_step(our_ratchet_key)?;
                (Some(step), chain)
            }
        };
        let (index, message_key) = sending.next_message_key()?;
        let header = Header {
            dh: step
                .as_ref()
                .map_or(self.our_ratchet_public, |step| step.our_ratchet_public),
            previous_chain_len: step
                .as_ref()
                .map_or(self.previous_sending_len, |step| step.previous_chain_len),
            index,
        };
        let init = self.role.unacknowledged_init();
        let ciphertext = seal(
            &message_key,
            &self.associated_data(&header, init.as_ref()),
            plaintext,
        )?;

        if let Some(step) = step {
            self.take_step(step);
        }
        self.sending = Some(sending);
        self.reserve_after(index);
        Ok(RatchetMessage {
            init,
            header,
            ciphertext,
        })
    }

    /// Where `header`, of the message [`Session::encrypt`] just returned, sits in our sending
    /// chain: what a reservation must cover for the message to leave before it is durable.
    pub fn place_of(&self, header: &Header) -> ChainPlace {
        ChainPlace {
            ours: header.dh,
            theirs: self.their_ratchet_key,
            index: header.index,
        }
    }

    /// The message numbers this state reserves: once it is durable, what it covers may leave
    /// before its own state is.
    pub fn send_ahead(&self) -> Option<SendAhead> {
        self.ahead
    }

    /// Makes a session read back from disk safe to encrypt with: its sending chain skips past
    /// every number its reservation covers, since messages under them may have left without the
    /// state that sealed them reaching the disk. Whether anything changed (then store it again).
    /// Harmless on a session that lost nothing: the peer sees a gap of at most [`SEND_AHEAD`].
    pub fn resume(&mut self) -> bool {
        let Some(ahead) = self
            .ahead
            .filter(|ahead| ahead.theirs == self.their_ratchet_key)
        else {
            return false;
        };
        let chain = match (&self.sending, &self.next_ratchet_key) {
            (Some(chain), _) if ahead.ours == self.our_ratchet_public => {
                if chain.index() >= ahead.until {
                    return false;
                }
                chain.clone()
            }
            // Our turn was reserved on receipt, so it may have begun: its step is taken now, with
            // the key it took then, against the same state, to the same chain. (A peer whose own
            // chain ran out, 2^32 - 1 messages without a reply, and stepped again before we sent
            // would find this step one it never saw: not a case to design for.)
            (None, Some(next)) if ahead.ours == PublicKey::from(next) => {
                let Ok((step, chain)) = self.sending_step(next.clone()) else {
                    // The next send fails the same way: nothing is ever encrypted under it.
                    return false;
                };
                self.take_step(step);
                chain
            }
            _ => return false,
        };
        // The chain is only stepped: no more than SEND_AHEAD keys derived and dropped. Past its
        // last key (it cannot be: the number is a u32 like `until`) the next send steps afresh.
        self.sending = chain
            .skip_to(ahead.until, u32::MAX)
            .ok()
            .map(|(chain, _)| chain);
        true
    }

    /// Keeps the reservation ahead of message `index` just sealed in our sending chain: renewed
    /// for the next [`SEND_AHEAD`] numbers once fewer than half are left (or for a new chain).
    fn reserve_after(&mut self, index: u32) {
        let (ours, theirs) = (self.our_ratchet_public, self.their_ratchet_key);
        let next = index.saturating_add(1);
        let enough = self.ahead.is_some_and(|ahead| {
            ahead.ours == ours
                && ahead.theirs == theirs
                && ahead.until.saturating_sub(next) >= SEND_AHEAD / 2
        });
        if !enough {
            self.ahead = Some(SendAhead {
                ours,
                theirs,
                until: next.saturating_add(SEND_AHEAD),
            });
        }
    }

    /// Decrypts a message from the peer. Out-of-order messages within [`MAX_SKIP`] decrypt;
    /// replays fail with [`CryptoError::DuplicateMessage`]. Any error leaves the session unchanged.
    pub fn decrypt(
        &mut self,
        rng: &mut (impl CryptoRng + RngCore),
        message: &RatchetMessage,
    ) -> Result<Vec<u8>, CryptoError> {
        self.check_init(message.init.as_ref())?;
        let header = &message.header;
        let ad = self.associated_data(header, message.init.as_ref());

        if let Some(position) = self
            .skipped
            .iter()
            .position(|skipped| skipped.ratchet_key == header.dh && skipped.index == header.index)
        {
            let plaintext = open(
                &self.skipped[position].message_key,
                &ad,
                &message.ciphertext,
            )?;
            // Deleting the key is what makes a replay of this message fail.
            self.skipped.remove(position);
            self.acknowledge();
            return Ok(plaintext);
        }

        let receive = self.plan_receive(header)?;
        let plaintext = open(&receive.message_key, &ad, &message.ciphertext)?;
        // Drawn only now that the message is known to be genuine.
        let next_ratchet_key = receive
            .step
            .is_some()
            .then(|| StaticSecret::random_from_rng(&mut *rng));
        self.commit(receive, next_ratchet_key);
        Ok(plaintext)
    }

    fn plan_receive(&self, header: &Header) -> Result<Receive, CryptoError> {
        if let Some(chain) = self
            .receiving
            .as_ref()
            .filter(|_| header.dh == self.their_ratchet_key)
        {
            if header.index < chain.index() {
                // Behind the chain and not among the skipped keys: already decrypted.
                return Err(CryptoError::DuplicateMessage);
            }
            let advanced = chain.advance_to(header.index, MAX_SKIP)?;
            return Ok(Receive {
                message_key: advanced.message_key,
                receiving: advanced.chain,
                skipped: tag_skipped(header.dh, advanced.skipped),
                step: None,
            });
        }
        if self.retired_ratchet_keys.contains(&header.dh) {
            return Err(CryptoError::DuplicateMessage);
        }

        // A new ratchet key. First collect the keys of the current receiving chain's stragglers
        // (the peer says it sent `previous_chain_len` there), then step the root chain.
        let mut skipped = Vec::new();
        if let Some(chain) = &self.receiving {
            let (_, stragglers) = chain.skip_to(header.previous_chain_len, MAX_SKIP)?;
            skipped = tag_skipped(self.their_ratchet_key, stragglers);
        }
        let (root_key, receiving) =
            kdf_rk(&self.root_key, &*dh(&self.our_ratchet_key, &header.dh)?);
        let advanced = receiving.advance_to(header.index, MAX_SKIP)?;
        skipped.extend(tag_skipped(header.dh, advanced.skipped));
        Ok(Receive {
            message_key: advanced.message_key,
            receiving: advanced.chain,
            skipped,
            step: Some((root_key, header.dh)),
        })
    }

    /// `next_ratchet_key` is drawn for a message that steps (a new ratchet key of theirs).
    fn commit(&mut self, receive: Receive, next_ratchet_key: Option<StaticSecret>) {
        if let Some((root_key, their_ratchet_key)) = receive.step {
            if self.receiving.is_some() {
                self.retired_ratchet_keys.push_back(self.their_ratchet_key);
                if self.retired_ratchet_keys.len() > MAX_RETIRED_RATCHET_KEYS {
                    self.retired_ratchet_keys.pop_front();
                }
            }
            self.root_key = root_key;
            self.their_ratchet_key = their_ratchet_key;
            // It is our turn now: our next message answers with a fresh ratchet key, whose
            // chain's first numbers are reserved now (and so durable with this message).
            if let Some(sending) = self.sending.take() {
                self.previous_sending_len = sending.index();
            }
            if let Some(next) = next_ratchet_key {
                self.ahead = Some(SendAhead {
                    ours: PublicKey::from(&next),
                    theirs: their_ratchet_key,
                    until: SEND_AHEAD,
                });
                self.next_ratchet_key = Some(next);
            }
        }
        self.receiving = Some(receive.receiving);
        self.skipped.extend(receive.skipped);
        while self.skipped.len() > MAX_SKIPPED_KEYS {
            self.skipped.pop_front();
        }
        self.acknowledge();
    }

    /// Our DH step to a new sending chain with `our_ratchet_key`, computed aside.
    fn sending_step(
        &self,
        our_ratchet_key: StaticSecret,
    ) -> Result<(SendingStep, Chain), CryptoError> {
        let (root_key, chain) = kdf_rk(
            &self.root_key,
            &*dh(&our_ratchet_key, &self.their_ratchet_key)?,
        );
        // Normally the chain being replaced was closed, and its length recorded, when their new
        // ratchet key arrived; a full chain being replaced is still open.
        let previous_chain_len = self
            .sending
            .as_ref()
            .map_or(self.previous_sending_len, Chain::index);
        let step = SendingStep {
            root_key,
            our_ratchet_public: PublicKey::from(&our_ratchet_key),
            our_ratchet_key,
            previous_chain_len,
        };
        Ok((step, chain))
    }

    /// Commits a [`Session::sending_step`] (its chain is the caller's to install).
    fn take_step(&mut self, step: SendingStep) {
        self.root_key = step.root_key;
        self.our_ratchet_key = step.our_ratchet_key;
        self.our_ratchet_public = step.our_ratchet_public;
        self.previous_sending_len = step.previous_chain_len;
        self.next_ratchet_key = None;
    }

    fn check_init(&self, init: Option<&SessionInit>) -> Result<(), CryptoError> {
        match (init, &self.role) {
            (None, _) => Ok(()),
            (Some(init), Role::Responder { accepted }) if init == accepted => Ok(()),
            // An initiation we did not answer: the peer has started another session.
            (Some(_), _) => Err(CryptoError::SessionMismatch),
        }
    }

    /// Anything decrypting proves the peer has our session, so the initiation can stop riding along.
    fn acknowledge(&mut self) {
        if let Role::Initiator { unacknowledged } = &mut self.role {
            *unacknowledged = None;
        }
    }

    fn associated_data(&self, header: &Header, init: Option<&SessionInit>) -> Vec<u8> {
        let (initiator, responder) = match self.role {
            Role::Initiator { .. } => (&self.our_identity, &self.their_identity),
            Role::Responder { .. } => (&self.their_identity, &self.our_identity),
        };
        let mut ad = Vec::with_capacity(32 + 32 + 40 + 1 + 41);
        ad.extend_from_slice(initiator.as_bytes());
        ad.extend_from_slice(responder.as_bytes());
        ad.extend_from_slice(&header.encode());
        match init {
            None => ad.push(0),
            Some(init) => {
                ad.push(1);
                ad.extend_from_slice(&init.encode());
            }
        }
        ad
    }
}

impl Role {
    fn unacknowledged_init(&self) -> Option<SessionInit> {
        match self {
            Role::Initiator { unacknowledged } => *unacknowledged,
            Role::Responder { .. } => None,
        }
    }
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("their_identity", &self.their_identity)
            .field("initiator", &matches!(self.role, Role::Initiator { .. }))
            .field("sending_index", &self.sending.as_ref().map(Chain::index))
            .field(
                "receiving_index",
                &self.receiving.as_ref().map(Chain::index),
            )
            .field("skipped_keys", &self.skipped.len())
            .finish_non_exhaustive()
    }
}

fn kdf_rk(root_key: &SecretKey, dh_output: &[u8; 32]) -> (SecretKey, Chain) {
    let (root_key, chain_key) =
        split_keys(&hkdf::<64>(root_key.as_bytes(), dh_output, RATCHET_INFO));
    (root_key, Chain::new(chain_key))
}

fn tag_skipped(ratchet_key: PublicKey, keys: Vec<(u32, SecretKey)>) -> Vec<SkippedKey> {
    keys.into_iter()
        .map(|(index, message_key)| SkippedKey {
            ratchet_key,
            index,
            message_key,
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    use super::*;

    #[test]
    fn a_full_sending_chain_is_replaced_by_a_fresh_dh_step() {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let alice_identity = SigningKey::generate(&mut rng);
        let bob_identity = SigningKey::generate(&mut rng);
        let mut prekeys = PrekeySecrets::generate(&mut rng, &bob_identity, 1);
        let upload = prekeys.upload();
        let bundle = PrekeyBundle {
            identity: upload.identity,
            signed_prekey: upload.signed_prekey,
            one_time_prekey: upload.one_time_prekeys.first().copied(),
        };
        let mut alice = Session::initiate(&mut rng, &alice_identity, &bundle).unwrap();
        let first = alice.encrypt(&mut rng, b"first").unwrap();
        let (mut bob, _) = Session::respond(
            &mut rng,
            &bob_identity,
            &mut prekeys,
            &alice_identity.verifying_key(),
            &first,
        )
        .unwrap();

        // Fast-forward both ends of Alice's sending chain to its last usable index.
        let near_end = || Chain::starting_at(SecretKey::from_bytes(&[7; 32]), u32::MAX - 1);
        alice.sending = Some(near_end());
        bob.receiving = Some(near_end());
        let last = alice.encrypt(&mut rng, b"last of the chain").unwrap();
        assert_eq!(last.header.index, u32::MAX - 1);
        assert_eq!(bob.decrypt(&mut rng, &last).unwrap(), b"last of the chain");

        let next = alice.encrypt(&mut rng, b"fresh chain").unwrap();
        assert_ne!(next.header.dh, last.header.dh);
        assert_eq!(
            (next.header.index, next.header.previous_chain_len),
            (0, u32::MAX)
        );
        assert_eq!(bob.decrypt(&mut rng, &next).unwrap(), b"fresh chain");
    }
}
