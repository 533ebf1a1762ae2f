//! A keep-alive JSON-RPC client: one HTTP/1.1 connection per client, reused for every
//! request. The load generator used to open a connection per JSON-RPC batch, which cost
//! the node a connection set-up and teardown (and a router clone) per batch: validator
//! CPU the benchmark charged to the node although a real client would keep its
//! connection.

use anyhow::{Context as _, anyhow, bail};
use serde_json::{Value, json};
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

pub struct Client {
    addr: SocketAddr,
    conn: Option<BufReader<TcpStream>>,
}

impl Client {
    pub fn new(addr: SocketAddr) -> Self {
        Self { addr, conn: None }
    }

    /// POSTs `body` to `/rpc` and parses the answer. A kept connection the node closed
    /// while idle is noticed as an answer that never started; then the request is sent
    /// once more on a fresh connection (the node never read it, so nothing is sent
    /// twice).
    pub fn post(&mut self, body: &str) -> anyhow::Result<Value> {
        let reused = self.conn.is_some();
        match self.exchange(body) {
            Ok(v) => Ok(v),
            Err(Exchange::NotAnswered(_)) if reused => {
                self.conn = None;
                self.exchange(body).map_err(Exchange::into_error)
            }
            Err(e) => {
                self.conn = None;
                Err(e.into_error())
            }
        }
    }

    /// One JSON-RPC call; its `error` becomes an `Err`.
    pub fn call(&mut self, method: &str, params: Value) -> anyhow::Result<Value> {
        let v = self.post(
            &json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).to_string(),
        )?;
        if let Some(e) = v.get("error") {
            bail!("{method}: {e}");
        }
        Ok(v["result"].clone())
    }

    fn exchange(&mut self, body: &str) -> Result<Value, Exchange> {
        if self.conn.is_none() {
            let stream = TcpStream::connect_timeout(&self.addr, Duration::from_secs(2))
                .map_err(|e| Exchange::Failed(e.into()))?;
            stream
                .set_read_timeout(Some(Duration::from_secs(30)))
                .map_err(|e| Exchange::Failed(e.into()))?;
            let _ = stream.set_nodelay(true);
            self.conn = Some(BufReader::new(stream));
        }
        let conn = self
            .conn
            .as_mut()
            .ok_or_else(|| Exchange::Failed(anyhow!("no connection")))?;
        let request = format!(
            "POST /rpc HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.addr,
            body.len()
        );
        conn.get_mut()
            .write_all(request.as_bytes())
            .map_err(|e| Exchange::NotAnswered(e.into()))?;
        // Status line and headers: only the body's length and whether the node closes.
        let mut line = String::new();
        // A timeout is not "not answered": the node may be working on the request.
        let read = conn.read_line(&mut line).map_err(|e| match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                Exchange::Failed(e.into())
            }
            _ => Exchange::NotAnswered(e.into()),
        })?;
        if read == 0 {
            return Err(Exchange::NotAnswered(anyhow!("connection closed")));
        }
        let mut length = None;
        let mut close = false;
        loop {
            line.clear();
            conn.read_line(&mut line)
                .map_err(|e| Exchange::Failed(e.into()))?;
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                let value = value.trim();
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.parse::<usize>().ok();
                } else if name.eq_ignore_ascii_case("connection") {
                    close = value.eq_ignore_ascii_case("close");
                }
            }
        }
        let length = length
            .ok_or_else(|| Exchange::Failed(anyhow!("HTTP answer without Content-Length")))?;
        let mut body = vec![0; length];
        conn.read_exact(&mut body)
            .map_err(|e| Exchange::Failed(e.into()))?;
        if close {
            self.conn = None;
        }
        serde_json::from_slice(&body)
            .context("HTTP answer is not JSON")
            .map_err(Exchange::Failed)
    }
}

enum Exchange {
    /// Nothing of an answer arrived (the request may not have been read).
    NotAnswered(anyhow::Error),
    Failed(anyhow::Error),
}

impl Exchange {
    fn into_error(self) -> anyhow::Error {
        match self {
            Exchange::NotAnswered(e) | Exchange::Failed(e) => e,
        }
    }
}
