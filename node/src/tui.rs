//! `palaver chat`: the terminal UI, a client of the running daemon's control socket.
//!
//! One `select!` loop owns the model ([`app::App`]) and feeds it three streams: the terminal's
//! keys and resizes (crossterm), the daemon's events (a subscribed connection) and the answers to
//! the model's calls (a second connection, one call at a time, so they reach the daemon in the
//! order typed). After each input it redraws. When the daemon is not there it shows how to start
//! it and keeps trying to connect; the window can be closed and reopened without losing anything,
//! since the daemon holds all state.
//!
//! The terminal is restored on every way out: normal exit, error, SIGTERM/SIGHUP, and panic (a
//! panic hook restores it before the message is printed). While the window is open, stderr — the
//! log — goes to `<home>/chat.log`, so no log line is written over the screen.

mod app;
mod command;
mod notify;
mod view;

pub use notify::Notifications;

use std::io::{IsTerminal, Stdout};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use crossterm::event::{
    DisableBracketedPaste, EnableBracketedPaste, Event, EventStream, KeyEventKind,
};
use crossterm::execute;
use crossterm::terminal::{
    EnterAlternateScreen, LeaveAlternateScreen, disable_raw_mode, enable_raw_mode,
};
use futures::StreamExt;
use ratatui::Terminal;
use ratatui::backend::CrosstermBackend;
use ratatui::layout::Rect;
use serde_json::Value;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::rpc::{Client, ClientError};
use app::{App, Effect, Then};

/// How often to try again while the daemon is not there.
const RECONNECT: Duration = Duration::from_secs(1);
/// How often to refresh what has no event (room members).
const REFRESH: Duration = Duration::from_secs(5);
/// The longest a call may take before its connection is given up (a lookup at the rendezvous is
/// the slowest thing the daemon does before answering).
const CALL_TIMEOUT: Duration = Duration::from_secs(20);
/// Calls waiting to go out; more than this and the user is typing faster than the daemon answers.
const CALL_QUEUE: usize = 64;
/// Events and answers waiting for the loop.
const INBOX: usize = 256;

/// Runs the chat window against the daemon at `socket` until the user quits; a message for a
/// conversation not in view notifies as `notifications` says.
pub async fn run(socket: &Path, notifications: Notifications) -> anyhow::Result<()> {
    if !std::io::stdout().is_terminal() || !std::io::stdin().is_terminal() {
        bail!(
            "`palaver chat` needs a terminal; use `palaver listen` and `palaver send` in scripts"
        );
    }
    let mut terminal = enter().context("setting up the terminal")?;
    log_to_file(&socket.with_file_name("chat.log"));
    let notifier = notify::Notifier::new(notifications, std::env::var_os("PATH").as_deref());
    let result = event_loop(&mut terminal, socket, &notifier).await;
    leave();
    let _ = terminal.show_cursor();
    result
}

/// Set while the terminal is in raw mode on the alternate screen.
static ACTIVE: AtomicBool = AtomicBool::new(false);

fn enter() -> anyhow::Result<Terminal<CrosstermBackend<Stdout>>> {
    install_panic_hook();
    enable_raw_mode()?;
    ACTIVE.store(true, Ordering::SeqCst);
    let mut stdout = std::io::stdout();
    if let Err(err) = execute!(stdout, EnterAlternateScreen, EnableBracketedPaste) {
        leave();
        return Err(err.into());
    }
    match Terminal::new(CrosstermBackend::new(stdout)) {
        Ok(terminal) => Ok(terminal),
        Err(err) => {
            leave();
            Err(err.into())
        }
    }
}

/// Puts the terminal back as it was (once; later calls do nothing).
fn leave() {
    if ACTIVE.swap(false, Ordering::SeqCst) {
        let _ = execute!(
            std::io::stdout(),
            DisableBracketedPaste,
            LeaveAlternateScreen,
            crossterm::cursor::Show
        );
        let _ = disable_raw_mode();
    }
    let saved = SAVED_STDERR
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .take();
    if let Some(saved) = saved {
        let _ = rustix::stdio::dup2_stderr(&saved);
    }
}

/// The real stderr while it points at the log file.
static SAVED_STDERR: Mutex<Option<OwnedFd>> = Mutex::new(None);

/// Sends stderr to `path` until [`leave`]; if that cannot be done, logs go where they went.
fn log_to_file(path: &Path) {
    let Ok(file) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    else {
        return;
    };
    let Ok(saved) = rustix::io::dup(std::io::stderr()) else {
        return;
    };
    if rustix::stdio::dup2_stderr(&file).is_ok() {
        *SAVED_STDERR
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(saved);
    }
}

fn install_panic_hook() {
    static INSTALLED: AtomicBool = AtomicBool::new(false);
    if INSTALLED.swap(true, Ordering::SeqCst) {
        return;
    }
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        leave();
        previous(info);
    }));
}

/// What the link tasks tell the loop, tagged with the link's generation (older ones are stale).
#[derive(Debug)]
enum Inbox {
    Event(u64, Value),
    Answer(u64, Then, Result<Value, String>),
    Down(u64, String),
}

/// A live connection to the daemon: the call worker and the event reader.
#[derive(Debug)]
struct DaemonLink {
    calls: mpsc::Sender<(&'static str, Value, Then)>,
    tasks: [JoinHandle<()>; 2],
}

impl Drop for DaemonLink {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl DaemonLink {
    async fn connect(
        socket: &Path,
        generation: u64,
        inbox: mpsc::Sender<Inbox>,
    ) -> Result<Self, ClientError> {
        let mut events = Client::connect(socket).await?;
        tokio::time::timeout(CALL_TIMEOUT, events.subscribe())
            .await
            .map_err(|_| ClientError::Protocol("the daemon did not answer".into()))??;
        let client = Client::connect(socket).await?;
        let (calls, queue) = mpsc::channel(CALL_QUEUE);
        let reader = tokio::spawn(read_events(events, generation, inbox.clone()));
        let worker = tokio::spawn(call_worker(
            client,
            socket.to_path_buf(),
            queue,
            generation,
            inbox,
        ));
        Ok(Self {
            calls,
            tasks: [reader, worker],
        })
    }
}

async fn read_events(mut client: Client, generation: u64, inbox: mpsc::Sender<Inbox>) {
    let reason = loop {
        match client.next_event().await {
            Ok(Some(event)) => {
                if inbox.send(Inbox::Event(generation, event)).await.is_err() {
                    return;
                }
            }
            Ok(None) => break "the daemon stopped".to_owned(),
            Err(err) => break err.to_string(),
        }
    };
    let _ = inbox.send(Inbox::Down(generation, reason)).await;
}

async fn call_worker(
    mut client: Client,
    socket: PathBuf,
    mut queue: mpsc::Receiver<(&'static str, Value, Then)>,
    generation: u64,
    inbox: mpsc::Sender<Inbox>,
) {
    while let Some((method, params, then)) = queue.recv().await {
        let (result, down) =
            match tokio::time::timeout(CALL_TIMEOUT, client.call(method, params)).await {
                Ok(Ok(value)) => (Ok(value), None),
                Ok(Err(ClientError::Rpc(err))) => (Err(err.message), None),
                Ok(Err(err)) => (Err(err.to_string()), Some(err.to_string())),
                Err(_) => {
                    // The answer may still come and would be taken for the next one: start afresh.
                    match Client::connect(&socket).await {
                        Ok(fresh) => {
                            client = fresh;
                            (Err("the daemon did not answer in time".to_owned()), None)
                        }
                        Err(err) => (
                            Err("the daemon did not answer in time".to_owned()),
                            Some(err.to_string()),
                        ),
                    }
                }
            };
        if inbox
            .send(Inbox::Answer(generation, then, result))
            .await
            .is_err()
        {
            return;
        }
        if let Some(reason) = down {
            let _ = inbox.send(Inbox::Down(generation, reason)).await;
            return;
        }
    }
}

fn resize(app: &mut App, width: u16, height: u16) {
    let (w, h) = view::message_viewport(Rect::new(0, 0, width, height));
    app.resize(w, h);
}

async fn event_loop(
    terminal: &mut Terminal<CrosstermBackend<Stdout>>,
    socket: &Path,
    notifier: &notify::Notifier,
) -> anyhow::Result<()> {
    let mut app = App::new(socket.display().to_string());
    let size = terminal.size()?;
    resize(&mut app, size.width, size.height);
    let mut keys = EventStream::new();
    let (inbox_tx, mut inbox) = mpsc::channel(INBOX);
    let mut link: Option<DaemonLink> = None;
    let mut generation = 0u64;
    let mut reconnect = tokio::time::interval(RECONNECT);
    reconnect.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut refresh = tokio::time::interval(REFRESH);
    refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut terminate = signal(SignalKind::terminate())?;
    let mut hangup = signal(SignalKind::hangup())?;
    loop {
        app.now = crate::daemon::now_ms();
        terminal.draw(|frame| view::draw(frame, &app))?;
        if app.quit {
            return Ok(());
        }
        let effects = tokio::select! {
            key = keys.next() => match key {
                Some(Ok(Event::Key(key))) if key.kind != KeyEventKind::Release => {
                    app.now = crate::daemon::now_ms();
                    app.handle_key(key)
                }
                Some(Ok(Event::Paste(text))) => {
                    app.paste(&text);
                    Vec::new()
                }
                Some(Ok(Event::Resize(width, height))) => {
                    resize(&mut app, width, height);
                    Vec::new()
                }
                Some(Ok(_)) => Vec::new(),
                Some(Err(err)) => return Err(err).context("reading the terminal"),
                None => return Ok(()),
            },
            Some(message) = inbox.recv() => match message {
                Inbox::Event(g, event) if g == generation => app.handle_event(&event),
                Inbox::Answer(g, then, result) if g == generation => app.handle_answer(then, result),
                Inbox::Down(g, reason) if g == generation && link.is_some() => {
                    link = None;
                    app.disconnected(false, reason);
                    reconnect.reset();
                    Vec::new()
                }
                _ => Vec::new(),
            },
            _ = reconnect.tick(), if link.is_none() => {
                match DaemonLink::connect(socket, generation + 1, inbox_tx.clone()).await {
                    Ok(fresh) => {
                        generation += 1;
                        link = Some(fresh);
                        app.connected()
                    }
                    Err(ClientError::NotRunning(_)) => {
                        app.disconnected(true, "");
                        Vec::new()
                    }
                    Err(err) => {
                        app.disconnected(false, err.to_string());
                        Vec::new()
                    }
                }
            },
            _ = refresh.tick(), if link.is_some() => app.tick(),
            _ = terminate.recv() => return Ok(()),
            _ = hangup.recv() => return Ok(()),
        };
        for effect in effects {
            match effect {
                Effect::Redraw => terminal.clear()?,
                Effect::Notify { title, body } => {
                    notifier.notify(terminal.backend_mut(), &title, &body)
                }
                Effect::Call {
                    method,
                    params,
                    then,
                } => {
                    let refused = match &link {
                        Some(link) => match link.calls.try_send((method, params, then)) {
                            Ok(()) => None,
                            Err(mpsc::error::TrySendError::Full((_, _, then))) => {
                                Some((then, "too many requests waiting; try again"))
                            }
                            Err(mpsc::error::TrySendError::Closed((_, _, then))) => {
                                Some((then, "not connected to the daemon"))
                            }
                        },
                        None => Some((then, "not connected to the daemon")),
                    };
                    if let Some((then, why)) = refused {
                        // Whatever the refused call would have answered (a send failing) still
                        // shows; its own follow-ups are dropped.
                        let _ = app.handle_answer(then, Err(why.to_owned()));
                    }
                }
            }
        }
    }
}
