//! The governance methods of the JSON-RPC API: submit a governance transaction, read the
//! member registry, follow a submitted transaction.

use crate::chain::{GovernanceRefusal, lock};
use crate::rpc::Rpc;
use trellis_node_api::{
    MembersInfo, SubmitGovernanceParams, SubmitGovernanceResult, TransactionQuery,
    TransactionStatus, TxState, error_codes as codes,
};
use trellis_node_state::Kv;
use trellis_node_types::{Block, Digest, GovernanceTx, from_hex, to_hex};

/// A JSON-RPC failure: code and message.
pub type Failure = (i64, String);

fn internal(e: impl std::fmt::Display) -> Failure {
    (codes::INTERNAL, e.to_string())
}

/// `trellis_submitGovernance`: every refusal is `-33008` with the reason.
pub fn submit<K: Kv>(
    rpc: &Rpc<K>,
    p: SubmitGovernanceParams,
) -> Result<SubmitGovernanceResult, Failure> {
    let tx = GovernanceTx::from_hex(&p.tx).map_err(|e| (codes::BAD_GOVERNANCE, e.to_string()))?;
    let proposal = to_hex(&tx.proposal.id().0);
    let sequence = tx.proposal.sequence;
    let hash = lock(&rpc.state)
        .submit_governance(tx, &rpc.chain_id)
        .map_err(|e| match e {
            GovernanceRefusal::Refused(m) => (codes::BAD_GOVERNANCE, m),
            other => (codes::BAD_GOVERNANCE, other.to_string()),
        })?;
    Ok(SubmitGovernanceResult {
        hash: to_hex(&hash.0),
        proposal,
        sequence,
    })
}

/// `trellis_getMembers`.
pub fn members<K: Kv>(rpc: &Rpc<K>) -> Result<MembersInfo, Failure> {
    let validators = rpc.current_validators();
    let state = lock(&rpc.state);
    let r = &state.registry;
    Ok(MembersInfo {
        chain_id: rpc.chain_id.clone(),
        height: state.finalized_height(),
        epoch: r.epoch,
        epoch_length: r.epoch_length,
        epoch_end_height: r.epoch_end(r.epoch).unwrap_or(u64::MAX),
        sequence: r.sequence,
        threshold: r.threshold(),
        members: r.members.clone(),
        validators: validators.iter().map(|v| to_hex(v.as_ref())).collect(),
        peers: r.peers().iter().map(|(k, _)| to_hex(k.as_ref())).collect(),
        pending: r.pending.clone(),
    })
}

/// `trellis_getGovernance`.
pub fn status<K: Kv>(rpc: &Rpc<K>, q: TransactionQuery) -> Result<TransactionStatus, Failure> {
    let bytes = from_hex(&q.hash).filter(|b| b.len() == 32).ok_or_else(|| {
        (
            codes::INVALID_PARAMS,
            "hash is not 32 bytes of hex".to_string(),
        )
    })?;
    let mut hash = [0u8; 32];
    hash.copy_from_slice(&bytes);
    let hash = Digest(hash);
    let state = lock(&rpc.state);
    if let Some(receipt) = state.governance_receipt(&hash).map_err(internal)? {
        return Ok(TransactionStatus {
            hash: q.hash,
            state: TxState::Committed,
            height: Some(receipt.height),
            success: Some(receipt.success),
            error: receipt.error,
        });
    }
    let pending = state.governance_pool.iter().any(|g| g.hash() == hash);
    Ok(TransactionStatus {
        hash: q.hash,
        state: if pending {
            TxState::Pending
        } else {
            TxState::Unknown
        },
        height: None,
        success: None,
        error: None,
    })
}

/// Who signed a block's stored finalization certificate (`trellis_getBlock` → `signers`).
pub fn signers<K: Kv>(rpc: &Rpc<K>, block: &Block) -> Result<Option<Vec<String>>, Failure> {
    let (certificate, validators) = {
        let state = lock(&rpc.state);
        let Some(certificate) = state.finalization(block.height).map_err(internal)? else {
            return Ok(None);
        };
        (
            certificate,
            state.validators_of(block.epoch).map_err(internal)?,
        )
    };
    // A fixed committee (no registry history) has one validator set for ever.
    let validators = validators.unwrap_or_else(|| rpc.current_validators());
    Ok(crate::chain::certificate_signers(&validators, &certificate)
        .map(|keys| keys.iter().map(|k| to_hex(k.as_ref())).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::NodeState;
    use crate::governance::Registry;
    use crate::metrics::ChainMetrics;
    use crate::rpc::PeerTracker;
    use std::sync::{Arc, Mutex};
    use trellis_node_api::{CONTRACT_VERSION, Genesis, GenesisMember, Role};
    use trellis_node_state::MemKv;
    use trellis_node_types::{
        GovernanceAction, MemberSpec, PrivateKey, Proposal, Signer, test_key,
    };

    const CHAIN: &str = "c";

    fn rpc() -> (Rpc<MemKv>, Vec<PrivateKey>) {
        let admins: Vec<PrivateKey> = (0..4).map(|i| test_key(10 + i)).collect();
        let genesis = Genesis {
            contract_version: CONTRACT_VERSION,
            chain_id: CHAIN.into(),
            epoch_length: 10,
            members: (0..4)
                .map(|i| GenesisMember {
                    name: format!("org{i}"),
                    admin_key: to_hex(admins[i].public_key().as_ref()),
                    node_key: to_hex(test_key(20 + i as u64).public_key().as_ref()),
                    p2p_address: "127.0.0.2:9000".into(),
                })
                .collect(),
            balances: vec![],
            sharding: None,
        };
        let state = NodeState::open_consortium(
            MemKv::default(),
            CHAIN,
            &[],
            10,
            Registry::from_genesis(&genesis),
        )
        .unwrap();
        let rpc = Rpc {
            chain_id: CHAIN.into(),
            role: Role::Shard { shard: 0 },
            node_key: test_key(20).public_key(),
            validators: vec![],
            state: Arc::new(Mutex::new(state)),
            metrics: ChainMetrics::new(CHAIN, 0),
            peers: PeerTracker::default(),
            relay: Arc::new(
                crate::relay::HttpRelay::new(Vec::new(), std::time::Duration::from_secs(5))
                    .unwrap(),
            ),
        };
        (rpc, admins)
    }

    fn admit(chain: &str, sequence: u64, name: &str, node: u64) -> Proposal {
        Proposal {
            chain_id: chain.into(),
            sequence,
            action: GovernanceAction::Admit(MemberSpec {
                name: name.into(),
                admin_key: test_key(node + 100).public_key(),
                node_key: test_key(node).public_key(),
                p2p_address: "127.0.0.9:9000".into(),
            }),
        }
    }

    fn refused(rpc: &Rpc<MemKv>, tx: String) -> String {
        let (code, message) = submit(rpc, SubmitGovernanceParams { tx }).unwrap_err();
        assert_eq!(code, codes::BAD_GOVERNANCE, "{message}");
        message
    }

    fn signed(p: Proposal, admins: &[&PrivateKey]) -> String {
        GovernanceTx::signed(p, admins).to_hex()
    }

    #[test]
    fn every_bad_governance_transaction_is_a_clear_33008() {
        let (rpc, a) = rpc();
        let three = [&a[0], &a[1], &a[2]];
        let outsider = test_key(99);
        assert!(refused(&rpc, "zz".into()).contains("not hex"));
        assert!(refused(&rpc, "00".into()).contains("malformed"));
        let good = signed(admit(CHAIN, 0, "org9", 9), &three);
        assert!(refused(&rpc, good[..good.len() - 2].into()).contains("malformed"));
        assert!(
            refused(
                &rpc,
                signed(admit(CHAIN, 0, "org9", 9), &[&outsider, &a[0], &a[1]])
            )
            .contains("not the admin key of a current member")
        );
        assert!(
            refused(&rpc, signed(admit(CHAIN, 0, "org9", 9), &[&a[0], &a[1]]))
                .contains("2 of 4 member approvals is below the threshold")
        );
        assert!(
            refused(
                &rpc,
                signed(admit(CHAIN, 0, "org9", 9), &[&a[0], &a[1], &a[0]])
            )
            .contains("approved twice")
        );
        let mut forged = GovernanceTx::signed(admit(CHAIN, 0, "org9", 9), &three);
        forged.approvals[2].signature = forged.approvals[1].signature.clone();
        assert!(refused(&rpc, forged.to_hex()).contains("not a valid signature"));
        assert!(refused(&rpc, signed(admit("other", 0, "org9", 9), &three)).contains("chain"));
        assert!(refused(&rpc, signed(admit(CHAIN, 1, "org9", 9), &three)).contains("ahead"));
        assert!(
            refused(&rpc, signed(admit(CHAIN, 0, "org1", 9), &three)).contains("already admitted")
        );
        assert!(refused(&rpc, signed(admit(CHAIN, 0, "org9", 21), &three)).contains("node key"));
        let remove = |name: &str| Proposal {
            chain_id: CHAIN.into(),
            sequence: 0,
            action: GovernanceAction::Remove { name: name.into() },
        };
        assert!(refused(&rpc, signed(remove("nobody"), &three)).contains("no current member"));

        // Accepted, then refused as a duplicate; once executed, refused as stale.
        let result = submit(&rpc, SubmitGovernanceParams { tx: good.clone() }).unwrap();
        assert_eq!(result.sequence, 0);
        assert!(refused(&rpc, good.clone()).contains("already pending"));
        let pending = status(
            &rpc,
            TransactionQuery {
                hash: result.hash.clone(),
            },
        )
        .unwrap();
        assert_eq!(pending.state, TxState::Pending);
        {
            let mut state = lock(&rpc.state);
            let tx = state.governance_pool.remove(0);
            state.registry.execute(&tx, CHAIN, 1).unwrap();
        }
        assert!(refused(&rpc, good).contains("stale sequence 0"));
        let info = members(&rpc).unwrap();
        assert_eq!(
            (info.sequence, info.threshold, info.pending.len()),
            (1, 3, 1)
        );
        assert_eq!(info.peers.len(), 5);
        assert_eq!(info.validators.len(), 4);
        assert_eq!(info.epoch_end_height, 10);
    }
}
