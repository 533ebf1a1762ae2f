//! Local mode's built-in autoscaler with real `trellis-node` processes on loopback
//! (127.0.92.0/24): a public network with autoscaling enabled and low targets takes a
//! sustained load of transfers → the autoscaler raises the desired shard count (audited)
//! and the change reaches the beacon (its shard map shows the new count, pending or in
//! force).
//! Real: the console (router, SQLite, the autoscaler loop), the local provisioner, the
//! nodes' consensus, metrics and beacon. Nothing is faked.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::local::{eventually, local_app, node_call};

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::http::StatusCode;
use common::{TestApp, test_settings};
use serde_json::{Value, json};
use trellis_console::networks::autoscale::{self, ACTION, ACTOR};

/// An account (hex) in `table` that nobody funds: a transfer's recipient.
fn account_in_table(table: u8) -> String {
    use trellis_node_types::{Signer as _, table_of, test_key, to_hex};
    (0..)
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

/// The network's `network.autoscale` audit entries, oldest first.
async fn autoscale_entries(app: &TestApp, token: &str) -> Vec<Value> {
    let audit = app.get("/v1/audit-events", token).await;
    let mut entries: Vec<Value> = audit.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == ACTION)
        .cloned()
        .collect();
    entries.sort_by_key(|e| e["created_at"].as_str().unwrap_or_default().to_string());
    entries
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sustained_load_raises_the_shard_count_through_the_beacon() {
    let (app, local, _guard) = local_app(None, "127.0.92.0/24", test_settings()).await;
    // What `trellis-console` runs in local mode (here every 2 s).
    let autoscaler = tokio::spawn(autoscale::run(app.state.clone(), Duration::from_secs(2)));

    let org = app.signup("Surge Ltd", "ops@surge.example").await;
    let created = app
        .post(
            "/v1/networks",
            &org.token,
            json!({"name": "surge", "mode": "public", "retain_ledger_on_delete": false,
                   "shards": {"count": 1, "min": 1, "max": 2},
                   "validators_per_shard": 4, "beacon_validators": 4, "epoch_length": 10,
                   "autoscaling": {"enabled": true, "target_tx_per_second_per_shard": 1,
                                   "target_mempool_depth": 1, "cooldown_seconds": 30,
                                   "stabilization_window_seconds": 0}}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    let id = created.body["id"].as_str().unwrap().to_string();
    let network = local.settings().root.join("networks").join(&id);
    let genesis = std::fs::read_dir(&network)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with(".genesis.json"))
        .unwrap();
    let genesis: Value = serde_json::from_str(&std::fs::read_to_string(genesis).unwrap()).unwrap();
    let beacon = genesis["sharding"]["beacon"][0]["rpc_address"]
        .as_str()
        .unwrap()
        .to_string();
    let shard0 = genesis["sharding"]["validators"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["shard"] == 0)
        .unwrap()["rpc_address"]
        .as_str()
        .unwrap()
        .to_string();

    // Idle and finalizing: nothing to scale yet.
    let chain_id = eventually(
        "shard 0 to finalize",
        Duration::from_secs(240),
        async || {
            let status = node_call(&shard0, "trellis_status", Value::Null).await?;
            (status["finalized_height"].as_u64()? > 0)
                .then(|| status["chain_id"].as_str().map(str::to_owned))
                .flatten()
        },
    )
    .await;
    assert!(autoscale_entries(&app, &org.token).await.is_empty());

    // A sustained load of transfers from shard 0's treasury (to an account in the same
    // table, so every one stays on shard 0): far above 1 tx/s.
    let treasury = local.shard_treasury_key_file(id.parse().unwrap(), 0);
    let recipient = account_in_table(table_of_key_file(&treasury));
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn({
        let stop = stop.clone();
        let shard0 = shard0.clone();
        async move {
            let mut nonce = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let tx = trellis_console::up::signed_transfer(
                    &treasury, &chain_id, nonce, &recipient, 1,
                )
                .unwrap();
                if node_call(&shard0, "trellis_sendTransaction", json!({"tx": tx}))
                    .await
                    .is_some()
                {
                    nonce += 1;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            nonce
        }
    });

    // The autoscaler raises the desired count, says why, and the beacon takes it.
    let entry = eventually(
        "the autoscaler to raise the shard count",
        Duration::from_secs(300),
        async || autoscale_entries(&app, &org.token).await.first().cloned(),
    )
    .await;
    assert_eq!(entry["actor"], ACTOR, "{entry}");
    assert_eq!(
        (&entry["details"]["from"], &entry["details"]["to"]),
        (&json!(1), &json!(2))
    );
    assert!(
        entry["details"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("1 -> 2")),
        "{entry}"
    );
    let got = app.get(&format!("/v1/networks/{id}"), &org.token).await;
    assert_eq!(got.body["spec"]["shards"]["count"], 2, "{}", got.text);
    assert_eq!(got.body["autoscaler"]["to"], 2, "{}", got.text);
    assert_eq!(got.body["autoscaler"]["reason"], entry["details"]["reason"]);
    eventually(
        "the beacon's map to show 2 shards (pending or in force)",
        Duration::from_secs(300),
        async || {
            let map = node_call(&beacon, "trellis_getShardMap", Value::Null).await?;
            (map["shard_count"] == 2 || map["pending_shard_count"] == 2).then_some(())
        },
    )
    .await;

    // The load ends. (Lowering the count again needs a reading from every in-service
    // shard, and the new shard's nodes start only once the node's live resharding lands:
    // until then the autoscaler holds; tests/autoscale.rs covers the scale-in decision.)
    stop.store(true, Ordering::Relaxed);
    let sent = load.await.unwrap();
    assert!(sent > 0, "the load generator sent nothing");

    autoscaler.abort();
    let deleted = app.delete(&format!("/v1/networks/{id}"), &org.token).await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT, "{}", deleted.text);
    local.stop_all().await;
}
