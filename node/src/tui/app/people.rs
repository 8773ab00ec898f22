//! Who is there: the people pane's lines, with presence and how each is connected.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Presence {
    Online,
    Away,
    Offline,
    Unknown,
}

impl Presence {
    pub(super) fn parse(state: &str) -> Self {
        match state {
            "online" => Presence::Online,
            "away" => Presence::Away,
            "offline" => Presence::Offline,
            _ => Presence::Unknown,
        }
    }

    pub(super) fn order(self) -> u8 {
        match self {
            Presence::Online => 0,
            Presence::Away => 1,
            Presence::Offline => 2,
            Presence::Unknown => 3,
        }
    }
}

/// How a peer is connected, when it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Link {
    Direct,
    Relayed,
}

/// One line of the people pane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Person {
    pub(crate) name: String,
    pub(crate) presence: Presence,
    pub(crate) link: Option<Link>,
    pub(crate) owner: bool,
}

/// A room member, as `room.members` lists them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Member {
    pub(crate) name: String,
    pub(crate) owner: bool,
}
