//! `palaver device link | list | revoke`, and `palaver init --link CODE` on the new device.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;
use palaver_protocol::crypto::link::{Direction, LinkCode, LinkRequest};
use palaver_protocol::identity::devices::{DevicePin, valid_label};
use palaver_protocol::node::devices::{LinkGrant, LinkedConversation};
use palaver_protocol::node::rooms::Room;
use palaver_protocol::wire::RendezvousRequest;
use palaver_protocol::wire::RendezvousResponse;
use palaver_protocol::wire::rendezvous::SealedLink;
use palaver_protocol::{Identity, codec};
use palaver_rendezvous::client::Client;
use rand_core::OsRng;
use serde_json::{Value, json};

use super::{call, out, print_list, print_one};
use crate::home::Home;
use crate::store::{ConversationId, HistoryEntry, StateBatch, StateKey, Status, Store};

#[derive(Debug, Subcommand)]
pub enum DeviceCommand {
    /// Link a new device to this account: prints a one-line code for `palaver init --link CODE`
    /// on the new device, then waits (up to five minutes) for it and asks before adding it.
    Link {
        /// Print the code and return; the device that uses it is added without asking.
        #[arg(long)]
        no_wait: bool,
        /// Add the device that uses the code without asking (for scripts).
        #[arg(long, conflicts_with = "no_wait")]
        yes: bool,
    },
    /// This account's devices; with a name, that contact's devices your messages go to.
    List {
        /// A contact: the devices of theirs your messages are sealed for.
        name: Option<String>,
    },
    /// Take a device off this account: it is logged out, and gets nothing new once your contacts
    /// hear of it (at once if they are online, else at their next login).
    Revoke {
        /// Its label, or the first 8 or more hex digits of its key (see `palaver device list`).
        device: String,
    },
}

pub(super) async fn device(
    socket: &Path,
    json: bool,
    command: DeviceCommand,
) -> anyhow::Result<()> {
    match command {
        DeviceCommand::Link { no_wait, yes } => {
            let ask = !(no_wait || yes);
            let started = call(socket, "device.link", json!({ "confirm": ask })).await?;
            let code = started["code"].as_str().unwrap_or_default().to_owned();
            if json {
                out(&started);
            } else {
                out(format_args!(
                    "On the new device, run:\n\n    palaver init --link {code} --label NAME [--history 100]\n\n\
                     (with --home DIR if its Palaver home is not the default). It must reach the \
                     rendezvous address in the code. The code works once, for {} minutes; you \
                     are asked before the device is added.",
                    started["expires_in"].as_u64().unwrap_or(300) / 60
                ));
            }
            if no_wait {
                return Ok(());
            }
            if !json {
                eprintln!("waiting for the new device… (Ctrl-C stops waiting, not the link)");
            }
            let mut linked = link_wait(socket).await?;
            if let Some(asking) = linked.get("confirm").cloned() {
                let add = confirm(&asking)?;
                call(socket, "device.link_confirm", json!({ "add": add })).await?;
                anyhow::ensure!(add, "not added; the code is used up");
                linked = link_wait(socket).await?;
            }
            print_one(json, &linked, |d| {
                format!(
                    "linked {} ({})",
                    d["label"].as_str().unwrap_or(""),
                    short(d["device"].as_str().unwrap_or(""))
                )
            });
        }
        DeviceCommand::List { name } => {
            let list = call(socket, "device.list", json!({ "name": name })).await?;
            print_list(json, &list, describe_device);
        }
        DeviceCommand::Revoke { device } => {
            let list = call(socket, "device.revoke", json!({ "device": device })).await?;
            if !json {
                eprintln!(
                    "revoked {device}: logged out at the rendezvous; your contacts stop sealing \
                     for it as they hear of it"
                );
            }
            print_list(json, &list, describe_device);
        }
    }
    Ok(())
}

/// `device.link_wait`, asked again while the link goes on (one call is answered within the
/// control socket's patience, a link may take minutes).
async fn link_wait(socket: &Path) -> anyhow::Result<Value> {
    loop {
        let mut client = crate::rpc::Client::connect(socket).await?;
        match client.call("device.link_wait", Value::Null).await {
            Err(crate::rpc::ClientError::Unresponsive(_)) => continue,
            answer => return Ok(answer?),
        }
    }
}

/// Asks on the terminal whether to add the device that used the code.
fn confirm(asking: &Value) -> anyhow::Result<bool> {
    use std::io::{BufRead, Write};
    let label = crate::printable::printable_line(asking["label"].as_str().unwrap_or(""));
    eprint!(
        "A device asks to join this account as \"{label}\" (fingerprint {}).\n\
         Add it? Only if you just typed the code on it. [y/N] ",
        asking["fingerprint"].as_str().unwrap_or("")
    );
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes"))
}

fn short(hex: &str) -> &str {
    hex.get(..16).unwrap_or(hex)
}

fn describe_device(d: &Value) -> String {
    let mut notes = Vec::new();
    if d["account_key"].as_bool() == Some(true) {
        notes.push("holds the account key");
    }
    if d["this_device"].as_bool() == Some(true) {
        notes.push("this device");
    }
    format!(
        "{:<20} {}  {}{}",
        crate::printable::printable_line(d["label"].as_str().unwrap_or("")),
        short(d["device"].as_str().unwrap_or("")),
        d["fingerprint"].as_str().unwrap_or(""),
        if notes.is_empty() {
            String::new()
        } else {
            format!("  ({})", notes.join(", "))
        }
    )
}

/// How long `init --link` waits for the other device: as long as its code is good.
const LINK_WAIT: Duration =
    Duration::from_millis(palaver_protocol::crypto::link::LINK_CODE_TTL_MS + 10_000);

/// `init --link CODE`: a new device key, proven to the device that printed the code over the
/// rendezvous's link drop; what it hands back becomes this home.
pub(super) async fn init_linked(
    home: &Home,
    code: &str,
    label: Option<String>,
    history: u32,
    passphrase: Option<&str>,
    force: bool,
) -> anyhow::Result<()> {
    let code: LinkCode = code.parse()?;
    home.check_free(force)?;
    let label = label.unwrap_or_else(default_label);
    anyhow::ensure!(
        valid_label(&label),
        "--label is printable text of 1 to 32 characters"
    );
    let device = Identity::generate(&mut OsRng);
    let request = LinkRequest::new(&device, label.clone(), history, &code);
    let sealed = code
        .secret
        .seal(Direction::Request, &codec::encode(&request)?, &mut OsRng);
    let grant = match tokio::time::timeout(LINK_WAIT, exchange(&code, &device, sealed)).await {
        Ok(grant) => grant?,
        Err(_) => {
            // Taken back, so that the other device cannot add a key that is about to be gone.
            withdraw(&code, &device).await;
            anyhow::bail!(
                "the other device did not answer within {} s: is its `palaver device link` still \
                 waiting, and its daemon running?",
                LINK_WAIT.as_secs()
            );
        }
    };
    let name = grant.name.clone();
    home.init_with(device.clone(), name.clone(), passphrase, force)?;
    let store = if home.is_sealed() {
        let secrets = palaver_protocol::crypto::at_rest::SecretsKey::of(&device);
        Store::open_sealed(&home.dir().join("store"), secrets)?
    } else {
        Store::open(&home.dir().join("store"))?
    };
    store.apply(&linked_state(&grant, &device))?;
    let lines = record_history(&store, &grant)?;
    store.flush()?;
    out(format_args!(
        "linked to {name}'s account as \"{label}\" in {}",
        home.dir().display()
    ));
    out(format_args!("peer id      {}", device.peer_id()));
    out(format_args!("fingerprint  {}", device.fingerprint()));
    out(format_args!(
        "contacts     {} handed over, with {lines} lines of history",
        grant.contacts.len(),
    ));
    if !grant.rooms.is_empty() {
        out(format_args!(
            "rooms        {} handed over (joined as this device starts)",
            grant.rooms.len()
        ));
    }
    out(format_args!(
        "start it     palaver --home {} daemon --rendezvous {}",
        home.dir().display(),
        code.rendezvous
    ));
    Ok(())
}

/// Leaves the request at the link drop and waits for the grant, connecting again when the
/// rendezvous drops us (it gives a connection that never logs in a few seconds).
async fn exchange(
    code: &LinkCode,
    device: &Identity,
    sealed: Vec<u8>,
) -> anyhow::Result<LinkGrant> {
    loop {
        let mut posted = false;
        let client = Client::connect(code.rendezvous.clone(), device)
            .await
            .with_context(|| format!("cannot reach the rendezvous at {}", code.rendezvous))?;
        // Posted again after every reconnect: the rendezvous keeps link messages in memory
        // only, and a second post at the slot replaces the first.
        let mut refused_since = None;
        while !posted && client.is_connected() {
            let request = RendezvousRequest::LinkPost {
                slot: code.secret.slot(Direction::Request),
                sealed: SealedLink(sealed.clone()),
            };
            match client.request(request).await {
                Ok(RendezvousResponse::Done) => posted = true,
                // Nobody waits on the code yet (the other device's first question may still be
                // on its way), or any more: a few seconds tell which.
                Ok(RendezvousResponse::Refused(refusal))
                    if refusal.reason == palaver_protocol::wire::RefusalReason::NotAllowed =>
                {
                    let since = *refused_since.get_or_insert_with(tokio::time::Instant::now);
                    if since.elapsed() > Duration::from_secs(10) {
                        anyhow::bail!("the rendezvous: {refusal}");
                    }
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                Ok(RendezvousResponse::Refused(refusal)) => {
                    anyhow::bail!("the rendezvous: {refusal}")
                }
                Ok(other) => anyhow::bail!("unexpected answer from the rendezvous: {other:?}"),
                Err(_) => break,
            }
        }
        while client.is_connected() {
            let take = RendezvousRequest::LinkTake {
                slot: code.secret.slot(Direction::Grant),
            };
            match client.request(take).await {
                Ok(RendezvousResponse::Link(Some(sealed))) => {
                    return LinkGrant::open(&code.secret, &sealed.0, &device.public())
                        .map_err(|e| anyhow::anyhow!("the other device's answer: {e}"));
                }
                Ok(RendezvousResponse::Link(None)) => {}
                Ok(RendezvousResponse::Refused(refusal)) => {
                    anyhow::bail!("the rendezvous: {refusal}")
                }
                Ok(other) => anyhow::bail!("unexpected answer from the rendezvous: {other:?}"),
                Err(_) => break,
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
}

/// Takes our request back from the link drop, if it is still there (best effort).
async fn withdraw(code: &LinkCode, device: &Identity) {
    if let Ok(client) = Client::connect(code.rendezvous.clone(), device).await {
        let take = RendezvousRequest::LinkTake {
            slot: code.secret.slot(Direction::Request),
        };
        let _ = tokio::time::timeout(Duration::from_secs(5), client.request(take)).await;
    }
}

/// What a linked device starts with: its account's device list (its other devices standing for
/// its name), every contact's key as the other device pinned it, and its account's rooms (a
/// private one joined once another of its devices hands it its key, see
/// [`palaver_protocol::node::rooms`]). Contacts' device lists it fetches at its first login,
/// checked as every list is.
fn linked_state(grant: &LinkGrant, device: &Identity) -> StateBatch {
    let mut batch = StateBatch::default();
    let account = grant.devices.claimed().account;
    let mut own = DevicePin::new(account);
    // Checked by LinkGrant::open: signed by the account, naming this device.
    let _ = own.accept(&grant.devices);
    for other in own.list().others(&device.public()) {
        batch.put(
            StateKey::Peer(other.key.to_bytes()),
            &grant.name.to_string(),
        );
    }
    batch.put(StateKey::Devices(grant.name.as_str()), &own);
    for linked in &grant.contacts {
        let name = linked.name.to_string();
        batch
            .put(StateKey::Contact(linked.name.as_str()), &linked.contact)
            .put(StateKey::Peer(linked.contact.latest()), &name);
    }
    for linked in &grant.rooms {
        let room = Room::handed_over(linked.clone(), device.public(), &mut OsRng);
        match room {
            Some(room) => {
                batch.put(StateKey::Room(room.id), &room);
            }
            None => {
                tracing::warn!(room = %linked.name, "a room handed over does not hold together")
            }
        }
    }
    batch
}

/// Files the lines handed over in their conversations; how many were new.
fn record_history(store: &Store, grant: &LinkGrant) -> anyhow::Result<usize> {
    let mut by_conversation: std::collections::BTreeMap<ConversationId, Vec<HistoryEntry>> =
        Default::default();
    for line in &grant.history {
        let (conversation, label) = match &line.with {
            LinkedConversation::Contact(with) => {
                let Some(linked) = grant.contacts.iter().find(|c| c.name == *with) else {
                    continue;
                };
                (
                    ConversationId::Direct(linked.contact.conversation),
                    with.to_string(),
                )
            }
            LinkedConversation::Room(id) => {
                let Some(room) = grant.rooms.iter().find(|r| r.id == *id) else {
                    continue;
                };
                (ConversationId::Room(*id), format!("#{}", room.name))
            }
        };
        let status = match (line.from_me, line.delivered) {
            (true, true) => Status::Delivered,
            (true, false) => Status::Sent,
            (false, _) => Status::Received,
        };
        by_conversation
            .entry(conversation)
            .or_default()
            .push(HistoryEntry {
                id: line.id,
                conversation,
                label,
                from: line.from.clone(),
                sender: line.sender,
                text: line.text.clone(),
                sent_at_ms: line.sent_at_ms,
                stamp: line.stamp,
                seq: line.seq,
                status,
            });
    }
    let mut new = 0;
    for (conversation, entries) in &by_conversation {
        new += store.record_many(conversation, entries)?;
    }
    Ok(new)
}

fn default_label() -> String {
    let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
    let host: String = host.trim().chars().take(32).collect();
    if valid_label(&host) {
        host
    } else {
        "linked device".into()
    }
}
