//! Removing an admitted member: the reverse of admission. Admitted members other than
//! the one leaving approve its removal (the same threshold as an admission: more than
//! two thirds of the admitted members); at the threshold the member is `Removed`, the
//! network's desired state loses its nodes, and the provisioner removes them from the
//! chain through governance before stopping them (`local`) or marks its `ChainMember`
//! for removal (`kube`). On Kubernetes a founding member's validators are the network's
//! own committee: the provisioner refuses its removal up front when the committee left
//! would not tolerate a fault (`committee_below_quorum`) or its validators are not the
//! StatefulSet's last pods (`founder_not_removable`); otherwise the operator removes it
//! from the chain and then its pods.
//!
//! A member does not approve its own removal, so the others alone must reach the
//! threshold: a consortium where they cannot (three members, or two) is refused with
//! `below_quorum` rather than left waiting for approvals that can never come — the
//! chain's governance would need the leaving organisation's key too, and the console
//! stops signing with it the moment the member is `Removed`.

use axum::extract::State;
use chrono::Utc;
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, ConnectionTrait, DbErr, EntityTrait, PaginatorTrait, QueryFilter};
use serde::{Deserialize, Serialize};
use trellis_console_entity::{consortium_invitation, consortium_member, network};
use utoipa::ToSchema;
use uuid::Uuid;

use super::approvals::Decision;
use super::{
    ApproveRequest, Member, MemberState, access, admitted_count, approval_threshold,
    conclude_approval, record_approvals,
};
use crate::app::AppState;
use crate::audit;
use crate::auth::Role;
use crate::error::{ApiError, ApiResult, Json, Path};
use crate::networks::spec::NetworkSpec;
use crate::networks::{NetworkPhase, reconcile, store};
use crate::tenancy::{Scope, TenantId};

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct RemovalOutcome {
    pub member: Member,
    /// Approvals of the removal so far.
    pub approvals: u64,
    /// Approvals the removal needs.
    pub threshold: u64,
    /// The network generation without the member, once removed.
    pub network_generation: Option<i64>,
}

/// A founding member was created with its network; every later one by an invitation.
async fn is_founder(conn: &impl ConnectionTrait, member_id: Uuid) -> Result<bool, DbErr> {
    Ok(consortium_invitation::Entity::find()
        .filter(consortium_invitation::Column::MemberId.eq(member_id))
        .count(conn)
        .await?
        == 0)
}

/// Why a removal of one of `admitted` members cannot be approved at all, if it cannot.
pub fn removal_refusal(admitted: u64) -> Option<(&'static str, String)> {
    let threshold = approval_threshold(admitted);
    if admitted <= 1 {
        return Some((
            "last_member",
            "this is the consortium's last admitted member; a chain needs at least one member \
             to validate and govern it (delete the network instead)"
                .to_owned(),
        ));
    }
    if admitted - 1 < threshold {
        return Some((
            "below_quorum",
            format!(
                "removing a member of {admitted} needs {threshold} approvals (more than two \
                 thirds), but only the {} other members approve a removal; admit another \
                 member first",
                admitted - 1
            ),
        ));
    }
    None
}

/// Approves the removal of an admitted member on behalf of admitted members the caller
/// controls (the first approval opens it). At the threshold the member is `Removed` and
/// the network's desired state loses its nodes (written through the provisioner, which
/// removes them from the chain by governance and then stops them).
#[utoipa::path(post, path = "/v1/networks/{id}/members/{member_id}/removal", tag = "consortium",
    params(("id" = Uuid, Path), ("member_id" = Uuid, Path)),
    request_body = ApproveRequest,
    responses((status = 200, body = RemovalOutcome), (status = "default", body = crate::error::Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn approve_removal(
    State(state): State<AppState>,
    scope: Scope,
    Path((id, member_id)): Path<(Uuid, Uuid)>,
    Json(request): Json<ApproveRequest>,
) -> ApiResult<Json<RemovalOutcome>> {
    let access = access(&state.db, &scope, id).await?;
    scope.require(Role::Admin)?;
    if NetworkPhase::parse(&access.network.phase) == NetworkPhase::Deleting {
        return Err(ApiError::conflict(
            "network_deleting",
            "the network is being deleted",
        ));
    }
    let leaving = consortium_member::Entity::find_by_id(member_id)
        .filter(consortium_member::Column::NetworkId.eq(id))
        .one(&state.db)
        .await?
        .ok_or_else(|| ApiError::not_found("member"))?;
    if MemberState::parse(&leaving.state) != Some(MemberState::Admitted) {
        return Err(ApiError::conflict(
            "member_not_admitted",
            format!(
                "only an Admitted member can be removed; this one is {} (an Invited or \
                 Proposed one is rejected instead: POST …/members/{member_id}/rejection)",
                leaving.state
            ),
        ));
    }
    let admitted = admitted_count(&state.db, id).await?;
    if let Some((code, message)) = removal_refusal(admitted) {
        return Err(ApiError::conflict(code, message));
    }
    if is_founder(&state.db, member_id).await? {
        // A founder's validators are the network's own committee: the provisioner says
        // whether they can go (on Kubernetes: quorum kept, last StatefulSet pods).
        let network = reconcile::network_ref_of(&state.db, &access.network).await?;
        let refusal = state
            .provisioner
            .founder_removal_refusal(&network, &leaving.organisation)
            .await
            .map_err(|e| ApiError::unavailable("provisioner_unavailable", e.to_string()))?;
        if let Some((code, message)) = refusal {
            return Err(ApiError::conflict(code, message));
        }
    }
    let (txn, tally) = record_approvals(
        &state,
        &scope,
        &access,
        &leaving,
        Decision::Removal,
        request.as_members.as_deref(),
        "consortium.removal_approve",
    )
    .await?;
    let mut removed_network = None;
    if tally.approvals >= tally.threshold {
        removed_network = remove(&state, &txn, &scope, id, &leaving).await?;
    }
    let (member, network_generation) =
        conclude_approval(&state, &scope, txn, member_id, removed_network).await?;
    Ok(Json(RemovalOutcome {
        member,
        approvals: tally.approvals,
        threshold: tally.threshold,
        network_generation,
    }))
}

/// Marks `leaving` `Removed` and writes the network's spec without it; `None` when a
/// concurrent approval got there first.
async fn remove(
    state: &AppState,
    txn: &impl ConnectionTrait,
    scope: &Scope,
    id: Uuid,
    leaving: &consortium_member::Model,
) -> ApiResult<Option<network::Model>> {
    let now = Utc::now();
    let demoted = consortium_member::Entity::update_many()
        .col_expr(
            consortium_member::Column::State,
            Expr::value(MemberState::Removed.as_str()),
        )
        .col_expr(consortium_member::Column::UpdatedAt, Expr::value(now))
        .filter(consortium_member::Column::Id.eq(leaving.id))
        .filter(consortium_member::Column::State.eq(MemberState::Admitted.as_str()))
        .exec(txn)
        .await?;
    if demoted.rows_affected != 1 {
        return Ok(None);
    }
    let network_row = network::Entity::find_by_id(id)
        .one(txn)
        .await?
        .ok_or_else(|| ApiError::not_found("network"))?;
    let spec: NetworkSpec = serde_json::from_value(network_row.spec.clone())
        .map_err(|err| ApiError::internal(format!("network {id} spec: {err}")))?;
    let next = spec
        .without_member(&leaving.organisation)
        .map_err(ApiError::validation)?;
    let owner_tenant = TenantId::trusted(network_row.tenant_id);
    let updated = store::update_spec(txn, owner_tenant, &network_row, &next)
        .await?
        .ok_or_else(|| {
            ApiError::conflict(
                "concurrent_update",
                "the network changed during the removal; approve again",
            )
        })?;
    crate::billing::ledger::record(txn, &state.billing, &updated, &next).await?;
    audit::record(
        txn,
        owner_tenant,
        &scope.actor(),
        "consortium.remove",
        Some(format!("member:{}", leaving.id)),
        serde_json::json!({
            "organisation": leaving.organisation,
            "network_generation": updated.generation,
        }),
    )
    .await?;
    Ok(Some(updated))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removal_needs_others_to_reach_the_threshold() {
        assert_eq!(removal_refusal(1).map(|r| r.0), Some("last_member"));
        assert_eq!(removal_refusal(2).map(|r| r.0), Some("below_quorum"));
        assert_eq!(removal_refusal(3).map(|r| r.0), Some("below_quorum"));
        for admitted in 4..64 {
            assert_eq!(removal_refusal(admitted), None, "{admitted}");
        }
    }
}
