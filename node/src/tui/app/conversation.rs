//! The conversations the window holds: their names, their messages and how a page read from the
//! daemon's store merges with what is already held.

use std::collections::VecDeque;

use serde_json::{Value, json};

use super::{MAX_KEPT, PAGE};

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

    /// The `read` call's params: up to message `up_to`, or everything.
    pub(super) fn read_params(&self, up_to: Option<&str>) -> Value {
        let mut params = match self {
            ConvKey::Direct(name) => json!({"with": name}),
            ConvKey::Room(room) => json!({"room": room}),
        };
        if let Some(up_to) = up_to {
            params["up_to"] = json!(up_to);
        }
        params
    }

    pub(super) fn history_params(&self, before: Option<&str>) -> Value {
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
    pub(super) fn rank(self) -> u8 {
        match self {
            Delivery::Sending => 0,
            Delivery::Sent | Delivery::Queued | Delivery::Failed => 1,
            Delivery::Delivered | Delivery::Received => 2,
        }
    }

    pub(super) fn advance(&mut self, to: Delivery) {
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
    pub(super) local: Option<u64>,
    pub(crate) from: String,
    pub(crate) text: String,
    pub(crate) sent_at: u64,
    pub(crate) status: Delivery,
}

impl Message {
    /// A history entry or `message` event; `None` if it lacks what a message needs.
    /// A line of the daemon's own ("bob's safety number changed"), not a message anyone sent.
    pub(crate) fn is_notice(&self) -> bool {
        self.from.is_empty()
    }

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

pub(super) use crate::printable::printable as clean;

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
    /// The first unread message's id: the "new messages" line goes above it.
    pub(crate) marker: Option<String>,
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
    /// A public room: anyone who knows its name can join and read it.
    pub(crate) public: bool,
}

impl Conversation {
    pub(super) fn new(key: ConvKey) -> Self {
        let room = matches!(key, ConvKey::Room(_)).then_some(RoomState::Joined);
        Self {
            key,
            messages: VecDeque::new(),
            unread: 0,
            marker: None,
            scroll: 0,
            loaded: false,
            loading: false,
            at_start: false,
            newer_dropped: false,
            room,
            public: false,
        }
    }

    pub(super) fn position(&self, id: &str) -> Option<usize> {
        self.messages
            .iter()
            .position(|m| m.id.as_deref() == Some(id))
    }

    /// The oldest message the store knows (the cursor for reading further back).
    pub(super) fn oldest_id(&self) -> Option<&str> {
        self.messages.iter().find_map(|m| m.id.as_deref())
    }

    pub(super) fn push(&mut self, message: Message) {
        self.messages.push_back(message);
        while self.messages.len() > MAX_KEPT {
            self.messages.pop_front();
            self.at_start = false;
        }
    }

    /// Forgets what is held (after a reconnect or lost events: it is all read again).
    pub(super) fn reset(&mut self) {
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
    pub(super) fn merge_latest(&mut self, page: Vec<Message>) {
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
    pub(super) fn merge_older(&mut self, page: Vec<Message>) {
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
