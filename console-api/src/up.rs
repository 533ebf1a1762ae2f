//! `trellis-console up`: the whole product on one machine.
//!
//! `main.rs` starts the console (SQLite in the data dir, the local provisioner) and then
//! hands its own URL to [`bootstrap`], which talks to it like any client would: it
//! signs up the first admin (once per data dir), creates an API key, and with `--demo`
//! creates a 3-organisation consortium, sends a first transfer through the node RPC proxy
//! and waits until it is final, then creates a 2-shard public network (one sharded
//! network: a beacon committee and two shard committees) and waits for a transfer on
//! it too. Credentials are printed to stdout once and never logged.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use trellis_node_api::methods;
use trellis_node_types::{
    Encode as _, Signer as _, TxKind, UnsignedTx, private_key_from_hex, to_hex,
};
use uuid::Uuid;

use crate::provisioner::local::LocalProvisioner;
use crate::provisioner::local::record::write_atomically;

pub const ADMIN_EMAIL: &str = "admin@trellis.local";
pub const ADMIN_ORGANISATION: &str = "Trellis";
pub const DEMO_CONSORTIUM: &str = "demo-consortium";
pub const DEMO_PUBLIC: &str = "demo-public";
/// How long `--demo` waits for its first transfer to become final.
const DEMO_DEADLINE: Duration = Duration::from_secs(180);

/// What `up` remembers about a data dir (no secrets): `<data-dir>/up.json`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct UpRecord {
    pub admin_email: String,
    pub tenant_id: Option<Uuid>,
    #[serde(default)]
    pub demo_networks: Vec<DemoNetwork>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DemoNetwork {
    pub name: String,
    pub id: Uuid,
}

fn record_path(data_dir: &Path) -> PathBuf {
    data_dir.join("up.json")
}

fn load_record(data_dir: &Path) -> Option<UpRecord> {
    serde_json::from_slice(&std::fs::read(record_path(data_dir)).ok()?).ok()
}

fn save_record(data_dir: &Path, record: &UpRecord) -> Result<(), String> {
    let bytes = serde_json::to_vec_pretty(record).map_err(|e| e.to_string())?;
    write_atomically(&record_path(data_dir), &bytes).map_err(|e| format!("writing up.json: {e}"))
}

/// A client of the console's own HTTP API.
pub struct ConsoleClient {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl ConsoleClient {
    pub fn new(base: &str) -> Result<Self, String> {
        Ok(Self {
            http: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(30))
                .build()
                .map_err(|e| e.to_string())?,
            base: base.trim_end_matches('/').to_string(),
            token: None,
        })
    }

    pub fn with_token(mut self, token: String) -> Self {
        self.token = Some(token);
        self
    }

    /// `(status, body)`; transport failures are errors.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value), String> {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.map_err(|e| format!("{path}: {e}"))?;
        let status = response.status().as_u16();
        let body = response.json().await.unwrap_or(Value::Null);
        Ok((status, body))
    }

    async fn expect(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        want: u16,
    ) -> Result<Value, String> {
        let (status, body) = self.call(method, path, body).await?;
        if status != want {
            return Err(format!(
                "{path} answered {status}: {}",
                body.get("detail").and_then(Value::as_str).unwrap_or("")
            ));
        }
        Ok(body)
    }

    /// One JSON-RPC call through the proxy: the result, or the error as text.
    pub async fn rpc(&self, network: Uuid, method: &str, params: Value) -> Result<Value, String> {
        self.rpc_via(network, None, method, params).await
    }

    /// One JSON-RPC call through the proxy to any node of the network, or to a node of
    /// `shard` (reads about a sharded network's accounts and transactions must go to
    /// the shard that holds them; a transaction may be sent to any node).
    pub async fn rpc_via(
        &self,
        network: Uuid,
        shard: Option<u16>,
        method: &str,
        params: Value,
    ) -> Result<Value, String> {
        let path = match shard {
            Some(shard) => format!("/v1/networks/{network}/shards/{shard}/rpc"),
            None => format!("/v1/networks/{network}/rpc"),
        };
        let (status, body) = self
            .call(
                reqwest::Method::POST,
                &path,
                Some(json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params})),
            )
            .await?;
        if status != 200 {
            return Err(format!("proxy answered {status}: {body}"));
        }
        if let Some(error) = body.get("error") {
            return Err(format!("{method}: {error}"));
        }
        Ok(body.get("result").cloned().unwrap_or(Value::Null))
    }
}

/// A signed transfer from the key in `key_file` (a `trellis-node keygen` file; its admin
/// key is the account) and its hash.
pub fn signed_transfer(
    key_file: &Path,
    chain_id: &str,
    nonce: u64,
    to_hex_key: &str,
    amount: u64,
) -> Result<String, String> {
    let text = std::fs::read_to_string(key_file)
        .map_err(|e| format!("reading {}: {e}", key_file.display()))?;
    let keys: Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    let key = keys["admin_key"]
        .as_str()
        .and_then(private_key_from_hex)
        .ok_or_else(|| format!("{} holds no admin key", key_file.display()))?;
    let to = trellis_node_types::public_key_from_hex(to_hex_key)
        .ok_or_else(|| format!("{to_hex_key} is not a public key"))?;
    let tx = UnsignedTx {
        chain_id: chain_id.to_string(),
        from: key.public_key(),
        nonce,
        fee: 1,
        kind: TxKind::Transfer { to, amount },
    }
    .sign(&key);
    Ok(to_hex(&tx.encode()))
}

/// The account (hex public key) of a key file's admin key.
fn account_of(key_file: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(key_file)
        .map_err(|e| format!("reading {}: {e}", key_file.display()))?;
    let keys: Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    keys["admin_public_key"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| format!("{} holds no admin public key", key_file.display()))
}

/// A fresh account to send to (nobody needs its private key for the demo). With a
/// table, one in that table: a transfer within a shard (cross-shard transfers wait for
/// the node's receipts, docs/sharding.md).
fn fresh_account(table: Option<u8>) -> Result<String, String> {
    // One key in 256 lands in a given table; the bound only guards a broken RNG.
    for _ in 0..100_000 {
        let mut seed = [0u8; 32];
        rand::fill(&mut seed);
        let Some(key) = trellis_node_types::private_key_from_seed_bytes(seed) else {
            continue;
        };
        let public = key.public_key();
        if table.is_none_or(|t| trellis_node_types::table_of(&public) == t) {
            return Ok(to_hex(public.as_ref()));
        }
    }
    Err("no fresh account could be made".into())
}

/// The outcome of the demo's first transfer.
pub struct FirstTransfer {
    pub hash: String,
    pub height: u64,
    pub chain_id: String,
    pub nonce: u64,
    pub recipient: String,
}

/// Sends a transfer from `network`'s treasury through the proxy and waits until it is
/// final. Retries while the network is still starting. `shard`: a sharded network's
/// shard whose tables hold the treasury (reads go there; the transfer is sent to any
/// node and reaches it by forwarding).
pub async fn first_transfer(
    client: &ConsoleClient,
    network: Uuid,
    treasury: &Path,
    shard: Option<u16>,
    deadline: Instant,
) -> Result<FirstTransfer, String> {
    let account = account_of(treasury)?;
    let table = match shard {
        Some(_) => Some(
            trellis_node_types::public_key_from_hex(&account)
                .map(|k| trellis_node_types::table_of(&k))
                .ok_or_else(|| format!("{account} is not a public key"))?,
        ),
        None => None,
    };
    let recipient = fresh_account(table)?;
    let mut last = String::new();
    // 1. Until a node answers and the chain has finalized a block.
    let (chain_id, nonce) = loop {
        if Instant::now() > deadline {
            return Err(format!("the network did not start in time: {last}"));
        }
        let attempt = async {
            let status = client
                .rpc_via(network, shard, methods::STATUS, Value::Null)
                .await?;
            let chain_id = status["chain_id"].as_str().unwrap_or_default().to_string();
            let info = client
                .rpc_via(
                    network,
                    shard,
                    methods::GET_ACCOUNT,
                    json!({"account": account}),
                )
                .await?;
            let nonce = info["nonce"].as_u64().ok_or("account without nonce")?;
            Ok::<_, String>((chain_id, nonce))
        };
        match attempt.await {
            Ok(found) => break found,
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // 2. Send (again, while the mempool is not accepting yet).
    let tx = signed_transfer(treasury, &chain_id, nonce, &recipient, 1_000)?;
    let hash = loop {
        if Instant::now() > deadline {
            return Err(format!("the transfer was not accepted in time: {last}"));
        }
        match client
            .rpc(network, methods::SEND_TRANSACTION, json!({"tx": tx}))
            .await
        {
            Ok(result) => break result["hash"].as_str().unwrap_or_default().to_string(),
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // 3. Until it is final.
    loop {
        if Instant::now() > deadline {
            return Err(format!("the transfer {hash} was not final in time: {last}"));
        }
        match client
            .rpc_via(
                network,
                shard,
                methods::GET_TRANSACTION,
                json!({"hash": hash}),
            )
            .await
        {
            Ok(status) if status["state"] == "committed" => {
                if status["success"] != Value::Bool(true) {
                    return Err(format!("the transfer failed: {status}"));
                }
                return Ok(FirstTransfer {
                    hash,
                    height: status["height"].as_u64().unwrap_or(0),
                    chain_id,
                    nonce,
                    recipient,
                });
            }
            Ok(_) => {}
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn random_password() -> String {
    use base64::Engine as _;
    let mut bytes = [0u8; 18];
    rand::fill(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Signs up the first admin, or recognises that it exists. Returns an access token when
/// it was created now.
async fn first_admin(
    client: &ConsoleClient,
    data_dir: &Path,
    out: &mut impl Write,
) -> Result<(UpRecord, Option<String>), String> {
    if let Some(record) = load_record(data_dir) {
        let _ = writeln!(
            out,
            "Admin: {} (its password and API key were printed when it was created)",
            record.admin_email
        );
        return Ok((record, None));
    }
    let password = random_password();
    let (status, body) = client
        .call(
            reqwest::Method::POST,
            "/v1/auth/signup",
            Some(json!({
                "organisation": ADMIN_ORGANISATION,
                "email": ADMIN_EMAIL,
                "password": password,
            })),
        )
        .await?;
    if status == 409 {
        // Created by an earlier `up` that stopped before writing up.json.
        let record = UpRecord {
            admin_email: ADMIN_EMAIL.to_string(),
            ..UpRecord::default()
        };
        save_record(data_dir, &record)?;
        let _ = writeln!(
            out,
            "Admin: {ADMIN_EMAIL} (already exists; its password was printed when it was created)"
        );
        return Ok((record, None));
    }
    if status != 201 {
        return Err(format!("creating the first admin: {status} {body}"));
    }
    let token = body["tokens"]["access_token"]
        .as_str()
        .ok_or("signup returned no token")?
        .to_string();
    let authed = ConsoleClient::new(&client.base)?.with_token(token.clone());
    let key = authed
        .expect(
            reqwest::Method::POST,
            "/v1/api-keys",
            Some(json!({"name": "up", "role": "admin"})),
            201,
        )
        .await?;
    let record = UpRecord {
        admin_email: ADMIN_EMAIL.to_string(),
        tenant_id: body["tenant"]["id"].as_str().and_then(|s| s.parse().ok()),
        demo_networks: Vec::new(),
    };
    save_record(data_dir, &record)?;
    let _ = writeln!(out, "First admin (shown once — store it now):");
    let _ = writeln!(out, "  e-mail    {ADMIN_EMAIL}");
    let _ = writeln!(out, "  password  {password}");
    let _ = writeln!(
        out,
        "  API key   {}   (admin role: Authorization: Bearer <key>)",
        key["secret"].as_str().unwrap_or("?")
    );
    let _ = writeln!(
        out,
        "export TRELLIS_TOKEN={}",
        key["secret"].as_str().unwrap_or("?")
    );
    Ok((record, Some(token)))
}

/// Everything `up` does once the console listens at `base`.
pub async fn bootstrap(
    base: &str,
    data_dir: &Path,
    demo: bool,
    local: &LocalProvisioner,
    started: Instant,
    out: &mut impl Write,
) -> Result<(), String> {
    let client = ConsoleClient::new(base)?;
    let _ = writeln!(
        out,
        "Trellis console (embedded: SQLite and local nodes in {})",
        data_dir.display()
    );
    let _ = writeln!(out, "  API       {base}/v1");
    let _ = writeln!(out, "  OpenAPI   {base}/openapi.json");
    let _ = writeln!(
        out,
        "  health    {base}/healthz   {base}/readyz   metrics {base}/metrics"
    );
    let (mut record, token) = first_admin(&client, data_dir, out).await?;
    if !demo {
        let _ = writeln!(
            out,
            "Ready. Ctrl-C stops the console and its nodes; `up` again resumes them."
        );
        return Ok(());
    }
    if !record.demo_networks.is_empty() {
        let _ = writeln!(
            out,
            "Demo networks (resumed; their nodes are adopted or restarted):"
        );
        for n in &record.demo_networks {
            let _ = writeln!(
                out,
                "  {:<16} {}   {base}/v1/networks/{}/rpc",
                n.name, n.id, n.id
            );
        }
        let _ = writeln!(
            out,
            "Ready. Ctrl-C stops the console and its nodes; `up` again resumes them."
        );
        return Ok(());
    }
    let Some(token) = token else {
        return Err(
            "--demo on a data dir whose admin was created without it: the demo needs the \
             admin's first session; use a fresh --data-dir"
                .to_string(),
        );
    };
    let client = client.with_token(token);
    let consortium = client
        .expect(
            reqwest::Method::POST,
            "/v1/networks",
            Some(json!({
                "name": DEMO_CONSORTIUM,
                "mode": "consortium",
                "members": [
                    {"organisation": "Org A", "nodes": 1},
                    {"organisation": "Org B", "nodes": 1},
                    {"organisation": "Org C", "nodes": 1},
                ],
            })),
            201,
        )
        .await?;
    let consortium_id: Uuid = consortium["id"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .ok_or("network without id")?;
    record.demo_networks.push(DemoNetwork {
        name: DEMO_CONSORTIUM.to_string(),
        id: consortium_id,
    });
    save_record(data_dir, &record)?;
    let _ = writeln!(out, "Demo networks:");
    let _ = writeln!(
        out,
        "  {DEMO_CONSORTIUM:<16} {consortium_id}  consortium of Org A, Org B, Org C (one validator each)"
    );
    let treasury = local.treasury_key_file(consortium_id);
    let first = first_transfer(
        &client,
        consortium_id,
        &treasury,
        None,
        Instant::now() + DEMO_DEADLINE,
    )
    .await?;
    let _ = writeln!(
        out,
        "First transfer final on {DEMO_CONSORTIUM} at height {} in {:.3} s after start (tx {})",
        first.height,
        started.elapsed().as_secs_f64(),
        first.hash
    );
    // The public network's 12 nodes start after the first transfer: on a small machine
    // they would otherwise slow the consortium's first blocks.
    let public = client
        .expect(
            reqwest::Method::POST,
            "/v1/networks",
            Some(json!({
                "name": DEMO_PUBLIC,
                "mode": "public",
                "shards": {"count": 2, "min": 1, "max": 2},
                "validators_per_shard": 4,
            })),
            201,
        )
        .await?;
    let public_id: Uuid = public["id"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .ok_or("network without id")?;
    record.demo_networks.push(DemoNetwork {
        name: DEMO_PUBLIC.to_string(),
        id: public_id,
    });
    save_record(data_dir, &record)?;
    let _ = writeln!(
        out,
        "  {DEMO_PUBLIC:<16} {public_id}  public, one sharded network: a beacon committee of 4 and 2 shards × 4 validators"
    );
    let public_treasury = local.shard_treasury_key_file(public_id, 0);
    let on_shard = first_transfer(
        &client,
        public_id,
        &public_treasury,
        Some(0),
        Instant::now() + DEMO_DEADLINE,
    )
    .await?;
    let _ = writeln!(
        out,
        "Transfer final on {DEMO_PUBLIC} shard 0 at height {} in {:.3} s after start (tx {})",
        on_shard.height,
        started.elapsed().as_secs_f64(),
        on_shard.hash
    );
    let next = signed_transfer(
        &treasury,
        &first.chain_id,
        first.nonce + 1,
        &first.recipient,
        5,
    )?;
    let _ = writeln!(
        out,
        "Send a transaction (a transfer of 5 from the treasury, signed for you):"
    );
    let _ = writeln!(
        out,
        "  curl -s -H \"Authorization: Bearer $TRELLIS_TOKEN\" -H 'content-type: application/json' \\\n    \
         -d '{{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"trellis_sendTransaction\",\"params\":{{\"tx\":\"{next}\"}}}}' \\\n    \
         {base}/v1/networks/{consortium_id}/rpc"
    );
    let _ = writeln!(out, "Look it up with the returned hash:");
    let _ = writeln!(
        out,
        "  curl -s -H \"Authorization: Bearer $TRELLIS_TOKEN\" -H 'content-type: application/json' \\\n    \
         -d '{{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"trellis_getTransaction\",\"params\":{{\"hash\":\"<hash>\"}}}}' \\\n    \
         {base}/v1/networks/{consortium_id}/rpc"
    );
    let _ = writeln!(
        out,
        "The treasury (funded at genesis) signs with {}; {DEMO_PUBLIC}'s shard 0 account \
         with {} (shard 1's: treasury-shard-1.json beside it)",
        treasury.display(),
        public_treasury.display()
    );
    let _ = writeln!(
        out,
        "Ready. Ctrl-C stops the console and its nodes; `up` again resumes them."
    );
    Ok(())
}
