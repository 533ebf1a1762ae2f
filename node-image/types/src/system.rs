//! System transactions: what the beacon chain orders (shard count, validator registry).
//!
//! A system transaction is a [`SystemPayload`] signed by one key. The signature is ed25519
//! over `SYSTEM_NAMESPACE ‖ encode(payload)`, and the payload starts with the chain id and
//! the signer's next system `sequence`, so a signature never verifies on another network,
//! for another payload, or a second time once the signer's sequence has moved on (replay
//! protection). Sequences are per signer (like account nonces, unlike governance's single
//! registry sequence) so that many nodes can register at once without racing each other
//! for one number.
//!
//! Who may sign what needs beacon state (the admin key, the members) and is checked by
//! `trellis-node-beacon`; this module checks everything that needs no state.
//!
//! ```text
//! payload  = len(chain_id) ‖ chain_id ‖ sequence (varint u64) ‖ action
//! action   = 0x00 ‖ count (u16 BE) ‖ n (varint u32, 0 or 256) ‖ load (varint u64) * n
//!                                                               -- set shard count
//!          | 0x01 ‖ shard (u16 BE) ‖ node_key (32) ‖ len(p2p) ‖ p2p ‖ len(rpc) ‖ rpc
//!                                                               -- register validator
//!          | 0x02 ‖ node_key (32)                               -- deregister validator
//! tx       = payload ‖ signer (32) ‖ signature (64)
//! ```

use crate::governance::MAX_P2P_ADDRESS_LEN;
use crate::{
    Digest, PrivateKey, PublicKey, Signature, Signer, TABLES, Verifier, bytes_size, from_hex,
    read_bytes, to_hex, write_bytes,
};
use bytes::BufMut;
use commonware_codec::{
    Buf, DecodeExt, Encode, EncodeSize, Error as CodecError, FixedSize, Read, ReadExt, Write,
    varint::UInt,
};
use commonware_cryptography::{Hasher, Sha256};

/// Domain separator of system transaction signatures (distinct from transactions,
/// governance and consensus).
pub const SYSTEM_NAMESPACE: &[u8] = b"_TRELLIS_SYSTEM_V1";
/// `shard` of a validator that lets the beacon place it in any shard (public mode's
/// seeded shuffle; consortium mode's per-organisation spread).
pub const ANY_SHARD: u16 = u16::MAX;
/// Most shards a network can ever have (one per table).
pub const MAX_SHARDS: u16 = TABLES as u16;
/// Longest validator address (`host:port`, p2p or RPC), in bytes.
pub const MAX_ADDRESS_LEN: usize = MAX_P2P_ADDRESS_LEN;
/// Largest encoding of one system transaction: chain id (1 + 32), sequence (10), the
/// largest action (a shard count with a full load hint: 1 + 2 + 2 + 256 × 10), signer (32)
/// and signature (64).
pub const MAX_SYSTEM_TX_SIZE: usize =
    (1 + crate::MAX_CHAIN_ID_LEN) + 10 + (1 + 2 + 2 + TABLES * 10) + 32 + 64;

/// Why a system transaction is not acceptable before looking at beacon state.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SystemError {
    #[error("malformed system transaction: {0}")]
    Malformed(String),
    #[error("system transaction is {0} bytes, more than the {MAX_SYSTEM_TX_SIZE}-byte limit")]
    Oversized(usize),
    #[error("system transaction is for chain {got:?}, this is {expected:?}")]
    WrongChain { expected: String, got: String },
    #[error("bad signature from key {0}")]
    BadSignature(String),
}

/// What a system transaction does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SystemAction {
    /// Change the number of shards at the next epoch boundary (network admin key only).
    SetShardCount {
        /// New shard count, `1..=max_shards`.
        count: u16,
        /// Per-table load the operator measured (e.g. tx/s), one entry per table, or
        /// empty when unknown (then every table weighs the same). The beacon moves the
        /// busiest tables first when it scales out.
        load: Vec<u64>,
    },
    /// Add a validator (or change its shard or addresses) from the next epoch on.
    RegisterValidator {
        /// The shard it validates, or [`ANY_SHARD`] to let the beacon place it.
        shard: u16,
        node_key: PublicKey,
        /// `host:port` of its p2p listener.
        p2p_address: String,
        /// `host:port` of its JSON-RPC listener (the relay between committees).
        rpc_address: String,
    },
    /// Remove a validator from the next epoch on.
    DeregisterValidator { node_key: PublicKey },
}

const ACTION_SET_SHARD_COUNT: u8 = 0;
const ACTION_REGISTER: u8 = 1;
const ACTION_DEREGISTER: u8 = 2;

fn read_address(buf: &mut impl Buf, what: &'static str) -> Result<String, CodecError> {
    let bytes = read_bytes(buf, MAX_ADDRESS_LEN)?;
    let s = String::from_utf8(bytes).map_err(|_| CodecError::Invalid(what, "not UTF-8"))?;
    if s.is_empty() {
        return Err(CodecError::Invalid(what, "empty"));
    }
    if s.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(CodecError::Invalid(what, "control or space character"));
    }
    Ok(s)
}

impl Write for SystemAction {
    fn write(&self, buf: &mut impl BufMut) {
        match self {
            SystemAction::SetShardCount { count, load } => {
                ACTION_SET_SHARD_COUNT.write(buf);
                count.write(buf);
                // Bounded by TABLES when decoded; a longer hand-built list fails to decode.
                UInt(load.len() as u32).write(buf);
                for l in load {
                    UInt(*l).write(buf);
                }
            }
            SystemAction::RegisterValidator {
                shard,
                node_key,
                p2p_address,
                rpc_address,
            } => {
                ACTION_REGISTER.write(buf);
                shard.write(buf);
                node_key.write(buf);
                write_bytes(p2p_address.as_bytes(), buf);
                write_bytes(rpc_address.as_bytes(), buf);
            }
            SystemAction::DeregisterValidator { node_key } => {
                ACTION_DEREGISTER.write(buf);
                node_key.write(buf);
            }
        }
    }
}

impl EncodeSize for SystemAction {
    fn encode_size(&self) -> usize {
        1 + match self {
            SystemAction::SetShardCount { load, .. } => {
                2 + UInt(load.len() as u32).encode_size()
                    + load.iter().map(|l| UInt(*l).encode_size()).sum::<usize>()
            }
            SystemAction::RegisterValidator {
                p2p_address,
                rpc_address,
                ..
            } => {
                2 + PublicKey::SIZE + bytes_size(p2p_address.len()) + bytes_size(rpc_address.len())
            }
            SystemAction::DeregisterValidator { .. } => PublicKey::SIZE,
        }
    }
}

impl Read for SystemAction {
    type Cfg = ();
    fn read_cfg(buf: &mut impl Buf, _: &()) -> Result<Self, CodecError> {
        match u8::read(buf)? {
            ACTION_SET_SHARD_COUNT => {
                let count = u16::read(buf)?;
                let n = u32::from(UInt::<u32>::read(buf)?) as usize;
                if n != 0 && n != TABLES {
                    return Err(CodecError::Invalid(
                        "SetShardCount",
                        "load hint must have 256 entries (one per table) or none",
                    ));
                }
                // Each entry is at least one byte: refuse counts the buffer cannot hold
                // before reserving memory.
                if buf.remaining() < n {
                    return Err(CodecError::EndOfBuffer);
                }
                let mut load = Vec::with_capacity(n);
                for _ in 0..n {
                    load.push(UInt::<u64>::read(buf)?.into());
                }
                Ok(SystemAction::SetShardCount { count, load })
            }
            ACTION_REGISTER => {
                let shard = u16::read(buf)?;
                let node_key = PublicKey::read(buf)?;
                let p2p_address = read_address(buf, "p2p address")?;
                let rpc_address = read_address(buf, "rpc address")?;
                Ok(SystemAction::RegisterValidator {
                    shard,
                    node_key,
                    p2p_address,
                    rpc_address,
                })
            }
            ACTION_DEREGISTER => Ok(SystemAction::DeregisterValidator {
                node_key: PublicKey::read(buf)?,
            }),
            other => Err(CodecError::InvalidEnum(other)),
        }
    }
}

impl SystemAction {
    /// The action's name as refusals and logs say it.
    pub fn name(&self) -> &'static str {
        match self {
            SystemAction::SetShardCount { .. } => "SetShardCount",
            SystemAction::RegisterValidator { .. } => "RegisterValidator",
            SystemAction::DeregisterValidator { .. } => "DeregisterValidator",
        }
    }
}

/// The signed part of a system transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SystemPayload {
    pub chain_id: String,
    /// Must equal the signer's next system sequence when executed (0 for a key that never
    /// signed one; `trellis_getShardMap` → `sequences`, or the beacon's refusal, says
    /// which). Every executed system transaction with a valid signature and sequence,
    /// successful or not, moves the signer's sequence on by one, so each payload executes
    /// at most once.
    pub sequence: u64,
    pub action: SystemAction,
}

impl Write for SystemPayload {
    fn write(&self, buf: &mut impl BufMut) {
        write_bytes(self.chain_id.as_bytes(), buf);
        UInt(self.sequence).write(buf);
        self.action.write(buf);
    }
}

impl EncodeSize for SystemPayload {
    fn encode_size(&self) -> usize {
        bytes_size(self.chain_id.len())
            + UInt(self.sequence).encode_size()
            + self.action.encode_size()
    }
}

impl Read for SystemPayload {
    type Cfg = ();
    fn read_cfg(buf: &mut impl Buf, _: &()) -> Result<Self, CodecError> {
        let chain_id = String::from_utf8(read_bytes(buf, crate::MAX_CHAIN_ID_LEN)?)
            .map_err(|_| CodecError::Invalid("SystemPayload", "chain id is not UTF-8"))?;
        let sequence = UInt::<u64>::read(buf)?.into();
        let action = SystemAction::read(buf)?;
        Ok(Self {
            chain_id,
            sequence,
            action,
        })
    }
}

impl SystemPayload {
    /// Checks the fields the decoder would refuse, for payloads built in code.
    pub fn check(&self) -> Result<(), SystemError> {
        SystemPayload::decode(commonware_codec::Copying(self.encode().as_ref()))
            .map(|_| ())
            .map_err(|e| SystemError::Malformed(e.to_string()))
    }

    /// Signs with `key`.
    pub fn sign(self, key: &PrivateKey) -> SystemTx {
        let signature = key.sign(SYSTEM_NAMESPACE, &self.encode());
        SystemTx {
            payload: self,
            signer: key.public_key(),
            signature,
        }
    }
}

/// A signed system transaction: what `trellis_submitSystem` takes (hex).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SystemTx {
    pub payload: SystemPayload,
    /// The key that signed: the network admin key, a member's admin key or the node key
    /// being registered (which ones are allowed depends on the action and the mode).
    pub signer: PublicKey,
    pub signature: Signature,
}

impl Write for SystemTx {
    fn write(&self, buf: &mut impl BufMut) {
        self.payload.write(buf);
        self.signer.write(buf);
        self.signature.write(buf);
    }
}

impl EncodeSize for SystemTx {
    fn encode_size(&self) -> usize {
        self.payload.encode_size() + PublicKey::SIZE + Signature::SIZE
    }
}

impl Read for SystemTx {
    type Cfg = ();
    fn read_cfg(buf: &mut impl Buf, _: &()) -> Result<Self, CodecError> {
        let payload = SystemPayload::read(buf)?;
        let signer = PublicKey::read(buf)?;
        let signature = Signature::read(buf)?;
        Ok(Self {
            payload,
            signer,
            signature,
        })
    }
}

impl SystemTx {
    /// Decodes untrusted bytes: size first, then structure (every byte consumed).
    pub fn decode_untrusted(bytes: &[u8]) -> Result<Self, SystemError> {
        if bytes.len() > MAX_SYSTEM_TX_SIZE {
            return Err(SystemError::Oversized(bytes.len()));
        }
        SystemTx::decode(commonware_codec::Copying(bytes))
            .map_err(|e| SystemError::Malformed(e.to_string()))
    }

    /// Parses hex (the RPC's `tx` parameter).
    pub fn from_hex(s: &str) -> Result<Self, SystemError> {
        let s = s.trim();
        // Two hex digits per byte (plus an optional 0x): refuse before allocating.
        if s.len() > 2 + 2 * MAX_SYSTEM_TX_SIZE {
            return Err(SystemError::Oversized(s.len() / 2));
        }
        let bytes = from_hex(s).ok_or_else(|| SystemError::Malformed("not hex".into()))?;
        Self::decode_untrusted(&bytes)
    }

    /// Hex of the encoding (the RPC's `tx` parameter).
    pub fn to_hex(&self) -> String {
        to_hex(&self.encode())
    }

    /// SHA-256 of the encoding: the transaction's identity in RPC and receipts.
    pub fn hash(&self) -> Digest {
        Sha256::hash(&[&self.encode()])
    }

    /// Checks what needs no beacon state: the chain id and the signature.
    pub fn check_stateless(&self, chain_id: &str) -> Result<(), SystemError> {
        if self.payload.chain_id != chain_id {
            return Err(SystemError::WrongChain {
                expected: chain_id.to_string(),
                got: self.payload.chain_id.clone(),
            });
        }
        if !self
            .signer
            .verify(SYSTEM_NAMESPACE, &self.payload.encode(), &self.signature)
        {
            return Err(SystemError::BadSignature(to_hex(self.signer.as_ref())));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_key;

    const CHAIN: &str = "system-test";

    fn payloads() -> Vec<SystemPayload> {
        let actions = vec![
            SystemAction::SetShardCount {
                count: 3,
                load: vec![],
            },
            SystemAction::SetShardCount {
                count: MAX_SHARDS,
                load: (0..TABLES as u64).map(|t| t * 1_000).collect(),
            },
            SystemAction::RegisterValidator {
                shard: 2,
                node_key: test_key(7).public_key(),
                p2p_address: "127.0.0.9:9000".into(),
                rpc_address: "shard-2-0.shard-2:8545".into(),
            },
            SystemAction::RegisterValidator {
                shard: ANY_SHARD,
                node_key: test_key(8).public_key(),
                p2p_address: "a:1".into(),
                rpc_address: "b:2".into(),
            },
            SystemAction::DeregisterValidator {
                node_key: test_key(7).public_key(),
            },
        ];
        actions
            .into_iter()
            .enumerate()
            .map(|(i, action)| SystemPayload {
                chain_id: CHAIN.into(),
                sequence: if i == 1 { u64::MAX } else { i as u64 },
                action,
            })
            .collect()
    }

    #[test]
    fn system_transactions_round_trip_and_verify() {
        let key = test_key(1);
        for payload in payloads() {
            payload.check().unwrap();
            let tx = payload.clone().sign(&key);
            let bytes = tx.encode();
            assert_eq!(bytes.len(), tx.encode_size());
            assert!(bytes.len() <= MAX_SYSTEM_TX_SIZE);
            let back = SystemTx::from_hex(&tx.to_hex()).unwrap();
            assert_eq!(back, tx);
            assert_eq!(back.hash(), tx.hash());
            back.check_stateless(CHAIN).unwrap();
            assert_eq!(back.signer, key.public_key());
        }
    }

    #[test]
    fn largest_transaction_fits_the_bound() {
        let payload = SystemPayload {
            chain_id: "c".repeat(crate::MAX_CHAIN_ID_LEN),
            sequence: u64::MAX,
            action: SystemAction::SetShardCount {
                count: u16::MAX,
                load: vec![u64::MAX; TABLES],
            },
        };
        let tx = payload.sign(&test_key(1));
        assert_eq!(tx.encode().len(), MAX_SYSTEM_TX_SIZE);
        SystemTx::decode_untrusted(&tx.encode()).unwrap();
        let register = SystemPayload {
            chain_id: "c".repeat(crate::MAX_CHAIN_ID_LEN),
            sequence: u64::MAX,
            action: SystemAction::RegisterValidator {
                shard: 0,
                node_key: test_key(2).public_key(),
                p2p_address: "p".repeat(MAX_ADDRESS_LEN),
                rpc_address: "r".repeat(MAX_ADDRESS_LEN),
            },
        }
        .sign(&test_key(1));
        assert!(register.encode().len() <= MAX_SYSTEM_TX_SIZE);
        SystemTx::decode_untrusted(&register.encode()).unwrap();
    }

    #[test]
    fn bad_input_is_refused() {
        let key = test_key(1);
        for payload in payloads() {
            let bytes = payload.sign(&key).encode();
            for len in 0..bytes.len() {
                assert!(
                    SystemTx::decode_untrusted(&bytes[..len]).is_err(),
                    "truncated to {len} decoded"
                );
            }
            let mut trailing = bytes.to_vec();
            trailing.push(0);
            assert!(matches!(
                SystemTx::decode_untrusted(&trailing),
                Err(SystemError::Malformed(_))
            ));
        }
        assert_eq!(
            SystemTx::decode_untrusted(&vec![0; MAX_SYSTEM_TX_SIZE + 1]),
            Err(SystemError::Oversized(MAX_SYSTEM_TX_SIZE + 1))
        );
        assert!(matches!(
            SystemTx::from_hex(&"00".repeat(MAX_SYSTEM_TX_SIZE + 2)),
            Err(SystemError::Oversized(_))
        ));
        assert_eq!(
            SystemTx::from_hex("zz"),
            Err(SystemError::Malformed("not hex".into()))
        );

        // A load hint must cover every table or none.
        let short = SystemPayload {
            chain_id: CHAIN.into(),
            sequence: 0,
            action: SystemAction::SetShardCount {
                count: 2,
                load: vec![1; 255],
            },
        };
        let err = short.check().unwrap_err().to_string();
        assert!(err.contains("256 entries"), "{err}");

        // Empty, spaced or control-character addresses do not decode.
        for bad in ["", "a b:1", "a\n:1"] {
            let p = SystemPayload {
                chain_id: CHAIN.into(),
                sequence: 0,
                action: SystemAction::RegisterValidator {
                    shard: 0,
                    node_key: test_key(2).public_key(),
                    p2p_address: "ok:1".into(),
                    rpc_address: bad.into(),
                },
            };
            assert!(p.check().is_err(), "{bad:?} accepted");
        }

        // An unknown action tag.
        let mut unknown = payloads()[0].clone().sign(&key).encode().to_vec();
        unknown[1 + CHAIN.len() + 1] = 9;
        assert_eq!(
            SystemTx::decode_untrusted(&unknown),
            Err(SystemError::Malformed(
                CodecError::InvalidEnum(9).to_string()
            ))
        );
    }

    #[test]
    fn wrong_chain_and_tampering_are_refused() {
        let key = test_key(1);
        let tx = payloads()[0].clone().sign(&key);
        assert!(matches!(
            tx.check_stateless("other"),
            Err(SystemError::WrongChain { .. })
        ));
        let mut moved = tx.clone();
        moved.payload.chain_id = "other".into();
        assert!(matches!(
            moved.check_stateless("other"),
            Err(SystemError::BadSignature(_))
        ));
        let mut replayed = tx.clone();
        replayed.payload.sequence += 1;
        assert!(matches!(
            replayed.check_stateless(CHAIN),
            Err(SystemError::BadSignature(_))
        ));
        let mut other_signer = tx.clone();
        other_signer.signer = test_key(2).public_key();
        assert_eq!(
            other_signer.check_stateless(CHAIN),
            Err(SystemError::BadSignature(to_hex(
                test_key(2).public_key().as_ref()
            )))
        );
        // A governance or transaction signature over the same bytes is not a system one.
        let gov = key.sign(
            crate::governance::GOVERNANCE_NAMESPACE,
            &tx.payload.encode(),
        );
        let mut cross = tx;
        cross.signature = gov;
        assert!(cross.check_stateless(CHAIN).is_err());
    }

    #[test]
    fn random_bytes_never_panic() {
        // Deterministic pseudo-random garbage of every length, and mutations of valid
        // transactions (more likely to get deep into the decoder): errors, never panics.
        let mut x: u64 = 0x51f1_5e3d_0c2a_9b77;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for len in 0..(MAX_SYSTEM_TX_SIZE + 8) {
            let garbage: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            let _ = SystemTx::decode_untrusted(&garbage);
        }
        let valid: Vec<Vec<u8>> = payloads()
            .into_iter()
            .map(|p| p.sign(&test_key(3)).encode().to_vec())
            .collect();
        for round in 0..20_000 {
            let mut bytes = valid[round % valid.len()].clone();
            for _ in 0..(1 + next() % 4) {
                let at = (next() as usize) % bytes.len();
                bytes[at] = next() as u8;
            }
            if let Ok(tx) = SystemTx::decode_untrusted(&bytes) {
                // Whatever decodes re-encodes to the same bytes (one encoding per value).
                assert_eq!(tx.encode().to_vec(), bytes);
            }
        }
    }
}
