//! Opaque bearer secrets (refresh tokens, API keys): 256 random bits, base64url, with a
//! prefix telling what kind of secret it is. Only their SHA-256 is stored. A fast hash
//! is enough here (unlike passwords): the secrets are uniformly random, so there is
//! nothing to brute-force, and a fast hash keeps per-request API-key lookup cheap.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use sha2::{Digest, Sha256};

pub const REFRESH_TOKEN_PREFIX: &str = "trr_";
pub const API_KEY_PREFIX: &str = "trk_";

/// A fresh secret: `prefix` followed by 43 base64url characters.
pub fn generate(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("{prefix}{}", URL_SAFE_NO_PAD.encode(bytes))
}

/// Lower-case hex SHA-256, the stored form of a secret.
pub fn digest(secret: &str) -> String {
    hex_sha256(secret.as_bytes())
}

pub fn hex_sha256(bytes: &[u8]) -> String {
    let hash = Sha256::digest(bytes);
    let mut out = String::with_capacity(64);
    for byte in hash {
        out.push_str(&format!("{byte:02x}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_unique_and_prefixed() {
        let a = generate(API_KEY_PREFIX);
        let b = generate(API_KEY_PREFIX);
        assert_ne!(a, b);
        assert!(a.starts_with("trk_"));
        assert_eq!(a.len(), 4 + 43);
    }

    #[test]
    fn digest_is_sha256_hex() {
        assert_eq!(
            digest("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
