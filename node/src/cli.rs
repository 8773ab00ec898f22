//! The command line (`palaver …`): parse, then carry out one command — most of them as one call
//! to the running daemon's control socket.

use crate::printable::printable_line;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand};
use palaver_protocol::UserName;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

mod daemon_args;
mod devices;
mod files;
mod input;

use crate::access::{self, Source};
use crate::daemon;
use crate::home::Home;
use crate::rpc::{Client, RpcError};
use crate::store::{Store, StoreError};

mod wait;

#[derive(Debug, Parser)]
#[command(
    name = "palaver",
    version,
    about = "A peer-to-peer messenger with end-to-end encryption"
)]
pub struct Cli {
    /// Where the identity, history and control socket live [default: ~/.local/share/palaver].
    #[arg(long, global = true, env = "PALAVER_HOME")]
    pub home: Option<PathBuf>,
    /// A file whose first line is the passphrase of the identity key (or set PALAVER_PASSPHRASE).
    #[arg(long, global = true)]
    pub passphrase_file: Option<PathBuf>,
    /// Print JSON (one object, or one object per line for lists and streams).
    #[arg(long, global = true)]
    pub json: bool,
    /// How log lines on stderr look; the level comes from RUST_LOG (default: info for the
    /// daemon, warn otherwise).
    #[arg(
        long,
        global = true,
        env = "PALAVER_LOG_FORMAT",
        value_enum,
        default_value_t
    )]
    pub log_format: palaver_rendezvous::logging::LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create an identity in --home: a new account (--name), or a new device of an account
    /// (--link CODE, from `palaver device link` on the account's first device).
    Init {
        /// Your user name at the rendezvous: [a-z0-9_.-], 1 to 32 characters.
        #[arg(long, required_unless_present = "link", conflicts_with = "link")]
        name: Option<String>,
        /// Replace an existing identity (its key is lost).
        #[arg(long)]
        force: bool,
        /// Link this new device to an account, with the code `palaver device link` printed.
        #[arg(long, value_name = "CODE")]
        link: Option<String>,
        /// What to call this device in `palaver device list` [default: the host name].
        #[arg(long, requires = "link")]
        label: Option<String>,
        /// Bring over the last N messages of each direct conversation and room (at most 1000;
        /// when they do not all fit in one link message, the oldest are left out).
        #[arg(long, requires = "link", value_name = "N", default_value_t = 0)]
        history: u32,
    },
    /// Show this identity: name, peer id, fingerprint.
    Whoami,
    /// Run the daemon: log in at the rendezvous and keep this user reachable.
    Daemon(daemon_args::DaemonArgs),
    /// The daemon's state: rendezvous connection, listen addresses.
    Status {
        /// Wait (up to a minute) for the daemon to start and log in at the rendezvous.
        #[arg(long)]
        wait: bool,
    },
    /// Send a direct message; prints its id.
    Send {
        name: String,
        /// The text; `-` reads it from stdin.
        #[arg(required_unless_present = "file", allow_hyphen_values = true)]
        text: Option<String>,
        /// Read the text from a file (at most 64 KiB).
        #[arg(long, conflicts_with = "text")]
        file: Option<PathBuf>,
        /// A key of your own for this send: repeating a send with the same --id (after an
        /// interrupted one, say) sends nothing new and prints the first one's id.
        #[arg(long)]
        id: Option<String>,
        /// Return only once it is delivered or queued in the recipient's mailbox (up to a minute).
        #[arg(long)]
        wait: bool,
    },
    /// Offer a file to a user, end-to-end encrypted; they fetch it from you. Follows it until
    /// they have it on a terminal (or with --wait).
    SendFile {
        name: String,
        path: PathBuf,
        /// Follow the transfer until the recipient has the whole file.
        #[arg(long, conflicts_with = "no_wait")]
        wait: bool,
        /// Return once the offer is stored, even on a terminal.
        #[arg(long)]
        no_wait: bool,
    },
    /// Files offered to you or by you, newest first.
    Files,
    /// One file offered to you: get (fetch and follow), accept, reject, info.
    #[command(subcommand)]
    File(files::FileCommand),
    /// Rooms: create, invite, join, leave, kick, members, list, send, send-file.
    #[command(subcommand)]
    Room(RoomCommand),
    /// A conversation's messages, oldest first.
    History {
        #[arg(long, conflicts_with = "room", required_unless_present = "room")]
        with: Option<String>,
        #[arg(long)]
        room: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Presence of contacts (or of the given users).
    Presence { names: Vec<String> },
    /// Conversations, most recent first, with their last message.
    Conversations,
    /// Connected peers and how (direct or relayed).
    Peers,
    /// Print events (messages, delivery changes, presence) as they happen.
    Listen,
    /// This account's devices: link a new one, list them, revoke one.
    #[command(subcommand)]
    Device(devices::DeviceCommand),
    /// Show the safety number with a user, to compare out of band (in person, on a call).
    Verify {
        name: String,
        /// It matched: mark the contact verified (after a key change: accept the new key).
        #[arg(long)]
        confirm: bool,
    },
    /// The terminal chat window.
    Chat,
    /// Run the scripted demo on loopback: a rendezvous and three peers in this process.
    #[cfg(feature = "rendezvous-server")]
    Demo {
        /// After the first scripted steps, open the chat window as alice (bob and carol answer).
        #[arg(long)]
        interactive: bool,
    },
    /// Print shell completions.
    Completions { shell: clap_complete::Shell },
}

#[derive(Debug, Subcommand)]
pub enum RoomCommand {
    /// Create a room; you own it. --public: anyone who knows the name may join and read.
    Create {
        room: String,
        #[arg(long)]
        public: bool,
    },
    /// Invite a user (owner only).
    Invite { room: String, name: String },
    /// Accept an invitation (or join a public room with --public).
    Join {
        room: String,
        #[arg(long)]
        public: bool,
    },
    /// Leave a room.
    Leave { room: String },
    /// Remove a member (owner only); everyone's keys rotate.
    Kick { room: String, name: String },
    /// The members of a room.
    Members { room: String },
    /// Your rooms and invitations.
    List,
    /// Send a message to a room.
    Send {
        room: String,
        /// The text; `-` reads it from stdin.
        #[arg(required_unless_present = "file", allow_hyphen_values = true)]
        text: Option<String>,
        /// Read the text from a file (at most 64 KiB).
        #[arg(long, conflicts_with = "text")]
        file: Option<PathBuf>,
    },
    /// Offer a file to a room: each member fetches it from you or from a member that has it.
    SendFile {
        room: String,
        path: PathBuf,
        /// Follow the upload until a member has fetched all of it.
        #[arg(long)]
        wait: bool,
    },
}

/// `<home>/config.toml`: what `daemon` remembers between runs.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Config {
    /// One address, or a list of instances to fail over between (`rendezvous = ["…", "…"]`).
    #[serde(default, with = "one_or_many", skip_serializing_if = "Vec::is_empty")]
    pub rendezvous: Vec<String>,
    #[serde(default)]
    pub listen: Vec<String>,
    pub registration_token: Option<String>,
    /// How the chat window tells of new messages: `[notifications] bell = true, desktop = false`.
    #[serde(default)]
    pub notifications: crate::tui::Notifications,
}

impl Config {
    fn path(home: &Path) -> PathBuf {
        home.join("config.toml")
    }

    pub fn load(home: &Path) -> anyhow::Result<Self> {
        match std::fs::read_to_string(Self::path(home)) {
            Ok(text) => toml::from_str(&text)
                .with_context(|| format!("reading {}", Self::path(home).display())),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(err) => Err(err).with_context(|| format!("reading {}", Self::path(home).display())),
        }
    }

    pub fn save(&self, home: &Path) -> anyhow::Result<()> {
        std::fs::write(Self::path(home), toml::to_string_pretty(self)?)
            .with_context(|| format!("writing {}", Self::path(home).display()))
    }
}

/// `rendezvous = "…"` (as older versions wrote it) or `rendezvous = ["…", "…"]`; one address is
/// written back as a plain string.
mod one_or_many {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }

    pub(super) fn serialize<S: Serializer>(list: &[String], to: S) -> Result<S::Ok, S::Error> {
        match list {
            [one] => one.serialize(to),
            many => many.serialize(to),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(from: D) -> Result<Vec<String>, D::Error> {
        Ok(match OneOrMany::deserialize(from)? {
            OneOrMany::One(one) => vec![one],
            OneOrMany::Many(many) => many,
        })
    }
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run_async(cli))
}

async fn run_async(cli: Cli) -> anyhow::Result<()> {
    let home = Home::new(cli.home.clone().unwrap_or_else(Home::default_dir));
    let passphrase = passphrase(&cli)?;
    let json = cli.json;
    let socket = home.dir().join("palaver.sock");
    match cli.command {
        Command::Init {
            link: Some(code),
            label,
            history,
            force,
            ..
        } => {
            let passphrase = passphrase.as_deref();
            devices::init_linked(&home, &code, label, history, passphrase, force).await?
        }
        Command::Init { name, force, .. } => {
            let name: UserName = name.unwrap_or_default().parse()?;
            let identity = home.init(name.clone(), passphrase.as_deref(), force)?;
            out(format_args!("created {name} in {}", home.dir().display()));
            out(format_args!("peer id      {}", identity.peer_id()));
            out(format_args!("fingerprint  {}", identity.fingerprint()));
        }
        Command::Whoami => {
            let (identity, name) = home.open(passphrase.as_deref())?;
            let me = json!({
                "name": name.as_str(),
                "peer_id": identity.peer_id().to_string(),
                "fingerprint": identity.fingerprint().to_string(),
            });
            print_one(json, &me, |me| {
                format!(
                    "name         {}\npeer id      {}\nfingerprint  {}",
                    me["name"].as_str().unwrap_or(""),
                    me["peer_id"].as_str().unwrap_or(""),
                    me["fingerprint"].as_str().unwrap_or("")
                )
            });
        }
        Command::Daemon(args) => {
            let config = args.into_config(&home, passphrase)?;
            daemon::run(config, shutdown_signal()).await?;
        }
        Command::Status { wait } => {
            let status = if wait {
                wait::until_logged_in(&socket).await?
            } else {
                call(&socket, "status", Value::Null).await?
            };
            print_one(json, &status, |s| {
                let rv = &s["rendezvous"];
                let state = match (rv["connected"].as_bool(), rv["logged_in"].as_bool()) {
                    (_, Some(true)) => "logged in".to_owned(),
                    _ if rv["refused"].is_string() => format!(
                        "refused: {}\n            {}",
                        rv["refused"].as_str().unwrap_or(""),
                        rv["hint"].as_str().unwrap_or("")
                    ),
                    (Some(true), _) => "connected, logging in".to_owned(),
                    _ => "not connected".to_owned(),
                };
                let listen: Vec<&str> = s["listen"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                format!(
                    "{} ({})\nrendezvous  {} — {state}\nlistening   {}\noutbox      {} message(s) waiting",
                    s["name"].as_str().unwrap_or(""),
                    s["peer_id"].as_str().unwrap_or(""),
                    rv["address"].as_str().unwrap_or(""),
                    listen.join("\n            "),
                    s["outbox"],
                )
            });
        }
        Command::Send {
            name,
            text,
            file,
            id,
            wait,
        } => {
            let text = input::message_text(text, file.as_deref())?;
            let mut params = json!({"to": name, "text": text});
            if let Some(id) = id {
                params["client_id"] = Value::from(id);
            }
            let watch = if wait {
                Some(wait::Watch::open(&socket).await?)
            } else {
                None
            };
            let sent = call(&socket, "send", params).await?;
            if let Some(warning) = sent["warning"].as_str() {
                eprintln!("warning: {}", printable_line(warning));
            }
            if let (Some(watch), Some(id)) = (watch, sent["id"].as_str()) {
                watch.settled(id).await?;
            }
            print_one(json, &sent, |s| s["id"].as_str().unwrap_or("").to_owned());
        }
        Command::SendFile {
            name,
            path,
            wait,
            no_wait,
        } => {
            let wait = wait || !no_wait && std::io::IsTerminal::is_terminal(&std::io::stderr());
            files::send_file(&socket, json, Ok(name), path, wait).await?
        }
        Command::Files => files::files(&socket, json).await?,
        Command::File(command) => files::file(&socket, json, command).await?,
        Command::Room(command) => room(&socket, json, command).await?,
        Command::Device(command) => devices::device(&socket, json, command).await?,
        Command::History { with, room, limit } => {
            let params = json!({"with": with, "room": room, "limit": limit});
            let entries = read_call(&home, "history", params, |store| {
                daemon::calls::history(store, with.as_deref(), room.as_deref(), limit)
            })
            .await?;
            print_list(json, &entries, |e| {
                let gap = match e["missing_before"].as_u64() {
                    Some(n) => format!(
                        "  ({n} earlier message(s) from {} not received yet)\n",
                        e["from"].as_str().unwrap_or("")
                    ),
                    None => String::new(),
                };
                let shown = |key: &str| printable_line(e[key].as_str().unwrap_or(""));
                if e["notice"].as_bool() == Some(true) {
                    return format!(
                        "{} {:>10}  -- {}",
                        crate::localtime::clock(e["sent_at"].as_u64().unwrap_or(0)),
                        shown("conversation"),
                        shown("text"),
                    );
                }
                gap + &format!(
                    "{} {:>10}  {}: {}  [{}]",
                    crate::localtime::clock(e["sent_at"].as_u64().unwrap_or(0)),
                    shown("conversation"),
                    shown("from"),
                    shown("text"),
                    e["status"].as_str().unwrap_or(""),
                )
            });
        }
        Command::Presence { names } => {
            let records = call(&socket, "presence", json!({"names": names})).await?;
            print_list(json, &records, |r| {
                let seen = r["last_seen"]
                    .as_u64()
                    .map(|ms| format!("last seen {}", crate::localtime::clock(ms)))
                    .unwrap_or_default();
                let stale = if r["stale"].as_bool() == Some(true) {
                    "  (stale: the rendezvous is unreachable; last known)"
                } else {
                    ""
                };
                format!(
                    "{:<16} {:<8} {seen}{stale}",
                    r["name"].as_str().unwrap_or(""),
                    r["state"].as_str().unwrap_or("")
                )
            });
        }
        Command::Conversations => {
            let list = read_call(&home, "conversations", Value::Null, |store| {
                daemon::calls::conversations(store)
            })
            .await?;
            print_list(json, &list, |c| {
                let unread = match c["unread"].as_u64() {
                    Some(n) if n > 0 => format!("{n} unread"),
                    _ => String::new(),
                };
                format!(
                    "{} {:<20} {:<8} {}: {}",
                    crate::localtime::clock(c["last_at"].as_u64().unwrap_or(0)),
                    printable_line(c["conversation"].as_str().unwrap_or("")),
                    unread,
                    printable_line(c["last_from"].as_str().unwrap_or("")),
                    printable_line(c["last_text"].as_str().unwrap_or("")),
                )
            });
        }
        Command::Peers => {
            let peers = call(&socket, "peers", Value::Null).await?;
            print_list(json, &peers, |p| {
                format!(
                    "{:<16} {:<8} {}  {}",
                    p["name"].as_str().unwrap_or("?"),
                    p["connection"].as_str().unwrap_or(""),
                    p["peer_id"].as_str().unwrap_or(""),
                    p["addr"].as_str().unwrap_or(""),
                )
            });
        }
        Command::Listen => {
            let mut client = Client::connect(&socket).await?;
            client.subscribe().await?;
            // From here no event is missed: a script that starts `listen` in the background can
            // wait for this line on stderr before it acts.
            eprintln!("listening");
            while let Some(event) = client.next_event().await? {
                if json {
                    out(&event);
                } else {
                    out(describe_event(&event));
                }
            }
            // A bot reading this must notice: the stream ended because the daemon went away.
            anyhow::bail!("the daemon stopped; no more events");
        }
        Command::Verify { name, confirm } => {
            let params = json!({"name": name, "confirm": confirm});
            let answer = call(&socket, "verify", params).await?;
            print_one(json, &answer, |a| describe_verify(a, confirm));
        }
        Command::Chat => {
            let notifications = Config::load(home.dir())?.notifications;
            crate::tui::run(&socket, notifications).await?
        }
        #[cfg(feature = "rendezvous-server")]
        Command::Demo { interactive } => crate::demo::run(interactive).await?,
        Command::Completions { shell } => {
            // Into a buffer first: clap_complete panics on a failed write (a closed pipe).
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "palaver", &mut script);
            write_out(|stdout| stdout.write_all(&script));
        }
    }
    Ok(())
}

async fn room(socket: &Path, json: bool, command: RoomCommand) -> anyhow::Result<()> {
    let (method, params) = match &command {
        RoomCommand::SendFile { room, path, wait } => {
            let to = Err(room.clone());
            return files::send_file(socket, json, to, path.clone(), *wait).await;
        }
        RoomCommand::Create { room, public } => {
            ("room.create", json!({"room": room, "public": public}))
        }
        RoomCommand::Invite { room, name } => ("room.invite", json!({"room": room, "name": name})),
        RoomCommand::Join { room, public } => {
            ("room.join", json!({"room": room, "public": public}))
        }
        RoomCommand::Leave { room } => ("room.leave", json!({"room": room})),
        RoomCommand::Kick { room, name } => ("room.kick", json!({"room": room, "name": name})),
        RoomCommand::Members { room } => ("room.members", json!({"room": room})),
        RoomCommand::List => ("room.list", Value::Null),
        RoomCommand::Send { room, text, file } => {
            let text = input::message_text(text.clone(), file.as_deref())?;
            ("room.send", json!({"room": room, "text": text}))
        }
    };
    let answer = call(socket, method, params).await?;
    match command {
        RoomCommand::Members { .. } => print_list(json, &answer, |m| {
            let owner = if m["owner"].as_bool() == Some(true) {
                " (owner)"
            } else {
                ""
            };
            format!(
                "{}{owner}  {}",
                m["name"].as_str().unwrap_or(""),
                m["presence"].as_str().unwrap_or("")
            )
        }),
        RoomCommand::List => print_list(json, &answer, |r| {
            let public = if r["public"].as_bool() == Some(true) {
                "public"
            } else {
                "private"
            };
            format!(
                "{:<20} {:<8} {:<8} {} member(s)",
                r["room"].as_str().unwrap_or(""),
                r["state"].as_str().unwrap_or(""),
                public,
                r["members"]
            )
        }),
        RoomCommand::Send { .. } => {
            print_one(json, &answer, |s| s["id"].as_str().unwrap_or("").to_owned())
        }
        // A public room says what it is: open to anyone who knows its name.
        _ => print_one(json, &answer, |a| {
            if a["public"].as_bool() == Some(true) {
                "ok: a public room; anyone who knows its name can join and read it".to_owned()
            } else {
                "ok".to_owned()
            }
        }),
    }
    Ok(())
}

/// A read-only call: answered by the daemon when one runs (or once one that is starting
/// answers), else by `offline` from the store itself — never in a way that keeps a starting
/// daemon from opening its store (see [`access`]).
async fn read_call(
    home: &Home,
    method: &str,
    params: Value,
    offline: impl Fn(&Store) -> Result<Vec<Value>, RpcError>,
) -> anyhow::Result<Value> {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        match access::offline_or_daemon(home.dir()).await? {
            Source::Daemon(mut client) => return Ok(client.call(method, params).await?),
            Source::Offline(_reading) => match Store::open(&home.dir().join("store")) {
                Ok(store) => return Ok(Value::Array(offline(&store)?)),
                // A daemon that has just stopped can hold sled's own lock a moment longer.
                Err(StoreError::Locked) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
                Err(err) => return Err(err.into()),
            },
        }
    }
}

async fn call(socket: &Path, method: &str, params: Value) -> anyhow::Result<Value> {
    let mut client = Client::connect(socket).await?;
    Ok(client.call(method, params).await?)
}

fn print_one(json: bool, value: &Value, human: impl Fn(&Value) -> String) {
    if json {
        out(value);
    } else {
        out(human(value));
    }
}

/// Prints one line to stdout. A reader that went away (`palaver history | head -1`) ends the
/// command quietly with success, as it does for other Unix tools, instead of a panic.
fn out(line: impl std::fmt::Display) {
    write_out(|stdout| writeln!(stdout, "{line}"));
}

fn write_out(write: impl FnOnce(&mut std::io::StdoutLock<'_>) -> std::io::Result<()>) {
    let mut stdout = std::io::stdout().lock();
    match write(&mut stdout).and_then(|()| stdout.flush()) {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(err) => {
            eprintln!("error: cannot write to stdout: {err}");
            std::process::exit(1);
        }
    }
}

/// Lists print one JSON object per line with --json (JSON lines), one human line each otherwise.
fn print_list(json: bool, values: &Value, human: impl Fn(&Value) -> String) {
    for value in values.as_array().into_iter().flatten() {
        print_one(json, value, &human);
    }
}

/// One `listen` event as a line for people (text from the network made printable).
/// `verify` for people: the number in two rows, what the state is, what to do next.
fn describe_verify(answer: &Value, confirmed: bool) -> String {
    let s = |key: &str| printable_line(answer[key].as_str().unwrap_or(""));
    let number = s("safety_number");
    let groups: Vec<&str> = number.split(' ').collect();
    let (first, second) = groups.split_at(groups.len() / 2);
    let name = s("name");
    let state = if confirmed {
        format!("{name} is now verified.")
    } else if answer["key_changed"].as_bool() == Some(true) {
        format!(
            "{name}'s key CHANGED since you verified it; messages to {name} wait. If the number \
             above matches {name}'s, accept it: palaver verify {name} --confirm"
        )
    } else if answer["verified"].as_bool() == Some(true) {
        format!("{name} is verified.")
    } else {
        format!(
            "{name} is not verified. Compare this number with {name}'s (in person or on a call); \
             if it matches, nobody is in between: palaver verify {name} --confirm"
        )
    };
    format!(
        "Safety number with {name}:\n  {}\n  {}\n{state}",
        first.join(" "),
        second.join(" ")
    )
}

fn describe_event(event: &Value) -> String {
    let s = |key: &str| printable_line(event[key].as_str().unwrap_or(""));
    match event["type"].as_str() {
        Some("message") => format!(
            "{} {}  {}: {}",
            crate::localtime::clock(event["sent_at"].as_u64().unwrap_or(0)),
            s("conversation"),
            s("from"),
            s("text")
        ),
        Some("delivery") => format!("{} → {}", &s("id")[..12.min(s("id").len())], s("status")),
        Some("presence") => format!("{} is {}", s("name"), s("state")),
        Some("read") => format!("{} read, {} unread", s("conversation"), event["unread"]),
        Some("connection") => format!(
            "{} is {}",
            event["name"].as_str().unwrap_or(&s("peer_id")),
            s("connection")
        ),
        Some("invite") => format!(
            "{} invited you to {} — `palaver room join {}`",
            s("from"),
            s("room"),
            s("room")
        ),
        Some("removed") => format!("you were removed from {}", s("room")),
        Some("devices") => format!("{} has {} device(s) now", s("name"), event["devices"]),
        Some("key_changed") => format!(
            "{}'s safety number changed ({} → {}); compare it: palaver verify {}",
            s("name"),
            s("old_fingerprint"),
            s("new_fingerprint"),
            s("name")
        ),
        _ => event.to_string(),
    }
}

/// The one line `error: …` shows: each cause in the chain once. A wrapper whose message already
/// quotes its source (`store: {0}`, an RPC error carried as is) would otherwise repeat it
/// (`error: empty message: empty message`).
pub fn error_line(err: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        let text = text.trim();
        if text.is_empty() || line.contains(text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(text);
    }
    // A refusal can quote the server verbatim: it reaches the terminal made printable too.
    printable_line(&line)
}

fn passphrase(cli: &Cli) -> anyhow::Result<Option<String>> {
    if let Some(path) = &cli.passphrase_file {
        return input::passphrase_file(path).map(Some);
    }
    match std::env::var("PALAVER_PASSPHRASE") {
        Ok(passphrase) if passphrase.is_empty() => {
            anyhow::bail!("PALAVER_PASSPHRASE is set but empty; unset it or give the passphrase")
        }
        Ok(passphrase) => Ok(Some(passphrase)),
        Err(_) => Ok(None),
    }
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn config_toml_keeps_one_rendezvous_as_a_string_and_several_as_a_list() {
        // As older versions wrote it.
        let old: Config = toml::from_str("rendezvous = \"/ip4/10.0.0.1/tcp/4001\"\n").unwrap();
        assert_eq!(old.rendezvous, ["/ip4/10.0.0.1/tcp/4001"]);
        assert!(
            toml::to_string(&old)
                .unwrap()
                .contains("rendezvous = \"/ip4/10.0.0.1/tcp/4001\"")
        );
        let several = Config {
            rendezvous: vec![
                "/ip4/10.0.0.1/tcp/4001".into(),
                "/ip4/10.0.0.2/tcp/4001".into(),
            ],
            ..Config::default()
        };
        let text = toml::to_string(&several).unwrap();
        let back: Config = toml::from_str(&text).unwrap();
        assert_eq!(back.rendezvous, several.rendezvous);
        let none: Config = toml::from_str("").unwrap();
        assert!(none.rendezvous.is_empty());
        assert!(!toml::to_string(&none).unwrap().contains("rendezvous"));
    }
}
