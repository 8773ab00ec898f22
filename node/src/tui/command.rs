//! What a line typed in the input box means: plain text for the selected conversation, or a
//! `/command`. Names are checked here, as the daemon would check them, so mistakes are reported
//! at once and in the same words.

use palaver_protocol::name::NameError;
use palaver_protocol::{RoomName, UserName};

/// A parsed input line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Command {
    /// Text for the selected conversation.
    Say(String),
    /// `/msg NAME [TEXT]`: open (or switch to) the direct conversation, and send TEXT if given.
    Msg {
        to: String,
        text: Option<String>,
    },
    /// `/join ROOM [--public]`.
    Join {
        room: String,
        public: bool,
    },
    /// `/create ROOM [--public]`.
    Create {
        room: String,
        public: bool,
    },
    /// `/invite NAME` into the selected room.
    Invite(String),
    /// `/kick NAME` from the selected room.
    Kick(String),
    /// `/leave` the selected room.
    Leave,
    /// `/verify [NAME]`: NAME, or the selected direct conversation.
    Verify(Option<String>),
    /// `/file PATH`: offer a file to the selected conversation.
    File(String),
    /// `/get [ID]`: fetch a file offered to me (by default the latest waiting).
    Get(Option<String>),
    Help,
    Quit,
}

/// Why a typed line is not a command, as shown under the input box.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum CommandError {
    #[error("usage: {0}")]
    Usage(&'static str),
    #[error(transparent)]
    Name(#[from] NameError),
    #[error("type a command after the slash; /help lists them")]
    NoCommand,
    #[error("unknown command /{0}; /help lists them")]
    Unknown(String),
}

/// The `/help` text, one entry a line (it fits an 80×24 window).
pub(crate) const HELP: &[&str] = &[
    "/msg NAME TEXT    write to NAME (opens the conversation)",
    "/join ROOM        accept an invitation (--public: public room)",
    "/create ROOM      create a room you own (--public: open to all)",
    "/invite NAME      invite NAME to this room (owner)",
    "/kick NAME        remove NAME from this room (owner)",
    "/leave            leave this room",
    "/verify [NAME]    compare fingerprints out of band",
    "/file PATH        offer a file here      /get [ID]  fetch one",
    "/help  /quit      this help; leave the chat",
    "//text            send text that starts with a slash",
    "",
    "Tab Shift-Tab Ctrl-N Ctrl-P   switch conversation",
    "PgUp PgDn         scroll (older history loads as you go)",
    "Up Down           lines you typed     Ctrl-L  redraw",
    "",
    "Marks: … sending  ✓ sent  ✓✓ delivered  ✉ queued  ✗ failed",
    "People: ● online  ◐ away  ○ offline    Rooms: + invited  × removed",
];

/// Parses one input line.
pub(crate) fn parse(line: &str) -> Result<Command, CommandError> {
    let Some(rest) = line.strip_prefix('/') else {
        return Ok(Command::Say(line.to_owned()));
    };
    if rest.starts_with('/') {
        return Ok(Command::Say(rest.to_owned()));
    }
    let (word, args) = match rest.split_once(char::is_whitespace) {
        Some((word, args)) => (word, args.trim_start()),
        None => (rest, ""),
    };
    match word.to_ascii_lowercase().as_str() {
        "msg" | "m" | "query" => {
            let (name, text) = match args.split_once(char::is_whitespace) {
                Some((name, text)) => (name, text.trim_start()),
                None => (args, ""),
            };
            if name.is_empty() {
                return Err(CommandError::Usage("/msg NAME TEXT"));
            }
            Ok(Command::Msg {
                to: user(name)?,
                text: (!text.trim().is_empty()).then(|| text.to_owned()),
            })
        }
        "join" | "j" => {
            let (room, public) = room_and_flag(args, "/join ROOM [--public]")?;
            Ok(Command::Join { room, public })
        }
        "create" => {
            let (room, public) = room_and_flag(args, "/create ROOM [--public]")?;
            Ok(Command::Create { room, public })
        }
        "invite" => Ok(Command::Invite(one_user(args, "/invite NAME")?)),
        "kick" => Ok(Command::Kick(one_user(args, "/kick NAME")?)),
        "leave" | "part" => Ok(Command::Leave),
        "verify" => match args.split_whitespace().next() {
            Some(name) => Ok(Command::Verify(Some(user(name)?))),
            None => Ok(Command::Verify(None)),
        },
        "file" | "send" => match args.trim() {
            "" => Err(CommandError::Usage("/file PATH")),
            path => Ok(Command::File(path.to_owned())),
        },
        "get" | "accept" => Ok(Command::Get(
            args.split_whitespace().next().map(str::to_owned),
        )),
        "help" | "h" | "?" => Ok(Command::Help),
        "quit" | "exit" | "q" => Ok(Command::Quit),
        "" => Err(CommandError::NoCommand),
        other => Err(CommandError::Unknown(other.to_owned())),
    }
}

fn user(name: &str) -> Result<String, CommandError> {
    Ok(name.parse::<UserName>()?.to_string())
}

fn one_user(args: &str, usage: &'static str) -> Result<String, CommandError> {
    match args.split_whitespace().next() {
        Some(name) => user(name),
        None => Err(CommandError::Usage(usage)),
    }
}

fn room_and_flag(args: &str, usage: &'static str) -> Result<(String, bool), CommandError> {
    let mut room = None;
    let mut public = false;
    for word in args.split_whitespace() {
        match word {
            "--public" | "-p" => public = true,
            _ if room.is_none() => room = Some(word),
            _ => return Err(CommandError::Usage(usage)),
        }
    }
    let room = room.ok_or(CommandError::Usage(usage))?;
    let room = room.strip_prefix('#').unwrap_or(room);
    Ok((room.parse::<RoomName>()?.to_string(), public))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_and_double_slash_are_said() {
        assert_eq!(parse("hello there"), Ok(Command::Say("hello there".into())));
        assert_eq!(parse("//shrug"), Ok(Command::Say("/shrug".into())));
    }

    #[test]
    fn msg_keeps_the_text_as_typed_and_folds_the_name() {
        assert_eq!(
            parse("/msg Bob  hi   there "),
            Ok(Command::Msg {
                to: "bob".into(),
                text: Some("hi   there ".into())
            })
        );
        assert_eq!(
            parse("/msg bob"),
            Ok(Command::Msg {
                to: "bob".into(),
                text: None
            })
        );
        assert!(parse("/msg").unwrap_err().to_string().contains("usage"));
        assert!(
            parse("/msg b@d hi")
                .unwrap_err()
                .to_string()
                .contains("not a valid user name")
        );
    }

    #[test]
    fn rooms_take_an_optional_hash_and_public_flag() {
        assert_eq!(
            parse("/join #Lunch"),
            Ok(Command::Join {
                room: "lunch".into(),
                public: false
            })
        );
        assert_eq!(
            parse("/create lunch --public"),
            Ok(Command::Create {
                room: "lunch".into(),
                public: true
            })
        );
        assert!(parse("/join").unwrap_err().to_string().contains("usage"));
        assert!(
            parse("/join a b")
                .unwrap_err()
                .to_string()
                .contains("usage")
        );
    }

    #[test]
    fn the_other_commands() {
        assert_eq!(parse("/invite carol"), Ok(Command::Invite("carol".into())));
        assert_eq!(parse("/kick carol"), Ok(Command::Kick("carol".into())));
        assert_eq!(parse("/leave"), Ok(Command::Leave));
        assert_eq!(parse("/verify"), Ok(Command::Verify(None)));
        assert_eq!(
            parse("/verify bob"),
            Ok(Command::Verify(Some("bob".into())))
        );
        assert_eq!(
            parse("/file ~/My Photos/cat.jpg"),
            Ok(Command::File("~/My Photos/cat.jpg".into()))
        );
        assert!(parse("/file").unwrap_err().to_string().contains("usage"));
        assert_eq!(parse("/get"), Ok(Command::Get(None)));
        assert_eq!(parse("/get ab12"), Ok(Command::Get(Some("ab12".into()))));
        assert_eq!(parse("/help"), Ok(Command::Help));
        assert_eq!(parse("/QUIT"), Ok(Command::Quit));
        assert!(parse("/invite").unwrap_err().to_string().contains("usage"));
        assert!(
            parse("/frobnicate")
                .unwrap_err()
                .to_string()
                .contains("unknown command /frobnicate")
        );
    }
}
