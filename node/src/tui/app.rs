//! The chat window's state, as a pure model.
//!
//! Three kinds of input change it: keys ([`App::handle_key`]), events from the daemon's stream
//! ([`App::handle_event`]) and answers to the calls it asked for ([`App::handle_answer`]). Each
//! returns the [`Effect`]s the IO loop must carry out (control-socket calls, each tagged with a
//! [`Then`] saying what its answer is for). No IO and no clock here — the loop sets [`App::now`] —
//! so the tests drive it directly.
//!
//! Memory is bounded: at most [`MAX_KEPT`] messages per conversation are held; older ones are read
//! back from the daemon's store a page at a time as the user scrolls up.

mod answers;
mod conversation;
mod events;
mod files;
mod input;
mod people;

use std::collections::{BTreeMap, HashMap};

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use palaver_protocol::wire::MAX_TEXT_LEN;
use serde_json::{Value, json};

use super::command::{self, Command};
use super::view;
use crate::localtime::LocalTime;
use conversation::clean;
pub(crate) use conversation::{ConvKey, Conversation, Delivery, Message, RoomState};
pub(crate) use input::Input;
pub(crate) use people::{Link, Member, Person, Presence};

/// Messages held per conversation; past this the far end is dropped (and read again if needed).
pub(crate) const MAX_KEPT: usize = 1000;
/// Messages asked for per history call.
pub(crate) const PAGE: usize = 100;
/// Delivery changes remembered for messages whose send has not been answered yet.
const MAX_EARLY: usize = 256;
/// A burst of messages rings once: notifications at most this often.
const NOTIFY_GAP_MS: u64 = 3_000;
/// Characters of a message a desktop notification shows.
const NOTIFY_TEXT: usize = 120;

/// The link to the daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Daemon {
    Connecting,
    Up,
    /// Nothing listens on the control socket.
    NotRunning,
    /// It was there and went away, or answered nonsense.
    Lost(String),
}

/// The rendezvous connection as the daemon reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Rendezvous {
    pub(crate) connected: bool,
    pub(crate) logged_in: bool,
    pub(crate) error: Option<String>,
}

/// A one-line note in the status bar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Notice {
    pub(crate) text: String,
    pub(crate) error: bool,
}

/// A box over the message pane (help, fingerprints), closed with Esc.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Overlay {
    pub(crate) title: String,
    pub(crate) lines: Vec<String>,
}

/// Something the IO loop must do for the model.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Effect {
    /// Call `method` on the control socket; hand the answer back with `then`.
    Call {
        method: &'static str,
        params: Value,
        then: Then,
    },
    /// Repaint the whole screen (Ctrl-L: something else wrote on the terminal).
    Redraw,
    /// A message arrived in a conversation not in view: ring the bell or notify the desktop,
    /// as configured.
    Notify { title: String, body: String },
}

/// What an answer is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Then {
    Status,
    Conversations,
    Rooms,
    Peers,
    Presence,
    History {
        conv: ConvKey,
        older: bool,
    },
    Members {
        room: String,
    },
    Sent {
        conv: ConvKey,
        local: u64,
    },
    Joined {
        room: String,
        created: bool,
    },
    Left {
        room: String,
    },
    Verify,
    /// The daemon moved a read marker (nothing to do with the answer).
    Read,
    /// `/msg` to someone with no conversation yet: opened (and `text` sent) once the daemon
    /// knows the user, so a mistyped name does not become a contact.
    Opened {
        to: String,
        text: Option<String>,
    },
    /// A command whose success is worth a note; refresh the room's members after it if given.
    Done {
        note: String,
        members: Option<String>,
    },
}

fn call(method: &'static str, params: Value, then: Then) -> Effect {
    Effect::Call {
        method,
        params,
        then,
    }
}

/// The whole state of the chat window.
#[derive(Debug)]
pub(crate) struct App {
    /// The control socket (for the not-running screen).
    pub(crate) socket: String,
    /// Now, in Unix milliseconds (set by the loop; stamps my messages until the daemon's answer).
    pub(crate) now: u64,
    pub(crate) daemon: Daemon,
    pub(crate) me: Option<String>,
    pub(crate) rendezvous: Option<Rendezvous>,
    pub(crate) conversations: Vec<Conversation>,
    pub(crate) selected: usize,
    pub(crate) input: Input,
    pub(crate) notice: Option<Notice>,
    pub(crate) overlay: Option<Overlay>,
    pub(crate) presence: BTreeMap<String, Presence>,
    pub(crate) links: HashMap<String, Link>,
    pub(crate) members: HashMap<String, Vec<Member>>,
    /// Delivery changes that arrived before the answer to their send.
    early: HashMap<String, Delivery>,
    next_local: u64,
    /// The message pane's inside: width and height in cells.
    pub(crate) viewport: (u16, u16),
    /// The time zone times and dates are shown in.
    pub(crate) local: LocalTime,
    /// When the last notification went out (they are spaced by [`NOTIFY_GAP_MS`]).
    last_notified: Option<u64>,
    /// File transfers heard of, for the status line and `/get`.
    transfers: files::Transfers,
    pub(crate) quit: bool,
}

impl App {
    pub(crate) fn new(socket: impl Into<String>) -> Self {
        Self {
            socket: socket.into(),
            now: 0,
            daemon: Daemon::Connecting,
            me: None,
            rendezvous: None,
            conversations: Vec::new(),
            selected: 0,
            input: Input::default(),
            notice: None,
            overlay: None,
            presence: BTreeMap::new(),
            links: HashMap::new(),
            members: HashMap::new(),
            early: HashMap::new(),
            next_local: 0,
            viewport: (40, 10),
            local: LocalTime::system(),
            last_notified: None,
            transfers: Default::default(),
            quit: false,
        }
    }

    pub(crate) fn selected(&self) -> Option<&Conversation> {
        self.conversations.get(self.selected)
    }

    fn selected_mut(&mut self) -> Option<&mut Conversation> {
        self.conversations.get_mut(self.selected)
    }

    /// Switches to the direct conversation with `to` (added if new), sending `text` if given.
    fn open_direct(&mut self, to: String, text: Option<String>) -> Vec<Effect> {
        let at = self.ensure(ConvKey::Direct(to.clone()));
        let mut effects = self.select(at);
        if let Some(text) = text {
            effects.extend(self.send(ConvKey::Direct(to), text));
        }
        effects
    }

    fn find(&self, key: &ConvKey) -> Option<usize> {
        self.conversations.iter().position(|c| &c.key == key)
    }

    /// The conversation, added at the top of the list if new.
    fn ensure(&mut self, key: ConvKey) -> usize {
        if let Some(at) = self.find(&key) {
            return at;
        }
        self.conversations.insert(0, Conversation::new(key));
        if self.conversations.len() > 1 {
            self.selected += 1;
        }
        0
    }

    /// Added at the bottom (for lists read at start, which come in display order).
    fn ensure_last(&mut self, key: ConvKey) -> usize {
        if let Some(at) = self.find(&key) {
            return at;
        }
        self.conversations.push(Conversation::new(key));
        self.conversations.len() - 1
    }

    fn note(&mut self, text: impl Into<String>) {
        self.notice = Some(Notice {
            text: text.into(),
            error: false,
        });
    }

    fn error(&mut self, text: impl Into<String>) {
        self.notice = Some(Notice {
            text: text.into(),
            error: true,
        });
    }

    fn me(&self) -> &str {
        self.me.as_deref().unwrap_or("me")
    }

    // ---- the daemon link ----------------------------------------------------------------------

    /// The control socket answered and the event stream is subscribed: read everything.
    pub(crate) fn connected(&mut self) -> Vec<Effect> {
        self.daemon = Daemon::Up;
        for conv in &mut self.conversations {
            conv.reset();
        }
        self.reload()
    }

    fn reload(&mut self) -> Vec<Effect> {
        vec![
            call("status", Value::Null, Then::Status),
            call("conversations", Value::Null, Then::Conversations),
            call("room.list", Value::Null, Then::Rooms),
            call("peers", Value::Null, Then::Peers),
        ]
    }

    /// The daemon is not there (`not_running`) or went away.
    pub(crate) fn disconnected(&mut self, not_running: bool, reason: impl Into<String>) {
        self.daemon = if not_running {
            Daemon::NotRunning
        } else {
            Daemon::Lost(reason.into())
        };
        self.rendezvous = None;
        self.links.clear();
        for conv in &mut self.conversations {
            conv.loading = false;
        }
    }

    /// Periodic refresh of what has no event: the members of the selected room.
    pub(crate) fn tick(&mut self) -> Vec<Effect> {
        match self.selected() {
            Some(Conversation {
                key: ConvKey::Room(room),
                room: Some(RoomState::Joined),
                ..
            }) if self.daemon == Daemon::Up => vec![members(room)],
            _ => Vec::new(),
        }
    }

    /// The message pane's inside changed size.
    pub(crate) fn resize(&mut self, width: u16, height: u16) {
        self.viewport = (width, height);
    }

    // ---- keys ---------------------------------------------------------------------------------

    pub(crate) fn handle_key(&mut self, key: KeyEvent) -> Vec<Effect> {
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        let alt = key.modifiers.contains(KeyModifiers::ALT);
        match key.code {
            KeyCode::Char('c') if ctrl => {
                self.quit = true;
                return Vec::new();
            }
            KeyCode::Char('l') if ctrl => return vec![Effect::Redraw],
            _ => {}
        }
        if matches!(self.daemon, Daemon::NotRunning | Daemon::Lost(_)) {
            if matches!(key.code, KeyCode::Char('q') | KeyCode::Esc) {
                self.quit = true;
            }
            return Vec::new();
        }
        if self.overlay.is_some() {
            self.overlay = None;
            if matches!(key.code, KeyCode::Esc | KeyCode::Enter) {
                return Vec::new();
            }
        }
        match key.code {
            KeyCode::Tab => self.select_by(1),
            KeyCode::BackTab => self.select_by(-1),
            KeyCode::Char('n') if ctrl => self.select_by(1),
            KeyCode::Char('p') if ctrl => self.select_by(-1),
            KeyCode::PageUp => self.scroll_up(),
            KeyCode::PageDown => self.scroll_down(),
            KeyCode::Enter => self.submit(),
            KeyCode::Esc => {
                self.notice = None;
                Vec::new()
            }
            code => {
                self.edit(code, ctrl, alt);
                Vec::new()
            }
        }
    }

    /// Pasted text goes into the input line (one line: newlines become spaces).
    pub(crate) fn paste(&mut self, text: &str) {
        for c in text.chars() {
            self.input.insert(if c.is_control() { ' ' } else { c });
        }
    }

    fn edit(&mut self, code: KeyCode, ctrl: bool, alt: bool) {
        let input = &mut self.input;
        match code {
            KeyCode::Char('a') if ctrl => input.cursor = 0,
            KeyCode::Char('e') if ctrl => input.cursor = input.text.len(),
            KeyCode::Char('u') if ctrl => input.set(String::new()),
            KeyCode::Char('k') if ctrl => input.text.truncate(input.cursor),
            KeyCode::Char('w') if ctrl => input.delete_word(),
            KeyCode::Char(c) if !ctrl && !alt => input.insert(c),
            KeyCode::Backspace => input.backspace(),
            KeyCode::Delete => input.delete(),
            KeyCode::Left => input.cursor = input.left(),
            KeyCode::Right => input.cursor = input.right(),
            KeyCode::Home => input.cursor = 0,
            KeyCode::End => input.cursor = input.text.len(),
            KeyCode::Up => input.recall_older(),
            KeyCode::Down => input.recall_newer(),
            _ => {}
        }
    }

    // ---- conversations and scrolling ------------------------------------------------------------

    fn select_by(&mut self, delta: isize) -> Vec<Effect> {
        let len = self.conversations.len();
        if len == 0 {
            return Vec::new();
        }
        let at = (self.selected as isize + delta).rem_euclid(len as isize) as usize;
        self.select(at)
    }

    fn select(&mut self, at: usize) -> Vec<Effect> {
        if at >= self.conversations.len() {
            return Vec::new();
        }
        if at != self.selected
            && let Some(left) = self.selected_mut()
        {
            // What was new there has been seen: no line next time.
            left.marker = None;
        }
        self.selected = at;
        self.on_selected()
    }

    /// What a conversation needs when it comes into view: its history, its members, and the
    /// daemon told it is read (the "new messages" line stays until another is selected).
    fn on_selected(&mut self) -> Vec<Effect> {
        let up = self.daemon == Daemon::Up;
        let Some(conv) = self.selected_mut() else {
            return Vec::new();
        };
        let mut effects = Vec::new();
        if up && conv.unread > 0 {
            effects.push(call("read", conv.key.read_params(None), Then::Read));
        }
        conv.unread = 0;
        if up && !conv.loaded && !conv.loading {
            conv.loading = true;
            effects.push(call(
                "history",
                conv.key.history_params(None),
                Then::History {
                    conv: conv.key.clone(),
                    older: false,
                },
            ));
        }
        if up
            && let ConvKey::Room(room) = &conv.key
            && conv.room == Some(RoomState::Joined)
        {
            effects.push(members(room));
        }
        effects
    }

    /// Lines the selected conversation takes at the current width.
    pub(crate) fn total_lines(&self) -> usize {
        let Some(conv) = self.selected() else {
            return 0;
        };
        let width = usize::from(self.viewport.0);
        (0..conv.messages.len())
            .map(|at| view::block_height(self, conv, at, width))
            .sum()
    }

    /// A notification of `message` in `conv`, unless one went out less than
    /// [`NOTIFY_GAP_MS`] ago.
    fn notify(&mut self, conv: &ConvKey, message: &Message) -> Option<Effect> {
        if self
            .last_notified
            .is_some_and(|last| self.now < last.saturating_add(NOTIFY_GAP_MS))
        {
            return None;
        }
        self.last_notified = Some(self.now);
        let title = match conv {
            ConvKey::Direct(name) => name.clone(),
            ConvKey::Room(_) => format!("{} in {}", message.from, conv.label()),
        };
        let mut body: String = message.text.chars().take(NOTIFY_TEXT).collect();
        if body.len() < message.text.len() {
            body.push('…');
        }
        Some(Effect::Notify { title, body })
    }

    fn page(&self) -> usize {
        usize::from(self.viewport.1).saturating_sub(1).max(1)
    }

    fn scroll_up(&mut self) -> Vec<Effect> {
        let page = self.page();
        let top = self
            .total_lines()
            .saturating_sub(usize::from(self.viewport.1));
        let up = self.daemon == Daemon::Up;
        let Some(conv) = self.selected_mut() else {
            return Vec::new();
        };
        let wanted = conv.scroll + page;
        conv.scroll = wanted.min(top);
        // At (or near) the top of what is held: read the page before it.
        if wanted >= top && !conv.at_start && !conv.loading && up {
            let before = conv.oldest_id().map(str::to_owned);
            let Some(before) = before else {
                return Vec::new();
            };
            conv.loading = true;
            return vec![call(
                "history",
                conv.key.history_params(Some(&before)),
                Then::History {
                    conv: conv.key.clone(),
                    older: true,
                },
            )];
        }
        Vec::new()
    }

    fn scroll_down(&mut self) -> Vec<Effect> {
        let page = self.page();
        let up = self.daemon == Daemon::Up;
        let Some(conv) = self.selected_mut() else {
            return Vec::new();
        };
        conv.scroll = conv.scroll.saturating_sub(page);
        if conv.scroll == 0 && conv.newer_dropped && !conv.loading && up {
            conv.loading = true;
            return vec![call(
                "history",
                conv.key.history_params(None),
                Then::History {
                    conv: conv.key.clone(),
                    older: false,
                },
            )];
        }
        Vec::new()
    }

    // ---- the input line -------------------------------------------------------------------------

    fn submit(&mut self) -> Vec<Effect> {
        if self.input.text.trim().is_empty() {
            return Vec::new();
        }
        if self.daemon != Daemon::Up {
            self.error("not connected to the daemon yet");
            return Vec::new();
        }
        let line = self.input.take();
        self.notice = None;
        match command::parse(&line) {
            Ok(command) => self.run(command),
            Err(err) => {
                self.error(err.to_string());
                Vec::new()
            }
        }
    }

    fn run(&mut self, command: Command) -> Vec<Effect> {
        match command {
            Command::Say(text) => {
                let Some(conv) = self.selected() else {
                    self.error("no conversation yet: /msg NAME TEXT, or /join ROOM");
                    return Vec::new();
                };
                match conv.room {
                    Some(RoomState::Invited) => {
                        let room = conv.key.label();
                        self.error(format!(
                            "you are invited to {room} but have not joined: /join {}",
                            room.trim_start_matches('#')
                        ));
                        return Vec::new();
                    }
                    Some(RoomState::Removed) => {
                        let room = conv.key.label();
                        self.error(format!("you were removed from {room}"));
                        return Vec::new();
                    }
                    _ => {}
                }
                let key = conv.key.clone();
                self.send(key, text)
            }
            Command::Msg { to, text } => {
                if self.me.as_deref() == Some(to.as_str()) {
                    self.error("that is you");
                    return Vec::new();
                }
                if self.find(&ConvKey::Direct(to.clone())).is_none() {
                    return vec![call(
                        "verify",
                        json!({"name": to}),
                        Then::Opened { to, text },
                    )];
                }
                self.open_direct(to, text)
            }
            Command::Join { room, public } => vec![call(
                "room.join",
                json!({"room": room, "public": public}),
                Then::Joined {
                    room,
                    created: false,
                },
            )],
            Command::Create { room, public } => vec![call(
                "room.create",
                json!({"room": room, "public": public}),
                Then::Joined {
                    room,
                    created: true,
                },
            )],
            Command::Invite(name) => {
                let Some(room) = self.selected_room("/invite") else {
                    return Vec::new();
                };
                vec![call(
                    "room.invite",
                    json!({"room": room, "name": name}),
                    Then::Done {
                        note: format!("invited {name} to #{room}"),
                        members: Some(room),
                    },
                )]
            }
            Command::Kick(name) => {
                let Some(room) = self.selected_room("/kick") else {
                    return Vec::new();
                };
                vec![call(
                    "room.kick",
                    json!({"room": room, "name": name}),
                    Then::Done {
                        note: format!("removed {name} from #{room}; keys rotate"),
                        members: Some(room),
                    },
                )]
            }
            Command::Leave => {
                let Some(room) = self.selected_room("/leave") else {
                    return Vec::new();
                };
                vec![call(
                    "room.leave",
                    json!({"room": room}),
                    Then::Left { room },
                )]
            }
            Command::Verify(name) => {
                let name = name.or_else(|| match self.selected() {
                    Some(Conversation {
                        key: ConvKey::Direct(name),
                        ..
                    }) => Some(name.clone()),
                    _ => None,
                });
                match name {
                    Some(name) => vec![call("verify", json!({"name": name}), Then::Verify)],
                    None => {
                        self.error("usage: /verify NAME");
                        Vec::new()
                    }
                }
            }
            Command::File(path) => self.send_file(&path),
            Command::Get(id) => self.get_file(id.as_deref()),
            Command::Help => {
                self.overlay = Some(Overlay {
                    title: "Help (Esc closes)".into(),
                    lines: command::HELP.iter().map(|l| (*l).to_owned()).collect(),
                });
                Vec::new()
            }
            Command::Quit => {
                self.quit = true;
                Vec::new()
            }
        }
    }

    fn selected_room(&mut self, command: &str) -> Option<String> {
        match self.selected() {
            Some(Conversation {
                key: ConvKey::Room(room),
                ..
            }) => Some(room.clone()),
            _ => {
                self.error(format!("{command} works in a room: select one with Tab"));
                None
            }
        }
    }

    /// Shows the message at once (as sending) and asks the daemon to send it.
    fn send(&mut self, key: ConvKey, text: String) -> Vec<Effect> {
        if text.len() > MAX_TEXT_LEN {
            self.error(format!("a message has at most {MAX_TEXT_LEN} bytes"));
            return Vec::new();
        }
        let local = self.show_sending(key.clone(), text.clone());
        let (method, params) = match &key {
            ConvKey::Direct(name) => ("send", json!({"to": name, "text": text})),
            ConvKey::Room(room) => ("room.send", json!({"room": room, "text": text})),
        };
        vec![call(method, params, Then::Sent { conv: key, local })]
    }

    // ---- what the view shows ------------------------------------------------------------------

    /// The people pane: the members of the selected room, or my contacts.
    pub(crate) fn people(&self) -> (String, Vec<Person>) {
        let me = self.me.as_deref();
        let person = |name: &str, owner: bool| Person {
            name: name.to_owned(),
            presence: self
                .presence
                .get(name)
                .copied()
                .unwrap_or(Presence::Unknown),
            link: self.links.get(name).copied(),
            owner,
        };
        let mut people: Vec<Person> = match self.selected().map(|c| &c.key) {
            Some(ConvKey::Room(room)) => self
                .members
                .get(room)
                .into_iter()
                .flatten()
                .filter(|m| Some(m.name.as_str()) != me)
                .map(|m| person(&m.name, m.owner))
                .collect(),
            _ => {
                let mut names: Vec<&str> = self
                    .conversations
                    .iter()
                    .filter_map(|c| match &c.key {
                        ConvKey::Direct(name) => Some(name.as_str()),
                        ConvKey::Room(_) => None,
                    })
                    .chain(self.presence.keys().map(String::as_str))
                    .chain(self.links.keys().map(String::as_str))
                    .filter(|name| Some(*name) != me)
                    .collect();
                names.sort_unstable();
                names.dedup();
                names.into_iter().map(|name| person(name, false)).collect()
            }
        };
        people.sort_by(|a, b| (a.presence.order(), &a.name).cmp(&(b.presence.order(), &b.name)));
        let title = match self.selected().map(|c| &c.key) {
            Some(ConvKey::Room(_)) => "Members",
            _ => "Contacts",
        };
        (title.to_owned(), people)
    }
}

fn members(room: &str) -> Effect {
    call(
        "room.members",
        json!({"room": room}),
        Then::Members {
            room: room.to_owned(),
        },
    )
}

fn link(connection: &Value) -> Option<Link> {
    match connection.as_str()? {
        "direct" => Some(Link::Direct),
        "relayed" => Some(Link::Relayed),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
