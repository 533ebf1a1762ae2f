//! Identity: roles, password hashing, access tokens (JWT, EdDSA) and opaque secrets
//! (refresh tokens, API keys).

pub mod jwt;
pub mod password;
pub mod secret;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A user's (or API key's) role within its tenant. Ordered: each role can do everything
/// the roles below it can.
///
/// - `viewer`: read networks, users and the tenant.
/// - `member`: also create, change and delete networks.
/// - `admin`: also manage users (up to admin), API keys and read the audit log.
/// - `owner`: also create owners.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Viewer,
    Member,
    Admin,
    Owner,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Member => "member",
            Role::Admin => "admin",
            Role::Owner => "owner",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        match text {
            "viewer" => Some(Role::Viewer),
            "member" => Some(Role::Member),
            "admin" => Some(Role::Admin),
            "owner" => Some(Role::Owner),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_ordered_by_power() {
        assert!(Role::Viewer < Role::Member);
        assert!(Role::Member < Role::Admin);
        assert!(Role::Admin < Role::Owner);
    }

    #[test]
    fn roles_round_trip_through_text() {
        for role in [Role::Viewer, Role::Member, Role::Admin, Role::Owner] {
            assert_eq!(Role::parse(role.as_str()), Some(role));
        }
        assert_eq!(Role::parse("root"), None);
        assert_eq!(Role::parse("Owner"), None);
    }
}
