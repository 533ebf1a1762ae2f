//! Consortium governance: admitting and removing members.
//!
//! A governance transaction is a [`Proposal`] plus the [`Approval`]s of member admin keys.
//! Each approval is an ed25519 signature over `GOVERNANCE_NAMESPACE ‖ encode(proposal)`,
//! and the proposal starts with the chain id and the registry's next governance
//! `sequence`, so an approval never verifies on another network, for another proposal, or
//! a second time once the sequence has moved on (replay protection).
//!
//! Whether the approvals reach the threshold (more than 2/3 of the current members' admin
//! keys) needs the member registry and is checked by the node; this module checks
//! everything that needs no state.
//!
//! ```text
//! proposal   = len(chain_id) ‖ chain_id ‖ sequence (varint u64) ‖ action
//! action     = 0x00 ‖ len(name) ‖ name ‖ admin_key (32) ‖ node_key (32)
//!                   ‖ len(p2p_address) ‖ p2p_address               -- admit
//!            | 0x01 ‖ len(name) ‖ name                              -- remove
//! tx         = proposal ‖ count (varint u32, 1..=128) ‖ approval*
//! approval   = admin_key (32) ‖ signature (64)
//! ```

use crate::{
    Digest, PrivateKey, PublicKey, Signature, Signer, Verifier, bytes_size, from_hex, read_bytes,
    to_hex, write_bytes,
};
use bytes::BufMut;
use commonware_codec::{
    Buf, DecodeExt, Encode, EncodeSize, Error as CodecError, FixedSize, Read, ReadExt, Write,
    varint::UInt,
};
use commonware_cryptography::{Hasher, Sha256};

/// Domain separator of governance approvals (distinct from transactions and consensus).
pub const GOVERNANCE_NAMESPACE: &[u8] = b"_TRELLIS_GOVERNANCE_V1";
/// Longest member name, in bytes (UTF-8).
pub const MAX_MEMBER_NAME_LEN: usize = 64;
/// Longest p2p address (`host:port`), in bytes.
pub const MAX_P2P_ADDRESS_LEN: usize = 255;
/// Most approvals in one governance transaction (and so the largest consortium whose
/// every member can sign one proposal).
pub const MAX_APPROVALS: usize = 128;
/// Largest encoding of one governance transaction.
pub const MAX_GOVERNANCE_TX_SIZE: usize = (1 + crate::MAX_CHAIN_ID_LEN)
    + 10
    + (1 + (1 + MAX_MEMBER_NAME_LEN) + 32 + 32 + (2 + MAX_P2P_ADDRESS_LEN))
    + 2
    + MAX_APPROVALS * (32 + 64);

/// Why a governance transaction is not acceptable before looking at the registry.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GovernanceError {
    #[error("malformed governance transaction: {0}")]
    Malformed(String),
    #[error(
        "governance transaction is {0} bytes, more than the {MAX_GOVERNANCE_TX_SIZE}-byte limit"
    )]
    Oversized(usize),
    #[error("governance transaction is for chain {got:?}, this is {expected:?}")]
    WrongChain { expected: String, got: String },
    #[error("admin key {0} signed twice")]
    DuplicateSigner(String),
    #[error("bad signature from admin key {0}")]
    BadSignature(String),
    #[error("no approvals")]
    NoApprovals,
    #[error("invalid proposal: {0}")]
    Invalid(String),
}

/// A member as governance names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberSpec {
    /// Organisation name, unique in the consortium (1..=64 bytes, no control characters).
    pub name: String,
    /// Signs governance for this member.
    pub admin_key: PublicKey,
    /// The member's validator: p2p identity and consensus signer.
    pub node_key: PublicKey,
    /// `host:port` where the member's node listens for p2p.
    pub p2p_address: String,
}

/// What a proposal does.
// Governance values are rare and short-lived; boxing the admission would only make
// building one clumsier for callers.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GovernanceAction {
    /// Admit a member and its validator.
    Admit(MemberSpec),
    /// Remove the member with this name and its validator.
    Remove { name: String },
}

const ACTION_ADMIT: u8 = 0;
const ACTION_REMOVE: u8 = 1;

fn read_string(buf: &mut impl Buf, max: usize, what: &'static str) -> Result<String, CodecError> {
    let bytes = read_bytes(buf, max)?;
    let s = String::from_utf8(bytes).map_err(|_| CodecError::Invalid(what, "not UTF-8"))?;
    if s.is_empty() {
        return Err(CodecError::Invalid(what, "empty"));
    }
    if s.chars().any(char::is_control) {
        return Err(CodecError::Invalid(what, "control character"));
    }
    Ok(s)
}

impl Write for GovernanceAction {
    fn write(&self, buf: &mut impl BufMut) {
        match self {
            GovernanceAction::Admit(m) => {
                ACTION_ADMIT.write(buf);
                write_bytes(m.name.as_bytes(), buf);
                m.admin_key.write(buf);
                m.node_key.write(buf);
                write_bytes(m.p2p_address.as_bytes(), buf);
            }
            GovernanceAction::Remove { name } => {
                ACTION_REMOVE.write(buf);
                write_bytes(name.as_bytes(), buf);
            }
        }
    }
}

impl EncodeSize for GovernanceAction {
    fn encode_size(&self) -> usize {
        1 + match self {
            GovernanceAction::Admit(m) => {
                bytes_size(m.name.len()) + 2 * PublicKey::SIZE + bytes_size(m.p2p_address.len())
            }
            GovernanceAction::Remove { name } => bytes_size(name.len()),
        }
    }
}

impl Read for GovernanceAction {
    type Cfg = ();
    fn read_cfg(buf: &mut impl Buf, _: &()) -> Result<Self, CodecError> {
        match u8::read(buf)? {
            ACTION_ADMIT => {
                let name = read_string(buf, MAX_MEMBER_NAME_LEN, "member name")?;
                let admin_key = PublicKey::read(buf)?;
                let node_key = PublicKey::read(buf)?;
                let p2p_address = read_string(buf, MAX_P2P_ADDRESS_LEN, "p2p address")?;
                Ok(GovernanceAction::Admit(MemberSpec {
                    name,
                    admin_key,
                    node_key,
                    p2p_address,
                }))
            }
            ACTION_REMOVE => Ok(GovernanceAction::Remove {
                name: read_string(buf, MAX_MEMBER_NAME_LEN, "member name")?,
            }),
            other => Err(CodecError::InvalidEnum(other)),
        }
    }
}

/// The signed part of a governance transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Proposal {
    pub chain_id: String,
    /// Must equal the registry's next governance sequence number when executed
    /// (`trellis_getMembers` → `sequence`). Every executed governance transaction,
    /// successful or not, moves it on by one, so each proposal executes at most once.
    pub sequence: u64,
    pub action: GovernanceAction,
}

impl Write for Proposal {
    fn write(&self, buf: &mut impl BufMut) {
        write_bytes(self.chain_id.as_bytes(), buf);
        UInt(self.sequence).write(buf);
        self.action.write(buf);
    }
}

impl EncodeSize for Proposal {
    fn encode_size(&self) -> usize {
        bytes_size(self.chain_id.len())
            + UInt(self.sequence).encode_size()
            + self.action.encode_size()
    }
}

impl Read for Proposal {
    type Cfg = ();
    fn read_cfg(buf: &mut impl Buf, _: &()) -> Result<Self, CodecError> {
        let chain_id = String::from_utf8(read_bytes(buf, crate::MAX_CHAIN_ID_LEN)?)
            .map_err(|_| CodecError::Invalid("Proposal", "chain id is not UTF-8"))?;
        let sequence = UInt::<u64>::read(buf)?.into();
        let action = GovernanceAction::read(buf)?;
        Ok(Self {
            chain_id,
            sequence,
            action,
        })
    }
}

impl Proposal {
    /// Checks the fields the decoder would refuse, for proposals built in code.
    pub fn check(&self) -> Result<(), GovernanceError> {
        Proposal::decode(commonware_codec::Copying(self.encode().as_ref()))
            .map(|_| ())
            .map_err(|e| GovernanceError::Invalid(e.to_string()))
    }

    /// The proposal's identity: SHA-256 of its encoding (what every approval signs).
    pub fn id(&self) -> Digest {
        Sha256::hash(&[&self.encode()])
    }

    /// An admin's approval of this proposal.
    pub fn approve(&self, admin: &PrivateKey) -> Approval {
        Approval {
            admin_key: admin.public_key(),
            signature: admin.sign(GOVERNANCE_NAMESPACE, &self.encode()),
        }
    }

    /// True when `approval` is a valid signature of this proposal by its admin key.
    pub fn verify(&self, approval: &Approval) -> bool {
        approval
            .admin_key
            .verify(GOVERNANCE_NAMESPACE, &self.encode(), &approval.signature)
    }

    /// Hex of the encoding (to pass a proposal between admins).
    pub fn to_hex(&self) -> String {
        to_hex(&self.encode())
    }

    /// Parses [`Self::to_hex`] output (untrusted).
    pub fn from_hex(s: &str) -> Result<Self, GovernanceError> {
        let bytes =
            from_hex(s.trim()).ok_or_else(|| GovernanceError::Malformed("not hex".into()))?;
        if bytes.len() > MAX_GOVERNANCE_TX_SIZE {
            return Err(GovernanceError::Oversized(bytes.len()));
        }
        Proposal::decode(commonware_codec::Copying(&bytes))
            .map_err(|e| GovernanceError::Malformed(e.to_string()))
    }
}

/// One admin key's signature of a proposal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Approval {
    pub admin_key: PublicKey,
    pub signature: Signature,
}

impl Write for Approval {
    fn write(&self, buf: &mut impl BufMut) {
        self.admin_key.write(buf);
        self.signature.write(buf);
    }
}

impl FixedSize for Approval {
    const SIZE: usize = PublicKey::SIZE + Signature::SIZE;
}

impl Read for Approval {
    type Cfg = ();
    fn read_cfg(buf: &mut impl Buf, _: &()) -> Result<Self, CodecError> {
        Ok(Self {
            admin_key: PublicKey::read(buf)?,
            signature: Signature::read(buf)?,
        })
    }
}

impl Approval {
    /// Hex of the 96-byte encoding (admin key ‖ signature).
    pub fn to_hex(&self) -> String {
        to_hex(&self.encode())
    }

    pub fn from_hex(s: &str) -> Result<Self, GovernanceError> {
        let bytes =
            from_hex(s.trim()).ok_or_else(|| GovernanceError::Malformed("not hex".into()))?;
        Approval::decode(commonware_codec::Copying(&bytes))
            .map_err(|e| GovernanceError::Malformed(e.to_string()))
    }
}

/// A proposal with its approvals: what `trellis_submitGovernance` takes (hex).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GovernanceTx {
    pub proposal: Proposal,
    pub approvals: Vec<Approval>,
}

impl Write for GovernanceTx {
    fn write(&self, buf: &mut impl BufMut) {
        self.proposal.write(buf);
        // Bounded by MAX_APPROVALS when decoded; a larger hand-built list fails to decode.
        UInt(self.approvals.len() as u32).write(buf);
        for a in &self.approvals {
            a.write(buf);
        }
    }
}

impl EncodeSize for GovernanceTx {
    fn encode_size(&self) -> usize {
        self.proposal.encode_size()
            + UInt(self.approvals.len() as u32).encode_size()
            + self.approvals.len() * Approval::SIZE
    }
}

impl Read for GovernanceTx {
    type Cfg = ();
    fn read_cfg(buf: &mut impl Buf, _: &()) -> Result<Self, CodecError> {
        let proposal = Proposal::read(buf)?;
        let count = u32::from(UInt::<u32>::read(buf)?) as usize;
        if count > MAX_APPROVALS {
            return Err(CodecError::InvalidLength(count));
        }
        if buf.remaining() < count.saturating_mul(Approval::SIZE) {
            return Err(CodecError::EndOfBuffer);
        }
        let mut approvals = Vec::with_capacity(count);
        for _ in 0..count {
            approvals.push(Approval::read(buf)?);
        }
        Ok(Self {
            proposal,
            approvals,
        })
    }
}

impl GovernanceTx {
    /// A transaction carrying `approvals` of `proposal`.
    pub fn new(proposal: Proposal, approvals: Vec<Approval>) -> Self {
        Self {
            proposal,
            approvals,
        }
    }

    /// Builds a transaction approved by every key in `admins` (a console that custodies
    /// admin seeds, or a test).
    pub fn signed(proposal: Proposal, admins: &[&PrivateKey]) -> Self {
        let approvals = admins.iter().map(|k| proposal.approve(k)).collect();
        Self::new(proposal, approvals)
    }

    /// Decodes untrusted bytes: size first, then structure (every byte consumed).
    pub fn decode_untrusted(bytes: &[u8]) -> Result<Self, GovernanceError> {
        if bytes.len() > MAX_GOVERNANCE_TX_SIZE {
            return Err(GovernanceError::Oversized(bytes.len()));
        }
        GovernanceTx::decode(commonware_codec::Copying(bytes))
            .map_err(|e| GovernanceError::Malformed(e.to_string()))
    }

    /// Parses hex (the RPC's `tx` parameter).
    pub fn from_hex(s: &str) -> Result<Self, GovernanceError> {
        let bytes =
            from_hex(s.trim()).ok_or_else(|| GovernanceError::Malformed("not hex".into()))?;
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

    /// Checks what needs no registry: chain id, at least one approval, no admin key twice,
    /// every signature valid.
    pub fn check_stateless(&self, chain_id: &str) -> Result<(), GovernanceError> {
        if self.proposal.chain_id != chain_id {
            return Err(GovernanceError::WrongChain {
                expected: chain_id.to_string(),
                got: self.proposal.chain_id.clone(),
            });
        }
        if self.approvals.is_empty() {
            return Err(GovernanceError::NoApprovals);
        }
        let mut seen = std::collections::BTreeSet::new();
        for a in &self.approvals {
            if !seen.insert(a.admin_key.clone()) {
                return Err(GovernanceError::DuplicateSigner(to_hex(
                    a.admin_key.as_ref(),
                )));
            }
        }
        let message = self.proposal.encode();
        for a in &self.approvals {
            if !a
                .admin_key
                .verify(GOVERNANCE_NAMESPACE, &message, &a.signature)
            {
                return Err(GovernanceError::BadSignature(to_hex(a.admin_key.as_ref())));
            }
        }
        Ok(())
    }
}

/// True when `approvals` of `members` reach the governance threshold: strictly more than
/// two thirds.
pub fn reaches_threshold(approvals: usize, members: usize) -> bool {
    approvals.saturating_mul(3) > members.saturating_mul(2)
}

/// The fewest approvals that reach the threshold among `members`.
pub fn threshold(members: usize) -> usize {
    members.saturating_mul(2) / 3 + 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_key;

    const CHAIN: &str = "gov-test";

    fn admit(sequence: u64) -> Proposal {
        Proposal {
            chain_id: CHAIN.into(),
            sequence,
            action: GovernanceAction::Admit(MemberSpec {
                name: "org4".into(),
                admin_key: test_key(40).public_key(),
                node_key: test_key(41).public_key(),
                p2p_address: "127.0.0.9:9000".into(),
            }),
        }
    }

    #[test]
    fn governance_round_trips_and_verifies() {
        let admins = [test_key(1), test_key(2), test_key(3)];
        let refs: Vec<&PrivateKey> = admins.iter().collect();
        for proposal in [
            admit(0),
            Proposal {
                chain_id: CHAIN.into(),
                sequence: u64::MAX,
                action: GovernanceAction::Remove {
                    name: "org2".into(),
                },
            },
        ] {
            let tx = GovernanceTx::signed(proposal.clone(), &refs);
            let bytes = tx.encode();
            assert_eq!(bytes.len(), tx.encode_size());
            assert!(bytes.len() <= MAX_GOVERNANCE_TX_SIZE);
            let back = GovernanceTx::from_hex(&tx.to_hex()).unwrap();
            assert_eq!(back, tx);
            back.check_stateless(CHAIN).unwrap();
            assert_eq!(Proposal::from_hex(&proposal.to_hex()).unwrap(), proposal);
            let a = proposal.approve(&admins[0]);
            assert_eq!(Approval::from_hex(&a.to_hex()).unwrap(), a);
            assert!(proposal.verify(&a));
        }
    }

    #[test]
    fn largest_transaction_fits_the_bound() {
        let keys: Vec<PrivateKey> = (0..MAX_APPROVALS as u64).map(test_key).collect();
        let refs: Vec<&PrivateKey> = keys.iter().collect();
        let proposal = Proposal {
            chain_id: "c".repeat(crate::MAX_CHAIN_ID_LEN),
            sequence: u64::MAX,
            action: GovernanceAction::Admit(MemberSpec {
                name: "n".repeat(MAX_MEMBER_NAME_LEN),
                admin_key: test_key(1).public_key(),
                node_key: test_key(2).public_key(),
                p2p_address: "a".repeat(MAX_P2P_ADDRESS_LEN),
            }),
        };
        let tx = GovernanceTx::signed(proposal, &refs);
        assert!(tx.encode().len() <= MAX_GOVERNANCE_TX_SIZE);
        GovernanceTx::decode_untrusted(&tx.encode()).unwrap();
    }

    #[test]
    fn bad_input_is_refused() {
        let admins = [test_key(1), test_key(2), test_key(3)];
        let tx = GovernanceTx::signed(admit(3), &[&admins[0], &admins[1]]);
        let bytes = tx.encode();
        for len in 0..bytes.len() {
            assert!(GovernanceTx::decode_untrusted(&bytes[..len]).is_err());
        }
        let mut trailing = bytes.to_vec();
        trailing.push(0);
        assert!(GovernanceTx::decode_untrusted(&trailing).is_err());
        assert!(matches!(
            GovernanceTx::decode_untrusted(&vec![0; MAX_GOVERNANCE_TX_SIZE + 1]),
            Err(GovernanceError::Oversized(_))
        ));
        assert!(GovernanceTx::from_hex("zz").is_err());

        // Wrong chain, duplicated signer, tampered proposal, no approvals.
        assert!(matches!(
            tx.check_stateless("other"),
            Err(GovernanceError::WrongChain { .. })
        ));
        let mut twice = tx.clone();
        twice.approvals.push(twice.approvals[0].clone());
        assert!(matches!(
            twice.check_stateless(CHAIN),
            Err(GovernanceError::DuplicateSigner(_))
        ));
        let mut tampered = tx.clone();
        tampered.proposal.sequence = 4;
        assert!(matches!(
            tampered.check_stateless(CHAIN),
            Err(GovernanceError::BadSignature(_))
        ));
        let mut moved = tx.clone();
        moved.proposal.chain_id = "other".into();
        assert!(matches!(
            moved.check_stateless("other"),
            Err(GovernanceError::BadSignature(_))
        ));
        let none = GovernanceTx::new(admit(0), vec![]);
        assert_eq!(
            none.check_stateless(CHAIN),
            Err(GovernanceError::NoApprovals)
        );

        // Empty names, control characters and unknown actions do not decode.
        let mut empty = admit(0);
        if let GovernanceAction::Admit(m) = &mut empty.action {
            m.name.clear();
        }
        assert!(empty.check().is_err());
        let mut control = admit(0);
        if let GovernanceAction::Admit(m) = &mut control.action {
            m.name = "a\nb".into();
        }
        assert!(control.check().is_err());
        let mut unknown = admit(0).encode().to_vec();
        let at = 1 + CHAIN.len() + 1;
        unknown[at] = 7;
        assert!(Proposal::decode(commonware_codec::Copying(&unknown)).is_err());

        // Garbage of every length: errors, never panics.
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        for len in 0..600 {
            let garbage: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            let _ = GovernanceTx::decode_untrusted(&garbage);
        }
    }

    #[test]
    fn threshold_is_more_than_two_thirds() {
        assert_eq!(threshold(1), 1);
        assert_eq!(threshold(3), 3);
        assert_eq!(threshold(4), 3);
        assert_eq!(threshold(6), 5);
        for n in 1..50 {
            assert!(reaches_threshold(threshold(n), n));
            assert!(!reaches_threshold(threshold(n) - 1, n));
        }
    }
}
