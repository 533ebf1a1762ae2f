//! A Kubernetes network's treasury, as in local mode: a funded account whose key is kept
//! with the network's data — here a Secret `<network>-treasury` next to the
//! `ChainNetwork`, entry `keys.json` in `trellis-node keygen`'s format (its admin key is
//! the account; `trellis-node` and the console's `signed_transfer` read it).
//!
//! The account is funded through the `ChainNetwork`'s `spec.genesisBalances`, written
//! once when the network is created: the field is immutable, so later applies repeat
//! the existing resource's allocations unchanged. The Secret is created before the
//! resource and reused if it exists (an apply that failed after creating it), so a
//! network's genesis never names an account whose key was lost.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{DeleteParams, ObjectMeta, PostParams};
use kube::{Api, Client};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use trellis_crd::network::GenesisAllocation;
use trellis_node_types::{Signer as _, private_key_from_seed_bytes, to_hex};

use super::kube::{classify, labels, namespace_of};
use super::{NetworkRef, ProvisionError};

/// The Secret's entry holding the key file.
pub const TREASURY_ENTRY: &str = "keys.json";

pub fn treasury_secret_name(network: &str) -> String {
    format!("{network}-treasury")
}

/// `trellis-node keygen`'s key file.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KeyFile {
    pub node_key: String,
    pub node_public_key: String,
    pub admin_key: String,
    pub admin_public_key: String,
}

fn random_key() -> Result<trellis_node_types::PrivateKey, ProvisionError> {
    let mut seed = [0u8; 32];
    rand::rng().fill_bytes(&mut seed);
    private_key_from_seed_bytes(seed)
        .ok_or_else(|| ProvisionError::Unavailable("could not derive a treasury key".into()))
}

/// A fresh key file (the node key is unused; it keeps the keygen format).
pub fn generate_key_file() -> Result<KeyFile, ProvisionError> {
    use trellis_node_types::Encode as _;
    let node = random_key()?;
    let admin = random_key()?;
    Ok(KeyFile {
        node_key: to_hex(&node.encode()),
        node_public_key: to_hex(node.public_key().as_ref()),
        admin_key: to_hex(&admin.encode()),
        admin_public_key: to_hex(admin.public_key().as_ref()),
    })
}

/// The treasury account of `network`, its key Secret created if missing.
pub async fn ensure_treasury(
    client: &Client,
    network: &NetworkRef,
) -> Result<String, ProvisionError> {
    let namespace = namespace_of(&network.tenant_slug);
    let name = treasury_secret_name(&network.name);
    let what = format!("Secret {name}");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    if let Some(existing) = secrets
        .get_opt(&name)
        .await
        .map_err(|e| classify(&what, &e))?
    {
        return account_of(&existing)
            .ok_or_else(|| ProvisionError::Rejected(format!("{what} holds no treasury key file")));
    }
    let keys = generate_key_file()?;
    let text = serde_json::to_vec(&keys)
        .map_err(|e| ProvisionError::Unavailable(format!("treasury key file: {e}")))?;
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(namespace),
            labels: Some(labels(network)),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".to_owned()),
        data: Some(BTreeMap::from([(
            TREASURY_ENTRY.to_owned(),
            ByteString(text),
        )])),
        ..Secret::default()
    };
    match secrets.create(&PostParams::default(), &secret).await {
        Ok(_) => Ok(keys.admin_public_key),
        // Created meanwhile by a racing apply: use that one.
        Err(kube::Error::Api(s)) if s.code == 409 => {
            let existing = secrets.get(&name).await.map_err(|e| classify(&what, &e))?;
            account_of(&existing).ok_or_else(|| {
                ProvisionError::Rejected(format!("{what} holds no treasury key file"))
            })
        }
        Err(e) => Err(classify(&what, &e)),
    }
}

/// The account (admin public key) of a treasury Secret's key file.
pub fn account_of(secret: &Secret) -> Option<String> {
    let bytes = &secret.data.as_ref()?.get(TREASURY_ENTRY)?.0;
    let keys: KeyFile = serde_json::from_slice(bytes).ok()?;
    Some(keys.admin_public_key)
}

/// The genesis allocation of a new network: its treasury, funded with `balance`.
pub fn allocation(account: String, balance: u64) -> GenesisAllocation {
    GenesisAllocation {
        account,
        amount: i64::try_from(balance).unwrap_or(i64::MAX),
    }
}

/// Deletes the treasury key (the network's ledger is gone with it).
pub async fn delete_treasury(client: &Client, network: &NetworkRef) -> Result<(), ProvisionError> {
    let name = treasury_secret_name(&network.name);
    match Api::<Secret>::namespaced(client.clone(), &namespace_of(&network.tenant_slug))
        .delete(&name, &DeleteParams::default())
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(classify(&format!("Secret {name}"), &e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_files_sign_transfers_from_their_account() {
        let keys = generate_key_file().unwrap();
        let admin = trellis_node_types::private_key_from_hex(&keys.admin_key).unwrap();
        assert_eq!(to_hex(admin.public_key().as_ref()), keys.admin_public_key);
        assert_ne!(keys.admin_key, generate_key_file().unwrap().admin_key);
        let secret = Secret {
            data: Some(BTreeMap::from([(
                TREASURY_ENTRY.to_owned(),
                ByteString(serde_json::to_vec(&keys).unwrap()),
            )])),
            ..Secret::default()
        };
        assert_eq!(account_of(&secret), Some(keys.admin_public_key.clone()));
        assert_eq!(account_of(&Secret::default()), None);
        let allocated = allocation(keys.admin_public_key, u64::MAX);
        assert_eq!(allocated.amount, i64::MAX);
    }
}
