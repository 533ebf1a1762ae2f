//! What a sharded network's blocks add: the header fields other committees verify, and
//! the body parts that cross committees (credits, system transactions).
//!
//! A sharded block is provable from its [`BlockHeader`] and a finalization certificate
//! alone: the header commits to the body through `body` (SHA-256 of the body's encoding),
//! and the block's digest — what consensus orders and certificates sign — is the SHA-256
//! of the header's encoding. Credit proofs and table handoffs therefore carry headers,
//! never transaction lists.
//!
//! ```text
//! header     = parent (32) ‖ height ‖ epoch ‖ view ‖ timestamp_ms      (varint u64 each)
//!              ‖ shard_header ‖ body (32)
//! shard_header = committee ‖ beacon_height ‖ state_height (varint u64)
//!              ‖ count (varint u32, ≤ 256) ‖ (table (1) ‖ root (32))*  -- tables strictly increasing
//! committee  = 0x00 (beacon) | 0x01 ‖ slot (u16 BE)
//! body       = count ‖ tx* ‖ count ‖ governance* ‖ count ‖ credit* ‖ count ‖ system*
//! credit     = source_shard (u16 BE) ‖ source_height (varint u64) ‖ receipt
//!              ‖ len ‖ proof (≤ MAX_PROOF_SIZE)
//! receipt    = `crate::receipt::CrossReceipt` (82 bytes, the ledger's outbox entry)
//! system     = one system transaction (`crate::system`)
//! ```
//!
//! Unsharded networks keep their block encoding and digest rule unchanged (see
//! [`crate::Block`]), so a rolling upgrade of an existing network never splits it.

use crate::{CrossReceipt, Digest, SystemTx, bytes_size, read_bytes, write_bytes};
use bytes::BufMut;
use commonware_codec::{
    Buf, EncodeSize, Error as CodecError, FixedSize, Read, ReadExt, Write, varint::UInt,
};
use commonware_cryptography::{Hasher, Sha256};

/// Most credits in one block.
pub const MAX_BLOCK_CREDITS: usize = 512;
/// Most system transactions in one (beacon) block.
pub const MAX_BLOCK_SYSTEM: usize = 16;
/// Largest encoded Merkle proof carried by a credit (the ledger's outbox proofs are at
/// most 16 709 bytes: 256 siblings of 32 bytes plus a leaf and lengths).
pub const MAX_PROOF_SIZE: usize = 17 * 1024;
/// Largest encoding of one system transaction.
use crate::system::MAX_SYSTEM_TX_SIZE;

/// Which committee a block belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Committee {
    Beacon,
    Shard(u16),
}

impl Committee {
    /// The committee's name in consensus namespaces and logs: `beacon` or `shard-N`.
    pub fn name(&self) -> String {
        match self {
            Committee::Beacon => "beacon".into(),
            Committee::Shard(n) => format!("shard-{n}"),
        }
    }
}

impl Write for Committee {
    fn write(&self, buf: &mut impl BufMut) {
        match self {
            Committee::Beacon => 0u8.write(buf),
            Committee::Shard(n) => {
                1u8.write(buf);
                n.write(buf);
            }
        }
    }
}

impl EncodeSize for Committee {
    fn encode_size(&self) -> usize {
        match self {
            Committee::Beacon => 1,
            Committee::Shard(_) => 3,
        }
    }
}

impl Read for Committee {
    type Cfg = ();
    fn read_cfg(buf: &mut impl Buf, _: &()) -> Result<Self, CodecError> {
        match u8::read(buf)? {
            0 => Ok(Committee::Beacon),
            1 => Ok(Committee::Shard(u16::read(buf)?)),
            t => Err(CodecError::InvalidEnum(t)),
        }
    }
}

/// The Merkle root of one table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableRoot {
    pub table: u8,
    pub root: [u8; 32],
}

/// What a sharded block's header adds to the common fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardHeader {
    pub committee: Committee,
    /// The beacon height whose state (epoch, table map, committees) the proposer
    /// followed; never below the parent's. Beacon blocks carry 0.
    pub beacon_height: u64,
    /// The finalized height of this committee's chain whose state `roots` are of. Blocks
    /// execute when they are finalized, so a proposer cannot know the state its own block
    /// leaves; it commits to the newest state it has finalized instead (never below the
    /// parent's `state_height`, always below the block's height).
    pub state_height: u64,
    /// The roots of the tables the committee owns at `state_height`, by increasing table.
    pub roots: Vec<TableRoot>,
}

impl ShardHeader {
    /// The root of `table`, when the header carries it.
    pub fn root_of(&self, table: u8) -> Option<[u8; 32]> {
        self.roots
            .binary_search_by_key(&table, |r| r.table)
            .ok()
            .map(|i| self.roots[i].root)
    }
}

impl Write for ShardHeader {
    fn write(&self, buf: &mut impl BufMut) {
        self.committee.write(buf);
        UInt(self.beacon_height).write(buf);
        UInt(self.state_height).write(buf);
        UInt(self.roots.len() as u32).write(buf);
        for r in &self.roots {
            r.table.write(buf);
            buf.put_slice(&r.root);
        }
    }
}

impl EncodeSize for ShardHeader {
    fn encode_size(&self) -> usize {
        self.committee.encode_size()
            + UInt(self.beacon_height).encode_size()
            + UInt(self.state_height).encode_size()
            + UInt(self.roots.len() as u32).encode_size()
            + self.roots.len() * 33
    }
}

impl Read for ShardHeader {
    type Cfg = ();
    fn read_cfg(buf: &mut impl Buf, _: &()) -> Result<Self, CodecError> {
        let committee = Committee::read(buf)?;
        let beacon_height = UInt::<u64>::read(buf)?.into();
        let state_height = UInt::<u64>::read(buf)?.into();
        let count = u32::from(UInt::<u32>::read(buf)?) as usize;
        if count > crate::TABLES {
            return Err(CodecError::InvalidLength(count));
        }
        if buf.remaining() < count * 33 {
            return Err(CodecError::EndOfBuffer);
        }
        let mut roots: Vec<TableRoot> = Vec::with_capacity(count);
        for _ in 0..count {
            let table = u8::read(buf)?;
            if roots.last().is_some_and(|last| last.table >= table) {
                return Err(CodecError::Invalid(
                    "ShardHeader",
                    "table roots are not in strictly increasing table order",
                ));
            }
            roots.push(TableRoot {
                table,
                root: <[u8; 32]>::read(buf)?,
            });
        }
        Ok(Self {
            committee,
            beacon_height,
            state_height,
            roots,
        })
    }
}

/// A sharded block without its body: what a certificate from another committee proves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockHeader {
    pub parent: Digest,
    pub height: u64,
    pub epoch: u64,
    pub view: u64,
    pub timestamp_ms: u64,
    pub shard: ShardHeader,
    /// SHA-256 of the body's encoding.
    pub body: Digest,
}

impl BlockHeader {
    /// The block's digest: what consensus orders and finalization certificates sign.
    pub fn digest(&self) -> Digest {
        use commonware_codec::Encode;
        Sha256::hash(&[&self.encode()])
    }

    /// Decodes untrusted bytes (a header relayed by another committee's node).
    pub fn decode_untrusted(bytes: &[u8]) -> Result<Self, CodecError> {
        use commonware_codec::DecodeExt;
        if bytes.len() > MAX_HEADER_SIZE {
            return Err(CodecError::InvalidLength(bytes.len()));
        }
        Self::decode(commonware_codec::Copying(bytes))
    }
}

/// Largest encoding of a header.
pub const MAX_HEADER_SIZE: usize = 32 + 5 * 10 + 3 + 2 * 10 + 5 + crate::TABLES * 33 + 32;

impl Write for BlockHeader {
    fn write(&self, buf: &mut impl BufMut) {
        self.parent.write(buf);
        UInt(self.height).write(buf);
        UInt(self.epoch).write(buf);
        UInt(self.view).write(buf);
        UInt(self.timestamp_ms).write(buf);
        self.shard.write(buf);
        self.body.write(buf);
    }
}

impl EncodeSize for BlockHeader {
    fn encode_size(&self) -> usize {
        Digest::SIZE
            + UInt(self.height).encode_size()
            + UInt(self.epoch).encode_size()
            + UInt(self.view).encode_size()
            + UInt(self.timestamp_ms).encode_size()
            + self.shard.encode_size()
            + Digest::SIZE
    }
}

impl Read for BlockHeader {
    type Cfg = ();
    fn read_cfg(buf: &mut impl Buf, _: &()) -> Result<Self, CodecError> {
        Ok(Self {
            parent: Digest::read(buf)?,
            height: UInt::<u64>::read(buf)?.into(),
            epoch: UInt::<u64>::read(buf)?.into(),
            view: UInt::<u64>::read(buf)?.into(),
            timestamp_ms: UInt::<u64>::read(buf)?.into(),
            shard: ShardHeader::read(buf)?,
            body: Digest::read(buf)?,
        })
    }
}

/// A receipt to credit, with its Merkle proof against the source table's root in the
/// certified header of `source_shard` at `source_height`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credit {
    pub source_shard: u16,
    pub source_height: u64,
    pub receipt: CrossReceipt,
    /// Encoded proof of the outbox entry (format of `trellis-node-state`).
    pub proof: Vec<u8>,
}

impl Write for Credit {
    fn write(&self, buf: &mut impl BufMut) {
        self.source_shard.write(buf);
        UInt(self.source_height).write(buf);
        self.receipt.write(buf);
        write_bytes(&self.proof, buf);
    }
}

impl EncodeSize for Credit {
    fn encode_size(&self) -> usize {
        2 + UInt(self.source_height).encode_size()
            + self.receipt.encode_size()
            + bytes_size(self.proof.len())
    }
}

impl Read for Credit {
    type Cfg = ();
    fn read_cfg(buf: &mut impl Buf, _: &()) -> Result<Self, CodecError> {
        Ok(Self {
            source_shard: u16::read(buf)?,
            source_height: UInt::<u64>::read(buf)?.into(),
            receipt: CrossReceipt::read(buf)?,
            proof: read_bytes(buf, MAX_PROOF_SIZE)?,
        })
    }
}

/// What a sharded block adds: header fields and the cross-committee body parts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sharding {
    pub header: ShardHeader,
    /// Receipts from other shards credited by this block (shard blocks only).
    pub credits: Vec<Credit>,
    /// System transactions (beacon blocks only), executed by the beacon state.
    pub system: Vec<SystemTx>,
}

impl Sharding {
    /// Writes the body parts only sharded blocks have.
    pub(crate) fn write_body(&self, buf: &mut impl BufMut) {
        UInt(self.credits.len() as u32).write(buf);
        for c in &self.credits {
            c.write(buf);
        }
        UInt(self.system.len() as u32).write(buf);
        for s in &self.system {
            s.write(buf);
        }
    }

    pub(crate) fn body_size(&self) -> usize {
        UInt(self.credits.len() as u32).encode_size()
            + self
                .credits
                .iter()
                .map(EncodeSize::encode_size)
                .sum::<usize>()
            + UInt(self.system.len() as u32).encode_size()
            + self
                .system
                .iter()
                .map(EncodeSize::encode_size)
                .sum::<usize>()
    }

    pub(crate) fn read_body(buf: &mut impl Buf, header: ShardHeader) -> Result<Self, CodecError> {
        let count = u32::from(UInt::<u32>::read(buf)?) as usize;
        if count > MAX_BLOCK_CREDITS {
            return Err(CodecError::InvalidLength(count));
        }
        // A credit is at least 2 + 1 + receipt + 1 bytes.
        if buf.remaining() < count.saturating_mul(4 + crate::CROSS_RECEIPT_SIZE) {
            return Err(CodecError::EndOfBuffer);
        }
        let mut credits = Vec::with_capacity(count);
        for _ in 0..count {
            credits.push(Credit::read(buf)?);
        }
        let count = u32::from(UInt::<u32>::read(buf)?) as usize;
        if count > MAX_BLOCK_SYSTEM {
            return Err(CodecError::InvalidLength(count));
        }
        let mut system = Vec::with_capacity(count);
        for _ in 0..count {
            system.push(SystemTx::read(buf)?);
        }
        Ok(Self {
            header,
            credits,
            system,
        })
    }

    /// Largest encoding of the parts only sharded blocks have (header fields and body).
    pub const MAX_SIZE: usize = 3
        + 2 * 10
        + 5
        + crate::TABLES * 33
        + 32
        + 5
        + MAX_BLOCK_CREDITS * (2 + 10 + crate::CROSS_RECEIPT_SIZE + 5 + MAX_PROOF_SIZE)
        + 5
        + MAX_BLOCK_SYSTEM * MAX_SYSTEM_TX_SIZE;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Block, Signer, TxKind, UnsignedTx, test_key};
    use commonware_codec::{DecodeExt, Encode};

    const CHAIN: &str = "trellis-test";

    fn sharded_block() -> Block {
        let (a, b) = (test_key(1), test_key(2));
        let tx = UnsignedTx {
            chain_id: CHAIN.into(),
            from: a.public_key(),
            nonce: 0,
            fee: 1,
            kind: TxKind::Transfer {
                to: b.public_key(),
                amount: 5,
            },
        }
        .sign(&a);
        let genesis = Block::genesis_sharded(CHAIN, Committee::Shard(1));
        Block::new(genesis.digest(), 1, 0, 2, 1_000, vec![tx]).with_sharding(Sharding {
            header: ShardHeader {
                committee: Committee::Shard(1),
                beacon_height: 7,
                state_height: 0,
                roots: vec![
                    TableRoot {
                        table: 3,
                        root: [1; 32],
                    },
                    TableRoot {
                        table: 200,
                        root: [2; 32],
                    },
                ],
            },
            credits: vec![Credit {
                source_shard: 0,
                source_height: 4,
                receipt: CrossReceipt {
                    source_table: crate::table_of(&b.public_key()).wrapping_add(1),
                    dest_table: crate::table_of(&b.public_key()),
                    seq: 0,
                    to: b.public_key(),
                    amount: 10,
                    tx: crate::Digest([4; 32]),
                },
                proof: vec![1, 2, 3],
            }],
            system: vec![
                crate::SystemPayload {
                    chain_id: CHAIN.into(),
                    sequence: 0,
                    action: crate::SystemAction::SetShardCount {
                        count: 2,
                        load: vec![],
                    },
                }
                .sign(&a),
            ],
        })
    }

    #[test]
    fn sharded_blocks_round_trip_and_are_proven_by_their_header() {
        let block = sharded_block();
        let bytes = block.encode();
        assert_eq!(bytes.len(), block.encode_size());
        let back = Block::decode_untrusted(&bytes).unwrap();
        assert_eq!(back, block);
        let header = back.header().unwrap();
        assert_eq!(header.digest(), block.digest());
        assert_eq!(header.shard.root_of(200), Some([2; 32]));
        assert_eq!(header.shard.root_of(4), None);
        let header_back = BlockHeader::decode_untrusted(&header.encode()).unwrap();
        assert_eq!(header_back, header);
        // The header commits to the body: any change of the body changes the digest.
        let mut other = block.sharding.clone().unwrap();
        other.credits[0].receipt.amount = 11;
        let tampered =
            Block::new(block.parent, 1, 0, 2, 1_000, block.txs.clone()).with_sharding(other);
        assert_ne!(tampered.digest(), block.digest());
        let without_txs = Block::new(block.parent, 1, 0, 2, 1_000, vec![])
            .with_sharding(block.sharding.clone().unwrap());
        assert_ne!(without_txs.digest(), block.digest());
        // Unsharded blocks keep the digest of their whole encoding.
        let plain = Block::new(block.parent, 1, 0, 2, 1_000, block.txs.clone());
        assert!(plain.header().is_none());
        use commonware_cryptography::{Hasher, Sha256};
        assert_eq!(plain.digest(), Sha256::hash(&[&plain.encode()]));
        assert_ne!(
            Block::genesis_sharded(CHAIN, Committee::Beacon).digest(),
            Block::genesis_sharded(CHAIN, Committee::Shard(0)).digest()
        );
    }

    #[test]
    fn sharded_block_truncations_and_bad_fields_are_errors() {
        let bytes = sharded_block().encode().to_vec();
        for len in 0..bytes.len() {
            assert!(
                Block::decode_untrusted(&bytes[..len]).is_err(),
                "truncated to {len} decoded"
            );
        }
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(Block::decode_untrusted(&trailing).is_err());

        // Roots out of order are refused.
        let mut header = sharded_block().header().unwrap();
        header.shard.roots.swap(0, 1);
        assert!(BlockHeader::decode_untrusted(&header.encode()).is_err());
        header.shard.roots[1] = header.shard.roots[0];
        assert!(BlockHeader::decode_untrusted(&header.encode()).is_err());
        // An unknown committee tag is refused.
        let mut committee = Committee::Shard(1).encode().to_vec();
        committee[0] = 2;
        assert!(Committee::decode(commonware_codec::Copying(committee.as_slice())).is_err());
        // An oversized header is refused before decoding.
        assert!(BlockHeader::decode_untrusted(&vec![0; MAX_HEADER_SIZE + 1]).is_err());
    }

    #[test]
    fn absurd_counts_are_refused_without_allocating() {
        let mut header = ShardHeader {
            committee: Committee::Beacon,
            beacon_height: 0,
            state_height: 0,
            roots: vec![],
        }
        .encode()
        .to_vec();
        header.pop();
        UInt(257u32).write(&mut header);
        assert!(ShardHeader::decode(commonware_codec::Copying(header.as_slice())).is_err());
        header.truncate(header.len() - UInt(257u32).encode_size());
        UInt(256u32).write(&mut header);
        assert!(matches!(
            ShardHeader::decode(commonware_codec::Copying(header.as_slice())),
            Err(CodecError::EndOfBuffer)
        ));
        let mut credits = Vec::new();
        UInt(MAX_BLOCK_CREDITS as u32 + 1).write(&mut credits);
        let empty = || ShardHeader {
            committee: Committee::Beacon,
            beacon_height: 0,
            state_height: 0,
            roots: vec![],
        };
        assert!(
            Sharding::read_body(&mut commonware_codec::Copying(credits.as_slice()), empty())
                .is_err()
        );
        let mut credits = Vec::new();
        UInt(MAX_BLOCK_CREDITS as u32).write(&mut credits);
        assert!(matches!(
            Sharding::read_body(&mut commonware_codec::Copying(credits.as_slice()), empty()),
            Err(CodecError::EndOfBuffer)
        ));
        let mut proof = sharded_block().sharding.unwrap().credits[0]
            .encode()
            .to_vec();
        let at = proof.len() - 4;
        proof.truncate(at);
        UInt(MAX_PROOF_SIZE as u32 + 1).write(&mut proof);
        assert!(Credit::decode(commonware_codec::Copying(proof.as_slice())).is_err());
    }
}
