//! Why the beacon refuses a system transaction, in words an operator can act on.

use trellis_node_api::error_codes;
use trellis_node_types::system::ANY_SHARD;

/// Why a system transaction is refused (at submission, or when executed in a block).
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum SystemRefusal {
    #[error("system transaction is for chain {got:?}, this is {expected:?}")]
    WrongChain { expected: String, got: String },
    #[error("bad signature from key {0}")]
    BadSignature(String),
    #[error(
        "sequence {got} of key {signer} was already used; its next system sequence is {expected}"
    )]
    StaleSequence {
        signer: String,
        got: u64,
        expected: u64,
    },
    #[error(
        "sequence {got} of key {signer} is ahead of its next system sequence {expected}; \
         submit sequence {expected} first and wait until it executed"
    )]
    FutureSequence {
        signer: String,
        got: u64,
        expected: u64,
    },
    #[error("{action} must be signed by {required}; it was signed by {signer}")]
    WrongSigner {
        action: &'static str,
        required: String,
        signer: String,
    },
    #[error(
        "key {0} is not the admin key of an admitted member; in consortium mode members \
         register their own validators"
    )]
    NotMember(String),
    #[error(
        "validator {key} belongs to member {owner:?}; only that member's admin key can change or remove it"
    )]
    NotOwner { key: String, owner: String },
    #[error("shard count {count} is outside 1..={max_shards} (this network's max_shards)")]
    CountOutOfRange { count: u16, max_shards: u16 },
    #[error("the network already has {0} shards")]
    SameCount(u16),
    #[error("shard {shard} would have no validators: register validators for shard {shard} first")]
    EmptyShard { shard: u16 },
    #[error(
        "a change to {count} shards is already pending; it applies when beacon height {height} \
         is finalized — submit another change after that"
    )]
    ChangePending { count: u16, height: u64 },
    #[error(
        "resharding in progress: tables are being handed off during epoch {epoch}; submit \
         again once beacon height {until} is finalized"
    )]
    Resharding { epoch: u64, until: u64 },
    #[error(
        "shard {shard} is outside 0..{max_shards} (max_shards); use {ANY_SHARD} to let the \
         beacon place the validator"
    )]
    ShardOutOfRange { shard: u16, max_shards: u16 },
    #[error("{what} {address:?} is not host:port (a host and a port 1..=65535)")]
    BadAddress { what: &'static str, address: String },
    #[error("node key {0} is a beacon validator; a node validates one committee only")]
    BeaconValidator(String),
    #[error("node key {0} is not a registered validator")]
    UnknownValidator(String),
    #[error("node key {0} is already registered for this shard with these addresses")]
    Unchanged(String),
    #[error("the beacon already holds {max} validators; deregister one first")]
    TooManyValidators { max: usize },
}

impl SystemRefusal {
    /// The JSON-RPC error code `trellis_submitSystem` answers with.
    pub fn code(&self) -> i64 {
        match self {
            SystemRefusal::ChangePending { .. } | SystemRefusal::Resharding { .. } => {
                error_codes::RESHARDING
            }
            _ => error_codes::SYSTEM_REFUSED,
        }
    }

    /// True when executing the refused transaction still moves the signer's sequence on:
    /// the signature, sequence and signer were right and only the action was refused, so
    /// the same bytes must never execute later (when they might pass). Refusals of the
    /// signature, sequence or signer change nothing (no state for keys that may not sign).
    pub fn consumes_sequence(&self) -> bool {
        !matches!(
            self,
            SystemRefusal::WrongChain { .. }
                | SystemRefusal::BadSignature(_)
                | SystemRefusal::StaleSequence { .. }
                | SystemRefusal::FutureSequence { .. }
                | SystemRefusal::WrongSigner { .. }
                | SystemRefusal::NotMember(_)
                | SystemRefusal::NotOwner { .. }
        )
    }
}
