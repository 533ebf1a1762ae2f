//! Node and admin keys: generated once, never regenerated, never logged.
//!
//! A committee's node keys live in one Secret `<committee>-keys`, one entry
//! `<pod-name>.key` per validator holding the node's key file in the format
//! `trellis-node keygen` writes (JSON `{node_key, node_public_key, admin_key,
//! admin_public_key}`, hex ed25519 seeds and public keys; see docs/node-contract.md).
//! Each pod mounts only its own entry (`subPathExpr: $(POD_NAME).key`). The network admin
//! key (signs `SetShardCount` and other system transactions) is the `admin_key` of the
//! entry `admin.key` in `<network>-admin-key`, which no pod mounts.
//!
//! The only writes are: create the Secret when it is missing, and add entries for key
//! slots that have none. An existing entry is never replaced, so a reconcile can never
//! re-key a validator, and a key a member supplied itself is never touched.

use std::collections::BTreeMap;
use std::fmt;

use ed25519_dalek::SigningKey;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use rand::RngCore;
use serde::{Deserialize, Serialize};

/// Secret entry holding the network admin key.
pub const ADMIN_KEY_ENTRY: &str = "admin.key";

/// An ed25519 seed. `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct NodeSeed([u8; 32]);

impl fmt::Debug for NodeSeed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NodeSeed(<redacted>)")
    }
}

impl NodeSeed {
    /// A fresh seed from the thread's CSPRNG (ChaCha, seeded by the OS).
    pub fn generate() -> Self {
        let mut seed = [0u8; 32];
        rand::rng().fill_bytes(&mut seed);
        Self(seed)
    }

    /// Parses the hex text stored in a Secret entry (whitespace around it is ignored).
    pub fn from_hex(text: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(text).ok()?.trim();
        let bytes = decode_hex(text)?;
        Some(Self(bytes.try_into().ok()?))
    }

    pub fn to_hex(&self) -> String {
        encode_hex(&self.0)
    }

    /// Hex of the ed25519 public key (what genesis and bootstrap peers carry).
    pub fn public_key_hex(&self) -> String {
        encode_hex(SigningKey::from_bytes(&self.0).verifying_key().as_bytes())
    }
}

/// A node's key file, as `trellis-node keygen` writes it. `Debug` hides the seeds.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeKeyFile {
    /// Hex ed25519 seed of the node key (p2p identity and consensus signer).
    pub node_key: String,
    pub node_public_key: String,
    /// Hex ed25519 seed of the governance key.
    pub admin_key: String,
    pub admin_public_key: String,
}

impl fmt::Debug for NodeKeyFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeKeyFile")
            .field("node_public_key", &self.node_public_key)
            .field("admin_public_key", &self.admin_public_key)
            .finish_non_exhaustive()
    }
}

impl NodeKeyFile {
    /// Fresh node and admin keys.
    pub fn generate() -> Self {
        let (node, admin) = (NodeSeed::generate(), NodeSeed::generate());
        Self {
            node_public_key: node.public_key_hex(),
            node_key: node.to_hex(),
            admin_public_key: admin.public_key_hex(),
            admin_key: admin.to_hex(),
        }
    }

    /// Parses a Secret entry. The public keys are derived again from the seeds, so a
    /// file whose public key does not match its seed is refused.
    pub fn parse(bytes: &[u8]) -> Option<Self> {
        let file: Self = serde_json::from_slice(bytes).ok()?;
        let node = NodeSeed::from_hex(file.node_key.as_bytes())?;
        let admin = NodeSeed::from_hex(file.admin_key.as_bytes())?;
        (node.public_key_hex() == file.node_public_key.to_ascii_lowercase()
            && admin.public_key_hex() == file.admin_public_key.to_ascii_lowercase())
        .then_some(file)
    }

    /// Public halves only.
    pub fn public(&self) -> PublicKeys {
        PublicKeys {
            node: self.node_public_key.to_ascii_lowercase(),
            admin: self.admin_public_key.to_ascii_lowercase(),
        }
    }
}

/// The public keys of one key file (hex).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKeys {
    pub node: String,
    pub admin: String,
}

/// Why a key Secret cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    /// An entry exists but is not a 32-byte hex seed. It is never overwritten: a human
    /// must look (it may be a member's own key in another format).
    #[error("Secret {secret} entry {entry} is not a trellis-node key file; refusing to replace it")]
    Malformed { secret: String, entry: String },
}

/// The outcome of reading a key Secret against the entries it must hold.
#[derive(Debug)]
pub struct KeySet {
    /// Public keys per entry name.
    pub public_keys: BTreeMap<String, PublicKeys>,
    /// Entries to add (new key slots). Empty when the Secret is complete.
    pub missing: BTreeMap<String, NodeKeyFile>,
}

/// Reads `existing` (None when the Secret does not exist) and generates key files for
/// every entry in `entries` it lacks. Existing entries are kept as they are.
pub fn complete_keys(
    secret_name: &str,
    existing: Option<&Secret>,
    entries: &[String],
) -> Result<KeySet, KeyError> {
    let data = existing.and_then(|s| s.data.as_ref());
    let mut public_keys = BTreeMap::new();
    let mut missing = BTreeMap::new();
    for entry in entries {
        match data.and_then(|d| d.get(entry)) {
            Some(ByteString(bytes)) => {
                let file = NodeKeyFile::parse(bytes).ok_or_else(|| KeyError::Malformed {
                    secret: secret_name.to_owned(),
                    entry: entry.clone(),
                })?;
                public_keys.insert(entry.clone(), file.public());
            }
            None => {
                let file = NodeKeyFile::generate();
                public_keys.insert(entry.clone(), file.public());
                missing.insert(entry.clone(), file);
            }
        }
    }
    Ok(KeySet {
        public_keys,
        missing,
    })
}

/// The `data` map that adds `missing` to a Secret (for a create or a merge patch).
pub fn secret_data(missing: &BTreeMap<String, NodeKeyFile>) -> BTreeMap<String, ByteString> {
    missing
        .iter()
        .map(|(entry, file)| {
            (
                entry.clone(),
                ByteString(serde_json::to_vec(file).unwrap_or_default()),
            )
        })
        .collect()
}

/// Secret entry name of a node: `<pod-name>.key`.
pub fn node_entry(node_name: &str) -> String {
    format!("{node_name}.key")
}

fn encode_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    let digit = |c: u8| {
        char::from(c)
            .to_digit(16)
            .and_then(|d| u8::try_from(d).ok())
    };
    text.as_bytes()
        .chunks(2)
        .map(|pair| match pair {
            [hi, lo] => Some(digit(*hi)? << 4 | digit(*lo)?),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn secret(data: &[(&str, &str)]) -> Secret {
        Secret {
            metadata: ObjectMeta::default(),
            data: Some(
                data.iter()
                    .map(|(k, v)| ((*k).to_owned(), ByteString(v.as_bytes().to_vec())))
                    .collect(),
            ),
            ..Secret::default()
        }
    }

    #[test]
    fn seeds_are_random_and_round_trip() {
        let a = NodeSeed::generate();
        let b = NodeSeed::generate();
        assert_ne!(a, b);
        assert_eq!(NodeSeed::from_hex(a.to_hex().as_bytes()), Some(a.clone()));
        assert_eq!(a.public_key_hex().len(), 64);
        assert_ne!(a.public_key_hex(), a.to_hex());
    }

    #[test]
    fn debug_never_shows_the_seed() {
        let seed = NodeSeed::generate();
        let shown = format!("{seed:?} {:?}", vec![seed.clone()]);
        assert!(!shown.contains(&seed.to_hex()));
        assert!(!shown.contains(&seed.to_hex()[..8]));
        assert!(shown.contains("redacted"));
    }

    #[test]
    fn known_public_key() {
        // RFC 8032 test vector 1.
        let seed = NodeSeed::from_hex(
            b"9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60\n",
        )
        .unwrap();
        assert_eq!(
            seed.public_key_hex(),
            "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
        );
    }

    #[test]
    fn existing_keys_are_kept_and_only_missing_ones_generated() {
        let kept = NodeKeyFile::generate();
        let kept_json = serde_json::to_string(&kept).unwrap();
        let existing = secret(&[("n-0.key", &kept_json)]);
        let entries = vec!["n-0.key".to_owned(), "n-1.key".to_owned()];
        let set = complete_keys("s", Some(&existing), &entries).unwrap();
        assert_eq!(set.public_keys["n-0.key"], kept.public());
        assert_eq!(set.missing.keys().collect::<Vec<_>>(), ["n-1.key"]);
        assert_eq!(set.public_keys["n-1.key"], set.missing["n-1.key"].public());

        let other = serde_json::to_string(&NodeKeyFile::generate()).unwrap();
        let complete = secret(&[("n-0.key", &kept_json), ("n-1.key", &other)]);
        let again = complete_keys("s", Some(&complete), &entries).unwrap();
        assert!(again.missing.is_empty(), "a complete Secret needs no write");
    }

    #[test]
    fn key_files_have_the_keygen_shape() {
        let file = NodeKeyFile::generate();
        let value: serde_json::Value = serde_json::to_value(&file).unwrap();
        let mut fields: Vec<_> = value.as_object().unwrap().keys().cloned().collect();
        fields.sort();
        assert_eq!(
            fields,
            [
                "admin_key",
                "admin_public_key",
                "node_key",
                "node_public_key"
            ]
        );
        assert_ne!(file.node_key, file.admin_key);
        assert_eq!(
            NodeKeyFile::parse(&serde_json::to_vec(&file).unwrap()),
            Some(file.clone())
        );
        let shown = format!("{file:?}");
        assert!(
            !shown.contains(&file.node_key) && !shown.contains(&file.admin_key),
            "{shown}"
        );
        // A public key that does not belong to its seed is refused.
        let mut forged = file.clone();
        forged.node_public_key = NodeKeyFile::generate().node_public_key;
        assert_eq!(
            NodeKeyFile::parse(&serde_json::to_vec(&forged).unwrap()),
            None
        );
    }

    #[test]
    fn a_missing_secret_gets_every_key() {
        let entries = vec!["a.key".to_owned(), "b.key".to_owned()];
        let set = complete_keys("s", None, &entries).unwrap();
        assert_eq!(set.missing.len(), 2);
        let data = secret_data(&set.missing);
        let back = NodeKeyFile::parse(&data["a.key"].0).unwrap();
        assert_eq!(back.public(), set.public_keys["a.key"]);
    }

    #[test]
    fn malformed_entries_are_refused_not_replaced() {
        let existing = secret(&[("n-0.key", "not a key file")]);
        let err = complete_keys("s", Some(&existing), &["n-0.key".to_owned()]).unwrap_err();
        assert_eq!(
            err,
            KeyError::Malformed {
                secret: "s".to_owned(),
                entry: "n-0.key".to_owned()
            }
        );
        // The error text names the entry but carries no key material.
        assert!(!err.to_string().contains("not a key file"));
    }

    #[test]
    fn hex_decoding_rejects_bad_input() {
        assert_eq!(decode_hex("0"), None);
        assert_eq!(decode_hex("zz"), None);
        assert_eq!(decode_hex("0aFF"), Some(vec![0x0a, 0xff]));
        assert_eq!(NodeSeed::from_hex(b"00"), None, "wrong length");
        assert_eq!(NodeSeed::from_hex(&[0xff, 0xfe]), None, "not UTF-8");
    }
}
