//! Short-lived access tokens: JWTs signed with Ed25519 (`alg: EdDSA`).
//!
//! Verification accepts exactly one algorithm (EdDSA), requires `exp`, `nbf`, `iss`,
//! `aud` and `sub`, and requires a `kid` naming one of the console's verification keys.
//! That rules out `alg: none`, HMAC-with-the-public-key confusion and tokens from other
//! issuers. Keys rotate by starting the console with a new signing key and the old
//! public key(s) as extra verification keys until the old tokens have expired.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey};
use ed25519_dalek::{SigningKey, VerifyingKey};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;
use uuid::Uuid;

use crate::auth::Role;
use crate::auth::secret::hex_sha256;

pub const ISSUER: &str = "trellis-console";
pub const AUDIENCE: &str = "trellis-console-api";
/// Clock skew tolerated on `exp`/`nbf`.
const LEEWAY_SECONDS: u64 = 30;
/// Tokens whose signature was checked, remembered until they expire. Every request of a
/// client carries the same token, and the Ed25519 check was the largest single cost of an
/// authenticated read (docs/benchmarks.md). Bounded: a full cache is emptied, not grown.
const VERIFIED_CACHE_ENTRIES: usize = 8192;

/// The claims of an access token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessClaims {
    pub iss: String,
    pub aud: String,
    /// The user id.
    pub sub: Uuid,
    /// The tenant id.
    pub tid: Uuid,
    pub role: Role,
    pub iat: u64,
    pub nbf: u64,
    pub exp: u64,
    pub jti: Uuid,
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("reading key file {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("key file {path} is not a PKCS#8 Ed25519 PEM key: {reason}")]
    Format { path: String, reason: String },
}

/// Why a token was refused. Deliberately coarse towards the client.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("access token expired")]
    Expired,
    #[error("access token invalid: {0}")]
    Invalid(String),
}

/// The console's signing key and the set of keys it accepts.
pub struct TokenKeys {
    kid: String,
    encoding: EncodingKey,
    decoding: HashMap<String, DecodingKey>,
    public_keys: Vec<(String, [u8; 32])>,
    validation: Validation,
    pub access_ttl_seconds: u64,
    /// SHA-256 of a token already verified → its claims. The keys never change while the
    /// process runs (rotation restarts the console), so a verified token stays valid
    /// until its `exp`, which is checked again on every use.
    verified: Mutex<HashMap<[u8; 32], AccessClaims>>,
}

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("TokenKeys")
            .field("kid", &self.kid)
            .field("access_ttl_seconds", &self.access_ttl_seconds)
            .finish_non_exhaustive()
    }
}

/// The key id: the first 16 hex digits of SHA-256 of the raw public key.
pub fn key_id(public: &VerifyingKey) -> String {
    hex_sha256(public.as_bytes())[..16].to_string()
}

pub fn generate_signing_key() -> SigningKey {
    let mut seed = [0u8; 32];
    rand::rng().fill_bytes(&mut seed);
    SigningKey::from_bytes(&seed)
}

impl TokenKeys {
    pub fn new(
        signing: &SigningKey,
        extra_verifying: &[VerifyingKey],
        access_ttl_seconds: u64,
    ) -> Result<Self, KeyError> {
        let der = signing.to_pkcs8_der().map_err(|err| KeyError::Format {
            path: "<memory>".into(),
            reason: err.to_string(),
        })?;
        let public = signing.verifying_key();
        let kid = key_id(&public);
        let mut decoding = HashMap::new();
        let mut public_keys = Vec::new();
        for key in std::iter::once(&public).chain(extra_verifying.iter()) {
            let id = key_id(key);
            decoding.insert(id.clone(), DecodingKey::from_ed_der(key.as_bytes()));
            public_keys.push((id, key.to_bytes()));
        }
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[AUDIENCE]);
        validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = LEEWAY_SECONDS;
        Ok(Self {
            kid,
            encoding: EncodingKey::from_ed_der(der.as_bytes()),
            decoding,
            public_keys,
            validation,
            access_ttl_seconds,
            verified: Mutex::new(HashMap::new()),
        })
    }

    /// Loads the signing key from a PKCS#8 PEM file, creating it (mode 0600) if absent.
    pub fn load_or_create(
        path: &Path,
        extra_verifying: &[std::path::PathBuf],
        access_ttl_seconds: u64,
    ) -> Result<Self, KeyError> {
        let shown_path = path.display().to_string();
        let signing = if path.exists() {
            let pem = std::fs::read_to_string(path).map_err(|source| KeyError::Io {
                path: shown_path.clone(),
                source,
            })?;
            SigningKey::from_pkcs8_pem(&pem).map_err(|err| KeyError::Format {
                path: shown_path.clone(),
                reason: err.to_string(),
            })?
        } else {
            let key = generate_signing_key();
            let pem = key
                .to_pkcs8_pem(LineEnding::LF)
                .map_err(|err| KeyError::Format {
                    path: shown_path.clone(),
                    reason: err.to_string(),
                })?;
            write_private_file(path, pem.as_bytes()).map_err(|source| KeyError::Io {
                path: shown_path.clone(),
                source,
            })?;
            tracing::info!(path = %shown_path, "generated a new access-token signing key");
            key
        };
        let mut extra = Vec::new();
        for extra_path in extra_verifying {
            let shown = extra_path.display().to_string();
            let pem = std::fs::read_to_string(extra_path).map_err(|source| KeyError::Io {
                path: shown.clone(),
                source,
            })?;
            let key = VerifyingKey::from_public_key_pem(&pem)
                .or_else(|_| SigningKey::from_pkcs8_pem(&pem).map(|k| k.verifying_key()))
                .map_err(|err| KeyError::Format {
                    path: shown.clone(),
                    reason: err.to_string(),
                })?;
            extra.push(key);
        }
        Self::new(&signing, &extra, access_ttl_seconds)
    }

    pub fn issue(&self, user: Uuid, tenant: Uuid, role: Role) -> Result<String, TokenError> {
        let now = jsonwebtoken::get_current_timestamp();
        let claims = AccessClaims {
            iss: ISSUER.to_string(),
            aud: AUDIENCE.to_string(),
            sub: user,
            tid: tenant,
            role,
            iat: now,
            nbf: now,
            exp: now + self.access_ttl_seconds,
            jti: Uuid::new_v4(),
        };
        self.sign(&claims)
    }

    /// Signs arbitrary claims with the current key (used by `issue`, and by tests to
    /// build hostile tokens).
    pub fn sign(&self, claims: &AccessClaims) -> Result<String, TokenError> {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding)
            .map_err(|err| TokenError::Invalid(format!("signing failed: {err}")))
    }

    pub fn verify(&self, token: &str) -> Result<AccessClaims, TokenError> {
        let digest: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
        if let Some(claims) = self.remembered(&digest) {
            return if claims.exp.saturating_add(LEEWAY_SECONDS)
                < jsonwebtoken::get_current_timestamp()
            {
                Err(TokenError::Expired)
            } else {
                Ok(claims)
            };
        }
        let claims = self.verify_signature(token)?;
        if let Ok(mut verified) = self.verified.lock() {
            if verified.len() >= VERIFIED_CACHE_ENTRIES {
                verified.clear();
            }
            verified.insert(digest, claims.clone());
        }
        Ok(claims)
    }

    fn remembered(&self, digest: &[u8; 32]) -> Option<AccessClaims> {
        self.verified.lock().ok()?.get(digest).cloned()
    }

    /// The full check: header, key id, signature and claims.
    fn verify_signature(&self, token: &str) -> Result<AccessClaims, TokenError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|err| TokenError::Invalid(err.to_string()))?;
        if header.alg != Algorithm::EdDSA {
            return Err(TokenError::Invalid(format!(
                "algorithm {:?} not accepted",
                header.alg
            )));
        }
        let kid = header
            .kid
            .ok_or_else(|| TokenError::Invalid("no key id".into()))?;
        let key = self
            .decoding
            .get(&kid)
            .ok_or_else(|| TokenError::Invalid("unknown key id".into()))?;
        jsonwebtoken::decode::<AccessClaims>(token, key, &self.validation)
            .map(|data| data.claims)
            .map_err(|err| match err.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => TokenError::Expired,
                _ => TokenError::Invalid(err.to_string()),
            })
    }

    /// The verification keys as a JWK set (`/.well-known/jwks.json`).
    pub fn jwks(&self) -> serde_json::Value {
        let keys: Vec<_> = self
            .public_keys
            .iter()
            .map(|(kid, bytes)| {
                serde_json::json!({
                    "kty": "OKP",
                    "crv": "Ed25519",
                    "alg": "EdDSA",
                    "use": "sig",
                    "kid": kid,
                    "x": URL_SAFE_NO_PAD.encode(bytes),
                })
            })
            .collect();
        serde_json::json!({ "keys": keys })
    }
}

/// Writes a file readable by its owner only; refuses to overwrite.
pub fn write_private_file(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> TokenKeys {
        TokenKeys::new(&generate_signing_key(), &[], 900).unwrap()
    }

    fn claims(keys: &TokenKeys) -> AccessClaims {
        let token = keys
            .issue(Uuid::new_v4(), Uuid::new_v4(), Role::Admin)
            .unwrap();
        keys.verify(&token).unwrap()
    }

    fn b64(value: &serde_json::Value) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(value).unwrap())
    }

    #[test]
    fn issued_tokens_verify_with_their_claims() {
        let keys = keys();
        let user = Uuid::new_v4();
        let tenant = Uuid::new_v4();
        let token = keys.issue(user, tenant, Role::Member).unwrap();
        let claims = keys.verify(&token).unwrap();
        assert_eq!(claims.sub, user);
        assert_eq!(claims.tid, tenant);
        assert_eq!(claims.role, Role::Member);
        assert_eq!(claims.exp - claims.iat, 900);
    }

    #[test]
    fn alg_none_is_rejected() {
        let keys = keys();
        let payload = serde_json::to_value(claims(&keys)).unwrap();
        let header = serde_json::json!({"alg": "none", "typ": "JWT", "kid": keys.kid});
        let token = format!("{}.{}.", b64(&header), b64(&payload));
        assert!(matches!(keys.verify(&token), Err(TokenError::Invalid(_))));
    }

    #[test]
    fn hmac_signed_with_the_public_key_is_rejected() {
        let keys = keys();
        let claims = claims(&keys);
        let public = keys.public_keys[0].1;
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(keys.kid.clone());
        let token =
            jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(&public)).unwrap();
        assert!(matches!(keys.verify(&token), Err(TokenError::Invalid(_))));
    }

    #[test]
    fn expired_tokens_are_rejected() {
        let keys = keys();
        let mut claims = claims(&keys);
        claims.iat -= 3600;
        claims.nbf -= 3600;
        claims.exp = claims.iat + 60;
        let token = keys.sign(&claims).unwrap();
        assert_eq!(keys.verify(&token), Err(TokenError::Expired));
    }

    #[test]
    fn a_remembered_token_still_expires() {
        let keys = keys();
        let mut claims = claims(&keys);
        // Valid now (within the leeway), so the first check verifies and remembers it.
        let now = jsonwebtoken::get_current_timestamp();
        claims.exp = now;
        let token = keys.sign(&claims).unwrap();
        assert_eq!(keys.verify(&token).unwrap(), claims);
        assert_eq!(
            keys.remembered(&sha2::Sha256::digest(token.as_bytes()).into()),
            Some(claims.clone())
        );
        // The remembered claims are checked against the clock on every use: the same
        // token with an `exp` in the past must fail even from the cache.
        let mut verified = keys.verified.lock().unwrap();
        let digest: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
        verified.get_mut(&digest).unwrap().exp = now - LEEWAY_SECONDS - 1;
        drop(verified);
        assert_eq!(keys.verify(&token), Err(TokenError::Expired));
        // A tampered token is not in the cache and fails the full check.
        let tampered = format!("{token}x");
        assert!(matches!(
            keys.verify(&tampered),
            Err(TokenError::Invalid(_))
        ));
    }

    #[test]
    fn not_yet_valid_tokens_are_rejected() {
        let keys = keys();
        let mut claims = claims(&keys);
        claims.nbf += 3600;
        claims.exp += 3600;
        let token = keys.sign(&claims).unwrap();
        assert!(matches!(keys.verify(&token), Err(TokenError::Invalid(_))));
    }

    #[test]
    fn wrong_issuer_or_audience_is_rejected() {
        let keys = keys();
        let mut wrong_issuer = claims(&keys);
        wrong_issuer.iss = "someone-else".into();
        assert!(keys.verify(&keys.sign(&wrong_issuer).unwrap()).is_err());
        let mut wrong_audience = claims(&keys);
        wrong_audience.aud = "another-api".into();
        assert!(keys.verify(&keys.sign(&wrong_audience).unwrap()).is_err());
    }

    #[test]
    fn tampered_payload_is_rejected() {
        let keys = keys();
        let token = keys
            .issue(Uuid::new_v4(), Uuid::new_v4(), Role::Viewer)
            .unwrap();
        let parts: Vec<&str> = token.split('.').collect();
        let mut payload: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        payload["role"] = "owner".into();
        let forged = format!("{}.{}.{}", parts[0], b64(&payload), parts[2]);
        assert!(matches!(keys.verify(&forged), Err(TokenError::Invalid(_))));
    }

    #[test]
    fn tokens_of_another_key_are_rejected_and_rotation_keeps_old_ones() {
        let old = generate_signing_key();
        let new = generate_signing_key();
        let old_keys = TokenKeys::new(&old, &[], 900).unwrap();
        let token = old_keys
            .issue(Uuid::new_v4(), Uuid::new_v4(), Role::Viewer)
            .unwrap();
        let new_only = TokenKeys::new(&new, &[], 900).unwrap();
        assert!(new_only.verify(&token).is_err());
        let rotated = TokenKeys::new(&new, &[old.verifying_key()], 900).unwrap();
        assert!(rotated.verify(&token).is_ok());
        assert_eq!(rotated.jwks()["keys"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn key_file_is_created_private_and_reloaded() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/signing.pem");
        let first = TokenKeys::load_or_create(&path, &[], 900).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let second = TokenKeys::load_or_create(&path, &[], 900).unwrap();
        assert_eq!(first.kid, second.kid);
        let token = first
            .issue(Uuid::new_v4(), Uuid::new_v4(), Role::Owner)
            .unwrap();
        assert!(second.verify(&token).is_ok());
    }
}
