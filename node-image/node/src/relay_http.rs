//! One JSON-RPC call to another node over plain HTTP/1.1 (async, bounded): what a node
//! uses to reach other committees (the beacon, the shard owning a transaction).

use serde_json::{Value, json};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Largest response read (a page of beacon blocks is far below).
const MAX_RESPONSE: u64 = 32 * 1024 * 1024;
/// Time allowed for one call, connection included.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Calls `method` on the node whose RPC listens on `address` (`host:port`); an RPC error
/// becomes `Err` with its code and message.
pub async fn call(address: &str, method: &str, params: Value) -> Result<Value, String> {
    match tokio::time::timeout(TIMEOUT, call_inner(address, method, params)).await {
        Ok(result) => result,
        Err(_) => Err(format!("{address}: no answer within {TIMEOUT:?}")),
    }
}

/// An RPC error answer: `(code, message)`.
pub fn rpc_error(value: &Value) -> Option<(i64, String)> {
    let error = value.get("error")?;
    Some((
        error["code"].as_i64().unwrap_or(0),
        error["message"].as_str().unwrap_or("").to_string(),
    ))
}

async fn call_inner(address: &str, method: &str, params: Value) -> Result<Value, String> {
    let value = request(
        address,
        &json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}),
    )
    .await?;
    if let Some((code, message)) = rpc_error(&value) {
        return Err(format!("{method} at {address} refused ({code}): {message}"));
    }
    Ok(value["result"].clone())
}

/// Posts one JSON-RPC body and returns the response body as JSON, whatever it holds.
pub async fn request(address: &str, body: &Value) -> Result<Value, String> {
    let body = body.to_string();
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .map_err(|e| format!("connecting to {address}: {e}"))?;
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        trellis_node_api::RPC_PATH,
        body.len()
    );
    stream
        .write_all(head.as_bytes())
        .await
        .map_err(|e| format!("{address}: {e}"))?;
    stream
        .write_all(body.as_bytes())
        .await
        .map_err(|e| format!("{address}: {e}"))?;
    let mut response = Vec::new();
    stream
        .take(MAX_RESPONSE)
        .read_to_end(&mut response)
        .await
        .map_err(|e| format!("{address}: {e}"))?;
    let text = String::from_utf8_lossy(&response);
    let (_, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("malformed HTTP response from {address}"))?;
    serde_json::from_str(body.trim())
        .map_err(|e| format!("response from {address} is not JSON: {e}"))
}
