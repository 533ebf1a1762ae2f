//! Where the operator reaches a node: the node-endpoint resolver.
//!
//! In a cluster every validator has a stable DNS name from its committee's headless
//! Service (`<pod>.<committee>.<namespace>.svc.<cluster-domain>`), so [`ClusterDns`] is
//! all the operator needs. Tests keep the Kubernetes objects in a test cluster (where
//! kwok runs no process) and the real `trellis-node` processes on loopback; [`Loopback`]
//! maps each node to its loopback address so that the same operator code reads the
//! real chain.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use crate::build::{P2P_PORT, RPC_PORT};

/// One validator, as the operator names it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeRef {
    pub namespace: String,
    /// Committee (= StatefulSet and headless Service) name.
    pub committee: String,
    /// Pod name.
    pub node: String,
}

impl NodeRef {
    /// Parses the stable p2p address the build step writes (`<pod>.<committee>.<ns>.svc...`).
    pub fn from_p2p_address(address: &str) -> Option<Self> {
        let host = address.rsplit_once(':').map_or(address, |(host, _)| host);
        let mut labels = host.split('.');
        let node = labels.next()?;
        let committee = labels.next()?;
        let namespace = labels.next()?;
        (labels.next() == Some("svc") && !node.is_empty() && !committee.is_empty()).then(|| Self {
            namespace: namespace.to_owned(),
            committee: committee.to_owned(),
            node: node.to_owned(),
        })
    }
}

/// Maps a node to the addresses the operator (and, in tests, its peers) reach it at.
pub trait NodeResolver: Send + Sync + 'static {
    /// Base URL of the node's RPC listener (JSON-RPC at `/rpc`, probes, metrics).
    fn rpc_url(&self, node: &NodeRef) -> Option<String>;
    /// `host:port` of the node's p2p listener.
    fn p2p_address(&self, node: &NodeRef) -> Option<String>;
}

/// In-cluster resolution through the committees' headless Services.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterDns {
    pub cluster_domain: String,
}

impl ClusterDns {
    fn host(&self, node: &NodeRef) -> String {
        format!(
            "{}.{}.{}.svc.{}",
            node.node, node.committee, node.namespace, self.cluster_domain
        )
    }
}

impl NodeResolver for ClusterDns {
    fn rpc_url(&self, node: &NodeRef) -> Option<String> {
        Some(format!("http://{}:{RPC_PORT}", self.host(node)))
    }

    fn p2p_address(&self, node: &NodeRef) -> Option<String> {
        Some(format!("{}:{P2P_PORT}", self.host(node)))
    }
}

/// Nodes on loopback addresses, one IP per node, the operator's fixed ports on each.
/// Nodes without an entry are unreachable (as a pod without a process is).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Loopback {
    /// IP per pod name.
    pub nodes: BTreeMap<String, IpAddr>,
}

impl Loopback {
    pub fn p2p_socket(&self, node: &str) -> Option<SocketAddr> {
        let ip = self.nodes.get(node)?;
        Some(SocketAddr::new(*ip, u16::try_from(P2P_PORT).ok()?))
    }

    pub fn rpc_socket(&self, node: &str) -> Option<SocketAddr> {
        let ip = self.nodes.get(node)?;
        Some(SocketAddr::new(*ip, u16::try_from(RPC_PORT).ok()?))
    }
}

impl NodeResolver for Loopback {
    fn rpc_url(&self, node: &NodeRef) -> Option<String> {
        Some(format!("http://{}", self.rpc_socket(&node.node)?))
    }

    fn p2p_address(&self, node: &NodeRef) -> Option<String> {
        Some(self.p2p_socket(&node.node)?.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node() -> NodeRef {
        NodeRef {
            namespace: "acme".into(),
            committee: "alpha-shard-0".into(),
            node: "alpha-shard-0-2".into(),
        }
    }

    #[test]
    fn cluster_dns_names_the_headless_service_records() {
        let dns = ClusterDns {
            cluster_domain: "cluster.local".into(),
        };
        assert_eq!(
            dns.rpc_url(&node()).unwrap(),
            "http://alpha-shard-0-2.alpha-shard-0.acme.svc.cluster.local:8545"
        );
        let p2p = dns.p2p_address(&node()).unwrap();
        assert_eq!(
            p2p,
            "alpha-shard-0-2.alpha-shard-0.acme.svc.cluster.local:7000"
        );
        // The address the build step writes parses back to the same node.
        assert_eq!(NodeRef::from_p2p_address(&p2p), Some(node()));
    }

    #[test]
    fn malformed_addresses_name_no_node() {
        for bad in ["127.0.0.1:7000", "a.b:7000", "", ":7000", "a.b.c.d:7000"] {
            assert_eq!(NodeRef::from_p2p_address(bad), None, "{bad}");
        }
    }

    #[test]
    fn loopback_maps_known_nodes_only() {
        let loopback = Loopback {
            nodes: BTreeMap::from([("alpha-shard-0-2".into(), "127.0.30.3".parse().unwrap())]),
        };
        assert_eq!(
            loopback.rpc_url(&node()).as_deref(),
            Some("http://127.0.30.3:8545")
        );
        assert_eq!(
            loopback.p2p_address(&node()).as_deref(),
            Some("127.0.30.3:7000")
        );
        let other = NodeRef {
            node: "alpha-shard-0-0".into(),
            ..node()
        };
        assert_eq!(loopback.rpc_url(&other), None);
    }
}
