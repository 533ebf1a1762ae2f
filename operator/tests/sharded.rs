//! A sharded network built by the operator, run by real nodes, scaled out and back in
//! through the beacon, with the operator waiting for the nodes at each step.
//!
//! What is real: the apiserver (the ChainNetwork, its StatefulSets, Secrets and
//! ConfigMaps live in the test cluster; `kubectl scale` goes through the scale
//! subresource; the StatefulSet of a drained shard is really deleted and its claims
//! really kept), the operator's reconciler (in-process) with its JSON-RPC client, and
//! sixteen `trellis-node` processes on 127.0.82.x — a beacon committee of 4 and three
//! shards of 4 — started from the one genesis, the per-committee `node.toml` and the key
//! Secrets the operator wrote into the cluster, stopped with SIGKILL. The beacon runs
//! consensus, the shards follow it (verifying its certificates), and the operator
//! registers shard 2's validators and submits `SetShardCount(3)` signed with the network
//! admin key it keeps in a Secret; the beacon applies it at an epoch boundary. Shard 2's
//! processes start when its objects exist and wait for the beacon; they import their
//! tables and join, and the status says 3 shards, `Scaling=False`, only when a quorum of
//! them reports joined (read at that moment). Scale-in 3 → 2: the beacon switches,
//! shard 2 ends its last epoch and reports `drained`, shards 0 and 1 import its tables;
//! the StatefulSet is kept as an archive (`spec.shards.drainedHistorySeconds` 20: one
//! replica, annotated `trellis.dev/drained-at`), and at that moment shard 2 reports
//! drained and shards 0 and 1 own all 256 tables; the status says 2 shards, `Stable`,
//! without the archive; the StatefulSet is deleted once the 20 s have passed (not before;
//! its claims kept); shards 0 and 1 keep finalizing after shard 2's processes are gone. Whether the in-between steps (`AwaitingShardJoin`,
//! `AwaitingShardDrain`) are seen depends on how long the chain takes against the
//! reconcile interval: they are printed, and held states are covered by the unit tests
//! of `reshard` and `status`.
//! What is not: the pod network (the resolver maps DNS names to loopback; it also
//! rewrites the addresses in the genesis, the only change besides paths), and kwok runs
//! no process in the pods: the test plays the kubelet of shard 2's pods.
//!
//! Needs `TRELLIS_TEST_KUBECONFIG` (see e2e/README.md) and a `trellis-node` binary.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, Patch, PatchParams, PostParams};
use trellis_crd::topology::{Committee, NetworkId, plan_with_shards};
use trellis_crd::{ChainNetwork, ChainNetworkSpec, NetworkMode, ShardsSpec};
use trellis_e2e::kube::{apply_crds, eventually, test_namespace};
use trellis_node_api::shard::{ShardMapInfo, SystemSequence, SystemSequenceQuery};
use trellis_node_api::{Genesis, NodeConfig, NodeStatus, Role, methods};
use trellis_operator::build;
use trellis_operator::chain::NodeRpc;
use trellis_operator::endpoints::{Loopback, NodeRef};
use trellis_operator::genesis;
use trellis_operator::keys;
use trellis_operator::metrics::Metrics;

const WAIT: Duration = Duration::from_secs(240);
const NAME: &str = "wide";
/// `spec.shards.drainedHistorySeconds`: short, so the test sees the archive go.
const ARCHIVE_SECONDS: i64 = 20;

use support::condition;

/// Every committee on its own loopback block: the beacon 127.0.82.1–4, shard s
/// 127.0.82.(10(s+1)+1)–.
fn resolver(committees: &[Committee]) -> Loopback {
    support::block_resolver(82, committees)
}

/// Waits until the status says `count` shards in service and `Scaling=False`; returns
/// the `Scaling` condition then, or the last one seen when `WAIT` ran out.
async fn settled(networks: &Api<ChainNetwork>, count: i32) -> (String, String, String) {
    let started = std::time::Instant::now();
    let mut last = (String::new(), String::new(), String::new());
    while started.elapsed() < WAIT {
        if let Ok(n) = networks.get(NAME).await
            && let Some(scaling) = condition(&n, "Scaling")
        {
            let done = n.status.as_ref().and_then(|s| s.shard_count) == Some(count)
                && scaling.0 == "False";
            last = scaling;
            if done {
                return last;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    last
}

/// Prints what each shard's nodes report (epoch, height, wait, drained, tables): the
/// log of a failed run says where the chain stood.
async fn report(rpc: &NodeRpc, chain_id: &str, namespace: &str, shards: &[Committee]) {
    for committee in shards {
        let reading = support::committee_status(rpc, chain_id, namespace, committee).await;
        for (node, answer) in &reading.nodes {
            match answer {
                Ok(s) => eprintln!(
                    "{node}: epoch {} height {} waiting {:?} drained {} tables {}",
                    s.epoch,
                    s.finalized_height,
                    s.waiting,
                    s.drained,
                    s.tables.as_ref().map_or(0, Vec::len)
                ),
                Err(e) => eprintln!("{node}: {e}"),
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operators_sharded_genesis_runs_a_beacon_and_scales_through_it() {
    let Some(binary) = support::node_binary() else {
        eprintln!("SKIPPED: no trellis-node binary");
        return;
    };
    let Some(ns) = test_namespace("op-shard").await else {
        return;
    };
    apply_crds(&ns.client, trellis_crd::crds()).await.unwrap();
    let claims: Vec<String> = ["beacon", "shard-0", "shard-1", "shard-2"]
        .iter()
        .flat_map(|c| (0..4).map(move |i| format!("ledger-{NAME}-{c}-{i}")))
        .collect();
    ns.prebound_volumes(&claims, "10Gi").await.unwrap();

    let mut spec = ChainNetworkSpec::new(NetworkMode::Public, "trellis-node:e2e");
    spec.shards = ShardsSpec {
        count: 2,
        min: 1,
        max: 4,
        // A drained slot's archive (one node) is kept this long, then deleted.
        drained_history_seconds: ARCHIVE_SECONDS,
    };
    // Long enough that the accepted change is seen pending before the boundary.
    spec.epoch_length = 20;
    // The committees of the network once it has 3 shards (shard 2's addresses are where
    // the operator registers its validators).
    let id = NetworkId::new(ns.name.clone(), NAME);
    let topology = plan_with_shards(&id, &spec, 3).unwrap();
    let chain_id = topology.genesis.chain_id.clone();
    let resolver = resolver(&topology.committees);
    let running: Vec<Committee> = topology.committees[..3].to_vec();

    let chain = NodeRpc::new(Arc::new(resolver.clone()), Duration::from_secs(2));
    let (_, stop) = support::start_operator(&ns, Arc::new(chain), Arc::new(Metrics::new()), false);
    let networks: Api<ChainNetwork> = ns.api();
    networks
        .create(&PostParams::default(), &ChainNetwork::new(NAME, spec))
        .await
        .unwrap();

    // The objects the operator wrote into the cluster.
    let config_maps: Api<ConfigMap> = ns.api();
    let secrets: Api<Secret> = ns.api();
    let genesis_name = build::genesis_name(NAME);
    let genesis_map = eventually("the genesis ConfigMap", WAIT, || {
        let config_maps = config_maps.clone();
        let name = genesis_name.clone();
        async move { config_maps.get_opt(&name).await.ok()? }
    })
    .await;
    let objects = |committee: Committee| {
        let (config_maps, secrets) = (config_maps.clone(), secrets.clone());
        async move { support::committee_objects(&config_maps, &secrets, &committee).await }
    };

    // One genesis for the network: the beacon and both shards' validators, the network
    // admin key from its Secret, max_shards from the spec.
    let genesis_text = genesis_map.data.as_ref().unwrap()[genesis::ENTRY].clone();
    assert_eq!(genesis_map.data.as_ref().unwrap().len(), 1);
    let network_genesis = Genesis::from_json(&genesis_text).unwrap();
    assert_eq!(network_genesis.chain_id, chain_id);
    let sharding = network_genesis.sharding.clone().unwrap();
    assert_eq!((sharding.shard_count, sharding.max_shards), (2, 4));
    assert_eq!(sharding.beacon.len(), 4);
    assert_eq!(sharding.validators.len(), 8);
    let admin_secret = secrets
        .get(&build::admin_key_secret_name(NAME))
        .await
        .unwrap();
    let admin =
        keys::NodeKeyFile::parse(&admin_secret.data.unwrap()[keys::ADMIN_KEY_ENTRY].0).unwrap();
    assert_eq!(sharding.admin_key, admin.admin_public_key);

    // Twelve real nodes, each from its committee's objects; every config names its role.
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = Vec::new();
    for committee in &running {
        let (config_map, keys) =
            eventually("committee objects", WAIT, || objects(committee.clone())).await;
        let config =
            NodeConfig::from_toml(&config_map.data.as_ref().unwrap()["node.toml"]).unwrap();
        let role = match committee.role {
            trellis_crd::topology::CommitteeRole::Beacon => Role::Beacon,
            trellis_crd::topology::CommitteeRole::Shard(shard) => Role::Shard { shard },
            trellis_crd::topology::CommitteeRole::Pool => Role::AnyShard,
        };
        assert_eq!(config.role, role, "{}", committee.name);
        assert!(config.genesis_file.ends_with(genesis::ENTRY));
        nodes.extend(support::materialise(
            dir.path(),
            &ns.name,
            committee,
            &config_map,
            &genesis_map,
            &keys,
            &resolver,
            &binary,
        ));
    }
    for node in &mut nodes {
        node.start();
    }

    // The beacon finalizes, and every shard node follows it (its shard map comes from
    // the beacon blocks it verified).
    let rpc = support::rpc(&resolver);
    let refs = |committee: &Committee| support::node_refs(&ns.name, committee);
    let beacon_nodes = refs(&running[0]);
    let beacon_entry = beacon_nodes[0].clone();
    eventually("the beacon finalizes", WAIT, || {
        let (rpc, node) = (rpc.clone(), beacon_entry.clone());
        async move {
            let status: NodeStatus = rpc.call(&node, methods::STATUS, ()).await.ok()?;
            (status.role == Role::Beacon && status.finalized_height > 2).then_some(())
        }
    })
    .await;
    for committee in &running[1..] {
        for node in refs(committee) {
            let followed = eventually("a shard node follows the beacon", WAIT, || {
                let (rpc, node) = (rpc.clone(), node.clone());
                async move {
                    let map: ShardMapInfo =
                        rpc.call(&node, methods::GET_SHARD_MAP, ()).await.ok()?;
                    (map.beacon_height > 0).then_some(map)
                }
            })
            .await;
            assert_eq!(followed.shard_count, 2, "{}", node.node);
        }
    }
    for node in &mut nodes {
        assert!(node.running(), "{} exited:\n{}", node.name, node.log());
    }
    // The operator sees a healthy chain with 2 shards in service.
    eventually("ChainHealthy=True with 2 shards", WAIT, || {
        let networks = networks.clone();
        async move {
            let n = networks.get(NAME).await.ok()?;
            let healthy = condition(&n, "ChainHealthy")?.0 == "True";
            (healthy && n.status?.shard_count == Some(2)).then_some(())
        }
    })
    .await;

    // Watch the beacon's map from now on: the accepted change is pending only until the
    // next epoch boundary (a few seconds).
    let saw_pending = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (rpc, beacon, saw) = (rpc.clone(), beacon_entry.clone(), saw_pending.clone());
        tokio::spawn(async move {
            loop {
                if let Ok(map) = rpc
                    .call::<ShardMapInfo>(&beacon, methods::GET_SHARD_MAP, ())
                    .await
                    && map.pending_shard_count == Some(3)
                {
                    saw.store(true, std::sync::atomic::Ordering::Relaxed);
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };

    // `kubectl scale --replicas=3`: the scale subresource.
    networks
        .patch_scale(
            NAME,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"replicas": 3}})),
        )
        .await
        .unwrap();
    // Shard 2 is provisioned: its StatefulSet, keys and a config that names slot 2 and
    // reads the same genesis, which stays as it was (genesis is immutable).
    let shard2 = topology.committees[3].clone();
    let sets: Api<StatefulSet> = ns.api();
    eventually("shard 2's StatefulSet", WAIT, || {
        let sets = sets.clone();
        async move { sets.get_opt(&format!("{NAME}-shard-2")).await.ok()? }
    })
    .await;
    let (config_map, keys) = eventually("shard 2 objects", WAIT, || objects(shard2.clone())).await;
    let config = NodeConfig::from_toml(&config_map.data.as_ref().unwrap()["node.toml"]).unwrap();
    assert_eq!(config.role, Role::Shard { shard: 2 });
    assert!(config.genesis_file.ends_with(genesis::ENTRY));
    let after = config_maps.get(&genesis_name).await.unwrap();
    assert_eq!(after.data.unwrap()[genesis::ENTRY], genesis_text);
    assert_eq!(
        after.metadata.resource_version,
        genesis_map.metadata.resource_version
    );

    // Its pods start as soon as they exist (the test plays their kubelet): the nodes wait
    // for the beacon to create shard 2 (not ready, `waiting` says so).
    let mut shard2_nodes = support::materialise(
        dir.path(),
        &ns.name,
        &shard2,
        &config_map,
        &genesis_map,
        &keys,
        &resolver,
        &binary,
    );
    for node in &mut shard2_nodes {
        node.start();
    }

    // The operator registers shard 2's validators with the beacon (each signs its own
    // registration, so each key's system sequence moves to 1) ...
    for node in refs(&shard2) {
        let keys_secret = secrets.get(&build::key_secret_name(&shard2)).await.unwrap();
        let file =
            keys::NodeKeyFile::parse(&keys_secret.data.unwrap()[&keys::node_entry(&node.node)].0)
                .unwrap();
        let key = file.node_public_key.clone();
        eventually("shard 2's validator registered", WAIT, || {
            let (rpc, beacon, key) = (rpc.clone(), beacon_entry.clone(), key.clone());
            async move {
                let seq: SystemSequence = rpc
                    .call(
                        &beacon,
                        methods::GET_SYSTEM_SEQUENCE,
                        SystemSequenceQuery { key },
                    )
                    .await
                    .ok()?;
                (seq.sequence == 1).then_some(())
            }
        })
        .await;
    }
    // ... then submits SetShardCount(3); the beacon accepts it for its next epoch and
    // switches at the boundary.
    let beacon_map = |beacon: NodeRef| {
        let rpc = rpc.clone();
        async move {
            rpc.call::<ShardMapInfo>(&beacon, methods::GET_SHARD_MAP, ())
                .await
                .ok()
        }
    };
    let switched = eventually("the beacon switches to 3 shards", WAIT, || {
        let map = beacon_map(beacon_entry.clone());
        async move {
            let map = map.await?;
            (map.shard_count == 3).then_some(map)
        }
    })
    .await;
    watcher.abort();
    // Accepted for the next epoch, applied at the boundary. The map shows the change
    // pending only until that boundary, which may be the very next block, so the
    // acceptance is proven by the admin key's system sequence: exactly one system
    // transaction of that key executed (the operator's idempotent step never sent a
    // second), and the count it asked for is in force.
    let admin_sequence: SystemSequence = rpc
        .call(
            &beacon_entry,
            methods::GET_SYSTEM_SEQUENCE,
            SystemSequenceQuery {
                key: admin.admin_public_key.clone(),
            },
        )
        .await
        .unwrap();
    assert_eq!(admin_sequence.sequence, 1, "one SetShardCount executed");
    assert!(switched.epoch > 0, "applied at an epoch boundary");
    eprintln!(
        "beacon: pending 3 observed before the boundary: {}; switched at epoch {}",
        saw_pending.load(std::sync::atomic::Ordering::Relaxed),
        switched.epoch
    );
    assert_eq!(switched.shards.len(), 3);
    assert_eq!(
        switched.shards[2].validators.len(),
        4,
        "shard 2's committee"
    );
    // The beacon runs 3 shards; shard 2's nodes now import their tables and start
    // finalizing. The operator keeps 2 in service until a quorum of them reports joined
    // (`AwaitingShardJoin` when it looks before they did; printed, since how long the
    // join takes is the chain's).
    let scaled = settled(&networks, 3).await;
    // Read at once: when the operator said 3, shard 2 had joined (checked below).
    let shard2_reading = support::committee_status(&rpc, &chain_id, &ns.name, &shard2).await;
    if scaled.0 != "False" {
        report(&rpc, &chain_id, &ns.name, &topology.committees[1..]).await;
        let log = shard2_nodes[0].log();
        panic!(
            "shard 2 did not join: Scaling {scaled:?}\nwide-shard-2-0's log ends:\n{}",
            &log[log.len().saturating_sub(4000)..]
        );
    }
    assert_eq!(scaled.1, "Stable");
    report(&rpc, &chain_id, &ns.name, &topology.committees[1..]).await;
    // When the operator said so, a quorum of shard 2 had joined: no wait, finalizing.
    let joined = shard2_reading
        .answered()
        .filter(|(_, s)| s.waiting.is_none() && !s.drained && s.finalized_height > 0)
        .count();
    assert!(
        joined >= 3,
        "shard 2 joined on {joined} nodes: {shard2_reading:?}"
    );
    let tables: usize = shard2_reading
        .answered()
        .filter_map(|(_, s)| s.tables.as_ref().map(Vec::len))
        .max()
        .unwrap_or(0);
    assert!(tables > 0, "shard 2 owns tables: {shard2_reading:?}");
    let events: Api<k8s_openapi::api::events::v1::Event> = ns.api();
    let reasons = || {
        let events = events.clone();
        async move {
            events
                .list(&kube::api::ListParams::default())
                .await
                .map(|l| {
                    l.items
                        .into_iter()
                        .filter_map(|e| e.reason)
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default()
        }
    };
    eventually("the scale-out's Events", WAIT, || {
        let reasons = reasons();
        async move {
            let reasons = reasons.await;
            ["AwaitingBeacon", "Stable"]
                .iter()
                .all(|r| reasons.iter().any(|e| e == r))
                .then_some(())
        }
    })
    .await;
    eprintln!(
        "scale-out: the operator waited for shard 2 to join (AwaitingShardJoin Event): {}",
        reasons().await.iter().any(|r| r == "AwaitingShardJoin")
    );

    // Scale-in 3 -> 2: the beacon switches, shard 2 ends its last epoch and reports
    // drained, shards 0 and 1 import its tables; only then may its StatefulSet go — here
    // to one replica first, the archive (`drainedHistorySeconds`). The test polls the
    // StatefulSet and, the moment it is kept as an archive, reads what the nodes
    // report: shard 2 drained (final) and shards 0 and 1 owning every table.
    networks
        .patch_scale(
            NAME,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"replicas": 2}})),
        )
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut steps = Vec::<String>::new();
    let shard2 = format!("{NAME}-shard-2");
    let (removed, kept_at) = loop {
        if let Ok(n) = networks.get(NAME).await
            && let Some((_, reason, message)) = condition(&n, "Scaling")
            && steps.last() != Some(&reason)
        {
            eprintln!("scale-in: Scaling {reason}: {message}");
            steps.push(reason);
        }
        let set = sets.get_opt(&shard2).await.unwrap();
        assert!(set.is_some(), "{shard2} deleted, not kept as an archive");
        let archived = set.as_ref().and_then(|set| {
            let replicas = set.spec.as_ref()?.replicas;
            let at = trellis_operator::archive::drained_at(set)?;
            (replicas == Some(1)).then_some(at)
        });
        if let Some(at) = archived {
            let mut readings = Vec::new();
            for committee in &topology.committees[1..] {
                readings
                    .push(support::committee_status(&rpc, &chain_id, &ns.name, committee).await);
            }
            break (readings, at);
        }
        if started.elapsed() > WAIT * 2 {
            report(&rpc, &chain_id, &ns.name, &topology.committees[1..]).await;
            panic!("shard 2's StatefulSet is not an archive yet; Scaling steps seen: {steps:?}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let drained = removed[2].answered().filter(|(_, s)| s.drained).count();
    assert!(
        drained >= 3,
        "archived with {drained} drained nodes: {:?}",
        removed[2]
    );
    let taken_over: std::collections::BTreeSet<u8> = removed[..2]
        .iter()
        .flat_map(|r| r.answered())
        .filter(|(_, s)| s.waiting.is_none())
        .flat_map(|(_, s)| s.tables.clone().unwrap_or_default())
        .collect();
    assert_eq!(
        taken_over.len(),
        256,
        "archived before shards 0 and 1 took every table over"
    );
    eprintln!("scale-in: Scaling steps seen before the archive: {steps:?}");
    // Pods 1-3 are gone: so are their processes (the test plays the kubelet); pod 0, the
    // archive, runs on.
    for node in &mut shard2_nodes[1..] {
        node.kill();
    }
    report(&rpc, &chain_id, &ns.name, &topology.committees[1..]).await;
    let stable = eventually("status.shardCount = 2, Scaling=False", WAIT, || {
        let networks = networks.clone();
        async move {
            let n = networks.get(NAME).await.ok()?;
            let scaling = condition(&n, "Scaling")?;
            (n.status.as_ref()?.shard_count == Some(2) && scaling.0 == "False").then_some(n)
        }
    })
    .await;
    assert_eq!(stable.status.as_ref().unwrap().shards.len(), 2);
    // The archive is not a committee of the status (its node is never Ready), and it
    // goes once its retention has passed.
    eventually(
        "the archive deleted once its retention passed",
        WAIT,
        || {
            let sets = sets.clone();
            let shard2 = shard2.clone();
            async move { sets.get_opt(&shard2).await.ok()?.is_none().then_some(()) }
        },
    )
    .await;
    let gone_at = k8s_openapi::jiff::Timestamp::now().as_second();
    assert!(
        gone_at >= kept_at + ARCHIVE_SECONDS,
        "deleted {}s after it was kept, before its {ARCHIVE_SECONDS}s",
        gone_at - kept_at
    );
    shard2_nodes[0].kill();
    // Ledger claims stay (retainLedgerOnDelete defaults to true).
    let claims_api: Api<k8s_openapi::api::core::v1::PersistentVolumeClaim> = ns.api();
    for i in 0..4 {
        let claim = format!("ledger-{NAME}-shard-2-{i}");
        assert!(
            claims_api.get_opt(&claim).await.unwrap().is_some(),
            "{claim} kept"
        );
    }
    // Shards 0 and 1 own every table between them and keep finalizing without shard 2.
    let mut owned = std::collections::BTreeSet::new();
    for committee in &topology.committees[1..3] {
        let reading = support::committee_status(&rpc, &chain_id, &ns.name, committee).await;
        owned.extend(
            reading
                .answered()
                .filter(|(_, s)| s.waiting.is_none())
                .flat_map(|(_, s)| s.tables.clone().unwrap_or_default()),
        );
        let before = reading.finalized_height().unwrap();
        eventually("the shard finalizes after the scale-in", WAIT, || {
            let (rpc, chain_id, ns_name, committee) = (
                rpc.clone(),
                chain_id.clone(),
                ns.name.clone(),
                committee.clone(),
            );
            async move {
                let now = support::committee_status(&rpc, &chain_id, &ns_name, &committee)
                    .await
                    .finalized_height()?;
                (now >= before + 2).then_some(())
            }
        })
        .await;
    }
    assert_eq!(owned.len(), 256, "shards 0 and 1 own every table");

    for node in &mut nodes {
        assert!(node.running(), "{} exited:\n{}", node.name, node.log());
    }
    stop.send(()).ok();
    for node in &mut nodes {
        node.kill();
    }
}
