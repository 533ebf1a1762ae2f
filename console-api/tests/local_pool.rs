//! The local provisioner runs a public network's validator pool with real `trellis-node`
//! processes on loopback (127.0.226.0/24): the pool's validators run `shard = "any"`,
//! are in no genesis, are registered with the beacon for shard "any" (each signed with
//! its own node key, through the node binary like a new shard's validators) and placed
//! by the beacon's shuffle; a placed, ready one serves its shard and is among the
//! network's RPC endpoints with that shard. Scale-down 2 → 1 deregisters `pool-1`, which keeps
//! running while the beacon's map still places it and stops once the map leaves it
//! out; scale-up brings it back with its keys and it is placed again.
//! Real: the console (router, SQLite), the local provisioner and its scaling loop, the
//! nodes' consensus and the beacon. Nothing is faked.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::local::{eventually, local_app, node_call, processes_for};

use std::path::Path;
use std::time::Duration;

use axum::http::StatusCode;
use common::test_settings;
use serde_json::{Value, json};
use trellis_console::provisioner::{NetworkRef, Provisioner};

const WAIT: Duration = Duration::from_secs(240);

fn node_key(node_dir: &Path) -> String {
    let keys: Value =
        serde_json::from_str(&std::fs::read_to_string(node_dir.join("keys.json")).unwrap())
            .unwrap();
    keys["node_public_key"]
        .as_str()
        .unwrap()
        .to_ascii_lowercase()
}

/// The node's `rpc_listen` (`host:port`) from its config.
fn rpc_of(node_dir: &Path) -> String {
    let config = std::fs::read_to_string(node_dir.join("node.toml")).unwrap();
    trellis_node_api::NodeConfig::from_toml(&config)
        .unwrap()
        .rpc_listen
        .to_string()
}

/// The shard the beacon's map places `key` in.
fn placed(map: &Value, key: &str) -> Option<u64> {
    map["shards"].as_array()?.iter().find_map(|s| {
        s["validators"]
            .as_array()?
            .iter()
            .any(|v| v.as_str().is_some_and(|v| v.eq_ignore_ascii_case(key)))
            .then(|| s["shard"].as_u64())?
    })
}

async fn system_sequence(beacon: &str, key: &str) -> u64 {
    node_call(beacon, "trellis_getSystemSequence", json!({"key": key}))
        .await
        .unwrap()["sequence"]
        .as_u64()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_validator_pool_is_registered_placed_and_scaled_through_the_beacon() {
    let (app, local, _guard) = local_app(None, "127.0.226.0/24", test_settings()).await;
    let org = app.signup("Pool Ltd", "ops@pool.example").await;
    let created = app
        .post(
            "/v1/networks",
            &org.token,
            json!({"name": "pooled", "mode": "public", "retain_ledger_on_delete": false,
                   "shards": {"count": 2, "min": 1, "max": 2},
                   "validators_per_shard": 4, "beacon_validators": 4, "epoch_length": 10,
                   "validator_pool": 2}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    let id = created.body["id"].as_str().unwrap().to_string();
    let network = local.settings().root.join("networks").join(&id);
    let pool: Vec<_> = (0..2)
        .map(|i| network.join(format!("nodes/pooled-pool-{i}")))
        .collect();
    let pool_keys: Vec<String> = pool.iter().map(|d| node_key(d)).collect();

    // In no genesis; `shard = "any"`, no bootstrap peers of its own.
    let genesis = std::fs::read_dir(&network)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with(".genesis.json"))
        .unwrap();
    let genesis: Value = serde_json::from_str(&std::fs::read_to_string(genesis).unwrap()).unwrap();
    let sharding = &genesis["sharding"];
    let seats: Vec<&str> = sharding["validators"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["node_key"].as_str().unwrap())
        .collect();
    assert_eq!(seats.len(), 8);
    assert!(
        pool_keys
            .iter()
            .all(|k| !seats.iter().any(|s| s.eq_ignore_ascii_case(k)))
    );
    let config = std::fs::read_to_string(pool[0].join("node.toml")).unwrap();
    let parsed = trellis_node_api::NodeConfig::from_toml(&config).unwrap();
    assert_eq!(parsed.role, trellis_node_api::Role::AnyShard, "{config}");
    assert!(parsed.bootstrap_peers.is_empty(), "{config}");
    let beacon = sharding["beacon"][0]["rpc_address"]
        .as_str()
        .unwrap()
        .to_string();

    // The beacon places both; each placed node serves that shard (its own status), and
    // the network's RPC endpoints list it with that shard.
    let started = std::time::Instant::now();
    eventually(
        "the beacon to place both pool validators",
        WAIT,
        async || {
            let map = node_call(&beacon, "trellis_getShardMap", Value::Null).await?;
            pool_keys
                .iter()
                .all(|k| placed(&map, k).is_some())
                .then_some(())
        },
    )
    .await;
    eprintln!("pool placed after {:?}", started.elapsed());
    for key in &pool_keys {
        assert_eq!(
            system_sequence(&beacon, key).await,
            1,
            "registered once: {key}"
        );
    }
    let reference = NetworkRef {
        tenant_id: org.tenant_id.parse().unwrap(),
        tenant_slug: String::new(),
        network_id: id.parse().unwrap(),
        name: String::new(),
    };
    // A pool node is an RPC endpoint of the shard the beacon places it in once the
    // status's observation found it ready (`/readyz`), as a Service's Endpoints hold
    // Ready pods; it serves that shard (its own status). At least one of the two is
    // seen so (a pool node that lost its shard's peers is not ready, and not listed).
    let rpcs: Vec<String> = pool.iter().map(|d| rpc_of(d)).collect();
    eventually(
        "a ready pool node listed with its shard",
        WAIT,
        async || {
            local.observe(&reference).await.ok()??;
            let endpoints = local.rpc_endpoints(&reference).await.ok()?;
            let map = node_call(&beacon, "trellis_getShardMap", Value::Null).await?;
            for (rpc, key) in rpcs.iter().zip(&pool_keys) {
                let Some(listed) = endpoints.iter().find(|e| e.url.contains(rpc.as_str())) else {
                    continue;
                };
                let shard = placed(&map, key)?;
                let status = node_call(rpc, "trellis_status", Value::Null).await?;
                if listed.shard == u32::try_from(shard).ok()
                    && status["role"]["shard"].as_u64() == Some(shard)
                {
                    return Some(());
                }
            }
            None
        },
    )
    .await;

    // Scale-down 2 -> 1: pool-1 is deregistered and runs until the beacon's map leaves
    // it out.
    let scaled = app
        .patch(
            &format!("/v1/networks/{id}"),
            &org.token,
            json!({"validator_pool": 1}),
        )
        .await;
    assert_eq!(scaled.status, StatusCode::OK, "{}", scaled.text);
    let started = std::time::Instant::now();
    eventually(
        "pool-1 to stop once the beacon leaves it out",
        WAIT,
        async || {
            // Stopped first, the map read after: a map that still places it then placed
            // it when it stopped (the beacon does not place a deregistered validator
            // again).
            let stopped = processes_for(&pool[1]).is_empty();
            let map = node_call(&beacon, "trellis_getShardMap", Value::Null).await?;
            if stopped {
                assert_eq!(
                    placed(&map, &pool_keys[1]),
                    None,
                    "stopped while placed: {map}"
                );
            }
            stopped.then_some(())
        },
    )
    .await;
    eprintln!("pool-1 left after {:?}", started.elapsed());
    assert_eq!(
        system_sequence(&beacon, &pool_keys[1]).await,
        2,
        "registered, then deregistered by its own key"
    );
    assert_eq!(processes_for(&pool[0]).len(), 1, "pool-0 stays");

    // Scale-up 1 -> 2: pool-1 runs again from its keys and is registered and placed.
    let scaled = app
        .patch(
            &format!("/v1/networks/{id}"),
            &org.token,
            json!({"validator_pool": 2}),
        )
        .await;
    assert_eq!(scaled.status, StatusCode::OK, "{}", scaled.text);
    eventually("pool-1 to be placed again", WAIT, async || {
        let map = node_call(&beacon, "trellis_getShardMap", Value::Null).await?;
        (placed(&map, &pool_keys[1]).is_some() && processes_for(&pool[1]).len() == 1).then_some(())
    })
    .await;
    assert_eq!(node_key(&pool[1]), pool_keys[1], "the same key");
    assert_eq!(system_sequence(&beacon, &pool_keys[1]).await, 3);

    let deleted = app.delete(&format!("/v1/networks/{id}"), &org.token).await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT, "{}", deleted.text);
    assert!(pool.iter().all(|d| processes_for(d).is_empty()));
}
