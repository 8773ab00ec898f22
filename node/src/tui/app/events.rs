//! Events from the daemon's stream: messages, delivery changes, presence, connections, the
//! rendezvous link, invitations and removals.

use serde_json::{Value, json};

use super::{
    App, ConvKey, Delivery, Effect, MAX_EARLY, Message, Presence, Rendezvous, RoomState, Then,
    call, clean, link, view,
};

impl App {
    pub(crate) fn handle_event(&mut self, event: &Value) -> Vec<Effect> {
        match event["type"].as_str() {
            Some("message") => self.on_message(event),
            Some("file_offer" | "file_progress" | "file_done" | "file_failed") => {
                self.on_file_event(event)
            }
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
            // The notice is in the conversation's history: read it again; and say so now.
            Some("key_changed") => {
                let Some(name) = event["name"].as_str().map(clean) else {
                    return Vec::new();
                };
                let at = self.ensure(ConvKey::Direct(name.clone()));
                self.conversations[at].reset();
                let wait = if event["verified"].as_bool() == Some(true) {
                    " — messages to them wait until you confirm it"
                } else {
                    ""
                };
                self.error(format!(
                    "{name}'s safety number changed{wait}: compare it with `palaver verify {name}`"
                ));
                self.reload()
            }
            // A conversation was read (here or in another window).
            Some("read") => {
                let (Some(label), Some(unread)) =
                    (event["conversation"].as_str(), event["unread"].as_u64())
                else {
                    return Vec::new();
                };
                if let Some(at) = self.find(&ConvKey::from_label(&clean(label)))
                    && at != self.selected
                {
                    let conv = &mut self.conversations[at];
                    conv.unread = usize::try_from(unread).unwrap_or(usize::MAX);
                    if conv.unread == 0 {
                        conv.marker = None;
                    }
                }
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
        let at = self.ensure(key.clone());
        let mine = self.me.as_deref() == Some(message.from.as_str());
        let width = usize::from(self.viewport.0);
        let selected = at == self.selected;
        let conv = &mut self.conversations[at];
        if let Some(id) = &message.id
            && let Some(pos) = conv.position(id)
        {
            conv.messages[pos].status.advance(message.status);
            return Vec::new();
        }
        let mut effects = Vec::new();
        if !mine {
            if selected {
                // In view: read as it arrives.
                effects.push(call(
                    "read",
                    key.read_params(message.id.as_deref()),
                    Then::Read,
                ));
            } else {
                if conv.unread == 0 {
                    conv.marker = message.id.clone();
                }
                conv.unread += 1;
                effects.extend(self.notify(&key, &message));
            }
        }
        let conv = &mut self.conversations[at];
        if conv.newer_dropped {
            // The bottom is re-read when the user scrolls back down to it.
            return effects;
        }
        conv.push(message);
        let conv = &self.conversations[at];
        if conv.scroll > 0 {
            // Keep what the user is reading in place.
            let height = view::block_height(self, conv, conv.messages.len() - 1, width);
            self.conversations[at].scroll += height;
        }
        effects
    }
}
