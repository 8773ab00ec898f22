//! The mailbox: checked deposits within quota, TTL sweeps, deletion on ack.

use super::*;

impl Service {
    pub(super) fn deposit(
        &mut self,
        sender: VerifyingKey,
        to: UserName,
        envelope: Envelope,
        now: Millis,
    ) -> Handled {
        let Some(recipient) = self.store.user(&to)? else {
            return Err(refuse(
                RefusalReason::UnknownUser,
                format!("no user {to} is registered here"),
            ));
        };
        let Body::Direct(direct) = &envelope.body else {
            return Err(refuse(
                RefusalReason::Invalid,
                "only direct envelopes can be deposited",
            ));
        };
        if direct.sender != sender {
            return Err(refuse(
                RefusalReason::Invalid,
                "the envelope's sender is not the key you are connected with",
            ));
        }
        let Some(holder) = self.holder_of(&to, &recipient, &direct.recipient)? else {
            return Err(refuse(
                RefusalReason::Invalid,
                format!("the envelope's recipient is not one of {to}'s devices"),
            ));
        };
        envelope
            .verify()
            .map_err(|e| refuse(RefusalReason::Invalid, format!("envelope rejected: {e}")))?;
        let id = envelope.id();
        if self.store.holds(&holder, &id)? {
            return Ok(Reply::now(RendezvousResponse::Deposited { id }));
        }
        let item = MailItem {
            envelope,
            deposited_at_ms: now,
        };
        let len = store::encoded_len(&item)?;
        if len > (MAX_ENVELOPE_LEN + 64) as u64 {
            return Err(refuse(
                RefusalReason::TooLarge,
                format!("an envelope may be at most {MAX_ENVELOPE_LEN} bytes"),
            ));
        }
        let usage = self.store.usage(&holder)?;
        usage.admit(len, &self.limits.mailbox).map_err(|e| {
            refuse(
                RefusalReason::QuotaExceeded,
                format!(
                    "{to}'s mailbox is full: {e}; try again once they have collected their mail"
                ),
            )
        })?;
        if let store::Deposit::Stored(len) = self.store.deposit(&holder, &id, &item)? {
            let count = usage.messages.saturating_add(1);
            self.metrics.mailbox_deposits.inc();
            self.metrics.mailbox_messages.inc();
            self.metrics.mailbox_bytes.inc_by(gauge(len));
            self.push_to(&holder, ServerPush::MailWaiting { count });
        }
        Ok(Reply::durable(RendezvousResponse::Deposited { id }))
    }

    pub(super) fn sweep_mail(&mut self, now: Millis) -> Result<(), StoreError> {
        let cutoff = self.limits.mailbox.expiry_cutoff(now);
        loop {
            let removed = self.store.expire(cutoff, 1024)?;
            let done = removed.len() < 1024;
            self.metrics.mailbox_expired.inc_by(removed.len() as u64);
            self.forget_mail(&removed);
            if done {
                return Ok(());
            }
        }
    }

    pub(super) fn forget_mail(&mut self, removed: &[store::Removed]) {
        for r in removed {
            self.metrics.mailbox_messages.dec();
            self.metrics.mailbox_bytes.dec_by(gauge(r.bytes));
        }
    }
}
