//! Consortium governance with real `trellis-node` processes on 127.0.0.10–13.
//!
//! Three organisations run the chain. A fourth is admitted through the operator CLI
//! (`governance propose`, `sign` by each admin, `submit`): its process starts from the
//! genesis file and its own key file, catches up, and its validator's signature appears in
//! finalization certificates (`trellis_getBlock` → `signers`); a transfer submitted to it
//! finalizes. Then an organisation is removed through JSON-RPC: its node loses every peer
//! and falls behind, its signature leaves the certificates, and the chain keeps finalizing.
//! Refusals along the way are `-33008` with their reason.

// Test harness code: a failed setup step should fail the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use support::{call, cli, height, status, wait_for};
use trellis_node_api::{BlockInfo, MembersInfo, TransactionStatus, TxState, error_codes, methods};
use trellis_node_types::{
    Encode, GovernanceAction, GovernanceTx, PrivateKey, Proposal, Signer, TxKind, UnsignedTx,
    private_key_from_hex, test_key, to_hex,
};

const CHAIN: &str = "gov-proc";
const EPOCH: u64 = 10;

/// An organisation's node and its full key file (private keys too, for the test's own
/// signing).
struct Org {
    node: support::Node,
    keys: Value,
}

impl Org {
    fn admin(&self) -> PrivateKey {
        private_key_from_hex(self.keys["admin_key"].as_str().unwrap()).unwrap()
    }

    fn node_key(&self) -> String {
        self.keys["node_public_key"].as_str().unwrap().to_string()
    }
}

fn members(addr: SocketAddr) -> MembersInfo {
    serde_json::from_value(call(addr, methods::GET_MEMBERS, Value::Null).unwrap()).unwrap()
}

fn block(addr: SocketAddr, height: u64) -> BlockInfo {
    serde_json::from_value(call(addr, methods::GET_BLOCK, json!({"height": height})).unwrap())
        .unwrap()
}

fn transfer(addr: SocketAddr, from: &PrivateKey, to: &PrivateKey, amount: u64) -> String {
    let account = call(
        addr,
        methods::GET_ACCOUNT,
        json!({"account": to_hex(from.public_key().as_ref())}),
    )
    .unwrap();
    let tx = UnsignedTx {
        chain_id: CHAIN.into(),
        from: from.public_key(),
        nonce: account["nonce"].as_u64().unwrap(),
        fee: 1,
        kind: TxKind::Transfer {
            to: to.public_key(),
            amount,
        },
    }
    .sign(from);
    let result = call(
        addr,
        methods::SEND_TRANSACTION,
        json!({"tx": to_hex(&tx.encode())}),
    )
    .unwrap();
    result["hash"].as_str().unwrap().to_string()
}

fn committed(addr: SocketAddr, method: &str, hash: &str) -> Option<TransactionStatus> {
    call(addr, method, json!({"hash": hash}))
        .ok()
        .and_then(|v| serde_json::from_value::<TransactionStatus>(v).ok())
        .filter(|s| s.state == TxState::Committed)
}

/// The epoch from which a change executed at `height` applies.
fn epoch_after(height: u64) -> u64 {
    (height - 1) / EPOCH + 1
}

fn base_port() -> u16 {
    30_000 + (std::process::id() % 2_000) as u16 * 10
}

/// Keys and configs for four organisations; the genesis names the first three.
fn setup(root: &Path, account: &PrivateKey) -> Vec<Org> {
    let base = base_port();
    let mut orgs = Vec::new();
    let mut founders = Vec::new();
    for i in 0..4 {
        let ip = format!("127.0.0.{}", 10 + i);
        let p2p: SocketAddr = format!("{ip}:{}", base + i as u16).parse().unwrap();
        let rpc: SocketAddr = format!("{ip}:{}", base + 5 + i as u16).parse().unwrap();
        let (node, member) = support::consortium_node(root, CHAIN, &format!("org{i}"), p2p, rpc);
        let keys =
            serde_json::from_str(&std::fs::read_to_string(node.dir.join("keys.json")).unwrap())
                .unwrap();
        if i < 3 {
            founders.push(member);
        }
        orgs.push(Org { node, keys });
    }
    support::consortium_genesis(
        root,
        CHAIN,
        Some(EPOCH),
        &founders,
        std::slice::from_ref(account),
    );
    orgs
}

#[test]
fn fourth_organisation_admitted_and_one_removed() {
    let root = support::TestDir::new();
    let account = test_key(900);
    let payee = test_key(901);
    let mut nodes = setup(root.path(), &account);
    for org in &mut nodes[..3] {
        org.node.start_logging("info");
    }
    let rpcs: Vec<SocketAddr> = nodes.iter().map(|o| o.node.rpc).collect();
    let limit = Duration::from_secs(120);
    wait_for("three organisations finalize", limit, || {
        rpcs[..3].iter().all(|r| height(*r) >= 2)
    });
    let url = format!("http://{}", rpcs[0]);

    // The fourth organisation's node runs before admission: the members refuse it.
    nodes[3].node.start_logging("info");

    // The operator admits org3 with the CLI: propose, three admin signatures, submit.
    let proposal = cli(&[
        "governance",
        "propose",
        "--rpc",
        &url,
        "admit",
        "--name",
        "org3",
        "--admin-key",
        nodes[3].keys["admin_public_key"].as_str().unwrap(),
        "--node-key",
        &nodes[3].node_key(),
        "--p2p-address",
        &format!("127.0.0.13:{}", base_port() + 3),
    ]);
    let approvals: Vec<String> = (0..3)
        .map(|i| {
            cli(&[
                "governance",
                "sign",
                "--key-file",
                nodes[i].node.dir.join("keys.json").to_str().unwrap(),
                "--proposal",
                &proposal,
            ])
        })
        .collect();

    // Two of three approvals are below the threshold: -33008 with the counts.
    let parsed = Proposal::from_hex(&proposal).unwrap();
    let short = GovernanceTx::new(
        parsed.clone(),
        vec![
            parsed.approve(&nodes[0].admin()),
            parsed.approve(&nodes[1].admin()),
        ],
    );
    let (code, message) = call(
        rpcs[0],
        methods::SUBMIT_GOVERNANCE,
        json!({"tx": short.to_hex()}),
    )
    .unwrap_err();
    assert_eq!(code, error_codes::BAD_GOVERNANCE);
    assert!(message.contains("2 of 3"), "{message}");

    let mut submit = vec![
        "governance",
        "submit",
        "--rpc",
        &url,
        "--proposal",
        &proposal,
    ];
    for a in &approvals {
        submit.push("--approval");
        submit.push(a);
    }
    let result: Value = serde_json::from_str(&cli(&submit)).unwrap();
    let hash = result["hash"].as_str().unwrap().to_string();
    wait_for("admission to finalize on every founder", limit, || {
        rpcs[..3]
            .iter()
            .all(|r| committed(*r, methods::GET_GOVERNANCE, &hash).is_some())
    });
    let receipt = committed(rpcs[1], methods::GET_GOVERNANCE, &hash).unwrap();
    assert_eq!(receipt.success, Some(true));
    // The change applies from the epoch after the one holding the block.
    let admitted = epoch_after(receipt.height.unwrap());
    let info = members(rpcs[0]);
    assert!(info.peers.contains(&nodes[3].node_key()), "{info:?}");
    assert!(
        info.epoch >= admitted || info.pending.len() == 1,
        "{info:?}"
    );
    // Replaying the executed transaction is refused as stale.
    let tx = GovernanceTx::new(
        parsed.clone(),
        approvals
            .iter()
            .map(|a| trellis_node_types::Approval::from_hex(a).unwrap())
            .collect(),
    );
    let (code, message) = call(
        rpcs[2],
        methods::SUBMIT_GOVERNANCE,
        json!({"tx": tx.to_hex()}),
    )
    .unwrap_err();
    assert_eq!(code, error_codes::BAD_GOVERNANCE);
    assert!(message.contains("stale sequence"), "{message}");

    // org3's node catches up and validates from epoch `admitted` on.
    let new = rpcs[3];
    wait_for("org3 to validate", Duration::from_secs(240), || {
        status(new)
            .is_some_and(|s| s.epoch >= admitted && s.validators.contains(&nodes[3].node_key()))
            && height(new) + 2 >= height(rpcs[0])
    });
    let first = admitted * EPOCH + 1;
    wait_for(
        "org3's signature in a certificate",
        Duration::from_secs(120),
        || {
            let top = height(rpcs[0]);
            (first..=top).any(|h| {
                block(rpcs[0], h)
                    .signers
                    .is_some_and(|s| s.contains(&nodes[3].node_key()))
            })
        },
    );
    let paid = transfer(new, &account, &payee, 25);
    wait_for("a transfer through org3 to finalize", limit, || {
        committed(rpcs[0], methods::GET_TRANSACTION, &paid).is_some_and(|s| s.success == Some(true))
    });

    // Remove org1 through JSON-RPC, approved by org0, org2 and org3 (3 of 4).
    let info = members(rpcs[0]);
    assert_eq!(info.threshold, 3);
    let removal = Proposal {
        chain_id: CHAIN.into(),
        sequence: info.sequence,
        action: GovernanceAction::Remove {
            name: "org1".into(),
        },
    };
    let admins = [nodes[0].admin(), nodes[2].admin(), nodes[3].admin()];
    let tx = GovernanceTx::signed(removal, &admins.iter().collect::<Vec<_>>());
    let result = call(
        rpcs[3],
        methods::SUBMIT_GOVERNANCE,
        json!({"tx": tx.to_hex()}),
    )
    .unwrap();
    let hash = result["hash"].as_str().unwrap().to_string();
    wait_for("removal to finalize", limit, || {
        committed(rpcs[0], methods::GET_GOVERNANCE, &hash).is_some()
    });
    let receipt = committed(rpcs[0], methods::GET_GOVERNANCE, &hash).unwrap();
    assert_eq!(receipt.success, Some(true));
    let removed = epoch_after(receipt.height.unwrap());
    let remaining = [rpcs[0], rpcs[2], rpcs[3]];
    wait_for(
        "two epochs after the removal",
        Duration::from_secs(240),
        || {
            remaining
                .iter()
                .all(|r| height(*r) >= (removed + 2) * EPOCH)
        },
    );
    let info = members(rpcs[0]);
    assert_eq!(info.members.len(), 3);
    assert!(!info.peers.contains(&nodes[1].node_key()));
    assert!(!info.validators.contains(&nodes[1].node_key()));
    // org1's node is disconnected: no peer has spoken to it for the last 10 s, and it
    // finalized nothing of the epoch that excludes it.
    wait_for("org1 to lose its peers", Duration::from_secs(60), || {
        status(rpcs[1]).is_some_and(|s| s.peers == 0)
    });
    assert!(height(rpcs[1]) <= removed * EPOCH, "org1 kept finalizing");
    // Its signature is in no certificate of the epochs without it.
    let top = height(rpcs[0]);
    let mut certified = 0;
    for h in removed * EPOCH + 1..=top {
        if let Some(signers) = block(rpcs[0], h).signers {
            assert!(
                !signers.contains(&nodes[1].node_key()),
                "org1 signed block {h}"
            );
            certified += 1;
        }
    }
    assert!(certified > 0, "no certificate stored after the removal");
    // One chain everywhere that stayed.
    let common = remaining.iter().map(|r| height(*r)).min().unwrap();
    for h in 1..=common {
        let digest = block(rpcs[0], h).digest;
        for r in &remaining[1..] {
            assert_eq!(block(*r, h).digest, digest, "fork at {h}");
        }
    }
}
