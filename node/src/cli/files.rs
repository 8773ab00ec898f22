//! `send-file`, `room send-file`, `files` and `file …`: offers, accepts and follows file
//! transfers, with a progress bar (rate and ETA) on a terminal.

use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};

use super::wait::Watch;
use super::{call, print_list, print_one};
use crate::printable::printable_line;

#[derive(Debug, Subcommand)]
pub enum FileCommand {
    /// Fetch a file offered to you (accepting it if it waits for you) and follow it until it
    /// is here; prints where it went.
    Get { id: String },
    /// Accept a file that waits for you (over the auto-accept size); it is fetched in the
    /// background.
    Accept { id: String },
    /// Refuse a file offered to you, or stop fetching it.
    Reject { id: String },
    /// One file: its name, size, status and where it is.
    Info { id: String },
}

/// What the daemon is to read: an absolute path (its working directory is not ours).
fn absolute(path: &Path) -> anyhow::Result<String> {
    let path = std::path::absolute(path).with_context(|| format!("{}", path.display()))?;
    path.to_str()
        .map(str::to_owned)
        .with_context(|| format!("{} is not valid UTF-8", path.display()))
}

/// `send-file NAME PATH` (`room` set: `room send-file`): offers the file; then, with `wait`,
/// follows it until the recipient has all of it.
pub(super) async fn send_file(
    socket: &Path,
    json: bool,
    to: Result<String, String>,
    path: PathBuf,
    wait: bool,
) -> anyhow::Result<()> {
    let file = absolute(&path)?;
    let (method, params) = match &to {
        Ok(name) => ("send_file", json!({"to": name, "path": file})),
        Err(room) => ("room.send_file", json!({"room": room, "path": file})),
    };
    let watch = if wait {
        Some(Watch::open(socket).await?)
    } else {
        None
    };
    let sent = call(socket, method, params).await?;
    if let Some(warning) = sent["warning"].as_str() {
        eprintln!("warning: {}", printable_line(warning));
    }
    let id = sent["id"].as_str().unwrap_or_default().to_owned();
    if let Some(watch) = watch {
        let size = std::fs::metadata(&path).map_or(0, |m| m.len());
        let waiting = match &to {
            Ok(name) => format!("offered; waiting for {name} to fetch it"),
            Err(room) => format!("offered in #{room}; waiting for a member to fetch it"),
        };
        eprintln!("{waiting} (Ctrl-C stops waiting; the file stays offered while the daemon runs)");
        watch.follow(&id, "sending", size).await?;
    }
    print_one(json, &sent, |s| s["id"].as_str().unwrap_or("").to_owned());
    Ok(())
}

pub(super) async fn files(socket: &Path, json: bool) -> anyhow::Result<()> {
    let list = call(socket, "files", Value::Null).await?;
    print_list(json, &list, describe);
    Ok(())
}

pub(super) async fn file(socket: &Path, json: bool, command: FileCommand) -> anyhow::Result<()> {
    let answer = match command {
        FileCommand::Get { id } => {
            let watch = Watch::open(socket).await?;
            let info = call(socket, "file.info", json!({"id": id})).await?;
            let info = match info["status"].as_str() {
                Some("offered" | "failed") => {
                    call(socket, "file.accept", json!({"id": id})).await?
                }
                _ => info,
            };
            if !matches!(info["status"].as_str(), Some("done" | "rejected")) {
                if let Some(why) = info["waiting"].as_str() {
                    eprintln!("waiting to try again: {}", printable_line(why));
                }
                let size = info["size"].as_u64().unwrap_or(0);
                watch.follow(&id, "receiving", size).await?;
            }
            let info = call(socket, "file.info", json!({"id": id})).await?;
            if info["status"] == "rejected" {
                bail!("file {id} was rejected");
            }
            info
        }
        FileCommand::Accept { id } => call(socket, "file.accept", json!({"id": id})).await?,
        FileCommand::Reject { id } => call(socket, "file.reject", json!({"id": id})).await?,
        FileCommand::Info { id } => call(socket, "file.info", json!({"id": id})).await?,
    };
    print_one(json, &answer, describe);
    Ok(())
}

/// One line for a file: id, direction, status, name, size, and where it is or why not.
fn describe(file: &Value) -> String {
    let text = |key: &str| printable_line(file[key].as_str().unwrap_or(""));
    let size = palaver_protocol::wire::file::human_size(file["size"].as_u64().unwrap_or(0));
    let arrow = if file["direction"] == "sending" {
        "→"
    } else {
        "←"
    };
    let detail = match file["status"].as_str() {
        Some("done") => text("path"),
        Some("failed") => text("reason"),
        Some("fetching") => {
            let bytes =
                palaver_protocol::wire::file::human_size(file["bytes"].as_u64().unwrap_or(0));
            match file["waiting"].as_str() {
                Some(why) => format!("{bytes} so far; waiting: {}", printable_line(why)),
                None => format!("{bytes} so far"),
            }
        }
        Some("offered") if file["direction"] == "receiving" => {
            format!("`palaver file get {}` to fetch it", text("id"))
        }
        _ => String::new(),
    };
    // The whole id: `file get/accept/reject/info` take it as printed.
    format!(
        "{}  {arrow} {:<9} {} ({size})  {detail}",
        text("id"),
        text("status"),
        text("name"),
    )
}

impl Watch {
    /// Follows file `id` going `direction` until it is done (an error if it failed), with a
    /// progress bar on a terminal.
    async fn follow(mut self, id: &str, direction: &str, size: u64) -> anyhow::Result<()> {
        let bar = if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new(size);
            let style = ProgressStyle::with_template(
                "{bytes:>10}/{total_bytes} {wide_bar} {binary_bytes_per_sec} ETA {eta} {msg}",
            )?;
            bar.set_style(style);
            bar.enable_steady_tick(Duration::from_millis(250));
            bar
        } else {
            ProgressBar::hidden()
        };
        let ended = loop {
            let Some(event) = self.0.next_event().await? else {
                break Err(anyhow::anyhow!("the daemon stopped"));
            };
            if event["id"] != id {
                continue;
            }
            match event["type"].as_str() {
                Some("file_progress") if event["direction"] == direction => {
                    bar.set_position(event["bytes"].as_u64().unwrap_or(0));
                    // A relay is slower (and may cut circuits): say so while it lasts.
                    bar.set_message(match event["via"].as_str() {
                        Some("relayed") => "over the relay (direct once a hole is punched)",
                        _ => "",
                    });
                }
                Some("file_done") if event["direction"] == direction => break Ok(()),
                Some("file_failed") => {
                    let reason = printable_line(event["reason"].as_str().unwrap_or(""));
                    break Err(anyhow::anyhow!("file {id} failed: {reason}"));
                }
                _ => {}
            }
        };
        if ended.is_ok() {
            bar.set_position(size);
        }
        bar.finish_and_clear();
        ended
    }
}
