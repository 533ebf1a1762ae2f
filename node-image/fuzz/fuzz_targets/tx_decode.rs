#![no_main]
//! Any bytes: decoding returns an error or a transaction whose encoding is exactly the
//! input (one canonical encoding per transaction), and checking it never panics.

use libfuzzer_sys::fuzz_target;
use trellis_node_types::{Encode, Tx};

fuzz_target!(|data: &[u8]| {
    if let Ok(tx) = Tx::decode_untrusted(data) {
        assert_eq!(tx.encode().as_ref(), data);
        let _ = tx.check_stateless("fuzz");
        let _ = tx.hash();
    }
});
