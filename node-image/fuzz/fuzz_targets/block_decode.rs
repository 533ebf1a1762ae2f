#![no_main]
//! Any bytes: decoding returns an error or a block whose encoding is exactly the input.

use libfuzzer_sys::fuzz_target;
use trellis_node_types::{Block, Encode};

fuzz_target!(|data: &[u8]| {
    if let Ok(block) = Block::decode_untrusted(data) {
        assert_eq!(block.encode().as_ref(), data);
        let _ = block.check_stateless("fuzz");
    }
});
