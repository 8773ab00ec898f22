//! A user logged in over a [`Client`] the way a node logs in. The node's session machine
//! ([`palaver_protocol::node::session::Session`]) decides everything: registering the name the
//! first time, the login, publishing prekeys, the request window, heartbeats. This only carries
//! its requests to the client and its answers back. The load generator's users are these, so
//! what it measures is what a node costs the server.
//!
//! The session moves only while one of its methods runs: a heartbeat that falls due between
//! calls goes out with the next one.

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use palaver_protocol::node::session::{Input, Output, PrekeyState, RequestKey, Session};
use palaver_protocol::wire::{Refusal, RendezvousRequest, RendezvousResponse};
use palaver_protocol::{Identity, UserName};
use rand_core::{OsRng, RngCore as _};

use super::{Client, ClientError};
use crate::clock::now_ms;

pub use palaver_protocol::node::session::SessionConfig;

/// A node's default heartbeat period.
pub const HEARTBEAT: Duration = Duration::from_secs(10);

/// Why a session could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("the rendezvous refused the login: {0}")]
    Refused(Refusal),
    #[error("{0}")]
    Failed(String),
}

type Answer = Result<RendezvousResponse, SessionError>;
type InFlight = BoxFuture<'static, (RequestKey, Result<RendezvousResponse, ClientError>)>;

/// A logged-in user (see the module documentation).
pub struct ClientSession {
    client: Client,
    session: Session<u64>,
    in_flight: FuturesUnordered<InFlight>,
    /// Answers to [`ClientSession::request`] calls, by call.
    answers: HashMap<u64, Answer>,
    next_call: u64,
    refused: Option<Refusal>,
}

impl std::fmt::Debug for ClientSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientSession")
            .field("logged_in", &self.session.is_logged_in())
            .field("in_flight", &self.in_flight.len())
            .finish_non_exhaustive()
    }
}

impl ClientSession {
    /// Logs `identity` in as `name` over `client` (registering the name if the server does not
    /// know it), and returns once the prekeys are published too. The session says it is online
    /// every [`HEARTBEAT`], as a node does.
    pub async fn log_in(
        client: Client,
        identity: &Identity,
        name: UserName,
        registration_token: Option<String>,
    ) -> Result<Self, SessionError> {
        Self::log_in_heartbeating_every(client, identity, name, registration_token, HEARTBEAT).await
    }

    /// [`ClientSession::log_in`], the session saying it is online every `heartbeat`. A caller
    /// that sets its presence by hand (a heartbeat through [`ClientSession::request`]) wants
    /// one longer than it runs: the session's own "online" would undo an "away" sent by hand.
    pub async fn log_in_heartbeating_every(
        client: Client,
        identity: &Identity,
        name: UserName,
        registration_token: Option<String>,
        heartbeat: Duration,
    ) -> Result<Self, SessionError> {
        let config = SessionConfig {
            name,
            registration_token,
            heartbeat_ms: u64::try_from(heartbeat.as_millis()).unwrap_or(u64::MAX),
            instance: OsRng.next_u64(),
        };
        let prekeys = PrekeyState::generate(&mut OsRng, identity.signing_key());
        let mut this = Self {
            client,
            session: Session::new(config, identity.signing_key().clone(), prekeys),
            in_flight: FuturesUnordered::new(),
            answers: HashMap::new(),
            next_call: 0,
            refused: None,
        };
        this.session.handle(Input::Connected, now_ms(), &mut OsRng);
        this.until_logged_in().await?;
        // What the login set off (the prekey upload) is answered before we say we are in.
        while !this.in_flight.is_empty() {
            this.carry_out();
            this.wait().await?;
        }
        this.carry_out();
        Ok(this)
    }

    /// Logs in again, as the session does after a reconnection.
    pub async fn log_in_again(&mut self) -> Result<(), SessionError> {
        let now = now_ms();
        self.session.handle(Input::Disconnected, now, &mut OsRng);
        self.session.handle(Input::Connected, now, &mut OsRng);
        self.until_logged_in().await
    }

    /// Sends `request` through the session's window, and waits for its answer.
    pub async fn request(&mut self, request: RendezvousRequest) -> Answer {
        self.next_call += 1;
        let call = self.next_call;
        self.session.request(request, call);
        loop {
            self.carry_out();
            if let Some(answer) = self.answers.remove(&call) {
                return answer;
            }
            self.wait().await?;
        }
    }

    /// Whether our prekeys are published.
    pub fn prekeys_published(&self) -> bool {
        self.session.prekeys().published
    }

    /// The client underneath, to read pushes from (the session stops here).
    pub fn into_client(self) -> Client {
        self.client
    }

    async fn until_logged_in(&mut self) -> Result<(), SessionError> {
        loop {
            self.carry_out();
            if let Some(refusal) = self.refused.take() {
                return Err(SessionError::Refused(refusal));
            }
            if self.session.is_logged_in() {
                return Ok(());
            }
            self.wait().await?;
        }
    }

    /// Does what the session asked.
    fn carry_out(&mut self) {
        while let Some(output) = self.session.poll_output() {
            match output {
                Output::Send { key, request } => {
                    let request = self.client.request_owned(request);
                    self.in_flight
                        .push(Box::pin(async move { (key, request.await) }));
                }
                // Our prekeys live in memory only: nothing to wait for.
                Output::PersistPrekeys { then_publish } => {
                    if then_publish {
                        let input = Input::PrekeysDurable { durable: true };
                        self.session.handle(input, now_ms(), &mut OsRng);
                    }
                }
                // The session knows whether it is logged in.
                Output::LoggedIn { .. } | Output::LoggedOut => {}
                Output::LoginRefused(refusal) | Output::Stop(refusal) => {
                    self.refused = Some(refusal)
                }
                Output::Answer { token, response } => {
                    self.answers.insert(token, Ok(response));
                }
                Output::Failed { token, error } => {
                    self.answers.insert(token, Err(SessionError::Failed(error)));
                }
                // Nobody keeps mail here: it is let go.
                Output::Mail { items, remaining } => {
                    let acks = items.iter().map(|item| item.envelope.id()).collect();
                    let input = Input::MailStored {
                        acks,
                        more: remaining > 0,
                    };
                    self.session.handle(input, now_ms(), &mut OsRng);
                }
                Output::Presence(_) | Output::Subscribed { .. } | Output::DevicesChanged(_) => {}
            }
        }
    }

    /// Waits for the next answer, or the session's next deadline.
    async fn wait(&mut self) -> Result<(), SessionError> {
        let deadline = self.session.poll_timeout();
        let sleep = deadline.map(|at| Duration::from_millis(at.saturating_sub(now_ms())));
        tokio::select! {
            Some((key, result)) = self.in_flight.next(), if !self.in_flight.is_empty() => {
                let input = match result {
                    Ok(response) => Input::Response { key, response },
                    Err(err) => Input::Failed { key, error: err.to_string() },
                };
                self.session.handle(input, now_ms(), &mut OsRng);
            }
            () = tokio::time::sleep(sleep.unwrap_or_default()), if sleep.is_some() => {
                self.session.handle_timeout(now_ms(), &mut OsRng);
            }
            else => return Err(SessionError::Failed("the session waits for nothing".into())),
        }
        Ok(())
    }
}
