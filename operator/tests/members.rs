//! A consortium member admitted and removed through its `ChainMember` resource.
//!
//! Real: the kube-apiserver (the test cluster; kwok runs no process in the pods), the
//! operator's two controllers (in-process) and their real node client (`NodeRpc` over
//! the `Loopback` resolver), and a 3-organisation consortium chain of real `trellis-node`
//! processes on 127.0.70.1–3 started from the Secret and ConfigMaps the operator wrote
//! into the cluster. The test plays the key holders (the console): it signs the
//! proposal the operator publishes with the organisations' admin keys and hands the
//! transaction over in a Secret. The 4th organisation's validator runs on 127.0.70.4
//! from the objects the operator provisions after its admission; its StatefulSet,
//! deleted, is back within seconds (the member controller's watch).

// Test harness code: a failed setup step should fail the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use trellis_crd::member::{ChainMemberSpec, NetworkRef};
use trellis_crd::topology::{NetworkId, plan};
use trellis_crd::{
    ChainMember, ChainNetwork, ChainNetworkSpec, ConsortiumMember, MemberPhase, NetworkMode,
};
use trellis_e2e::kube::{apply_crds, eventually, test_namespace};
use trellis_node_types::{GovernanceTx, PrivateKey, Proposal, Signer as _, test_key, to_hex};
use trellis_operator::build;
use trellis_operator::chain::{ChainClient, CommitteeNodes, NodeRpc};
use trellis_operator::endpoints::{Loopback, NodeRef};
use trellis_operator::member::{self, nodes::member_committee};
use trellis_operator::metrics::Metrics;

const WAIT: Duration = Duration::from_secs(180);

fn admin(seed: u64) -> PrivateKey {
    test_key(seed)
}

fn admin_hex(seed: u64) -> String {
    to_hex(admin(seed).public_key().as_ref())
}

fn condition(m: &ChainMember) -> Option<(String, String, String)> {
    m.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == member::ADMITTED)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// Writes the governance transaction Secret and points the member at it.
async fn hand_over(ns: &str, client: &kube::Client, member: &str, secret: &str, tx: &str) {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    secrets
        .create(
            &PostParams::default(),
            &Secret {
                metadata: ObjectMeta {
                    name: Some(secret.to_owned()),
                    ..ObjectMeta::default()
                },
                data: Some(BTreeMap::from([(
                    "tx".to_owned(),
                    ByteString(tx.as_bytes().to_vec()),
                )])),
                ..Secret::default()
            },
        )
        .await
        .unwrap();
    let members: Api<ChainMember> = Api::namespaced(client.clone(), ns);
    members
        .patch(
            member,
            &PatchParams::default(),
            &Patch::Merge(&serde_json::json!({"spec": {"governanceTxSecret": secret}})),
        )
        .await
        .unwrap();
}

/// Waits for the member to publish a proposal for `action` and returns it.
async fn published(members: &Api<ChainMember>, action: &str, reason: &str) -> Proposal {
    eventually(&format!("{action} proposal published"), WAIT, || {
        let members = members.clone();
        async move {
            let m = members.get("org-d").await.ok()?;
            let governance = m.status.as_ref()?.governance.clone()?;
            let (_, r, _) = condition(&m)?;
            (governance.action == action && r == reason)
                .then(|| Proposal::from_hex(&governance.proposal).unwrap())
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fourth_organisation_is_admitted_through_its_member_resource_and_removed_again() {
    let Some(binary) = support::node_binary() else {
        eprintln!("SKIPPED: no trellis-node binary");
        return;
    };
    let Some(ns) = test_namespace("op-gov").await else {
        return;
    };
    apply_crds(&ns.client, trellis_crd::crds()).await.unwrap();

    // A running 3-organisation consortium (one validator each), epochs of 10 blocks.
    let mut spec = ChainNetworkSpec::new(NetworkMode::Consortium, "trellis-node:e2e");
    spec.members = ["org-a", "org-b", "org-c"]
        .iter()
        .zip(1..)
        .map(|(name, seed)| ConsortiumMember {
            name: (*name).to_owned(),
            admin_public_key: admin_hex(seed),
            nodes: 1,
        })
        .collect();
    spec.validators_per_shard = 3;
    spec.beacon.validators = 3;
    spec.epoch_length = 10;
    let topology = plan(&NetworkId::new(ns.name.clone(), "alpha"), &spec).unwrap();
    let shard = topology.shards().next().unwrap().clone();
    let newcomer = member_committee("alpha", "org-d", 1);
    let mut resolver = Loopback::default();
    for (node, last) in shard.nodes.iter().chain(&newcomer.nodes).zip(1u8..) {
        resolver
            .nodes
            .insert(node.name.clone(), IpAddr::from([127, 0, 70, last]));
    }

    let chain = NodeRpc::new(Arc::new(resolver.clone()), Duration::from_secs(2));
    let (_, stop) =
        support::start_operator(&ns, Arc::new(chain.clone()), Arc::new(Metrics::new()), true);
    let networks: Api<ChainNetwork> = ns.api();
    networks
        .create(&PostParams::default(), &ChainNetwork::new("alpha", spec))
        .await
        .unwrap();

    let config_maps: Api<ConfigMap> = ns.api();
    let secrets: Api<Secret> = ns.api();
    let objects = |config: String, genesis: String, keys: String| {
        let (config_maps, secrets) = (config_maps.clone(), secrets.clone());
        async move {
            Some((
                config_maps.get_opt(&config).await.ok()??,
                config_maps.get_opt(&genesis).await.ok()??,
                secrets.get_opt(&keys).await.ok()??,
            ))
        }
    };
    let (config_map, genesis, keys) = eventually("shard 0 objects", WAIT, || {
        objects(
            build::config_map_name(&shard),
            "alpha-genesis".to_owned(),
            build::key_secret_name(&shard),
        )
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut founders = support::materialise(
        dir.path(),
        &ns.name,
        &shard,
        &config_map,
        &genesis,
        &keys,
        &resolver,
        &binary,
    );
    for node in &mut founders {
        node.start();
    }

    // The 4th organisation asks to join.
    let members: Api<ChainMember> = ns.api();
    members
        .create(
            &PostParams::default(),
            &ChainMember::new(
                "org-d",
                ChainMemberSpec {
                    network: NetworkRef {
                        name: "alpha".to_owned(),
                        namespace: None,
                    },
                    organization: "org-d".to_owned(),
                    admin_public_key: admin_hex(4),
                    nodes: 1,
                    node_key_secret: None,
                    remove: false,
                    governance_tx_secret: None,
                },
            ),
        )
        .await
        .unwrap();
    let proposal = published(&members, "Admit", "AwaitingApprovals").await;
    let m = members.get("org-d").await.unwrap();
    let governance = m.status.as_ref().unwrap().governance.clone().unwrap();
    assert_eq!(governance.threshold, 3);
    assert_eq!(governance.node, "alpha-m-org-d-0");
    let mut approvers = governance.approvers.clone();
    approvers.sort();
    let mut founders_keys: Vec<String> = (1..=3).map(admin_hex).collect();
    founders_keys.sort();
    assert_eq!(approvers, founders_keys);
    assert_eq!(m.status.as_ref().unwrap().phase, Some(MemberPhase::Invited));
    let (_, _, message) = condition(&m).unwrap();
    assert!(message.contains("needs 3 approvals"), "{message}");

    // A forged transaction: members' keys, but one signature is another member's.
    let mut forged = GovernanceTx::signed(proposal.clone(), &[&admin(1), &admin(2), &admin(3)]);
    forged.approvals[0].signature = forged.approvals[1].signature.clone();
    hand_over(
        &ns.name,
        &ns.client,
        "org-d",
        "org-d-forged",
        &forged.to_hex(),
    )
    .await;
    let refused = eventually("forged transaction refused", WAIT, || {
        let members = members.clone();
        async move {
            let (status, reason, message) = condition(&members.get("org-d").await.ok()?)?;
            (reason == "GovernanceTxInvalid").then_some((status, message))
        }
    })
    .await;
    assert_eq!(refused.0, "False");
    assert!(
        refused.1.contains("bad signature from admin key") && refused.1.contains("org-d-forged"),
        "{}",
        refused.1
    );
    // Signed by someone who is not a member.
    let stranger = GovernanceTx::signed(proposal.clone(), &[&admin(1), &admin(2), &admin(9)]);
    hand_over(
        &ns.name,
        &ns.client,
        "org-d",
        "org-d-stranger",
        &stranger.to_hex(),
    )
    .await;
    let message = eventually("stranger's approval refused", WAIT, || {
        let members = members.clone();
        async move {
            let (_, reason, message) = condition(&members.get("org-d").await.ok()?)?;
            (reason == "GovernanceTxInvalid" && message.contains("org-d-stranger"))
                .then_some(message)
        }
    })
    .await;
    assert!(
        message.contains(&admin_hex(9))
            && message.contains("not the admin key of a current member"),
        "{message}"
    );
    let sets: Api<StatefulSet> = ns.api();
    assert!(
        sets.get_opt(&newcomer.name).await.unwrap().is_none(),
        "nothing is provisioned for a refused admission"
    );
    let registry = CommitteeNodes {
        chain_id: topology.genesis.chain_id.clone(),
        nodes: support::node_refs(&ns.name, &shard),
    };
    let before = chain.registry(&registry).await.unwrap();
    assert_eq!(before.members.len(), 3);
    assert_eq!(
        before.sequence, proposal.sequence,
        "nothing reached the chain"
    );

    // The founders approve: submitted, executed, in force at the epoch boundary.
    let approved = GovernanceTx::signed(proposal.clone(), &[&admin(1), &admin(2), &admin(3)]);
    hand_over(
        &ns.name,
        &ns.client,
        "org-d",
        "org-d-approved",
        &approved.to_hex(),
    )
    .await;
    let seen = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let admitted = eventually("org-d admitted on chain", WAIT, || {
        let (members, seen) = (members.clone(), seen.clone());
        async move {
            let m = members.get("org-d").await.ok()?;
            let (status, reason, message) = condition(&m)?;
            let mut seen = seen.lock().unwrap();
            if seen.last() != Some(&reason) {
                seen.push(reason.clone());
            }
            (status == "True").then_some((m, reason, message))
        }
    })
    .await;
    let reasons = seen.lock().unwrap().clone();
    assert_eq!(admitted.1, "AdmittedOnChain", "{}", admitted.2);
    assert_eq!(
        admitted.0.status.as_ref().unwrap().phase,
        Some(MemberPhase::Admitted)
    );
    assert!(
        reasons.iter().all(|r| [
            "GovernanceTxInvalid",
            "GovernanceSubmitted",
            "AdmissionPending",
            "AdmittedOnChain"
        ]
        .contains(&r.as_str())),
        "{reasons:?}"
    );
    let after = chain.registry(&registry).await.unwrap();
    let joined = after
        .members
        .iter()
        .find(|m| m.name == "alpha-m-org-d-0")
        .expect("org-d's validator is a chain member");
    assert_eq!(joined.admin_key, admin_hex(4));
    assert_eq!(joined.p2p_address, "127.0.70.4:7000");
    assert_eq!(after.members.len(), 4);

    // Its validator was provisioned only now, and runs from the provisioned objects.
    let set = sets.get(&newcomer.name).await.unwrap();
    assert_eq!(set.spec.as_ref().unwrap().replicas, Some(1));
    let (config_map, genesis, keys) = eventually("org-d objects", WAIT, || {
        objects(
            build::config_map_name(&newcomer),
            build::config_map_name(&newcomer),
            build::key_secret_name(&newcomer),
        )
    })
    .await;
    let mut joiner = support::materialise(
        dir.path(),
        &ns.name,
        &newcomer,
        &config_map,
        &genesis,
        &keys,
        &resolver,
        &binary,
    );
    joiner[0].start();
    let node_d = NodeRef {
        namespace: ns.name.clone(),
        committee: newcomer.name.clone(),
        node: "alpha-m-org-d-0".to_owned(),
    };
    let start_height = after.height;
    eventually(
        "org-d's validator syncs and follows the chain",
        WAIT,
        || {
            let chain = chain.clone();
            let committee = CommitteeNodes {
                chain_id: topology.genesis.chain_id.clone(),
                nodes: vec![node_d.clone()],
            };
            async move {
                let status = chain.committee_status(&committee).await;
                let s = status.nodes.values().next()?.as_ref().ok()?.clone();
                (s.finalized_height > start_height + 3 && s.validators.len() == 4).then_some(())
            }
        },
    )
    .await;
    assert!(joiner[0].running(), "{}", joiner[0].log());

    // The member controller watches its validators' StatefulSet: deleted, it is applied
    // again at once. An admitted member's requeue is 60 s, so without the watch this
    // waits in vain (the kube-apiserver deletes it; the operator makes the new one).
    let deleted_uid = sets.get(&newcomer.name).await.unwrap().metadata.uid;
    let deleted_at = std::time::Instant::now();
    sets.delete(&newcomer.name, &kube::api::DeleteParams::background())
        .await
        .unwrap();
    eventually(
        "org-d's deleted StatefulSet re-applied within 5 s",
        Duration::from_secs(5),
        || {
            let sets = sets.clone();
            let (name, deleted_uid) = (newcomer.name.clone(), deleted_uid.clone());
            async move {
                let set = sets.get_opt(&name).await.ok()??;
                (set.metadata.uid != deleted_uid).then_some(())
            }
        },
    )
    .await;
    eprintln!(
        "org-d's StatefulSet back {:.2} s after its deletion",
        deleted_at.elapsed().as_secs_f64()
    );

    // Removal reverses it: a proposal to sign (3 of 4), then the validator goes.
    members
        .patch(
            "org-d",
            &PatchParams::default(),
            &Patch::Merge(&serde_json::json!({"spec": {"remove": true}})),
        )
        .await
        .unwrap();
    let removal = published(&members, "Remove", "RemovalAwaitingApprovals").await;
    let signed = GovernanceTx::signed(removal, &[&admin(1), &admin(2), &admin(3)]);
    hand_over(
        &ns.name,
        &ns.client,
        "org-d",
        "org-d-removal",
        &signed.to_hex(),
    )
    .await;
    eventually("org-d removed", WAIT, || {
        let members = members.clone();
        async move {
            let m = members.get("org-d").await.ok()?;
            (m.status?.phase? == MemberPhase::Removed).then_some(())
        }
    })
    .await;
    eventually("org-d's validator deleted", WAIT, || {
        let sets = sets.clone();
        let name = newcomer.name.clone();
        async move { sets.get_opt(&name).await.ok()?.is_none().then_some(()) }
    })
    .await;
    let gone = chain.registry(&registry).await.unwrap();
    assert_eq!(gone.members.len(), 3);
    assert!(gone.members.iter().all(|m| m.name != "alpha-m-org-d-0"));
    for node in &mut founders {
        assert!(node.running(), "{} exited:\n{}", node.name, node.log());
    }
    drop(stop);
}
