//! `trellis tx load`: a steady stream of signed transfers at a chosen rate, for load
//! tests and for watching a network's autoscaler work.
//!
//! Requests go out on a steady tick, up to `--concurrency` of them in flight at once, so
//! one slow answer does not hold up the rest. Each sending account's next nonce is read
//! once; after that the nonces are counted here, so one account can keep many transfers
//! in flight (the node admits an account's transactions in nonce order, counting the ones
//! it already queued). The console's proxy spreads sends over the network's nodes, and a
//! node may not have heard of the previous transfer yet: a nonce refusal that asks for a
//! *lower* nonce is sent again, before any new nonce; one that asks for a *higher* one
//! (the chain is ahead of us) moves on to it. A request with no answer in time is counted
//! as timed out (it may still have been admitted) and its nonce sent again: the node then
//! answers "already known" (counted as sent, once) or asks for a higher nonce. A run
//! ends early after [`GIVE_UP_AFTER`] refusals or failures in a row, not counting nodes
//! that ask for a lower nonce (they are behind, which says nothing about the account).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use serde_json::{Value, json};
use tokio::task::JoinSet;
use trellis_node_api::error_codes;

use crate::client::{self, Console, Sender};

/// The most transfers per second one `trellis tx load` sends.
pub const MAX_RATE: u32 = 1_000;
/// The longest run.
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);
/// The most requests in flight at once.
pub const MAX_CONCURRENCY: u32 = 256;
/// Requests in flight at once unless `--concurrency` says otherwise: enough to keep a
/// few hundred transfers per second going through a console that answers in tens of
/// milliseconds, few enough not to flood one.
pub const DEFAULT_CONCURRENCY: u32 = 16;
/// Refusals in a row that end the run: the load is not getting through.
const GIVE_UP_AFTER: u32 = 50;

/// What to send.
pub struct Plan {
    pub network_id: String,
    pub chain_id: String,
    /// Key files and the next nonce of each one's account.
    pub senders: Vec<(PathBuf, u64)>,
    pub to: String,
    pub amount: u64,
    pub fee: u64,
    pub rate: u32,
    /// The most requests in flight at once.
    pub concurrency: u32,
    pub duration: Duration,
}

/// `90`, `90s`, `5m` or `1h`: a run's length, at most [`MAX_DURATION`].
pub fn parse_duration(text: &str) -> Result<Duration> {
    let text = text.trim();
    let (number, unit) = match text.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((at, _)) => text.split_at(at),
        None => (text, "s"),
    };
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        _ => bail!("--duration {text:?}: expected seconds, or a number with s, m or h (90s, 5m)"),
    };
    let seconds = number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .filter(|s| *s > 0)
        .ok_or_else(|| anyhow::anyhow!("--duration {text:?}: expected a whole number above 0"))?;
    let duration = Duration::from_secs(seconds);
    if duration > MAX_DURATION {
        bail!("--duration {text:?}: at most 24h");
    }
    Ok(duration)
}

/// One sending account's nonces.
#[derive(Debug)]
struct Account {
    /// The account's next nonce when the run began.
    first: u64,
    /// The lowest nonce never sent.
    next: u64,
    /// Nonces sent but not admitted (refused, or no answer): sent again before new ones,
    /// lowest first, since the node admits an account's transactions in nonce order.
    again: BTreeSet<u64>,
}

impl Account {
    fn new(first: u64) -> Self {
        Self {
            first,
            next: first,
            again: BTreeSet::new(),
        }
    }

    /// The nonce to send now.
    fn take(&mut self) -> u64 {
        self.again.pop_first().unwrap_or_else(|| {
            self.next += 1;
            self.next - 1
        })
    }

    /// The node asked for `expected`: the chain is past every lower nonce (another
    /// request got there first, or the account was used elsewhere).
    fn skip_to(&mut self, expected: u64) {
        self.again.retain(|n| *n >= expected);
        self.next = self.next.max(expected);
    }
}

/// How one request ended.
enum Answer {
    /// Admitted by a node (or already queued there: an earlier send of this nonce).
    Admitted,
    /// Refused by the node (JSON-RPC code, message).
    Refused(i64, String),
    /// No answer in time: it may or may not have been admitted.
    TimedOut,
    /// The access token expired mid-run (refreshed, and the transfer sent again).
    Unauthorized(Sender),
    /// The request failed otherwise (the console refused it, or no node answered).
    Failed(String),
}

/// One transfer: signed with `nonce` and sent through the console's proxy.
async fn send(sender: Sender, path: String, tx: String) -> Answer {
    let request = json!({"jsonrpc": "2.0", "id": 1, "method": "trellis_sendTransaction",
                         "params": {"tx": tx}});
    match sender.post(&path, &request).await {
        Ok(answer) => match answer.get("error").filter(|e| !e.is_null()) {
            None => Answer::Admitted,
            Some(error) => {
                let code = error["code"].as_i64().unwrap_or_default();
                let message = error["message"].as_str().unwrap_or_default().to_string();
                if code == error_codes::ALREADY_KNOWN {
                    Answer::Admitted
                } else {
                    Answer::Refused(code, message)
                }
            }
        },
        Err(err) if client::is_timeout(&err) => Answer::TimedOut,
        Err(err) if client::is_unauthorized(&err) => Answer::Unauthorized(sender),
        Err(err) => Answer::Failed(format!("{err:#}")),
    }
}

/// Sends `plan` with at most `plan.concurrency` requests in flight and returns what
/// happened: sent (admitted by a node), the node's refusals by code (`-33006`: its
/// mempool is full), the requests that timed out, the other failed requests by error,
/// the achieved rate, and each account's first nonce and the lowest one never sent.
pub async fn run(console: &mut Console, plan: &Plan) -> Result<Value> {
    let path = format!("/v1/networks/{}/rpc", plan.network_id);
    let mut accounts: Vec<Account> = plan
        .senders
        .iter()
        .map(|(_, nonce)| Account::new(*nonce))
        .collect();
    let mut sender = console.sender()?;
    let mut refused: BTreeMap<i64, u64> = BTreeMap::new();
    let mut failed: BTreeMap<String, u64> = BTreeMap::new();
    let (mut sent, mut timed_out) = (0u64, 0u64);
    let mut in_a_row = 0u32;
    let mut in_flight = JoinSet::new();
    let limit = usize::try_from(plan.concurrency.max(1)).unwrap_or(usize::MAX);
    let mut ticks = tokio::time::interval(Duration::from_secs(1) / plan.rate);
    // Behind schedule (all requests in flight, or slow answers): carry on at the rate,
    // never burst to catch up.
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let start = Instant::now();
    let mut turn = 0usize;
    loop {
        let sending = start.elapsed() < plan.duration;
        if !sending && in_flight.is_empty() {
            break;
        }
        tokio::select! {
            _ = ticks.tick(), if sending && in_flight.len() < limit => {
                if start.elapsed() >= plan.duration {
                    continue;
                }
                let which = turn % accounts.len();
                turn += 1;
                let nonce = accounts[which].take();
                let tx = crate::signed_transfer(
                    &plan.senders[which].0,
                    &plan.chain_id,
                    nonce,
                    &plan.to,
                    plan.amount,
                    plan.fee,
                )?;
                let request = send(sender.clone(), path.clone(), tx);
                in_flight.spawn(async move { (which, nonce, request.await) });
            }
            Some(done) = in_flight.join_next() => {
                let (which, nonce, answer) = done?;
                let account = &mut accounts[which];
                let streak_ends = match answer {
                    Answer::Admitted => {
                        sent += 1;
                        in_a_row = 0;
                        continue;
                    }
                    Answer::Refused(code, message) => {
                        *refused.entry(code).or_default() += 1;
                        let expected =
                            expected_nonce(&message).filter(|_| code == error_codes::BAD_NONCE);
                        match expected {
                            // The chain is past this nonce: it is used, never resent.
                            Some(expected) if expected > nonce => account.skip_to(expected),
                            // The node has not heard of the lower ones yet, or is busy.
                            _ => {
                                account.again.insert(nonce);
                            }
                        }
                        // A node behind the others (gossip has not brought it the lower
                        // nonces yet) refuses nothing about the account: with many
                        // requests in flight that is common, and it does not end the run.
                        if expected.is_some_and(|expected| expected < nonce) {
                            continue;
                        }
                        format!("the node refused ({code}): {message}")
                    }
                    Answer::TimedOut => {
                        timed_out += 1;
                        // Sent again: if a copy was admitted, the node answers "already
                        // known", or, once it is committed, asks for a higher nonce.
                        account.again.insert(nonce);
                        "no answer in time".to_string()
                    }
                    Answer::Unauthorized(used) => {
                        // Counted as a failed request (it never reached a node); the
                        // token is refreshed once for all the requests that carried it.
                        account.again.insert(nonce);
                        console.renew(&used).await?;
                        sender = console.sender()?;
                        let error = "the console refused the access token (401)".to_string();
                        *failed.entry(error.clone()).or_default() += 1;
                        error
                    }
                    Answer::Failed(error) => {
                        account.again.insert(nonce);
                        *failed.entry(error.clone()).or_default() += 1;
                        error
                    }
                };
                in_a_row += 1;
                if in_a_row >= GIVE_UP_AFTER {
                    bail!(
                        "stopped after {in_a_row} refusals or failures in a row ({sent} \
                         transfers sent before); the last: {streak_ends}"
                    );
                }
            }
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    let accounts: Vec<Value> = plan
        .senders
        .iter()
        .zip(&accounts)
        .map(|((key_file, _), account)| {
            json!({"key_file": key_file.display().to_string(), "first_nonce": account.first,
                   "next_nonce": account.next})
        })
        .collect();
    let refusals: BTreeMap<String, u64> = refused
        .into_iter()
        .map(|(code, n)| (code.to_string(), n))
        .collect();
    Ok(json!({
        "sent": sent,
        "refused": refusals,
        "timed_out": timed_out,
        "failed": failed,
        "concurrency": plan.concurrency,
        "seconds": (seconds * 10.0).round() / 10.0,
        "rate": ((sent as f64 / seconds.max(0.001)) * 10.0).round() / 10.0,
        "accounts": accounts,
    }))
}

/// The nonce a node asked for: the last number of "nonce G is not the account's next
/// nonce E".
fn expected_nonce(message: &str) -> Option<u64> {
    message
        .split(|c: char| !c.is_ascii_digit())
        .rfind(|part| !part.is_empty())?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[test]
    fn durations_parse_or_say_why() {
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("24h").unwrap(), MAX_DURATION);
        for bad in [
            "",
            "0",
            "0s",
            "1d",
            "-5",
            "5 m",
            "m",
            "25h",
            "99999999999999999999",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
        }
        assert!(
            parse_duration("1d")
                .unwrap_err()
                .to_string()
                .contains("90s, 5m")
        );
    }

    #[test]
    fn nonces_refused_are_sent_again_lowest_first_and_a_chain_ahead_is_followed() {
        let mut account = Account::new(5);
        assert_eq!((account.take(), account.take(), account.take()), (5, 6, 7));
        // 6 and 5 came back refused (the node had not heard of 4 yet, say).
        account.again.insert(6);
        account.again.insert(5);
        assert_eq!((account.take(), account.take(), account.take()), (5, 6, 8));
        // The chain is at 10 already: 8 and 9 are used, never sent again.
        account.again.insert(8);
        account.skip_to(10);
        assert_eq!(account.take(), 10);
        // An older refusal asking for less moves nothing back.
        account.skip_to(3);
        assert_eq!((account.first, account.take()), (5, 11));
    }

    #[test]
    fn the_expected_nonce_is_read_from_the_refusal() {
        assert_eq!(
            expected_nonce("nonce 3 is not the account's next nonce 7"),
            Some(7)
        );
        assert_eq!(expected_nonce("mempool is full"), None);
    }

    /// How the stand-in proxy answers one transfer request.
    enum Reply {
        Admit,
        Refuse(i64, &'static str),
        /// Answers only after this long (the client has given up by then).
        Stall(Duration),
        /// Refuses the access token; a refresh then gets new tokens.
        Unauthorized,
    }

    /// A console's RPC proxy on loopback (127.0.117.2): the `n`th transfer request
    /// (from 1) is answered after `delay` as `script(n)` says. Counts the transfer
    /// requests and the most in flight at once (stalled ones not included).
    struct Proxy {
        url: String,
        requests: Arc<AtomicU64>,
        most_in_flight: Arc<AtomicU64>,
    }

    async fn respond(mut stream: tokio::net::TcpStream, status: &str, body: Value) {
        let body = body.to_string();
        let _ = stream
            .write_all(
                format!(
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\n\
                     content-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                )
                .as_bytes(),
            )
            .await;
    }

    async fn proxy(delay: Duration, script: fn(u64) -> Reply) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.117.2:0")
            .await
            .unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let requests = Arc::new(AtomicU64::new(0));
        let most_in_flight = Arc::new(AtomicU64::new(0));
        let in_flight = Arc::new(AtomicU64::new(0));
        let (count, most) = (requests.clone(), most_in_flight.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                let (count, most, in_flight) = (count.clone(), most.clone(), in_flight.clone());
                tokio::spawn(async move {
                    // One request per connection: read its head and body, answer, close.
                    let mut seen = Vec::new();
                    let mut buf = [0u8; 4096];
                    let body_at = loop {
                        let n = stream.read(&mut buf).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        seen.extend_from_slice(&buf[..n]);
                        if let Some(at) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                            break at + 4;
                        }
                    };
                    let head = String::from_utf8_lossy(&seen[..body_at]).to_lowercase();
                    let length: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    while seen.len() < body_at + length {
                        let n = stream.read(&mut buf).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        seen.extend_from_slice(&buf[..n]);
                    }
                    if head.starts_with("post /v1/auth/refresh ") {
                        let tokens = json!({"access_token": "fresh", "refresh_token": "rotated"});
                        return respond(stream, "200 OK", tokens).await;
                    }
                    let reply = script(count.fetch_add(1, Ordering::SeqCst) + 1);
                    if let Reply::Stall(stall) = reply {
                        return tokio::time::sleep(stall).await;
                    }
                    let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    tokio::time::sleep(delay).await;
                    in_flight.fetch_sub(1, Ordering::SeqCst);
                    let (status, answer) = match reply {
                        Reply::Admit => (
                            "200 OK",
                            json!({"jsonrpc": "2.0", "id": 1, "result": {"hash": "00"}}),
                        ),
                        Reply::Refuse(code, message) => (
                            "200 OK",
                            json!({"jsonrpc": "2.0", "id": 1,
                                   "error": {"code": code, "message": message}}),
                        ),
                        // Stalled requests were answered (never) above.
                        Reply::Stall(_) => return,
                        Reply::Unauthorized => (
                            "401 Unauthorized",
                            json!({"title": "Unauthorized", "status": 401}),
                        ),
                    };
                    respond(stream, status, answer).await;
                });
            }
        });
        Proxy {
            url,
            requests,
            most_in_flight,
        }
    }

    /// A console session with `url` logged in, its credentials file, and a key file.
    fn session(dir: &std::path::Path, url: &str) -> (Console, PathBuf, PathBuf) {
        let creds = dir.join("credentials.json");
        crate::credentials::save(
            &creds,
            &crate::credentials::Credentials {
                console: url.to_string(),
                email: "load@example.com".into(),
                access_token: "token".into(),
                refresh_token: "refresh".into(),
            },
        )
        .unwrap();
        let console = Console::new(None, creds.clone())
            .unwrap()
            .with_timeout(Duration::from_secs(1))
            .unwrap();
        let key_file = dir.join("keys.json");
        std::fs::write(&key_file, json!({"admin_key": "07".repeat(32)}).to_string()).unwrap();
        (console, creds, key_file)
    }

    fn plan(key_file: PathBuf, first_nonce: u64, concurrency: u32) -> Plan {
        Plan {
            network_id: "n".into(),
            chain_id: "c".into(),
            senders: vec![(key_file, first_nonce)],
            // The Ed25519 base point: a valid public key.
            to: format!("58{}", "66".repeat(31)),
            amount: 1,
            fee: 1,
            rate: 100,
            concurrency,
            duration: Duration::from_secs(2),
        }
    }

    #[tokio::test]
    async fn requests_overlap_up_to_the_limit_and_every_one_is_counted_once() {
        let dir = tempfile::tempdir().unwrap();
        // Every third refused as a full mempool, the second never answered in time, the
        // fourth refused for its expired access token, the rest admitted.
        let proxy = proxy(Duration::from_millis(300), |n| match n {
            2 => Reply::Stall(Duration::from_secs(5)),
            4 => Reply::Unauthorized,
            n if n % 3 == 0 => Reply::Refuse(error_codes::MEMPOOL_FULL, "mempool is full"),
            _ => Reply::Admit,
        })
        .await;
        let (mut console, creds, key_file) = session(dir.path(), &proxy.url);
        let plan = plan(key_file, 40, 4);
        let report = run(&mut console, &plan).await.unwrap();

        // One at a time, 300 ms each, would be 7 in 2 s; 4 at a time keep 4 in flight.
        let requests = proxy.requests.load(Ordering::SeqCst);
        assert_eq!(proxy.most_in_flight.load(Ordering::SeqCst), 4, "{report}");
        assert!(requests > 12, "{requests} requests: {report}");
        // Every request ends once: admitted, refused (a full mempool) or timed out.
        let sent = report["sent"].as_u64().unwrap();
        let refused = report["refused"][error_codes::MEMPOOL_FULL.to_string()]
            .as_u64()
            .unwrap();
        assert_eq!(report["timed_out"], 1, "{report}");
        assert_eq!(
            report["failed"],
            json!({"the console refused the access token (401)": 1}),
            "{report}"
        );
        assert_eq!(sent + refused + 1 + 1, requests, "{report}");
        // The expired token was refreshed once, and the new one kept.
        let kept = crate::credentials::load(&creds).unwrap().unwrap();
        assert_eq!(kept.access_token, "fresh");
        assert_eq!(report["concurrency"], 4, "{report}");
        // The refused and timed-out nonces were sent again before new ones: the nonces
        // used are those admitted, plus the few refused at the end and not sent again.
        let account = &report["accounts"][0];
        assert_eq!(account["first_nonce"], 40, "{report}");
        let used = account["next_nonce"].as_u64().unwrap() - 40;
        assert!(used >= sent && used <= sent + 8, "{report}");
    }

    #[tokio::test]
    async fn nodes_behind_do_not_end_the_run_and_an_empty_account_does() {
        let dir = tempfile::tempdir().unwrap();
        // The first 80 go to nodes that have not heard of nonce 40 yet.
        let behind = proxy(Duration::from_millis(5), |n| {
            if n <= 80 {
                Reply::Refuse(
                    error_codes::BAD_NONCE,
                    "nonce 41 is not the account's next nonce 40",
                )
            } else {
                Reply::Admit
            }
        })
        .await;
        let (mut console, _, key_file) = session(dir.path(), &behind.url);
        let report = run(&mut console, &plan(key_file.clone(), 41, 4))
            .await
            .unwrap();
        let refused = report["refused"][error_codes::BAD_NONCE.to_string()]
            .as_u64()
            .unwrap();
        assert!(
            refused == 80 && refused > u64::from(GIVE_UP_AFTER),
            "{report}"
        );
        assert!(report["sent"].as_u64().unwrap() > 0, "{report}");

        // An account that cannot pay is refused every time: the run stops, saying why.
        let empty = proxy(Duration::from_millis(5), |_| {
            Reply::Refuse(error_codes::INSUFFICIENT_FUNDS, "insufficient funds")
        })
        .await;
        let (mut console, _, _) = session(dir.path(), &empty.url);
        let err = run(&mut console, &plan(key_file, 41, 4))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("stopped after 50") && err.contains("insufficient funds"),
            "{err}"
        );
    }
}
