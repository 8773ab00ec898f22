//! The prekey directory: one-time prekeys handed out once each, the owner told when low.

use super::*;

impl Service {
    pub(super) fn fetch_prekeys(&mut self, name: UserName) -> Handled {
        if self.store.user(&name)?.is_none() {
            return Err(refuse(
                RefusalReason::UnknownUser,
                format!("no user {name} is registered here"),
            ));
        }
        let Some(bundle) = self.store.take_bundle(&name)? else {
            return Err(refuse(
                RefusalReason::NoPrekeys,
                format!("{name} has not published prekeys yet"),
            ));
        };
        if bundle.one_time_prekey.is_some() {
            let left = self.store.one_time_count(&name)?;
            if left < self.limits.prekeys_low {
                self.push_to_user(&name, ServerPush::PrekeysLow { remaining: left });
            }
        }
        // Durable: a one-time prekey is handed out once, even across a crash.
        Ok(Reply::durable(RendezvousResponse::Prekeys(Box::new(
            bundle,
        ))))
    }
}
