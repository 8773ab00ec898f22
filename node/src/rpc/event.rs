//! What `subscribe` streams: the daemon emits these typed events; they become JSON only here, at
//! the edge. Their shapes are listed for scripts in [`super::methods::EVENTS`] (and
//! docs/REFERENCE.md); debug builds check every emitted event against that table.

use serde::Serialize;
use serde_json::Value;

use crate::store::HistoryEntry;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// A message arrived (direct or in a room), or one of ours was stored.
    Message {
        id: String,
        conversation: String,
        from: String,
        text: String,
        sent_at: u64,
        status: &'static str,
    },
    /// One of our messages changed status.
    Delivery {
        id: String,
        conversation: String,
        status: &'static str,
    },
    Presence {
        name: String,
        state: &'static str,
        last_seen: Option<u64>,
    },
    /// The rendezvous gave a contact a different identity key.
    KeyChanged {
        name: String,
        old_fingerprint: String,
        new_fingerprint: String,
        verified: bool,
    },
    /// How we are connected to a peer: `direct`, `relayed` or `disconnected`.
    Connection {
        peer_id: String,
        name: Option<String>,
        connection: &'static str,
    },
    Rendezvous {
        connected: bool,
        logged_in: bool,
        /// Why it refused our login.
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    Reachability {
        public: bool,
        relays: Vec<String>,
    },
    Invite {
        room: String,
        from: String,
    },
    Removed {
        room: String,
    },
    /// A conversation's read marker moved.
    Read {
        conversation: String,
        unread: u64,
    },
    /// A file was offered to us; `accepted` when it is fetched without asking.
    FileOffer {
        id: String,
        conversation: String,
        from: String,
        name: String,
        size: u64,
        accepted: bool,
    },
    /// A file is coming in (`receiving`) or going out to a peer (`sending`); at most four a
    /// second per transfer.
    FileProgress {
        id: String,
        direction: &'static str,
        bytes: u64,
        size: u64,
        /// How we are connected to the peer it comes from (`direct`, `relayed`; receiving).
        via: Option<&'static str>,
    },
    /// A file is here whole and checked, at `path` (receiving), or a peer fetched all of it
    /// (sending).
    FileDone {
        id: String,
        direction: &'static str,
        path: Option<String>,
    },
    /// A file will not arrive (or one we offered will not be fetched), and why.
    FileFailed {
        id: String,
        reason: String,
    },
    /// A user's device list (ours under our own name) was pinned anew: `devices` devices now.
    Devices {
        name: String,
        devices: usize,
    },
    /// This subscriber fell behind and missed events.
    Lagged {
        missed: u64,
    },
}

impl Event {
    pub fn message(entry: &HistoryEntry) -> Self {
        Event::Message {
            id: entry.id.to_hex(),
            conversation: entry.label.clone(),
            from: entry.from.clone(),
            text: entry.text.clone(),
            sent_at: entry.sent_at_ms,
            status: entry.status.as_str(),
        }
    }

    /// The event as `subscribe` sends it.
    pub fn to_json(&self) -> Value {
        // Plain data with string keys: serializing cannot fail.
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every event matches its row in the table scripts read, and every row is an event.
    #[test]
    fn every_event_matches_the_documented_table() {
        let events = [
            Event::Message {
                id: "ab".into(),
                conversation: "bob".into(),
                from: "bob".into(),
                text: "hi".into(),
                sent_at: 1,
                status: "received",
            },
            Event::Delivery {
                id: "ab".into(),
                conversation: "bob".into(),
                status: "delivered",
            },
            Event::Presence {
                name: "bob".into(),
                state: "online",
                last_seen: None,
            },
            Event::KeyChanged {
                name: "bob".into(),
                old_fingerprint: "00001 00002 00003 00004 00005 00006".into(),
                new_fingerprint: "00007 00008 00009 00010 00011 00012".into(),
                verified: true,
            },
            Event::Connection {
                peer_id: "12D3".into(),
                name: None,
                connection: "direct",
            },
            Event::Rendezvous {
                connected: true,
                logged_in: false,
                error: Some("refused".into()),
            },
            Event::Rendezvous {
                connected: false,
                logged_in: false,
                error: None,
            },
            Event::Reachability {
                public: false,
                relays: vec!["/ip4/10.0.0.1/tcp/1".into()],
            },
            Event::Invite {
                room: "r".into(),
                from: "bob".into(),
            },
            Event::Removed { room: "r".into() },
            Event::Read {
                conversation: "bob".into(),
                unread: 2,
            },
            Event::FileOffer {
                id: "ab".into(),
                conversation: "#lunch".into(),
                from: "bob".into(),
                name: "menu.pdf".into(),
                size: 10,
                accepted: true,
            },
            Event::FileProgress {
                id: "ab".into(),
                direction: "receiving",
                bytes: 5,
                size: 10,
                via: Some("relayed"),
            },
            Event::FileDone {
                id: "ab".into(),
                direction: "sending",
                path: None,
            },
            Event::FileFailed {
                id: "ab".into(),
                reason: "no".into(),
            },
            Event::Devices {
                name: "bob".into(),
                devices: 2,
            },
            Event::Lagged { missed: 3 },
        ];
        let mut kinds = std::collections::BTreeSet::new();
        for event in events {
            let json = event.to_json();
            if let Err(err) = super::super::methods::check_event(&json) {
                panic!("{err}: {json}");
            }
            kinds.insert(json["type"].as_str().unwrap_or_default().to_string());
        }
        let listed: std::collections::BTreeSet<String> = super::super::methods::EVENTS
            .iter()
            .map(|event| event.kind.to_string())
            .collect();
        assert_eq!(kinds, listed, "Event variants vs EVENTS in rpc/methods.rs");
        let json = Event::Rendezvous {
            connected: true,
            logged_in: true,
            error: None,
        }
        .to_json();
        assert_eq!(
            json,
            serde_json::json!({"type": "rendezvous", "connected": true, "logged_in": true})
        );
    }
}
