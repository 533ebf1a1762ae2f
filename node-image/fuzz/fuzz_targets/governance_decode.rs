#![no_main]
//! Any bytes: decoding a governance transaction returns an error or a transaction whose
//! encoding is exactly the input, and checking it (chain id, duplicate signers,
//! signatures) never panics. The same bytes are also tried as a lone proposal.

use libfuzzer_sys::fuzz_target;
use trellis_node_types::{Encode, GovernanceTx, Proposal, to_hex};

fuzz_target!(|data: &[u8]| {
    if let Ok(tx) = GovernanceTx::decode_untrusted(data) {
        assert_eq!(tx.encode().as_ref(), data);
        let _ = tx.check_stateless("fuzz");
        let _ = tx.hash();
        let _ = tx.proposal.id();
    }
    if let Ok(proposal) = Proposal::from_hex(&to_hex(data)) {
        assert_eq!(proposal.encode().as_ref(), data);
        let _ = proposal.check();
    }
});
