//! Real `trellis-node` processes started from the operator's objects.

// Test harness code: a failed setup step should fail the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::Api;
use trellis_crd::ChainNetwork;
use trellis_crd::topology::Committee;
use trellis_e2e::kube::TestNamespace;
use trellis_operator::build::BuildOptions;
use trellis_operator::chain::{ChainClient, CommitteeChain, CommitteeNodes, NodeRpc};
use trellis_operator::controller::{self, Context};
use trellis_operator::endpoints::{Loopback, NodeRef};
use trellis_operator::local::{NodeFiles, write_node};
use trellis_operator::member;
use trellis_operator::metrics::Metrics;

/// The `trellis-node` binary: `TRELLIS_NODE_BIN`, else the workspace's
/// `target/debug/trellis-node` (built by `cargo build -p trellis-node`, and by every
/// workspace test run). None (the caller prints SKIPPED) unless a run requires it.
pub fn node_binary() -> Option<PathBuf> {
    if let Ok(path) = std::env::var("TRELLIS_NODE_BIN") {
        return Some(PathBuf::from(path));
    }
    let target = std::env::var("CARGO_TARGET_DIR").map_or_else(
        |_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"),
        PathBuf::from,
    );
    let path = target.join("debug/trellis-node");
    if path.exists() {
        return Some(path);
    }
    let required = ["TRELLIS_REQUIRE_NODE", "TRELLIS_REQUIRE_CLUSTER"]
        .iter()
        .any(|v| std::env::var(v).is_ok_and(|v| v == "1"));
    assert!(
        !required,
        "{} is missing: run `cargo build -p trellis-node` (or set TRELLIS_NODE_BIN)",
        path.display()
    );
    None
}

/// A node process, SIGKILLed when dropped so that a failing test leaves nothing behind.
pub struct NodeProcess {
    pub name: String,
    pub files: NodeFiles,
    binary: PathBuf,
    dir: PathBuf,
    child: Option<Child>,
}

impl NodeProcess {
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "{} already runs", self.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("node.log"))
            .unwrap();
        let child = Command::new(&self.binary)
            .arg("run")
            .arg("--config")
            .arg(&self.files.config)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    /// SIGKILL (a pod replaced without grace) and wait.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("node.log")).unwrap_or_default()
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Loopback addresses `127.0.30.<first + ordinal>` for the nodes of `committee`.
pub fn loopback(committee: &Committee, first: u8) -> Loopback {
    loopback_in(30, committee, first)
}

/// Loopback addresses `127.0.<subnet>.<first + ordinal>`: each test file has its own
/// subnet, so test binaries running side by side never share an address.
pub fn loopback_in(subnet: u8, committee: &Committee, first: u8) -> Loopback {
    Loopback {
        nodes: committee
            .nodes
            .iter()
            .zip(first..)
            .map(|(n, last)| (n.name.clone(), IpAddr::from([127, 0, subnet, last])))
            .collect::<BTreeMap<_, _>>(),
    }
}

/// Every committee on its own block of ten addresses: committee `i`'s node `j` on
/// `127.0.<subnet>.(10i + j + 1)`.
pub fn block_resolver(subnet: u8, committees: &[Committee]) -> Loopback {
    let mut nodes = BTreeMap::new();
    for (block, committee) in committees.iter().enumerate() {
        for (ordinal, node) in committee.nodes.iter().enumerate() {
            let last = u8::try_from(block * 10 + ordinal + 1).unwrap();
            nodes.insert(node.name.clone(), IpAddr::from([127, 0, subnet, last]));
        }
    }
    Loopback { nodes }
}

/// A condition of the network's status: `(status, reason, message)`.
pub fn condition(network: &ChainNetwork, type_: &str) -> Option<(String, String, String)> {
    network
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// The config ConfigMap and the key Secret the operator wrote for `committee`, once both
/// exist.
pub async fn committee_objects(
    config_maps: &Api<ConfigMap>,
    secrets: &Api<Secret>,
    committee: &Committee,
) -> Option<(ConfigMap, Secret)> {
    use trellis_operator::build;
    Some((
        config_maps
            .get_opt(&build::config_map_name(committee))
            .await
            .ok()??,
        secrets
            .get_opt(&build::key_secret_name(committee))
            .await
            .ok()??,
    ))
}

pub fn node_refs(namespace: &str, committee: &Committee) -> Vec<NodeRef> {
    committee
        .nodes
        .iter()
        .map(|n| NodeRef {
            namespace: namespace.to_owned(),
            committee: committee.name.clone(),
            node: n.name.clone(),
        })
        .collect()
}

/// Writes every node of `committee` from the objects and returns the (not yet started)
/// processes.
#[allow(clippy::too_many_arguments)]
pub fn materialise(
    dir: &Path,
    namespace: &str,
    committee: &Committee,
    config_map: &ConfigMap,
    genesis: &ConfigMap,
    keys: &Secret,
    resolver: &Loopback,
    binary: &Path,
) -> Vec<NodeProcess> {
    node_refs(namespace, committee)
        .into_iter()
        .map(|node| {
            let node_dir = dir.join(&node.node);
            let files = write_node(&node_dir, &node, config_map, genesis, keys, resolver).unwrap();
            NodeProcess {
                name: node.node.clone(),
                files,
                binary: binary.to_owned(),
                dir: node_dir,
                child: None,
            }
        })
        .collect()
}

pub fn rpc(resolver: &Loopback) -> NodeRpc {
    NodeRpc::new(Arc::new(resolver.clone()), Duration::from_secs(3))
}

pub async fn committee_status(
    rpc: &NodeRpc,
    chain_id: &str,
    namespace: &str,
    committee: &Committee,
) -> CommitteeChain {
    rpc.committee_status(&CommitteeNodes {
        chain_id: chain_id.to_owned(),
        nodes: node_refs(namespace, committee),
    })
    .await
}

/// Starts the operator's network reconciler (and with `members` its member reconciler)
/// in-process, watching only `ns` and reading the chain through `chain`; they stop when
/// the returned sender is dropped.
pub fn start_operator(
    ns: &TestNamespace,
    chain: Arc<dyn ChainClient>,
    metrics: Arc<Metrics>,
    members: bool,
) -> (Arc<Context>, tokio::sync::watch::Sender<()>) {
    let ctx = Arc::new(Context::new(
        ns.client.clone(),
        chain,
        BuildOptions::default(),
        metrics,
    ));
    let (stop, stopped) = tokio::sync::watch::channel(());
    let until_stopped = |mut rx: tokio::sync::watch::Receiver<()>| async move {
        // Resolves when the sender is dropped.
        while rx.changed().await.is_ok() {}
    };
    tokio::spawn(controller::run(
        ctx.clone(),
        Some(ns.name.clone()),
        until_stopped(stopped.clone()),
    ));
    if members {
        tokio::spawn(member::run(
            ctx.clone(),
            Some(ns.name.clone()),
            until_stopped(stopped),
        ));
    }
    (ctx, stop)
}
