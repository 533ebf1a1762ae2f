//! A public network with a validator pool, built by the operator and run by real nodes:
//! the beacon places the pool validators in shards, the status says where, and a
//! scale-down deregisters a pool validator before its pod goes.
//!
//! What is real: the apiserver (the ChainNetwork, its StatefulSets, Secrets and
//! ConfigMaps live in the test cluster), the operator's reconciler (in-process) with its
//! JSON-RPC client, and fourteen `trellis-node` processes on 127.0.192.x (this test's own
//! range) — a beacon of 4, two shards of 4 and a pool of 2 — started from the one
//! genesis, the per-committee `node.toml` and the key Secrets the operator wrote. The
//! pool's nodes run `shard = "any"`; the operator registers each with the beacon for
//! shard "any", signed with its own node key, and the beacon's seeded shuffle places
//! them (and moves them between the shards epoch after epoch). `status.validatorPool`
//! is compared with the beacon's own shard map and the nodes' own `trellis_status`.
//! The client RPC Service `pooled-rpc` selects the pool pods with the shard pods (the
//! apiserver evaluates its selector; no beacon pod), the placed pool nodes' `/readyz`
//! says they are ready, and reads and a transfer sent to a pool node reach the shards
//! owning the accounts. Scale-down 2 → 1: the operator deregisters `pool-1` and keeps its pod while the
//! beacon still places it; the StatefulSet shrinks only once the beacon's map leaves it
//! out — finished by a fresh operator started after the first one took the change in
//! (stopped, its memory gone). Scale-up 1 → 2: `pool-1` comes back with its key and
//! claim and is registered and placed again. Each pool key signed exactly what the steps
//! say (system sequences: no registration or deregistration twice).
//! What is not: the pod network (the resolver maps DNS names to loopback and rewrites
//! the genesis addresses), and kwok runs no process in the pods: the test plays their
//! kubelet.
//!
//! Needs `TRELLIS_TEST_KUBECONFIG` (see e2e/README.md) and a `trellis-node` binary.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use trellis_crd::topology::{CommitteeRole, NetworkId, plan};
use trellis_crd::{
    ChainNetwork, ChainNetworkSpec, GenesisAllocation, NetworkMode, PoolValidatorState, ShardsSpec,
    ValidatorPoolSpec,
};
use trellis_e2e::kube::{apply_crds, eventually, test_namespace};
use trellis_node_api::shard::{ShardMapInfo, SystemSequence, SystemSequenceQuery};
use trellis_node_api::{
    AccountInfo, AccountQuery, Genesis, NodeConfig, NodeStatus, READYZ_PATH, Role,
    SendTransactionParams, methods,
};
use trellis_node_types::{Encode, Signer, TxKind, UnsignedTx, test_key, to_hex};
use trellis_operator::build;
use trellis_operator::chain::NodeRpc;
use trellis_operator::endpoints::NodeRef;
use trellis_operator::genesis;
use trellis_operator::keys;
use trellis_operator::labels;
use trellis_operator::metrics::Metrics;

const WAIT: Duration = Duration::from_secs(180);
const NAME: &str = "pooled";
/// Genesis-funded accounts (`test_key(FUNDED..FUNDED + 8)`): their tables fall in both
/// shards.
const FUNDED: u64 = 90;
const FUNDS: u64 = 1_000_000;

/// The first pool node whose readiness probe (`/readyz`) passes: one the client RPC
/// Service's endpoints hold now.
async fn ready_pool_node(rpc: &NodeRpc, pool: &[NodeRef]) -> Option<NodeRef> {
    for node in pool {
        if let Ok((200, _)) = rpc.http(node, READYZ_PATH, None).await {
            return Some(node.clone());
        }
    }
    None
}

/// `account`'s balance and the shard that answered, read through `node`.
async fn account(rpc: &NodeRpc, node: &NodeRef, account: &str) -> Option<(u64, Option<u16>)> {
    let query = AccountQuery {
        account: account.to_owned(),
    };
    let info: AccountInfo = rpc.call(node, methods::GET_ACCOUNT, query).await.ok()?;
    Some((info.balance, info.shard))
}

/// The shard of every validator in the beacon's map, by hex node key.
async fn beacon_placements(rpc: &NodeRpc, beacon: &NodeRef) -> Option<BTreeMap<String, i32>> {
    let map: ShardMapInfo = rpc.call(beacon, methods::GET_SHARD_MAP, ()).await.ok()?;
    Some(
        map.shards
            .iter()
            .flat_map(|s| s.validators.iter().map(|k| (k.clone(), i32::from(s.shard))))
            .collect(),
    )
}

async fn system_sequence(rpc: &NodeRpc, beacon: &NodeRef, key: &str) -> u64 {
    let seq: SystemSequence = rpc
        .call(
            beacon,
            methods::GET_SYSTEM_SEQUENCE,
            SystemSequenceQuery {
                key: key.to_owned(),
            },
        )
        .await
        .unwrap();
    seq.sequence
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_runs_a_pool_the_beacon_places_and_reports_where() {
    let Some(binary) = support::node_binary() else {
        eprintln!("SKIPPED: no trellis-node binary");
        return;
    };
    let Some(ns) = test_namespace("op-pool").await else {
        return;
    };
    let begun = std::time::Instant::now();
    apply_crds(&ns.client, trellis_crd::crds()).await.unwrap();
    let mut claims: Vec<String> = ["beacon", "shard-0", "shard-1"]
        .iter()
        .flat_map(|c| (0..4).map(move |i| format!("ledger-{NAME}-{c}-{i}")))
        .collect();
    claims.extend((0..2).map(|i| format!("ledger-{NAME}-pool-{i}")));
    ns.prebound_volumes(&claims, "10Gi").await.unwrap();

    let mut spec = ChainNetworkSpec::new(NetworkMode::Public, "trellis-node:e2e");
    spec.shards = ShardsSpec {
        count: 2,
        min: 1,
        max: 2,
        ..ShardsSpec::default()
    };
    spec.epoch_length = 10;
    spec.validator_pool = Some(ValidatorPoolSpec { replicas: 2 });
    spec.genesis_balances = (FUNDED..FUNDED + 8)
        .map(|i| GenesisAllocation {
            account: to_hex(test_key(i).public_key().as_ref()),
            amount: i64::try_from(FUNDS).unwrap(),
        })
        .collect();
    let id = NetworkId::new(ns.name.clone(), NAME);
    let topology = plan(&id, &spec).unwrap();
    let chain_id = topology.genesis.chain_id.clone();
    // The beacon on .1–.4, shard s on .(10(s+1)+1)–, the pool on .31–.32.
    let resolver = support::block_resolver(192, &topology.committees);
    let pool = topology.pool().unwrap().clone();
    assert_eq!(topology.committees.last(), Some(&pool));

    let operator = || {
        let chain = NodeRpc::new(Arc::new(resolver.clone()), Duration::from_secs(2));
        support::start_operator(&ns, Arc::new(chain), Arc::new(Metrics::new()), false).1
    };
    let stop = operator();
    let networks: Api<ChainNetwork> = ns.api();
    networks
        .create(&PostParams::default(), &ChainNetwork::new(NAME, spec))
        .await
        .unwrap();

    // The objects the operator wrote.
    let config_maps: Api<ConfigMap> = ns.api();
    let secrets: Api<Secret> = ns.api();
    let sets: Api<StatefulSet> = ns.api();
    let genesis_map = eventually("the genesis ConfigMap", WAIT, || {
        let (config_maps, name) = (config_maps.clone(), build::genesis_name(NAME));
        async move { config_maps.get_opt(&name).await.ok()? }
    })
    .await;
    let pool_set = eventually("the pool's StatefulSet", WAIT, || {
        let sets = sets.clone();
        async move { sets.get_opt(&format!("{NAME}-pool")).await.ok()? }
    })
    .await;
    assert_eq!(pool_set.spec.as_ref().unwrap().replicas, Some(2));
    assert_eq!(
        pool_set.metadata.labels.as_ref().unwrap()["app.kubernetes.io/component"],
        "pool"
    );

    let dir = tempfile::tempdir().unwrap();
    let mut nodes = Vec::new();
    let mut pool_keys = Vec::new();
    for committee in &topology.committees {
        let (config_map, key_secret) = eventually("committee objects", WAIT, || {
            let (config_maps, secrets, committee) =
                (config_maps.clone(), secrets.clone(), committee.clone());
            async move { support::committee_objects(&config_maps, &secrets, &committee).await }
        })
        .await;
        let config =
            NodeConfig::from_toml(&config_map.data.as_ref().unwrap()["node.toml"]).unwrap();
        if committee.role == CommitteeRole::Pool {
            // `shard = "any"`, the network's one genesis, keys like every validator's.
            assert_eq!(config.role, Role::AnyShard);
            assert!(config.genesis_file.ends_with(genesis::ENTRY));
            let data = key_secret.data.as_ref().unwrap();
            assert_eq!(data.len(), 2, "one key per pool validator");
            for node in &committee.nodes {
                let file = keys::NodeKeyFile::parse(&data[&keys::node_entry(&node.name)].0)
                    .expect("a keygen key file");
                pool_keys.push(file.node_public_key);
            }
        }
        nodes.extend(support::materialise(
            dir.path(),
            &ns.name,
            committee,
            &config_map,
            &genesis_map,
            &key_secret,
            &resolver,
            &binary,
        ));
    }
    // The pool is in no genesis: it registers with the beacon once the network runs.
    let network_genesis =
        Genesis::from_json(&genesis_map.data.as_ref().unwrap()[genesis::ENTRY]).unwrap();
    assert_eq!(network_genesis.chain_id, chain_id);
    let sharding = network_genesis.sharding.unwrap();
    assert_eq!(sharding.validators.len(), 8);
    assert!(
        sharding
            .validators
            .iter()
            .all(|v| !pool_keys.contains(&v.node_key))
    );
    for node in &mut nodes {
        node.start();
    }
    eprintln!("nodes started after {:?}", begun.elapsed());

    // The beacon places both pool validators; the status says in which shard, as the
    // beacon's map does at the same moment (the shuffle moves them, so the two are read
    // together and compared until a reading falls within one epoch).
    let rpc = support::rpc(&resolver);
    let beacon = support::node_refs(&ns.name, &topology.committees[0])[0].clone();
    let started = std::time::Instant::now();
    let placed = eventually(
        "status.validatorPool places both, as the beacon",
        WAIT,
        || {
            let (networks, rpc, beacon, pool_keys) = (
                networks.clone(),
                rpc.clone(),
                beacon.clone(),
                pool_keys.clone(),
            );
            async move {
                let status = networks.get(NAME).await.ok()?.status?.validator_pool?;
                let map = beacon_placements(&rpc, &beacon).await?;
                let agree = status.validators.len() == 2
                    && status.placed == 2
                    && status.validators.iter().zip(&pool_keys).all(|(v, key)| {
                        v.node_key == *key
                            && v.state == PoolValidatorState::Placed
                            && v.shard.is_some()
                            && v.shard == map.get(key).copied()
                    });
                agree.then_some(status)
            }
        },
    )
    .await;
    eprintln!("pool placed after {:?}: {placed:?}", started.elapsed());
    assert_eq!(placed.replicas, 2);
    assert_eq!(placed.message, None, "nothing to wait for");
    assert_eq!(placed.validators[0].name, format!("{NAME}-pool-0"));
    // Each pool node serves a shard the beacon placed it in (its own trellis_status).
    let pool_refs = support::node_refs(&ns.name, &pool);
    for (node, key) in pool_refs.iter().zip(&pool_keys) {
        eventually(
            "a pool node serves the shard the beacon placed it in",
            WAIT,
            || {
                let (rpc, node, beacon, key) =
                    (rpc.clone(), node.clone(), beacon.clone(), key.clone());
                async move {
                    let status: NodeStatus = rpc.call(&node, methods::STATUS, ()).await.ok()?;
                    let map = beacon_placements(&rpc, &beacon).await?;
                    match status.role {
                        Role::Shard { shard } => {
                            (map.get(&key) == Some(&i32::from(shard))).then_some(())
                        }
                        _ => None,
                    }
                }
            },
        )
        .await;
    }
    // Registered once each, by its own key.
    for key in &pool_keys {
        assert_eq!(system_sequence(&rpc, &beacon, key).await, 1, "{key}");
    }

    // The client RPC Service: the pods its selector picks — the apiserver evaluates it,
    // as the EndpointSlice controller does — are every shard pod and both pool pods, and
    // no beacon pod. (This cluster runs no EndpointSlice controller: the pods' loopback
    // IPs are refused in EndpointSlices, see e2e/scripts/cluster.sh.) Its endpoints are
    // those whose readiness probe passes, asked of the processes below.
    let services: Api<Service> = ns.api();
    let pods: Api<Pod> = ns.api();
    let service = services.get(&build::rpc_service_name(NAME)).await.unwrap();
    let selector = labels::selector_string(&service.spec.unwrap().selector.unwrap());
    let mut expected: Vec<String> = topology
        .committees
        .iter()
        .filter(|c| c.role != CommitteeRole::Beacon)
        .flat_map(|c| c.nodes.iter().map(|n| n.name.clone()))
        .collect();
    expected.sort();
    eventually(
        "the RPC Service selects the shard and pool pods",
        WAIT,
        || {
            let (pods, selector, expected) = (pods.clone(), selector.clone(), expected.clone());
            async move {
                let list = pods
                    .list(&ListParams::default().labels(&selector))
                    .await
                    .ok()?;
                let mut names: Vec<String> = list
                    .items
                    .iter()
                    .filter_map(|p| p.metadata.name.clone())
                    .collect();
                names.sort();
                (names == expected).then_some(())
            }
        },
    )
    .await;
    // A client's request that lands on a pool pod among the Service's endpoints (one
    // whose `/readyz` answers 200 at that moment) reaches the shard owning the account:
    // reads of accounts in both shards' tables, and a transfer finalized there.
    let funded: Vec<String> = (FUNDED..FUNDED + 8)
        .map(|i| to_hex(test_key(i).public_key().as_ref()))
        .collect();
    let (via, shards) = eventually(
        "reads through a ready pool node reach both shards",
        WAIT,
        || {
            let (rpc, pool_refs, funded) = (rpc.clone(), pool_refs.clone(), funded.clone());
            async move {
                let node = ready_pool_node(&rpc, &pool_refs).await?;
                let mut shards = std::collections::BTreeSet::new();
                for a in &funded {
                    let (balance, shard) = account(&rpc, &node, a).await?;
                    assert_eq!(balance, FUNDS, "{a} through {}", node.node);
                    shards.insert(shard?);
                }
                Some((node.node, shards))
            }
        },
    )
    .await;
    assert_eq!(
        shards.into_iter().collect::<Vec<_>>(),
        [0, 1],
        "through {via}"
    );
    let payer = test_key(FUNDED);
    let payee = test_key(FUNDED + 20).public_key();
    let transfer = UnsignedTx {
        chain_id: chain_id.clone(),
        from: payer.public_key(),
        nonce: 0,
        fee: 1,
        kind: TxKind::Transfer {
            to: payee.clone(),
            amount: 7,
        },
    }
    .sign(&payer);
    let params = SendTransactionParams {
        tx: to_hex(&transfer.encode()),
    };
    let payee = to_hex(payee.as_ref());
    let started_transfer = std::time::Instant::now();
    let mut sent_via = Vec::new();
    'sent: loop {
        // Sent to a ready pool node (again, the same transaction, if it is not final in
        // 10 s: a pool node that lost its shard's peers is no endpoint any more), read
        // back through a ready pool node.
        if let Some(node) = ready_pool_node(&rpc, &pool_refs).await {
            let sent: Result<serde_json::Value, _> =
                rpc.call(&node, methods::SEND_TRANSACTION, &params).await;
            sent_via.push((node.node.clone(), sent.map_err(|e| e.to_string())));
        }
        for _ in 0..50 {
            if let Some(node) = ready_pool_node(&rpc, &pool_refs).await
                && account(&rpc, &node, &payee).await.map(|a| a.0) == Some(7)
            {
                break 'sent;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert!(
            started_transfer.elapsed() < WAIT,
            "a transfer sent to a pool node was not finalized: {sent_via:?}"
        );
    }
    eprintln!(
        "a transfer through a pool node finalized after {:?}: {sent_via:?}",
        started_transfer.elapsed()
    );

    // Scale-down 2 -> 1: pool-1 is deregistered, and its pod stays until the beacon's
    // map leaves it out.
    networks
        .patch(
            NAME,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"validatorPool": {"replicas": 1}}})),
        )
        .await
        .unwrap();
    let leaving_key = pool_keys[1].clone();
    eprintln!("placements checked after {:?}", started.elapsed());
    let started = std::time::Instant::now();
    // The operator stops once it took the change in (its status says 1), and a fresh one
    // with no memory of it finishes the step from what the cluster and the beacon say.
    eventually("the operator took the scale-down in", WAIT, || {
        let networks = networks.clone();
        async move {
            let p = networks.get(NAME).await.ok()?.status?.validator_pool?;
            (p.replicas == 1).then_some(())
        }
    })
    .await;
    drop(stop);
    let stop = operator();
    let mut saw_leaving = false;
    loop {
        let replicas = sets
            .get(&format!("{NAME}-pool"))
            .await
            .unwrap()
            .spec
            .and_then(|s| s.replicas);
        let map = beacon_placements(&rpc, &beacon).await;
        if let Ok(n) = networks.get(NAME).await
            && let Some(p) = n.status.and_then(|s| s.validator_pool)
        {
            saw_leaving |= p
                .validators
                .iter()
                .any(|v| v.state == PoolValidatorState::Leaving);
        }
        if replicas == Some(1) {
            let map = map.unwrap_or_default();
            assert!(
                !map.contains_key(&leaving_key),
                "pool-1's pod went while the beacon still placed it"
            );
            break;
        }
        assert!(
            started.elapsed() < WAIT,
            "the pool's StatefulSet still has {replicas:?} replicas"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eprintln!(
        "scale-down: pod removed after {:?}; status showed pool-1 Leaving: {saw_leaving}",
        started.elapsed()
    );
    nodes
        .iter_mut()
        .find(|n| n.name == format!("{NAME}-pool-1"))
        .unwrap()
        .kill();
    // Deregistered by its own key: registered once, deregistered once.
    assert_eq!(system_sequence(&rpc, &beacon, &leaving_key).await, 2);
    let settled = eventually("status.validatorPool settles at 1", WAIT, || {
        let networks = networks.clone();
        async move {
            let p = networks.get(NAME).await.ok()?.status?.validator_pool?;
            (p.replicas == 1 && p.placed == 1 && p.validators.len() == 1 && p.message.is_none())
                .then_some(p)
        }
    })
    .await;
    assert_eq!(settled.validators[0].node_key, pool_keys[0]);

    // Scale-up 1 -> 2: pool-1 comes back with its key and its claim (the test restarts
    // its process once the StatefulSet has the pod again) and is registered anew.
    networks
        .patch(
            NAME,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"validatorPool": {"replicas": 2}}})),
        )
        .await
        .unwrap();
    eventually("the pool's StatefulSet is back to 2", WAIT, || {
        let sets = sets.clone();
        async move {
            let set = sets.get(&format!("{NAME}-pool")).await.ok()?;
            (set.spec?.replicas == Some(2)).then_some(())
        }
    })
    .await;
    nodes
        .iter_mut()
        .find(|n| n.name == format!("{NAME}-pool-1"))
        .unwrap()
        .start();
    let back = eventually(
        "pool-1 placed again, in the status as in the map",
        WAIT,
        || {
            let (networks, rpc, beacon, key) = (
                networks.clone(),
                rpc.clone(),
                beacon.clone(),
                leaving_key.clone(),
            );
            async move {
                let p = networks.get(NAME).await.ok()?.status?.validator_pool?;
                let map = beacon_placements(&rpc, &beacon).await?;
                let again = p.validators.get(1)?;
                (p.placed == 2 && again.node_key == key && again.shard == map.get(&key).copied())
                    .then_some(p)
            }
        },
    )
    .await;
    eprintln!(
        "scale-up: pool-1 placed again after {:?}: {back:?}",
        started.elapsed()
    );
    assert_eq!(
        system_sequence(&rpc, &beacon, &leaving_key).await,
        3,
        "registered, deregistered, registered"
    );

    for node in &mut nodes {
        assert!(node.running(), "{} exited:\n{}", node.name, node.log());
    }
    stop.send(()).ok();
}
