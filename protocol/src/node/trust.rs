//! Which identity key a user name stands for, and how far this node trusts it: keys pinned on
//! first use, changes caught, verified contacts guarded (Signal's model).
//!
//! The rendezvous tells us which key a name has. The first key we hear for a name is pinned; a
//! later, different answer is a *key change*: the user reinstalled, or the server lies. Nothing
//! here can tell which, so the change is always reported. What happens next depends on whether the
//! user compared safety numbers with that contact (`verify --confirm`):
//! - unverified: the new key replaces the old one and sending goes on, with a warning on the next
//!   send;
//! - verified: the verified key stays pinned, the new one waits for confirmation, and sends to the
//!   name are refused until the user confirms it.

use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};

use crate::UserName;

/// What this node holds about one user name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contact {
    /// The identity key messages to this name are sealed for.
    pub key: [u8; 32],
    /// The key the conversation with this name is filed under: the first one pinned, so that a
    /// key change continues the same conversation.
    pub conversation: [u8; 32],
    /// The user confirmed `key` by comparing safety numbers.
    pub verified: bool,
    /// A different key the rendezvous gave for a verified contact, waiting for the user to
    /// confirm it; sends to the name are refused meanwhile.
    pub unconfirmed: Option<[u8; 32]>,
    /// The key before a change no send has warned about yet (unverified contacts).
    pub unreported_change: Option<[u8; 32]>,
}

/// What an answer naming a key for a contact meant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observed {
    /// The key we already hold (or already wait on).
    Same,
    /// A different key from the one we hold: report it (`old` → `new`).
    Changed { old: [u8; 32], new: [u8; 32] },
}

/// Why a message cannot be sent to a contact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the key changed since it was verified")]
pub struct Unconfirmed {
    pub verified: [u8; 32],
    pub new: [u8; 32],
}

impl Contact {
    /// A contact heard of for the first time: its key pinned, not verified.
    pub fn first(key: [u8; 32]) -> Self {
        Self {
            key,
            conversation: key,
            verified: false,
            unconfirmed: None,
            unreported_change: None,
        }
    }

    /// The user vouched for the key the name has now (verified, and no change waits).
    pub fn is_verified(&self) -> bool {
        self.verified && self.unconfirmed.is_none()
    }

    /// The key the rendezvous says the name has now: the one the user would confirm, compare or
    /// be warned about.
    pub fn latest(&self) -> [u8; 32] {
        self.unconfirmed.unwrap_or(self.key)
    }

    /// An answer (lookup, subscription, who-is, prekey bundle) gave `key` for this name.
    pub fn observe(&mut self, key: [u8; 32]) -> Observed {
        let old = self.latest();
        if key == old {
            return Observed::Same;
        }
        if self.verified {
            // Back to the verified key: nothing waits any more.
            self.unconfirmed = (key != self.key).then_some(key);
        } else {
            self.unreported_change.get_or_insert(self.key);
            self.key = key;
        }
        Observed::Changed { old, new: key }
    }

    /// The key to seal a message for, or why not; the change to warn about, once.
    pub fn key_to_send(&mut self) -> Result<([u8; 32], Option<[u8; 32]>), Unconfirmed> {
        if let Some(new) = self.unconfirmed {
            return Err(Unconfirmed {
                verified: self.key,
                new,
            });
        }
        Ok((self.key, self.unreported_change.take()))
    }

    /// The user compared safety numbers over [`Contact::latest`] and vouches for it: it is
    /// the one sent to, verified.
    pub fn confirm(&mut self) -> Confirmed {
        let confirmed = Confirmed {
            newly_verified: !self.is_verified(),
            replaced: (self.key != self.latest()).then_some(self.key),
        };
        self.key = self.latest();
        self.unconfirmed = None;
        self.unreported_change = None;
        self.verified = true;
        confirmed
    }
}

/// What a confirmation changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub struct Confirmed {
    /// The contact was not verified before: worth a line in the conversation.
    pub newly_verified: bool,
    /// The key that stayed pinned until now, replaced by the confirmed one: what was sealed
    /// for it can no longer be read, and fails.
    pub replaced: Option<[u8; 32]>,
}

/// What a rendezvous answer was about: users named in it that nobody asked about are ignored
/// (a server cannot slip in keys for names we never looked up).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Asked {
    Names(Vec<UserName>),
    Keys(Vec<[u8; 32]>),
    /// These names, but only to check the keys of those already contacts: asking about
    /// someone (their presence, say) pins nobody new.
    ContactsAmong(Vec<UserName>),
}

impl Asked {
    pub fn covers(&self, name: &UserName, key: &VerifyingKey) -> bool {
        match self {
            Asked::Names(names) | Asked::ContactsAmong(names) => names.contains(name),
            Asked::Keys(keys) => keys.contains(&key.to_bytes()),
        }
    }
}

/// A contact's key changed: to report, in the conversation and to `listen`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyChange {
    pub name: UserName,
    pub old: [u8; 32],
    pub new: [u8; 32],
    /// The user had verified the old key: sends wait for a confirmation.
    pub verified: bool,
}

impl KeyChange {
    /// The key whose pending messages fail now: an unverified contact's, replaced at once. A
    /// verified contact keeps its key until the user confirms the new one (see
    /// [`Contact::confirm`]).
    pub fn replaced_now(&self) -> Option<[u8; 32]> {
        (!self.verified).then_some(self.old)
    }

    /// The line filed in the conversation with the contact.
    pub fn notice(&self) -> String {
        let name = &self.name;
        if self.verified {
            format!(
                "{name}'s safety number changed. You had verified the old one: messages to \
                 {name} wait until you compare the new one (palaver verify {name}) and confirm it."
            )
        } else {
            format!("{name}'s safety number changed. Compare it: palaver verify {name}")
        }
    }
}

impl Unconfirmed {
    /// Why a send to `name` is refused.
    pub fn refusal(&self, name: &UserName) -> String {
        format!(
            "{name}'s safety number changed since you verified it (key {} is now {}): someone \
             may be in between. Compare the new one with `palaver verify {name}`, then accept \
             it with `palaver verify {name} --confirm`",
            fingerprint(&self.verified),
            fingerprint(&self.new),
        )
    }
}

/// The warning the first send to `name` after its (unverified) key changed carries.
pub fn change_warning(name: &UserName) -> String {
    format!(
        "{name}'s safety number changed (a reinstall, or someone in between); compare it with \
         `palaver verify {name}`"
    )
}

/// What showing (or confirming) a contact's safety number takes first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifyStep {
    /// Ask the rendezvous for the key first, so that a change shows now.
    LookUp,
    /// Answer from the pinned key.
    Answer,
}

/// Why a safety number cannot be shown.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("{0} is not a contact yet and the rendezvous is not connected")]
    Offline(UserName),
    #[error("unknown user {0} at this rendezvous")]
    Unknown(UserName),
    #[error("{0}'s key is not valid")]
    BadKey(UserName),
}

/// Before verifying `name`: looked up when the rendezvous can be asked (`logged_in`), else
/// answered from the pinned key if there is one (`known`).
pub fn verify_step(
    name: &UserName,
    logged_in: bool,
    known: bool,
) -> Result<VerifyStep, VerifyError> {
    match (logged_in, known) {
        (true, _) => Ok(VerifyStep::LookUp),
        (false, true) => Ok(VerifyStep::Answer),
        (false, false) => Err(VerifyError::Offline(name.clone())),
    }
}

/// The line filed in the conversation with `name` when the user marks it verified.
pub fn verified_notice(name: &UserName) -> String {
    format!("You marked {name} as verified.")
}

/// A key's fingerprint as shown to people (or a placeholder for bytes that are no key).
pub fn fingerprint(key: &[u8; 32]) -> String {
    VerifyingKey::from_bytes(key)
        .map(|key| crate::Fingerprint::of(&key).to_string())
        .unwrap_or_else(|_| "(not a key)".into())
}

/// What an answer taught us.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Learned {
    /// Who holds which key, for every user the answer covered (to name their messages; a
    /// name is not a pin, so under [`Asked::ContactsAmong`] strangers are named too).
    pub named: Vec<(UserName, [u8; 32])>,
    /// Contact records to write, new or changed.
    pub contacts: Vec<(UserName, Contact)>,
    pub changes: Vec<KeyChange>,
    /// Contacts heard of for the first time.
    pub new_contacts: Vec<UserName>,
}

/// Takes in what an answer said about users' keys: first keys pinned, changed ones reported,
/// users nobody asked about (and our own key, `me`) left out. `contact_of` reads what we hold
/// (`None` for a name that cannot be read: it is skipped).
pub fn learn<'a>(
    me: &VerifyingKey,
    users: impl IntoIterator<Item = (&'a UserName, &'a VerifyingKey)>,
    asked: &Asked,
    mut contact_of: impl FnMut(&UserName) -> Option<Option<Contact>>,
) -> Learned {
    let mut learned = Learned::default();
    for (name, key) in users {
        if !asked.covers(name, key) || key == me {
            continue;
        }
        let bytes = key.to_bytes();
        learned.named.push((name.clone(), bytes));
        let contact = match contact_of(name) {
            Some(Some(mut contact)) => match contact.observe(bytes) {
                Observed::Same => continue,
                Observed::Changed { old, new } => {
                    let verified = contact.verified;
                    let name = name.clone();
                    learned.changes.push(KeyChange {
                        name,
                        old,
                        new,
                        verified,
                    });
                    contact
                }
            },
            Some(None) if matches!(asked, Asked::ContactsAmong(_)) => continue,
            Some(None) => {
                learned.new_contacts.push(name.clone());
                Contact::first(bytes)
            }
            None => continue,
        };
        learned.contacts.push((name.clone(), contact));
    }
    learned
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifying_looks_the_key_up_when_it_can_and_else_needs_a_pinned_one() {
        let bob = UserName::new("bob").unwrap();
        assert_eq!(verify_step(&bob, true, false), Ok(VerifyStep::LookUp));
        assert_eq!(verify_step(&bob, false, true), Ok(VerifyStep::Answer));
        let offline = verify_step(&bob, false, false).unwrap_err();
        assert_eq!(
            offline.to_string(),
            "bob is not a contact yet and the rendezvous is not connected"
        );
    }

    #[test]
    fn an_answer_pins_first_keys_reports_changes_and_ignores_what_nobody_asked() {
        let key = |seed: u8| crate::Identity::from_secret_bytes(&[seed; 32]).public();
        let (me, bob, eve, carol) = (key(1), key(2), key(3), key(4));
        let name = |n: &str| UserName::new(n).unwrap();
        let (bob_name, eve_name, carol_name, me_name) =
            (name("bob"), name("eve"), name("carol"), name("me"));
        let asked = Asked::Names(vec![bob_name.clone(), carol_name.clone(), me_name.clone()]);
        // Bob is new; carol was pinned to another key; eve was not asked about; ours is ours.
        let held = Contact::first(key(9).to_bytes());
        let users = [
            (&bob_name, &bob),
            (&eve_name, &eve),
            (&carol_name, &carol),
            (&me_name, &me),
        ];
        let learned = learn(&me, users, &asked, |n| {
            Some((*n == carol_name).then(|| held.clone()))
        });
        assert_eq!(learned.new_contacts, std::slice::from_ref(&bob_name));
        let names: Vec<&str> = learned.named.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["bob", "carol"]);
        assert_eq!(learned.contacts.len(), 2);
        assert_eq!(
            learned.changes,
            vec![KeyChange {
                name: carol_name,
                old: key(9).to_bytes(),
                new: carol.to_bytes(),
                verified: false
            }]
        );
    }

    const OLD: [u8; 32] = [1; 32];
    const NEW: [u8; 32] = [2; 32];
    const THIRD: [u8; 32] = [3; 32];

    #[test]
    fn an_unverified_contact_follows_a_changed_key_and_warns_once() {
        let mut bob = Contact::first(OLD);
        assert_eq!(bob.observe(OLD), Observed::Same);
        assert_eq!(bob.key_to_send(), Ok((OLD, None)));
        assert_eq!(bob.observe(NEW), Observed::Changed { old: OLD, new: NEW });
        assert_eq!(bob.observe(NEW), Observed::Same, "reported once per change");
        assert_eq!(bob.key_to_send(), Ok((NEW, Some(OLD))));
        assert_eq!(
            bob.key_to_send(),
            Ok((NEW, None)),
            "the warning is given once"
        );
        assert_eq!(bob.conversation, OLD, "the conversation goes on");
    }

    #[test]
    fn a_verified_contact_keeps_its_key_and_refuses_sends_until_the_new_one_is_confirmed() {
        let mut bob = Contact::first(OLD);
        let first = bob.confirm();
        assert_eq!(
            first,
            Confirmed {
                newly_verified: true,
                replaced: None
            }
        );
        assert!(bob.verified);
        assert_eq!(bob.observe(NEW), Observed::Changed { old: OLD, new: NEW });
        assert_eq!(bob.key, OLD);
        assert_eq!(
            bob.key_to_send(),
            Err(Unconfirmed {
                verified: OLD,
                new: NEW
            })
        );
        // Another change while waiting: the latest is what waits.
        assert_eq!(
            bob.observe(THIRD),
            Observed::Changed {
                old: NEW,
                new: THIRD
            }
        );
        assert_eq!(bob.latest(), THIRD);
        // What was sealed for OLD (kept pinned until now) fails; the new key is verified now
        // (the changed one was not: worth the line again).
        assert_eq!(
            bob.confirm(),
            Confirmed {
                newly_verified: true,
                replaced: Some(OLD)
            }
        );
        assert_eq!(bob.key_to_send(), Ok((THIRD, None)));
        assert!(bob.verified);
    }

    #[test]
    fn an_unverified_contacts_old_key_fails_at_once_and_a_verified_ones_waits_for_the_user() {
        let change = |verified| KeyChange {
            name: UserName::new("bob").unwrap(),
            old: OLD,
            new: NEW,
            verified,
        };
        assert_eq!(change(false).replaced_now(), Some(OLD));
        assert_eq!(change(true).replaced_now(), None);
    }

    #[test]
    fn a_verified_contact_whose_key_comes_back_sends_again() {
        let mut bob = Contact::first(OLD);
        let _ = bob.confirm();
        bob.observe(NEW);
        assert_eq!(bob.observe(OLD), Observed::Changed { old: NEW, new: OLD });
        assert_eq!(bob.unconfirmed, None);
        assert_eq!(bob.key_to_send(), Ok((OLD, None)));
    }

    #[test]
    fn asking_about_someone_checks_contacts_keys_and_pins_nobody_new() {
        let key = |b| ed25519_dalek::SigningKey::from_bytes(&[b; 32]).verifying_key();
        let me = key(9);
        let (bob, cat) = (UserName::new("bob").unwrap(), UserName::new("cat").unwrap());
        let (bob_key, cat_key) = (key(1), key(2));
        let users = [(&bob, &bob_key), (&cat, &cat_key)];
        let contacts = |name: &UserName| {
            Some((name.as_str() == "bob").then(|| Contact::first(key(3).to_bytes())))
        };
        let asked = Asked::ContactsAmong(vec![bob.clone(), cat.clone()]);
        let learned = learn(&me, users, &asked, contacts);
        assert_eq!(learned.changes.len(), 1, "bob's key changed");
        assert_eq!(learned.contacts.len(), 1, "cat is not pinned");
        assert!(learned.new_contacts.is_empty());
        let learned = learn(&me, users, &Asked::Names(vec![cat.clone()]), contacts);
        assert_eq!(
            learned.new_contacts,
            std::slice::from_ref(&cat),
            "looked up by name, cat is pinned"
        );
    }
}
