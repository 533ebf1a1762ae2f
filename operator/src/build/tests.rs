//! Pure tests of every object the build step makes.

use super::*;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use trellis_crd::topology::{NetworkId, plan};
use trellis_crd::{ChainNetworkSpec, ConsortiumMember, ShardsSpec};

struct Fixture {
    network: ChainNetwork,
    topology: Topology,
    public_keys: BTreeMap<String, String>,
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
        let topology = plan(&NetworkId::new("tenant-a", "alpha"), &network.spec).unwrap();
        let public_keys = topology
            .committees
            .iter()
            .flat_map(|c| c.nodes.iter())
            .map(|n| (n.name.clone(), format!("{:064x}", n.key_slot)))
            .collect();
        Self {
            network,
            topology,
            public_keys,
            options: BuildOptions::default(),
        }
    }

    fn input(&self) -> BuildInput<'_> {
        BuildInput {
            network: &self.network,
            topology: &self.topology,
            members: &[],
            public_keys: &self.public_keys,
            admin_public_key: ADMIN,
            options: &self.options,
        }
    }

    fn build(&self) -> Children {
        build(&self.input()).unwrap()
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

fn names<K: Resource>(objects: &[K]) -> Vec<String> {
    objects
        .iter()
        .map(|o| o.meta().name.clone().unwrap())
        .collect()
}

fn sts<'a>(children: &'a Children, name: &str) -> &'a StatefulSet {
    children
        .stateful_sets
        .iter()
        .find(|s| s.metadata.name.as_deref() == Some(name))
        .unwrap()
}

#[test]
fn one_set_of_objects_per_committee() {
    let children = Fixture::new(public(2)).build();
    assert_eq!(
        names(&children.stateful_sets),
        ["alpha-beacon", "alpha-shard-0", "alpha-shard-1"]
    );
    assert_eq!(
        names(&children.services),
        [
            "alpha-beacon",
            "alpha-shard-0",
            "alpha-shard-1",
            "alpha-rpc"
        ]
    );
    assert_eq!(
        names(&children.config_maps),
        [
            "alpha-beacon-config",
            "alpha-shard-0-config",
            "alpha-shard-1-config"
        ]
    );
    assert_eq!(
        names(&children.pod_disruption_budgets),
        ["alpha-beacon", "alpha-shard-0", "alpha-shard-1"]
    );
    assert_eq!(names(&children.network_policies), ["alpha-nodes"]);
}

#[test]
fn every_child_has_labels_namespace_and_a_controller_owner() {
    let children = Fixture::new(public(1)).build();
    let mut metas: Vec<&ObjectMeta> = Vec::new();
    metas.extend(children.services.iter().map(|o| &o.metadata));
    metas.extend(children.config_maps.iter().map(|o| &o.metadata));
    metas.extend(children.pod_disruption_budgets.iter().map(|o| &o.metadata));
    metas.extend(children.network_policies.iter().map(|o| &o.metadata));
    metas.extend(children.stateful_sets.iter().map(|o| &o.metadata));
    assert_eq!(metas.len(), 3 + 2 + 2 + 1 + 2);
    for meta in metas {
        let name = meta.name.as_deref().unwrap();
        assert_eq!(meta.namespace.as_deref(), Some("tenant-a"), "{name}");
        let l = meta.labels.as_ref().unwrap();
        assert_eq!(l[labels::NAME], "trellis-node", "{name}");
        assert_eq!(l[labels::INSTANCE], "alpha", "{name}");
        assert_eq!(l[labels::PART_OF], "trellis", "{name}");
        assert_eq!(l[labels::MANAGED_BY], "trellis-operator", "{name}");
        assert!(l.contains_key(labels::COMPONENT), "{name}");
        let owners = meta.owner_references.as_ref().unwrap();
        assert_eq!(owners.len(), 1);
        assert_eq!(owners[0].uid, "uid-1");
        assert_eq!(owners[0].kind, "ChainNetwork");
        assert_eq!(owners[0].api_version, "trellis.dev/v1alpha1");
        assert_eq!(owners[0].controller, Some(true));
    }
    // The network controller's watch maps each StatefulSet back to the network; one
    // owned by something else maps to nothing.
    for set in &children.stateful_sets {
        assert_eq!(
            crate::controller::stateful_set_network(set),
            Some(kube::runtime::reflector::ObjectRef::new("alpha").within("tenant-a"))
        );
    }
    let mut foreign = children.stateful_sets[0].clone();
    if let Some(owners) = foreign.metadata.owner_references.as_mut() {
        owners[0].kind = "Deployment".to_owned();
        owners[0].api_version = "apps/v1".to_owned();
    }
    assert_eq!(crate::controller::stateful_set_network(&foreign), None);
}

#[test]
fn build_needs_a_uid_for_owner_references() {
    let mut f = Fixture::new(public(1));
    f.network.metadata.uid = None;
    assert_eq!(build(&f.input()), Err(BuildError::MissingMetadata("uid")));
}

#[test]
fn statefulset_shape() {
    let children = Fixture::new(public(1)).build();
    let set = sts(&children, "alpha-shard-0");
    let spec = set.spec.as_ref().unwrap();
    assert_eq!(spec.replicas, Some(4));
    assert_eq!(spec.service_name.as_deref(), Some("alpha-shard-0"));
    assert_eq!(spec.pod_management_policy.as_deref(), Some("Parallel"));
    let selector = spec.selector.match_labels.as_ref().unwrap();
    assert_eq!(
        selector,
        &BTreeMap::from([
            (labels::NAME.to_owned(), "trellis-node".to_owned()),
            (labels::INSTANCE.to_owned(), "alpha".to_owned()),
            (labels::COMMITTEE.to_owned(), "alpha-shard-0".to_owned()),
        ])
    );
    let template = &spec.template;
    let pod_labels = template.metadata.as_ref().unwrap().labels.as_ref().unwrap();
    for (k, v) in selector {
        assert_eq!(pod_labels.get(k), Some(v), "pod labels match the selector");
    }
    assert_eq!(pod_labels[labels::SHARD], "0");
    assert_eq!(pod_labels[labels::COMPONENT], "shard");
    assert_eq!(pod_labels[labels::VERSION], "1.2.3");
    let pod = template.spec.as_ref().unwrap();
    assert_eq!(pod.automount_service_account_token, Some(false));
    let c = &pod.containers[0];
    assert_eq!(
        c.image.as_deref(),
        Some("registry.example/trellis-node:1.2.3")
    );
    assert_eq!(
        c.args.as_ref().unwrap(),
        &["run", "--config", "/etc/trellis/config/node.toml"]
    );
    let ports: Vec<_> = c
        .ports
        .as_ref()
        .unwrap()
        .iter()
        .map(|p| (p.name.clone().unwrap(), p.container_port))
        .collect();
    assert_eq!(ports, [("p2p".to_owned(), 7000), ("rpc".to_owned(), 8545)]);
    let path = |p: &Option<Probe>| {
        p.as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap()
            .path
            .clone()
            .unwrap()
    };
    assert_eq!(path(&c.readiness_probe), "/readyz");
    assert_eq!(path(&c.liveness_probe), "/healthz");
    assert_eq!(path(&c.startup_probe), "/healthz");
    let sc = c.security_context.as_ref().unwrap();
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(
        pod.security_context.as_ref().unwrap().run_as_non_root,
        Some(true)
    );
    // The pod mounts only its own key, by pod name.
    let key_mount = c
        .volume_mounts
        .as_ref()
        .unwrap()
        .iter()
        .find(|m| m.name == "keys")
        .unwrap();
    assert_eq!(key_mount.mount_path, KEY_FILE);
    assert_eq!(key_mount.sub_path_expr.as_deref(), Some("$(POD_NAME).key"));
    assert!(c.env.as_ref().unwrap().iter().any(|e| e.name == "POD_NAME"));
    let volumes = pod.volumes.as_ref().unwrap();
    let key_volume = volumes.iter().find(|v| v.name == "keys").unwrap();
    let secret = key_volume.secret.as_ref().unwrap();
    assert_eq!(secret.secret_name.as_deref(), Some("alpha-shard-0-keys"));
    assert_eq!(secret.default_mode, Some(0o400));
    let genesis = volumes.iter().find(|v| v.name == "genesis").unwrap();
    assert_eq!(genesis.config_map.as_ref().unwrap().name, "alpha-genesis");
    let config = volumes.iter().find(|v| v.name == "config").unwrap();
    assert_eq!(
        config.config_map.as_ref().unwrap().name,
        "alpha-shard-0-config"
    );
    // Ledger volume.
    let claims = spec.volume_claim_templates.as_ref().unwrap();
    assert_eq!(claims[0].metadata.name.as_deref(), Some(LEDGER_VOLUME));
    let requests = claims[0]
        .spec
        .as_ref()
        .unwrap()
        .resources
        .as_ref()
        .unwrap()
        .requests
        .as_ref()
        .unwrap();
    assert_eq!(requests["storage"].0, "10Gi");
}

#[test]
fn ledger_retention_follows_the_policy() {
    let retained = Fixture::new(public(1)).build();
    let policy = |c: &Children| {
        sts(c, "alpha-beacon")
            .spec
            .as_ref()
            .unwrap()
            .persistent_volume_claim_retention_policy
            .clone()
            .unwrap()
    };
    let p = policy(&retained);
    assert_eq!(p.when_deleted.as_deref(), Some("Retain"));
    assert_eq!(p.when_scaled.as_deref(), Some("Retain"));
    let mut spec = public(1);
    spec.retain_ledger_on_delete = false;
    let deleted = Fixture::new(spec).build();
    let p = policy(&deleted);
    assert_eq!(p.when_deleted.as_deref(), Some("Delete"));
    assert_eq!(
        p.when_scaled.as_deref(),
        Some("Retain"),
        "scale-down never deletes a ledger"
    );
}

#[test]
fn stopped_scales_every_committee_to_zero() {
    let mut spec = public(2);
    spec.stopped = true;
    let children = Fixture::new(spec).build();
    for set in &children.stateful_sets {
        assert_eq!(set.spec.as_ref().unwrap().replicas, Some(0));
        // Claims are still declared: data stays bound to the same pods when restarted.
        assert!(set.spec.as_ref().unwrap().volume_claim_templates.is_some());
    }
}

#[test]
fn pdb_allows_at_most_f_unavailable() {
    for (validators, f) in [(4, 1), (7, 2), (10, 3)] {
        let mut spec = public(1);
        spec.validators_per_shard = validators;
        spec.beacon.validators = 4;
        let children = Fixture::new(spec).build();
        let pdb = children
            .pod_disruption_budgets
            .iter()
            .find(|p| p.metadata.name.as_deref() == Some("alpha-shard-0"))
            .unwrap();
        let pspec = pdb.spec.as_ref().unwrap();
        assert_eq!(pspec.max_unavailable, Some(IntOrString::Int(f)));
        assert_eq!(pspec.min_available, None);
        assert_eq!(
            pspec
                .selector
                .as_ref()
                .unwrap()
                .match_labels
                .as_ref()
                .unwrap()[labels::COMMITTEE],
            "alpha-shard-0"
        );
    }
}

#[test]
fn admitted_members_count_in_shard_zeros_pdb() {
    let mut spec = public(1);
    spec.mode = NetworkMode::Consortium;
    spec.members = vec![ConsortiumMember {
        name: "org-a".to_owned(),
        admin_public_key: "aa".repeat(32),
        nodes: 4,
    }];
    let f = Fixture::new(spec);
    let members = [
        MemberValidators {
            namespace: "tenant-a".to_owned(),
            committee: "alpha-m-org-b".to_owned(),
            validators: 2,
            ready: 2,
        },
        MemberValidators {
            namespace: "tenant-c".to_owned(),
            committee: "alpha-m-org-c".to_owned(),
            validators: 1,
            ready: 0,
        },
    ];
    let mut input = f.input();
    input.members = &members;
    let children = build(&input).unwrap();
    let pdb = children
        .pod_disruption_budgets
        .iter()
        .find(|p| p.metadata.name.as_deref() == Some("alpha-shard-0"))
        .unwrap();
    let pspec = pdb.spec.as_ref().unwrap();
    // 4 + 2 + 1 = 7 validators vote: f = 2.
    assert_eq!(pspec.max_unavailable, Some(IntOrString::Int(2)));
    let selector = pspec.selector.as_ref().unwrap();
    assert_eq!(
        selector.match_labels.as_ref().unwrap()[labels::INSTANCE],
        "alpha"
    );
    let expression = &selector.match_expressions.as_ref().unwrap()[0];
    assert_eq!(expression.key, labels::COMMITTEE);
    assert_eq!(expression.operator, "In");
    // The member in this namespace is selected; the one elsewhere has its own PDB.
    assert_eq!(
        expression.values.as_deref().unwrap(),
        ["alpha-shard-0", "alpha-m-org-b"]
    );
    let member = crate::member::nodes::member_committee("alpha", "org-c", 1);
    let other = member_pod_disruption_budget(&f.network, &member).unwrap();
    assert_eq!(
        other.spec.unwrap().max_unavailable,
        Some(IntOrString::Int(0))
    );
    // Without members nothing changes.
    let plain = Fixture::new(public(1)).build();
    let pdb = &plain.pod_disruption_budgets[1];
    assert!(
        pdb.spec
            .as_ref()
            .unwrap()
            .selector
            .as_ref()
            .unwrap()
            .match_expressions
            .is_none()
    );
}

#[test]
fn headless_services_publish_unready_peers() {
    let children = Fixture::new(public(1)).build();
    let svc = &children.services[0];
    let spec = svc.spec.as_ref().unwrap();
    assert_eq!(spec.cluster_ip.as_deref(), Some("None"));
    assert_eq!(spec.publish_not_ready_addresses, Some(true));
    assert_eq!(
        spec.selector.as_ref().unwrap()[labels::COMMITTEE],
        "alpha-beacon"
    );
    let ports: Vec<_> = spec
        .ports
        .as_ref()
        .unwrap()
        .iter()
        .map(|p| p.port)
        .collect();
    assert_eq!(ports, [P2P_PORT, RPC_PORT]);
}

#[test]
fn rpc_service_selects_shard_validators() {
    let children = Fixture::new(public(2)).build();
    let rpc = children.services.last().unwrap();
    let spec = rpc.spec.as_ref().unwrap();
    assert_eq!(spec.cluster_ip, None);
    let selector = spec.selector.as_ref().unwrap();
    assert_eq!(selector[labels::COMPONENT], "shard");
    assert_eq!(selector[labels::INSTANCE], "alpha");
    assert_eq!(spec.ports.as_ref().unwrap().len(), 1);
}

#[test]
fn node_config_lists_only_its_committee_as_bootstrap_peers() {
    let f = Fixture::new(public(2));
    let children = f.build();
    let text = &children.config_maps[1].data.as_ref().unwrap()["node.toml"];
    let config: toml::Value = toml::from_str(text).unwrap();
    assert_eq!(config["chain_id"].as_str(), Some("alpha.tenant-a"));
    assert_eq!(config["role"]["kind"].as_str(), Some("shard"));
    assert_eq!(config["role"]["shard"].as_integer(), Some(0));
    assert_eq!(config["key_file"].as_str(), Some(KEY_FILE));
    assert_eq!(
        config["genesis_file"].as_str(),
        Some("/etc/trellis/genesis/genesis.json")
    );
    let peers = config["bootstrap_peers"].as_array().unwrap();
    assert_eq!(peers.len(), 4, "the committee's own validators");
    assert_eq!(
        peers[0]["address"].as_str(),
        Some("alpha-shard-0-0.alpha-shard-0.tenant-a.svc.cluster.local:7000")
    );
    assert_eq!(
        peers[0]["public_key"].as_str(),
        Some(f.public_keys["alpha-shard-0-0"].as_str())
    );
    assert!(
        !text.contains("alpha-shard-1-0") && !text.contains("alpha-beacon-0"),
        "no peers of other committees"
    );
    let beacon_text = &children.config_maps[0].data.as_ref().unwrap()["node.toml"];
    let beacon: toml::Value = toml::from_str(beacon_text).unwrap();
    assert_eq!(beacon["role"]["kind"].as_str(), Some("beacon"));
    assert_eq!(beacon["bootstrap_peers"].as_array().unwrap().len(), 4);
}

#[test]
fn config_change_changes_the_pod_template_hash() {
    let f = Fixture::new(public(1));
    let a = f.build();
    let mut g = Fixture::new(public(1));
    g.public_keys
        .insert("alpha-shard-0-0".to_owned(), "ff".repeat(32));
    let b = g.build();
    let hash = |c: &Children, n: &str| {
        sts(c, n)
            .spec
            .as_ref()
            .unwrap()
            .template
            .metadata
            .as_ref()
            .unwrap()
            .annotations
            .as_ref()
            .unwrap()[CONFIG_HASH_ANNOTATION]
            .clone()
    };
    assert_ne!(hash(&a, "alpha-shard-0"), hash(&b, "alpha-shard-0"));
    assert_eq!(
        hash(&a, "alpha-shard-0"),
        hash(&f.build(), "alpha-shard-0"),
        "deterministic"
    );
}

#[test]
fn missing_public_key_is_an_error() {
    let mut f = Fixture::new(public(1));
    f.public_keys.remove("alpha-shard-0-3");
    assert_eq!(
        build(&f.input()),
        Err(BuildError::MissingKey("alpha-shard-0-3".to_owned()))
    );
}

const ADMIN: &str = "adadadadadadadadadadadadadadadadadadadadadadadadadadadadadadadad";

#[test]
fn network_policy_by_mode() {
    let public_policy = Fixture::new(public(1)).build().network_policies.remove(0);
    let rules = public_policy
        .spec
        .as_ref()
        .unwrap()
        .ingress
        .clone()
        .unwrap();
    assert_eq!(rules.len(), 2);
    assert_eq!(rules[0].from, None, "public p2p is open");
    assert_eq!(
        rules[0].ports.as_ref().unwrap()[0].port,
        Some(IntOrString::Int(P2P_PORT))
    );
    assert_eq!(
        rules[1].ports.as_ref().unwrap()[0].port,
        Some(IntOrString::Int(RPC_PORT))
    );

    let mut spec = public(1);
    spec.mode = NetworkMode::Consortium;
    spec.members = vec![ConsortiumMember {
        name: "org-a".to_owned(),
        admin_public_key: "aa".repeat(32),
        nodes: 1,
    }];
    let consortium = Fixture::new(spec).build().network_policies.remove(0);
    let rules = consortium.spec.as_ref().unwrap().ingress.clone().unwrap();
    let from = rules[0].from.as_ref().unwrap();
    assert_eq!(from.len(), 1);
    assert_eq!(
        from[0]
            .pod_selector
            .as_ref()
            .unwrap()
            .match_labels
            .as_ref()
            .unwrap()[labels::INSTANCE],
        "alpha"
    );
    assert!(
        from[0].namespace_selector.is_some(),
        "members may run in other namespaces"
    );
}

#[test]
fn image_tags_become_version_labels_only_when_valid() {
    assert_eq!(image_tag("trellis-node:1.2.3").as_deref(), Some("1.2.3"));
    assert_eq!(
        image_tag("host:5000/trellis-node:v2").as_deref(),
        Some("v2")
    );
    assert_eq!(image_tag("host:5000/trellis-node"), None);
    assert_eq!(image_tag("trellis-node@sha256:abc"), None);
    assert_eq!(image_tag("trellis-node:-bad"), None);
}

#[test]
fn stable_hash_is_fnv1a() {
    assert_eq!(stable_hash(""), "cbf29ce484222325");
    assert_eq!(stable_hash("a"), "af63dc4c8601ec8c");
}

#[test]
fn public_keys_by_node_from_secret_entries() {
    let f = Fixture::new(public(1));
    let by_entry: BTreeMap<String, String> = f
        .public_keys
        .iter()
        .map(|(n, k)| (keys::node_entry(n), k.clone()))
        .collect();
    assert_eq!(
        node_public_keys(&f.topology, &by_entry).unwrap(),
        f.public_keys
    );
    let mut short = by_entry.clone();
    short.remove("alpha-beacon-2.key");
    assert_eq!(
        node_public_keys(&f.topology, &short),
        Err(BuildError::MissingKey("alpha-beacon-2".to_owned()))
    );
}

#[test]
fn fingerprint_is_stable_and_sees_every_change() {
    let a = Fixture::new(public(1)).build();
    assert_eq!(
        a.fingerprint(),
        Fixture::new(public(1)).build().fingerprint()
    );
    let mut spec = public(1);
    spec.node.image = "trellis-node:2".to_owned();
    assert_ne!(a.fingerprint(), Fixture::new(spec).build().fingerprint());
    assert_ne!(
        a.fingerprint(),
        Fixture::new(public(2)).build().fingerprint()
    );
}

#[test]
fn node_config_parses_with_the_node_contract() {
    let children = Fixture::new(public(2)).build();
    for cm in &children.config_maps {
        let text = &cm.data.as_ref().unwrap()["node.toml"];
        let config = trellis_node_api::NodeConfig::from_toml(text)
            .unwrap_or_else(|e| panic!("{}: {e}\n{text}", cm.metadata.name.as_deref().unwrap()));
        assert_eq!(config.chain_id, "alpha.tenant-a");
        assert_eq!(config.key_file.to_str(), Some(KEY_FILE));
        assert_eq!(config.rpc_listen.port(), u16::try_from(RPC_PORT).unwrap());
    }
    let shard = trellis_node_api::NodeConfig::from_toml(
        &children.config_maps[2].data.as_ref().unwrap()["node.toml"],
    )
    .unwrap();
    assert_eq!(shard.role, trellis_node_api::Role::Shard { shard: 1 });
    // The committee's own validators, by stable DNS name.
    let peers: Vec<&str> = shard
        .bootstrap_peers
        .iter()
        .map(|p| p.address.as_str())
        .collect();
    assert_eq!(
        peers,
        (0..4)
            .map(|i| format!("alpha-shard-1-{i}.alpha-shard-1.tenant-a.svc.cluster.local:7000"))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        shard.bootstrap_peers[2].public_key,
        Fixture::new(public(2)).public_keys["alpha-shard-1-2"]
    );
    // Every committee reads the network's one genesis file.
    assert_eq!(
        shard.genesis_file.to_str(),
        Some("/etc/trellis/genesis/genesis.json")
    );
    assert_eq!(shard.p2p_listen.to_string(), "0.0.0.0:7000");
    assert_eq!(shard.data_dir.to_str(), Some(DATA_DIR));
    let beacon = trellis_node_api::NodeConfig::from_toml(
        &children.config_maps[0].data.as_ref().unwrap()["node.toml"],
    )
    .unwrap();
    assert_eq!(beacon.role, trellis_node_api::Role::Beacon);
}

#[test]
fn stateful_sets_carry_their_template_hash_and_roll_by_partition() {
    let f = Fixture::new(public(1));
    let mut set = f.build().stateful_sets.remove(1);
    let annotations = set.metadata.annotations.clone().unwrap();
    assert_eq!(
        annotations[crate::rollout::TEMPLATE_HASH_ANNOTATION],
        template_hash(&set)
    );
    let partition = |s: &StatefulSet| {
        s.spec
            .as_ref()
            .unwrap()
            .update_strategy
            .as_ref()
            .unwrap()
            .rolling_update
            .as_ref()
            .unwrap()
            .partition
    };
    assert_eq!(partition(&set), Some(0));
    // A new image is a new template hash; the partition is not part of it.
    let mut spec = public(1);
    spec.node.image = "registry.example/trellis-node:1.2.4".to_owned();
    let newer = Fixture::new(spec).build().stateful_sets.remove(1);
    assert_ne!(template_hash(&newer), template_hash(&set));
    let before = template_hash(&set);
    set_rollout(
        &mut set,
        &crate::rollout::RolloutStep {
            partition: 3,
            step_height: Some(42),
            rolling: true,
            waiting: None,
        },
    );
    assert_eq!(partition(&set), Some(3));
    assert_eq!(template_hash(&set), before);
    let annotations = set.metadata.annotations.clone().unwrap();
    assert_eq!(annotations[crate::rollout::STEP_HEIGHT_ANNOTATION], "42");
    set_rollout(
        &mut set,
        &crate::rollout::RolloutStep {
            partition: 0,
            step_height: None,
            rolling: false,
            waiting: None,
        },
    );
    assert_eq!(partition(&set), Some(0));
    assert!(
        !set.metadata
            .annotations
            .unwrap()
            .contains_key(crate::rollout::STEP_HEIGHT_ANNOTATION)
    );
}

#[test]
fn a_validator_pool_is_one_stateful_set_of_any_shard_nodes() {
    let mut spec = public(2);
    spec.validator_pool = Some(trellis_crd::ValidatorPoolSpec { replicas: 3 });
    let f = Fixture::new(spec);
    let children = f.build();
    assert_eq!(
        names(&children.stateful_sets),
        [
            "alpha-beacon",
            "alpha-shard-0",
            "alpha-shard-1",
            "alpha-pool"
        ]
    );
    let pool = sts(&children, "alpha-pool");
    let spec = pool.spec.as_ref().unwrap();
    assert_eq!(spec.replicas, Some(3));
    assert_eq!(spec.service_name.as_deref(), Some("alpha-pool"));
    let labels = pool.metadata.labels.as_ref().unwrap();
    assert_eq!(labels[labels::COMPONENT], "pool");
    assert!(
        !labels.contains_key(labels::SHARD),
        "a pool node has no shard"
    );
    // Its own key Secret, its own config: `shard = "any"`, the network's genesis, no
    // bootstrap peers (its peers are those of the shard the beacon places it in).
    let pod = spec.template.spec.as_ref().unwrap();
    let keys = pod
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .find(|v| v.name == "keys");
    assert_eq!(
        keys.and_then(|v| v.secret.as_ref())
            .and_then(|s| s.secret_name.as_deref()),
        Some("alpha-pool-keys")
    );
    let config_map = children
        .config_maps
        .iter()
        .find(|c| c.metadata.name.as_deref() == Some("alpha-pool-config"))
        .unwrap();
    let text = &config_map.data.as_ref().unwrap()["node.toml"];
    assert!(text.contains("shard = \"any\""), "{text}");
    let config = trellis_node_api::NodeConfig::from_toml(text).unwrap();
    assert_eq!(config.role, trellis_node_api::Role::AnyShard);
    assert!(config.bootstrap_peers.is_empty());
    assert_eq!(
        config.genesis_file.to_str(),
        Some("/etc/trellis/genesis/genesis.json")
    );
    // One pool validator may be disrupted at a time; the headless Service gives each
    // its stable DNS name (what the beacon registration records).
    let pdb = children
        .pod_disruption_budgets
        .iter()
        .find(|p| p.metadata.name.as_deref() == Some("alpha-pool"))
        .unwrap();
    assert_eq!(
        pdb.spec.as_ref().unwrap().max_unavailable,
        Some(IntOrString::Int(1))
    );
    assert!(names(&children.services).contains(&"alpha-pool".to_owned()));
    // Stopped: the pool goes to zero pods like every committee.
    let mut stopped = f.network.spec.clone();
    stopped.stopped = true;
    let children = Fixture::new(stopped).build();
    assert_eq!(
        sts(&children, "alpha-pool").spec.as_ref().unwrap().replicas,
        Some(0)
    );
}

/// Whether `selector` (equality labels) selects an object labelled `labels`.
fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

fn pod_template_labels(set: &StatefulSet) -> BTreeMap<String, String> {
    set.spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap()
}

#[test]
fn pool_pods_are_behind_the_client_rpc_service_and_no_shard_pod_changes() {
    let mut spec = public(2);
    spec.validator_pool = Some(trellis_crd::ValidatorPoolSpec { replicas: 2 });
    let children = Fixture::new(spec).build();
    let rpc = children
        .services
        .iter()
        .find(|s| s.metadata.name.as_deref() == Some("alpha-rpc"))
        .unwrap();
    let rpc_selector = rpc.spec.as_ref().unwrap().selector.clone().unwrap();
    let pool = pod_template_labels(sts(&children, "alpha-pool"));
    let beacon = pod_template_labels(sts(&children, "alpha-beacon"));
    assert!(selects(&rpc_selector, &pool), "{rpc_selector:?} {pool:?}");
    assert!(!selects(&rpc_selector, &beacon));
    assert_eq!(pool[labels::COMMITTEE], "alpha-pool");
    assert!(!pool.contains_key(labels::SHARD), "a pool pod has no shard");
    // Its StatefulSet, Services, PDB and claims still say `pool`; only the pods say
    // `shard`.
    let set = sts(&children, "alpha-pool");
    assert_eq!(
        set.metadata.labels.as_ref().unwrap()[labels::COMPONENT],
        "pool"
    );
    // Each shard's PDB and StatefulSet selector leave the pool's pods alone, and the
    // pool's own select them.
    for pdb in &children.pod_disruption_budgets {
        let selector = pdb
            .spec
            .as_ref()
            .and_then(|s| s.selector.as_ref())
            .and_then(|s| s.match_labels.as_ref())
            .unwrap();
        let own = pdb.metadata.name.as_deref() == Some("alpha-pool");
        assert_eq!(selects(selector, &pool), own, "{:?}", pdb.metadata.name);
    }
    for set in &children.stateful_sets {
        let selector = set.spec.as_ref().unwrap().selector.match_labels.as_ref();
        let own = set.metadata.name.as_deref() == Some("alpha-pool");
        assert_eq!(selects(selector.unwrap(), &pool), own);
    }
    // Shard pods keep the labels they had (their committee's, and the image tag): the
    // change rolls no shard StatefulSet.
    for shard in shard_sets(&children) {
        let labels = pod_template_labels(shard);
        let mut expected = shard.metadata.labels.clone().unwrap();
        expected.insert(labels::VERSION.to_owned(), "1.2.3".to_owned());
        assert_eq!(labels, expected);
        assert!(selects(&rpc_selector, &labels));
    }
}

fn shard_sets(children: &Children) -> Vec<&StatefulSet> {
    children
        .stateful_sets
        .iter()
        .filter(|s| {
            s.metadata
                .name
                .as_deref()
                .is_some_and(|n| n.starts_with("alpha-shard-"))
        })
        .collect()
}
