//! The local provisioner with real `trellis-node` processes on loopback (addresses
//! 127.0.2.0/24, 127.0.3.0/24, 127.0.9.0/24): a network created through the API finalizes a
//! transfer sent through the node RPC proxy; a node killed with SIGKILL is restarted; the
//! proxy refuses another tenant's network and rate-limits; delete stops every process
//! and removes the data.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::local::{eventually, local_app, node_call, processes_for};

use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::http::StatusCode;
use common::{TestApp, assert_problem, test_settings};
use serde_json::{Value, json};
use trellis_console::provisioner::{NetworkRef, ObservedPhase, Provisioner};

/// Settings with the node RPC proxy limited to `per_minute` requests per tenant (0:
/// unlimited).
fn rpc_limited(per_minute: u32) -> trellis_console::app::Settings {
    trellis_console::app::Settings {
        rpc_requests_per_minute: per_minute,
        ..test_settings()
    }
}

async fn rpc(
    app: &TestApp,
    token: &str,
    network: &str,
    method: &str,
    params: Value,
) -> (StatusCode, Value) {
    let r = app
        .post(
            &format!("/v1/networks/{network}/rpc"),
            token,
            json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}),
        )
        .await;
    (r.status, r.body)
}

/// Reads `method` through the console's RPC proxy until its `result` satisfies
/// `accept`, and returns that result. Reads rotate over the validators, and a node that
/// answered before executing the latest block answers with an older value: the loop
/// reads again rather than asserting on one answer.
async fn read_until(
    app: &TestApp,
    token: &str,
    id: &str,
    method: &str,
    params: Value,
    accept: impl Fn(&Value) -> bool,
) -> Value {
    eventually(
        &format!("{method} {params} to show the expected value"),
        Duration::from_secs(120),
        async || {
            let (code, body) = rpc(app, token, id, method, params.clone()).await;
            let result = body.get("result").filter(|_| code == StatusCode::OK)?;
            accept(result).then(|| result.clone())
        },
    )
    .await
}

/// The local provisioner knows a network by its id.
fn network_ref(tenant: &str, network: &str) -> NetworkRef {
    NetworkRef {
        tenant_id: tenant.parse().unwrap(),
        tenant_slug: String::new(),
        network_id: network.parse().unwrap(),
        name: String::new(),
    }
}

/// The whole life of a local network, on the database at `url` (SQLite when `None`).
async fn network_lifecycle(url: Option<String>, range: &str) {
    let (app, local, _guard) = local_app(url, range, rpc_limited(0)).await;
    let org = app.signup("Local Ltd", "ops@local.example").await;
    let other = app.signup("Other Ltd", "ops@other.example").await;
    let created = app
        .post(
            "/v1/networks",
            &org.token,
            json!({"name": "ledger", "mode": "consortium", "retain_ledger_on_delete": false,
                   "members": [{"organisation": "A", "nodes": 1}, {"organisation": "B", "nodes": 1},
                               {"organisation": "C", "nodes": 1}, {"organisation": "D", "nodes": 1}]}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    let id = created.body["id"].as_str().unwrap().to_string();
    let network_dir = local.settings().root.join("networks").join(&id);
    let node_dirs: Vec<PathBuf> = std::fs::read_dir(network_dir.join("nodes"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(node_dirs.len(), 4);

    // A transfer sent through the proxy finalizes.
    let treasury = local.treasury_key_file(id.parse().unwrap());
    let status = read_until(&app, &org.token, &id, "trellis_status", Value::Null, |r| {
        r["finalized_height"].as_u64().is_some_and(|h| h > 0)
    })
    .await;
    let chain_id = status["chain_id"].as_str().unwrap().to_string();
    let account = {
        let keys: Value =
            serde_json::from_str(&std::fs::read_to_string(&treasury).unwrap()).unwrap();
        keys["admin_public_key"].as_str().unwrap().to_string()
    };
    let recipient = "11".repeat(32);
    let tx =
        trellis_console::up::signed_transfer(&treasury, &chain_id, 0, &recipient, 250).unwrap();
    let (code, sent) = rpc(
        &app,
        &org.token,
        &id,
        "trellis_sendTransaction",
        json!({"tx": tx}),
    )
    .await;
    assert_eq!(code, StatusCode::OK, "{sent}");
    let hash = sent["result"]["hash"].as_str().unwrap().to_string();
    read_until(
        &app,
        &org.token,
        &id,
        "trellis_getTransaction",
        json!({"hash": hash}),
        |r| r["state"] == "committed",
    )
    .await;
    // Reads rotate over the validators, and "committed" on one of them says nothing of
    // whether the one answering next has executed that block yet.
    eventually(
        "every validator to show the credited balance",
        Duration::from_secs(60),
        async || {
            for _ in 0..4 {
                let (_, balance) = rpc(
                    &app,
                    &org.token,
                    &id,
                    "trellis_getAccount",
                    json!({"account": recipient}),
                )
                .await;
                if balance["result"]["balance"] != 250 {
                    return None;
                }
            }
            Some(())
        },
    )
    .await;
    let (_, treasury_after) = rpc(
        &app,
        &org.token,
        &id,
        "trellis_getAccount",
        json!({"account": account}),
    )
    .await;
    assert_eq!(treasury_after["result"]["nonce"], 1);

    // The provisioner reads the network's state back from its nodes.
    let reference = network_ref(&org.tenant_id, &id);
    let observed = eventually(
        "the network to be Running",
        Duration::from_secs(60),
        async || {
            let status = local.observe(&reference).await.unwrap()?;
            (status.phase == ObservedPhase::Running).then_some(status)
        },
    )
    .await;
    assert_eq!(observed.shards.len(), 1);
    assert_eq!(observed.shards[0].ready_validators, 4);
    assert!(observed.shards[0].finalized_height > 0);
    assert_eq!(observed.rpc_endpoints.len(), 4);

    // A node killed with SIGKILL is restarted: one process per data dir again, a new pid.
    let victim = &node_dirs[1];
    let before = processes_for(victim);
    assert_eq!(before.len(), 1, "one process for {}", victim.display());
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &before[0].to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let after = eventually(
        "the killed node to be restarted",
        Duration::from_secs(30),
        async || {
            let now = processes_for(victim);
            (now.len() == 1 && now[0] != before[0]).then_some(now)
        },
    )
    .await;
    assert_eq!(after.len(), 1);
    let height = observed.shards[0].finalized_height;
    eventually(
        "the chain to keep finalizing",
        Duration::from_secs(60),
        async || {
            let status = local.observe(&reference).await.unwrap()?;
            (status.shards[0].finalized_height > height + 2
                && status.shards[0].ready_validators == 4)
                .then_some(())
        },
    )
    .await;
    for dir in &node_dirs {
        assert_eq!(processes_for(dir).len(), 1, "{}", dir.display());
    }

    // Another tenant's network is not found; a viewer may read but not send.
    let (code, body) = rpc(&app, &other.token, &id, "trellis_status", Value::Null).await;
    assert_eq!(code, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["code"], "not_found");
    let viewer = app
        .user_with_role(&org, "viewer@local.example", "viewer")
        .await;
    let (code, _) = rpc(&app, &viewer, &id, "trellis_status", Value::Null).await;
    assert_eq!(code, StatusCode::OK);
    let (code, body) = rpc(
        &app,
        &viewer,
        &id,
        "trellis_sendTransaction",
        json!({"tx": tx}),
    )
    .await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{body}");
    let bad = app
        .post(&format!("/v1/networks/{id}/rpc"), &org.token, json!([]))
        .await;
    assert_problem(&bad, StatusCode::BAD_REQUEST, "invalid_rpc_request");
    let huge = app
        .post(
            &format!("/v1/networks/{id}/rpc"),
            &org.token,
            json!({"method": "trellis_status", "params": {"pad": "x".repeat(70 * 1024)}}),
        )
        .await;
    assert_problem(&huge, StatusCode::PAYLOAD_TOO_LARGE, "body_too_large");

    // Delete stops every process and removes the data (retain_ledger_on_delete: false).
    let deleted = app.delete(&format!("/v1/networks/{id}"), &org.token).await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT, "{}", deleted.text);
    for dir in &node_dirs {
        assert!(
            processes_for(dir).is_empty(),
            "{} still runs",
            dir.display()
        );
    }
    assert!(!network_dir.exists());
    assert_eq!(local.observe(&reference).await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_network_lifecycle_sqlite() {
    network_lifecycle(None, "127.0.2.0/24").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_network_lifecycle_postgres() {
    let Some(url) = common::postgres_url().await else {
        eprintln!("SKIPPED: local_network_lifecycle on PostgreSQL");
        return;
    };
    network_lifecycle(Some(url), "127.0.3.0/24").await;
}

/// Each tenant has its own RPC budget (3 a minute here), counted before the network is
/// looked up, so probing ids spends it too.
#[tokio::test]
async fn the_rpc_proxy_rate_limits_each_tenant() {
    let (app, _local, _guard) = local_app(None, "127.0.2.0/24", rpc_limited(3)).await;
    let org = app.signup("Busy Ltd", "ops@busy.example").await;
    let other = app.signup("Calm Ltd", "ops@calm.example").await;
    let path = format!("/v1/networks/{}/rpc", uuid::Uuid::now_v7());
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "trellis_status"});
    for _ in 0..3 {
        let r = app.post(&path, &org.token, body.clone()).await;
        assert_problem(&r, StatusCode::NOT_FOUND, "not_found");
    }
    let limited = app.post(&path, &org.token, body.clone()).await;
    assert_problem(&limited, StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    assert!(limited.headers.contains_key("retry-after"));
    let fresh = app.post(&path, &other.token, body).await;
    assert_problem(&fresh, StatusCode::NOT_FOUND, "not_found");
}

#[tokio::test]
async fn a_sharded_consortium_is_refused_with_a_clear_error() {
    let (app, _local, _guard) = local_app(None, "127.0.2.0/24", rpc_limited(0)).await;
    let org = app.signup("Shards Ltd", "ops@shards.example").await;
    let created = app
        .post(
            "/v1/networks",
            &org.token,
            json!({"name": "sharded", "mode": "consortium",
                   "shards": {"count": 2, "min": 1, "max": 2},
                   "members": [{"organisation": "A", "nodes": 1}]}),
        )
        .await;
    assert_problem(
        &created,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    );
    assert_eq!(
        created.body["errors"][0]["field"], "shards",
        "{}",
        created.text
    );
    assert!(
        created.body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("a consortium network runs one shard"),
        "{}",
        created.text
    );
    // Refused before anything was recorded or provisioned.
    let listed = app.get("/v1/networks", &org.token).await;
    assert_eq!(listed.body["items"], json!([]), "{}", listed.text);
}

/// With `retain_ledger_on_delete` (the default), delete stops the nodes and moves the
/// network's keys and ledger to `local/retained/<id>`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_keeps_the_ledger_when_the_network_retains_it() {
    let (app, local, _guard) = local_app(None, "127.0.9.0/24", rpc_limited(0)).await;
    let org = app.signup("Keep Ltd", "ops@keep.example").await;
    let created = app
        .post(
            "/v1/networks",
            &org.token,
            json!({"name": "kept", "mode": "consortium",
                   "members": [{"organisation": "Solo", "nodes": 1}]}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    let id = created.body["id"].as_str().unwrap().to_string();
    let node_dir = local
        .settings()
        .root
        .join("networks")
        .join(&id)
        .join("nodes/kept-solo-0");
    eventually(
        "the node to write its ledger",
        Duration::from_secs(60),
        async || {
            (processes_for(&node_dir).len() == 1 && node_dir.join("data").is_dir()).then_some(())
        },
    )
    .await;
    let deleted = app.delete(&format!("/v1/networks/{id}"), &org.token).await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT, "{}", deleted.text);
    assert!(processes_for(&node_dir).is_empty());
    let retained = local.settings().root.join("retained").join(&id);
    assert!(retained.join("nodes/kept-solo-0/data").is_dir());
    assert!(retained.join("nodes/kept-solo-0/keys.json").is_file());
    assert!(!local.settings().root.join("networks").join(&id).exists());
}

/// An account (hex) in `table` that nobody funds: a transfer's recipient.
fn account_in_table(table: u8, seed: u64) -> String {
    use trellis_node_types::{Signer as _, table_of, test_key, to_hex};
    (seed..)
        .map(test_key)
        .find(|k| table_of(&k.public_key()) == table)
        .map(|k| to_hex(k.public_key().as_ref()))
        .unwrap()
}

/// The table of a key file's account (its admin key).
fn table_of_key_file(path: &Path) -> u8 {
    let keys: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let key = trellis_node_types::public_key_from_hex(keys["admin_public_key"].as_str().unwrap())
        .unwrap();
    trellis_node_types::table_of(&key)
}

/// The shard map, read through the proxy from a node of shard `via` (the map as far as
/// that shard followed the beacon).
async fn shard_map(app: &TestApp, token: &str, id: &str, via: u32) -> Option<Value> {
    let r = app
        .post(
            &format!("/v1/networks/{id}/shards/{via}/rpc"),
            token,
            json!({"jsonrpc": "2.0", "id": 1, "method": "trellis_getShardMap"}),
        )
        .await;
    (r.status == StatusCode::OK).then(|| r.body["result"].clone())
}

/// The beacon's own shard map, from a beacon node (`host:port` from the genesis): a
/// shard's follower stops before a shard-count change until live resharding lands.
async fn beacon_map(beacon: &str) -> Option<Value> {
    node_call(beacon, "trellis_getShardMap", Value::Null).await
}

/// A public network in local mode is one sharded network: a beacon committee and one
/// committee per shard on one chain id and one genesis; a transfer sent to the network
/// reaches the shard that owns its sender; the status reads the beacon's map; scaling
/// goes through the beacon (SetShardCount signed with the network admin key), a
/// scale-in stops a shard's processes only once the beacon has taken its tables, and a
/// scale-out registers the new shard's validators with the beacon.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_public_network_is_one_sharded_network_scaled_through_its_beacon() {
    let (app, local, _guard) = local_app(None, "127.0.90.0/24", rpc_limited(0)).await;
    let org = app.signup("Shard Ltd", "ops@shard.example").await;
    let created = app
        .post(
            "/v1/networks",
            &org.token,
            json!({"name": "pay", "mode": "public", "retain_ledger_on_delete": false,
                   "shards": {"count": 2, "min": 1, "max": 3},
                   "validators_per_shard": 4, "beacon_validators": 4, "epoch_length": 10}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    let id = created.body["id"].as_str().unwrap().to_string();
    let network = local.settings().root.join("networks").join(&id);
    let reference = network_ref(&org.tenant_id, &id);

    // One genesis with a sharding section; node configs name their committee.
    let genesis: Vec<PathBuf> = std::fs::read_dir(&network)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".genesis.json"))
        .collect();
    assert_eq!(genesis.len(), 1, "{genesis:?}");
    let genesis: Value =
        serde_json::from_str(&std::fs::read_to_string(&genesis[0]).unwrap()).unwrap();
    let sharding = &genesis["sharding"];
    assert_eq!(sharding["mode"], "public");
    assert_eq!(sharding["shard_count"], 2);
    assert_eq!(sharding["max_shards"], 3);
    assert_eq!(sharding["beacon"].as_array().unwrap().len(), 4);
    assert_eq!(sharding["validators"].as_array().unwrap().len(), 8);
    let beacon = sharding["beacon"][0]["rpc_address"]
        .as_str()
        .unwrap()
        .to_string();
    let admin: Value =
        serde_json::from_str(&std::fs::read_to_string(network.join("admin.json")).unwrap())
            .unwrap();
    assert_eq!(sharding["admin_key"], admin["admin_public_key"]);
    let config = std::fs::read_to_string(network.join("nodes/pay-beacon-0/node.toml")).unwrap();
    assert!(config.contains("kind = \"beacon\""), "{config}");
    let config = std::fs::read_to_string(network.join("nodes/pay-shard-1-2/node.toml")).unwrap();
    assert!(
        config.contains("kind = \"shard\"") && config.contains("shard = 1"),
        "{config}"
    );

    let observed = eventually(
        "the sharded network to be Running",
        Duration::from_secs(240),
        async || {
            let status = local.observe(&reference).await.unwrap()?;
            (status.phase == ObservedPhase::Running
                && status.shards.iter().all(|s| s.finalized_height > 0))
            .then_some(status)
        },
    )
    .await;
    assert_eq!(observed.shard_count, 2, "{observed:?}");
    assert_eq!(
        observed.shards.iter().map(|s| s.id).collect::<Vec<_>>(),
        [0, 1]
    );
    assert!(observed.shards.iter().all(|s| s.ready_validators == 4));
    // Clients reach shard nodes only (8), never the beacon's.
    assert_eq!(observed.rpc_endpoints.len(), 8);

    // A transfer on each shard, sent to the network (any shard node), finalizes on the
    // shard that owns its sender.
    for shard in 0..2u16 {
        let treasury = local.shard_treasury_key_file(id.parse().unwrap(), shard);
        let table = table_of_key_file(&treasury);
        let recipient = account_in_table(table, 1_000 * u64::from(shard));
        let status = read_until(&app, &org.token, &id, "trellis_status", Value::Null, |_| {
            true
        })
        .await;
        let chain_id = status["chain_id"].as_str().unwrap().to_string();
        let tx =
            trellis_console::up::signed_transfer(&treasury, &chain_id, 0, &recipient, 40).unwrap();
        // Sent until a node takes it (one may not have the shard's map yet).
        let sent = read_until(
            &app,
            &org.token,
            &id,
            "trellis_sendTransaction",
            json!({"tx": tx}),
            |_| true,
        )
        .await;
        assert_eq!(sent["shard"], shard, "{sent}");
        let hash = sent["hash"].as_str().unwrap().to_string();
        let route = format!("/v1/networks/{id}/shards/{shard}/rpc");
        let height = eventually(
            "the transfer to finalize on its shard",
            Duration::from_secs(120),
            async || {
                let r = app
                    .post(
                        &route,
                        &org.token,
                        json!({"jsonrpc": "2.0", "id": 1, "method": "trellis_getTransaction",
                               "params": {"hash": hash}}),
                    )
                    .await;
                (r.body["result"]["state"] == "committed" && r.body["result"]["success"] == true)
                    .then(|| r.body["result"]["height"].as_u64())
                    .flatten()
            },
        )
        .await;
        // Every validator of the shard has executed it (reads rotate over them).
        let nodes: Vec<String> = sharding["validators"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|v| v["shard"] == shard)
            .map(|v| v["rpc_address"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(nodes.len(), 4);
        for node in &nodes {
            eventually(
                "every validator to execute it",
                Duration::from_secs(120),
                async || {
                    (node_call(node, "trellis_status", Value::Null).await?["finalized_height"]
                        .as_u64()?
                        >= height)
                        .then_some(())
                },
            )
            .await;
        }
        let r = app
            .post(
                &route,
                &org.token,
                json!({"jsonrpc": "2.0", "id": 1, "method": "trellis_getAccount",
                       "params": {"account": recipient}}),
            )
            .await;
        assert_eq!(r.body["result"]["balance"], 40, "{}", r.text);
        // The any-shard route sends reads to the shard that holds the answer (a node of
        // another shard would answer from a ledger without the account).
        for _ in 0..4 {
            let (_, body) = rpc(
                &app,
                &org.token,
                &id,
                "trellis_getAccount",
                json!({"account": recipient}),
            )
            .await;
            assert_eq!(body["result"]["balance"], 40, "{body}");
            let (_, body) = rpc(
                &app,
                &org.token,
                &id,
                "trellis_getTransaction",
                json!({"hash": hash}),
            )
            .await;
            assert_eq!(body["result"]["state"], "committed", "{body}");
        }
    }
    let map = shard_map(&app, &org.token, &id, 0).await.unwrap();
    assert_eq!(map["shard_count"], 2, "{map}");

    // Scale-in to 1 shard: through the beacon; shard 1's processes stop only once the
    // beacon's map gives it no table.
    let shard1: Vec<PathBuf> = (0..4)
        .map(|i| network.join(format!("nodes/pay-shard-1-{i}")))
        .collect();
    let scaled = app
        .patch(
            &format!("/v1/networks/{id}"),
            &org.token,
            json!({"shards": {"count": 1}}),
        )
        .await;
    assert_eq!(scaled.status, StatusCode::OK, "{}", scaled.text);
    eventually(
        "the beacon to run 1 shard and shard 1 to stop",
        Duration::from_secs(240),
        async || {
            let map = beacon_map(&beacon).await?;
            let tables = map["tables"].as_array()?;
            let stopped = shard1.iter().all(|d| processes_for(d).is_empty());
            if stopped {
                // Never before the beacon took the shard's tables.
                assert_eq!(map["shard_count"], 1, "{map}");
                assert!(tables.iter().all(|t| t == 0), "{map}");
            }
            (stopped && map["shard_count"] == 1).then_some(())
        },
    )
    .await;
    let observed = eventually(
        "the status to show 1 shard",
        Duration::from_secs(60),
        async || {
            let status = local.observe(&reference).await.unwrap()?;
            (status.shard_count == 1 && status.phase != ObservedPhase::Scaling).then_some(status)
        },
    )
    .await;
    assert_eq!(observed.shards.len(), 1, "{observed:?}");
    assert_eq!(observed.rpc_endpoints.len(), 4);

    // Scale-out to 3: shard 1 comes back with its keys, shard 2's new validators are
    // registered with the beacon (signed with their own node keys) and SetShardCount(3)
    // is signed with the admin key; the beacon's map shows them.
    let scaled = app
        .patch(
            &format!("/v1/networks/{id}"),
            &org.token,
            json!({"shards": {"count": 3}}),
        )
        .await;
    assert_eq!(scaled.status, StatusCode::OK, "{}", scaled.text);
    let new_keys: Vec<String> = (0..4)
        .map(|i| {
            let keys: Value = serde_json::from_str(
                &std::fs::read_to_string(network.join(format!("nodes/pay-shard-2-{i}/keys.json")))
                    .unwrap(),
            )
            .unwrap();
            keys["node_public_key"].as_str().unwrap().to_string()
        })
        .collect();
    let map = eventually(
        "the beacon to run 3 shards with shard 2's registered validators",
        Duration::from_secs(300),
        async || {
            let map = beacon_map(&beacon).await?;
            (map["shard_count"] == 3).then_some(map)
        },
    )
    .await;
    let shard2 = map["shards"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["shard"] == 2)
        .unwrap_or_else(|| panic!("no shard 2 in {map}"));
    let mut listed: Vec<String> = shard2["validators"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    listed.sort();
    let mut expected = new_keys.clone();
    expected.sort();
    assert_eq!(listed, expected, "{map}");
    // Shard 1 runs again, from the keys and ledger it kept.
    eventually(
        "shard 1's processes to run again",
        Duration::from_secs(60),
        async || {
            shard1
                .iter()
                .all(|d| processes_for(d).len() == 1)
                .then_some(())
        },
    )
    .await;

    // Delete stops all 16 processes and removes the data.
    let deleted = app.delete(&format!("/v1/networks/{id}"), &org.token).await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT, "{}", deleted.text);
    for entry in ["beacon-0", "shard-0-0", "shard-1-3", "shard-2-1"] {
        assert!(processes_for(&network.join(format!("nodes/pay-{entry}"))).is_empty());
    }
    assert!(!network.exists());
}
