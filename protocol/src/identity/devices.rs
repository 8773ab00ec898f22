//! An account's devices: the account key signs the list of device keys that speak for it.
//!
//! Each device has a key of its own (its libp2p identity, its prekeys, its sessions). The account
//! key — the identity key of the account's first device — signs a [`DeviceList`] naming them; the
//! rendezvous stores the signed list and hands it out, but cannot change it, and every peer pins
//! the highest version it has verified (see [`DevicePin`]), as it pins the account key. An
//! account that never published a list has one device, the account key itself
//! ([`DeviceList::single`]), which is how every account started.
//!
//! Like Signal's primary device and Matrix's master key, only the holder of the account key adds
//! or removes a device; the account key's own device cannot be removed. Every other device on a
//! list signs the account key it joins ([`Device::binding`]), so a list — even one its account
//! signed — cannot claim a key whose holder never agreed to be that account's.

use ed25519_dalek::{Signature, VerifyingKey};
use serde::{Deserialize, Serialize};

use super::{Identity, verify};
use crate::codec;

/// The most devices one account has, its first included.
pub const MAX_DEVICES: usize = 6;
/// The longest device label, in characters.
pub const MAX_DEVICE_LABEL: usize = 32;

const DEVICE_LIST_DOMAIN: &[u8] = b"palaver/v1/device-list";
const DEVICE_BINDING_DOMAIN: &[u8] = b"palaver/v1/device-binding";

/// One device of an account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    pub key: VerifyingKey,
    /// What the owner calls it ("laptop"): printable, at most [`MAX_DEVICE_LABEL`] characters.
    pub label: String,
    /// When it was linked (ms since the Unix epoch; the first device: when the list was made).
    pub added_at_ms: u64,
    /// The device key's signature over the account key it belongs to ([`Device::bind`]); the
    /// account key's own device needs none.
    pub binding: Option<Signature>,
}

/// `device`'s signature saying it belongs to the account `account`.
pub fn binding(device: &Identity, account: &VerifyingKey) -> Signature {
    device.sign(DEVICE_BINDING_DOMAIN, account.as_bytes())
}

impl Device {
    /// `device`, joining the account `account` as `label`.
    pub fn bind(
        device: &Identity,
        account: &VerifyingKey,
        label: String,
        added_at_ms: u64,
    ) -> Self {
        Self {
            key: device.public(),
            label,
            added_at_ms,
            binding: Some(binding(device, account)),
        }
    }

    /// Whether this device agreed to be `account`'s.
    fn is_bound_to(&self, account: &VerifyingKey) -> bool {
        if self.key == *account {
            return true;
        }
        self.binding.as_ref().is_some_and(|binding| {
            verify(
                &self.key,
                DEVICE_BINDING_DOMAIN,
                account.as_bytes(),
                binding,
            )
            .is_ok()
        })
    }
}

/// The devices that speak for `account`, at `version` (each change counts up by one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceList {
    pub account: VerifyingKey,
    pub version: u64,
    pub devices: Vec<Device>,
}

/// Why a device list is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceListError {
    #[error("the device list is not signed by the account's key")]
    BadSignature,
    #[error("the device list is for another account key")]
    WrongAccount,
    #[error("the device list does not name the account key's own device")]
    NoAccountDevice,
    #[error("an account has at most {MAX_DEVICES} devices")]
    TooMany,
    #[error("the device list names a device twice")]
    Duplicate,
    #[error("the device list names a key that never agreed to be this account's")]
    Unbound,
    #[error("a device label is printable text of 1 to {MAX_DEVICE_LABEL} characters")]
    BadLabel,
    #[error("the device list is older (version {offered}) than the one already seen ({pinned})")]
    Rollback { pinned: u64, offered: u64 },
    #[error("two different device lists carry version {0}")]
    Conflict(u64),
    #[error("no such device")]
    UnknownDevice,
    #[error("that names several devices; give more of its key")]
    Ambiguous,
    #[error("the device holding the account key cannot be removed")]
    AccountDevice,
}

/// Whether `label` may name a device: 1 to [`MAX_DEVICE_LABEL`] characters, none of them control
/// characters, not blank.
pub fn valid_label(label: &str) -> bool {
    let len = label.chars().count();
    (1..=MAX_DEVICE_LABEL).contains(&len)
        && !label.chars().any(char::is_control)
        && !label.trim().is_empty()
}

impl DeviceList {
    /// The list of an account that never published one: its own key, and nothing else.
    pub fn single(account: VerifyingKey) -> Self {
        Self {
            account,
            version: 0,
            devices: vec![Device {
                key: account,
                label: "first device".into(),
                added_at_ms: 0,
                binding: None,
            }],
        }
    }

    pub fn contains(&self, key: &VerifyingKey) -> bool {
        self.devices.iter().any(|d| d.key == *key)
    }

    pub fn device(&self, key: &VerifyingKey) -> Option<&Device> {
        self.devices.iter().find(|d| d.key == *key)
    }

    /// The one device `query` names: its label, or 8 or more hex digits its key starts with.
    pub fn find(&self, query: &str) -> Result<&Device, DeviceListError> {
        let prefix = query.to_lowercase();
        let by_key =
            |d: &&Device| prefix.len() >= 8 && hex::encode(d.key.as_bytes()).starts_with(&prefix);
        let mut found = self
            .devices
            .iter()
            .filter(|d| d.label == query || by_key(d));
        match (found.next(), found.next()) {
            (Some(device), None) => Ok(device),
            (None, _) => Err(DeviceListError::UnknownDevice),
            (Some(_), Some(_)) => Err(DeviceListError::Ambiguous),
        }
    }

    /// The devices other than `me`'s: where a copy of what `me` sends goes too.
    pub fn others<'a>(&'a self, me: &'a VerifyingKey) -> impl Iterator<Item = &'a Device> {
        self.devices.iter().filter(move |d| d.key != *me)
    }

    /// The next version, with `device` added.
    pub fn with(&self, device: Device) -> Result<Self, DeviceListError> {
        let mut next = self.next();
        next.devices.push(device);
        next.check()?;
        Ok(next)
    }

    /// The next version, without the device keyed `key`.
    pub fn without(&self, key: &VerifyingKey) -> Result<Self, DeviceListError> {
        if *key == self.account {
            return Err(DeviceListError::AccountDevice);
        }
        if !self.contains(key) {
            return Err(DeviceListError::UnknownDevice);
        }
        let mut next = self.next();
        next.devices.retain(|d| d.key != *key);
        Ok(next)
    }

    fn next(&self) -> Self {
        Self {
            account: self.account,
            version: self.version.saturating_add(1),
            devices: self.devices.clone(),
        }
    }

    /// The rules every list keeps, signed or not.
    fn check(&self) -> Result<(), DeviceListError> {
        if !self.contains(&self.account) {
            return Err(DeviceListError::NoAccountDevice);
        }
        if self.devices.len() > MAX_DEVICES {
            return Err(DeviceListError::TooMany);
        }
        if self.devices.iter().any(|d| !valid_label(&d.label)) {
            return Err(DeviceListError::BadLabel);
        }
        for (i, device) in self.devices.iter().enumerate() {
            if self.devices[..i].iter().any(|d| d.key == device.key) {
                return Err(DeviceListError::Duplicate);
            }
        }
        if self.devices.iter().any(|d| !d.is_bound_to(&self.account)) {
            return Err(DeviceListError::Unbound);
        }
        Ok(())
    }

    fn signed_bytes(&self) -> Vec<u8> {
        // A list within the rules is a few hundred bytes: encoding cannot exceed a frame.
        codec::encode(self).unwrap_or_default()
    }
}

/// A device list with the account key's signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedDeviceList {
    list: DeviceList,
    signature: Signature,
}

impl SignedDeviceList {
    /// Signs `list` with the account key (which must be `list.account`).
    pub fn sign(list: DeviceList, account: &Identity) -> Result<Self, DeviceListError> {
        if account.public() != list.account {
            return Err(DeviceListError::WrongAccount);
        }
        list.check()?;
        let signature = account.sign(DEVICE_LIST_DOMAIN, &list.signed_bytes());
        Ok(Self { list, signature })
    }

    /// The list, if it keeps the rules and `account` signed it.
    pub fn verify(&self, account: &VerifyingKey) -> Result<&DeviceList, DeviceListError> {
        if self.list.account != *account {
            return Err(DeviceListError::WrongAccount);
        }
        self.list.check()?;
        verify(
            account,
            DEVICE_LIST_DOMAIN,
            &self.list.signed_bytes(),
            &self.signature,
        )
        .map_err(|_| DeviceListError::BadSignature)?;
        Ok(&self.list)
    }

    /// The list as it claims to be, unverified (for showing what was refused).
    pub fn claimed(&self) -> &DeviceList {
        &self.list
    }
}

/// What a newly verified list changed against the pinned one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceChange {
    /// The list already pinned (or an older copy of an account's implicit list).
    Same,
    /// A newer list: these devices came and went.
    Updated {
        added: Vec<Device>,
        removed: Vec<Device>,
    },
}

/// The device list pinned for one account: only a newer version signed by the account key
/// replaces it, so a server can neither add a device nor bring a revoked one back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DevicePin {
    list: DeviceList,
}

impl DevicePin {
    /// The pin of an account seen for the first time (or one that never published a list).
    pub fn new(account: VerifyingKey) -> Self {
        Self {
            list: DeviceList::single(account),
        }
    }

    pub fn list(&self) -> &DeviceList {
        &self.list
    }

    /// Takes `offered` if it is the account's, verifies, and is not older than the pin.
    pub fn accept(&mut self, offered: &SignedDeviceList) -> Result<DeviceChange, DeviceListError> {
        let list = offered.verify(&self.list.account)?;
        if list.version < self.list.version {
            return Err(DeviceListError::Rollback {
                pinned: self.list.version,
                offered: list.version,
            });
        }
        if list.version == self.list.version {
            return if *list == self.list {
                Ok(DeviceChange::Same)
            } else {
                Err(DeviceListError::Conflict(list.version))
            };
        }
        let added = list
            .devices
            .iter()
            .filter(|d| !self.list.contains(&d.key))
            .cloned()
            .collect();
        let removed = self
            .list
            .devices
            .iter()
            .filter(|d| !list.contains(&d.key))
            .cloned()
            .collect();
        self.list = list.clone();
        Ok(DeviceChange::Updated { added, removed })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use rand_core::OsRng;

    use super::*;

    /// A device bound to the account `first` makes for `ACCOUNT`.
    fn device_of(account: &Identity, label: &str, at: u64) -> Device {
        Device::bind(
            &Identity::generate(&mut OsRng),
            &account.public(),
            label.into(),
            at,
        )
    }

    fn first(account: &Identity) -> DeviceList {
        let mut list = DeviceList::single(account.public());
        list.version = 1;
        list
    }

    #[test]
    fn a_signed_list_verifies_under_its_account_only() {
        let account = Identity::generate(&mut OsRng);
        let other = Identity::generate(&mut OsRng);
        let list = first(&account)
            .with(device_of(&account, "laptop", 5))
            .unwrap();
        let signed = SignedDeviceList::sign(list.clone(), &account).unwrap();
        assert_eq!(signed.verify(&account.public()), Ok(&list));
        assert_eq!(
            signed.verify(&other.public()),
            Err(DeviceListError::WrongAccount)
        );
        assert_eq!(
            SignedDeviceList::sign(list, &other),
            Err(DeviceListError::WrongAccount)
        );
    }

    #[test]
    fn a_server_cannot_add_a_device_or_change_a_label() {
        let account = Identity::generate(&mut OsRng);
        let signed = SignedDeviceList::sign(
            first(&account)
                .with(device_of(&account, "laptop", 5))
                .unwrap(),
            &account,
        )
        .unwrap();
        let mut added = signed.clone();
        added.list.devices.push(device_of(&account, "mallory", 6));
        assert_eq!(
            added.verify(&account.public()),
            Err(DeviceListError::BadSignature)
        );
        let mut relabelled = signed.clone();
        relabelled.list.devices[1].label = "desktop".into();
        assert_eq!(
            relabelled.verify(&account.public()),
            Err(DeviceListError::BadSignature)
        );
        let mut bumped = signed;
        bumped.list.version += 1;
        assert_eq!(
            bumped.verify(&account.public()),
            Err(DeviceListError::BadSignature)
        );
    }

    #[test]
    fn lists_keep_the_rules() {
        let account = Identity::generate(&mut OsRng);
        let mut list = first(&account);
        for i in 1..MAX_DEVICES {
            list = list
                .with(device_of(&account, &format!("d{i}"), i as u64))
                .unwrap();
        }
        assert_eq!(
            list.with(device_of(&account, "one too many", 9)),
            Err(DeviceListError::TooMany)
        );
        let twice = list.devices[1].clone();
        assert_eq!(
            first(&account).with(twice.clone()).unwrap().with(twice),
            Err(DeviceListError::Duplicate)
        );
        for label in ["", "   ", "tab\there", &"x".repeat(MAX_DEVICE_LABEL + 1)] {
            assert_eq!(
                first(&account).with(device_of(&account, label, 1)),
                Err(DeviceListError::BadLabel),
                "{label:?}"
            );
        }
        assert!(valid_label(&"é".repeat(MAX_DEVICE_LABEL)));
        assert_eq!(
            list.without(&account.public()),
            Err(DeviceListError::AccountDevice)
        );
        assert_eq!(
            list.without(&device_of(&account, "stranger", 1).key),
            Err(DeviceListError::UnknownDevice)
        );
        // Found by label or by 8+ hex digits of its key.
        let d1 = list.devices[1].clone();
        assert_eq!(list.find("d1"), Ok(&d1));
        let hex = hex::encode(d1.key.as_bytes());
        assert_eq!(list.find(&hex[..8].to_uppercase()), Ok(&d1));
        assert_eq!(list.find(&hex[..7]), Err(DeviceListError::UnknownDevice));
        assert_eq!(list.find("nobody"), Err(DeviceListError::UnknownDevice));
        let mut orphan = first(&account);
        orphan.devices[0].key = device_of(&account, "x", 1).key;
        assert_eq!(
            SignedDeviceList::sign(orphan, &account),
            Err(DeviceListError::NoAccountDevice)
        );
    }

    #[test]
    fn a_pin_takes_newer_lists_and_refuses_older_and_conflicting_ones() {
        let account = Identity::generate(&mut OsRng);
        let laptop = device_of(&account, "laptop", 5);
        let v1 = first(&account);
        let v2 = v1.with(laptop.clone()).unwrap();
        let v3 = v2.without(&laptop.key).unwrap();
        let sign = |list: &DeviceList| SignedDeviceList::sign(list.clone(), &account).unwrap();

        let mut pin = DevicePin::new(account.public());
        assert_eq!(
            pin.accept(&sign(&v1)),
            Ok(DeviceChange::Updated {
                added: vec![],
                removed: vec![]
            })
        );
        assert_eq!(
            pin.accept(&sign(&v2)),
            Ok(DeviceChange::Updated {
                added: vec![laptop.clone()],
                removed: vec![]
            })
        );
        assert_eq!(pin.accept(&sign(&v2)), Ok(DeviceChange::Same));
        assert_eq!(
            pin.accept(&sign(&v3)),
            Ok(DeviceChange::Updated {
                added: vec![],
                removed: vec![laptop]
            })
        );
        // The revoked laptop does not come back by replaying the list that named it.
        assert_eq!(
            pin.accept(&sign(&v2)),
            Err(DeviceListError::Rollback {
                pinned: 3,
                offered: 2
            })
        );
        let fork = v2.with(device_of(&account, "desktop", 7)).unwrap();
        assert_eq!(fork.version, 3);
        assert_eq!(pin.accept(&sign(&fork)), Err(DeviceListError::Conflict(3)));
        assert_eq!(pin.list(), &v3);
    }

    #[test]
    fn a_list_cannot_name_a_key_that_never_agreed_to_be_the_accounts() {
        let account = Identity::generate(&mut OsRng);
        let bob = Identity::generate(&mut OsRng);
        // bob's key, bound to another account, or to none.
        let elsewhere = Device::bind(
            &bob,
            &Identity::generate(&mut OsRng).public(),
            "b".into(),
            1,
        );
        let unbound = Device {
            binding: None,
            ..elsewhere.clone()
        };
        for claimed in [elsewhere, unbound] {
            assert_eq!(first(&account).with(claimed), Err(DeviceListError::Unbound));
        }
        let mine = Device::bind(&bob, &account.public(), "b".into(), 1);
        assert!(first(&account).with(mine).is_ok());
    }

    #[test]
    fn a_signed_list_round_trips_through_the_codec() {
        let account = Identity::generate(&mut OsRng);
        let signed = SignedDeviceList::sign(
            first(&account)
                .with(device_of(&account, "laptop", 5))
                .unwrap(),
            &account,
        )
        .unwrap();
        let bytes = codec::encode(&signed).unwrap();
        let back: SignedDeviceList = codec::decode(&bytes).unwrap();
        assert_eq!(back.verify(&account.public()), Ok(signed.claimed()));
    }

    proptest! {
        /// Whatever sequence of versions a server replays in whatever order, the pin ends on the
        /// highest one it was shown, and never holds a list the account did not sign.
        #[test]
        fn a_pin_ends_on_the_newest_list_shown(order in proptest::collection::vec(0usize..5, 1..20)) {
            let account = Identity::generate(&mut OsRng);
            let mut versions = vec![first(&account)];
            for i in 1..5 {
                let next = versions[i - 1].with(device_of(&account, &format!("d{i}"), i as u64)).unwrap();
                versions.push(next);
            }
            let signed: Vec<_> = versions
                .iter()
                .map(|l| SignedDeviceList::sign(l.clone(), &account).unwrap())
                .collect();
            let mut pin = DevicePin::new(account.public());
            for &i in &order {
                let _ = pin.accept(&signed[i]);
            }
            let newest = order.iter().max().copied().unwrap_or(0);
            prop_assert_eq!(pin.list(), &versions[newest]);
        }

        /// Bytes from the network decode to a list or an error, and never verify unless signed.
        #[test]
        fn arbitrary_bytes_never_verify(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let account = Identity::generate(&mut OsRng);
            if let Ok(list) = codec::decode::<SignedDeviceList>(&bytes) {
                prop_assert!(list.verify(&account.public()).is_err());
            }
        }
    }
}
