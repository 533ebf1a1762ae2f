//! Transactions and blocks of a Trellis chain.
//!
//! Every type here has an explicit binary encoding with bounded decoding: each length is
//! checked against a fixed limit before anything is allocated, unknown tags are refused,
//! and trailing bytes are an error. Decoding never panics on any input.
//!
//! A transaction is signed over `NAMESPACE ‖ encode(unsigned part)`, and the unsigned
//! part starts with the chain id, so a signature made for one network never verifies on
//! another, and one made for a transaction never verifies as anything else.

use bytes::{Buf as _, BufMut};
use commonware_codec::{
    Buf, DecodeExt, EncodeSize, Error as CodecError, FixedSize, Read, ReadExt, Write, varint::UInt,
};
use commonware_cryptography::{Hasher, Sha256, ed25519, sha256};
use std::fmt;

pub mod governance;
pub mod receipt;
pub mod shard;
pub use governance::{
    Approval, GovernanceAction, GovernanceError, GovernanceTx, MemberSpec, Proposal,
};
pub mod system;
pub use receipt::{CROSS_RECEIPT_SIZE, CrossReceipt, ReceiptError};
pub use shard::{BlockHeader, Committee, Credit, ShardHeader, Sharding, TableRoot};
pub use system::{SystemAction, SystemError, SystemPayload, SystemTx};

pub use commonware_codec::Encode;
pub use commonware_cryptography::ed25519::{PrivateKey, PublicKey, Signature};
pub use commonware_cryptography::sha256::Digest;
pub use commonware_cryptography::{Signer, Verifier};

/// Domain separator of transaction signatures.
pub const TX_NAMESPACE: &[u8] = b"_TRELLIS_TX_V1";
/// Longest chain id, in bytes.
pub const MAX_CHAIN_ID_LEN: usize = 32;
/// Longest data-anchor key, in bytes.
pub const MAX_ANCHOR_KEY_LEN: usize = 64;
/// Most transactions in one block.
pub const MAX_BLOCK_TXS: usize = 20_000;
/// Most governance transactions in one block.
pub const MAX_BLOCK_GOVERNANCE: usize = 8;
/// Number of state tables (fixed forever: `table(account) = H(account) mod 256`).
pub const TABLES: usize = 256;

/// Largest encoding of one transaction. Derived from the field bounds: chain id (1 + 32),
/// from (32), nonce and fee (10 each as varints), kind (1 + the largest variant: anchor
/// key 1 + 64 and hash 32; a transfer is 32 + 10), signature (64).
pub const MAX_TX_SIZE: usize =
    (1 + MAX_CHAIN_ID_LEN) + 32 + 10 + 10 + (1 + 1 + MAX_ANCHOR_KEY_LEN + 32) + 64;

/// Why a transaction is not acceptable before looking at state.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TxError {
    #[error("malformed transaction: {0}")]
    Malformed(String),
    #[error("transaction is {0} bytes, more than the {MAX_TX_SIZE}-byte limit")]
    Oversized(usize),
    #[error("transaction is for chain {got:?}, this is {expected:?}")]
    WrongChain { expected: String, got: String },
    #[error("bad signature")]
    BadSignature,
}

/// The table (0..256) an account lives in. Never changes for an account.
pub fn table_of(account: &PublicKey) -> u8 {
    let digest = Sha256::hash(&[account.as_ref()]);
    digest.0[31]
}

/// Most public keys remembered by [`read_public_key`].
const KEY_CACHE: usize = 65_536;

static KEYS: std::sync::LazyLock<std::sync::Mutex<std::collections::HashMap<[u8; 32], PublicKey>>> =
    std::sync::LazyLock::new(Default::default);

/// Reads an ed25519 public key. Decoding one decompresses a curve point, the costliest
/// step of decoding a transaction (two per transfer), and a node decodes the same
/// accounts over and over (RPC, gossip, every proposed block). Keys that decoded are
/// remembered: a memo of a pure function, bounded (cleared when full), and bytes that
/// fail to decode are never remembered, so what decodes and what fails is unchanged.
fn read_public_key(buf: &mut impl Buf) -> Result<PublicKey, CodecError> {
    let raw = <[u8; 32]>::read(buf)?;
    let known = KEYS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&raw)
        .cloned();
    if let Some(key) = known {
        return Ok(key);
    }
    let key = PublicKey::decode(commonware_codec::Copying(raw.as_slice()))?;
    let mut keys = KEYS.lock().unwrap_or_else(|p| p.into_inner());
    if keys.len() >= KEY_CACHE {
        keys.clear();
    }
    keys.insert(raw, key.clone());
    Ok(key)
}

/// Writes `bytes` with a varint length prefix (read back by [`read_bytes`]). Callers bound
/// lengths (the MAX_* constants) far below u32::MAX.
pub fn write_bytes(bytes: &[u8], buf: &mut impl BufMut) {
    UInt(bytes.len() as u32).write(buf);
    buf.put_slice(bytes);
}

/// Reads a varint-length-prefixed byte string of at most `max` bytes (refused before
/// anything is allocated when longer, or when the buffer holds less).
pub fn read_bytes(buf: &mut impl Buf, max: usize) -> Result<Vec<u8>, CodecError> {
    let len = u32::from(UInt::<u32>::read(buf)?) as usize;
    if len > max {
        return Err(CodecError::InvalidLength(len));
    }
    if buf.remaining() < len {
        return Err(CodecError::EndOfBuffer);
    }
    let mut out = vec![0u8; len];
    buf.copy_to_slice(&mut out);
    Ok(out)
}

/// The encoded size of a byte string of `len` bytes written by [`write_bytes`].
pub fn bytes_size(len: usize) -> usize {
    UInt(len as u32).encode_size() + len
}

/// What a transaction does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxKind {
    /// Move `amount` from the signer to `to`.
    Transfer { to: PublicKey, amount: u64 },
    /// Store a 32-byte hash under `key` in the signer's namespace (notarisation,
    /// supply-chain records). A later anchor under the same key replaces it.
    Anchor { key: Vec<u8>, hash: [u8; 32] },
}

const KIND_TRANSFER: u8 = 0;
const KIND_ANCHOR: u8 = 1;

impl Write for TxKind {
    fn write(&self, buf: &mut impl BufMut) {
        match self {
            TxKind::Transfer { to, amount } => {
                KIND_TRANSFER.write(buf);
                to.write(buf);
                UInt(*amount).write(buf);
            }
            TxKind::Anchor { key, hash } => {
                KIND_ANCHOR.write(buf);
                write_bytes(key, buf);
                buf.put_slice(hash);
            }
        }
    }
}

impl EncodeSize for TxKind {
    fn encode_size(&self) -> usize {
        1 + match self {
            TxKind::Transfer { amount, .. } => PublicKey::SIZE + UInt(*amount).encode_size(),
            TxKind::Anchor { key, .. } => bytes_size(key.len()) + 32,
        }
    }
}

impl Read for TxKind {
    type Cfg = ();
    fn read_cfg(buf: &mut impl Buf, _: &()) -> Result<Self, CodecError> {
        match u8::read(buf)? {
            KIND_TRANSFER => {
                let to = read_public_key(buf)?;
                let amount = UInt::<u64>::read(buf)?.into();
                Ok(TxKind::Transfer { to, amount })
            }
            KIND_ANCHOR => {
                let key = read_bytes(buf, MAX_ANCHOR_KEY_LEN)?;
                if key.is_empty() {
                    return Err(CodecError::Invalid("Anchor", "empty key"));
                }
                let hash = <[u8; 32]>::read(buf)?;
                Ok(TxKind::Anchor { key, hash })
            }
            other => Err(CodecError::InvalidEnum(other)),
        }
    }
}

/// The signed part of a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnsignedTx {
    pub chain_id: String,
    pub from: PublicKey,
    /// Must equal the account's next nonce when executed; each account's transactions
    /// therefore execute at most once and in order.
    pub nonce: u64,
    /// Paid by `from` to the fee pool, also when execution fails after admission.
    pub fee: u64,
    pub kind: TxKind,
}

impl Write for UnsignedTx {
    fn write(&self, buf: &mut impl BufMut) {
        write_bytes(self.chain_id.as_bytes(), buf);
        self.from.write(buf);
        UInt(self.nonce).write(buf);
        UInt(self.fee).write(buf);
        self.kind.write(buf);
    }
}

impl EncodeSize for UnsignedTx {
    fn encode_size(&self) -> usize {
        bytes_size(self.chain_id.len())
            + PublicKey::SIZE
            + UInt(self.nonce).encode_size()
            + UInt(self.fee).encode_size()
            + self.kind.encode_size()
    }
}

impl Read for UnsignedTx {
    type Cfg = ();
    fn read_cfg(buf: &mut impl Buf, _: &()) -> Result<Self, CodecError> {
        let chain_id = String::from_utf8(read_bytes(buf, MAX_CHAIN_ID_LEN)?)
            .map_err(|_| CodecError::Invalid("UnsignedTx", "chain id is not UTF-8"))?;
        let from = read_public_key(buf)?;
        let nonce = UInt::<u64>::read(buf)?.into();
        let fee = UInt::<u64>::read(buf)?.into();
        let kind = TxKind::read(buf)?;
        Ok(Self {
            chain_id,
            from,
            nonce,
            fee,
            kind,
        })
    }
}

impl UnsignedTx {
    /// Signs with `key`, whose public key must be `from` for the result to verify.
    pub fn sign(self, key: &PrivateKey) -> Tx {
        let signature = key.sign(TX_NAMESPACE, &self.encode());
        Tx {
            unsigned: self,
            signature,
        }
    }
}

/// A signed transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tx {
    pub unsigned: UnsignedTx,
    pub signature: Signature,
}

impl Write for Tx {
    fn write(&self, buf: &mut impl BufMut) {
        self.unsigned.write(buf);
        self.signature.write(buf);
    }
}

impl EncodeSize for Tx {
    fn encode_size(&self) -> usize {
        self.unsigned.encode_size() + Signature::SIZE
    }
}

impl Read for Tx {
    type Cfg = ();
    fn read_cfg(buf: &mut impl Buf, _: &()) -> Result<Self, CodecError> {
        let unsigned = UnsignedTx::read(buf)?;
        let signature = Signature::read(buf)?;
        Ok(Self {
            unsigned,
            signature,
        })
    }
}

impl Tx {
    /// Decodes untrusted bytes: size first, then structure (every byte consumed).
    pub fn decode_untrusted(bytes: &[u8]) -> Result<Self, TxError> {
        if bytes.len() > MAX_TX_SIZE {
            return Err(TxError::Oversized(bytes.len()));
        }
        Tx::decode(commonware_codec::Copying(bytes)).map_err(|e| TxError::Malformed(e.to_string()))
    }

    /// Checks what needs no state: the chain id and the signature.
    pub fn check_stateless(&self, chain_id: &str) -> Result<(), TxError> {
        if self.unsigned.chain_id != chain_id {
            return Err(TxError::WrongChain {
                expected: chain_id.to_string(),
                got: self.unsigned.chain_id.clone(),
            });
        }
        if !self
            .unsigned
            .from
            .verify(TX_NAMESPACE, &self.unsigned.encode(), &self.signature)
        {
            return Err(TxError::BadSignature);
        }
        Ok(())
    }

    /// SHA-256 of the encoding: the transaction's identity in RPC and receipts.
    pub fn hash(&self) -> Digest {
        Sha256::hash(&[&self.encode()])
    }
}

/// Checks every signature with one ed25519 batch verification (a random linear
/// combination, with OS randomness so a sender cannot craft cancelling errors). True when
/// all are valid or the slice is empty.
pub fn verify_signatures(txs: &[&Tx]) -> bool {
    use commonware_cryptography::{BatchEntry, BatchVerifier};
    if txs.is_empty() {
        return true;
    }
    let messages: Vec<bytes::Bytes> = txs.iter().map(|t| t.unsigned.encode()).collect();
    let items: Vec<(&Tx, &[u8])> = txs
        .iter()
        .copied()
        .zip(messages.iter().map(|m| m.as_ref()))
        .collect();
    PublicKey::verify_batch(
        &mut commonware_utils::sys_rng(),
        &items,
        |_, (tx, message)| BatchEntry {
            namespace: TX_NAMESPACE,
            message,
            public_key: &tx.unsigned.from,
            signature: &tx.signature,
        },
        &commonware_parallel::Sequential,
    )
}

/// A block of one committee's chain.
///
/// Blocks carry no root of the state they leave: execution happens when a block is
/// finalized, and every honest node computes the same roots from the same finalized
/// sequence (the simulation tests compare them).
///
/// Two formats, fixed per network:
/// - **unsharded** (`sharding` is `None`): today's encoding, and the digest is the
///   SHA-256 of the whole encoding — unchanged, so existing networks and rolling
///   upgrades keep working;
/// - **sharded**: the header adds [`ShardHeader`] and commits to the body by its hash;
///   the digest is the SHA-256 of the [`BlockHeader`] alone, so another committee can
///   check a header against a finalization certificate without the transactions. On
///   the wire the block is the unsharded layout with the governance count raised by
///   [`SHARDED_MARK`] (which an unsharded decoder refuses), followed by the shard
///   header, credits and system transactions.
#[derive(Clone, PartialEq, Eq)]
pub struct Block {
    pub parent: Digest,
    pub height: u64,
    /// Consensus epoch and view this block was proposed in.
    pub epoch: u64,
    pub view: u64,
    /// Proposer's clock, milliseconds since the Unix epoch (informational).
    pub timestamp_ms: u64,
    pub txs: Vec<Tx>,
    /// Governance transactions, executed after `txs` (see [`governance`]).
    pub governance: Vec<GovernanceTx>,
    /// Sharded networks only: the shard header and the cross-committee body parts.
    pub sharding: Option<Sharding>,
    digest: Digest,
}

/// Added to a sharded block's governance count on the wire (see [`Block`]).
pub const SHARDED_MARK: u32 = 64;

impl fmt::Debug for Block {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Block")
            .field("height", &self.height)
            .field("view", &self.view)
            .field("digest", &self.digest)
            .field("txs", &self.txs.len())
            .field("governance", &self.governance.len())
            .field("sharded", &self.sharding.is_some())
            .finish()
    }
}

impl Block {
    pub fn new(
        parent: Digest,
        height: u64,
        epoch: u64,
        view: u64,
        timestamp_ms: u64,
        txs: Vec<Tx>,
    ) -> Self {
        Self::with_governance(parent, height, epoch, view, timestamp_ms, txs, Vec::new())
    }

    /// A block that also carries governance transactions.
    pub fn with_governance(
        parent: Digest,
        height: u64,
        epoch: u64,
        view: u64,
        timestamp_ms: u64,
        txs: Vec<Tx>,
        governance: Vec<GovernanceTx>,
    ) -> Self {
        let mut block = Self {
            parent,
            height,
            epoch,
            view,
            timestamp_ms,
            txs,
            governance,
            sharding: None,
            digest: sha256::Digest([0; 32]),
        };
        block.digest = block.compute_digest();
        block
    }

    /// This block in a sharded network's format, with `sharding`'s header and body parts.
    pub fn with_sharding(mut self, sharding: Sharding) -> Self {
        self.sharding = Some(sharding);
        self.digest = self.compute_digest();
        self
    }

    fn compute_digest(&self) -> Digest {
        match self.header() {
            Some(header) => header.digest(),
            None => Sha256::hash(&[&self.encode()]),
        }
    }

    /// The block every chain starts from (height 0, no transactions). Its digest depends
    /// on the chain id so that chains never share blocks.
    pub fn genesis(chain_id: &str) -> Self {
        let parent = Sha256::hash(&[b"_TRELLIS_GENESIS", chain_id.as_bytes()]);
        Self::new(parent, 0, 0, 0, 0, Vec::new())
    }

    /// The first block of one committee of a sharded network: its digest depends on the
    /// chain id and the committee, so committees never share blocks.
    pub fn genesis_sharded(chain_id: &str, committee: Committee) -> Self {
        let parent = Sha256::hash(&[
            b"_TRELLIS_GENESIS",
            chain_id.as_bytes(),
            b"/",
            committee.name().as_bytes(),
        ]);
        Self::new(parent, 0, 0, 0, 0, Vec::new()).with_sharding(Sharding {
            header: ShardHeader {
                committee,
                beacon_height: 0,
                state_height: 0,
                roots: Vec::new(),
            },
            credits: Vec::new(),
            system: Vec::new(),
        })
    }

    pub fn digest(&self) -> Digest {
        self.digest
    }

    /// The header of a sharded block (`None` in unsharded networks).
    pub fn header(&self) -> Option<BlockHeader> {
        let sharding = self.sharding.as_ref()?;
        Some(BlockHeader {
            parent: self.parent,
            height: self.height,
            epoch: self.epoch,
            view: self.view,
            timestamp_ms: self.timestamp_ms,
            shard: sharding.header.clone(),
            body: self.body_digest(),
        })
    }

    /// SHA-256 of the body: `count ‖ txs ‖ count ‖ governance`, and for sharded blocks
    /// `‖ count ‖ credits ‖ count ‖ system`.
    pub fn body_digest(&self) -> Digest {
        let mut body = Vec::with_capacity(self.body_size());
        self.write_body(&mut body);
        if let Some(sharding) = &self.sharding {
            sharding.write_body(&mut body);
        }
        Sha256::hash(&[&body])
    }

    fn body_size(&self) -> usize {
        UInt(self.txs.len() as u32).encode_size()
            + self.txs.iter().map(EncodeSize::encode_size).sum::<usize>()
            + UInt(self.governance.len() as u32).encode_size()
            + self
                .governance
                .iter()
                .map(EncodeSize::encode_size)
                .sum::<usize>()
            + self.sharding.as_ref().map_or(0, Sharding::body_size)
    }

    /// Transactions and governance, with the governance count as given.
    fn write_txs(&self, governance_count: u32, buf: &mut impl BufMut) {
        UInt(self.txs.len() as u32).write(buf);
        for tx in &self.txs {
            tx.write(buf);
        }
        UInt(governance_count).write(buf);
        for g in &self.governance {
            g.write(buf);
        }
    }

    fn write_body(&self, buf: &mut impl BufMut) {
        self.write_txs(self.governance.len() as u32, buf);
    }

    /// Checks what needs no state: size bounds, every transaction's chain id and
    /// signature. An honest proposer only includes transactions that pass.
    pub fn check_stateless(&self, chain_id: &str) -> Result<(), TxError> {
        self.check_stateless_except(chain_id, |_| false)
    }

    /// [`Self::check_stateless`], skipping the signature of the transactions (by index in
    /// `txs`) for which `verified` says it was already checked (e.g. they sit in the
    /// mempool). By index, so a caller that has the transactions' hashes need not hash
    /// them again.
    pub fn check_stateless_except(
        &self,
        chain_id: &str,
        verified: impl Fn(usize) -> bool,
    ) -> Result<(), TxError> {
        let mut unchecked = Vec::new();
        for (i, tx) in self.txs.iter().enumerate() {
            if tx.unsigned.chain_id != chain_id {
                return Err(TxError::WrongChain {
                    expected: chain_id.to_string(),
                    got: tx.unsigned.chain_id.clone(),
                });
            }
            if !verified(i) {
                unchecked.push(tx);
            }
        }
        if verify_signatures(&unchecked) {
            Ok(())
        } else {
            Err(TxError::BadSignature)
        }
    }
}

impl Write for Block {
    fn write(&self, buf: &mut impl BufMut) {
        self.parent.write(buf);
        UInt(self.height).write(buf);
        UInt(self.epoch).write(buf);
        UInt(self.view).write(buf);
        UInt(self.timestamp_ms).write(buf);
        match &self.sharding {
            None => self.write_body(buf),
            Some(sharding) => {
                self.write_txs(self.governance.len() as u32 + SHARDED_MARK, buf);
                sharding.header.write(buf);
                sharding.write_body(buf);
            }
        }
    }
}

impl EncodeSize for Block {
    fn encode_size(&self) -> usize {
        Digest::SIZE
            + UInt(self.height).encode_size()
            + UInt(self.epoch).encode_size()
            + UInt(self.view).encode_size()
            + UInt(self.timestamp_ms).encode_size()
            + self.body_size()
            + self.sharding.as_ref().map_or(0, |s| s.header.encode_size())
    }
}

impl Read for Block {
    type Cfg = ();
    fn read_cfg(buf: &mut impl Buf, _: &()) -> Result<Self, CodecError> {
        let parent = Digest::read(buf)?;
        let height = UInt::<u64>::read(buf)?.into();
        let epoch = UInt::<u64>::read(buf)?.into();
        let view = UInt::<u64>::read(buf)?.into();
        let timestamp_ms = UInt::<u64>::read(buf)?.into();
        let count = u32::from(UInt::<u32>::read(buf)?) as usize;
        if count > MAX_BLOCK_TXS {
            return Err(CodecError::InvalidLength(count));
        }
        // Every transaction is at least this long; refuse counts the buffer cannot hold
        // before reserving memory for them.
        const MIN_TX_SIZE: usize = 1 + 32 + 1 + 1 + 1 + 32 + 1 + 64;
        if buf.remaining() < count.saturating_mul(MIN_TX_SIZE) {
            return Err(CodecError::EndOfBuffer);
        }
        let mut txs = Vec::with_capacity(count);
        for _ in 0..count {
            txs.push(Tx::read(buf)?);
        }
        let mut count = u32::from(UInt::<u32>::read(buf)?);
        let sharded = count >= SHARDED_MARK;
        if sharded {
            count -= SHARDED_MARK;
        }
        let count = count as usize;
        if count > MAX_BLOCK_GOVERNANCE {
            return Err(CodecError::InvalidLength(count));
        }
        let mut governance = Vec::with_capacity(count);
        for _ in 0..count {
            governance.push(GovernanceTx::read(buf)?);
        }
        let sharding = if sharded {
            let header = ShardHeader::read(buf)?;
            Some(Sharding::read_body(buf, header)?)
        } else {
            None
        };
        let mut block = Self {
            parent,
            height,
            epoch,
            view,
            timestamp_ms,
            txs,
            governance,
            sharding,
            digest: sha256::Digest([0; 32]),
        };
        block.digest = block.compute_digest();
        Ok(block)
    }
}

/// Largest encoding of a block.
pub const MAX_BLOCK_SIZE: usize = 32
    + 4 * 10
    + 5
    + MAX_BLOCK_TXS * MAX_TX_SIZE
    + 1
    + MAX_BLOCK_GOVERNANCE * governance::MAX_GOVERNANCE_TX_SIZE
    + Sharding::MAX_SIZE;

impl Block {
    /// Decodes untrusted bytes (a peer's block).
    pub fn decode_untrusted(bytes: &[u8]) -> Result<Self, CodecError> {
        if bytes.len() > MAX_BLOCK_SIZE {
            return Err(CodecError::InvalidLength(bytes.len()));
        }
        Block::decode(commonware_codec::Copying(bytes))
    }
}

/// Lower-case hex.
pub fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 0xf) as usize] as char);
    }
    out
}

/// Parses hex (either case); `None` on any malformed input.
pub fn from_hex(s: &str) -> Option<Vec<u8>> {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }
    let s = s.strip_prefix("0x").unwrap_or(s);
    if !s.len().is_multiple_of(2) {
        return None;
    }
    s.as_bytes()
        .chunks(2)
        .map(|pair| Some(nibble(pair[0])? << 4 | nibble(pair[1])?))
        .collect()
}

/// Parses a hex ed25519 public key.
pub fn public_key_from_hex(s: &str) -> Option<PublicKey> {
    let bytes = from_hex(s)?;
    PublicKey::decode(commonware_codec::Copying(&bytes)).ok()
}

/// Parses a hex ed25519 private key (32-byte seed).
pub fn private_key_from_hex(s: &str) -> Option<PrivateKey> {
    let bytes = from_hex(s)?;
    PrivateKey::decode(commonware_codec::Copying(&bytes)).ok()
}

/// A private key from 32 bytes of secret randomness.
pub fn private_key_from_seed_bytes(seed: [u8; 32]) -> Option<PrivateKey> {
    PrivateKey::decode(commonware_codec::Copying(&seed)).ok()
}

/// Deterministic key for tests and simulations only (insecure).
pub fn test_key(seed: u64) -> PrivateKey {
    ed25519::PrivateKey::from_seed(seed)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHAIN: &str = "trellis-test";

    fn transfer(key: &PrivateKey, to: &PrivateKey, nonce: u64, amount: u64) -> Tx {
        UnsignedTx {
            chain_id: CHAIN.into(),
            from: key.public_key(),
            nonce,
            fee: 1,
            kind: TxKind::Transfer {
                to: to.public_key(),
                amount,
            },
        }
        .sign(key)
    }

    fn anchor(key: &PrivateKey, key_len: usize) -> Tx {
        UnsignedTx {
            chain_id: CHAIN.into(),
            from: key.public_key(),
            nonce: 0,
            fee: 0,
            kind: TxKind::Anchor {
                key: vec![7; key_len],
                hash: [9; 32],
            },
        }
        .sign(key)
    }

    #[test]
    fn transactions_round_trip_and_verify() {
        let (a, b) = (test_key(1), test_key(2));
        for tx in [
            transfer(&a, &b, 0, 5),
            transfer(&a, &b, u64::MAX, u64::MAX),
            anchor(&a, MAX_ANCHOR_KEY_LEN),
        ] {
            let bytes = tx.encode();
            assert_eq!(bytes.len(), tx.encode_size());
            assert!(bytes.len() <= MAX_TX_SIZE);
            let back = Tx::decode_untrusted(&bytes).unwrap();
            assert_eq!(back, tx);
            back.check_stateless(CHAIN).unwrap();
        }
    }

    #[test]
    fn max_tx_size_is_reached_by_the_largest_transaction() {
        let a = test_key(1);
        let mut tx = anchor(&a, MAX_ANCHOR_KEY_LEN);
        tx.unsigned.chain_id = "x".repeat(MAX_CHAIN_ID_LEN);
        tx.unsigned.nonce = u64::MAX;
        tx.unsigned.fee = u64::MAX;
        assert_eq!(tx.encode().len(), MAX_TX_SIZE);
    }

    #[test]
    fn every_truncation_is_an_error() {
        let bytes = transfer(&test_key(1), &test_key(2), 3, 4).encode();
        for len in 0..bytes.len() {
            assert!(
                Tx::decode_untrusted(&bytes[..len]).is_err(),
                "truncated to {len} decoded"
            );
        }
    }

    #[test]
    fn trailing_bytes_oversize_and_garbage_are_errors() {
        let mut bytes = transfer(&test_key(1), &test_key(2), 3, 4).encode().to_vec();
        bytes.push(0);
        assert!(matches!(
            Tx::decode_untrusted(&bytes),
            Err(TxError::Malformed(_))
        ));
        let huge = vec![0u8; MAX_TX_SIZE + 1];
        assert_eq!(
            Tx::decode_untrusted(&huge),
            Err(TxError::Oversized(MAX_TX_SIZE + 1))
        );
        // Deterministic pseudo-random garbage of every length: errors, never panics.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for len in 0..400 {
            let garbage: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            let _ = Tx::decode_untrusted(&garbage);
            let _ = Block::decode_untrusted(&garbage);
        }
    }

    #[test]
    fn remembered_keys_decode_exactly_as_before() {
        let tx = transfer(&test_key(41), &test_key(42), 0, 1);
        let bytes = tx.encode();
        // Decoded twice: the second time from remembered keys, to the same transaction.
        assert_eq!(Tx::decode_untrusted(&bytes).unwrap(), tx);
        assert_eq!(Tx::decode_untrusted(&bytes).unwrap(), tx);
        // A receiver that is not a curve point fails every time, never remembered.
        let to_at = tx.encode_size() - Signature::SIZE - 1 - 32;
        let mut bad = bytes.to_vec();
        let mut found = false;
        for candidate in 0..=255u8 {
            bad[to_at..to_at + 32].fill(candidate);
            if PublicKey::decode(commonware_codec::Copying(&bad[to_at..to_at + 32])).is_err() {
                found = true;
                break;
            }
        }
        assert!(found, "no invalid point among the constant patterns");
        for _ in 0..2 {
            assert!(matches!(
                Tx::decode_untrusted(&bad),
                Err(TxError::Malformed(_))
            ));
        }
    }

    #[test]
    fn anchor_key_bounds_are_enforced() {
        let a = test_key(1);
        // Encode a key one byte longer than allowed by hand: the decoder refuses it.
        let mut tx = anchor(&a, MAX_ANCHOR_KEY_LEN);
        if let TxKind::Anchor { key, .. } = &mut tx.unsigned.kind {
            key.push(1);
        }
        assert!(Tx::decode_untrusted(&tx.encode()).is_err());
        let empty = anchor(&a, 0);
        assert!(Tx::decode_untrusted(&empty.encode()).is_err());
    }

    #[test]
    fn unknown_kind_is_refused() {
        let tx = transfer(&test_key(1), &test_key(2), 0, 1);
        let mut bytes = tx.encode().to_vec();
        let kind_at = tx.unsigned.encode_size() - tx.unsigned.kind.encode_size();
        bytes[kind_at] = 9;
        assert_eq!(
            Tx::decode_untrusted(&bytes),
            Err(TxError::Malformed(CodecError::InvalidEnum(9).to_string()))
        );
    }

    #[test]
    fn wrong_chain_and_bad_signature_are_refused() {
        let (a, b) = (test_key(1), test_key(2));
        let tx = transfer(&a, &b, 0, 5);
        assert!(matches!(
            tx.check_stateless("other-chain"),
            Err(TxError::WrongChain { .. })
        ));

        // Re-pointing a signed transaction at another chain breaks the signature.
        let mut replayed = tx.clone();
        replayed.unsigned.chain_id = "other-chain".into();
        assert_eq!(
            replayed.check_stateless("other-chain"),
            Err(TxError::BadSignature)
        );

        let mut tampered = tx.clone();
        tampered.unsigned.kind = TxKind::Transfer {
            to: b.public_key(),
            amount: 6,
        };
        assert_eq!(tampered.check_stateless(CHAIN), Err(TxError::BadSignature));

        let mut wrong_signer = tx;
        wrong_signer.unsigned.from = b.public_key();
        assert_eq!(
            wrong_signer.check_stateless(CHAIN),
            Err(TxError::BadSignature)
        );
    }

    #[test]
    fn blocks_round_trip_with_stable_digest() {
        let (a, b) = (test_key(1), test_key(2));
        let genesis = Block::genesis(CHAIN);
        assert_ne!(genesis.digest(), Block::genesis("other").digest());
        let block = Block::new(
            genesis.digest(),
            1,
            0,
            3,
            1_000,
            vec![transfer(&a, &b, 0, 1), anchor(&b, 3)],
        );
        let back = Block::decode_untrusted(&block.encode()).unwrap();
        assert_eq!(back, block);
        assert_eq!(back.digest(), block.digest());
        back.check_stateless(CHAIN).unwrap();
        assert!(back.check_stateless("other").is_err());
        let other = Block::new(genesis.digest(), 1, 0, 4, 1_000, block.txs.clone());
        assert_ne!(other.digest(), block.digest());
    }

    #[test]
    fn block_with_absurd_tx_count_is_refused_without_allocating() {
        let genesis = Block::genesis(CHAIN);
        let mut bytes = Block::new(genesis.digest(), 1, 0, 1, 0, vec![])
            .encode()
            .to_vec();
        // Replace the transaction count (0) and the governance count (0) with a huge
        // transaction count.
        bytes.truncate(bytes.len() - 2);
        UInt(u32::MAX).write(&mut bytes);
        assert!(Block::decode_untrusted(&bytes).is_err());
        bytes.truncate(bytes.len() - UInt(u32::MAX).encode_size());
        UInt(MAX_BLOCK_TXS as u32).write(&mut bytes);
        bytes.push(0);
        assert!(matches!(
            Block::decode_untrusted(&bytes),
            Err(CodecError::EndOfBuffer)
        ));
    }

    #[test]
    fn batch_verification_finds_one_bad_signature() {
        let (a, b) = (test_key(1), test_key(2));
        let txs: Vec<Tx> = (0..20).map(|n| transfer(&a, &b, n, 1)).collect();
        let refs: Vec<&Tx> = txs.iter().collect();
        assert!(verify_signatures(&refs));
        assert!(verify_signatures(&[]));
        let mut bad = txs.clone();
        bad[7].unsigned.nonce = 99;
        let refs: Vec<&Tx> = bad.iter().collect();
        assert!(!verify_signatures(&refs));
        let genesis = Block::genesis(CHAIN);
        let block = Block::new(genesis.digest(), 1, 0, 1, 0, bad);
        assert_eq!(block.check_stateless(CHAIN), Err(TxError::BadSignature));
        // Skipping the tampered one (as if already verified) passes the rest.
        assert!(block.check_stateless_except(CHAIN, |i| i == 7).is_ok());
    }

    #[test]
    fn hex_helpers() {
        let key = test_key(5).public_key();
        assert_eq!(public_key_from_hex(&to_hex(key.as_ref())), Some(key));
        assert_eq!(from_hex("0xAbff"), Some(vec![0xab, 0xff]));
        assert_eq!(from_hex("abc"), None);
        assert_eq!(from_hex("zz"), None);
        assert_eq!(public_key_from_hex("00"), None);
    }

    #[test]
    fn table_is_stable_and_spread() {
        let tables: std::collections::BTreeSet<u8> = (0..2000)
            .map(|i| table_of(&test_key(i).public_key()))
            .collect();
        assert!(tables.len() > 200, "only {} tables used", tables.len());
        let k = test_key(9).public_key();
        assert_eq!(table_of(&k), table_of(&k));
    }
}
