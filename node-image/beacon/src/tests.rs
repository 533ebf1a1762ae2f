//! The beacon state machine: refusals (and their messages), epochs, resharding,
//! persistence, determinism.

use super::*;
use std::collections::BTreeSet;
use trellis_node_api::GenesisMember;
use trellis_node_types::system::SystemAction;
use trellis_node_types::{Encode, PrivateKey, Signer, SystemPayload, SystemTx, test_key};

const CHAIN: &str = "beacon-test";
const L: u64 = 10;

fn admin() -> PrivateKey {
    test_key(1_000)
}

fn node(i: u64) -> PrivateKey {
    test_key(2_000 + i)
}

fn seat(key: &PrivateKey, i: u64) -> Seat {
    Seat {
        node_key: key.public_key(),
        p2p_address: format!("127.0.0.{}:9000", i % 250 + 2),
        rpc_address: format!("127.0.0.{}:8545", i % 250 + 2),
    }
}

fn validator(i: u64, shard: u16) -> Validator {
    let s = seat(&node(i), i);
    Validator {
        node_key: s.node_key,
        shard,
        p2p_address: s.p2p_address,
        rpc_address: s.rpc_address,
        member: None,
    }
}

/// A public network with `shards` shards of `per_shard` fixed validators each
/// (validator `s * per_shard + j` for shard `s`).
fn public(shards: u16, per_shard: u64, max_shards: u16) -> BeaconState {
    let validators = (0..u64::from(shards) * per_shard)
        .map(|i| validator(i, (i / per_shard) as u16))
        .collect();
    BeaconState::genesis(BeaconGenesis {
        chain_id: CHAIN.into(),
        mode: Mode::Public,
        admin_key: admin().public_key(),
        epoch_length: L,
        max_shards,
        shard_count: shards,
        beacon_validators: (0..4).map(|i| seat(&test_key(100 + i), 100 + i)).collect(),
        validators,
        members: vec![],
    })
    .unwrap()
}

fn sign(key: &PrivateKey, sequence: u64, action: SystemAction) -> SystemTx {
    SystemPayload {
        chain_id: CHAIN.into(),
        sequence,
        action,
    }
    .sign(key)
}

fn set_count(state: &BeaconState, count: u16) -> SystemTx {
    let key = admin();
    sign(
        &key,
        state.next_sequence(&key.public_key()),
        SystemAction::SetShardCount {
            count,
            load: vec![],
        },
    )
}

fn register(state: &BeaconState, signer: &PrivateKey, i: u64, shard: u16) -> SystemTx {
    let v = validator(i, shard);
    sign(
        signer,
        state.next_sequence(&signer.public_key()),
        SystemAction::RegisterValidator {
            shard,
            node_key: v.node_key,
            p2p_address: v.p2p_address,
            rpc_address: v.rpc_address,
        },
    )
}

fn deregister(state: &BeaconState, signer: &PrivateKey, i: u64) -> SystemTx {
    sign(
        signer,
        state.next_sequence(&signer.public_key()),
        SystemAction::DeregisterValidator {
            node_key: node(i).public_key(),
        },
    )
}

/// Executes `tx` at the next height of the current epoch, after checking that `check`
/// agrees with execution.
fn run(
    state: &mut BeaconState,
    build: impl FnOnce(&BeaconState) -> SystemTx,
) -> Result<(), SystemRefusal> {
    let tx = build(state);
    run_tx(state, &tx)
}

fn run_tx(state: &mut BeaconState, tx: &SystemTx) -> Result<(), SystemRefusal> {
    let checked = state.check(tx);
    let height = state.next_epoch_height() - 1;
    let executed = state.execute(tx, height);
    assert_eq!(checked, executed);
    executed
}

/// Finalizes the epoch's last block.
fn end_epoch(state: &mut BeaconState) -> EpochChange {
    let height = state.next_epoch_height();
    // Any other height changes nothing.
    assert_eq!(state.end_of_block(height - 1, &[7; 32]), None);
    let digest = Sha256::hash(&[&height.to_be_bytes()]).0;
    let change = state.end_of_block(height, &digest).unwrap();
    assert_eq!(change.first_height, height + 1);
    assert_eq!(change.epoch, state.epoch());
    // Whatever the epoch did, the stored form reads back to the same state.
    assert_eq!(&BeaconState::from_bytes(&state.to_bytes()).unwrap(), state);
    change
}

fn message(r: Result<(), SystemRefusal>) -> String {
    r.unwrap_err().to_string()
}

#[test]
fn genesis_builds_committees_and_the_genesis_map() {
    let state = public(2, 4, 8);
    assert_eq!(state.epoch(), 0);
    assert_eq!(state.next_epoch_height(), L);
    assert_eq!(state.tables(), &genesis_map(2));
    assert_eq!(state.owner(0), 0);
    assert_eq!(state.owner(255), 1);
    for s in 0..2u16 {
        let keys = state.validators(s);
        assert_eq!(keys.len(), 4);
        let expected: BTreeSet<PublicKey> = (0..4)
            .map(|j| node(u64::from(s) * 4 + j).public_key())
            .collect();
        assert_eq!(keys.iter().cloned().collect::<BTreeSet<_>>(), expected);
        assert_eq!(state.rpc_addresses(s).len(), 4);
        assert_eq!(state.validators_at(s, 0), Some(keys));
    }
    assert!(state.validators(2).is_empty());
    assert_eq!(state.validators_at(0, 1), None);
    let map = state.shard_map(3);
    assert_eq!(map.shards.len(), 2);
    assert_eq!(map.tables.len(), 256);
    assert_eq!(map.next_epoch_height, L);
    assert_eq!(map.beacon_height, 3);
    assert_eq!(map.pending_shard_count, None);
}

#[test]
fn bad_genesis_is_refused_with_a_reason() {
    let base = || BeaconGenesis {
        chain_id: CHAIN.into(),
        mode: Mode::Public,
        admin_key: admin().public_key(),
        epoch_length: L,
        max_shards: 4,
        shard_count: 2,
        beacon_validators: vec![seat(&test_key(100), 100)],
        validators: vec![validator(0, 0), validator(1, 1)],
        members: vec![],
    };
    type Mutation = Box<dyn Fn(&mut BeaconGenesis)>;
    let cases: Vec<(Mutation, &str)> = vec![
        (Box::new(|g| g.chain_id.clear()), "chain id"),
        (Box::new(|g| g.epoch_length = 0), "epoch_length is 0"),
        (Box::new(|g| g.max_shards = 0), "max_shards 0"),
        (Box::new(|g| g.max_shards = 300), "max_shards 300"),
        (
            Box::new(|g| g.shard_count = 5),
            "shard_count 5 is outside 1..=4",
        ),
        (
            Box::new(|g| g.beacon_validators.clear()),
            "beacon has no validators",
        ),
        (
            Box::new(|g| {
                g.validators.pop();
            }),
            "shard 1 has no validators",
        ),
        (Box::new(|g| g.validators.push(validator(0, 1))), "twice"),
        (
            Box::new(|g| g.validators[0].rpc_address = "nowhere".into()),
            "rpc address \"nowhere\" is not host:port",
        ),
        (
            Box::new(|g| g.validators[0].shard = 9),
            "is for shard 9, beyond max_shards 4",
        ),
        (
            Box::new(|g| {
                g.validators.push(Validator {
                    node_key: test_key(100).public_key(),
                    ..validator(5, 0)
                })
            }),
            "both a beacon and a shard validator",
        ),
        (Box::new(|g| g.mode = Mode::Consortium), "names no member"),
    ];
    for (mutate, needle) in cases {
        let mut g = base();
        mutate(&mut g);
        let err = BeaconState::genesis(g).unwrap_err().to_string();
        assert!(err.contains(needle), "{err:?} lacks {needle:?}");
    }
    BeaconState::genesis(base()).unwrap();
}

#[test]
fn from_contract_reads_the_genesis_section() {
    use trellis_node_api::shard::{GenesisValidator, ShardingGenesis};
    let gv = |key: &PrivateKey, shard| GenesisValidator {
        node_key: to_hex(key.public_key().as_ref()),
        shard,
        p2p_address: "127.0.0.2:9000".into(),
        rpc_address: "127.0.0.2:8545".into(),
        member: Some("org1".into()),
    };
    let sharding = ShardingGenesis {
        mode: ShardingMode::Consortium,
        admin_key: to_hex(admin().public_key().as_ref()),
        max_shards: 4,
        shard_count: 2,
        beacon: vec![gv(&test_key(100), ANY_SHARD)],
        validators: vec![gv(&node(0), 0), gv(&node(1), ANY_SHARD)],
    };
    let members = vec![GenesisMember {
        name: "org1".into(),
        admin_key: to_hex(test_key(500).public_key().as_ref()),
        node_key: to_hex(node(0).public_key().as_ref()),
        p2p_address: "127.0.0.2:9000".into(),
    }];
    let g = BeaconGenesis::from_contract(CHAIN, L, &members, &sharding).unwrap();
    assert_eq!(g.mode, Mode::Consortium);
    let state = BeaconState::genesis(g).unwrap();
    // The "any" validator fills shard 1.
    assert_eq!(state.validators(1), vec![node(1).public_key()]);

    let mut bad = sharding.clone();
    bad.validators[0].node_key = "00".into();
    let err = BeaconGenesis::from_contract(CHAIN, L, &members, &bad).unwrap_err();
    assert!(err.to_string().contains("32-byte hex"), "{err}");
    let mut unknown = members.clone();
    unknown[0].admin_key = "zz".repeat(32);
    let err = BeaconGenesis::from_contract(CHAIN, L, &unknown, &sharding).unwrap_err();
    assert!(err.to_string().contains("member admin key"), "{err}");
}

#[test]
fn set_shard_count_refusals_say_what_to_do() {
    let mut state = public(2, 4, 4);
    let admin_hex = to_hex(admin().public_key().as_ref());

    // Wrong signer.
    let intruder = test_key(9);
    let tx = sign(
        &intruder,
        0,
        SystemAction::SetShardCount {
            count: 3,
            load: vec![],
        },
    );
    let m = message(run_tx(&mut state, &tx));
    assert_eq!(
        m,
        format!(
            "SetShardCount must be signed by the network admin key {admin_hex}; it was signed by {}",
            to_hex(intruder.public_key().as_ref())
        )
    );
    assert_eq!(state.next_sequence(&intruder.public_key()), 0);

    // Wrong chain, bad signature.
    let mut other = set_count(&state, 3);
    other.payload.chain_id = "other".into();
    let other = other.payload.sign(&admin());
    assert!(
        message(run_tx(&mut state, &other))
            .contains("for chain \"other\", this is \"beacon-test\"")
    );
    let mut forged = set_count(&state, 3);
    forged.payload.action = SystemAction::SetShardCount {
        count: 4,
        load: vec![],
    };
    assert_eq!(
        message(run_tx(&mut state, &forged)),
        format!("bad signature from key {admin_hex}")
    );

    // Out of range.
    for count in [0u16, 5, 300] {
        let m = message(run(&mut state, |s| set_count(s, count)));
        assert_eq!(
            m,
            format!("shard count {count} is outside 1..=4 (this network's max_shards)")
        );
    }
    // Each of those executed with a valid signature: the admin's sequence moved on.
    assert_eq!(state.next_sequence(&admin().public_key()), 3);

    // Stale and future sequences.
    let stale = sign(
        &admin(),
        1,
        SystemAction::SetShardCount {
            count: 3,
            load: vec![],
        },
    );
    assert_eq!(
        message(run_tx(&mut state, &stale)),
        format!("sequence 1 of key {admin_hex} was already used; its next system sequence is 3")
    );
    let future = sign(
        &admin(),
        7,
        SystemAction::SetShardCount {
            count: 3,
            load: vec![],
        },
    );
    let m = message(run_tx(&mut state, &future));
    assert!(
        m.starts_with(&format!(
            "sequence 7 of key {admin_hex} is ahead of its next system sequence 3; submit sequence 3 first"
        )),
        "{m}"
    );
    assert_eq!(state.next_sequence(&admin().public_key()), 3);

    // Same count; a shard without validators.
    assert_eq!(
        message(run(&mut state, |s| set_count(s, 2))),
        "the network already has 2 shards"
    );
    let r = run(&mut state, |s| set_count(s, 3));
    assert_eq!(r.as_ref().unwrap_err().code(), -33011);
    assert_eq!(
        message(r),
        "shard 2 would have no validators: register validators for shard 2 first"
    );

    // Register for shard 2 (not yet existing: allowed), then the change is accepted.
    run(&mut state, |s| register(s, &admin(), 50, 2)).unwrap();
    assert_eq!(
        state.validators(2),
        vec![],
        "registration waits for the epoch"
    );
    run(&mut state, |s| set_count(s, 3)).unwrap();
    assert_eq!(state.pending_shard_count(), Some(3));
    assert_eq!(state.shard_map(1).pending_shard_count, Some(3));

    // A second change while one is pending.
    let r = run(&mut state, |s| set_count(s, 1));
    assert_eq!(r.as_ref().unwrap_err().code(), -33012);
    assert_eq!(
        message(r),
        format!(
            "a change to 3 shards is already pending; it applies when beacon height {L} is \
             finalized — submit another change after that"
        )
    );

    // The epoch ends: 3 shards, the new shard's validator, minimal moves.
    let change = end_epoch(&mut state);
    assert_eq!((change.previous_shard_count, change.shard_count), (2, 3));
    assert_eq!(state.shard_count(), 3);
    assert_eq!(state.pending_shard_count(), None);
    assert_eq!(change.committees[2], vec![node(50).public_key()]);
    assert_eq!(state.validators(2), vec![node(50).public_key()]);
    assert!(change.moves.iter().all(|m| m.to == 2));
    assert_eq!(change.moves.len(), 256 / 3);
    assert_eq!(change.deferred, None);
    assert!(state.resharding());

    // During the handoff epoch another change is refused.
    let r = run(&mut state, |s| set_count(s, 2));
    assert_eq!(r.as_ref().unwrap_err().code(), -33012);
    assert_eq!(
        message(r),
        format!(
            "resharding in progress: tables are being handed off during epoch 1; submit again \
             once beacon height {} is finalized",
            2 * L
        )
    );
    end_epoch(&mut state);
    assert!(!state.resharding());
    run(&mut state, |s| set_count(s, 2)).unwrap();
    let change = end_epoch(&mut state);
    assert_eq!(change.shard_count, 2);
    assert!(change.moves.iter().all(|m| m.from == 2));
    assert_eq!(change.committees.len(), 2);
    // Old epochs keep their owners and committees.
    assert_eq!(state.owner_at(255, 1), Some(2));
    assert_eq!(state.owner_at(255, 0), Some(1));
    assert_eq!(state.validators_at(2, 2), Some(vec![node(50).public_key()]));
    assert_eq!(state.validators_at(2, 3), None);
}

#[test]
fn load_hint_moves_the_busiest_tables() {
    let mut state = public(1, 1, 4);
    run(&mut state, |s| register(s, &admin(), 10, 1)).unwrap();
    let mut load = vec![1u64; TABLES];
    load[3] = 500;
    load[4] = 500;
    let tx = sign(
        &admin(),
        state.next_sequence(&admin().public_key()),
        SystemAction::SetShardCount { count: 2, load },
    );
    run_tx(&mut state, &tx).unwrap();
    let change = end_epoch(&mut state);
    // One hot table each.
    assert_ne!(state.owner(3), state.owner(4));
    assert_eq!(state.load()[3], 500);
    // One hot table (500) and 127 cold ones fill shard 1's share (1254 / 2).
    assert_eq!(change.moves.len(), 128);
}

#[test]
fn registration_rules_in_public_mode() {
    let mut state = public(2, 2, 4);
    let key_hex = |i| to_hex(node(i).public_key().as_ref());

    // Self-registration and admin registration; a third key may not register a node.
    run(&mut state, |s| register(s, &node(20), 20, ANY_SHARD)).unwrap();
    run(&mut state, |s| register(s, &admin(), 21, 0)).unwrap();
    let m = message(run(&mut state, |s| register(s, &node(22), 23, 0)));
    assert_eq!(
        m,
        format!(
            "RegisterValidator must be signed by the node key {} itself or the network admin key {}; it was signed by {}",
            key_hex(23),
            to_hex(admin().public_key().as_ref()),
            key_hex(22)
        )
    );

    // Bad shard, bad addresses, beacon validator, unchanged.
    assert_eq!(
        message(run(&mut state, |s| register(s, &admin(), 24, 4))),
        "shard 4 is outside 0..4 (max_shards); use 65535 to let the beacon place the validator"
    );
    let mut tx = register(&state, &admin(), 24, 0);
    if let SystemAction::RegisterValidator { p2p_address, .. } = &mut tx.payload.action {
        *p2p_address = "host:0".into();
    }
    let tx = tx.payload.sign(&admin());
    assert_eq!(
        message(run_tx(&mut state, &tx)),
        "p2p address \"host:0\" is not host:port (a host and a port 1..=65535)"
    );
    let beacon_key = test_key(100);
    let tx = sign(
        &beacon_key,
        0,
        SystemAction::RegisterValidator {
            shard: 0,
            node_key: beacon_key.public_key(),
            p2p_address: "a:1".into(),
            rpc_address: "a:2".into(),
        },
    );
    assert!(
        message(run_tx(&mut state, &tx))
            .ends_with("is a beacon validator; a node validates one committee only")
    );
    assert_eq!(
        message(run(&mut state, |s| register(s, &admin(), 21, 0))),
        format!(
            "node key {} is already registered for this shard with these addresses",
            key_hex(21)
        )
    );
    // Moving a registered validator to another shard is a re-registration.
    run(&mut state, |s| register(s, &admin(), 21, 1)).unwrap();

    // Deregistration: unknown key; the last validator of a shard; the node itself.
    assert_eq!(
        message(run(&mut state, |s| deregister(s, &admin(), 99))),
        format!("node key {} is not a registered validator", key_hex(99))
    );
    end_epoch(&mut state);
    // Shard 0: validators 0, 1 (+ maybe the "any" one); shard 1: 2, 3, 21.
    run(&mut state, |s| deregister(s, &node(0), 0)).unwrap();
    let any_in_0 = state.validators(0).contains(&node(20).public_key());
    if any_in_0 {
        run(&mut state, |s| deregister(s, &node(20), 20)).unwrap();
    }
    assert_eq!(
        message(run(&mut state, |s| deregister(s, &admin(), 1))),
        "shard 0 would have no validators: register validators for shard 0 first"
    );
    let change = end_epoch(&mut state);
    assert!(!change.committees[0].contains(&node(0).public_key()));
}

fn consortium() -> BeaconState {
    let orgs = ["org-a", "org-b", "org-c"];
    let validators = (0..6)
        .map(|i| Validator {
            member: Some(orgs[(i % 3) as usize].to_string()),
            ..validator(i, ANY_SHARD)
        })
        .collect();
    BeaconState::genesis(BeaconGenesis {
        chain_id: CHAIN.into(),
        mode: Mode::Consortium,
        admin_key: admin().public_key(),
        epoch_length: L,
        max_shards: 4,
        shard_count: 2,
        beacon_validators: vec![seat(&test_key(100), 100)],
        validators,
        members: orgs
            .iter()
            .enumerate()
            .map(|(i, name)| Member {
                name: name.to_string(),
                admin_key: test_key(500 + i as u64).public_key(),
            })
            .collect(),
    })
    .unwrap()
}

fn orgs_of(state: &BeaconState, shard: u16) -> BTreeSet<String> {
    let registry: BTreeMap<PublicKey, &Validator> = state
        .registered()
        .map(|v| (v.node_key.clone(), v))
        .collect();
    state
        .validators(shard)
        .iter()
        .filter_map(|k| registry.get(k).and_then(|v| v.member.clone()))
        .collect()
}

#[test]
fn consortium_members_register_their_own_validators() {
    let mut state = consortium();
    // Two validators per organisation, two shards: every shard has every organisation.
    for s in 0..2 {
        assert_eq!(orgs_of(&state, s).len(), 3, "shard {s}");
    }
    let org_a = test_key(500);
    let org_b = test_key(501);

    // A non-member, even the node itself or the network admin, cannot register.
    for key in [node(30), admin()] {
        assert_eq!(
            message(run(&mut state, |s| register(s, &key, 30, 0))),
            format!(
                "key {} is not the admin key of an admitted member; in consortium mode members register their own validators",
                to_hex(key.public_key().as_ref())
            )
        );
    }
    // A member registers one; it is recorded as theirs.
    run(&mut state, |s| register(s, &org_a, 30, 2)).unwrap();
    let v = state
        .registered()
        .find(|v| v.node_key == node(30).public_key())
        .unwrap();
    assert_eq!(v.member.as_deref(), Some("org-a"));
    // Another member cannot touch it.
    assert_eq!(
        message(run(&mut state, |s| deregister(s, &org_b, 30))),
        format!(
            "validator {} belongs to member \"org-a\"; only that member's admin key can change or remove it",
            to_hex(node(30).public_key().as_ref())
        )
    );
    run(&mut state, |s| deregister(s, &org_a, 30)).unwrap();

    // Scale to 3 shards: org-b and org-c register one more "any" validator each... not
    // needed for staffing (the spread moves one of each), but then every shard has every
    // organisation.
    for (org, i) in [(&org_a, 40), (&org_b, 41), (&test_key(502), 42)] {
        run(&mut state, |s| register(s, org, i, ANY_SHARD)).unwrap();
    }
    run(&mut state, |s| set_count(s, 3)).unwrap();
    end_epoch(&mut state);
    for s in 0..3 {
        assert_eq!(
            orgs_of(&state, s).len(),
            3,
            "shard {s}: {:?}",
            orgs_of(&state, s)
        );
    }

    // Removing a member drops its validators from the next committees.
    state.set_members(vec![
        Member {
            name: "org-a".into(),
            admin_key: org_a.public_key(),
        },
        Member {
            name: "org-b".into(),
            admin_key: org_b.public_key(),
        },
    ]);
    end_epoch(&mut state);
    for s in 0..3 {
        assert!(!orgs_of(&state, s).contains("org-c"));
    }
}

#[test]
fn refused_actions_consume_the_sequence_refused_signers_do_not() {
    let mut state = public(1, 1, 2);
    let a = admin().public_key();
    // Refused action, valid signer: sequence consumed; the same bytes never run again.
    let tx = set_count(&state, 2);
    assert!(tx_refusal(&mut state, &tx).consumes_sequence());
    assert_eq!(state.next_sequence(&a), 1);
    run(&mut state, |s| register(s, &admin(), 5, 1)).unwrap();
    let again = state.execute(&tx, 3).unwrap_err();
    assert!(matches!(again, SystemRefusal::StaleSequence { .. }));
    assert!(!again.consumes_sequence());
    // Determinism: the same transactions on a second state give the same bytes.
    let mut twin = public(1, 1, 2);
    let _ = twin.execute(&tx, 9);
    let reg = register(&twin, &admin(), 5, 1);
    twin.execute(&reg, 9).unwrap();
    assert_eq!(twin.to_bytes(), state.to_bytes());
}

fn tx_refusal(state: &mut BeaconState, tx: &SystemTx) -> SystemRefusal {
    run_tx(state, tx).unwrap_err()
}

#[test]
fn a_pending_change_waits_when_its_shard_loses_every_validator() {
    let mut state = public(1, 2, 4);
    run(&mut state, |s| register(s, &admin(), 10, 1)).unwrap();
    run(&mut state, |s| set_count(s, 2)).unwrap();
    // The submission check refuses emptying shard 1 of the pending count.
    assert_eq!(
        message(run(&mut state, |s| deregister(s, &admin(), 10))),
        "shard 1 would have no validators: register validators for shard 1 first"
    );
    // Moving validator 10 away is refused for the same reason.
    assert!(message(run(&mut state, |s| register(s, &admin(), 10, 3))).contains("shard 1"));
    end_epoch(&mut state);
    assert_eq!(state.shard_count(), 2);
}

#[test]
fn resharding_1_2_4_3_1_through_the_beacon() {
    let mut state = public(1, 4, 8);
    for i in 10..30 {
        run(&mut state, |s| register(s, &node(i), i, ANY_SHARD)).unwrap();
    }
    end_epoch(&mut state);
    for count in [2u16, 4, 3, 1] {
        let before = *state.tables();
        let from = state.shard_count();
        run(&mut state, |s| set_count(s, count)).unwrap();
        let change = end_epoch(&mut state);
        assert_eq!(change.shard_count, count);
        assert_eq!(
            change.tables,
            plan_tables(&before, from, count, &[0; TABLES])
        );
        assert!(change.tables.iter().all(|&o| o < count));
        assert!(change.committees.iter().all(|c| !c.is_empty()));
        // Every registered validator sits in exactly one committee.
        let mut all: Vec<PublicKey> = change.committees.concat();
        all.sort();
        let n = all.len();
        all.dedup();
        assert_eq!(all.len(), n);
        assert_eq!(n, 24);
        // Handoff epoch, then a quiet one.
        end_epoch(&mut state);
    }
}

#[test]
fn stored_state_round_trips_and_corruption_is_an_error() {
    let mut state = consortium();
    run(&mut state, |s| set_count(s, 3)).unwrap();
    let bytes = state.to_bytes();
    assert_eq!(BeaconState::from_bytes(&bytes).unwrap(), state);

    let text = String::from_utf8(bytes).unwrap();
    let cases = [
        (
            text.replace("\"version\":1", "\"version\":2"),
            "version 2 is not 1",
        ),
        (
            text.replacen("\"tables\":[0,", "\"tables\":[", 1),
            "entries, not 256",
        ),
        (
            text.replacen("\"shard_count\":2", "\"shard_count\":9", 1),
            "shard_count 9",
        ),
        (
            text.replacen("\"epoch_length\":10", "\"epoch_length\":0", 1),
            "epoch_length is 0",
        ),
        (
            text.replacen("\"mode\":\"consortium\"", "\"mode\":\"other\"", 1),
            "not beacon JSON",
        ),
        (text[..text.len() / 2].to_string(), "not beacon JSON"),
    ];
    for (bad, needle) in cases {
        let err = BeaconState::from_bytes(bad.as_bytes())
            .unwrap_err()
            .to_string();
        assert!(err.contains(needle), "{err:?} lacks {needle:?}");
    }
    assert!(BeaconState::from_bytes(b"").is_err());
    assert!(BeaconState::from_bytes(&[0xff; 64]).is_err());
}

#[test]
fn random_transactions_never_break_the_state() {
    // Random system transactions (valid, refused, forged) from random signers, epochs
    // ending in between: no panic, check agrees with execute, and every epoch's state is
    // valid and reads back from its stored form.
    let mut x: u64 = 0x1234_5678_9abc_def1;
    let mut rng = move |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n.max(1)
    };
    let mut state = public(2, 2, 6);
    let mut seen_ok = 0;
    // Signature checks dominate (tens of milliseconds each in a debug build): 240 steps.
    for step in 0..240 {
        let signer = match rng(4) {
            0 => admin(),
            1 => test_key(9),
            _ => node(rng(40)),
        };
        let action = match rng(3) {
            0 => SystemAction::SetShardCount {
                count: rng(8) as u16,
                load: if rng(2) == 0 {
                    vec![]
                } else {
                    (0..TABLES as u64).map(|_| rng(100)).collect()
                },
            },
            1 => {
                let i = rng(40);
                let v = validator(
                    i,
                    if rng(3) == 0 {
                        ANY_SHARD
                    } else {
                        rng(7) as u16
                    },
                );
                SystemAction::RegisterValidator {
                    shard: v.shard,
                    node_key: v.node_key,
                    p2p_address: v.p2p_address,
                    rpc_address: v.rpc_address,
                }
            }
            _ => SystemAction::DeregisterValidator {
                node_key: node(rng(40)).public_key(),
            },
        };
        let sequence = state.next_sequence(&signer.public_key()) + u64::from(rng(5) == 0);
        let tx = sign(&signer, sequence, action);
        // Every fourth step also checks that the submission check agrees with execution.
        let outcome = if step % 4 == 0 {
            run_tx(&mut state, &tx)
        } else {
            let height = state.next_epoch_height() - 1;
            state.execute(&tx, height)
        };
        if outcome.is_ok() {
            seen_ok += 1;
        }
        if step % 5 == 0 {
            let height = state.next_epoch_height();
            let change = state.end_of_block(height, &[step as u8; 32]).unwrap();
            // Reading the stored form back costs a key decompression per stored key:
            // every few epochs is enough.
            if step % 50 == 0 {
                assert_eq!(BeaconState::from_bytes(&state.to_bytes()).unwrap(), state);
            }
            assert!(change.committees.iter().all(|c| !c.is_empty()));
            assert_eq!(change.committees.len(), usize::from(state.shard_count()));
            assert!(state.tables().iter().all(|&o| o < state.shard_count()));
        }
        let decoded = SystemTx::decode_untrusted(&tx.encode()).unwrap();
        assert_eq!(decoded, tx);
    }
    assert!(seen_ok > 20, "only {seen_ok} accepted");
}

#[test]
fn a_full_registry_refuses_new_validators() {
    let validators: Vec<Validator> = (0..MAX_VALIDATORS as u64)
        .map(|i| validator(i, 0))
        .collect();
    let mut state = BeaconState::genesis(BeaconGenesis {
        chain_id: CHAIN.into(),
        mode: Mode::Public,
        admin_key: admin().public_key(),
        epoch_length: L,
        max_shards: 2,
        shard_count: 1,
        beacon_validators: vec![seat(&test_key(100), 100)],
        validators,
        members: vec![],
    })
    .unwrap();
    assert_eq!(
        message(run(&mut state, |s| register(
            s,
            &admin(),
            MAX_VALIDATORS as u64,
            0
        ))),
        "the beacon already holds 4096 validators; deregister one first"
    );
    // Changing a registered one is still possible.
    run(&mut state, |s| register(s, &admin(), 0, 1)).unwrap();
}

#[test]
fn a_removed_member_defers_a_pending_count_it_was_needed_for() {
    let orgs = ["org-a", "org-b"];
    let mut validators: Vec<Validator> = (0..2)
        .map(|i| Validator {
            member: Some(orgs[i as usize].to_string()),
            ..validator(i, 0)
        })
        .collect();
    // Only org-b staffs shard 1, which does not exist yet.
    validators.push(Validator {
        member: Some("org-b".into()),
        ..validator(2, 1)
    });
    let members: Vec<Member> = orgs
        .iter()
        .enumerate()
        .map(|(i, name)| Member {
            name: name.to_string(),
            admin_key: test_key(500 + i as u64).public_key(),
        })
        .collect();
    let mut state = BeaconState::genesis(BeaconGenesis {
        chain_id: CHAIN.into(),
        mode: Mode::Consortium,
        admin_key: admin().public_key(),
        epoch_length: L,
        max_shards: 2,
        shard_count: 1,
        beacon_validators: vec![seat(&test_key(100), 100)],
        validators,
        members: members.clone(),
    })
    .unwrap();
    run(&mut state, |s| set_count(s, 2)).unwrap();
    // Governance removes org-b before the boundary.
    state.set_members(vec![members[0].clone()]);
    let change = end_epoch(&mut state);
    assert_eq!(change.shard_count, 1);
    assert_eq!(
        change.deferred.as_deref(),
        Some(
            "the change to 2 shards waits: shard 1 has no validators (register validators for \
             shard 1)"
        )
    );
    assert_eq!(state.pending_shard_count(), Some(2));
    // org-b's validator of shard 0 left; org-a's stays.
    assert_eq!(state.validators(0), vec![node(0).public_key()]);
    // org-a staffs shard 1: the change applies at the next boundary.
    run(&mut state, |s| register(s, &test_key(500), 7, 1)).unwrap();
    let change = end_epoch(&mut state);
    assert_eq!((change.shard_count, change.deferred), (2, None));
    assert_eq!(state.validators(1), vec![node(7).public_key()]);
}

#[test]
fn drained_slots_keep_their_last_committee_addresses() {
    // 3 shards of 2 validators (validators 4, 5 in shard 2).
    let mut state = public(3, 2, 4);
    assert!(state.drained_slots().is_empty(), "no slot drained yet");
    run(&mut state, |s| set_count(s, 2)).unwrap();
    end_epoch(&mut state);
    assert_eq!(state.shard_count(), 2);
    let addresses =
        |i: &[u64]| -> Vec<String> { i.iter().map(|i| seat(&node(*i), *i).rpc_address).collect() };
    let mut expected = addresses(&[4, 5]);
    expected.sort();
    let mut drained = state.drained_slots();
    drained.iter_mut().for_each(|(_, a)| a.sort());
    assert_eq!(drained, vec![(2, expected)]);
    // A validator that left the registry is no longer asked; slot 3 never existed.
    run(&mut state, |s| deregister(s, &admin(), 4)).unwrap();
    assert_eq!(state.drained_slots(), vec![(2, addresses(&[5]))]);
    // Scaled out again (after the handoff epoch), slot 2 is a shard again.
    end_epoch(&mut state);
    assert_eq!(state.drained_slots(), vec![(2, addresses(&[5]))]);
    run(&mut state, |s| set_count(s, 3)).unwrap();
    end_epoch(&mut state);
    assert_eq!(state.shard_count(), 3);
    assert!(state.drained_slots().is_empty());
}
