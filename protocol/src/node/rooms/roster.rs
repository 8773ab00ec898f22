//! Whose devices are whose, for the rooms: every pinned device list (ours and our contacts'),
//! so that a member account's devices may send in its rooms, get our sender key and sit in the
//! gossip mesh. An account with no list has one device, its own key.

use std::collections::HashMap;

use ed25519_dalek::VerifyingKey;

use crate::crypto::room::Accounts;
use crate::identity::devices::DeviceList;

#[derive(Debug, Default, Clone)]
pub struct Roster {
    /// Each listed account's devices (its own key among them).
    devices: HashMap<[u8; 32], Vec<VerifyingKey>>,
    /// Each listed device's account.
    account: HashMap<[u8; 32], VerifyingKey>,
}

/// What a new device list changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DevicesChange {
    pub added: Vec<VerifyingKey>,
    pub removed: Vec<VerifyingKey>,
}

impl DevicesChange {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty()
    }
}

impl Roster {
    /// Takes `list` as its account's devices now; what changed against what was known (a first
    /// list adds the devices besides the account key, which was known as its own device).
    pub fn set(&mut self, list: &DeviceList) -> DevicesChange {
        let account = list.account;
        let before = self.devices_of(&account);
        let now: Vec<VerifyingKey> = list.devices.iter().map(|device| device.key).collect();
        for gone in before.iter().filter(|key| !now.contains(key)) {
            self.account.remove(gone.as_bytes());
        }
        for device in &now {
            self.account.insert(device.to_bytes(), account);
        }
        let change = DevicesChange {
            added: now
                .iter()
                .filter(|k| !before.contains(k))
                .copied()
                .collect(),
            removed: before
                .iter()
                .filter(|k| !now.contains(k))
                .copied()
                .collect(),
        };
        self.devices.insert(account.to_bytes(), now);
        change
    }
}

impl Accounts for Roster {
    fn account_of(&self, key: &VerifyingKey) -> VerifyingKey {
        self.account.get(key.as_bytes()).copied().unwrap_or(*key)
    }

    fn devices_of(&self, account: &VerifyingKey) -> Vec<VerifyingKey> {
        match self.devices.get(account.as_bytes()) {
            Some(devices) => devices.clone(),
            None => vec![*account],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Identity;
    use crate::identity::devices::Device;

    fn device(secret: u8, account: &Identity) -> (Identity, Device) {
        let key = Identity::from_secret_bytes(&[secret; 32]);
        let device = Device::bind(&key, &account.public(), format!("device {secret}"), 0);
        (key, device)
    }

    #[test]
    fn a_list_maps_devices_to_their_account_and_says_what_changed() {
        let alice = Identity::from_secret_bytes(&[1; 32]);
        let (laptop, laptop_device) = device(2, &alice);
        let single = DeviceList::single(alice.public());
        let mut roster = Roster::default();
        assert_eq!(roster.account_of(&laptop.public()), laptop.public());
        assert_eq!(roster.devices_of(&alice.public()), [alice.public()]);

        let two = single.with(laptop_device).unwrap();
        let change = roster.set(&two);
        assert_eq!(change.added, [laptop.public()]);
        assert!(change.removed.is_empty());
        assert_eq!(roster.account_of(&laptop.public()), alice.public());
        assert_eq!(
            roster.devices_of(&alice.public()),
            [alice.public(), laptop.public()]
        );
        assert!(
            roster.set(&two).is_empty(),
            "the same list again changes nothing"
        );

        let one = two.without(&laptop.public()).unwrap();
        let change = roster.set(&one);
        assert_eq!(change.removed, [laptop.public()]);
        assert_eq!(roster.account_of(&laptop.public()), laptop.public());
    }
}
