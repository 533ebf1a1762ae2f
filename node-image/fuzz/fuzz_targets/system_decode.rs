#![no_main]
//! Any bytes: decoding a system transaction returns an error or a transaction whose
//! encoding is exactly the input, and checking and executing it against a beacon state
//! never panics (whatever it is refused for) and leaves a state that stores and reads
//! back.

use libfuzzer_sys::fuzz_target;
use std::sync::LazyLock;
use trellis_node_beacon::{BeaconGenesis, BeaconState, Mode, Seat, Validator};
use trellis_node_types::system::ANY_SHARD;
use trellis_node_types::{Encode, Signer, SystemTx, test_key};

static STATE: LazyLock<Option<BeaconState>> = LazyLock::new(|| {
    let seat = |i: u64| Seat {
        node_key: test_key(i).public_key(),
        p2p_address: format!("127.0.0.{i}:9000"),
        rpc_address: format!("127.0.0.{i}:8545"),
    };
    let validator = |i: u64, shard: u16| {
        let s = seat(i);
        Validator {
            node_key: s.node_key,
            shard,
            p2p_address: s.p2p_address,
            rpc_address: s.rpc_address,
            member: None,
        }
    };
    BeaconState::genesis(BeaconGenesis {
        chain_id: "fuzz".into(),
        mode: Mode::Public,
        admin_key: test_key(1).public_key(),
        epoch_length: 4,
        max_shards: 8,
        shard_count: 2,
        beacon_validators: vec![seat(2)],
        validators: vec![validator(3, 0), validator(4, 1), validator(5, ANY_SHARD)],
        members: vec![],
    })
    .ok()
});

fuzz_target!(|data: &[u8]| {
    let Ok(tx) = SystemTx::decode_untrusted(data) else {
        return;
    };
    assert_eq!(tx.encode().as_ref(), data);
    let _ = tx.check_stateless("fuzz");
    let _ = tx.hash();
    if let Some(state) = STATE.as_ref() {
        let mut state = state.clone();
        let checked = state.check(&tx);
        let executed = state.execute(&tx, 3);
        assert_eq!(checked, executed);
        let _ = state.end_of_block(4, &[0; 32]);
        let back = BeaconState::from_bytes(&state.to_bytes());
        assert_eq!(back.as_ref().ok(), Some(&state));
    }
});
