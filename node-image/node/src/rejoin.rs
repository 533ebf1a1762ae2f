//! A validator that lost its volume rejoins its epoch from the latest finalization.
//!
//! A restarted validator replays its consensus journal and repeats its own votes; one that
//! lost its volume lost the journal too. Its engine for the current epoch would start at
//! the epoch's first view, and the first timeout there sends `nullify` for a view it may
//! have finalized before the loss. Peers still holding that view see "nullify after
//! finalize" and block it; with a quorum that needs it, the shard halts for good.
//!
//! So a node that started on an empty store, and has not yet finalized a block made after
//! its start, asks the epoch's other validators for their latest finalization certificate
//! before it starts the epoch's engine, and starts the engine from it (a simplex floor):
//! it never votes in a view at or below it. Peers that finalized nothing in the epoch yet
//! say so; when all have said so (a new network), or none answered in [`FLOOR_WAIT`], the
//! engine starts from the epoch's genesis as before.

use crate::chain::Scheme;
use commonware_codec::Decode;
use commonware_consensus::simplex::types::Finalization;
use commonware_utils::channel::oneshot;
use std::collections::HashSet;
use std::time::SystemTime;
use trellis_node_types::{Digest, PublicKey};

/// Longest a rejoining validator waits for its peers' latest finalization.
pub const FLOOR_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// A finalization certificate decoded for a committee of `validators` (not verified).
pub fn decode(validators: usize, certificate: &[u8]) -> Option<Finalization<Scheme, Digest>> {
    Finalization::<Scheme, Digest>::decode_cfg(commonware_codec::Copying(certificate), &validators)
        .ok()
}

/// The (epoch, view) a finalization certificate names, without verifying it.
pub fn round(validators: usize, certificate: &[u8]) -> Option<(u64, u64)> {
    decode(validators, certificate).map(|f| {
        let round = f.proposal.round;
        (round.epoch().get(), round.view().get())
    })
}

/// A finalization certificate of `epoch` with a quorum of valid signatures of `validators`
/// made in `namespace`, above the epoch's genesis view: one the engine can start from.
pub fn verify_floor(
    namespace: &[u8],
    validators: &[PublicKey],
    certificate: &[u8],
    epoch: u64,
) -> Option<Finalization<Scheme, Digest>> {
    let participants = commonware_utils::ordered::Set::try_from(validators.to_vec()).ok()?;
    let scheme = Scheme::verifier(namespace, participants);
    let finalization = decode(validators.len(), certificate)?;
    let round = finalization.proposal.round;
    let valid = round.epoch().get() == epoch
        && round.view().get() > 0
        && finalization.verify(
            &mut commonware_utils::sys_rng(),
            &scheme,
            &commonware_parallel::Sequential,
        );
    valid.then_some(finalization)
}

/// A request for the epoch's latest finalization, waiting for peers' answers.
pub struct FloorWait {
    pub epoch: u64,
    reply: oneshot::Sender<Option<Vec<u8>>>,
    /// Peers that answered they finalized nothing in the epoch.
    empty: HashSet<PublicKey>,
    until: SystemTime,
}

impl FloorWait {
    pub fn new(epoch: u64, reply: oneshot::Sender<Option<Vec<u8>>>, now: SystemTime) -> Self {
        Self {
            epoch,
            reply,
            empty: HashSet::new(),
            until: now + FLOOR_WAIT,
        }
    }

    pub fn expired(&self, now: SystemTime) -> bool {
        now >= self.until
    }

    /// Notes that `peer` finalized nothing in the epoch; true once every validator of the
    /// epoch (`validators`, this node among them: it never answers itself) but this node
    /// said so.
    pub fn empty_from(&mut self, peer: PublicKey, validators: &[PublicKey]) -> bool {
        if validators.contains(&peer) {
            self.empty.insert(peer);
        }
        self.empty.len() + 1 >= validators.len()
    }

    /// Answers the engine: the certificate to start from, or `None` for the epoch's genesis.
    pub fn answer(self, certificate: Option<Vec<u8>>) {
        let _ = self.reply.send(certificate);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use trellis_node_types::{Signer, test_key};

    #[test]
    fn a_rejoining_validator_waits_for_every_other_validator_or_the_deadline() {
        let (reply, mut receiver) = oneshot::channel();
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let mut wait = FloorWait::new(3, reply, start);
        let [me, a, b, stranger] = [1, 2, 3, 4].map(|s| test_key(s).public_key());
        let validators = [me, a.clone(), b.clone()];
        assert!(!wait.empty_from(a.clone(), &validators));
        // Someone outside the committee, or the same peer twice, does not count.
        assert!(!wait.empty_from(stranger, &validators));
        assert!(!wait.empty_from(a, &validators));
        assert!(!wait.expired(start + FLOOR_WAIT - Duration::from_millis(1)));
        assert!(wait.expired(start + FLOOR_WAIT));
        assert!(wait.empty_from(b, &validators));
        wait.answer(None);
        assert_eq!(receiver.try_recv().ok(), Some(None));
    }

    #[test]
    fn garbage_is_no_floor() {
        let validators = [1, 2].map(|s| test_key(s).public_key());
        assert!(verify_floor(b"ns", &validators, &[0xff; 40], 1).is_none());
        assert!(verify_floor(b"ns", &validators, &[], 1).is_none());
        assert!(round(2, &[1, 2, 3]).is_none());
    }
}
