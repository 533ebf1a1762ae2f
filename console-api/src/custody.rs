//! Custody of organisation signing keys (consortium admin keys).
//!
//! A custodied key is generated here (Ed25519) and only its sealed form is stored:
//! XChaCha20-Poly1305 under the console's 256-bit master key, with a random 192-bit
//! nonce, and the member's id as associated data — so a sealed key copied onto another
//! member's row does not open. The master key lives outside the database (a 0600 file,
//! or a mounted Secret), so a database dump alone reveals no private key.
//!
//! An organisation may instead bring its own key: then only its public key is stored
//! and the console can never sign for it.

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use ed25519_dalek::{SigningKey, VerifyingKey};
use rand::RngCore;

use crate::auth::jwt::{generate_signing_key, write_private_file};

const SEALED_PREFIX: &str = "v1:";
const NONCE_LEN: usize = 24;

#[derive(Debug, thiserror::Error)]
pub enum CustodyError {
    #[error("master key file {path}: {reason}")]
    MasterKey { path: String, reason: String },
    #[error("sealing failed")]
    Seal,
    #[error("sealed key is malformed or was not sealed for this member under this master key")]
    Open,
}

/// The master key that seals custodied organisation keys.
pub struct MasterKey([u8; 32]);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

impl MasterKey {
    pub fn generate() -> Self {
        let mut key = [0u8; 32];
        rand::rng().fill_bytes(&mut key);
        Self(key)
    }

    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// Reads a hex-encoded 32-byte key from `path`, creating it (mode 0600) if absent.
    pub fn load_or_create(path: &Path) -> Result<Self, CustodyError> {
        let shown = path.display().to_string();
        let error = |reason: String| CustodyError::MasterKey {
            path: shown.clone(),
            reason,
        };
        if path.exists() {
            let text = std::fs::read_to_string(path).map_err(|err| error(err.to_string()))?;
            let bytes = decode_hex(text.trim())
                .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
                .ok_or_else(|| error("must hold 64 hex digits".into()))?;
            Ok(Self(bytes))
        } else {
            let key = Self::generate();
            write_private_file(path, encode_hex(&key.0).as_bytes())
                .map_err(|err| error(err.to_string()))?;
            tracing::info!(path = %shown, "generated a new key-custody master key");
            Ok(key)
        }
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new(&self.0.into())
    }

    /// Seals `secret`, bound to `context` (associated data).
    pub fn seal(&self, secret: &[u8], context: &[u8]) -> Result<String, CustodyError> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let ciphertext = self
            .cipher()
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: secret,
                    aad: context,
                },
            )
            .map_err(|_| CustodyError::Seal)?;
        let mut sealed = nonce.to_vec();
        sealed.extend_from_slice(&ciphertext);
        Ok(format!("{SEALED_PREFIX}{}", STANDARD.encode(sealed)))
    }

    pub fn open(&self, sealed: &str, context: &[u8]) -> Result<Vec<u8>, CustodyError> {
        let bytes = sealed
            .strip_prefix(SEALED_PREFIX)
            .and_then(|body| STANDARD.decode(body).ok())
            .ok_or(CustodyError::Open)?;
        if bytes.len() < NONCE_LEN {
            return Err(CustodyError::Open);
        }
        let (nonce, ciphertext) = bytes.split_at(NONCE_LEN);
        let nonce = <[u8; NONCE_LEN]>::try_from(nonce).map_err(|_| CustodyError::Open)?;
        self.cipher()
            .decrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: ciphertext,
                    aad: context,
                },
            )
            .map_err(|_| CustodyError::Open)
    }
}

/// The associated data binding a sealed organisation key to its member row.
pub fn member_context(member_id: uuid::Uuid) -> Vec<u8> {
    format!("trellis/org-key/v1/{member_id}").into_bytes()
}

/// A freshly generated, custodied organisation key.
pub struct CustodiedKey {
    pub public_hex: String,
    pub sealed_private: String,
}

pub fn generate_custodied(
    master: &MasterKey,
    member_id: uuid::Uuid,
) -> Result<CustodiedKey, CustodyError> {
    let key = generate_signing_key();
    let sealed_private = master.seal(&key.to_bytes(), &member_context(member_id))?;
    Ok(CustodiedKey {
        public_hex: encode_hex(key.verifying_key().as_bytes()),
        sealed_private,
    })
}

/// Opens a custodied key (for signing governance transactions).
pub fn open_custodied(
    master: &MasterKey,
    member_id: uuid::Uuid,
    sealed: &str,
) -> Result<SigningKey, CustodyError> {
    let bytes = master.open(sealed, &member_context(member_id))?;
    let seed = <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| CustodyError::Open)?;
    Ok(SigningKey::from_bytes(&seed))
}

/// A brought-your-own public key must be a valid Ed25519 point, not just 64 hex digits.
pub fn parse_public_key(hex: &str) -> Option<VerifyingKey> {
    let bytes = <[u8; 32]>::try_from(decode_hex(hex)?).ok()?;
    VerifyingKey::from_bytes(&bytes).ok()
}

pub fn encode_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::Signer;

    #[test]
    fn custodied_keys_open_only_for_their_member_and_master() {
        let master = MasterKey::generate();
        let member = uuid::Uuid::now_v7();
        let key = generate_custodied(&master, member).unwrap();
        assert!(key.sealed_private.starts_with("v1:"));
        let opened = open_custodied(&master, member, &key.sealed_private).unwrap();
        assert_eq!(
            encode_hex(opened.verifying_key().as_bytes()),
            key.public_hex
        );
        // The opened key signs, and the stored public key verifies it.
        let public = parse_public_key(&key.public_hex).unwrap();
        let signature = opened.sign(b"admit member");
        assert!(public.verify_strict(b"admit member", &signature).is_ok());

        assert!(open_custodied(&master, uuid::Uuid::now_v7(), &key.sealed_private).is_err());
        assert!(open_custodied(&MasterKey::generate(), member, &key.sealed_private).is_err());
        let mut tampered = key.sealed_private.clone();
        tampered.pop();
        tampered.push('A');
        assert!(open_custodied(&master, member, &tampered).is_err());
        assert!(open_custodied(&master, member, "v1:AAAA").is_err());
        assert!(open_custodied(&master, member, "garbage").is_err());
    }

    #[test]
    fn sealing_twice_gives_different_ciphertexts() {
        let master = MasterKey::generate();
        let a = master.seal(b"secret", b"ctx").unwrap();
        let b = master.seal(b"secret", b"ctx").unwrap();
        assert_ne!(a, b);
        assert_eq!(master.open(&a, b"ctx").unwrap(), b"secret");
    }

    #[test]
    fn master_key_file_is_private_and_stable() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master-key");
        let first = MasterKey::load_or_create(&path).unwrap();
        let sealed = first.seal(b"x", b"y").unwrap();
        let second = MasterKey::load_or_create(&path).unwrap();
        assert_eq!(second.open(&sealed, b"y").unwrap(), b"x");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(dir.path().join("bad"), "zz").unwrap();
        assert!(MasterKey::load_or_create(&dir.path().join("bad")).is_err());
    }

    #[test]
    fn public_keys_must_be_curve_points() {
        let key = generate_signing_key();
        assert!(parse_public_key(&encode_hex(key.verifying_key().as_bytes())).is_some());
        assert!(parse_public_key("zz").is_none());
        assert!(parse_public_key(&"ab".repeat(31)).is_none());
        assert_eq!(decode_hex("0aff"), Some(vec![0x0a, 0xff]));
        assert_eq!(decode_hex("0af"), None);
    }
}
