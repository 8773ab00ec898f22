//! The prekey directory: one-time prekeys handed out once each, the owner told when low.
//!
//! A logged-in user could drain another's one-time prekeys by fetching bundles in a loop (every
//! later session with that user would then start without one, losing their extra forward
//! secrecy). Each requester gets at most [`ONE_TIME_PER_REQUESTER`] of each user's one-time
//! prekeys per [`WINDOW_MS`]; past that it still gets a bundle, with the signed prekey only, as
//! when the stock is empty (X3DH works without one). Counted per instance.

use super::*;

/// One-time prekeys one user may take of another's per window. A real client takes one per new
/// session (a few, with restarts and linked devices).
pub(crate) const ONE_TIME_PER_REQUESTER: u32 = 8;
/// The window the quota counts over.
pub(crate) const WINDOW_MS: u64 = 60 * 60 * 1000;
/// Pairs counted at once; past that, windows that ended are forgotten first, then all.
const MAX_PAIRS: usize = 100_000;

/// (requester, owner) → (window start, one-time prekeys taken in it).
#[derive(Debug, Default)]
pub(crate) struct Takes(HashMap<(UserName, Holder), (u64, u32)>);

impl Takes {
    /// Whether `requester` may take one more of `owner`'s one-time prekeys at `now` (and, if
    /// so, counts it).
    fn allow(&mut self, requester: &UserName, owner: &Holder, now: u64) -> bool {
        if self.0.len() >= MAX_PAIRS {
            self.0
                .retain(|_, (start, _)| now.saturating_sub(*start) < WINDOW_MS);
            if self.0.len() >= MAX_PAIRS {
                self.0.clear();
            }
        }
        let (start, taken) = self
            .0
            .entry((requester.clone(), owner.clone()))
            .or_insert((now, 0));
        if now.saturating_sub(*start) >= WINDOW_MS {
            (*start, *taken) = (now, 0);
        }
        if *taken >= ONE_TIME_PER_REQUESTER {
            return false;
        }
        *taken += 1;
        true
    }
}

impl Service {
    /// A bundle for `name`'s `device` (`None`: the account key's own).
    pub(super) fn fetch_prekeys(
        &mut self,
        me: &UserName,
        name: UserName,
        device: Option<VerifyingKey>,
        now: u64,
    ) -> Handled {
        let Some(user) = self.store.user(&name)? else {
            return Err(refuse(
                RefusalReason::UnknownUser,
                format!("no user {name} is registered here"),
            ));
        };
        let Some(holder) = self.holder_of(&name, &user, &device.unwrap_or(user.identity))? else {
            return Err(refuse(
                RefusalReason::UnknownUser,
                format!("{name} has no device with that key"),
            ));
        };
        let with_one_time = self.prekey_takes.allow(me, &holder, now);
        let Some(bundle) = self.store.take_bundle(&holder, with_one_time)? else {
            return Err(refuse(
                RefusalReason::NoPrekeys,
                format!("{name} has not published prekeys yet on that device"),
            ));
        };
        if bundle.one_time_prekey.is_some() {
            let left = self.store.one_time_count(&holder)?;
            if left < self.limits.prekeys_low {
                self.push_to(&holder, ServerPush::PrekeysLow { remaining: left });
            }
        }
        // Durable: a one-time prekey is handed out once, even across a crash.
        Ok(Reply::durable(RendezvousResponse::Prekeys(Box::new(
            bundle,
        ))))
    }
}
