//! A direct message before it is sealed: name → key → session, each fact asked for once.
//!
//! A send names its recipient by user name (a person's `send`) or by identity key (receipts,
//! room keys and membership, which answer a key). Before it can be sealed it needs the key (a
//! rendezvous lookup), the name (who-is: the mailbox is addressed by name) and a session (a
//! prekey bundle). [`SendPipeline`] holds each send, keyed by a call id, while those answers are
//! out, and decides what to ask next; what the node already knows it reads through [`Facts`]
//! (pinned contacts, sessions), so the pipeline itself keeps no copy of the store.
//!
//! A recipient that has logged in but not published prekeys yet (it does so right after its
//! login) is asked again every [`PREKEY_RETRY_MS`] until [`PREKEY_WAIT_MS`] have passed: a send
//! at that moment must not fail. Everything is bounded: [`MAX_PARKED`] sends waiting for an
//! answer, [`MAX_WAITING_FOR_PREKEYS`] of them for prekeys.

use std::collections::{BTreeSet, HashMap, VecDeque};

use ed25519_dalek::VerifyingKey;

use crate::UserName;
use crate::crypto::x3dh::PrekeyBundle;

/// How long a send waits for a recipient who has published no prekeys yet.
pub const PREKEY_WAIT_MS: u64 = 15_000;
/// How often it asks again meanwhile.
pub const PREKEY_RETRY_MS: u64 = 1_000;
/// Sends waiting for an answer at once; past that, a send fails at once.
pub const MAX_PARKED: usize = 1024;
/// Of those, sends waiting for prekeys.
pub const MAX_WAITING_FOR_PREKEYS: usize = 256;

/// A send's handle while it waits for answers.
pub type CallId = u64;

/// Whom a send is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recipient {
    Name(UserName),
    Key(VerifyingKey),
}

/// What the node knows already (its store), as the pipeline asks it.
pub trait Facts {
    /// Our own identity key.
    fn me(&self) -> VerifyingKey;
    /// Why sends to a user are refused, as the user should read it.
    type Refusal: std::fmt::Display;
    /// The key to seal for `name` if one is pinned, with a warning to give once (its key
    /// changed); `Err` if sends to `name` are refused (a verified contact's key changed, or
    /// the contact cannot be read).
    fn key_to_send(
        &mut self,
        name: &UserName,
    ) -> Result<Option<(VerifyingKey, Option<String>)>, Self::Refusal>;
    /// The name the holder of `key` goes by, if known.
    fn name_of(&self, key: &VerifyingKey) -> Option<UserName>;
    /// Whether a session with `key` exists.
    fn has_session(&self, key: &VerifyingKey) -> bool;
    /// Why the rendezvous cannot be asked now (`None`: it can); a send that needs to ask
    /// fails with this.
    fn unavailable(&self) -> Option<String>;
    /// The account key `name` is pinned under (ours for our own name), if known: a send to
    /// another of its keys is to one of its linked devices.
    fn account_of(&self, _name: &UserName) -> Option<VerifyingKey> {
        None
    }
    /// Whether `name` is our own account's.
    fn is_own(&self, _name: &UserName) -> bool {
        false
    }
}

/// How the rendezvous (or the node) answered what a send asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// A lookup or who-is was answered and what it said is in the [`Facts`] now.
    Learned,
    /// The rendezvous handed out the recipient's prekey bundle.
    Prekeys(Box<PrekeyBundle>),
    /// A session was started from a prekey bundle.
    SessionStarted,
    /// Not now: the recipient has published no prekeys yet, or the rendezvous asks us to slow
    /// down (its words). Asked again every [`PREKEY_RETRY_MS`] for [`PREKEY_WAIT_MS`].
    NoPrekeys(String),
    /// The request failed or was refused; the send fails with this.
    Failed(String),
}

/// What happened.
#[derive(Debug)]
pub enum Input<J> {
    /// A new send: `job` is the driver's (the text, the reply to give).
    Send { job: J, to: Recipient },
    /// The answer to what call `call` asked.
    Answered { call: CallId, answer: Answer },
}

/// What to do.
#[derive(Debug, PartialEq, Eq)]
pub enum Output<J> {
    /// Look `name` up at the rendezvous; answer with [`Answer::Learned`].
    Lookup { call: CallId, name: UserName },
    /// Ask the rendezvous who holds `key`; answer with [`Answer::Learned`].
    WhoIs { call: CallId, key: VerifyingKey },
    /// Fetch `name`'s prekeys (for `key`: the account key's, or with `device` those of one of
    /// its linked devices); answer with [`Answer::Prekeys`], or [`Answer::NoPrekeys`].
    FetchPrekeys {
        call: CallId,
        name: UserName,
        key: VerifyingKey,
        device: bool,
    },
    /// Start a session with `key` from `bundle` (it is `key`'s); answer with
    /// [`Answer::SessionStarted`] or [`Answer::Failed`].
    StartSession {
        call: CallId,
        key: VerifyingKey,
        bundle: Box<PrekeyBundle>,
    },
    /// The rendezvous handed out prekeys under another key for `name` than the one pinned:
    /// take `key` in as a key change (the trust rules decide what it means).
    KeyChanged { name: UserName, key: VerifyingKey },
    /// Everything is known: seal `job` for `key` (`name`) with the session, and send it.
    Seal {
        job: J,
        key: VerifyingKey,
        name: UserName,
        /// To give with the answer (the recipient's key changed).
        warning: Option<String>,
    },
    /// The send cannot go on.
    Fail { job: J, error: String },
}

/// A send waiting for an answer.
#[derive(Debug)]
struct Parked<J> {
    job: J,
    to: Recipient,
    warning: Option<String>,
    /// The prekey wait's end, from the first "no prekeys".
    prekeys_until: Option<u64>,
    /// Whose prekeys were asked for: a bundle must be for this key. `true`: a linked device's
    /// key, or a key of our own account (then a bundle under another key is no key change of a
    /// contact's, only a failed send).
    prekeys_for: Option<(VerifyingKey, UserName, bool)>,
    /// What it asked last (`None`: nothing yet): a fact still missing after its answer fails
    /// the send instead of being asked for again.
    asked: Option<Asked>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Asked {
    Lookup,
    WhoIs,
    Prekeys,
    /// Nothing out: it asks for prekeys again when its time in `retries` comes.
    WaitingForPrekeys,
}

/// The sends on their way to being sealed.
#[derive(Debug)]
pub struct SendPipeline<J> {
    parked: HashMap<CallId, Parked<J>>,
    /// (when, call) of sends waiting to ask for prekeys again.
    retries: BTreeSet<(u64, CallId)>,
    next_call: CallId,
    outputs: VecDeque<Output<J>>,
}

impl<J> Default for SendPipeline<J> {
    fn default() -> Self {
        Self {
            parked: HashMap::new(),
            retries: BTreeSet::new(),
            next_call: 0,
            outputs: VecDeque::new(),
        }
    }
}

impl<J> SendPipeline<J> {
    pub fn handle(&mut self, input: Input<J>, now_ms: u64, facts: &mut impl Facts) {
        match input {
            Input::Send { job, to } => {
                if self.parked.len() >= MAX_PARKED {
                    let error =
                        "too many messages wait for their recipients' keys; try again".to_owned();
                    return self.outputs.push_back(Output::Fail { job, error });
                }
                self.next_call += 1;
                let parked = Parked {
                    job,
                    to,
                    warning: None,
                    prekeys_until: None,
                    prekeys_for: None,
                    asked: None,
                };
                self.advance(self.next_call, parked, facts);
            }
            Input::Answered { call, answer } => {
                let Some(mut parked) = self.parked.remove(&call) else {
                    return;
                };
                if parked.asked == Some(Asked::WaitingForPrekeys) {
                    // It asks nothing now: a stray answer. It keeps waiting.
                    self.parked.insert(call, parked);
                    return;
                }
                match answer {
                    Answer::Learned | Answer::SessionStarted => self.advance(call, parked, facts),
                    Answer::Prekeys(bundle) => self.on_prekeys(call, parked, bundle),
                    Answer::NoPrekeys(reason) => {
                        let until = *parked.prekeys_until.get_or_insert(now_ms + PREKEY_WAIT_MS);
                        if now_ms >= until || self.retries.len() >= MAX_WAITING_FOR_PREKEYS {
                            return self.fail(parked, format!("cannot start a session: {reason}"));
                        }
                        let at = (now_ms + PREKEY_RETRY_MS).min(until);
                        parked.asked = Some(Asked::WaitingForPrekeys);
                        self.retries.insert((at, call));
                        self.parked.insert(call, parked);
                    }
                    Answer::Failed(error) => self.fail(parked, error),
                }
            }
        }
    }

    /// The next time a waiting send asks for prekeys again.
    pub fn poll_timeout(&self) -> Option<u64> {
        self.retries.first().map(|(at, _)| *at)
    }

    /// Sends whose wait is over ask again.
    pub fn handle_timeout(&mut self, now_ms: u64, facts: &mut impl Facts) {
        while let Some(&(at, call)) = self.retries.first() {
            if at > now_ms {
                break;
            }
            self.retries.remove(&(at, call));
            if let Some(parked) = self.parked.remove(&call) {
                self.advance(call, parked, facts);
            }
        }
    }

    pub fn poll_output(&mut self) -> Option<Output<J>> {
        self.outputs.pop_front()
    }

    /// Sends waiting for an answer.
    pub fn parked(&self) -> usize {
        self.parked.len()
    }

    /// A bundle for the key asked for starts the session; one under another key is that
    /// user's key change, and this send (sealed for the old key in the user's mind) fails.
    fn on_prekeys(&mut self, call: CallId, parked: Parked<J>, bundle: Box<PrekeyBundle>) {
        match &parked.prekeys_for {
            Some((key, _, _)) if bundle.identity == *key => {
                let key = *key;
                self.parked.insert(call, parked);
                let output = Output::StartSession { call, key, bundle };
                self.outputs.push_back(output);
            }
            Some((_, _, true)) => {
                let error = "the rendezvous handed out prekeys under another key than the \
                             device's";
                self.fail(parked, error.into());
            }
            Some((_, name, false)) => {
                let (name, key) = (name.clone(), bundle.identity);
                self.outputs.push_back(Output::KeyChanged { name, key });
                let error = "the recipient's key changed while the message was being sent; \
                             send it again";
                self.fail(parked, error.into());
            }
            None => self.fail(parked, "prekeys came that were not asked for".into()),
        }
    }

    fn fail(&mut self, parked: Parked<J>, error: String) {
        self.outputs.push_back(Output::Fail {
            job: parked.job,
            error,
        });
    }

    /// Asks for the first fact still missing, or hands the send on to be sealed. A fact still
    /// missing right after its own answer came is not there to be had: the send fails.
    fn advance(&mut self, call: CallId, mut parked: Parked<J>, facts: &mut impl Facts) {
        let just_asked = parked.asked;
        let (key, name) = match &parked.to {
            Recipient::Name(name) => match facts.key_to_send(name) {
                Err(refusal) => return self.fail(parked, refusal.to_string()),
                Ok(None) if just_asked == Some(Asked::Lookup) => {
                    let error = format!("unknown user {name} at this rendezvous");
                    return self.fail(parked, error);
                }
                Ok(None) => {
                    let name = name.clone();
                    let output = Output::Lookup { call, name };
                    return self.ask(call, parked, Asked::Lookup, output, facts);
                }
                Ok(Some((key, warning))) => {
                    parked.warning = parked.warning.take().or(warning);
                    (key, name.clone())
                }
            },
            Recipient::Key(key) => match facts.name_of(key) {
                Some(name) => (*key, name),
                None if just_asked == Some(Asked::WhoIs) => {
                    let error = "that key is not registered at this rendezvous".to_owned();
                    return self.fail(parked, error);
                }
                None => {
                    let key = *key;
                    let output = Output::WhoIs { call, key };
                    return self.ask(call, parked, Asked::WhoIs, output, facts);
                }
            },
        };
        if key == facts.me() {
            return self.fail(parked, "that is you".into());
        }
        if !facts.has_session(&key) {
            if just_asked == Some(Asked::Prekeys) {
                return self.fail(parked, "no session was started".into());
            }
            let device = facts
                .account_of(&name)
                .is_some_and(|account| account != key);
            let not_a_contact = device || facts.is_own(&name);
            parked.prekeys_for = Some((key, name.clone(), not_a_contact));
            let output = Output::FetchPrekeys {
                call,
                name,
                key,
                device,
            };
            return self.ask(call, parked, Asked::Prekeys, output, facts);
        }
        self.outputs.push_back(Output::Seal {
            job: parked.job,
            key,
            name,
            warning: parked.warning,
        });
    }

    /// Asks the rendezvous `output`'s question, or fails the send if it cannot be asked now.
    fn ask(
        &mut self,
        call: CallId,
        mut parked: Parked<J>,
        asked: Asked,
        output: Output<J>,
        facts: &impl Facts,
    ) {
        if let Some(reason) = facts.unavailable() {
            let what = match &output {
                Output::Lookup { name, .. } => format!("cannot look {name} up"),
                Output::WhoIs { .. } => "cannot look the recipient up".to_owned(),
                _ => "cannot open a session yet".to_owned(),
            };
            return self.fail(parked, format!("{what}: {reason}"));
        }
        parked.asked = Some(asked);
        self.parked.insert(call, parked);
        self.outputs.push_back(output);
    }
}

#[cfg(test)]
#[path = "pipeline_tests.rs"]
mod tests;
