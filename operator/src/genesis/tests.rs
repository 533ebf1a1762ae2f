//! Pure tests of the network genesis, parsed and checked as `trellis-node` does.

use super::*;
use crate::build::BuildOptions;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use trellis_crd::topology::{NetworkId, plan, plan_with_shards};
use trellis_crd::{ChainNetwork, ConsortiumMember, ShardsSpec};
use trellis_node_api::shard::ANY_SHARD;

const ADMIN_SEED: [u8; 32] = [200; 32];

/// A real ed25519 public key (hex) per seed byte: the beacon refuses non-points.
fn public_key(seed: u8) -> String {
    let key = ed25519_dalek::SigningKey::from_bytes(&[seed; 32]);
    trellis_node_types::to_hex(key.verifying_key().as_bytes())
}

struct Fixture {
    network: ChainNetwork,
    topology: Topology,
    public_keys: BTreeMap<String, String>,
    admin: String,
    options: BuildOptions,
}

impl Fixture {
    fn new(spec: ChainNetworkSpec) -> Self {
        let mut network = ChainNetwork::new("alpha", spec);
        network.metadata = ObjectMeta {
            name: Some("alpha".to_owned()),
            namespace: Some("tenant-a".to_owned()),
            uid: Some("uid-1".to_owned()),
            generation: Some(1),
            ..ObjectMeta::default()
        };
        let topology =
            provisioned(plan(&NetworkId::new("tenant-a", "alpha"), &network.spec).unwrap());
        let public_keys = topology
            .committees
            .iter()
            .flat_map(|c| c.nodes.iter())
            .map(|n| {
                (
                    n.name.clone(),
                    public_key(u8::try_from(n.key_slot).unwrap()),
                )
            })
            .collect();
        Self {
            network,
            topology,
            public_keys,
            admin: trellis_node_types::to_hex(
                ed25519_dalek::SigningKey::from_bytes(&ADMIN_SEED)
                    .verifying_key()
                    .as_bytes(),
            ),
            options: BuildOptions::default(),
        }
    }

    fn input(&self) -> BuildInput<'_> {
        BuildInput {
            network: &self.network,
            topology: &self.topology,
            members: &[],
            public_keys: &self.public_keys,
            admin_public_key: &self.admin,
            options: &self.options,
        }
    }

    fn genesis(&self) -> Genesis {
        let cm = config_map(&self.input()).unwrap();
        assert_eq!(cm.metadata.name.as_deref(), Some("alpha-genesis"));
        let data = cm.data.unwrap();
        assert_eq!(data.keys().collect::<Vec<_>>(), [ENTRY], "one entry");
        // Parsed exactly as trellis-node parses it (unknown fields refused, checks run).
        Genesis::from_json(&data[ENTRY]).unwrap()
    }
}

fn public(shards: i32) -> ChainNetworkSpec {
    let mut spec =
        ChainNetworkSpec::new(NetworkMode::Public, "registry.example/trellis-node:1.2.3");
    spec.shards = ShardsSpec {
        count: shards,
        min: 1,
        max: 8,
        ..ShardsSpec::default()
    };
    spec
}

fn consortium(shards: i32) -> ChainNetworkSpec {
    let mut spec = public(shards);
    spec.mode = NetworkMode::Consortium;
    spec.members = vec![
        ConsortiumMember {
            name: "org-a".to_owned(),
            admin_public_key: "aa".repeat(32),
            nodes: 2,
        },
        ConsortiumMember {
            name: "org-b".to_owned(),
            admin_public_key: "bb".repeat(32),
            nodes: 2,
        },
    ];
    spec
}

#[test]
fn a_public_network_gets_one_sharded_genesis_the_beacon_accepts() {
    let f = Fixture::new(public(2));
    let genesis = f.genesis();
    assert_eq!(genesis.chain_id, "alpha.tenant-a");
    assert_eq!(genesis.epoch_length, 100);
    let sharding = genesis.sharding.clone().unwrap();
    assert_eq!(sharding.mode, ShardingMode::Public);
    assert_eq!(sharding.admin_key, f.admin);
    assert_eq!(sharding.max_shards, 8, "spec.shards.max");
    assert_eq!(sharding.shard_count, 2);
    // The beacon StatefulSet's validators, at their stable DNS names.
    assert_eq!(sharding.beacon.len(), 4);
    assert_eq!(sharding.beacon[2].node_key, f.public_keys["alpha-beacon-2"]);
    assert_eq!(
        sharding.beacon[2].p2p_address,
        "alpha-beacon-2.alpha-beacon.tenant-a.svc.cluster.local:7000"
    );
    assert_eq!(
        sharding.beacon[2].rpc_address,
        "alpha-beacon-2.alpha-beacon.tenant-a.svc.cluster.local:8545"
    );
    // Each shard StatefulSet's validators, bound to their shard (fixed slots).
    assert_eq!(sharding.validators.len(), 8);
    for v in &sharding.validators {
        let pod = f
            .public_keys
            .iter()
            .find(|(_, k)| **k == v.node_key)
            .map(|(pod, _)| pod.clone())
            .unwrap();
        assert!(
            pod.starts_with(&format!("alpha-shard-{}-", v.shard)),
            "{pod}"
        );
        assert!(
            v.p2p_address
                .starts_with(&format!("{pod}.alpha-shard-{}.", v.shard))
        );
        assert_ne!(v.shard, ANY_SHARD);
        assert_eq!(v.member, None);
    }
    // The node derives the same committees from it: every shard has its 4 validators.
    let beacon = BeaconState::genesis(
        BeaconGenesis::from_contract(
            &genesis.chain_id,
            genesis.epoch_length,
            &genesis.members,
            &sharding,
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(beacon.shard_count(), 2);
    for shard in 0..2 {
        assert_eq!(beacon.committee(shard).unwrap().len(), 4);
    }
    assert_eq!(shard_count(&genesis), 2);
    // Governance members: the beacon validators with the network admin key.
    assert_eq!(genesis.members.len(), 4);
    assert!(genesis.members.iter().all(|m| m.admin_key == f.admin));
}

#[test]
fn shards_added_later_are_not_in_genesis() {
    // The network started with 2 shards; a topology of 3 (a scale-out) builds a genesis
    // of 3, which is why the controller writes genesis once and never again.
    let f = Fixture::new(public(2));
    let mut later = Fixture::new(public(3));
    later.network.spec.shards.count = 2;
    later.topology = provisioned(
        plan_with_shards(&NetworkId::new("tenant-a", "alpha"), &later.network.spec, 3).unwrap(),
    );
    assert_eq!(shard_count(&later.genesis()), 3);
    assert_eq!(shard_count(&f.genesis()), 2);
    assert_ne!(f.genesis(), later.genesis());
}

#[test]
fn a_genesis_the_node_would_refuse_is_a_build_error() {
    // Not hex: the contract's check.
    let f = Fixture::new(public(1));
    let mut input = f.input();
    input.admin_public_key = "not-hex";
    let err = config_map(&input).unwrap_err();
    assert!(
        matches!(&err, BuildError::Render("genesis", m) if m.contains("malformed key")),
        "{err}"
    );
    // Hex, but not an ed25519 point: only the beacon's own derivation sees it.
    let mut f = Fixture::new(public(1));
    let bad = (0u8..=255)
        .map(|b| format!("{b:02x}").repeat(32))
        .find(|k| {
            let bytes: [u8; 32] = trellis_node_types::from_hex(k).unwrap().try_into().unwrap();
            ed25519_dalek::VerifyingKey::from_bytes(&bytes).is_err()
        })
        .unwrap();
    f.public_keys
        .insert("alpha-shard-0-1".to_owned(), bad.clone());
    let err = config_map(&f.input()).unwrap_err();
    assert!(
        matches!(&err, BuildError::Render("genesis", m) if m.contains(&bad)),
        "{err}"
    );
    // A missing key names the pod.
    let mut f = Fixture::new(public(1));
    f.public_keys.remove("alpha-beacon-0");
    assert_eq!(
        config_map(&f.input()),
        Err(BuildError::MissingKey("alpha-beacon-0".to_owned()))
    );
}

#[test]
fn a_consortium_runs_unsharded_without_a_beacon() {
    let f = Fixture::new(consortium(1));
    assert!(f.topology.beacon().is_none(), "no beacon committee");
    let genesis = f.genesis();
    assert_eq!(genesis.sharding, None, "unsharded: governance runs");
    assert_eq!(shard_count(&genesis), 1);
    // Shard 0's validators, each speaking with its organisation's admin key.
    let committee = f.topology.shards().next().unwrap();
    let names: Vec<&str> = genesis.members.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(
        names,
        committee
            .nodes
            .iter()
            .map(|n| n.name.as_str())
            .collect::<Vec<_>>()
    );
    for (member, node) in genesis.members.iter().zip(&committee.nodes) {
        let key = match node.member.as_deref() {
            Some("org-a") => "aa",
            Some("org-b") => "bb",
            other => panic!("{other:?}"),
        };
        assert_eq!(member.admin_key, key.repeat(32), "{}", member.name);
        assert_eq!(member.node_key, f.public_keys[&node.name]);
    }
}

#[test]
fn consortium_specs_the_node_cannot_run_are_named() {
    assert_eq!(unsupported(&consortium(1)), None);
    assert_eq!(unsupported(&public(3)), None);
    let err = unsupported(&consortium(2)).unwrap();
    assert_eq!(err.0[0].field, "spec.shards.count");
    assert!(err.to_string().contains("runs one shard"), "{err}");
    let mut autoscaled = consortium(1);
    autoscaled.autoscaling = Some(trellis_crd::AutoscalingSpec {
        enabled: true,
        target_tx_per_second_per_shard: Some(10),
        target_mempool_depth: None,
        cooldown_seconds: 600,
        stabilization_window_seconds: 300,
    });
    assert_eq!(
        unsupported(&autoscaled).unwrap().0[0].field,
        "spec.autoscaling.enabled"
    );
}

#[test]
fn stored_genesis_is_read_and_legacy_maps_are_refused() {
    let f = Fixture::new(public(2));
    let cm = config_map(&f.input()).unwrap();
    assert_eq!(stored(&cm).unwrap(), f.genesis());
    let mut legacy = cm.clone();
    legacy.data = Some(BTreeMap::from([(
        "alpha-shard-0.json".to_owned(),
        "{}".to_owned(),
    )]));
    let err = stored(&legacy).unwrap_err().to_string();
    assert!(err.contains("recreate the network"), "{err}");
    let mut garbled = cm;
    garbled.data = Some(BTreeMap::from([(ENTRY.to_owned(), "{".to_owned())]));
    let err = stored(&garbled).unwrap_err().to_string();
    assert!(err.contains("alpha-genesis entry genesis.json"), "{err}");
}
