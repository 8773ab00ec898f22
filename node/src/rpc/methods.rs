//! What the control socket offers, as data: every method with its params, result and errors
//! ([`METHODS`]), and every event `subscribe` streams ([`EVENTS`]).
//!
//! The daemon checks each call against [`METHODS`] before it dispatches it ([`check`]: unknown
//! methods and parameters, wrong types and missing parameters are refused here), and in debug
//! builds each event it emits against [`EVENTS`] ([`check_event`]); docs/REFERENCE.md is
//! generated from both (`cargo run -p palaver-node --example reference`), and a test fails when
//! it is stale, so the reference cannot drift from the code.

use serde_json::Value;

use super::RpcError;

/// One method of the control socket.
#[derive(Debug)]
pub struct Method {
    pub name: &'static str,
    pub summary: &'static str,
    pub params: &'static [Field],
    /// The result's shape, JSON-like.
    pub result: &'static str,
    /// The errors it answers besides invalid params (code 1 unless said otherwise).
    pub errors: &'static str,
}

/// A parameter of a method or a field of an event: `optional` ones may be absent or `null`.
/// (Params are always an object of named parameters, or absent when there are none.)
#[derive(Debug)]
pub struct Field {
    pub name: &'static str,
    pub kind: Kind,
    pub optional: bool,
    pub about: &'static str,
}

/// The JSON type of a parameter or an event field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    String,
    Bool,
    Integer,
    /// An array of strings.
    Strings,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::String => "string",
            Kind::Bool => "bool",
            Kind::Integer => "integer",
            Kind::Strings => "[string]",
        }
    }

    fn matches(self, value: &Value) -> bool {
        match self {
            Kind::String => value.is_string(),
            Kind::Bool => value.is_boolean(),
            Kind::Integer => value.is_u64(),
            Kind::Strings => value
                .as_array()
                .is_some_and(|items| items.iter().all(Value::is_string)),
        }
    }
}

const fn required(name: &'static str, kind: Kind, about: &'static str) -> Field {
    Field {
        name,
        kind,
        optional: false,
        about,
    }
}

const fn optional(name: &'static str, kind: Kind, about: &'static str) -> Field {
    Field {
        name,
        kind,
        optional: true,
        about,
    }
}

/// Every method, in the order the reference lists them.
pub static METHODS: &[Method] = &[
    Method {
        name: "status",
        summary: "The daemon's state.",
        params: &[],
        result: r#"{"name","peer_id","fingerprint","rendezvous":{"address","server","instances":[multiaddr],"connected","logged_in","refused"?,"hint"?},"listen":[multiaddr],"outbox":n,"gossip":{"outsider_messages_dropped","outsider_subscriptions_refused","outsiders_disconnected","members_evicted","rejected_after_checks"}}"#,
        errors: "none",
    },
    Method {
        name: "send",
        summary: "Sends a direct message; answers once it is stored durably in the outbox.",
        params: &[
            required("to", Kind::String, "the recipient's user name"),
            required("text", Kind::String, "the message, at most 64 KiB"),
            optional(
                "client_id",
                Kind::String,
                "a key of your own: a repeated send with it sends nothing new and answers the first one's id",
            ),
        ],
        result: r#"{"id","status":"sending","warning"?}"#,
        errors: "a bad name or text; unknown user at this rendezvous; the contact is verified and its key changed (confirm the new one with `verify`); not logged in (a first message needs the recipient's keys from the rendezvous); a bad prekey bundle; the store cannot be written",
    },
    Method {
        name: "history",
        summary: "A conversation's messages, oldest first (give `with` or `room`).",
        params: &[
            optional("with", Kind::String, "a user: the direct conversation"),
            optional("room", Kind::String, "a room"),
            optional(
                "before",
                Kind::String,
                "a message id: only what came before it (paging back)",
            ),
            optional(
                "limit",
                Kind::Integer,
                "at most this many, the latest (default 100)",
            ),
        ],
        result: r#"[{"id","conversation","from","text","sent_at","status","missing_before"?,"file"?:{"name","size","status","path"?,…},"copies"?:[{"device","for":"recipient|me","status"}]}] (`copies`: ours, sealed for other devices too; `status` counts for the account: delivered once any of the recipient's devices has it)"#,
        errors: "both or neither of `with`/`room` (code -32602); no such conversation or room",
    },
    Method {
        name: "conversations",
        summary: "Every conversation with a message, most recent first.",
        params: &[],
        result: r#"[{"conversation","kind":"direct|room","last_at","last_from","last_text","unread","first_unread"?}]"#,
        errors: "the store cannot be read",
    },
    Method {
        name: "read",
        summary: "Marks a conversation read up to a message (by default its latest); the marker never moves back.",
        params: &[
            optional("with", Kind::String, "a user: the direct conversation"),
            optional("room", Kind::String, "a room"),
            optional(
                "up_to",
                Kind::String,
                "a message id in the conversation (default: its latest)",
            ),
        ],
        result: r#"{"conversation","unread"}"#,
        errors: "both or neither of `with`/`room` (code -32602); no such conversation or room; no such message; the store cannot be written",
    },
    Method {
        name: "presence",
        summary: "Presence of the given users, or of every contact.",
        params: &[optional(
            "names",
            Kind::Strings,
            "user names (default: every contact)",
        )],
        result: r#"[{"name","verified","state":"online|away|offline|unknown","last_seen","stale"}]"#,
        errors: "a bad name; a user the rendezvous does not know (`stale: true`: the last known state, while the rendezvous cannot be asked)",
    },
    Method {
        name: "peers",
        summary: "Connected peers and how.",
        params: &[],
        result: r#"[{"name","verified","peer_id","connection":"direct|relayed","addr"}]"#,
        errors: "none",
    },
    Method {
        name: "verify",
        summary: "The safety number with a user, to compare out of band; with `confirm`, marks the key it was computed from verified (and accepts a changed key).",
        params: &[
            required("name", Kind::String, "the other user"),
            optional(
                "confirm",
                Kind::Bool,
                "you compared the safety number and it matched: mark the contact verified",
            ),
        ],
        result: r#"{"name","safety_number","verified","key_changed","fingerprint","me","my_fingerprint"}"#,
        errors: "a bad name; unknown user, or not a contact and the rendezvous not connected; the store cannot be written",
    },
    Method {
        name: "room.create",
        summary: "Creates a room owned by you.",
        params: &[
            required("room", Kind::String, "the room's name"),
            optional(
                "public",
                Kind::Bool,
                "anyone who knows the name may join and read (default false)",
            ),
        ],
        result: r#"{"room","id","public"}"#,
        errors: "a bad room name; you already have a room of that name; a private room asked of a \
                 linked device (they are made on the device holding the account key); the store \
                 cannot be written",
    },
    Method {
        name: "room.invite",
        summary: "Invites a user (owner only).",
        params: &[
            required("room", Kind::String, "the room"),
            required("name", Kind::String, "the user to invite"),
        ],
        result: r#"{"room","invited"}"#,
        errors: "a bad name; no such room; not the owner (or owned by your first device: invite \
                 there); unknown user",
    },
    Method {
        name: "room.join",
        summary: "Accepts an invitation, or joins a public room.",
        params: &[
            required("room", Kind::String, "the room"),
            optional(
                "public",
                Kind::Bool,
                "join the public room of that name (default false)",
            ),
        ],
        result: r#"{"room","joined":true,"public"?}"#,
        errors: "a bad room name; no invitation to it; removed from it",
    },
    Method {
        name: "room.leave",
        summary: "Leaves a room.",
        params: &[required("room", Kind::String, "the room")],
        result: r#"{"room","left":true}"#,
        errors: "a bad room name; no such room; you own it and others are still in it; owned by \
                 your first device (leave it there)",
    },
    Method {
        name: "room.kick",
        summary: "Removes a member (owner only); every remaining member's keys rotate.",
        params: &[
            required("room", Kind::String, "the room"),
            required("name", Kind::String, "the member to remove"),
        ],
        result: r#"{"room","kicked"}"#,
        errors: "a bad name; no such room; not the owner (or owned by your first device: kick \
                 there); not a member",
    },
    Method {
        name: "room.members",
        summary: "A room's members.",
        params: &[required("room", Kind::String, "the room")],
        result: r#"[{"name","owner","presence"}]"#,
        errors: "a bad room name; no such room",
    },
    Method {
        name: "room.list",
        summary: "Your rooms and invitations.",
        params: &[],
        result: r#"[{"room","id","public","owner","members","state":"joined|invited|removed","epoch"}]"#,
        errors: "none",
    },
    Method {
        name: "room.send",
        summary: "Sends a message to a room; answers once it is stored durably.",
        params: &[
            required("room", Kind::String, "the room"),
            required("text", Kind::String, "the message, at most 64 KiB"),
        ],
        result: r#"{"id","status"}"#,
        errors: "a bad room name or text; no such room or not joined",
    },
    Method {
        name: "send_file",
        summary: "Offers a file to a user: a copy is kept (hashed as it is copied) and offered in an encrypted message; the recipient fetches it from you. Answers once the offer is stored durably.",
        params: &[
            required("to", Kind::String, "the recipient's user name"),
            required(
                "path",
                Kind::String,
                "the file, as the daemon sees it (absolute)",
            ),
        ],
        result: r#"{"id","status":"sending","warning"?}"#,
        errors: "no such file, not a file, over the size limit; the errors of `send`",
    },
    Method {
        name: "room.send_file",
        summary: "Offers a file to a room: each member fetches it from you or from a member that has it.",
        params: &[
            required("room", Kind::String, "the room"),
            required(
                "path",
                Kind::String,
                "the file, as the daemon sees it (absolute)",
            ),
        ],
        result: r#"{"id","status"}"#,
        errors: "no such file, not a file, over the size limit; the errors of `room.send`",
    },
    Method {
        name: "files",
        summary: "Every file offered to you or by you, newest first.",
        params: &[],
        result: r#"[{"id","name","size","mime","sha256","direction":"receiving|sending","status":"offered|fetching|checking|done|rejected|failed","bytes"?,"path"?,"reason"?,"waiting"?,"via"?,"sent_at"}]"#,
        errors: "none",
    },
    Method {
        name: "file.info",
        summary: "One file, as `files` lists it.",
        params: &[required(
            "id",
            Kind::String,
            "the file's id (its message's id)",
        )],
        result: r#"{"id","name","size","mime","sha256","direction","status","bytes"?,"path"?,"reason"?,"waiting"?,"via"?}"#,
        errors: "no such file",
    },
    Method {
        name: "file.accept",
        summary: "Fetches a file that waits for you (over the auto-accept size), or one that failed, again.",
        params: &[required("id", Kind::String, "the file's id")],
        result: r#"{"id","name","size","status","bytes",…}"#,
        errors: "no such file; over the size limit; not enough free disk space; already received or rejected",
    },
    Method {
        name: "file.reject",
        summary: "Refuses a file offered to you, or stops fetching it.",
        params: &[required("id", Kind::String, "the file's id")],
        result: r#"{"id","name","size","status":"rejected",…}"#,
        errors: "no such file",
    },
    Method {
        name: "subscribe",
        summary: "Turns this connection into a stream of `event` notifications (`{\"jsonrpc\":\"2.0\",\"method\":\"event\",\"params\":EVENT}`), one per line, until it closes.",
        params: &[],
        result: "true, then the events below",
        errors: "none",
    },
    Method {
        name: "device.link",
        summary: "Starts linking a new device to this account (only on the device holding the account key): returns a one-line code for `palaver init --link CODE` on the new device, valid for five minutes. The link then runs in the daemon; `device.link_wait` follows it. With `confirm`, the device is added only once `device.link_confirm` says so.",
        params: &[optional(
            "confirm",
            Kind::Bool,
            "ask before adding the device that uses the code (default false: add it)",
        )],
        result: r#"{"code","expires_in"}"#,
        errors: "not the device holding the account key; not logged in at the rendezvous; a link already under way",
    },
    Method {
        name: "device.link_wait",
        summary: "Waits for the link under way to end: the new device is on the account's list and has its contacts, or the link failed (the code expired, the new device's request did not check out).",
        params: &[],
        result: r#"{"device","label"} once linked, or {"confirm":{"device","label","fingerprint"}} while a device waits for `device.link_confirm`"#,
        errors: "no link under way; the link failed, and why",
    },
    Method {
        name: "device.link_confirm",
        summary: "Answers the new device's request of a link started with `confirm`: add it (publish the new list and hand it its contacts), or not.",
        params: &[optional(
            "add",
            Kind::Bool,
            "add the device (default false: refuse it)",
        )],
        result: "true",
        errors: "no device waits to be added",
    },
    Method {
        name: "device.list",
        summary: "This account's devices; with `name`, the devices of that contact our messages are sealed for (as their pinned device list names them).",
        params: &[optional("name", Kind::String, "a contact")],
        result: r#"[{"device","label","added_at","account_key","this_device","fingerprint"}]"#,
        errors: "`name` is not a contact",
    },
    Method {
        name: "device.revoke",
        summary: "Takes a device off the account's list (only on the device holding the account key): the rendezvous logs it out and refuses it, and contacts stop sealing messages for it once they fetch the new list.",
        params: &[required(
            "device",
            Kind::String,
            "the device's label, or the first 8 or more hex digits of its key",
        )],
        result: r#"[{"device","label","added_at","account_key","this_device","fingerprint"}] (the list now)"#,
        errors: "not the device holding the account key; no device linked yet; no such device, or several; the account key's own device; the rendezvous refused or did not answer",
    },
    Method {
        name: "shutdown",
        summary: "Stops the daemon (after flushing its store).",
        params: &[],
        result: "true",
        errors: "none",
    },
];

/// The method called `name`.
pub fn method(name: &str) -> Option<&'static Method> {
    METHODS.iter().find(|method| method.name == name)
}

/// Checks a call against [`METHODS`]: the method exists, `params` is an object (or absent) with
/// only its parameters, each of its type (`null` counts as absent), the required ones present.
pub fn check(name: &str, params: &Value) -> Result<&'static Method, RpcError> {
    let method = method(name).ok_or_else(|| RpcError {
        code: RpcError::METHOD_NOT_FOUND,
        message: format!("unknown method {name:?}"),
    })?;
    let empty = serde_json::Map::new();
    let given = match params {
        Value::Null => &empty,
        Value::Object(given) => given,
        _ => {
            return Err(RpcError::invalid(format!(
                "the params of {name} are an object of named parameters"
            )));
        }
    };
    for (key, value) in given {
        let param = method
            .params
            .iter()
            .find(|param| param.name == key)
            .ok_or_else(|| {
                let known: Vec<&str> = method.params.iter().map(|param| param.name).collect();
                RpcError::invalid(format!(
                    "unknown parameter {key:?} for {name} (its parameters: {})",
                    if known.is_empty() {
                        "none".to_owned()
                    } else {
                        known.join(", ")
                    }
                ))
            })?;
        if !value.is_null() && !param.kind.matches(value) {
            return Err(RpcError::invalid(format!(
                "parameter {key:?} of {name} must be of type {}",
                param.kind.name()
            )));
        }
    }
    for param in method.params.iter().filter(|param| !param.optional) {
        if given.get(param.name).is_none_or(Value::is_null) {
            return Err(RpcError::invalid(format!(
                "missing parameter {:?} for {name}",
                param.name
            )));
        }
    }
    Ok(method)
}

/// One event type of the `subscribe` stream: `{"type": kind, …fields}`.
#[derive(Debug)]
pub struct Event {
    pub kind: &'static str,
    pub about: &'static str,
    pub fields: &'static [Field],
}

/// Every event type, in the order the reference lists them.
pub static EVENTS: &[Event] = &[
    Event {
        kind: "message",
        about: "A message arrived (direct or in a room), or one of yours was stored.",
        fields: &[
            required("id", Kind::String, "message id (hex)"),
            required("conversation", Kind::String, "the other user, or the room"),
            required("from", Kind::String, "the sender"),
            required(
                "text",
                Kind::String,
                "exact text (control characters as sent)",
            ),
            required("sent_at", Kind::Integer, "sender's clock, Unix ms"),
            required(
                "status",
                Kind::String,
                "sending|sent|delivered|queued|failed|received",
            ),
        ],
    },
    Event {
        kind: "delivery",
        about: "One of your messages changed status.",
        fields: &[
            required("id", Kind::String, "message id (hex)"),
            required("conversation", Kind::String, "the other user, or the room"),
            required("status", Kind::String, "sent|delivered|queued|failed"),
        ],
    },
    Event {
        kind: "presence",
        about: "A contact's presence changed.",
        fields: &[
            required("name", Kind::String, "the user"),
            required("state", Kind::String, "online|away|offline"),
            optional("last_seen", Kind::Integer, "Unix ms, if ever seen"),
        ],
    },
    Event {
        kind: "key_changed",
        about: "The rendezvous gave a contact a different key: the user reinstalled, or someone is in between. Compare safety numbers (`verify`); sends to a verified contact are refused until you confirm the new key.",
        fields: &[
            required("name", Kind::String, "the contact"),
            required("old_fingerprint", Kind::String, "the key we had"),
            required(
                "new_fingerprint",
                Kind::String,
                "the key the rendezvous gave now",
            ),
            required(
                "verified",
                Kind::Bool,
                "you had verified the old key: sends wait for your confirmation",
            ),
        ],
    },
    Event {
        kind: "connection",
        about: "How we are connected to a peer changed.",
        fields: &[
            required("peer_id", Kind::String, "the peer"),
            optional("name", Kind::String, "its user name, if known"),
            required("connection", Kind::String, "direct|relayed|disconnected"),
        ],
    },
    Event {
        kind: "rendezvous",
        about: "The link to the rendezvous changed.",
        fields: &[
            required("connected", Kind::Bool, "connected to it"),
            required("logged_in", Kind::Bool, "logged in"),
            optional("error", Kind::String, "why it refused our login"),
        ],
    },
    Event {
        kind: "reachability",
        about: "Relay slots held or the AutoNAT verdict changed.",
        fields: &[
            required("public", Kind::Bool, "directly reachable from outside"),
            required(
                "relays",
                Kind::Strings,
                "relays holding a slot for us (multiaddrs)",
            ),
        ],
    },
    Event {
        kind: "invite",
        about: "Someone invited you to a room (`room.join` accepts).",
        fields: &[
            required("room", Kind::String, "the room"),
            required("from", Kind::String, "who invited you"),
        ],
    },
    Event {
        kind: "removed",
        about: "You are out of a room: its owner removed you, or you left it on another of \
                your devices.",
        fields: &[required("room", Kind::String, "the room")],
    },
    Event {
        kind: "read",
        about: "A conversation's read marker moved (here or in another client).",
        fields: &[
            required("conversation", Kind::String, "the other user, or the room"),
            required(
                "unread",
                Kind::Integer,
                "received messages after the marker",
            ),
        ],
    },
    Event {
        kind: "file_offer",
        about: "A file was offered to you (a message carrying it arrived too).",
        fields: &[
            required(
                "id",
                Kind::String,
                "the offering message's id (hex): the file's id",
            ),
            required("conversation", Kind::String, "the sender, or the room"),
            required("from", Kind::String, "the sender"),
            required("name", Kind::String, "the file's name"),
            required("size", Kind::Integer, "bytes"),
            required(
                "accepted",
                Kind::Bool,
                "fetched without asking (up to the auto-accept size); else `file.accept` it",
            ),
        ],
    },
    Event {
        kind: "file_progress",
        about: "A file is coming in or going out; at most four a second per transfer.",
        fields: &[
            required("id", Kind::String, "the file's id"),
            required("direction", Kind::String, "receiving|sending"),
            required(
                "bytes",
                Kind::Integer,
                "verified (receiving) or sent (sending) so far",
            ),
            required("size", Kind::Integer, "the file's size"),
            optional(
                "via",
                Kind::String,
                "direct|relayed: how the peer it comes from is connected (receiving); a relay is slower, and the fetch moves to a direct connection once a hole is punched",
            ),
        ],
    },
    Event {
        kind: "file_done",
        about: "A file is here whole and checked against its hash (receiving), or a peer fetched all of it (sending).",
        fields: &[
            required("id", Kind::String, "the file's id"),
            required("direction", Kind::String, "receiving|sending"),
            optional("path", Kind::String, "where it is (receiving)"),
        ],
    },
    Event {
        kind: "file_failed",
        about: "A file offered to you will not arrive; or one you offered will not be fetched (its recipient rejected it or could not take it).",
        fields: &[
            required("id", Kind::String, "the file's id"),
            required("reason", Kind::String, "why, in a line"),
        ],
    },
    Event {
        kind: "devices",
        about: "A user's device list (ours, under our own name) was taken in anew: messages to them go to every device it names.",
        fields: &[
            required("name", Kind::String, "whose"),
            required("devices", Kind::Integer, "how many devices it names"),
        ],
    },
    Event {
        kind: "lagged",
        about: "This subscriber fell behind and missed events (read faster, or re-read state).",
        fields: &[required("missed", Kind::Integer, "how many")],
    },
];

/// Whether `event` is one of [`EVENTS`] with exactly its fields; if not, why.
pub fn check_event(event: &Value) -> Result<(), String> {
    let object = event.as_object().ok_or("an event is an object")?;
    let kind = object
        .get("type")
        .and_then(Value::as_str)
        .ok_or("an event has a string \"type\"")?;
    let spec = EVENTS
        .iter()
        .find(|spec| spec.kind == kind)
        .ok_or_else(|| format!("event type {kind:?} is not in EVENTS"))?;
    for (key, value) in object.iter().filter(|(key, _)| *key != "type") {
        let field = spec
            .fields
            .iter()
            .find(|field| field.name == key)
            .ok_or_else(|| format!("{kind} event field {key:?} is not in EVENTS"))?;
        if !(field.kind.matches(value) || field.optional && value.is_null()) {
            return Err(format!(
                "{kind} event field {key:?} is not of type {}",
                field.kind.name()
            ));
        }
    }
    for field in spec.fields.iter().filter(|field| !field.optional) {
        if !object.contains_key(field.name) {
            return Err(format!("{kind} event lacks {:?}", field.name));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use serde_json::json;

    use super::*;

    #[test]
    fn calls_are_checked_against_the_table() {
        assert_eq!(check("status", &Value::Null).unwrap().name, "status");
        check("send", &json!({"to": "bob", "text": "hi"})).unwrap();
        check(
            "history",
            &json!({"with": null, "room": "lunch", "limit": 5}),
        )
        .unwrap();
        let refused = |name: &str, params: Value| check(name, &params).unwrap_err();
        assert_eq!(
            refused("nope", Value::Null).code,
            RpcError::METHOD_NOT_FOUND
        );
        let err = refused("send", json!({"to": "bob", "txt": "hi"}));
        assert_eq!(err.code, RpcError::INVALID_PARAMS);
        assert!(err.message.contains("unknown parameter \"txt\""), "{err}");
        assert!(
            refused("send", json!({"to": "bob"}))
                .message
                .contains("missing parameter \"text\"")
        );
        assert!(
            refused("history", json!({"limit": "5"}))
                .message
                .contains("must be of type integer")
        );
        assert!(
            refused("presence", json!(["bob"]))
                .message
                .contains("object")
        );
    }

    #[test]
    fn events_are_checked_against_the_table() {
        check_event(&json!({"type": "removed", "room": "lunch"})).unwrap();
        check_event(
            &json!({"type": "presence", "name": "bob", "state": "online", "last_seen": null}),
        )
        .unwrap();
        assert!(check_event(&json!({"type": "removed", "room": "x", "extra": 1})).is_err());
        assert!(check_event(&json!({"type": "removed"})).is_err());
        assert!(check_event(&json!({"type": "novel"})).is_err());
    }
}
