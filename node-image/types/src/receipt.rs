//! Cross-shard receipts: what a sending table owes a destination table.
//!
//! When a transfer's destination table belongs to another shard, the sending shard
//! debits the sender and appends a [`CrossReceipt`] to the source table's outbox. The
//! shard owning the destination table credits it once it has a proof of the receipt
//! against the source table's root in a certified header. `seq` numbers the receipts of
//! one (source table, destination table) pair from 0 without gaps, which is what makes
//! crediting exactly-once and in order.
//!
//! The encoding is fixed-size (82 bytes), big-endian:
//!
//! ```text
//! receipt = source_table (1) ‖ dest_table (1) ‖ seq (u64, 8) ‖ to (ed25519 public key, 32)
//!         ‖ amount (u64, 8) ‖ tx (SHA-256 of the transaction, 32)
//! ```
//!
//! Decoding refuses any other length, an invalid public key, a receipt whose source and
//! destination tables are the same (such a transfer is always credited directly), and a
//! receipt whose `to` does not live in `dest_table`.

use crate::{Digest, PublicKey, table_of};
use bytes::BufMut;
use commonware_codec::{
    Buf, DecodeExt, EncodeSize, Error as CodecError, FixedSize, Read, ReadExt, Write,
};

/// Size of an encoded [`CrossReceipt`].
pub const CROSS_RECEIPT_SIZE: usize = 1 + 1 + 8 + 32 + 8 + 32;

/// A debit on the source table that the destination table has yet to credit.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CrossReceipt {
    pub source_table: u8,
    pub dest_table: u8,
    /// Position among the receipts of (source_table, dest_table), from 0, without gaps.
    pub seq: u64,
    /// The account credited; always in `dest_table`.
    pub to: PublicKey,
    pub amount: u64,
    /// Hash of the transfer that produced it.
    pub tx: Digest,
}

/// Why bytes are not a valid receipt.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReceiptError {
    #[error("receipt is {got} bytes, a receipt is exactly {CROSS_RECEIPT_SIZE}")]
    WrongSize { got: usize },
    #[error("malformed receipt: {0}")]
    Malformed(String),
}

impl Write for CrossReceipt {
    fn write(&self, buf: &mut impl BufMut) {
        self.source_table.write(buf);
        self.dest_table.write(buf);
        self.seq.write(buf);
        self.to.write(buf);
        self.amount.write(buf);
        self.tx.write(buf);
    }
}

impl FixedSize for CrossReceipt {
    const SIZE: usize = CROSS_RECEIPT_SIZE;
}

impl Read for CrossReceipt {
    type Cfg = ();
    fn read_cfg(buf: &mut impl Buf, _: &()) -> Result<Self, CodecError> {
        let source_table = u8::read(buf)?;
        let dest_table = u8::read(buf)?;
        let seq = u64::read(buf)?;
        let to = crate::read_public_key(buf)?;
        let amount = u64::read(buf)?;
        let tx = Digest::read(buf)?;
        if source_table == dest_table {
            return Err(CodecError::Invalid(
                "CrossReceipt",
                "source and destination table are the same",
            ));
        }
        if table_of(&to) != dest_table {
            return Err(CodecError::Invalid(
                "CrossReceipt",
                "receiver does not live in the destination table",
            ));
        }
        Ok(Self {
            source_table,
            dest_table,
            seq,
            to,
            amount,
            tx,
        })
    }
}

impl CrossReceipt {
    /// Decodes untrusted bytes (a peer's outbox entry): exact size, then structure.
    pub fn decode_untrusted(bytes: &[u8]) -> Result<Self, ReceiptError> {
        if bytes.len() != CROSS_RECEIPT_SIZE {
            return Err(ReceiptError::WrongSize { got: bytes.len() });
        }
        Self::decode(commonware_codec::Copying(bytes))
            .map_err(|e| ReceiptError::Malformed(e.to_string()))
    }

    /// The encoding, as stored in the outbox leaf and hashed by its proof.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encode_size());
        self.write(&mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Encode, Hasher as _, Signer as _, test_key};
    use commonware_cryptography::Sha256;

    fn receipt(seed: u64) -> CrossReceipt {
        let to = test_key(seed).public_key();
        let dest_table = table_of(&to);
        CrossReceipt {
            source_table: dest_table.wrapping_add(1),
            dest_table,
            seq: 7,
            to,
            amount: u64::MAX,
            tx: Sha256::hash(&[b"tx"]),
        }
    }

    #[test]
    fn round_trips_at_fixed_size() {
        for seed in 0..20 {
            let r = receipt(seed);
            let bytes = r.encode();
            assert_eq!(bytes.len(), CROSS_RECEIPT_SIZE);
            assert_eq!(r.to_bytes(), bytes.to_vec());
            assert_eq!(CrossReceipt::decode_untrusted(&bytes).unwrap(), r);
        }
    }

    #[test]
    fn wrong_sizes_and_garbage_are_refused() {
        let bytes = receipt(1).to_bytes();
        for len in 0..bytes.len() {
            assert_eq!(
                CrossReceipt::decode_untrusted(&bytes[..len]),
                Err(ReceiptError::WrongSize { got: len })
            );
        }
        let mut long = bytes.clone();
        long.push(0);
        assert!(matches!(
            CrossReceipt::decode_untrusted(&long),
            Err(ReceiptError::WrongSize { .. })
        ));
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        for _ in 0..500 {
            let garbage: Vec<u8> = (0..CROSS_RECEIPT_SIZE)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            // Errors or a receipt that re-encodes to the same bytes; never a panic.
            if let Ok(r) = CrossReceipt::decode_untrusted(&garbage) {
                assert_eq!(r.to_bytes(), garbage);
            }
        }
    }

    #[test]
    fn inconsistent_tables_are_refused() {
        let r = receipt(3);
        let mut same = r.clone();
        same.source_table = same.dest_table;
        assert!(matches!(
            CrossReceipt::decode_untrusted(&same.to_bytes()),
            Err(ReceiptError::Malformed(m)) if m.contains("same")
        ));
        let mut elsewhere = r;
        elsewhere.dest_table = elsewhere.dest_table.wrapping_add(2);
        assert!(matches!(
            CrossReceipt::decode_untrusted(&elsewhere.to_bytes()),
            Err(ReceiptError::Malformed(m)) if m.contains("destination table")
        ));
    }
}
