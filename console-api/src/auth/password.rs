//! Argon2id password hashing. Hashing runs on the blocking pool: it is deliberately slow.

use argon2::{Algorithm, Argon2, Params, PasswordHasher, PasswordVerifier, Version};

use crate::error::ApiError;

/// Argon2id cost parameters. The defaults are OWASP's recommendation (19 MiB, 2 passes,
/// 1 lane). Tests use cheaper parameters; a stored hash records its own parameters, so
/// verification works whatever the current setting.
#[derive(Clone, Copy, Debug)]
pub struct PasswordPolicy {
    pub memory_kib: u32,
    pub iterations: u32,
    pub min_length: usize,
}

impl Default for PasswordPolicy {
    fn default() -> Self {
        Self {
            memory_kib: 19 * 1024,
            iterations: 2,
            min_length: 12,
        }
    }
}

pub const MAX_PASSWORD_LENGTH: usize = 256;

/// The hash verified for unknown users, computed once (hashing it per request would
/// double the work an attacker can make a login cost).
static DUMMY_HASH: tokio::sync::OnceCell<String> = tokio::sync::OnceCell::const_new();

impl PasswordPolicy {
    fn hasher(&self) -> Result<Argon2<'static>, ApiError> {
        let params = Params::new(self.memory_kib, self.iterations, 1, None)
            .map_err(|err| ApiError::internal(format!("argon2 params: {err}")))?;
        Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
    }

    /// `None` when acceptable, else the reason.
    pub fn check(&self, password: &str) -> Option<String> {
        let length = password.chars().count();
        if length < self.min_length {
            Some(format!("must be at least {} characters", self.min_length))
        } else if password.len() > MAX_PASSWORD_LENGTH {
            Some(format!("must be at most {MAX_PASSWORD_LENGTH} bytes"))
        } else {
            None
        }
    }

    pub async fn hash(&self, password: String) -> Result<String, ApiError> {
        let hasher = self.hasher()?;
        tokio::task::spawn_blocking(move || {
            hasher
                .hash_password(password.as_bytes())
                .map(|hash| hash.to_string())
                .map_err(|err| ApiError::internal(format!("argon2 hash: {err}")))
        })
        .await
        .map_err(ApiError::internal)?
    }

    /// Verifies `password` against a stored PHC string. With `None` (unknown user) a
    /// dummy hash is verified anyway so that response time does not reveal which
    /// e-mail addresses have accounts.
    pub async fn verify(&self, password: String, stored: Option<String>) -> Result<bool, ApiError> {
        let hasher = self.hasher()?;
        let known = stored.is_some();
        let stored = match stored {
            Some(stored) => stored,
            None => DUMMY_HASH
                .get_or_try_init(|| self.hash("not-a-real-password".to_string()))
                .await?
                .clone(),
        };
        let matches = tokio::task::spawn_blocking(move || {
            hasher
                .verify_password(password.as_bytes(), stored.as_str())
                .is_ok()
        })
        .await
        .map_err(ApiError::internal)?;
        Ok(known && matches)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cheap() -> PasswordPolicy {
        PasswordPolicy {
            memory_kib: 1024,
            iterations: 1,
            min_length: 12,
        }
    }

    #[tokio::test]
    async fn hash_verifies_only_the_same_password() {
        let policy = cheap();
        let hash = policy.hash("correct horse battery".into()).await.unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert!(!hash.contains("correct horse"));
        assert!(
            policy
                .verify("correct horse battery".into(), Some(hash.clone()))
                .await
                .unwrap()
        );
        assert!(
            !policy
                .verify("correct horse battery!".into(), Some(hash))
                .await
                .unwrap()
        );
    }

    #[tokio::test]
    async fn unknown_user_never_verifies() {
        assert!(
            !cheap()
                .verify("not-a-real-password".into(), None)
                .await
                .unwrap()
        );
    }

    #[test]
    fn short_and_huge_passwords_are_refused() {
        let policy = cheap();
        assert!(policy.check("short").is_some());
        assert!(policy.check(&"x".repeat(300)).is_some());
        assert!(policy.check("long enough password").is_none());
    }
}
