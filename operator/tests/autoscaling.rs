//! The built-in autoscaler on a real cluster, reading real nodes' metrics.
//!
//! What is real: the apiserver, the operator's reconciler (in-process) with its JSON-RPC
//! and metrics client, and shard 0's four `trellis-node` processes on 127.0.80.11–14,
//! started from the key Secret, genesis and config ConfigMaps the operator wrote (the
//! genesis funds the test's account through `spec.genesisBalances`). Transfers sent to a
//! node make `trellis_txs_committed_total` climb; the autoscaler turns it into tx/s,
//! finds it above the policy's target and raises `spec.shards.count`, recording the
//! decision in the status and as an Event. What is not: the pod network (the resolver
//! maps the nodes' DNS names to loopback), and the beacon does not run yet, so the new
//! shard stops at `AwaitingBeacon`.
//!
//! Needs `TRELLIS_TEST_KUBECONFIG` (see e2e/README.md) and a `trellis-node` binary.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, PostParams};
use trellis_crd::topology::{NetworkId, plan};
use trellis_crd::{
    AutoscalingSpec, ChainNetwork, ChainNetworkSpec, GenesisAllocation, NetworkMode, ShardsSpec,
};
use trellis_e2e::kube::{apply_crds, eventually, test_namespace};
use trellis_node_api::{SendTransactionParams, SendTransactionResult, methods};
use trellis_node_types::{Encode, Signer, TxKind, UnsignedTx, test_key, to_hex};
use trellis_operator::build;
use trellis_operator::chain::NodeRpc;
use trellis_operator::metrics::Metrics;

const WAIT: Duration = Duration::from_secs(180);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sustained_load_raises_the_shard_count() {
    let Some(binary) = support::node_binary() else {
        eprintln!("SKIPPED: no trellis-node binary");
        return;
    };
    let Some(ns) = test_namespace("op-auto").await else {
        return;
    };
    apply_crds(&ns.client, trellis_crd::crds()).await.unwrap();
    let claims: Vec<String> = ["beacon", "shard-0", "shard-1"]
        .iter()
        .flat_map(|c| (0..4).map(move |i| format!("ledger-busy-{c}-{i}")))
        .collect();
    ns.prebound_volumes(&claims, "10Gi").await.unwrap();

    let payer = test_key(80);
    let mut spec = ChainNetworkSpec::new(NetworkMode::Public, "trellis-node:e2e");
    spec.shards = ShardsSpec {
        count: 1,
        min: 1,
        max: 2,
        ..ShardsSpec::default()
    };
    spec.genesis_balances = vec![GenesisAllocation {
        account: to_hex(payer.public_key().as_ref()),
        amount: 1_000_000_000,
    }];
    // Any steady load above 2 tx/s per shard asks for a second shard at once.
    spec.autoscaling = Some(AutoscalingSpec {
        enabled: true,
        target_tx_per_second_per_shard: Some(2),
        target_mempool_depth: None,
        cooldown_seconds: 0,
        stabilization_window_seconds: 0,
    });
    let topology = plan(&NetworkId::new(ns.name.clone(), "busy"), &spec).unwrap();
    let chain_id = topology.genesis.chain_id.clone();
    let shard = topology.shards().next().unwrap().clone();
    let resolver = support::loopback_in(80, &shard, 11);

    let chain = NodeRpc::new(Arc::new(resolver.clone()), Duration::from_secs(2));
    let (_, stop) = support::start_operator(&ns, Arc::new(chain), Arc::new(Metrics::new()), false);
    let networks: Api<ChainNetwork> = ns.api();
    networks
        .create(&PostParams::default(), &ChainNetwork::new("busy", spec))
        .await
        .unwrap();

    let config_maps: Api<ConfigMap> = ns.api();
    let secrets: Api<Secret> = ns.api();
    let (config_map, genesis, keys) = eventually("node objects", WAIT, || {
        let (config_maps, secrets) = (config_maps.clone(), secrets.clone());
        let shard = shard.clone();
        async move {
            Some((
                config_maps
                    .get_opt(&build::config_map_name(&shard))
                    .await
                    .ok()??,
                config_maps.get_opt("busy-genesis").await.ok()??,
                secrets
                    .get_opt(&build::key_secret_name(&shard))
                    .await
                    .ok()??,
            ))
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = support::materialise(
        dir.path(),
        &ns.name,
        &shard,
        &config_map,
        &genesis,
        &keys,
        &resolver,
        &binary,
    );
    for node in &mut nodes {
        node.start();
    }

    // Without load the autoscaler holds: one shard, no decision.
    let rpc = support::rpc(&resolver);
    let entry = support::node_refs(&ns.name, &shard).remove(0);
    eventually("the shard finalizes", WAIT, || {
        let (rpc, entry) = (rpc.clone(), entry.clone());
        async move {
            let status: trellis_node_api::NodeStatus =
                rpc.call(&entry, methods::STATUS, ()).await.ok()?;
            (status.finalized_height > 2).then_some(())
        }
    })
    .await;
    let calm = networks.get("busy").await.unwrap();
    assert_eq!(calm.spec.shards.count, 1);
    assert!(calm.status.as_ref().unwrap().autoscaler.is_none());

    // Sustained load: about 20 transfers a second, each one committed.
    let (load_stop, load_stopped) = tokio::sync::watch::channel(false);
    let sender = {
        let (rpc, entry, chain_id) = (rpc.clone(), entry.clone(), chain_id.clone());
        tokio::spawn(async move {
            let mut nonce = 0;
            while !*load_stopped.borrow() {
                let tx = UnsignedTx {
                    chain_id: chain_id.clone(),
                    from: payer.public_key(),
                    nonce,
                    fee: 1,
                    kind: TxKind::Transfer {
                        to: test_key(81).public_key(),
                        amount: 5,
                    },
                }
                .sign(&payer);
                let params = SendTransactionParams {
                    tx: to_hex(&tx.encode()),
                };
                let sent: Result<SendTransactionResult, _> =
                    rpc.call(&entry, methods::SEND_TRANSACTION, params).await;
                if sent.is_ok() {
                    nonce += 1;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            nonce
        })
    };

    let scaled = eventually("the autoscaler raises the shard count", WAIT, || {
        let networks = networks.clone();
        async move {
            let n = networks.get("busy").await.ok()?;
            (n.spec.shards.count == 2).then_some(n)
        }
    })
    .await;
    load_stop.send(true).unwrap();
    let sent = sender.await.unwrap();
    assert!(sent > 0, "no transfer was accepted");

    // The decision is in the status (with the measured load) and in an Event.
    let decided = eventually("the decision in the status", WAIT, || {
        let networks = networks.clone();
        async move {
            let n = networks.get("busy").await.ok()?;
            n.status?.autoscaler
        }
    })
    .await;
    assert_eq!((decided.from, decided.to), (1, 2));
    assert!(
        decided.reason.contains("1 -> 2 shards"),
        "{}",
        decided.reason
    );
    assert!(scaled.metadata.generation.unwrap() > 1);
    let events: Api<k8s_openapi::api::events::v1::Event> = ns.api();
    eventually("Autoscaled Event", WAIT, || {
        let events = events.clone();
        async move {
            events
                .list(&kube::api::ListParams::default())
                .await
                .ok()?
                .items
                .iter()
                .any(|e| e.reason.as_deref() == Some("Autoscaled"))
                .then_some(())
        }
    })
    .await;
    // The rate the decision used is in the shard's status.
    let measured = networks.get("busy").await.unwrap();
    let tps = measured.status.unwrap().shards[0].tx_per_second;
    assert!(tps.is_some_and(|t| t > 2.0), "shard 0 tx/s {tps:?}");

    stop.send(()).ok();
    for node in &mut nodes {
        node.kill();
    }
}
