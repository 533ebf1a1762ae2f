//! The operator's objects run the real `trellis-node`.
//!
//! What is real here: the objects are the operator's own build output (key Secrets in
//! the `keygen` format, the genesis ConfigMap, the committee's `node.toml`, the
//! StatefulSet's probes), written to disk exactly as a pod's mounts would show them; the
//! nodes are real `trellis-node` processes on 127.0.30.x running BFT consensus over
//! authenticated p2p; the operator reads them through its real JSON-RPC client. What is
//! substituted: the pod network — the node-endpoint resolver rewrites the stable DNS
//! names to loopback addresses, the only change `local::write_node` makes besides paths.
//!
//! Without a `trellis-node` binary (`cargo build -p trellis-node`) the tests print
//! `SKIPPED`, unless `TRELLIS_REQUIRE_NODE=1` or `TRELLIS_REQUIRE_CLUSTER=1`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use trellis_crd::topology::{NetworkId, plan};
use trellis_crd::{ChainNetwork, ChainNetworkSpec, NetworkMode};
use trellis_operator::build::{self, BuildInput, BuildOptions};
use trellis_operator::keys;

const NAMESPACE: &str = "tenant-a";

/// Key Secrets as the operator's keys step writes them, one per committee, plus the
/// public keys by node.
fn key_secrets(
    topology: &trellis_crd::topology::Topology,
) -> (BTreeMap<String, Secret>, BTreeMap<String, String>) {
    let mut secrets = BTreeMap::new();
    let mut public = BTreeMap::new();
    for committee in &topology.committees {
        let entries: Vec<String> = committee
            .nodes
            .iter()
            .map(|n| keys::node_entry(&n.name))
            .collect();
        let name = build::key_secret_name(committee);
        let set = keys::complete_keys(&name, None, &entries).unwrap();
        for node in &committee.nodes {
            public.insert(
                node.name.clone(),
                set.public_keys[&keys::node_entry(&node.name)].node.clone(),
            );
        }
        let data: BTreeMap<String, ByteString> = keys::secret_data(&set.missing);
        secrets.insert(
            name.clone(),
            Secret {
                metadata: ObjectMeta {
                    name: Some(name),
                    ..ObjectMeta::default()
                },
                data: Some(data),
                ..Secret::default()
            },
        );
    }
    (secrets, public)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operators_objects_run_real_nodes_that_finalize() {
    let Some(binary) = support::node_binary() else {
        eprintln!("SKIPPED: no trellis-node binary");
        return;
    };
    let mut network = ChainNetwork::new(
        "alpha",
        ChainNetworkSpec::new(NetworkMode::Public, "trellis-node:e2e"),
    );
    network.metadata.namespace = Some(NAMESPACE.to_owned());
    network.metadata.uid = Some("uid-1".to_owned());
    let topology = plan(&NetworkId::new(NAMESPACE, "alpha"), &network.spec).unwrap();
    let (secrets, public_keys) = key_secrets(&topology);
    let admin = keys::NodeKeyFile::generate();
    let options = BuildOptions::default();
    let input = BuildInput {
        network: &network,
        topology: &topology,
        members: &[],
        public_keys: &public_keys,
        admin_public_key: &admin.admin_public_key,
        options: &options,
    };
    // The pure build step: every child, and the genesis ConfigMap.
    let children = build::build(&input).unwrap();
    let genesis = trellis_operator::genesis::config_map(&input).unwrap();

    // Shard 0 alone (it finalizes without the beacon; tests/sharded.rs runs all of them).
    let shard = topology.shards().next().unwrap();
    let config_map = children
        .config_maps
        .iter()
        .find(|c| c.metadata.name.as_deref() == Some(&build::config_map_name(shard)))
        .unwrap();
    let set = children
        .stateful_sets
        .iter()
        .find(|s| s.metadata.name.as_deref() == Some(&shard.name))
        .unwrap();
    let container = &set
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers[0];
    assert_eq!(
        container.args.as_deref().unwrap(),
        ["run", "--config", "/etc/trellis/config/node.toml"],
        "the container runs `trellis-node run --config` on the mounted node.toml"
    );
    let probe_path = |p: &Option<k8s_openapi::api::core::v1::Probe>| {
        p.as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap()
            .path
            .clone()
            .unwrap()
    };
    let readiness = probe_path(&container.readiness_probe);
    let liveness = probe_path(&container.liveness_probe);

    let dir = tempfile::tempdir().unwrap();
    let resolver = support::loopback(shard, 1);
    let mut nodes = support::materialise(
        dir.path(),
        NAMESPACE,
        shard,
        config_map,
        &genesis,
        &secrets[&build::key_secret_name(shard)],
        &resolver,
        &binary,
    );
    // Only addresses and paths differ from what the pod would read.
    let built =
        trellis_node_api::NodeConfig::from_toml(&config_map.data.as_ref().unwrap()["node.toml"])
            .unwrap();
    let local = &nodes[0].files.node;
    assert_eq!(local.chain_id, built.chain_id);
    assert_eq!(local.role, built.role);
    assert_eq!(local.bootstrap_peers.len(), built.bootstrap_peers.len());
    for (l, b) in local.bootstrap_peers.iter().zip(&built.bootstrap_peers) {
        assert_eq!(l.public_key, b.public_key);
        assert!(l.address.starts_with("127.0.30."), "{}", l.address);
    }
    for node in &mut nodes {
        node.start();
    }

    // Blocks finalize on every node, read through the operator's own RPC client.
    let rpc = support::rpc(&resolver);
    let chain_id = &topology.genesis.chain_id;
    let started = Instant::now();
    loop {
        let reading = support::committee_status(&rpc, chain_id, NAMESPACE, shard).await;
        let heights: Vec<u64> = reading
            .nodes
            .values()
            .map(|r| r.as_ref().map_or(0, |s| s.finalized_height))
            .collect();
        if heights.iter().all(|h| *h >= 5) {
            for (name, status) in reading.answered() {
                assert_eq!(status.chain_id, *chain_id);
                assert_eq!(status.role, trellis_node_api::Role::Shard { shard: 0 });
                assert_eq!(status.validators.len(), 4, "{name}: genesis members");
                assert_eq!(status.node_key, public_keys[name.as_str()]);
            }
            break;
        }
        for node in &mut nodes {
            assert!(node.running(), "{} exited:\n{}", node.name, node.log());
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no finality within 120 s: heights {heights:?}\n{}",
            nodes[0].log()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // The member registry the admission flow reads answers from the real nodes.
    let registry = trellis_operator::chain::CommitteeNodes {
        chain_id: chain_id.clone(),
        nodes: support::node_refs(NAMESPACE, shard),
    };
    use trellis_operator::chain::ChainClient;
    let members = rpc.registry(&registry).await.unwrap();
    assert_eq!(&members.chain_id, chain_id);
    assert_eq!(members.members.len(), 4);
    assert_eq!(members.threshold, 3);

    // The probes the StatefulSet points at answer 200 on the RPC port.
    for node in support::node_refs(NAMESPACE, shard) {
        for path in [&readiness, &liveness] {
            let started = Instant::now();
            loop {
                match rpc.http(&node, path, None).await {
                    Ok((200, _)) => break,
                    other => assert!(
                        started.elapsed() < Duration::from_secs(60),
                        "{} {path}: {other:?}",
                        node.node
                    ),
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    }
}

mod rolling {
    //! A node image change on the real test cluster, with the chain read from real nodes.
    //!
    //! What is real: the apiserver, the StatefulSet controller replacing pods as the
    //! operator lowers each committee's partition, kwok making the new pods Ready, the
    //! operator's reconciler (in-process) with its JSON-RPC client, and eight
    //! `trellis-node` processes — the beacon committee on 127.0.123.1–4 and shard 0 on
    //! 127.0.123.11–14 — started from the one genesis, the `node.toml`s and the key
    //! Secrets the operator wrote into the cluster (the shard follows the beacon). Both
    //! rolls are gated on finality read from those nodes: the beacon's on the beacon
    //! chain's finalized height, the shard's on the shard's. What is not: kwok pods run
    //! no process, so the test plays the kubelet — when a pod is replaced, it restarts
    //! that validator's process (SIGKILL, same data dir) — and the pod network (the
    //! resolver maps the DNS names, also those in the genesis, to loopback).

    use super::*;
    use std::sync::Arc;

    use k8s_openapi::api::apps::v1::StatefulSet;
    use k8s_openapi::api::core::v1::{ConfigMap, Pod};
    use kube::api::{Api, Patch, PatchParams, PostParams};
    use trellis_crd::topology::Committee;
    use trellis_e2e::kube::{apply_crds, eventually, test_namespace};
    use trellis_operator::chain::NodeRpc;
    use trellis_operator::endpoints::Loopback;
    use trellis_operator::metrics::Metrics;
    use trellis_operator::rollout::STEP_HEIGHT_ANNOTATION;

    use super::support::condition;

    const WAIT: Duration = Duration::from_secs(150);

    fn partition(set: &StatefulSet) -> i32 {
        set.spec
            .as_ref()
            .and_then(|s| s.update_strategy.as_ref())
            .and_then(|u| u.rolling_update.as_ref())
            .and_then(|r| r.partition)
            .unwrap_or(0)
    }

    fn step_height(set: &StatefulSet) -> Option<u64> {
        set.metadata
            .annotations
            .as_ref()?
            .get(STEP_HEIGHT_ANNOTATION)?
            .parse()
            .ok()
    }

    /// Pods of `set` at its update revision.
    async fn updated_pods(pods: &Api<Pod>, set: &StatefulSet) -> Vec<String> {
        let revision = set
            .status
            .as_ref()
            .and_then(|s| s.update_revision.clone())
            .unwrap_or_default();
        let mut names: Vec<String> = pods
            .list(&kube::api::ListParams::default().labels(&format!(
                "trellis.dev/committee={}",
                set.metadata.name.as_deref().unwrap()
            )))
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|p| {
                p.metadata.deletion_timestamp.is_none()
                    && p.metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get("controller-revision-hash"))
                        == Some(&revision)
            })
            .filter_map(|p| p.metadata.name)
            .collect();
        names.sort();
        names
    }

    /// One committee's roll as the test follows it: its processes and the partitions
    /// seen, each with the finalized height its step began at.
    struct Roll {
        committee: Committee,
        nodes: Vec<support::NodeProcess>,
        seen: Vec<(i32, Option<u64>)>,
        done: bool,
    }

    impl Roll {
        /// Reads the StatefulSet once: checks that a lowered partition moved by one with
        /// a step height past the previous step's, and restarts the validator just
        /// replaced (the kubelet's part).
        async fn follow(&mut self, sets: &Api<StatefulSet>, pods: &Api<Pod>) {
            let set = sets.get(&self.committee.name).await.unwrap();
            let p = partition(&set);
            let (last, before) = *self.seen.last().unwrap();
            let name = &self.committee.name;
            if p < last {
                assert_eq!(p, last - 1, "{name}: one validator at a time");
                let updated = updated_pods(pods, &set).await;
                assert!(
                    updated.len() <= usize::try_from(4 - p).unwrap(),
                    "{name}: partition {p} but {updated:?} replaced"
                );
                // The step that ended waited for finality past its own start: the next
                // one begins higher (the last step records none: the roll is over).
                let height = step_height(&set);
                if let (Some(h), Some(before)) = (height, before) {
                    assert!(
                        h > before,
                        "{name}: step at {p} began at {h}, not past {before}"
                    );
                }
                assert_eq!(height.is_none(), p == 0, "{name}: step height at {p}");
                self.seen.push((p, height));
                let i = usize::try_from(p).unwrap();
                self.nodes[i].kill();
                self.nodes[i].start();
            }
            let status = set.status.clone().unwrap_or_default();
            self.done = p == 0
                && status.updated_replicas == Some(4)
                && status.current_revision == status.update_revision;
            for node in &mut self.nodes {
                assert!(node.running(), "{} exited:\n{}", node.name, node.log());
            }
        }

        fn partitions(&self) -> Vec<i32> {
            self.seen.iter().map(|(p, _)| *p).collect()
        }

        /// The highest finalized height a step of this roll began at.
        fn last_step(&self) -> u64 {
            self.seen.iter().filter_map(|(_, h)| *h).max().unwrap()
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_new_image_rolls_one_validator_at_a_time_per_committee_waiting_for_finality() {
        let Some(binary) = support::node_binary() else {
            eprintln!("SKIPPED: no trellis-node binary");
            return;
        };
        let Some(ns) = test_namespace("op-roll").await else {
            return;
        };
        apply_crds(&ns.client, trellis_crd::crds()).await.unwrap();
        let claims: Vec<String> = ["beacon", "shard-0"]
            .iter()
            .flat_map(|c| (0..4).map(move |i| format!("ledger-alpha-{c}-{i}")))
            .collect();
        ns.prebound_volumes(&claims, "10Gi").await.unwrap();

        let spec = ChainNetworkSpec::new(NetworkMode::Public, "trellis-node:e2e-1");
        let topology = plan(&NetworkId::new(ns.name.clone(), "alpha"), &spec).unwrap();
        let beacon = topology.beacon().unwrap().clone();
        let shard = topology.shards().next().unwrap().clone();
        let mut resolver: Loopback = support::loopback_in(123, &beacon, 1);
        resolver
            .nodes
            .extend(support::loopback_in(123, &shard, 11).nodes);

        // The operator, reading the chain through its real client over the resolver.
        let chain = NodeRpc::new(Arc::new(resolver.clone()), Duration::from_secs(2));
        let (_, stop) =
            support::start_operator(&ns, Arc::new(chain), Arc::new(Metrics::new()), false);
        let networks: Api<ChainNetwork> = ns.api();
        networks
            .create(&PostParams::default(), &ChainNetwork::new("alpha", spec))
            .await
            .unwrap();

        // Both committees run from what the operator wrote into the cluster.
        let config_maps: Api<ConfigMap> = ns.api();
        let secrets: Api<Secret> = ns.api();
        let dir = tempfile::tempdir().unwrap();
        let mut rolls = Vec::new();
        for committee in [&beacon, &shard] {
            let (config_map, genesis, keys) = eventually("node objects", WAIT, || {
                let (config_maps, secrets) = (config_maps.clone(), secrets.clone());
                let committee = committee.clone();
                async move {
                    Some((
                        config_maps
                            .get_opt(&build::config_map_name(&committee))
                            .await
                            .ok()??,
                        config_maps.get_opt("alpha-genesis").await.ok()??,
                        secrets
                            .get_opt(&build::key_secret_name(&committee))
                            .await
                            .ok()??,
                    ))
                }
            })
            .await;
            let nodes = support::materialise(
                dir.path(),
                &ns.name,
                committee,
                &config_map,
                &genesis,
                &keys,
                &resolver,
                &binary,
            );
            rolls.push(Roll {
                committee: committee.clone(),
                nodes,
                seen: Vec::new(),
                done: false,
            });
        }
        for roll in &mut rolls {
            for node in &mut roll.nodes {
                node.start();
            }
        }

        // Object readiness (kwok) and chain health (the nodes) are separate conditions.
        let healthy = eventually("Ready and ChainHealthy", WAIT, || {
            let networks = networks.clone();
            async move {
                let n = networks.get("alpha").await.ok()?;
                let ready = condition(&n, "Ready")?.0 == "True";
                let chain = condition(&n, "ChainHealthy")?;
                (ready && chain.0 == "True").then_some((n, chain))
            }
        })
        .await;
        assert_eq!(healthy.1.1, "Finalizing");
        let shard_status = &healthy.0.status.as_ref().unwrap().shards[0];
        assert!(shard_status.finalized_height.unwrap() > 0);
        assert!(shard_status.epoch.is_some());
        // The beacon finalizes too, every validator of it answering.
        let rpc = support::rpc(&resolver);
        let chain_id = topology.genesis.chain_id.clone();
        eventually("the beacon finalizes", WAIT, || {
            let (rpc, chain_id, ns_name, beacon) = (
                rpc.clone(),
                chain_id.clone(),
                ns.name.clone(),
                beacon.clone(),
            );
            async move {
                let reading = support::committee_status(&rpc, &chain_id, &ns_name, &beacon).await;
                reading
                    .nodes
                    .values()
                    .all(|r| {
                        r.as_ref().is_ok_and(|s| {
                            s.role == trellis_node_api::Role::Beacon && s.finalized_height > 2
                        })
                    })
                    .then_some(())
            }
        })
        .await;

        // The transition was published as a Kubernetes Event.
        let events: Api<k8s_openapi::api::events::v1::Event> = ns.api();
        eventually("ChainHealthy Event", WAIT, || {
            let events = events.clone();
            async move {
                events
                    .list(&kube::api::ListParams::default())
                    .await
                    .ok()?
                    .items
                    .iter()
                    .any(|e| {
                        e.reason.as_deref() == Some("Finalizing")
                            && e.note
                                .as_deref()
                                .is_some_and(|n| n.starts_with("ChainHealthy=True"))
                    })
                    .then_some(())
            }
        })
        .await;

        // In each committee the validator the roll replaces first is down before the roll
        // begins: three of four keep finalizing, so both chains stay live...
        for roll in &mut rolls {
            roll.nodes[3].kill();
        }
        let sets: Api<StatefulSet> = ns.api();
        let pods: Api<Pod> = ns.api();
        let patch = serde_json::json!({"spec": {"node": {"image": "trellis-node:e2e-2"}}});
        networks
            .patch("alpha", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap();

        // ...and the operator replaces pod 3 of each, kwok makes it Ready, but its node
        // does not answer: each roll holds at partition 3.
        for roll in &mut rolls {
            let name = roll.committee.name.clone();
            let held = eventually(&format!("the roll holds on {name}-3"), WAIT, || {
                let (networks, sets, name) = (networks.clone(), sets.clone(), name.clone());
                async move {
                    let n = networks.get("alpha").await.ok()?;
                    let (_, reason, message) = condition(&n, "Progressing")?;
                    let set = sets.get(&name).await.ok()?;
                    (reason == "RollingUpdate"
                        && message.contains(&format!("{name} partition 3: {name}-3 not answering"))
                        && partition(&set) == 3)
                        .then_some(set)
                }
            })
            .await;
            assert_eq!(
                updated_pods(&pods, &held).await,
                [format!("{name}-3")],
                "one validator replaced"
            );
            let ready_pods = held.status.as_ref().unwrap().ready_replicas.unwrap_or(0);
            assert_eq!(
                ready_pods, 4,
                "{name}: object readiness alone would have let it go on"
            );
            roll.seen.push((3, Some(step_height(&held).unwrap())));
        }
        for roll in &rolls {
            let set = sets.get(&roll.committee.name).await.unwrap();
            assert_eq!(
                partition(&set),
                3,
                "{}: still held after the condition was written",
                roll.committee.name
            );
        }

        // The replaced validators come back (the "new image"), catch up, and both rolls
        // move on; each later replacement restarts that validator's process.
        for roll in &mut rolls {
            roll.nodes[3].start();
        }
        let started = Instant::now();
        while !rolls.iter().all(|r| r.done) {
            for roll in &mut rolls {
                roll.follow(&sets, &pods).await;
            }
            assert!(
                started.elapsed() < Duration::from_secs(240),
                "the rolls did not finish: {:?}",
                rolls
                    .iter()
                    .map(|r| (r.committee.name.clone(), r.seen.clone()))
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        for roll in &rolls {
            // (partition, finalized height its step began at): the log shows the gate.
            eprintln!("{} roll: {:?}", roll.committee.name, roll.seen);
            assert_eq!(roll.partitions(), [3, 2, 1, 0], "{}", roll.committee.name);
        }

        // Every validator of both committees finalizes past its committee's last step,
        // and the chain is healthy.
        for roll in &rolls {
            let last_step = roll.last_step();
            eventually(
                &format!("{} finalizes past its last step", roll.committee.name),
                WAIT,
                || {
                    let networks = networks.clone();
                    let rpc = rpc.clone();
                    let (chain_id, ns_name, committee) =
                        (chain_id.clone(), ns.name.clone(), roll.committee.clone());
                    async move {
                        let reading =
                            support::committee_status(&rpc, &chain_id, &ns_name, &committee).await;
                        let all_past = reading
                            .nodes
                            .values()
                            .all(|r| r.as_ref().is_ok_and(|s| s.finalized_height > last_step));
                        let n = networks.get("alpha").await.ok()?;
                        let chain = condition(&n, "ChainHealthy")?;
                        (all_past && chain.0 == "True").then_some(())
                    }
                },
            )
            .await;
        }
        drop(stop);
    }
}
