//! Files in the chat window: `/file PATH` offers one to the selected conversation, `/get [ID]`
//! fetches one offered to you (by default the latest waiting), and the status line follows
//! transfers as they go (`file_*` events).

use std::collections::BTreeMap;
use std::path::PathBuf;

use palaver_protocol::wire::file::human_size;
use serde_json::{Value, json};

use super::{App, ConvKey, Delivery, Effect, Message, Then, call, clean};

/// Transfers the window follows at once, at most (the oldest finished ones go first).
const MAX_FOLLOWED: usize = 64;

/// A transfer the window heard of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Transfer {
    pub(crate) name: String,
    pub(crate) from: String,
    pub(crate) size: u64,
    pub(crate) bytes: u64,
    /// Waiting for `/get`.
    pub(crate) waiting: bool,
    pub(crate) finished: bool,
    /// The order it was heard of in.
    order: u64,
}

/// The transfers the window follows, by file id.
#[derive(Debug, Default)]
pub(crate) struct Transfers {
    by_id: BTreeMap<String, Transfer>,
    heard: u64,
}

impl Transfers {
    fn insert(&mut self, id: &str, mut transfer: Transfer) {
        if self.by_id.len() >= MAX_FOLLOWED
            && let Some(oldest) = (self.by_id.iter())
                .filter(|(_, t)| t.finished || t.waiting)
                .min_by_key(|(_, t)| t.order)
                .map(|(id, _)| id.clone())
        {
            self.by_id.remove(&oldest);
        }
        if self.by_id.len() < MAX_FOLLOWED {
            self.heard += 1;
            transfer.order = self.heard;
            self.by_id.insert(id.to_owned(), transfer);
        }
    }

    /// The id of the file `/get` means: the one whose id starts with `prefix`, or the latest
    /// waiting one.
    fn pick(&self, prefix: Option<&str>) -> Result<String, String> {
        match prefix {
            Some(prefix) => {
                let mut matching = self.by_id.keys().filter(|id| id.starts_with(prefix));
                match (matching.next(), matching.next()) {
                    (Some(id), None) => Ok(id.clone()),
                    (Some(_), Some(_)) => Err(format!("more than one file starts with {prefix}")),
                    // Not heard of in this window: the daemon may still know it.
                    (None, _) => Ok(prefix.to_owned()),
                }
            }
            None => (self.by_id.iter())
                .filter(|(_, t)| t.waiting)
                .max_by_key(|(_, t)| t.order)
                .map(|(id, _)| id.clone())
                .ok_or_else(|| "no file waits for you; /get ID names one".to_owned()),
        }
    }
}

/// `~/…` and relative paths made absolute, as the daemon needs them.
fn absolute(typed: &str) -> Option<PathBuf> {
    let path = match typed.strip_prefix("~/") {
        Some(rest) => PathBuf::from(std::env::var_os("HOME")?).join(rest),
        None => PathBuf::from(typed),
    };
    std::path::absolute(path).ok()
}

impl App {
    /// `/file PATH`: shown at once as a file message (sending), offered by the daemon.
    pub(super) fn send_file(&mut self, typed: &str) -> Vec<Effect> {
        let Some(key) = self.selected().map(|conv| conv.key.clone()) else {
            self.error("no conversation yet: /msg NAME, or /join ROOM, then /file PATH");
            return Vec::new();
        };
        let Some(path) = absolute(typed) else {
            self.error(format!("cannot make sense of the path {typed}"));
            return Vec::new();
        };
        let (name, size) = match (path.file_name(), std::fs::metadata(&path)) {
            (Some(name), Ok(meta)) if meta.is_file() => (name.to_string_lossy(), meta.len()),
            (_, Ok(_)) => {
                self.error(format!("{} is not a file", path.display()));
                return Vec::new();
            }
            (_, Err(err)) => {
                self.error(format!("{}: {err}", path.display()));
                return Vec::new();
            }
        };
        let text = format!("[file] {name} ({})", human_size(size));
        let path = path.to_string_lossy().into_owned();
        let (method, params) = match &key {
            ConvKey::Direct(to) => ("send_file", json!({"to": to, "path": path})),
            ConvKey::Room(room) => ("room.send_file", json!({"room": room, "path": path})),
        };
        let local = self.show_sending(key.clone(), text);
        self.note(format!("offering {}…", clean(&name)));
        vec![call(method, params, Then::Sent { conv: key, local })]
    }

    /// Shows a message of mine at once, as sending; its local number, until the daemon names it.
    pub(super) fn show_sending(&mut self, key: ConvKey, text: String) -> u64 {
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
        let at = self.ensure(key);
        let conv = &mut self.conversations[at];
        conv.push(message);
        conv.scroll = 0;
        local
    }

    /// `/get [ID]`: fetch a file offered to me.
    pub(super) fn get_file(&mut self, prefix: Option<&str>) -> Vec<Effect> {
        match self.transfers.pick(prefix) {
            Ok(id) => {
                let note = match self.transfers.by_id.get_mut(&id) {
                    Some(transfer) => {
                        transfer.waiting = false;
                        format!("fetching {}", clean(&transfer.name))
                    }
                    None => format!("fetching file {id}"),
                };
                vec![call(
                    "file.accept",
                    json!({"id": id}),
                    Then::Done {
                        note,
                        members: None,
                    },
                )]
            }
            Err(err) => {
                self.error(err);
                Vec::new()
            }
        }
    }

    /// A `file_*` event: the status line says how the transfer goes.
    pub(super) fn on_file_event(&mut self, event: &Value) -> Vec<Effect> {
        let Some(id) = event["id"].as_str() else {
            return Vec::new();
        };
        let text = |key: &str| clean(event[key].as_str().unwrap_or(""));
        match event["type"].as_str() {
            Some("file_offer") => {
                let waiting = event["accepted"] == false;
                let transfer = Transfer {
                    name: text("name"),
                    from: text("from"),
                    size: event["size"].as_u64().unwrap_or(0),
                    bytes: 0,
                    waiting,
                    finished: false,
                    order: 0,
                };
                let offer = format!(
                    "{} offers {} ({})",
                    transfer.from,
                    transfer.name,
                    human_size(transfer.size)
                );
                self.transfers.insert(id, transfer);
                if waiting {
                    self.note(format!("{offer}: /get to fetch it"));
                } else {
                    self.note(format!("{offer}: fetching"));
                }
            }
            Some("file_progress") => {
                let (bytes, size) = (event["bytes"].as_u64().unwrap_or(0), event["size"].as_u64());
                let line = match self.transfers.by_id.get_mut(id) {
                    Some(transfer) => {
                        transfer.bytes = bytes;
                        let what = if event["direction"] == "sending" {
                            format!("→ {}", transfer.name)
                        } else if event["via"] == "relayed" {
                            format!("← {} from {} over the relay", transfer.name, transfer.from)
                        } else {
                            format!("← {} from {}", transfer.name, transfer.from)
                        };
                        progress_line(&what, bytes, transfer.size)
                    }
                    None => progress_line("→ file", bytes, size.unwrap_or(0)),
                };
                self.note(line);
            }
            Some("file_done") => {
                let name = (self.transfers.by_id.get_mut(id)).map(|transfer| {
                    transfer.finished = true;
                    transfer.name.clone()
                });
                let name = name.unwrap_or_else(|| "the file".to_owned());
                match event["path"].as_str() {
                    Some(path) => self.note(format!("{name} is here: {}", clean(path))),
                    None => self.note(format!("{name} was fetched whole")),
                }
            }
            Some("file_failed") => {
                if let Some(transfer) = self.transfers.by_id.get_mut(id) {
                    transfer.finished = true;
                }
                let short = id.get(..12).unwrap_or(id);
                self.error(format!("file {short}: {}", text("reason")));
            }
            _ => {}
        }
        Vec::new()
    }
}

/// `← menu.pdf from bob  45%  3.1 MiB of 6.9 MiB`.
fn progress_line(what: &str, bytes: u64, size: u64) -> String {
    let percent = (bytes.saturating_mul(100)).checked_div(size).unwrap_or(100);
    format!(
        "{what}  {percent}%  {} of {}",
        human_size(bytes),
        human_size(size)
    )
}

#[cfg(test)]
pub(super) fn waiting_file(app: &App) -> Option<String> {
    app.transfers.pick(None).ok()
}
