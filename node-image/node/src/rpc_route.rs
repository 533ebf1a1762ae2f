//! Sharded networks: which node answers a client's request about one table.
//!
//! A shard answers only for the tables its ledger holds at its finalized height. Any
//! other node — a node of another shard, a beacon node, or a shard's own node before it
//! has imported a table handed to it — must not answer from its own store (it would
//! give a stale balance, or 0): it forwards the request, as the client sent it, to the
//! shard that owns the table in the beacon map it follows, or refuses with a stable code
//! the client can retry on. A forwarded request carries [`FORWARDED_HEADER`] and is never
//! forwarded again, so two nodes whose maps disagree for a moment (a reshard spreading)
//! cannot bounce a request between them.

use crate::chain::{NodeState, ShardPlace, lock};
use serde_json::Value;
use std::sync::Mutex;
use trellis_node_api::{
    AccountQuery, JsonRpcRequest, SendTransactionParams, error_codes as codes, methods,
};
use trellis_node_state::Kv;
use trellis_node_types::{Committee, Tx, from_hex, public_key_from_hex, table_of};

/// The HTTP header a node sets on a request it forwards on a client's behalf.
pub const FORWARDED_HEADER: &str = "x-trellis-forwarded";

/// Where a request goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// This node answers it from its own state.
    Local,
    /// A node of this shard answers it (the request is forwarded as sent).
    Forward(u16),
    /// Nobody can answer it right now: the JSON-RPC code and message say why.
    Refuse(i64, String),
}

/// Where this node stands: its committee (`None`: an unsharded network).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Standing {
    pub committee: Option<Committee>,
    /// The table in question is held by this node's ledger at its finalized height.
    pub holds: bool,
    /// The table's owner in the beacon map this node follows (`None`: no map).
    pub owner: Option<u16>,
    /// The request was forwarded here by another node (it is not forwarded again).
    pub forwarded: bool,
}

impl Standing {
    /// This node's standing towards `table`.
    pub fn of<K: Kv>(state: &NodeState<K>, table: u8, forwarded: bool) -> Self {
        let place: Option<&ShardPlace> = state.shard.as_ref();
        Self {
            committee: place.map(|p| p.committee),
            holds: place.is_some_and(|p| p.tables.binary_search(&table).is_ok()),
            owner: state.beacon.as_ref().map(|b| b.owner(table)),
            forwarded,
        }
    }
}

/// `trellis_getAccount` for an account in `table`: answered where the table is held,
/// forwarded to its owner otherwise, refused while its owner has not imported it.
pub fn account(at: Standing, table: u8) -> Route {
    let Some(committee) = at.committee else {
        return Route::Local;
    };
    if at.holds {
        return Route::Local;
    }
    let Some(owner) = at.owner else {
        return Route::Refuse(
            codes::RESHARDING,
            format!("this node does not know which shard owns table {table} yet; retry shortly"),
        );
    };
    if committee == Committee::Shard(owner) {
        return Route::Refuse(
            codes::RESHARDING,
            format!("table {table} is being handed off to shard {owner}; retry shortly"),
        );
    }
    if at.forwarded {
        return Route::Refuse(
            codes::RESHARDING,
            format!(
                "table {table} belongs to shard {owner} in this node's shard map, but the node \
                 that forwarded the read here thinks otherwise (a reshard is spreading); retry \
                 shortly"
            ),
        );
    }
    Route::Forward(owner)
}

/// `trellis_sendTransaction` from an account in `table`: forwarded to the shard owning it
/// in the followed map; admitted (or refused by admission, which says why) here otherwise.
pub fn send(at: Standing) -> Route {
    match (at.committee, at.owner) {
        (Some(committee), Some(owner)) if committee != Committee::Shard(owner) && !at.forwarded => {
            Route::Forward(owner)
        }
        _ => Route::Local,
    }
}

/// The table a request is about, for the methods routed by table: the sender's of a
/// transaction, the account's of an account read. `None` for anything else, and for
/// parameters that do not decode (the node answers those with the usual error).
fn table_of_request(request: &JsonRpcRequest) -> Option<(bool, u8)> {
    match request.method.as_str() {
        methods::SEND_TRANSACTION => {
            let p: SendTransactionParams = serde_json::from_value(request.params.clone()).ok()?;
            let tx = Tx::decode_untrusted(&from_hex(&p.tx)?).ok()?;
            Some((true, table_of(&tx.unsigned.from)))
        }
        methods::GET_ACCOUNT => {
            let p: AccountQuery = serde_json::from_value(request.params.clone()).ok()?;
            Some((false, table_of(&public_key_from_hex(&p.account)?)))
        }
        _ => None,
    }
}

/// Where a client's request goes (everything but sends and account reads: here).
pub fn route<K: Kv>(
    state: &Mutex<NodeState<K>>,
    request: &JsonRpcRequest,
    forwarded: bool,
) -> Route {
    let Some(about) = table_of_request(request) else {
        return Route::Local;
    };
    decide(&lock(state), about, forwarded)
}

/// Where one request of a batch goes, its transaction (if a send) decoded already: the
/// batch decides them all under one lock of the state.
pub fn route_decoded<K: Kv>(
    state: &NodeState<K>,
    request: &JsonRpcRequest,
    tx: Option<&Tx>,
    forwarded: bool,
) -> Route {
    if state.shard.is_none() {
        return Route::Local;
    }
    let about = match tx {
        Some(tx) => Some((true, table_of(&tx.unsigned.from))),
        None if request.jsonrpc == "2.0" && request.method == methods::GET_ACCOUNT => {
            table_of_request(request)
        }
        None => None,
    };
    about.map_or(Route::Local, |about| decide(state, about, forwarded))
}

fn decide<K: Kv>(state: &NodeState<K>, (is_send, table): (bool, u8), forwarded: bool) -> Route {
    let at = Standing::of(state, table, forwarded);
    if is_send {
        send(at)
    } else {
        account(at, table)
    }
}

/// Whether an HTTP request was forwarded by another node.
pub fn is_forwarded(headers: &axum::http::HeaderMap) -> bool {
    headers.contains_key(FORWARDED_HEADER)
}

/// Marks `response`'s result with the shard that answered, unless it says so already.
pub fn mark_shard(response: &mut Value, shard: u16) {
    if let Some(result) = response.get_mut("result").and_then(Value::as_object_mut) {
        result.entry("shard").or_insert_with(|| shard.into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(committee: Option<Committee>, holds: bool, owner: Option<u16>) -> Standing {
        Standing {
            committee,
            holds,
            owner,
            forwarded: false,
        }
    }

    fn refusal(route: Route) -> (i64, String) {
        match route {
            Route::Refuse(code, message) => (code, message),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn an_unsharded_node_answers_every_account() {
        assert_eq!(account(at(None, false, None), 7), Route::Local);
        assert_eq!(send(at(None, false, None)), Route::Local);
    }

    #[test]
    fn the_shard_holding_the_table_answers() {
        let shard1 = Some(Committee::Shard(1));
        assert_eq!(account(at(shard1, true, Some(1)), 7), Route::Local);
        // The old owner still holds a table until its epoch-end block executes, even
        // when the beacon's map already names the new owner: its answer is right.
        assert_eq!(account(at(shard1, true, Some(2)), 7), Route::Local);
        // Forwarded here by a node that thought so: answered.
        let forwarded = Standing {
            forwarded: true,
            ..at(shard1, true, Some(1))
        };
        assert_eq!(account(forwarded, 7), Route::Local);
    }

    #[test]
    fn other_shards_and_the_beacon_forward_to_the_owner() {
        assert_eq!(
            account(at(Some(Committee::Shard(0)), false, Some(1)), 200),
            Route::Forward(1)
        );
        // A table moved away: the node's store is stale, the new owner answers.
        assert_eq!(
            account(at(Some(Committee::Shard(1)), false, Some(2)), 200),
            Route::Forward(2)
        );
        assert_eq!(
            account(at(Some(Committee::Beacon), false, Some(0)), 3),
            Route::Forward(0)
        );
    }

    #[test]
    fn the_new_owner_refuses_until_it_has_imported_the_table() {
        let (code, message) = refusal(account(at(Some(Committee::Shard(2)), false, Some(2)), 9));
        assert_eq!(code, codes::RESHARDING);
        assert_eq!(
            message,
            "table 9 is being handed off to shard 2; retry shortly"
        );
    }

    #[test]
    fn a_forwarded_read_is_never_forwarded_again() {
        let bounced = Standing {
            forwarded: true,
            ..at(Some(Committee::Shard(0)), false, Some(1))
        };
        let (code, message) = refusal(account(bounced, 200));
        assert_eq!(code, codes::RESHARDING);
        assert!(message.contains("belongs to shard 1"), "{message}");
        // Sends are admitted (or refused by admission with -33010) instead.
        assert_eq!(send(bounced), Route::Local);
    }

    #[test]
    fn without_a_map_a_sharded_node_refuses_rather_than_guess() {
        let (code, _) = refusal(account(at(Some(Committee::Shard(0)), false, None), 1));
        assert_eq!(code, codes::RESHARDING);
    }

    #[test]
    fn sends_go_to_the_senders_shard() {
        assert_eq!(
            send(at(Some(Committee::Shard(0)), true, Some(0))),
            Route::Local
        );
        assert_eq!(
            send(at(Some(Committee::Shard(0)), false, Some(1))),
            Route::Forward(1)
        );
        assert_eq!(
            send(at(Some(Committee::Beacon), false, Some(1))),
            Route::Forward(1)
        );
    }

    #[test]
    fn the_answering_shard_is_marked_once() {
        let mut answer = serde_json::json!({"result": {"balance": 5}});
        mark_shard(&mut answer, 3);
        assert_eq!(answer["result"]["shard"], 3);
        mark_shard(&mut answer, 4);
        assert_eq!(answer["result"]["shard"], 3);
        let mut error = serde_json::json!({"error": {"code": -33012}});
        mark_shard(&mut error, 3);
        assert!(error.get("result").is_none());
    }
}
