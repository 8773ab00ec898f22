//! The libp2p rendezvous (discovery) namespaces Palaver uses. A node registers its signed peer
//! record under its user namespace and under each room it is in; others discover it there, then
//! keep only records whose `PeerId` matches the key the accounts protocol gave for that name.

use crate::name::UserName;
use crate::wire::RoomId;

/// Where the peer record of user `name` is registered.
pub fn user_namespace(name: &UserName) -> String {
    format!("palaver/user/{name}")
}

/// Where the members of room `room` register their peer records.
pub fn room_namespace(room: &RoomId) -> String {
    format!("palaver/room/{}", room.to_hex())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_fit_the_rendezvous_limit_of_255_bytes() {
        let name = UserName::new("a".repeat(UserName::MAX_LEN)).unwrap();
        assert_eq!(user_namespace(&name).len(), 13 + 32);
        assert_eq!(room_namespace(&RoomId([7; 32])).len(), 13 + 64);
        assert!(room_namespace(&RoomId([7; 32])).starts_with("palaver/room/0707"));
    }
}
