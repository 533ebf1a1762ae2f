//! The local provisioner's durable state: one `network.json` per network, written
//! atomically (temporary file, fsync, rename, fsync of the directory) before any process
//! is started for it, so a console that dies at any moment restarts with either the old
//! or the new record, never half of one.
//!
//! Layout under `<data-dir>/local/`:
//!
//! ```text
//! networks/<network-id>/network.json          the record below
//! networks/<network-id>/treasury.json         key file of the funded genesis account
//!                                             (sharded: the one in shard 0's tables)
//! networks/<network-id>/treasury-shard-<n>.json  sharded: shard n's funded account
//! networks/<network-id>/admin.json            sharded: the network admin key file
//!                                             (its admin key signs SetShardCount)
//! networks/<network-id>/<chain-id>.genesis.json
//! networks/<network-id>/nodes/<node>/keys.json, node.toml, data/, node.log, process.json
//! retained/<network-id>/                      a deleted network's ledger, when retained
//! ```

use std::io::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use trellis_node_api::Role;
use uuid::Uuid;

use super::process::ProcessId;

/// One validator as provisioned.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub name: String,
    pub member: Option<String>,
    pub address: Ipv4Addr,
    pub node_public_key: String,
    /// The key that signs this validator's governance (its organisation's, in a
    /// consortium).
    pub admin_public_key: String,
    /// In the chain's genesis validator set. A node added later (a consortium member
    /// admitted after genesis) runs only once the chain's governance has admitted it
    /// (`admitted`: its admission executed on chain).
    pub in_genesis: bool,
    #[serde(default)]
    pub admitted: bool,
    /// Sharded networks: a validator of a shard added after genesis, or of the
    /// validator pool, whose `RegisterValidator` the beacon has accepted (a pool
    /// validator leaving: cleared once its `DeregisterValidator` is accepted).
    #[serde(default)]
    pub registered: bool,
    /// Its consortium member was removed: it runs until the chain's governance has
    /// removed it too (`removed`), so the chain never loses a vote it still counts. A
    /// pool validator scaled away: it runs until the beacon's map leaves it out
    /// (`removed`), so no shard loses a vote it still counts.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub leaving: bool,
    /// Out of the chain (or never admitted to it) after its member's removal: it never
    /// runs again; its directory is kept with the network's data.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub removed: bool,
}

impl NodeRecord {
    /// Whether the chain accepts this node as a validator.
    pub fn is_validator(&self) -> bool {
        (self.in_genesis || self.admitted) && !self.removed
    }

    /// A later member's node still waiting for its admission on chain.
    pub fn awaits_admission(&self) -> bool {
        !self.in_genesis && !self.admitted && !self.removed && !self.leaving
    }
}

/// One committee: a whole unsharded chain, or the beacon or a shard of a sharded network.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainRecord {
    /// The shard slot (0 for an unsharded chain and for the beacon, `ANY_SHARD` for the
    /// validator pool).
    pub shard: u16,
    pub chain_id: String,
    /// The committee in a sharded network; `None`: an unsharded chain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    pub nodes: Vec<NodeRecord>,
    /// A shard planned away (scale-in) whose tables the beacon still assigns to it: its
    /// nodes keep running until the beacon's map no longer does, then it is retired.
    #[serde(default)]
    pub draining: bool,
    /// A shard planned away (scale-in): its nodes are stopped, keys and ledger kept, and
    /// a later scale-out brings the same committee back.
    #[serde(default)]
    pub retired: bool,
}

impl ChainRecord {
    pub fn is_beacon(&self) -> bool {
        self.role == Some(Role::Beacon)
    }

    /// The validator pool: validators in no genesis and no fixed shard, which the
    /// beacon places in a shard every epoch.
    pub fn is_pool(&self) -> bool {
        self.role == Some(Role::AnyShard)
    }

    /// The role its nodes' configs carry (an unsharded chain: shard 0).
    pub fn node_role(&self) -> Role {
        self.role.unwrap_or(Role::Shard { shard: 0 })
    }

    /// Orders committees: the beacon first, then shards by slot, then the pool.
    pub fn key(&self) -> (u8, u16) {
        committee_key(self.role, self.shard)
    }

    /// Whether `node` should run. Every node of a sharded network's committee runs (a
    /// validator of a shard added later waits for the beacon to name its shard) until
    /// it is `removed` (a pool validator the beacon left out); a node of an unsharded
    /// chain runs once it is a validator.
    pub fn runs(&self, node: &NodeRecord) -> bool {
        (self.role.is_some() && !node.removed) || node.is_validator()
    }
}

/// See [`ChainRecord::key`].
pub fn committee_key(role: Option<Role>, shard: u16) -> (u8, u16) {
    match role {
        Some(Role::Beacon) => (0, 0),
        Some(Role::AnyShard) => (2, 0),
        _ => (1, shard),
    }
}

/// A sharded network's beacon-side desired state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardingRecord {
    /// The shard count the console asks the beacon for.
    pub shard_count: u16,
    pub max_shards: u16,
    /// The network admin key (`admin.json`'s admin key) that signs `SetShardCount`.
    pub admin_public_key: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkRecord {
    pub network_id: Uuid,
    pub tenant_id: Uuid,
    pub tenant_slug: String,
    pub name: String,
    /// The console generation this record realises.
    pub generation: i64,
    pub paused: bool,
    pub stopped: bool,
    /// Set (durably) before a delete stops anything, so a console that dies mid-delete
    /// never restarts the network's nodes.
    #[serde(default)]
    pub deleting: bool,
    pub epoch_length: u64,
    /// Public key of the account funded at genesis on every chain of the network.
    pub treasury_account: String,
    pub note: Option<String>,
    pub chains: Vec<ChainRecord>,
    /// `Some` for a sharded network (a public network): its chains are the beacon
    /// committee and the shards' committees on one chain id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sharding: Option<ShardingRecord>,
}

impl NetworkRecord {
    pub fn nodes(&self) -> impl Iterator<Item = (&ChainRecord, &NodeRecord)> {
        self.chains
            .iter()
            .flat_map(|c| c.nodes.iter().map(move |n| (c, n)))
    }
}

/// Where everything lives.
#[derive(Clone, Debug)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    pub fn new(root: PathBuf) -> Self {
        Self { root }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn networks(&self) -> PathBuf {
        self.root.join("networks")
    }

    pub fn network(&self, id: Uuid) -> PathBuf {
        self.networks().join(id.to_string())
    }

    pub fn record(&self, id: Uuid) -> PathBuf {
        self.network(id).join("network.json")
    }

    pub fn treasury(&self, id: Uuid) -> PathBuf {
        self.network(id).join("treasury.json")
    }

    /// The key file of the account funded in shard `shard`'s genesis tables (sharded
    /// networks; shard 0's is [`Layout::treasury`]).
    pub fn shard_treasury(&self, id: Uuid, shard: u16) -> PathBuf {
        if shard == 0 {
            self.treasury(id)
        } else {
            self.network(id)
                .join(format!("treasury-shard-{shard}.json"))
        }
    }

    /// The network admin key file of a sharded network.
    pub fn admin(&self, id: Uuid) -> PathBuf {
        self.network(id).join("admin.json")
    }

    /// The genesis `sharding` section as given to `trellis-node genesis --sharding`.
    pub fn sharding(&self, id: Uuid) -> PathBuf {
        self.network(id).join("sharding.json")
    }

    pub fn genesis(&self, id: Uuid, chain_id: &str) -> PathBuf {
        self.network(id).join(format!("{chain_id}.genesis.json"))
    }

    pub fn node(&self, id: Uuid, node: &str) -> PathBuf {
        self.network(id).join("nodes").join(node)
    }

    pub fn config(&self, id: Uuid, node: &str) -> PathBuf {
        self.node(id, node).join("node.toml")
    }

    pub fn process(&self, id: Uuid, node: &str) -> PathBuf {
        self.node(id, node).join("process.json")
    }

    pub fn retained(&self, id: Uuid) -> PathBuf {
        self.root.join("retained").join(id.to_string())
    }

    /// Every network record on disk. A record that does not parse is reported, not
    /// skipped silently: its nodes would otherwise be orphaned.
    pub fn load_all(&self) -> std::io::Result<(Vec<NetworkRecord>, Vec<String>)> {
        let mut records = Vec::new();
        let mut problems = Vec::new();
        let dir = self.networks();
        std::fs::create_dir_all(&dir)?;
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path().join("network.json");
            match std::fs::read(&path) {
                Ok(bytes) => match serde_json::from_slice::<NetworkRecord>(&bytes) {
                    Ok(record) => records.push(record),
                    Err(e) => problems.push(format!("{}: {e}", path.display())),
                },
                // A directory without a record: apply died before recording; the
                // console re-applies the network and reuses what was prepared.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => problems.push(format!("{}: {e}", path.display())),
            }
        }
        Ok((records, problems))
    }

    pub fn save(&self, record: &NetworkRecord) -> std::io::Result<()> {
        let bytes = serde_json::to_vec_pretty(record).map_err(std::io::Error::other)?;
        write_atomically(&self.record(record.network_id), &bytes)
    }

    pub fn save_process(&self, id: Uuid, node: &str, process: &ProcessId) -> std::io::Result<()> {
        let bytes = serde_json::to_vec(process).map_err(std::io::Error::other)?;
        write_atomically(&self.process(id, node), &bytes)
    }

    pub fn load_process(&self, id: Uuid, node: &str) -> Option<ProcessId> {
        let bytes = std::fs::read(self.process(id, node)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }
}

/// Replaces `path` with `bytes` so that a crash leaves the old or the new content.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| std::io::Error::other(format!("{} has no directory", path.display())))?;
    std::fs::create_dir_all(dir)?;
    let temporary = path.with_extension("tmp");
    {
        let mut file = std::fs::File::create(&temporary)?;
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    std::fs::rename(&temporary, path)?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_a_corrupt_one_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path().to_path_buf());
        let record = NetworkRecord {
            network_id: Uuid::now_v7(),
            tenant_id: Uuid::now_v7(),
            tenant_slug: "acme".into(),
            name: "n".into(),
            generation: 3,
            paused: false,
            stopped: false,
            deleting: false,
            epoch_length: 100,
            treasury_account: "ab".repeat(32),
            note: None,
            chains: vec![ChainRecord {
                shard: 0,
                chain_id: "n-s0".into(),
                nodes: vec![NodeRecord {
                    name: "n-0".into(),
                    member: None,
                    address: Ipv4Addr::new(127, 0, 2, 1),
                    node_public_key: "cd".repeat(32),
                    admin_public_key: "ef".repeat(32),
                    in_genesis: true,
                    admitted: false,
                    registered: false,
                    leaving: false,
                    removed: false,
                }],
                role: None,
                draining: false,
                retired: false,
            }],
            sharding: None,
        };
        layout.save(&record).unwrap();
        layout.save(&record).unwrap(); // replacing works and leaves no temporary file
        assert!(
            !layout
                .record(record.network_id)
                .with_extension("tmp")
                .exists()
        );
        let broken = Uuid::now_v7();
        std::fs::create_dir_all(layout.network(broken)).unwrap();
        std::fs::write(layout.record(broken), b"{\"network_id\":").unwrap();
        let (records, problems) = layout.load_all().unwrap();
        assert_eq!(records, [record]);
        assert_eq!(problems.len(), 1);
    }
}
