//! Answers to the model's calls: each [`Then`] says what its answer is for.

use serde_json::{Value, json};

use super::{
    App, ConvKey, Delivery, Effect, Member, Message, Overlay, Presence, Rendezvous, RoomState,
    Then, call, clean, link, members,
};

impl App {
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
                    // Why the rendezvous will not have us, as it said it.
                    error: rendezvous["refused"].as_str().map(str::to_owned),
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
                                let at = self.ensure_last(ConvKey::from_label(&clean(label)));
                                // What arrived while the window was closed (the daemon keeps
                                // count; its count replaces ours after a reconnect); the
                                // selected one is marked read just below, and keeps its line.
                                let selected = at == self.selected;
                                if let Some(unread) = entry["unread"].as_u64() {
                                    let conv = &mut self.conversations[at];
                                    conv.unread = usize::try_from(unread).unwrap_or(usize::MAX);
                                    if unread > 0 {
                                        conv.marker =
                                            entry["first_unread"].as_str().map(str::to_owned);
                                    } else if !selected {
                                        conv.marker = None;
                                    }
                                }
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
                    self.conversations[at].public = room["public"] == true;
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
            Then::Read => Vec::new(),
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
            Then::Opened { to, text } => match result {
                Ok(_) => self.open_direct(to, text),
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
                    let number = s("safety_number");
                    let groups: Vec<&str> = number.split(' ').collect();
                    let (first, second) = groups.split_at(groups.len() / 2);
                    let name = s("name");
                    let state = if prints["key_changed"] == true {
                        format!("{name}'s key CHANGED since you verified it: messages wait.")
                    } else if prints["verified"] == true {
                        format!("{name} is verified.")
                    } else {
                        format!("{name} is not verified.")
                    };
                    self.overlay = Some(Overlay {
                        title: format!("Safety number with {name}"),
                        lines: vec![
                            first.join(" "),
                            second.join(" "),
                            String::new(),
                            state,
                            "Compare it with theirs in person or on a call; if it".into(),
                            "matches, nobody is in between. Then mark it verified:".into(),
                            format!("palaver verify {name} --confirm"),
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
}
