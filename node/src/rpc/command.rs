//! A control-socket call, parsed at the edge: the method and its parameters checked against
//! [`super::methods::METHODS`] and turned into a typed [`Command`], so the daemon only carries
//! commands out (and a bad call is answered here, without reaching it).

use palaver_protocol::wire::MAX_TEXT_LEN;
use palaver_protocol::{RoomName, UserName};
use serde_json::Value;

use super::RpcError;

/// The longest `client_id` a `send` may carry.
pub const MAX_CLIENT_ID: usize = 128;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Status,
    Send {
        to: UserName,
        text: String,
        /// The caller's key for this send: the same id again gets the first answer.
        client_id: Option<String>,
    },
    History {
        with: Option<String>,
        room: Option<String>,
        before: Option<String>,
        limit: usize,
    },
    Conversations,
    Read {
        with: Option<String>,
        room: Option<String>,
        up_to: Option<String>,
    },
    /// The presence of these users (our contacts when empty).
    Presence {
        names: Vec<UserName>,
    },
    Peers,
    /// The safety number with a user; with `confirm`, mark the key it is computed from verified.
    Verify {
        name: UserName,
        confirm: bool,
    },
    RoomCreate {
        room: RoomName,
        public: bool,
    },
    RoomInvite {
        room: RoomName,
        name: UserName,
    },
    RoomKick {
        room: RoomName,
        name: UserName,
    },
    RoomJoin {
        room: RoomName,
        public: bool,
    },
    RoomLeave {
        room: RoomName,
    },
    RoomMembers {
        room: RoomName,
    },
    RoomList,
    RoomSend {
        room: RoomName,
        text: String,
    },
    SendFile {
        to: UserName,
        path: std::path::PathBuf,
    },
    RoomSendFile {
        room: RoomName,
        path: std::path::PathBuf,
    },
    Files,
    FileInfo {
        id: palaver_protocol::MessageId,
    },
    FileAccept {
        id: palaver_protocol::MessageId,
    },
    FileReject {
        id: palaver_protocol::MessageId,
    },
    Shutdown,
    /// A code for linking a new device; the link then runs in the daemon (with `confirm`, it
    /// waits for `DeviceLinkConfirm` before adding the device).
    DeviceLink {
        confirm: bool,
    },
    /// The user's answer to the new device's request.
    DeviceLinkConfirm {
        add: bool,
    },
    /// Waits for the link under way to end.
    DeviceLinkWait,
    /// Our devices, or (with a name) the devices of that contact that our messages go to.
    DeviceList {
        name: Option<UserName>,
    },
    /// Takes a device (by label or key prefix) off the account's list.
    DeviceRevoke {
        device: String,
    },
}

impl Command {
    /// Parses a call of `method` with `params` (a JSON object, or null for none).
    pub fn parse(method: &str, params: &Value) -> Result<Self, RpcError> {
        // The table decides what is a call and which parameters it takes, of which types.
        super::methods::check(method, params)?;
        let p = Params(params);
        Ok(match method {
            "status" => Command::Status,
            "send" => Command::Send {
                to: p.user("to")?,
                text: p.text()?,
                client_id: p.client_id()?,
            },
            "history" => Command::History {
                with: p.string("with"),
                room: p.string("room"),
                before: p.string("before"),
                limit: p.u64("limit").unwrap_or(100).min(100_000) as usize,
            },
            "conversations" => Command::Conversations,
            "read" => Command::Read {
                with: p.string("with"),
                room: p.string("room"),
                up_to: p.string("up_to"),
            },
            "presence" => Command::Presence {
                names: p.users("names")?,
            },
            "peers" => Command::Peers,
            "verify" => Command::Verify {
                name: p.user("name")?,
                confirm: p.flag("confirm"),
            },
            "room.create" => Command::RoomCreate {
                room: p.room()?,
                public: p.flag("public"),
            },
            "room.invite" => Command::RoomInvite {
                room: p.room()?,
                name: p.user("name")?,
            },
            "room.kick" => Command::RoomKick {
                room: p.room()?,
                name: p.user("name")?,
            },
            "room.join" => Command::RoomJoin {
                room: p.room()?,
                public: p.flag("public"),
            },
            "room.leave" => Command::RoomLeave { room: p.room()? },
            "room.members" => Command::RoomMembers { room: p.room()? },
            "room.list" => Command::RoomList,
            "room.send" => Command::RoomSend {
                room: p.room()?,
                text: p.text()?,
            },
            "send_file" => Command::SendFile {
                to: p.user("to")?,
                path: p.path()?,
            },
            "room.send_file" => Command::RoomSendFile {
                room: p.room()?,
                path: p.path()?,
            },
            "files" => Command::Files,
            "file.info" => Command::FileInfo { id: p.id()? },
            "file.accept" => Command::FileAccept { id: p.id()? },
            "file.reject" => Command::FileReject { id: p.id()? },
            "shutdown" => Command::Shutdown,
            "device.link" => Command::DeviceLink {
                confirm: p.flag("confirm"),
            },
            "device.link_confirm" => Command::DeviceLinkConfirm { add: p.flag("add") },
            "device.link_wait" => Command::DeviceLinkWait,
            "device.list" => Command::DeviceList {
                name: p.optional_user("name")?,
            },
            "device.revoke" => Command::DeviceRevoke {
                device: p.required("device")?.to_owned(),
            },
            other => {
                return Err(RpcError {
                    code: RpcError::METHOD_NOT_FOUND,
                    message: format!("method {other:?} is listed but not served"),
                });
            }
        })
    }
}

/// Reading parameters whose JSON types the table has already checked.
struct Params<'a>(&'a Value);

impl Params<'_> {
    fn string(&self, key: &str) -> Option<String> {
        self.0.get(key).and_then(Value::as_str).map(str::to_owned)
    }

    fn required(&self, key: &str) -> Result<&str, RpcError> {
        self.0
            .get(key)
            .and_then(Value::as_str)
            .ok_or_else(|| RpcError::invalid(format!("missing parameter {key:?}")))
    }

    fn u64(&self, key: &str) -> Option<u64> {
        self.0.get(key).and_then(Value::as_u64)
    }

    fn flag(&self, key: &str) -> bool {
        self.0.get(key).and_then(Value::as_bool).unwrap_or(false)
    }

    fn user(&self, key: &str) -> Result<UserName, RpcError> {
        parse_name(self.required(key)?)
    }

    fn optional_user(&self, key: &str) -> Result<Option<UserName>, RpcError> {
        self.string(key).as_deref().map(parse_name).transpose()
    }

    fn users(&self, key: &str) -> Result<Vec<UserName>, RpcError> {
        let names = self.0.get(key).and_then(Value::as_array);
        names
            .into_iter()
            .flatten()
            .map(|name| match name.as_str() {
                Some(name) => parse_name(name),
                None => Err(RpcError::invalid(format!("{key} must be strings"))),
            })
            .collect()
    }

    fn room(&self) -> Result<RoomName, RpcError> {
        self.required("room")?
            .parse()
            .map_err(|e: palaver_protocol::name::NameError| RpcError::invalid(e.to_string()))
    }

    fn text(&self) -> Result<String, RpcError> {
        let text = self.required("text")?;
        if text.is_empty() {
            return Err(RpcError::invalid("empty message"));
        }
        if text.len() > MAX_TEXT_LEN {
            return Err(RpcError::invalid(format!(
                "a message has at most {MAX_TEXT_LEN} bytes"
            )));
        }
        Ok(text.to_owned())
    }

    /// A file's path: absolute, since the daemon's working directory is not the caller's.
    fn path(&self) -> Result<std::path::PathBuf, RpcError> {
        let path = std::path::PathBuf::from(self.required("path")?);
        if !path.is_absolute() {
            return Err(RpcError::invalid(format!(
                "{} is not an absolute path",
                path.display()
            )));
        }
        Ok(path)
    }

    fn id(&self) -> Result<palaver_protocol::MessageId, RpcError> {
        let id = self.required("id")?;
        palaver_protocol::MessageId::from_hex(id)
            .ok_or_else(|| RpcError::invalid(format!("{id:?} is not a message id")))
    }

    fn client_id(&self) -> Result<Option<String>, RpcError> {
        match self.0.get("client_id") {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(id))
                if !id.is_empty()
                    && id.len() <= MAX_CLIENT_ID
                    && !id.chars().any(char::is_control) =>
            {
                Ok(Some(id.clone()))
            }
            Some(_) => Err(RpcError::invalid(format!(
                "client_id must be a string of 1 to {MAX_CLIENT_ID} bytes without control characters"
            ))),
        }
    }
}

fn parse_name<T: std::str::FromStr<Err = palaver_protocol::name::NameError>>(
    name: &str,
) -> Result<T, RpcError> {
    name.parse()
        .map_err(|e: palaver_protocol::name::NameError| RpcError::invalid(e.to_string()))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// Every method in the table is served (a row without a command would answer "not served"),
    /// and nothing else is.
    #[test]
    fn every_listed_method_parses_to_a_command() {
        for method in super::super::methods::METHODS {
            if method.name == "subscribe" {
                continue; // Served by the socket itself.
            }
            if let Err(err) = Command::parse(method.name, &Value::Null) {
                assert_eq!(
                    err.code,
                    RpcError::INVALID_PARAMS,
                    "{}: {}",
                    method.name,
                    err.message
                );
            }
        }
        let err = Command::parse("nope", &Value::Null).unwrap_err();
        assert_eq!(err.code, RpcError::METHOD_NOT_FOUND);
    }

    #[test]
    fn parameters_become_typed_values_or_clear_errors() {
        let send = Command::parse(
            "send",
            &json!({"to": "Bob", "text": "hi", "client_id": "k1"}),
        );
        assert_eq!(
            send.unwrap(),
            Command::Send {
                to: "bob".parse().unwrap(),
                text: "hi".into(),
                client_id: Some("k1".into()),
            }
        );
        let empty = Command::parse("send", &json!({"to": "bob", "text": ""})).unwrap_err();
        assert_eq!(empty.message, "empty message");
        let bad_name = Command::parse("verify", &json!({"name": "no spaces"})).unwrap_err();
        assert_eq!(bad_name.code, RpcError::INVALID_PARAMS);
        let long_id = "x".repeat(MAX_CLIENT_ID + 1);
        let too_long = json!({"to": "bob", "text": "hi", "client_id": long_id});
        assert!(Command::parse("send", &too_long).is_err());
        let history = Command::parse("history", &json!({"room": "lunch", "limit": 5})).unwrap();
        assert_eq!(
            history,
            Command::History {
                with: None,
                room: Some("lunch".into()),
                before: None,
                limit: 5,
            }
        );
        let presence = Command::parse("presence", &json!({"names": ["ann", "bob"]})).unwrap();
        assert!(matches!(presence, Command::Presence { names } if names.len() == 2));
    }
}
