//! Mailbox policy: how much a recipient's mailbox may hold, and for how long.
//!
//! The server keeps each recipient's [`Usage`]; a deposit is admitted only if it fits both the
//! message and byte quotas, and a held message expires `ttl` after it was deposited, read or not.

use std::time::Duration;

use super::Millis;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MailboxLimits {
    pub max_messages: u32,
    pub max_bytes: u64,
    pub ttl: Duration,
}

/// What one recipient's mailbox holds now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub messages: u32,
    pub bytes: u64,
}

/// Why a deposit does not fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum QuotaError {
    #[error("the mailbox holds its maximum of {max} messages")]
    Messages { max: u32 },
    #[error("the mailbox holds {used} of its {max} bytes; this message needs {need}")]
    Bytes { used: u64, max: u64, need: u64 },
}

impl Usage {
    /// Whether a message of `len` bytes fits.
    pub fn admit(&self, len: u64, limits: &MailboxLimits) -> Result<(), QuotaError> {
        if self.messages >= limits.max_messages {
            return Err(QuotaError::Messages {
                max: limits.max_messages,
            });
        }
        if self.bytes.saturating_add(len) > limits.max_bytes {
            return Err(QuotaError::Bytes {
                used: self.bytes,
                max: limits.max_bytes,
                need: len,
            });
        }
        Ok(())
    }

    pub fn add(&mut self, len: u64) {
        self.messages = self.messages.saturating_add(1);
        self.bytes = self.bytes.saturating_add(len);
    }

    pub fn remove(&mut self, len: u64) {
        self.messages = self.messages.saturating_sub(1);
        self.bytes = self.bytes.saturating_sub(len);
    }

    pub fn is_empty(&self) -> bool {
        self.messages == 0
    }
}

impl MailboxLimits {
    /// Whether a message deposited at `deposited_at` has expired at `now`.
    pub fn expired(&self, deposited_at: Millis, now: Millis) -> bool {
        now.saturating_sub(deposited_at) >= self.ttl_ms()
    }

    /// Messages deposited before this time have expired at `now` (agrees with [`Self::expired`]).
    pub fn expiry_cutoff(&self, now: Millis) -> Millis {
        now.saturating_add(1).saturating_sub(self.ttl_ms())
    }

    fn ttl_ms(&self) -> Millis {
        u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: MailboxLimits = MailboxLimits {
        max_messages: 2,
        max_bytes: 100,
        ttl: Duration::from_secs(10),
    };

    #[test]
    fn deposits_are_admitted_until_either_quota_is_reached() {
        let mut usage = Usage::default();
        assert_eq!(usage.admit(60, &LIMITS), Ok(()));
        usage.add(60);
        assert_eq!(
            usage.admit(41, &LIMITS),
            Err(QuotaError::Bytes {
                used: 60,
                max: 100,
                need: 41
            })
        );
        assert_eq!(usage.admit(40, &LIMITS), Ok(()));
        usage.add(40);
        assert_eq!(
            usage.admit(0, &LIMITS),
            Err(QuotaError::Messages { max: 2 })
        );
        usage.remove(60);
        assert_eq!(usage.admit(60, &LIMITS), Ok(()));
        assert!(
            QuotaError::Messages { max: 2 }
                .to_string()
                .contains("maximum of 2")
        );
    }

    #[test]
    fn messages_expire_ttl_after_deposit() {
        assert!(!LIMITS.expired(1_000, 10_999));
        assert!(LIMITS.expired(1_000, 11_000));
        assert_eq!(LIMITS.expiry_cutoff(11_000), 1_001);
        assert_eq!(LIMITS.expiry_cutoff(10_999), 1_000);
        // A clock stepping back expires nothing.
        assert!(!LIMITS.expired(1_000, 0));
        assert_eq!(LIMITS.expiry_cutoff(5), 0);
    }
}
