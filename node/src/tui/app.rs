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

use std::collections::{BTreeMap, HashMap, VecDeque};

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use palaver_protocol::wire::MAX_TEXT_LEN;
use serde_json::{Value, json};

use super::command::{self, Command};
use super::view;

/// Messages held per conversation; past this the far end is dropped (and read again if needed).
pub(crate) const MAX_KEPT: usize = 1000;
/// Messages asked for per history call.
pub(crate) const PAGE: usize = 100;
/// Delivery changes remembered for messages whose send has not been answered yet.
const MAX_EARLY: usize = 256;
/// Lines kept for Up/Down recall.
const MAX_RECALL: usize = 50;

/// A conversation: a direct one with a user, or a room (its name without `#`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum ConvKey {
    Direct(String),
    Room(String),
}

impl ConvKey {
    /// How `history` and events name it: `bob` or `#lunch`.
    pub(crate) fn label(&self) -> String {
        match self {
            ConvKey::Direct(name) => name.clone(),
            ConvKey::Room(room) => format!("#{room}"),
        }
    }

    pub(crate) fn from_label(label: &str) -> Self {
        match label.strip_prefix('#') {
            Some(room) => ConvKey::Room(room.to_owned()),
            None => ConvKey::Direct(label.to_owned()),
        }
    }

    fn history_params(&self, before: Option<&str>) -> Value {
        let mut params = match self {
            ConvKey::Direct(name) => json!({"with": name, "limit": PAGE}),
            ConvKey::Room(room) => json!({"room": room, "limit": PAGE}),
        };
        if let Some(before) = before {
            params["before"] = json!(before);
        }
        params
    }
}

/// A message's delivery status, as the daemon reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Delivery {
    Sending,
    Sent,
    Delivered,
    Queued,
    Failed,
    Received,
}

impl Delivery {
    pub(crate) fn parse(status: &str) -> Option<Self> {
        Some(match status {
            "sending" => Delivery::Sending,
            "sent" => Delivery::Sent,
            "delivered" => Delivery::Delivered,
            "queued" => Delivery::Queued,
            "failed" => Delivery::Failed,
            "received" => Delivery::Received,
            _ => return None,
        })
    }

    /// As in the store: statuses only move forward, so a late "sent" cannot undo "delivered".
    fn rank(self) -> u8 {
        match self {
            Delivery::Sending => 0,
            Delivery::Sent | Delivery::Queued | Delivery::Failed => 1,
            Delivery::Delivered | Delivery::Received => 2,
        }
    }

    fn advance(&mut self, to: Delivery) {
        if to.rank() >= self.rank() {
            *self = to;
        }
    }

    /// The mark shown after a message of mine.
    pub(crate) fn mark(self) -> &'static str {
        match self {
            Delivery::Sending => "…",
            Delivery::Sent => "✓",
            Delivery::Delivered => "✓✓",
            Delivery::Queued => "✉",
            Delivery::Failed => "✗",
            Delivery::Received => "",
        }
    }
}

/// One message on screen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Message {
    /// The daemon's id; `None` while a send of mine is unanswered.
    pub(crate) id: Option<String>,
    /// Ties an unanswered send to its answer.
    local: Option<u64>,
    pub(crate) from: String,
    pub(crate) text: String,
    pub(crate) sent_at: u64,
    pub(crate) status: Delivery,
}

impl Message {
    /// A history entry or `message` event; `None` if it lacks what a message needs.
    pub(crate) fn from_json(value: &Value) -> Option<Self> {
        Some(Self {
            id: Some(value["id"].as_str()?.to_owned()),
            local: None,
            from: clean(value["from"].as_str()?),
            text: clean(value["text"].as_str()?),
            sent_at: value["sent_at"].as_u64().unwrap_or(0),
            status: value["status"]
                .as_str()
                .and_then(Delivery::parse)
                .unwrap_or(Delivery::Received),
        })
    }
}

/// Text from the network goes to a terminal: control characters (escape sequences) must not.
fn clean(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '\n' => '\n',
            '\t' => ' ',
            c if c.is_control() => '\u{fffd}',
            c => c,
        })
        .collect()
}

/// Where I stand in a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RoomState {
    Joined,
    Invited,
    Removed,
}

/// One entry of the conversation list, with the messages held for it.
#[derive(Debug, Clone)]
pub(crate) struct Conversation {
    pub(crate) key: ConvKey,
    pub(crate) messages: VecDeque<Message>,
    pub(crate) unread: usize,
    /// Lines scrolled up from the bottom (0: following new messages).
    pub(crate) scroll: usize,
    /// The latest page has been read.
    pub(crate) loaded: bool,
    /// A history call is out.
    pub(crate) loading: bool,
    /// Nothing older than the first held message exists.
    pub(crate) at_start: bool,
    /// Newer messages were dropped to make room for older ones; re-read at the bottom.
    pub(crate) newer_dropped: bool,
    pub(crate) room: Option<RoomState>,
}

impl Conversation {
    fn new(key: ConvKey) -> Self {
        let room = matches!(key, ConvKey::Room(_)).then_some(RoomState::Joined);
        Self {
            key,
            messages: VecDeque::new(),
            unread: 0,
            scroll: 0,
            loaded: false,
            loading: false,
            at_start: false,
            newer_dropped: false,
            room,
        }
    }

    fn position(&self, id: &str) -> Option<usize> {
        self.messages
            .iter()
            .position(|m| m.id.as_deref() == Some(id))
    }

    /// The oldest message the store knows (the cursor for reading further back).
    fn oldest_id(&self) -> Option<&str> {
        self.messages.iter().find_map(|m| m.id.as_deref())
    }

    fn push(&mut self, message: Message) {
        self.messages.push_back(message);
        while self.messages.len() > MAX_KEPT {
            self.messages.pop_front();
            self.at_start = false;
        }
    }

    /// Forgets what is held (after a reconnect or lost events: it is all read again).
    fn reset(&mut self) {
        self.messages.retain(|m| m.id.is_none());
        self.scroll = 0;
        self.loaded = false;
        self.loading = false;
        self.at_start = false;
        self.newer_dropped = false;
    }

    /// Takes in the latest page. What is held and not in it is either older (held before the
    /// first message the page shares) or newer (live events and sends that came meanwhile); both
    /// stay, in place. Statuses keep whichever is furthest forward.
    fn merge_latest(&mut self, page: Vec<Message>) {
        let mut old = std::mem::take(&mut self.messages);
        if self.newer_dropped {
            // What is held is far back; the page is the bottom. Start again from it.
            old.retain(|m| m.id.is_none());
        }
        let in_page = |m: &Message| {
            m.id.as_deref()
                .is_some_and(|id| page.iter().any(|p| p.id.as_deref() == Some(id)))
        };
        let first_shared = old.iter().position(in_page);
        let mut older = VecDeque::new();
        let mut newer = Vec::new();
        let mut statuses = Vec::new();
        for (at, message) in old.into_iter().enumerate() {
            if in_page(&message) {
                statuses.push(message);
            } else if first_shared.is_some_and(|first| at < first) {
                older.push_back(message);
            } else {
                newer.push(message);
            }
        }
        if older.is_empty() {
            self.at_start = page.len() < PAGE;
        }
        self.messages = older;
        self.messages.extend(page);
        for message in statuses {
            if let Some(at) = message.id.as_deref().and_then(|id| self.position(id)) {
                self.messages[at].status.advance(message.status);
            }
        }
        for message in newer {
            self.push(message);
        }
        self.loaded = true;
        self.newer_dropped = false;
    }

    /// Takes in a page of older messages, in front.
    fn merge_older(&mut self, page: Vec<Message>) {
        self.at_start = page.len() < PAGE;
        for message in page.into_iter().rev() {
            if message
                .id
                .as_deref()
                .and_then(|id| self.position(id))
                .is_none()
            {
                self.messages.push_front(message);
            }
        }
        while self.messages.len() > MAX_KEPT {
            self.messages.pop_back();
            self.newer_dropped = true;
        }
    }
}

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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Presence {
    Online,
    Away,
    Offline,
    Unknown,
}

impl Presence {
    fn parse(state: &str) -> Self {
        match state {
            "online" => Presence::Online,
            "away" => Presence::Away,
            "offline" => Presence::Offline,
            _ => Presence::Unknown,
        }
    }

    fn order(self) -> u8 {
        match self {
            Presence::Online => 0,
            Presence::Away => 1,
            Presence::Offline => 2,
            Presence::Unknown => 3,
        }
    }
}

/// How a peer is connected, when it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Link {
    Direct,
    Relayed,
}

/// One line of the people pane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Person {
    pub(crate) name: String,
    pub(crate) presence: Presence,
    pub(crate) link: Option<Link>,
    pub(crate) owner: bool,
}

/// A room member, as `room.members` lists them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Member {
    pub(crate) name: String,
    pub(crate) owner: bool,
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

/// The input line.
#[derive(Debug, Clone, Default)]
pub(crate) struct Input {
    pub(crate) text: String,
    /// A byte offset on a character boundary.
    pub(crate) cursor: usize,
    recall: VecDeque<String>,
    recalling: Option<usize>,
}

impl Input {
    fn insert(&mut self, c: char) {
        if self.text.len() + c.len_utf8() > MAX_TEXT_LEN {
            return;
        }
        self.text.insert(self.cursor, c);
        self.cursor += c.len_utf8();
    }

    fn left(&self) -> usize {
        self.text[..self.cursor]
            .char_indices()
            .next_back()
            .map_or(0, |(at, _)| at)
    }

    fn right(&self) -> usize {
        self.text[self.cursor..]
            .chars()
            .next()
            .map_or(self.cursor, |c| self.cursor + c.len_utf8())
    }

    fn backspace(&mut self) {
        let at = self.left();
        self.text.replace_range(at..self.cursor, "");
        self.cursor = at;
    }

    fn delete(&mut self) {
        let end = self.right();
        self.text.replace_range(self.cursor..end, "");
    }

    fn delete_word(&mut self) {
        let before = &self.text[..self.cursor];
        let trimmed = before.trim_end();
        let at = trimmed.rfind(char::is_whitespace).map_or(0, |at| at + 1);
        self.text.replace_range(at..self.cursor, "");
        self.cursor = at;
    }

    fn set(&mut self, text: String) {
        self.cursor = text.len();
        self.text = text;
    }

    /// Empties the line, remembering it for recall.
    fn take(&mut self) -> String {
        let text = std::mem::take(&mut self.text);
        self.cursor = 0;
        self.recalling = None;
        if !text.trim().is_empty() && self.recall.back() != Some(&text) {
            self.recall.push_back(text.clone());
            if self.recall.len() > MAX_RECALL {
                self.recall.pop_front();
            }
        }
        text
    }

    fn recall_older(&mut self) {
        let at = match self.recalling {
            Some(0) => return,
            Some(at) => at - 1,
            None if self.recall.is_empty() => return,
            None => self.recall.len() - 1,
        };
        self.recalling = Some(at);
        let text = self.recall[at].clone();
        self.set(text);
    }

    fn recall_newer(&mut self) {
        let Some(at) = self.recalling else { return };
        if at + 1 < self.recall.len() {
            self.recalling = Some(at + 1);
            let text = self.recall[at + 1].clone();
            self.set(text);
        } else {
            self.recalling = None;
            self.set(String::new());
        }
    }
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
            quit: false,
        }
    }

    pub(crate) fn selected(&self) -> Option<&Conversation> {
        self.conversations.get(self.selected)
    }

    fn selected_mut(&mut self) -> Option<&mut Conversation> {
        self.conversations.get_mut(self.selected)
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
        self.selected = at;
        self.on_selected()
    }

    /// What a conversation needs when it comes into view.
    fn on_selected(&mut self) -> Vec<Effect> {
        let up = self.daemon == Daemon::Up;
        let Some(conv) = self.selected_mut() else {
            return Vec::new();
        };
        conv.unread = 0;
        let mut effects = Vec::new();
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
    fn total_lines(&self) -> usize {
        let Some(conv) = self.selected() else {
            return 0;
        };
        let width = usize::from(self.viewport.0);
        conv.messages
            .iter()
            .map(|m| view::message_height(m, width, self.me()))
            .sum()
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
                self.error(err);
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
                let at = self.ensure(ConvKey::Direct(to.clone()));
                let mut effects = self.select(at);
                if let Some(text) = text {
                    effects.extend(self.send(ConvKey::Direct(to), text));
                }
                effects
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
        let local = self.next_local;
        self.next_local += 1;
        let message = Message {
            id: None,
            local: Some(local),
            from: self.me().to_owned(),
            text: clean(&text),
            sent_at: self.now,
            status: Delivery::Sending,
        };
        let at = self.ensure(key.clone());
        let conv = &mut self.conversations[at];
        conv.push(message);
        conv.scroll = 0;
        let (method, params) = match &key {
            ConvKey::Direct(name) => ("send", json!({"to": name, "text": text})),
            ConvKey::Room(room) => ("room.send", json!({"room": room, "text": text})),
        };
        vec![call(method, params, Then::Sent { conv: key, local })]
    }

    // ---- answers --------------------------------------------------------------------------------

    pub(crate) fn handle_answer(
        &mut self,
        then: Then,
        result: Result<Value, String>,
    ) -> Vec<Effect> {
        match then {
            Then::Status => {
                let Ok(status) = result else {
                    return Vec::new();
                };
                self.me = status["name"].as_str().map(str::to_owned);
                let rendezvous = &status["rendezvous"];
                let state = Rendezvous {
                    connected: rendezvous["connected"].as_bool().unwrap_or(false),
                    logged_in: rendezvous["logged_in"].as_bool().unwrap_or(false),
                    error: None,
                };
                let logged_in = state.logged_in;
                self.rendezvous = Some(state);
                if logged_in {
                    return vec![call("presence", json!({"names": []}), Then::Presence)];
                }
                Vec::new()
            }
            Then::Conversations => {
                match result {
                    Ok(list) => {
                        for entry in list.as_array().into_iter().flatten() {
                            if let Some(label) = entry["conversation"].as_str() {
                                self.ensure_last(ConvKey::from_label(&clean(label)));
                            }
                        }
                    }
                    Err(err) => self.error(format!("conversations: {err}")),
                }
                self.on_selected()
            }
            Then::Rooms => {
                let Ok(list) = result else {
                    return Vec::new();
                };
                for room in list.as_array().into_iter().flatten() {
                    let Some(name) = room["room"].as_str() else {
                        continue;
                    };
                    let state = match room["state"].as_str() {
                        Some("invited") => RoomState::Invited,
                        Some("removed") => RoomState::Removed,
                        _ => RoomState::Joined,
                    };
                    let at = self.ensure_last(ConvKey::Room(clean(name)));
                    self.conversations[at].room = Some(state);
                }
                self.on_selected()
            }
            Then::Peers => {
                let Ok(list) = result else {
                    return Vec::new();
                };
                self.links.clear();
                for peer in list.as_array().into_iter().flatten() {
                    if let (Some(name), Some(link)) =
                        (peer["name"].as_str(), link(&peer["connection"]))
                    {
                        self.links.insert(name.to_owned(), link);
                    }
                }
                Vec::new()
            }
            Then::Presence => {
                // Unknown until the rendezvous is reached; the events fill it in later.
                if let Ok(list) = result {
                    for record in list.as_array().into_iter().flatten() {
                        if let (Some(name), Some(state)) =
                            (record["name"].as_str(), record["state"].as_str())
                        {
                            self.presence
                                .insert(name.to_owned(), Presence::parse(state));
                        }
                    }
                }
                Vec::new()
            }
            Then::History { conv, older } => {
                let Some(at) = self.find(&conv) else {
                    return Vec::new();
                };
                let conversation = &mut self.conversations[at];
                conversation.loading = false;
                match result {
                    Ok(list) => {
                        let page: Vec<Message> = list
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(Message::from_json)
                            .collect();
                        if older {
                            conversation.merge_older(page);
                        } else {
                            conversation.merge_latest(page);
                        }
                    }
                    // A conversation opened with /msg has no history yet: nothing to show.
                    Err(_) if !older && conversation.messages.iter().all(|m| m.id.is_none()) => {
                        conversation.loaded = true;
                        conversation.at_start = true;
                    }
                    Err(err) => {
                        conversation.loaded = true;
                        self.error(format!("history of {}: {err}", conv.label()));
                    }
                }
                Vec::new()
            }
            Then::Members { room } => {
                let Ok(list) = result else {
                    return Vec::new();
                };
                let mut members = Vec::new();
                for member in list.as_array().into_iter().flatten() {
                    let Some(name) = member["name"].as_str() else {
                        continue;
                    };
                    if let Some(state) = member["presence"].as_str() {
                        let state = Presence::parse(state);
                        if state != Presence::Unknown {
                            self.presence.insert(name.to_owned(), state);
                        }
                    }
                    members.push(Member {
                        name: clean(name),
                        owner: member["owner"].as_bool().unwrap_or(false),
                    });
                }
                self.members.insert(room, members);
                Vec::new()
            }
            Then::Sent { conv, local } => self.on_sent(conv, local, result),
            Then::Joined { room, created } => match result {
                Ok(_) => {
                    let key = ConvKey::Room(room.clone());
                    let at = self.ensure(key);
                    self.conversations[at].room = Some(RoomState::Joined);
                    self.note(if created {
                        format!("created #{room}; /invite NAME to add people")
                    } else {
                        format!("joined #{room}")
                    });
                    self.select(at)
                }
                Err(err) => {
                    self.error(err);
                    Vec::new()
                }
            },
            Then::Left { room } => match result {
                Ok(_) => {
                    if let Some(at) = self.find(&ConvKey::Room(room.clone())) {
                        self.conversations.remove(at);
                        if self.selected >= at && self.selected > 0 {
                            self.selected -= 1;
                        }
                    }
                    self.members.remove(&room);
                    self.note(format!("left #{room}"));
                    self.on_selected()
                }
                Err(err) => {
                    self.error(err);
                    Vec::new()
                }
            },
            Then::Verify => match result {
                Ok(prints) => {
                    let s = |key: &str| prints[key].as_str().unwrap_or("").to_owned();
                    self.overlay = Some(Overlay {
                        title: format!("Verify {}", s("name")),
                        lines: vec![
                            format!("{:<12} {}", s("me"), s("my_fingerprint")),
                            format!("{:<12} {}", s("name"), s("fingerprint")),
                            String::new(),
                            "Read these to each other over a channel you trust;".into(),
                            "if they match, nobody is in between.".into(),
                        ],
                    });
                    Vec::new()
                }
                Err(err) => {
                    self.error(err);
                    Vec::new()
                }
            },
            Then::Done {
                note,
                members: room,
            } => match result {
                Ok(_) => {
                    self.note(note);
                    room.map(|room| vec![members(&room)]).unwrap_or_default()
                }
                Err(err) => {
                    self.error(err);
                    Vec::new()
                }
            },
        }
    }

    fn on_sent(&mut self, key: ConvKey, local: u64, result: Result<Value, String>) -> Vec<Effect> {
        let Some(at) = self.find(&key) else {
            return Vec::new();
        };
        let conv = &mut self.conversations[at];
        let Some(pos) = conv.messages.iter().position(|m| m.local == Some(local)) else {
            return Vec::new();
        };
        match result {
            Ok(answer) => {
                let Some(id) = answer["id"].as_str().map(str::to_owned) else {
                    return Vec::new();
                };
                let mut status = Delivery::Sending;
                if let Some(answered) = answer["status"].as_str().and_then(Delivery::parse) {
                    status.advance(answered);
                }
                if let Some(early) = self.early.remove(&id) {
                    status.advance(early);
                }
                if let Some(known) = conv.position(&id) {
                    // The event stream already showed it: keep that one.
                    conv.messages[known].status.advance(status);
                    conv.messages.remove(pos);
                } else {
                    let message = &mut conv.messages[pos];
                    message.id = Some(id);
                    message.local = None;
                    message.status = status;
                }
                match key {
                    // A new contact: learn their presence.
                    ConvKey::Direct(name) if !self.presence.contains_key(&name) => {
                        vec![call("presence", json!({"names": [name]}), Then::Presence)]
                    }
                    _ => Vec::new(),
                }
            }
            Err(err) => {
                let message = &mut conv.messages[pos];
                message.local = None;
                message.status = Delivery::Failed;
                self.error(format!("not sent: {err}"));
                Vec::new()
            }
        }
    }

    // ---- daemon events ------------------------------------------------------------------------

    pub(crate) fn handle_event(&mut self, event: &Value) -> Vec<Effect> {
        match event["type"].as_str() {
            Some("message") => self.on_message(event),
            Some("delivery") => {
                let (Some(id), Some(label), Some(status)) = (
                    event["id"].as_str(),
                    event["conversation"].as_str(),
                    event["status"].as_str().and_then(Delivery::parse),
                ) else {
                    return Vec::new();
                };
                let found = self.find(&ConvKey::from_label(label)).and_then(|at| {
                    let conv = &mut self.conversations[at];
                    conv.position(id).map(|pos| &mut conv.messages[pos])
                });
                match found {
                    Some(message) => message.status.advance(status),
                    None => {
                        if self.early.len() >= MAX_EARLY {
                            self.early.clear();
                        }
                        self.early
                            .entry(id.to_owned())
                            .or_insert(Delivery::Sending)
                            .advance(status);
                    }
                }
                Vec::new()
            }
            Some("presence") => {
                if let (Some(name), Some(state)) = (event["name"].as_str(), event["state"].as_str())
                {
                    self.presence
                        .insert(name.to_owned(), Presence::parse(state));
                }
                Vec::new()
            }
            Some("connection") => {
                if let Some(name) = event["name"].as_str() {
                    match link(&event["connection"]) {
                        Some(link) => self.links.insert(name.to_owned(), link),
                        None => self.links.remove(name),
                    };
                }
                Vec::new()
            }
            Some("rendezvous") => {
                let was_in = self.rendezvous.as_ref().is_some_and(|r| r.logged_in);
                let state = Rendezvous {
                    connected: event["connected"].as_bool().unwrap_or(false),
                    logged_in: event["logged_in"].as_bool().unwrap_or(false),
                    error: event["error"].as_str().map(clean),
                };
                let now_in = state.logged_in;
                self.rendezvous = Some(state);
                if now_in && !was_in {
                    return vec![call("presence", json!({"names": []}), Then::Presence)];
                }
                Vec::new()
            }
            Some("invite") => {
                let (Some(room), from) = (event["room"].as_str(), event["from"].as_str()) else {
                    return Vec::new();
                };
                let room = clean(room);
                let at = self.ensure(ConvKey::Room(room.clone()));
                self.conversations[at].room = Some(RoomState::Invited);
                self.note(format!(
                    "{} invited you to #{room}: /join {room}",
                    clean(from.unwrap_or("someone"))
                ));
                Vec::new()
            }
            Some("removed") => {
                let Some(room) = event["room"].as_str() else {
                    return Vec::new();
                };
                if let Some(at) = self.find(&ConvKey::Room(room.to_owned())) {
                    self.conversations[at].room = Some(RoomState::Removed);
                }
                self.error(format!("you were removed from #{}", clean(room)));
                Vec::new()
            }
            // The stream dropped events: read everything again.
            Some("lagged") => {
                for conv in &mut self.conversations {
                    conv.reset();
                }
                self.reload()
            }
            _ => Vec::new(),
        }
    }

    fn on_message(&mut self, event: &Value) -> Vec<Effect> {
        let (Some(label), Some(message)) =
            (event["conversation"].as_str(), Message::from_json(event))
        else {
            return Vec::new();
        };
        let key = ConvKey::from_label(&clean(label));
        let at = self.ensure(key);
        let mine = self.me.as_deref() == Some(message.from.as_str());
        let width = usize::from(self.viewport.0);
        let height = view::message_height(&message, width, self.me());
        let selected = at == self.selected;
        let conv = &mut self.conversations[at];
        if let Some(id) = &message.id
            && let Some(pos) = conv.position(id)
        {
            conv.messages[pos].status.advance(message.status);
            return Vec::new();
        }
        if !selected && !mine {
            conv.unread += 1;
        }
        if conv.newer_dropped {
            // The bottom is re-read when the user scrolls back down to it.
            return Vec::new();
        }
        if conv.scroll > 0 {
            // Keep what the user is reading in place.
            conv.scroll += height;
        }
        conv.push(message);
        Vec::new()
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
