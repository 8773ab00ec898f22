//! The prekey directory: one-time prekeys handed out once each, the owner told when low.

use super::*;

impl Service {
    pub(super) fn one_time_count(&mut self, name: &UserName) -> Result<u32, StoreError> {
        if let Some(count) = self.one_time_counts.get(name) {
            return Ok(*count);
        }
        let count = self.store.one_time_count(name)?;
        self.one_time_counts.insert(name.clone(), count);
        Ok(count)
    }

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
            let left = self.one_time_count(&name)?.saturating_sub(1);
            self.one_time_counts.insert(name.clone(), left);
            if let Some(owner) = self.online.get(&name)
                && left < self.limits.prekeys_low
            {
                self.pushes
                    .push((*owner, ServerPush::PrekeysLow { remaining: left }));
            }
        }
        // Durable: a one-time prekey is handed out once, even across a crash.
        Ok(Reply::durable(RendezvousResponse::Prekeys(Box::new(
            bundle,
        ))))
    }
}
