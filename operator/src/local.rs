//! Materialises a node's Kubernetes objects as files, to run `trellis-node` outside a pod.
//!
//! A pod of a committee sees three things: its committee's `node.toml` (config
//! ConfigMap), its committee's genesis entry (genesis ConfigMap) and its own key entry
//! (key Secret, `subPathExpr: $(POD_NAME).key`). [`write_node`] writes exactly those to a
//! directory, changing only what a pod's network gives it for free: the listen addresses
//! and the peers' addresses (in the config, and in a sharded genesis), which a
//! [`NodeResolver`] supplies (loopback in tests), and the paths. Everything else — chain id, role, genesis members, keys — is the bytes the
//! operator built, so a node that runs from these files proves the objects are right.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use trellis_node_api::NodeConfig;

use crate::endpoints::{NodeRef, NodeResolver};
use crate::keys;

/// Why a node's files cannot be written.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error("{0} has no entry {1}")]
    MissingEntry(String, String),
    #[error("node.toml of {0}: {1}")]
    Config(String, String),
    #[error("no address for {0}")]
    NoAddress(String),
    #[error("bootstrap peer {0} is not a committee DNS name")]
    UnknownPeer(String),
    #[error("writing {0}: {1}")]
    Io(PathBuf, std::io::Error),
}

/// The files of one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeFiles {
    /// `trellis-node run --config <config>`.
    pub config: PathBuf,
    pub data_dir: PathBuf,
    /// The rewritten configuration.
    pub node: NodeConfig,
}

fn config_map_entry(map: &ConfigMap, entry: &str) -> Result<String, LocalError> {
    map.data
        .as_ref()
        .and_then(|d| d.get(entry))
        .cloned()
        .ok_or_else(|| {
            LocalError::MissingEntry(
                map.metadata.name.clone().unwrap_or_default(),
                entry.to_owned(),
            )
        })
}

fn write(path: &Path, bytes: &[u8], private: bool) -> Result<(), LocalError> {
    let io = |e| LocalError::Io(path.to_owned(), e);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut file = options.open(path).map_err(io)?;
    file.write_all(bytes).map_err(io)?;
    file.sync_all().map_err(io)
}

fn socket(address: &str, node: &str) -> Result<SocketAddr, LocalError> {
    address
        .trim_start_matches("http://")
        .parse()
        .map_err(|_| LocalError::NoAddress(format!("{node} ({address} is not ip:port)")))
}

/// A sharded genesis names every validator's p2p and RPC address (shard nodes follow the
/// beacon at its validators' RPC addresses); they are rewritten through `resolver`, like
/// the config's peers. Everything else stays as built. An unsharded genesis is kept
/// byte for byte (its peers' addresses come from the config's bootstrap peers).
fn localize_genesis(text: &str, resolver: &dyn NodeResolver) -> Result<String, LocalError> {
    let value: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| LocalError::Config("genesis".into(), e.to_string()))?;
    if value.get("sharding").is_none() {
        return Ok(text.to_owned());
    }
    let mut genesis = trellis_node_api::Genesis::from_json(text)
        .map_err(|e| LocalError::Config("genesis".into(), e.to_string()))?;
    let Some(sharding) = genesis.sharding.as_mut() else {
        return Ok(text.to_owned());
    };
    for seat in sharding
        .beacon
        .iter_mut()
        .chain(sharding.validators.iter_mut())
    {
        let node = NodeRef::from_p2p_address(&seat.p2p_address)
            .ok_or_else(|| LocalError::UnknownPeer(seat.p2p_address.clone()))?;
        // A node the resolver does not know keeps its DNS name: unreachable, as a pod
        // without a process is (a test may run one committee alone).
        if let (Some(p2p), Some(rpc)) = (resolver.p2p_address(&node), resolver.rpc_url(&node)) {
            seat.p2p_address = p2p;
            seat.rpc_address = rpc.trim_start_matches("http://").to_owned();
        }
    }
    genesis
        .to_json()
        .map_err(|e| LocalError::Config("genesis".into(), e.to_string()))
}

/// Writes `node`'s config, genesis and key file under `dir` (created if needed) from
/// its committee's config ConfigMap, the network's genesis ConfigMap and the
/// committee's key Secret. Addresses come from `resolver`, which must give socket
/// addresses (`ip:port`).
pub fn write_node(
    dir: &Path,
    node: &NodeRef,
    config_map: &ConfigMap,
    genesis: &ConfigMap,
    keys_secret: &Secret,
    resolver: &dyn NodeResolver,
) -> Result<NodeFiles, LocalError> {
    std::fs::create_dir_all(dir).map_err(|e| LocalError::Io(dir.to_owned(), e))?;
    let text = config_map_entry(config_map, "node.toml")?;
    let mut config = NodeConfig::from_toml(&text)
        .map_err(|e| LocalError::Config(node.committee.clone(), e.to_string()))?;

    // The genesis entry the pod's mount would show at `genesis_file`.
    let entry = config
        .genesis_file
        .file_name()
        .and_then(|n| n.to_str())
        .map(str::to_owned)
        .ok_or_else(|| LocalError::Config(node.committee.clone(), "no genesis file".into()))?;
    let genesis_path = dir.join("genesis.json");
    let genesis_text = localize_genesis(&config_map_entry(genesis, &entry)?, resolver)?;
    write(&genesis_path, genesis_text.as_bytes(), false)?;

    // The pod's own key entry, as `subPathExpr: $(POD_NAME).key` mounts it.
    let key_entry = keys::node_entry(&node.node);
    let key = keys_secret
        .data
        .as_ref()
        .and_then(|d| d.get(&key_entry))
        .ok_or_else(|| {
            LocalError::MissingEntry(
                keys_secret.metadata.name.clone().unwrap_or_default(),
                key_entry.clone(),
            )
        })?;
    let key_path = dir.join("keys.json");
    write(&key_path, &key.0, true)?;

    let own_p2p = resolver
        .p2p_address(node)
        .ok_or_else(|| LocalError::NoAddress(node.node.clone()))?;
    let own_rpc = resolver
        .rpc_url(node)
        .ok_or_else(|| LocalError::NoAddress(node.node.clone()))?;
    config.p2p_listen = socket(&own_p2p, &node.node)?;
    config.rpc_listen = socket(&own_rpc, &node.node)?;
    for peer in &mut config.bootstrap_peers {
        let peer_ref = NodeRef::from_p2p_address(&peer.address)
            .ok_or_else(|| LocalError::UnknownPeer(peer.address.clone()))?;
        peer.address = resolver
            .p2p_address(&peer_ref)
            .ok_or_else(|| LocalError::NoAddress(peer_ref.node.clone()))?;
    }
    config.key_file = key_path;
    config.genesis_file = genesis_path;
    config.data_dir = dir.join("data");
    let config_path = dir.join("node.toml");
    let rendered = config
        .to_toml()
        .map_err(|e| LocalError::Config(node.committee.clone(), e.to_string()))?;
    write(&config_path, rendered.as_bytes(), false)?;
    Ok(NodeFiles {
        config: config_path,
        data_dir: config.data_dir.clone(),
        node: config,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoints::Loopback;
    use k8s_openapi::ByteString;
    use std::collections::BTreeMap;

    const KEY: &str = "0000000000000000000000000000000000000000000000000000000000000001";

    fn node(name: &str) -> NodeRef {
        NodeRef {
            namespace: "ns".into(),
            committee: "alpha-shard-0".into(),
            node: name.into(),
        }
    }

    fn objects(peer: &str) -> (ConfigMap, ConfigMap, Secret) {
        let toml = format!(
            r#"chain_id = "alpha.ns"
key_file = "/etc/trellis/keys/node.key"
data_dir = "/var/lib/trellis"
genesis_file = "/etc/trellis/genesis/alpha-shard-0.json"
p2p_listen = "0.0.0.0:7000"
rpc_listen = "0.0.0.0:8545"

[role]
kind = "shard"
shard = 0

[[bootstrap_peers]]
public_key = "{KEY}"
address = "{peer}"
"#
        );
        let config = ConfigMap {
            data: Some(BTreeMap::from([("node.toml".to_owned(), toml)])),
            ..ConfigMap::default()
        };
        let genesis = ConfigMap {
            data: Some(BTreeMap::from([(
                "alpha-shard-0.json".to_owned(),
                "{}".to_owned(),
            )])),
            ..ConfigMap::default()
        };
        let keys = Secret {
            data: Some(BTreeMap::from([(
                "alpha-shard-0-0.key".to_owned(),
                ByteString(b"{\"node_key\":\"x\"}".to_vec()),
            )])),
            ..Secret::default()
        };
        (config, genesis, keys)
    }

    fn loopback() -> Loopback {
        Loopback {
            nodes: BTreeMap::from([
                ("alpha-shard-0-0".to_owned(), "127.0.30.1".parse().unwrap()),
                ("alpha-shard-0-1".to_owned(), "127.0.30.2".parse().unwrap()),
            ]),
        }
    }

    #[test]
    fn writes_the_pods_view_with_addresses_and_paths_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let (config, genesis, keys) =
            objects("alpha-shard-0-1.alpha-shard-0.ns.svc.cluster.local:7000");
        let files = write_node(
            dir.path(),
            &node("alpha-shard-0-0"),
            &config,
            &genesis,
            &keys,
            &loopback(),
        )
        .unwrap();
        let written =
            NodeConfig::from_toml(&std::fs::read_to_string(&files.config).unwrap()).unwrap();
        assert_eq!(written, files.node);
        assert_eq!(written.p2p_listen.to_string(), "127.0.30.1:7000");
        assert_eq!(written.rpc_listen.to_string(), "127.0.30.1:8545");
        assert_eq!(written.bootstrap_peers[0].address, "127.0.30.2:7000");
        assert_eq!(written.bootstrap_peers[0].public_key, KEY);
        assert_eq!(written.chain_id, "alpha.ns");
        assert_eq!(
            std::fs::read_to_string(&written.genesis_file).unwrap(),
            "{}"
        );
        assert_eq!(
            std::fs::read(&written.key_file).unwrap(),
            b"{\"node_key\":\"x\"}"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&written.key_file)
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "key files are private");
        }
    }

    #[test]
    fn missing_pieces_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let (config, genesis, keys) =
            objects("alpha-shard-0-1.alpha-shard-0.ns.svc.cluster.local:7000");
        let err = write_node(
            dir.path(),
            &node("alpha-shard-0-1"),
            &config,
            &genesis,
            &keys,
            &loopback(),
        )
        .unwrap_err();
        assert!(matches!(err, LocalError::MissingEntry(_, ref e) if e == "alpha-shard-0-1.key"));
        let (config, genesis, keys) = objects("10.0.0.1:7000");
        let err = write_node(
            dir.path(),
            &node("alpha-shard-0-0"),
            &config,
            &genesis,
            &keys,
            &loopback(),
        )
        .unwrap_err();
        assert!(matches!(err, LocalError::UnknownPeer(_)), "{err}");
        let (config, genesis, keys) =
            objects("alpha-shard-0-7.alpha-shard-0.ns.svc.cluster.local:7000");
        let err = write_node(
            dir.path(),
            &node("alpha-shard-0-0"),
            &config,
            &genesis,
            &keys,
            &loopback(),
        )
        .unwrap_err();
        assert!(matches!(err, LocalError::NoAddress(ref n) if n == "alpha-shard-0-7"));
    }
}
