//! Signing consortium governance with custodied organisation keys.
//!
//! When a member is admitted by the console's approval threshold, the chain must admit
//! it too: a governance transaction approved by more than two thirds of the chain's
//! current members (docs/node-contract.md, "Governance"). The console holds the keys of
//! the members it custodies (sealed under the master key) and signs with them here, only
//! for members that are `Admitted` in that very network. Keys brought by their
//! organisations never reach the console, so their approvals are not produced here.

use std::sync::Arc;

use futures::future::BoxFuture;
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter};
use trellis_console_entity::{consortium_member, governance_approval, network};
use trellis_node_types::{Approval, Proposal, private_key_from_seed_bytes, to_hex};
use uuid::Uuid;

use crate::audit;
use crate::custody::{self, MasterKey};
use crate::provisioner::GovernanceSigner;
use crate::tenancy::TenantId;

/// Signs with the custodied keys of a network's admitted members.
#[derive(Clone)]
pub struct CustodySigner {
    db: DatabaseConnection,
    master_key: Arc<MasterKey>,
}

impl CustodySigner {
    pub fn new(db: DatabaseConnection, master_key: Arc<MasterKey>) -> Self {
        Self { db, master_key }
    }

    async fn approvals(
        &self,
        network: Uuid,
        admin_keys: &[String],
        proposal: &Proposal,
    ) -> Result<Vec<Approval>, String> {
        let members = consortium_member::Entity::find()
            .filter(consortium_member::Column::NetworkId.eq(network))
            .filter(consortium_member::Column::State.eq("Admitted"))
            .all(&self.db)
            .await
            .map_err(|e| format!("reading the consortium's members: {e}"))?;
        let mut approvals = Vec::new();
        for member in members {
            let (Some(public), Some(sealed)) =
                (&member.admin_public_key, &member.sealed_private_key)
            else {
                continue;
            };
            if !admin_keys.iter().any(|k| k.eq_ignore_ascii_case(public))
                || approvals.iter().any(|a: &Approval| {
                    custody::encode_hex(a.admin_key.as_ref()) == public.to_ascii_lowercase()
                })
            {
                continue;
            }
            let key = custody::open_custodied(&self.master_key, member.id, sealed)
                .map_err(|e| format!("opening the key of member {}: {e}", member.id))?;
            let signer = private_key_from_seed_bytes(key.to_bytes())
                .ok_or_else(|| format!("the key of member {} is not usable", member.id))?;
            approvals.push(proposal.approve(&signer));
        }
        let posted = governance_approval::Entity::find()
            .filter(governance_approval::Column::NetworkId.eq(network))
            .filter(governance_approval::Column::ProposalHash.eq(to_hex(proposal.id().as_ref())))
            .all(&self.db)
            .await
            .map_err(|e| format!("reading posted approvals: {e}"))?;
        for row in posted {
            let Ok(approval) = Approval::from_hex(&row.approval) else {
                continue;
            };
            let key = to_hex(approval.admin_key.as_ref());
            let counted = admin_keys.iter().any(|k| k.eq_ignore_ascii_case(&key))
                && proposal.verify(&approval)
                && !approvals.iter().any(|a| a.admin_key == approval.admin_key);
            if counted {
                approvals.push(approval);
            }
        }
        Ok(approvals)
    }

    async fn audit(&self, network: Uuid, action: &str, details: serde_json::Value) {
        let owner = match network::Entity::find_by_id(network).one(&self.db).await {
            Ok(Some(row)) => row.tenant_id,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(error = %e, %network, "audit of a governance step: network lookup");
                return;
            }
        };
        if let Err(e) = audit::record(
            &self.db,
            TenantId::trusted(owner),
            "console:governance",
            action,
            Some(format!("network:{network}")),
            details,
        )
        .await
        {
            tracing::warn!(error = %e, %network, action, "audit of a governance step");
        }
    }
}

impl GovernanceSigner for CustodySigner {
    fn approve<'a>(
        &'a self,
        network: Uuid,
        admin_keys: &'a [String],
        proposal: &'a Proposal,
    ) -> BoxFuture<'a, Result<Vec<Approval>, String>> {
        Box::pin(self.approvals(network, admin_keys, proposal))
    }

    fn record<'a>(
        &'a self,
        network: Uuid,
        action: &'a str,
        details: serde_json::Value,
    ) -> BoxFuture<'a, ()> {
        Box::pin(self.audit(network, action, details))
    }
}
