//! Which validator leads which view: the rotation consensus itself uses (`RoundRobin`
//! over the epoch's validators, see [`crate::engine`]), for work that only a node about
//! to propose needs — gathering cross-shard credits ([`crate::cross_shard::run`]): a
//! proposal carries the proposer's credits, and every other validator verifies a
//! proposed block's credits itself, so gathering on every validator only repeats work.

use crate::chain::{NodeState, Scheme};
use commonware_consensus::simplex::elector::{Config, Elector, RoundRobin};
use commonware_consensus::types::{Epoch, Round, View};
use commonware_cryptography::Sha256;
use commonware_utils::ordered::Set;
use trellis_node_state::Kv;
use trellis_node_types::PublicKey;

/// Views after the current one that count as "soon": a node starts gathering one view
/// before its own, so its desk is filled when consensus asks it for a proposal.
pub const AHEAD: u64 = 1;

/// The leader rotation every engine runs with (one definition, so that [`leader`]
/// predicts what consensus elects).
pub fn elector() -> RoundRobin<Sha256> {
    RoundRobin::default()
}

/// The leader of `view` in consensus epoch `epoch` among `validators`, as consensus
/// elects it (`None` for an empty or duplicated set).
pub fn leader(validators: &[PublicKey], epoch: u64, view: u64) -> Option<PublicKey> {
    let set = Set::try_from(validators.to_vec()).ok()?;
    if set.is_empty() {
        return None;
    }
    let elector = <RoundRobin<Sha256> as Config<Scheme>>::build(elector(), &set);
    let who = elector.elect(Round::new(Epoch::new(epoch), View::new(view)), ());
    set.get(usize::try_from(who.get()).ok()?).cloned()
}

/// True when `me` leads, in the shard's current consensus epoch, the view consensus is
/// in or one of the [`AHEAD`] views after it. The current view is the one after the
/// highest certified round this node has seen; before it has seen one in this epoch,
/// that is view 1.
pub fn leads_soon<K: Kv>(state: &NodeState<K>, me: &PublicKey) -> bool {
    let Some(record) = state.shard_epoch.as_ref() else {
        return true;
    };
    let validators = record.validator_keys();
    if !validators.contains(me) {
        return false;
    }
    let (epoch, seen) = state.round;
    let current = if epoch == record.epoch { seen + 1 } else { 1 };
    (current..=current + AHEAD)
        .any(|view| leader(&validators, record.epoch, view).as_ref() == Some(me))
}

#[cfg(test)]
mod tests {
    use super::*;
    use trellis_node_types::{Signer, test_key};

    #[test]
    fn every_validator_leads_in_turn() {
        let validators: Vec<PublicKey> = (0..4).map(|i| test_key(i).public_key()).collect();
        for epoch in 0..3 {
            let leaders: Vec<PublicKey> = (1..=4)
                .map(|view| leader(&validators, epoch, view).unwrap())
                .collect();
            // Four consecutive views: each validator once.
            for v in &validators {
                assert_eq!(leaders.iter().filter(|l| *l == v).count(), 1);
            }
            // The rotation repeats.
            assert_eq!(leader(&validators, epoch, 5), leader(&validators, epoch, 1));
        }
        // The order of the given keys does not matter (consensus sorts them).
        let mut reversed = validators.clone();
        reversed.reverse();
        assert_eq!(leader(&reversed, 2, 7), leader(&validators, 2, 7));
        assert_eq!(leader(&[], 0, 1), None);
    }
}
