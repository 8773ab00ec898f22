//! The control socket: JSON-RPC 2.0, one JSON object per line, over `<home>/palaver.sock`.
//!
//! Every CLI command but `init`, `whoami`, `daemon` and (daemon-less) `history` is a client of it.
//! A connection sends requests and reads responses in order; `subscribe` turns the connection into
//! a stream of `event` notifications (what `palaver listen --json` prints, one per line).
//!
//! The server side hands each request to the daemon's actor as a [`Call`] over a bounded channel
//! and writes back whatever the actor answers; it never touches daemon state itself.

pub mod command;
pub mod event;
pub mod methods;

pub use command::Command;
pub use event::Event;

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{broadcast, mpsc, oneshot};

/// The longest request line accepted (a message text is at most 64 KiB).
const MAX_LINE: usize = 256 * 1024;
/// Events ready at once go to a subscriber in one write, up to about this many bytes.
const EVENTS_A_WRITE: usize = 64 * 1024;

/// How long a client waits for an answer before it says the daemon is stuck. Every method answers
/// in well under a second unless the daemon cannot write to its disk.
const ANSWER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// A method call for the daemon's actor, with where to send the answer.
#[derive(Debug)]
pub struct Call {
    pub command: Command,
    pub reply: Reply,
}

/// Where the daemon sends a call's answer.
pub type Reply = oneshot::Sender<Result<Value, RpcError>>;

/// An error answer: JSON-RPC code and a one-line message for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct RpcError {
    pub code: i64,
    pub message: String,
}

impl RpcError {
    pub const INVALID_PARAMS: i64 = -32602;
    pub const METHOD_NOT_FOUND: i64 = -32601;
    /// The request was understood but could not be carried out (unknown user, no such room, …).
    pub const FAILED: i64 = 1;

    pub fn failed(message: impl Into<String>) -> Self {
        Self {
            code: Self::FAILED,
            message: message.into(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self {
            code: Self::INVALID_PARAMS,
            message: message.into(),
        }
    }
}

#[derive(Debug, Deserialize)]
struct Request {
    #[serde(default)]
    id: Value,
    method: String,
    #[serde(default)]
    params: Value,
}

/// Serves the control socket (bound with [`bind`]) until the task is dropped.
pub async fn serve(
    listener: UnixListener,
    calls: mpsc::Sender<Call>,
    events: broadcast::Sender<Event>,
) -> std::io::Result<()> {
    loop {
        let (stream, _) = listener.accept().await?;
        let calls = calls.clone();
        let events = events.clone();
        tokio::spawn(async move {
            if let Err(err) = serve_connection(stream, calls, events).await {
                tracing::debug!("control connection ended: {err}");
            }
        });
    }
}

/// Binds the socket, mode 0600 (the directory is 0700 too): only this user may drive the daemon.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    if path.exists() {
        // A live daemon answers; a dead one left its socket behind.
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("a daemon is already running on {}", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

async fn serve_connection(
    stream: UnixStream,
    calls: mpsc::Sender<Call>,
    events: broadcast::Sender<Event>,
) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read);
    let mut line = String::new();
    loop {
        line.clear();
        let n = (&mut lines)
            .take(MAX_LINE as u64 + 1)
            .read_line(&mut line)
            .await?;
        if n == 0 {
            return Ok(());
        }
        if n > MAX_LINE {
            let answer = error_response(Value::Null, RpcError::invalid("request line too long"));
            write_line(&mut write, &answer).await?;
            return Ok(());
        }
        let request: Request = match serde_json::from_str(&line) {
            Ok(request) => request,
            Err(err) => {
                let answer = error_response(
                    Value::Null,
                    RpcError {
                        code: -32700,
                        message: err.to_string(),
                    },
                );
                write_line(&mut write, &answer).await?;
                continue;
            }
        };
        if request.method == "subscribe" {
            let mut events = events.subscribe();
            write_line(
                &mut write,
                &json!({"jsonrpc": "2.0", "id": request.id, "result": true}),
            )
            .await?;
            // Every event ready by then goes in the same write (up to EVENTS_A_WRITE bytes).
            let mut bytes = Vec::new();
            loop {
                let first = events.recv().await.map_err(|err| match err {
                    broadcast::error::RecvError::Lagged(missed) => {
                        broadcast::error::TryRecvError::Lagged(missed)
                    }
                    broadcast::error::RecvError::Closed => broadcast::error::TryRecvError::Closed,
                });
                let mut next = Some(first);
                while let Some(received) = next.take() {
                    let event = match received {
                        Ok(event) => event.to_json(),
                        Err(broadcast::error::TryRecvError::Lagged(missed)) => {
                            Event::Lagged { missed }.to_json()
                        }
                        Err(broadcast::error::TryRecvError::Empty) => break,
                        Err(broadcast::error::TryRecvError::Closed) => {
                            write.write_all(&bytes).await?;
                            return Ok(());
                        }
                    };
                    let note = json!({"jsonrpc": "2.0", "method": "event", "params": event});
                    serde_json::to_writer(&mut bytes, &note).unwrap_or_default();
                    bytes.push(b'\n');
                    if bytes.len() < EVENTS_A_WRITE {
                        next = Some(events.try_recv());
                    }
                }
                write.write_all(&bytes).await?;
                bytes.clear();
            }
        }
        let result = match Command::parse(&request.method, &request.params) {
            Ok(command) => {
                let (reply, answer) = oneshot::channel();
                match calls.send(Call { command, reply }).await {
                    Ok(()) => answer
                        .await
                        .unwrap_or_else(|_| Err(RpcError::failed("the daemon is shutting down"))),
                    Err(_) => Err(RpcError::failed("the daemon is shutting down")),
                }
            }
            Err(err) => Err(err),
        };
        let response = match result {
            Ok(result) => json!({"jsonrpc": "2.0", "id": request.id, "result": result}),
            Err(err) => error_response(request.id, err),
        };
        write_line(&mut write, &response).await?;
    }
}

fn error_response(id: Value, err: RpcError) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": err.code, "message": err.message}})
}

async fn write_line(
    write: &mut (impl AsyncWriteExt + Unpin),
    value: &Value,
) -> std::io::Result<()> {
    let mut bytes = serde_json::to_vec(value).unwrap_or_default();
    bytes.push(b'\n');
    write.write_all(&bytes).await
}

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "the daemon is not running (no control socket at {0}); start it with `palaver daemon --rendezvous ADDR`"
    )]
    NotRunning(String),
    #[error("control socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("control socket: bad answer: {0}")]
    Protocol(String),
    #[error(
        "the daemon did not answer `{0}` within {secs} s; it may be stuck (see its log)",
        secs = ANSWER_TIMEOUT.as_secs()
    )]
    Unresponsive(String),
    /// The daemon's own answer, shown exactly as it gave it.
    #[error(transparent)]
    Rpc(#[from] RpcError),
}

/// A client of the control socket.
#[derive(Debug)]
pub struct Client {
    lines: tokio::io::Lines<BufReader<tokio::net::unix::OwnedReadHalf>>,
    write: tokio::net::unix::OwnedWriteHalf,
    next_id: u64,
}

impl Client {
    pub async fn connect(path: &Path) -> Result<Self, ClientError> {
        let stream = UnixStream::connect(path)
            .await
            .map_err(|err| match err.kind() {
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                    ClientError::NotRunning(path.display().to_string())
                }
                _ => ClientError::Io(err),
            })?;
        let (read, write) = stream.into_split();
        Ok(Self {
            lines: BufReader::new(read).lines(),
            write,
            next_id: 1,
        })
    }

    /// Calls `method` and waits for its answer.
    pub async fn call(&mut self, method: &str, params: Value) -> Result<Value, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        write_line(
            &mut self.write,
            &json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}),
        )
        .await?;
        // Answers come in order; one with another id is a late answer to a call that timed out.
        let deadline = tokio::time::Instant::now() + ANSWER_TIMEOUT;
        let answer = loop {
            let line = tokio::time::timeout_at(deadline, self.lines.next_line())
                .await
                .map_err(|_| ClientError::Unresponsive(method.to_owned()))??
                .ok_or_else(|| ClientError::Protocol("the daemon closed the connection".into()))?;
            let answer: Value =
                serde_json::from_str(&line).map_err(|e| ClientError::Protocol(e.to_string()))?;
            if answer.get("id") == Some(&Value::from(id)) {
                break answer;
            }
        };
        if let Some(error) = answer.get("error") {
            let error: RpcError = serde_json::from_value(error.clone())
                .map_err(|e| ClientError::Protocol(e.to_string()))?;
            return Err(error.into());
        }
        Ok(answer.get("result").cloned().unwrap_or(Value::Null))
    }

    /// Subscribes to events; then [`Client::next_event`] yields them.
    pub async fn subscribe(&mut self) -> Result<(), ClientError> {
        self.call("subscribe", Value::Null).await.map(|_| ())
    }

    /// The next event after [`Client::subscribe`]; `None` when the daemon stops.
    pub async fn next_event(&mut self) -> Result<Option<Value>, ClientError> {
        let Some(line) = self.lines.next_line().await? else {
            return Ok(None);
        };
        let note: Value =
            serde_json::from_str(&line).map_err(|e| ClientError::Protocol(e.to_string()))?;
        Ok(note.get("params").cloned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn calls_reach_the_actor_and_answers_come_back_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("palaver.sock");
        let (calls_tx, mut calls) = mpsc::channel(4);
        let (events, _) = broadcast::channel(4);
        let listener = bind(&path).unwrap();
        tokio::spawn(serve(listener, calls_tx, events.clone()));
        tokio::spawn(async move {
            while let Some(call) = calls.recv().await {
                let answer = match call.command {
                    Command::Verify { name, .. } => Ok(json!({"asked": name.as_str()})),
                    other => Err(RpcError::failed(format!("not in this test: {other:?}"))),
                };
                let _ = call.reply.send(answer);
            }
        });
        let mut client = loop {
            match Client::connect(&path).await {
                Ok(client) => break client,
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
            }
        };
        assert_eq!(
            client.call("verify", json!({"name": "Bob"})).await.unwrap(),
            json!({"asked": "bob"})
        );
        // A bad call is answered at the edge; the actor never sees it.
        let err = client.call("nope", Value::Null).await.unwrap_err();
        assert_eq!(err.to_string(), "unknown method \"nope\"");
        let mut listener = Client::connect(&path).await.unwrap();
        listener.subscribe().await.unwrap();
        let event = Event::Removed { room: "r".into() };
        events.send(event).unwrap();
        assert_eq!(
            listener.next_event().await.unwrap(),
            Some(json!({"type": "removed", "room": "r"}))
        );
        // Events sent at once (here more than the channel holds) arrive whole and in order,
        // however many share a write; what the channel dropped is reported as lagged.
        for i in 0..6 {
            events
                .send(Event::Removed {
                    room: format!("r{i}"),
                })
                .unwrap();
        }
        assert_eq!(
            listener.next_event().await.unwrap(),
            Some(json!({"type": "lagged", "missed": 2}))
        );
        for i in 2..6 {
            let room = format!("r{i}");
            assert_eq!(
                listener.next_event().await.unwrap(),
                Some(json!({"type": "removed", "room": room}))
            );
        }
    }

    #[tokio::test]
    async fn a_late_answer_to_an_earlier_call_is_not_taken_for_the_next_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("palaver.sock");
        let listener = UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let (read, mut write) = stream.into_split();
            let mut lines = BufReader::new(read).lines();
            let request: Value =
                serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap();
            let id = request["id"].as_u64().unwrap();
            // The answer to a call that timed out arrives first.
            write_line(
                &mut write,
                &json!({"jsonrpc": "2.0", "id": id - 1, "result": "stale"}),
            )
            .await
            .unwrap();
            write_line(
                &mut write,
                &json!({"jsonrpc": "2.0", "id": id, "result": "fresh"}),
            )
            .await
            .unwrap();
        });
        let mut client = Client::connect(&path).await.unwrap();
        client.next_id = 7;
        assert_eq!(
            client.call("status", Value::Null).await.unwrap(),
            json!("fresh")
        );
    }

    #[tokio::test]
    async fn a_missing_daemon_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = Client::connect(&dir.path().join("palaver.sock"))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("not running"), "{err}");
    }
}
