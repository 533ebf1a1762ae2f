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
//! before it starts the epoch's engine, and starts the engine from the newest one (a
//! simplex floor): it never votes in a view at or below it. Peers that finalized nothing
//! in the epoch yet say so; when all have said so (a new network), or none answered in
//! [`FLOOR_WAIT`], the engine starts from the epoch's genesis as before. It waits for every
//! other validator's answer, but at most [`FLOOR_GRACE`] after the first certificate.

use crate::chain::{Finalization, decode_finalization, finalization_verifies};
use commonware_utils::channel::oneshot;
use std::collections::HashSet;
use std::time::SystemTime;
use trellis_node_types::PublicKey;

/// Longest a rejoining validator waits for its peers' latest finalization.
pub const FLOOR_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// The (epoch, view) a finalization certificate names, without verifying it.
pub fn round(validators: usize, certificate: &[u8]) -> Option<(u64, u64)> {
    decode_finalization(validators, certificate).map(|f| {
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
) -> Option<Finalization> {
    let finalization = decode_finalization(validators.len(), certificate)?;
    let round = finalization.proposal.round;
    let valid = round.epoch().get() == epoch
        && round.view().get() > 0
        && finalization_verifies(namespace, validators, &finalization);
    valid.then_some(finalization)
}

/// How long a rejoining validator still listens once it holds a certificate: a peer that
/// is itself behind may have answered first with an older one, and the floor should be
/// the newest finalization any validator holds.
pub const FLOOR_GRACE: std::time::Duration = std::time::Duration::from_millis(300);

/// A request for the epoch's latest finalization, collecting peers' answers (`C`: the
/// verified certificate the engine gets).
pub struct FloorWait<C = Finalization> {
    pub epoch: u64,
    reply: oneshot::Sender<Option<C>>,
    /// Validators of the epoch that answered (a certificate or none).
    answered: HashSet<PublicKey>,
    /// The newest verified certificate so far, with its view.
    best: Option<(u64, C)>,
    until: SystemTime,
}

impl<C> FloorWait<C> {
    pub fn new(epoch: u64, reply: oneshot::Sender<Option<C>>, now: SystemTime) -> Self {
        Self {
            epoch,
            reply,
            answered: HashSet::new(),
            best: None,
            until: now + FLOOR_WAIT,
        }
    }

    /// Whether to stop waiting: [`FLOOR_WAIT`] passed, or [`FLOOR_GRACE`] after the first
    /// certificate.
    pub fn due(&self, now: SystemTime) -> bool {
        now >= self.until
    }

    /// The view of the newest certificate so far.
    pub fn best_view(&self) -> Option<u64> {
        self.best.as_ref().map(|(view, _)| *view)
    }

    /// Records `peer`'s answer: a verified certificate with its view, or `None` (it
    /// finalized nothing in the epoch). True once every validator of the epoch
    /// (`validators`, this node among them: it never answers itself) but this node
    /// answered. A certificate from outside the committee is as good (it verified) but
    /// does not count as an answer.
    pub fn answer_from(
        &mut self,
        peer: PublicKey,
        found: Option<(u64, C)>,
        validators: &[PublicKey],
        now: SystemTime,
    ) -> bool {
        if let Some((view, certificate)) = found {
            if self.best.is_none() {
                self.until = self.until.min(now + FLOOR_GRACE);
            }
            if self.best_view().is_none_or(|best| view > best) {
                self.best = Some((view, certificate));
            }
        }
        if validators.contains(&peer) {
            self.answered.insert(peer);
        }
        self.answered.len() + 1 >= validators.len()
    }

    /// Answers the engine: the newest certificate to start from, or `None` for the
    /// epoch's genesis.
    pub fn finish(self) {
        let _ = self
            .reply
            .send(self.best.map(|(_, certificate)| certificate));
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
        let mut wait: FloorWait<Vec<u8>> = FloorWait::new(3, reply, start);
        let [me, a, b, stranger] = [1, 2, 3, 4].map(|s| test_key(s).public_key());
        let validators = [me, a.clone(), b.clone()];
        assert!(!wait.answer_from(a.clone(), None, &validators, start));
        // Someone outside the committee, or the same peer twice, does not count.
        assert!(!wait.answer_from(stranger, None, &validators, start));
        assert!(!wait.answer_from(a, None, &validators, start));
        assert!(!wait.due(start + FLOOR_WAIT - Duration::from_millis(1)));
        assert!(wait.due(start + FLOOR_WAIT));
        assert!(wait.answer_from(b, None, &validators, start));
        wait.finish();
        assert_eq!(receiver.try_recv().ok(), Some(None));
    }

    #[test]
    fn the_newest_certificate_wins_and_a_certificate_shortens_the_wait() {
        let (reply, mut receiver) = oneshot::channel();
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let mut wait = FloorWait::new(3, reply, start);
        let [me, a, b, c] = [1, 2, 3, 4].map(|s| test_key(s).public_key());
        let validators = [me, a.clone(), b.clone(), c];
        let later = start + Duration::from_millis(100);
        assert!(!wait.answer_from(a, Some((5, vec![5])), &validators, later));
        assert!(wait.due(later + FLOOR_GRACE));
        assert!(!wait.due(later + FLOOR_GRACE - Duration::from_millis(1)));
        // An older certificate (a peer that lags) does not replace a newer one; a newer
        // one does, and the grace does not start again.
        assert!(!wait.answer_from(b.clone(), Some((3, vec![3])), &validators, later));
        assert_eq!(wait.best_view(), Some(5));
        assert!(!wait.answer_from(b, Some((9, vec![9])), &validators, later + FLOOR_GRACE));
        assert_eq!(wait.best_view(), Some(9));
        assert!(wait.due(later + FLOOR_GRACE));
        wait.finish();
        assert_eq!(receiver.try_recv().ok(), Some(Some(vec![9])));
    }

    #[test]
    fn garbage_is_no_floor() {
        let validators = [1, 2].map(|s| test_key(s).public_key());
        assert!(verify_floor(b"ns", &validators, &[0xff; 40], 1).is_none());
        assert!(verify_floor(b"ns", &validators, &[], 1).is_none());
        assert!(round(2, &[1, 2, 3]).is_none());
    }
}
