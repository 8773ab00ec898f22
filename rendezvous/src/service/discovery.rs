//! Discovery: sessions register their signed peer records and look up one namespace at a time.
//!
//! Only sessions get here (the dispatcher refuses everyone else), a peer registers only under its
//! own peer namespace or a room's ([`discovery::may_register`]), only a record signed by the key
//! it is connected with, and at most [`Limits::discovery_max_registrations_per_peer`] of them.
//! A room's members are shown only to a peer registered there itself: who looks is seen by those
//! it looks at (any session may look a peer up by its id, as it may look up any name).
//! Records live in the store, so any instance over the same database answers for them; expired
//! ones are swept with the mail.

use palaver_protocol::rendezvous::discovery::{self, MAX_DISCOVERED, Namespace};
use palaver_protocol::wire::SignedPeerRecord;

use super::*;
use crate::store::{PutRecord, RecordLimits};

/// Records removed per store call while sweeping.
const SWEEP_BATCH: usize = 1024;

impl Service {
    pub(super) fn register_discovery(
        &mut self,
        peer: PeerId,
        namespace: Namespace,
        record: SignedPeerRecord,
        ttl_secs: u32,
        now: Millis,
    ) -> Handled {
        discovery::may_register(&peer, &namespace)
            .map_err(|e| refuse(RefusalReason::NotAllowed, e.to_string()))?;
        let Some(kept_for) = discovery::kept_for_ms(ttl_secs) else {
            return Err(refuse(
                RefusalReason::Invalid,
                "a registration needs a TTL of at least one second",
            ));
        };
        crate::discovery::open(&record, &peer).map_err(|e| {
            refuse(
                RefusalReason::Invalid,
                format!("the record is not yours to register: {e}"),
            )
        })?;
        let limits = RecordLimits {
            per_peer: self.limits.discovery_max_registrations_per_peer,
            total: self.limits.discovery_max_registrations,
        };
        let expires = now.saturating_add(kept_for);
        match self
            .store
            .put_record(&namespace, &peer, &record, expires, limits)?
        {
            PutRecord::Stored => Ok(Reply::durable(RendezvousResponse::Done)),
            PutRecord::PeerFull => Err(refuse(
                RefusalReason::NotAllowed,
                format!(
                    "a peer holds at most {} discovery registrations; unregister one first",
                    limits.per_peer
                ),
            )),
            PutRecord::Full => Err(refuse(
                RefusalReason::Unavailable,
                "the server holds as many discovery registrations as it can; try again later",
            )),
        }
    }

    pub(super) fn unregister_discovery(&mut self, peer: PeerId, namespace: Namespace) -> Handled {
        self.store.remove_record(&namespace, &peer)?;
        Ok(Reply::durable(RendezvousResponse::Done))
    }

    pub(super) fn discover(&mut self, peer: PeerId, namespace: Namespace, now: Millis) -> Handled {
        if matches!(namespace, Namespace::Room(_))
            && !self.store.holds_record(&namespace, &peer, now)?
        {
            return Err(refuse(
                RefusalReason::NotAllowed,
                "register under a room's namespace before asking who else is there",
            ));
        }
        let mut records = self.store.records(&namespace, now, MAX_DISCOVERED)?;
        // Leave room for the response's own framing around the records.
        let mut budget = self.limits.max_response_bytes.saturating_sub(1024);
        records.retain(|record| {
            let fits = record.0.len() + 16 <= budget;
            if fits {
                budget -= record.0.len() + 16;
            }
            fits
        });
        Ok(Reply::now(RendezvousResponse::Discovered(records)))
    }

    pub(super) fn sweep_discovery(&mut self, now: Millis) -> Result<(), StoreError> {
        while self.store.expire_records(now, SWEEP_BATCH)? == SWEEP_BATCH {}
        Ok(())
    }
}
