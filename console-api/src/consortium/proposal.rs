//! The chain governance proposal of a member's admission, and approvals of it by
//! organisations that keep their own keys.
//!
//! Once the consortium admitted a member (its approvals reached the threshold), the chain
//! must admit it too: the provisioner publishes the governance proposal that does it
//! (`kube`: the operator's `ChainMember` status). Custodied members' approvals are made
//! by the console when it hands the transaction over; an organisation that brought its
//! own public key signs the proposal offline (`trellis-node governance sign`, or
//! `trellis consortium approve`) and posts the approval here. It is verified against the
//! organisation's registered key and the current proposal before it is kept, so a wrong
//! key or a stale proposal gets a clear error at once, not a refusal on chain later.

use axum::extract::State;
use axum::http::StatusCode;
use chrono::Utc;
use sea_orm::{ActiveModelTrait, ColumnTrait, EntityTrait, QueryFilter, Set, TransactionTrait};
use serde::{Deserialize, Serialize};
use trellis_console_entity::{consortium_member, governance_approval};
use trellis_node_types::{Approval, Proposal, to_hex};
use utoipa::ToSchema;
use uuid::Uuid;

use super::{MemberState, access};
use crate::app::AppState;
use crate::auth::Role;
use crate::error::{ApiError, ApiResult, FieldError, Json, Path};
use crate::networks::reconcile;
use crate::provisioner::{GovernanceProposal, MemberChainState};
use crate::tenancy::Scope;

/// An admitted member and whether the console holds its approval of the proposal.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct ProposalApprover {
    pub member_id: Uuid,
    pub organisation: String,
    pub admin_public_key: Option<String>,
    /// `custodied` (the console signs when it hands the transaction over) or `external`
    /// (the organisation posts its own approval).
    pub key_custody: Option<String>,
    /// Whether its approval of the current proposal is held.
    pub approved: bool,
    /// Whether the caller's tenant controls it.
    pub controlled_by_caller: bool,
}

/// A member's admission as the chain sees it, and the proposal to approve.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct MemberProposal {
    pub member_id: Uuid,
    pub organisation: String,
    pub state: MemberState,
    /// Where the member stands on chain (`null` when the provisioner does not track it).
    pub chain: Option<MemberChainState>,
    /// The admitted members who may approve, and what the console holds of theirs.
    pub approvers: Vec<ProposalApprover>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PostApprovalRequest {
    /// Hex approval as `trellis-node governance sign` prints it: the admin public key
    /// (32 bytes) followed by the ed25519 signature (64 bytes).
    pub approval: String,
    /// Hex SHA-256 of the proposal that was signed (`proposal_hash` of the proposal
    /// fetched); when given, a proposal that is no longer current is reported as stale.
    pub proposal_hash: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct PostedApproval {
    pub proposal_hash: String,
    pub sequence: u64,
    /// The member whose organisation key signed.
    pub approved_as: Uuid,
    pub organisation: String,
}

async fn context(
    state: &AppState,
    scope: &Scope,
    id: Uuid,
    member_id: Uuid,
) -> ApiResult<(
    super::Access,
    consortium_member::Model,
    Option<MemberChainState>,
)> {
    let access = access(&state.db, scope, id).await?;
    let candidate = consortium_member::Entity::find_by_id(member_id)
        .filter(consortium_member::Column::NetworkId.eq(id))
        .one(&state.db)
        .await?
        .ok_or_else(|| ApiError::not_found("member"))?;
    let network = reconcile::network_ref_of(&state.db, &access.network).await?;
    let chain = state
        .provisioner
        .member_governance(&network, &candidate.organisation)
        .await
        .map_err(|e| ApiError::unavailable("provisioner_unavailable", e.to_string()))?;
    Ok((access, candidate, chain))
}

/// Approvals the console holds for `proposal_hash`, by approving member.
async fn held(state: &AppState, proposal_hash: &str) -> ApiResult<Vec<Uuid>> {
    Ok(governance_approval::Entity::find()
        .filter(governance_approval::Column::ProposalHash.eq(proposal_hash))
        .all(&state.db)
        .await?
        .into_iter()
        .map(|a| a.approver_member_id)
        .collect())
}

/// The member's chain admission: its step, the governance proposal waiting for
/// approvals (sign its `proposal` hex offline) and who has approved it.
#[utoipa::path(get, path = "/v1/networks/{id}/members/{member_id}/proposal", tag = "consortium",
    params(("id" = Uuid, Path), ("member_id" = Uuid, Path)),
    responses((status = 200, body = MemberProposal), (status = "default", body = crate::error::Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn get_proposal(
    State(state): State<AppState>,
    scope: Scope,
    Path((id, member_id)): Path<(Uuid, Uuid)>,
) -> ApiResult<Json<MemberProposal>> {
    let (_access, candidate, chain) = context(&state, &scope, id, member_id).await?;
    let proposal = chain.as_ref().and_then(|c| c.proposal.as_ref());
    let holding = match proposal {
        Some(p) => held(&state, &p.proposal_hash).await?,
        None => Vec::new(),
    };
    let admitted = consortium_member::Entity::find()
        .filter(consortium_member::Column::NetworkId.eq(id))
        .filter(consortium_member::Column::State.eq(MemberState::Admitted.as_str()))
        .all(&state.db)
        .await?;
    let tenant = scope.tenant().get();
    let approvers = admitted
        .into_iter()
        .filter(|m| m.id != member_id)
        .map(|m| ProposalApprover {
            approved: proposal.is_some()
                && (m.sealed_private_key.is_some() || holding.contains(&m.id)),
            controlled_by_caller: m.member_tenant_id == Some(tenant),
            member_id: m.id,
            organisation: m.organisation,
            admin_public_key: m.admin_public_key,
            key_custody: m.key_custody,
        })
        .collect();
    Ok(Json(MemberProposal {
        member_id,
        organisation: candidate.organisation,
        state: MemberState::parse(&candidate.state).unwrap_or(MemberState::Invited),
        chain,
        approvers,
    }))
}

/// Posts an organisation's own approval (signed offline with its key) of the member's
/// current governance proposal.
#[utoipa::path(post, path = "/v1/networks/{id}/members/{member_id}/proposal/approvals", tag = "consortium",
    params(("id" = Uuid, Path), ("member_id" = Uuid, Path)),
    request_body = PostApprovalRequest,
    responses((status = 201, body = PostedApproval), (status = "default", body = crate::error::Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn post_approval(
    State(state): State<AppState>,
    scope: Scope,
    Path((id, member_id)): Path<(Uuid, Uuid)>,
    Json(request): Json<PostApprovalRequest>,
) -> ApiResult<(StatusCode, Json<PostedApproval>)> {
    // Another tenant's network answers 404 before anything about the body is said.
    let (access, candidate, chain) = context(&state, &scope, id, member_id).await?;
    scope.require(Role::Admin)?;
    let Some(current) = chain.and_then(|c| c.proposal) else {
        return Err(ApiError::conflict(
            "no_proposal",
            format!(
                "no governance proposal of {} is waiting for approvals (the member is {}); \
                 fetch GET /v1/networks/{id}/members/{member_id}/proposal",
                candidate.organisation, candidate.state
            ),
        ));
    };
    let approval = Approval::from_hex(&request.approval).map_err(|e| {
        ApiError::validation(vec![FieldError::new(
            "approval",
            format!(
                "not an approval (96 bytes hex: admin key then signature, as `trellis-node \
                 governance sign` prints): {e}"
            ),
        )])
    })?;
    if let Some(signed) = &request.proposal_hash
        && !signed.eq_ignore_ascii_case(&current.proposal_hash)
    {
        return Err(stale(&current, signed));
    }
    let key = to_hex(approval.admin_key.as_ref());
    let tenant = scope.tenant().get();
    let mine = consortium_member::Entity::find()
        .filter(consortium_member::Column::NetworkId.eq(id))
        .filter(consortium_member::Column::MemberTenantId.eq(tenant))
        .filter(consortium_member::Column::State.eq(MemberState::Admitted.as_str()))
        .all(&state.db)
        .await?;
    let Some(approver) = mine.iter().find(|m| {
        m.admin_public_key
            .as_deref()
            .is_some_and(|k| k.eq_ignore_ascii_case(&key))
    }) else {
        let yours: Vec<String> = mine
            .iter()
            .map(|m| {
                format!(
                    "{} ({})",
                    m.organisation,
                    m.admin_public_key.as_deref().unwrap_or("no key")
                )
            })
            .collect();
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "wrong_key",
            format!(
                "the approval is signed by admin key {key}, which is not the registered key of \
                 an admitted member your organisation controls in this network{}",
                if yours.is_empty() {
                    " (it controls none)".to_owned()
                } else {
                    format!(" (yours: {})", yours.join(", "))
                }
            ),
        ));
    };
    let proposal = Proposal::from_hex(&current.proposal)
        .map_err(|e| ApiError::internal(format!("published proposal: {e}")))?;
    if !proposal.verify(&approval) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_signature",
            format!(
                "the signature does not verify for the current proposal {} (sequence {}) with \
                 key {key}: sign exactly the proposal hex of GET \
                 /v1/networks/{id}/members/{member_id}/proposal (an approval of an earlier \
                 proposal is stale)",
                current.proposal_hash, current.sequence
            ),
        ));
    }
    let txn = state.db.begin().await?;
    let exists = governance_approval::Entity::find()
        .filter(governance_approval::Column::ProposalHash.eq(&current.proposal_hash))
        .filter(governance_approval::Column::ApproverMemberId.eq(approver.id))
        .one(&txn)
        .await?
        .is_some();
    if exists {
        return Err(ApiError::conflict(
            "already_approved",
            format!(
                "{} has already approved proposal {}",
                approver.organisation, current.proposal_hash
            ),
        ));
    }
    governance_approval::ActiveModel {
        id: Set(Uuid::now_v7()),
        network_id: Set(id),
        member_id: Set(member_id),
        approver_member_id: Set(approver.id),
        proposal_hash: Set(current.proposal_hash.clone()),
        approval: Set(approval.to_hex()),
        approved_by: Set(scope.actor()),
        created_at: Set(Utc::now()),
    }
    .insert(&txn)
    .await?;
    access
        .audit(
            &txn,
            &scope,
            "consortium.governance_approve",
            member_id,
            serde_json::json!({
                "organisation": candidate.organisation,
                "approved_as": approver.organisation,
                "admin_public_key": key,
                "action": current.action,
                "proposal_hash": current.proposal_hash,
                "sequence": current.sequence,
            }),
        )
        .await?;
    txn.commit().await?;
    Ok((
        StatusCode::CREATED,
        Json(PostedApproval {
            proposal_hash: current.proposal_hash,
            sequence: current.sequence,
            approved_as: approver.id,
            organisation: approver.organisation.clone(),
        }),
    ))
}

fn stale(current: &GovernanceProposal, signed: &str) -> ApiError {
    ApiError::conflict(
        "stale_proposal",
        format!(
            "proposal {signed} is no longer the one waiting for approvals; the current one is \
             {} ({} {}, sequence {}): fetch it and sign that",
            current.proposal_hash, current.action, current.node, current.sequence
        ),
    )
}
