//! `trellis_getTransaction` in sharded networks: finding the shard that knows a
//! transaction.
//!
//! A transaction's receipt is kept by the shard that executed it (its sender's shard at
//! the time) and stays there when the sender's table later moves; a pending one waits in
//! its sender's shard's pool, or is on its way to the table's new shard right after a
//! reshard. A query names only the hash, so it cannot be routed by table like an account
//! read: a node that does not know the transaction asks every other shard of the map it
//! follows, as forwarded requests ([`crate::rpc_route::FORWARDED_HEADER`]: answered from
//! that node's own state, never forwarded again), one batch per shard, and merges the
//! answers: committed anywhere, else pending anywhere, else a retryable error when some
//! shard could not say (it is importing tables handed to it, or could not be reached),
//! else unknown. So a client never reads "unknown" for a transaction a shard holds.
//!
//! A scale-in's drained slots are asked too (the beacon's [`BeaconState::drained_slots`]:
//! their last committee's registered RPC addresses): the operator keeps one node of a
//! drained slot running as an archive for `spec.shards.drainedHistorySeconds`, so the
//! receipts that slot executed stay queryable. An archive is optional by design: one
//! that cannot be reached (deleted once its retention ended) counts as `unknown`, never
//! as a reason to retry, and each address is tried within the relay's timeout.
//!
//! [`BeaconState::drained_slots`]: trellis_node_beacon::BeaconState::drained_slots

use crate::chain::lock;
use crate::rpc::Rpc;
use serde_json::{Value, json};
use trellis_node_api::{JsonRpcRequest, error_codes as codes, methods};
use trellis_node_state::Kv;
use trellis_node_types::Committee;

/// True when this node's own answer to `request` leaves the question open in a sharded
/// network: the transaction is unknown here, or this shard is importing tables (and a
/// transaction from their accounts may be on its way).
pub fn undecided(request: &JsonRpcRequest, answer: &Value) -> bool {
    request.method == methods::GET_TRANSACTION
        && (answer["result"]["state"] == "unknown" || answer["error"]["code"] == codes::RESHARDING)
}

/// One slot to ask: a shard of the followed map, or a drained slot's archive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Asked {
    pub shard: u16,
    pub addresses: Vec<String>,
    /// A drained slot: an unreachable one counts as not knowing the transaction.
    pub archive: bool,
}

/// The slots to ask: every shard of the followed map but this node's own, then every
/// drained slot (this node's own slot too when it is drained: a node of a kept shard
/// may once have served it).
pub fn other_shards<K: Kv>(rpc: &Rpc<K>) -> Vec<Asked> {
    let state = lock(&rpc.state);
    let (Some(place), Some(beacon)) = (&state.shard, &state.beacon) else {
        return Vec::new();
    };
    let shards = (0..beacon.shard_count())
        .filter(|s| place.committee != Committee::Shard(*s))
        .map(|shard| Asked {
            shard,
            addresses: beacon.rpc_addresses(shard),
            archive: false,
        });
    let archives = beacon
        .drained_slots()
        .into_iter()
        .filter(|(shard, _)| place.committee != Committee::Shard(*shard))
        .map(|(shard, addresses)| Asked {
            shard,
            addresses,
            archive: true,
        });
    shards.chain(archives).collect()
}

/// Asks every shard in `shards` about `requests` (one batch each, at the same time) and
/// merges each request's answers with this node's own (`own`, in the same order).
pub async fn resolve<K: Kv>(
    rpc: &Rpc<K>,
    shards: Vec<Asked>,
    requests: &[JsonRpcRequest],
    own: Vec<(Option<u16>, Value)>,
) -> Vec<Value> {
    let asked =
        futures::future::join_all(shards.into_iter().map(|slot| ask(rpc, slot, requests))).await;
    own.into_iter()
        .enumerate()
        .map(|(i, mine)| {
            let mut answers = vec![mine];
            answers.extend(
                asked
                    .iter()
                    .map(|(shard, answers)| (Some(*shard), answers[i].clone())),
            );
            merge(&requests[i], answers)
        })
        .collect()
}

/// One slot's answers to `requests` (in order), from the first of its nodes that
/// answers the batch; each an error saying so when none does — or, for a drained slot's
/// archive, `unknown` (an archive is optional; its retention may have ended).
async fn ask<K: Kv>(rpc: &Rpc<K>, slot: Asked, requests: &[JsonRpcRequest]) -> (u16, Vec<Value>) {
    let Asked {
        shard,
        addresses,
        archive,
    } = slot;
    let body = serde_json::to_value(requests).unwrap_or(Value::Null);
    let mut last = format!("shard {shard} has no RPC addresses in the shard map");
    for address in &addresses {
        match rpc.relay.forward(address, &body).await {
            Ok(Value::Array(mut answers)) if answers.len() == requests.len() => {
                if archive {
                    answers.iter_mut().for_each(mark_archived);
                }
                return (shard, answers);
            }
            Ok(_) => last = format!("{address} did not answer the batch"),
            Err(e) => last = e,
        }
    }
    let failed = if archive {
        json!({"result": {"state": "unknown"}})
    } else {
        json!({"error": {"code": codes::INTERNAL,
                         "message": format!("shard {shard} could not be reached: {last}")}})
    };
    (shard, vec![failed; requests.len()])
}

/// An archive's answer: a transaction it knows says so (`archived: true`, from a slot
/// the network scaled away); anything else it says counts as `unknown` (it imports
/// nothing and its pool is gone, so no retry can change its answer).
fn mark_archived(answer: &mut Value) {
    match answer.get_mut("result").and_then(Value::as_object_mut) {
        Some(result) if result.get("state").and_then(Value::as_str) == Some("committed") => {
            result.insert("archived".into(), true.into());
        }
        _ => *answer = json!({"result": {"state": "unknown"}}),
    }
}

/// How much an answer settles: committed, pending, could not say, unknown.
fn weight(answer: &Value) -> u8 {
    match answer["result"]["state"].as_str() {
        Some("committed") => 3,
        Some("pending") => 2,
        Some(_) => 0,
        None => 1,
    }
}

/// The answer to `request` from every shard's (`None`: this node's, not in a shard):
/// the most settled one, marked with the shard that gave it; a retryable error when
/// nobody knows the transaction but some shard could not say.
pub fn merge(request: &JsonRpcRequest, answers: Vec<(Option<u16>, Value)>) -> Value {
    let best = answers
        .iter()
        .enumerate()
        .max_by_key(|(i, (_, a))| (weight(a), std::cmp::Reverse(*i)))
        .map(|(i, _)| i);
    let Some(best) = best else {
        return json!({"jsonrpc": "2.0", "id": request.id, "error": {
            "code": codes::INTERNAL, "message": "no shard was asked"}});
    };
    let (shard, answer) = &answers[best];
    match weight(answer) {
        2 | 3 => {
            let mut result = answer["result"].clone();
            if let (Some(shard), Some(object)) = (shard, result.as_object_mut()) {
                object.entry("shard").or_insert_with(|| (*shard).into());
            }
            json!({"jsonrpc": "2.0", "id": request.id, "result": result})
        }
        1 => {
            let unsure: Vec<String> = answers
                .iter()
                .filter(|(_, a)| weight(a) == 1)
                .map(|(s, a)| {
                    let who = s.map_or("this node".to_string(), |s| format!("shard {s}"));
                    format!("{who}: {}", a["error"]["message"].as_str().unwrap_or("?"))
                })
                .collect();
            let resharding = answers
                .iter()
                .any(|(_, a)| a["error"]["code"] == codes::RESHARDING);
            json!({"jsonrpc": "2.0", "id": request.id, "error": {
            "code": if resharding { codes::RESHARDING } else { codes::WRONG_SHARD },
            "message": format!(
                "no shard reports this transaction yet, and some could not say ({}); \
                 retry shortly",
                unsure.join("; ")
            )}})
        }
        _ => {
            let mut result = answer["result"].clone();
            if let Some(object) = result.as_object_mut() {
                object.remove("shard");
            }
            json!({"jsonrpc": "2.0", "id": request.id, "result": result})
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> JsonRpcRequest {
        JsonRpcRequest {
            jsonrpc: "2.0".into(),
            id: json!(7),
            method: methods::GET_TRANSACTION.into(),
            params: json!({"hash": "ab"}),
        }
    }

    fn state(s: &str, shard: u16) -> Value {
        json!({"jsonrpc": "2.0", "id": 7, "result": {"hash": "ab", "state": s, "shard": shard}})
    }

    fn error(code: i64, message: &str) -> Value {
        json!({"jsonrpc": "2.0", "id": 7, "error": {"code": code, "message": message}})
    }

    #[test]
    fn the_shard_that_executed_it_answers() {
        let merged = merge(
            &request(),
            vec![
                (Some(2), state("unknown", 2)),
                (Some(0), state("unknown", 0)),
                (Some(1), state("committed", 1)),
            ],
        );
        assert_eq!(merged["result"]["state"], "committed");
        assert_eq!(merged["result"]["shard"], 1);
        assert_eq!(merged["id"], 7);
        // Committed wins over pending (a pool not cleaned yet), and over a shard that
        // could not say.
        let merged = merge(
            &request(),
            vec![
                (Some(0), state("pending", 0)),
                (Some(1), error(codes::RESHARDING, "importing")),
                (Some(2), state("committed", 2)),
            ],
        );
        assert_eq!(merged["result"]["shard"], 2);
    }

    #[test]
    fn pending_anywhere_is_pending() {
        let merged = merge(
            &request(),
            vec![(None, state("unknown", 0)), (Some(1), state("pending", 1))],
        );
        assert_eq!(merged["result"]["state"], "pending");
        assert_eq!(merged["result"]["shard"], 1);
    }

    #[test]
    fn unknown_only_when_every_shard_said_so() {
        let merged = merge(
            &request(),
            vec![
                (None, state("unknown", 0)),
                (Some(0), state("unknown", 0)),
                (Some(1), state("unknown", 1)),
            ],
        );
        assert_eq!(merged["result"]["state"], "unknown");
        assert!(merged["result"].get("shard").is_none(), "{merged}");
        // A shard importing tables handed to it: retry, never "unknown".
        let merged = merge(
            &request(),
            vec![
                (Some(0), state("unknown", 0)),
                (
                    Some(2),
                    error(codes::RESHARDING, "shard 2 is taking over tables [9]"),
                ),
            ],
        );
        assert_eq!(merged["error"]["code"], codes::RESHARDING);
        let message = merged["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("shard 2: shard 2 is taking over"),
            "{message}"
        );
        assert!(message.contains("retry shortly"), "{message}");
        // A shard that could not be reached: retry too, with the reason.
        let merged = merge(
            &request(),
            vec![
                (Some(0), state("unknown", 0)),
                (
                    Some(1),
                    error(codes::INTERNAL, "shard 1 could not be reached: refused"),
                ),
            ],
        );
        assert_eq!(merged["error"]["code"], codes::WRONG_SHARD);
        assert!(
            merged["error"]["message"]
                .as_str()
                .unwrap()
                .contains("could not be reached"),
            "{merged}"
        );
    }

    #[test]
    fn an_archive_knows_committed_transactions_only() {
        let mut committed = state("committed", 2);
        mark_archived(&mut committed);
        assert_eq!(committed["result"]["archived"], true);
        assert_eq!(committed["result"]["state"], "committed");
        // Pending (handed over at its last epoch switch) or an error: it will not learn
        // more, so it counts as unknown and the merge never asks for a retry.
        for mut other in [state("pending", 2), error(codes::RESHARDING, "importing")] {
            mark_archived(&mut other);
            assert_eq!(other["result"]["state"], "unknown", "{other}");
        }
        let merged = merge(
            &request(),
            vec![(Some(0), state("unknown", 0)), (Some(2), committed)],
        );
        assert_eq!(merged["result"]["shard"], 2);
        assert_eq!(merged["result"]["archived"], true);
        let merged = merge(
            &request(),
            vec![
                (Some(0), state("unknown", 0)),
                (Some(2), json!({"result": {"state": "unknown"}})),
            ],
        );
        assert_eq!(merged["result"]["state"], "unknown", "{merged}");
    }

    #[test]
    fn only_open_transaction_answers_are_resolved() {
        let r = request();
        assert!(undecided(&r, &state("unknown", 0)));
        assert!(undecided(&r, &error(codes::RESHARDING, "importing")));
        assert!(!undecided(&r, &state("pending", 0)));
        assert!(!undecided(&r, &error(codes::INVALID_PARAMS, "bad hash")));
        let account = JsonRpcRequest {
            method: methods::GET_ACCOUNT.into(),
            ..request()
        };
        assert!(!undecided(&account, &state("unknown", 0)));
    }
}
