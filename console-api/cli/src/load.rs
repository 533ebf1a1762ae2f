//! `trellis tx load`: a steady stream of signed transfers at a chosen rate, for load
//! tests and for watching a network's autoscaler work.
//!
//! Each sending account's next nonce is read once; after that the nonces are counted
//! here, so one account can keep many transfers in flight (the node admits an account's
//! transactions in nonce order, counting the ones it already queued). The console's proxy
//! spreads sends over the network's nodes, and a node may not have heard of the previous
//! transfer yet: a nonce refusal that asks for a *lower* nonce is retried later, one that
//! asks for a *higher* one (the chain is ahead of us) moves on to it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use reqwest::Method;
use serde_json::{Value, json};
use trellis_node_api::error_codes;

use crate::client::Console;

/// The most transfers per second one `trellis tx load` sends.
pub const MAX_RATE: u32 = 1_000;
/// The longest run.
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);
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

/// Sends `plan` and returns what happened: sent (admitted by a node), the node's
/// refusals by code, failed requests by error, the achieved rate, and each account's
/// next nonce.
pub async fn run(console: &mut Console, plan: &Plan) -> Result<Value> {
    let path = format!("/v1/networks/{}/rpc", plan.network_id);
    let mut next: Vec<u64> = plan.senders.iter().map(|(_, nonce)| *nonce).collect();
    let mut refused: BTreeMap<i64, u64> = BTreeMap::new();
    let mut failed: BTreeMap<String, u64> = BTreeMap::new();
    let mut sent = 0u64;
    let mut in_a_row = 0u32;
    let mut ticks = tokio::time::interval(Duration::from_secs(1) / plan.rate);
    // Behind schedule (a slow answer): carry on at the rate, never burst to catch up.
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let start = Instant::now();
    let mut turn = 0usize;
    while start.elapsed() < plan.duration {
        ticks.tick().await;
        let which = turn % plan.senders.len();
        turn += 1;
        let (key_file, _) = &plan.senders[which];
        let tx = crate::signed_transfer(
            key_file,
            &plan.chain_id,
            next[which],
            &plan.to,
            plan.amount,
            plan.fee,
        )?;
        let request = json!({"jsonrpc": "2.0", "id": 1, "method": "trellis_sendTransaction",
                             "params": {"tx": tx}});
        // A failed request (the console busy, no node answering in time) counts like a
        // refusal: the run goes on, and stops on a streak.
        let answer = match console
            .call(Method::POST, &path, Some(&request), None)
            .await
        {
            Ok(answer) => answer,
            Err(err) => {
                *failed.entry(format!("{err:#}")).or_default() += 1;
                in_a_row += 1;
                if in_a_row >= GIVE_UP_AFTER {
                    bail!(
                        "stopped after {in_a_row} failures in a row ({sent} transfers sent \
                         before): {err:#}"
                    );
                }
                continue;
            }
        };
        let Some(error) = answer.get("error").filter(|e| !e.is_null()) else {
            sent += 1;
            next[which] += 1;
            in_a_row = 0;
            continue;
        };
        let code = error["code"].as_i64().unwrap_or_default();
        let message = error["message"].as_str().unwrap_or_default();
        *refused.entry(code).or_default() += 1;
        match code {
            // That node queued it already (an earlier send of this nonce got through).
            error_codes::ALREADY_KNOWN => {
                next[which] += 1;
                in_a_row = 0;
                continue;
            }
            error_codes::BAD_NONCE => {
                if let Some(expected) = expected_nonce(message)
                    && expected > next[which]
                {
                    next[which] = expected;
                }
            }
            _ => {}
        }
        in_a_row += 1;
        if in_a_row >= GIVE_UP_AFTER {
            bail!(
                "stopped after {in_a_row} refusals in a row ({sent} transfers sent before): \
                 the node refused ({code}): {message}"
            );
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    let accounts: Vec<Value> = plan
        .senders
        .iter()
        .zip(&next)
        .map(|((key_file, first), next)| {
            json!({"key_file": key_file.display().to_string(), "first_nonce": first,
                   "next_nonce": next})
        })
        .collect();
    let refusals: BTreeMap<String, u64> = refused
        .into_iter()
        .map(|(code, n)| (code.to_string(), n))
        .collect();
    Ok(json!({
        "sent": sent,
        "refused": refusals,
        "failed": failed,
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
    fn the_expected_nonce_is_read_from_the_refusal() {
        assert_eq!(
            expected_nonce("nonce 3 is not the account's next nonce 7"),
            Some(7)
        );
        assert_eq!(expected_nonce("mempool is full"), None);
    }
}
