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
        public_keys: &public_keys,
        admin_public_key: &admin.admin_public_key,
        options: &options,
    };
    // The pure build step: every child, and the genesis ConfigMap.
    let children = build::build(&input).unwrap();
    let genesis = build::genesis_config_map(&input).unwrap();

    // trellis-node runs shard committees (the beacon role comes with issue 4): shard 0.
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

    // The probes the StatefulSet points at answer 200 on the RPC port.
    let http = reqwest::Client::new();
    for node in &nodes {
        let base = format!("http://{}", resolver.rpc_socket(&node.name).unwrap());
        for path in [&readiness, &liveness] {
            let mut ok = false;
            let started = Instant::now();
            while !ok {
                ok = http
                    .get(format!("{base}{path}"))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                assert!(
                    ok || started.elapsed() < Duration::from_secs(60),
                    "{} {path} never 200",
                    node.name
                );
                if !ok {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
            }
        }
    }
}
