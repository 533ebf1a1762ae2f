//! Consortium membership: founding members, invitations with expiring tokens,
//! acceptance with a custodied or brought-your-own organisation key, and admission by
//! the approval of a threshold of admitted members. Every step is in the audit log of
//! the tenants involved.
//!
//! # The one cross-tenant relation
//!
//! A consortium network belongs to the tenant that created it, yet other tenants take
//! part in it. That relation is checked in exactly one function, [`access`]: a tenant
//! sees a consortium's membership if it owns the network or controls one of its
//! members; any other tenant gets the same 404 as for an id that does not exist. No
//! other network data (spec, status) is shown to member tenants.

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use chrono::{DateTime, Duration, Utc};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseTransaction, DbErr, EntityTrait,
    PaginatorTrait, QueryFilter, QueryOrder, Set, TransactionTrait,
};
use serde::{Deserialize, Serialize};
use trellis_console_entity::{consortium_invitation, consortium_member, network, tenant};
use utoipa::ToSchema;
use uuid::Uuid;

use self::approvals::Decision;
use crate::app::AppState;
use crate::audit;
use crate::auth::Role;
use crate::auth::secret;
use crate::custody::{self, MasterKey};
use crate::error::{ApiError, ApiResult, FieldError, Json, Path};
use crate::networks::spec::{MAX_NODES_PER_MEMBER, MemberSpec, NetworkMode, NetworkSpec};
use crate::networks::{NetworkPhase, reconcile, store};
use crate::tenancy::{Scope, TenantId};

pub mod approvals;
pub mod invitations;
pub mod proposal;
pub mod removal;

pub const INVITATION_PREFIX: &str = "tri_";
pub const DEFAULT_INVITATION_HOURS: u32 = 72;
pub const MAX_INVITATION_HOURS: u32 = 168;

/// Approvals needed to admit a member when `admitted` members exist: more than two
/// thirds, the same supermajority the chain's BFT governance needs.
pub fn approval_threshold(admitted: u64) -> u64 {
    admitted * 2 / 3 + 1
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum MemberState {
    Invited,
    Proposed,
    Admitted,
    Rejected,
    Removed,
}

impl MemberState {
    pub fn as_str(self) -> &'static str {
        match self {
            MemberState::Invited => "Invited",
            MemberState::Proposed => "Proposed",
            MemberState::Admitted => "Admitted",
            MemberState::Rejected => "Rejected",
            MemberState::Removed => "Removed",
        }
    }

    pub fn parse(text: &str) -> Option<MemberState> {
        [
            MemberState::Invited,
            MemberState::Proposed,
            MemberState::Admitted,
            MemberState::Rejected,
            MemberState::Removed,
        ]
        .into_iter()
        .find(|state| state.as_str() == text)
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct Member {
    pub id: Uuid,
    pub organisation: String,
    pub nodes: i32,
    pub state: MemberState,
    /// `custodied` or `external`; none while only invited.
    pub key_custody: Option<String>,
    pub admin_public_key: Option<String>,
    /// Whether the caller's tenant controls this member.
    pub controlled_by_caller: bool,
    /// Approvals of this member's admission so far.
    pub approvals: u64,
    /// Approvals of this member's removal so far (0: none proposed).
    pub removal_approvals: u64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct MemberList {
    pub network_id: Uuid,
    pub admitted: u64,
    /// Approvals the next admission needs.
    pub threshold: u64,
    pub items: Vec<Member>,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateInvitationRequest {
    /// The invited organisation's name, unique in the consortium.
    pub organisation: String,
    /// Validator nodes the organisation will run. Default 1.
    pub nodes: Option<u32>,
    /// Hours until the invitation expires: 1..=168, default 72.
    pub expires_in_hours: Option<u32>,
    /// The only tenant that may accept it (its id: `tenant.id` of its `GET /v1/me`);
    /// that tenant then sees it among the invitations it received. Without it, any
    /// tenant holding the token may accept.
    pub tenant_id: Option<Uuid>,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct CreatedInvitation {
    pub invitation_id: Uuid,
    pub member: Member,
    pub expires_at: DateTime<Utc>,
    /// Give this to the invited organisation; shown only once.
    pub token: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AcceptInvitationRequest {
    pub token: String,
    /// Bring your own organisation key (hex Ed25519 public key); without it the
    /// console generates one and keeps it sealed under its master key.
    pub admin_public_key: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApproveRequest {
    /// The admitted members (controlled by the caller) approving; default: all of them.
    pub as_members: Option<Vec<Uuid>>,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct ApprovalOutcome {
    pub member: Member,
    pub approvals: u64,
    pub threshold: u64,
    /// The network generation that carries the admitted member, once admitted.
    pub network_generation: Option<i64>,
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/networks/{id}/members", get(list_members))
        .route(
            "/v1/networks/{id}/invitations",
            post(invite).get(invitations::list_sent),
        )
        .route(
            "/v1/networks/{id}/invitations/{invitation_id}",
            axum::routing::delete(invitations::revoke),
        )
        .route(
            "/v1/consortium/invitations/received",
            get(invitations::list_received),
        )
        .route(
            "/v1/networks/{id}/members/{member_id}/approvals",
            post(approve),
        )
        .route("/v1/consortium/invitations/accept", post(accept))
        .route(
            "/v1/networks/{id}/members/{member_id}/rejection",
            post(reject),
        )
        .route(
            "/v1/networks/{id}/members/{member_id}/proposal",
            get(proposal::get_proposal),
        )
        .route(
            "/v1/networks/{id}/members/{member_id}/proposal/approvals",
            post(proposal::post_approval),
        )
        .route(
            "/v1/networks/{id}/members/{member_id}/removal",
            post(removal::approve_removal),
        )
}

/// A founding member prepared before its network row exists.
pub(crate) struct Founder {
    id: Uuid,
    spec_index: usize,
    custody: &'static str,
    sealed_private_key: Option<String>,
}

/// Gives every founding member without its own key a custodied one, writing the public
/// keys into the spec. Brought-your-own keys must be real Ed25519 points.
pub(crate) fn prepare_founders(
    spec: &mut NetworkSpec,
    master: &MasterKey,
) -> ApiResult<Vec<Founder>> {
    if spec.mode != NetworkMode::Consortium {
        return Ok(Vec::new());
    }
    let mut founders = Vec::new();
    let mut errors = Vec::new();
    for (index, member) in spec.members.iter_mut().enumerate() {
        let id = Uuid::now_v7();
        match &member.admin_public_key {
            Some(key) => {
                if custody::parse_public_key(key).is_none() {
                    errors.push(FieldError::new(
                        format!("members[{index}].admin_public_key"),
                        "is not a valid Ed25519 public key",
                    ));
                }
                member.admin_public_key = Some(key.to_lowercase());
                founders.push(Founder {
                    id,
                    spec_index: index,
                    custody: "external",
                    sealed_private_key: None,
                });
            }
            None => {
                let key = custody::generate_custodied(master, id).map_err(ApiError::internal)?;
                member.admin_public_key = Some(key.public_hex);
                founders.push(Founder {
                    id,
                    spec_index: index,
                    custody: "custodied",
                    sealed_private_key: Some(key.sealed_private),
                });
            }
        }
    }
    if errors.is_empty() {
        Ok(founders)
    } else {
        Err(ApiError::validation(errors))
    }
}

/// Inserts the founding members, admitted and controlled by the creating tenant.
pub(crate) async fn insert_founders(
    conn: &impl ConnectionTrait,
    network: &network::Model,
    spec: &NetworkSpec,
    founders: Vec<Founder>,
) -> Result<(), DbErr> {
    let now = Utc::now();
    for founder in founders {
        let Some(member) = spec.members.get(founder.spec_index) else {
            continue;
        };
        consortium_member::ActiveModel {
            id: Set(founder.id),
            network_id: Set(network.id),
            network_tenant_id: Set(network.tenant_id),
            member_tenant_id: Set(Some(network.tenant_id)),
            organisation: Set(member.organisation.trim().to_string()),
            nodes: Set(i32::try_from(member.nodes).unwrap_or(i32::MAX)),
            state: Set(MemberState::Admitted.as_str().to_string()),
            key_custody: Set(Some(founder.custody.to_string())),
            admin_public_key: Set(member.admin_public_key.clone()),
            sealed_private_key: Set(founder.sealed_private_key),
            created_at: Set(now),
            updated_at: Set(now),
        }
        .insert(conn)
        .await?;
    }
    Ok(())
}

/// How the caller relates to a consortium network.
struct Access {
    network: network::Model,
    owner: bool,
}

impl Access {
    /// Records a decision on a member in the caller's audit log and, when the caller is
    /// not the network's owner, in the owner's log too: both tenants see every step.
    async fn audit(
        &self,
        conn: &impl ConnectionTrait,
        scope: &Scope,
        action: &str,
        member_id: Uuid,
        details: serde_json::Value,
    ) -> Result<(), DbErr> {
        let target = Some(format!("member:{member_id}"));
        audit::record(
            conn,
            scope.tenant(),
            &scope.actor(),
            action,
            target.clone(),
            details.clone(),
        )
        .await?;
        if !self.owner {
            let actor = format!("tenant:{}", scope.tenant().get());
            audit::record(
                conn,
                TenantId::trusted(self.network.tenant_id),
                &actor,
                action,
                target,
                details,
            )
            .await?;
        }
        Ok(())
    }
}

/// The single check of the cross-tenant consortium relation (see the module docs).
async fn access(conn: &impl ConnectionTrait, scope: &Scope, network_id: Uuid) -> ApiResult<Access> {
    let not_found = || ApiError::not_found("network");
    let network = network::Entity::find_by_id(network_id)
        .one(conn)
        .await?
        .ok_or_else(not_found)?;
    let tenant = scope.tenant().get();
    let owner = network.tenant_id == tenant;
    if !owner {
        let controls_a_member = consortium_member::Entity::find()
            .filter(consortium_member::Column::NetworkId.eq(network_id))
            .filter(consortium_member::Column::MemberTenantId.eq(tenant))
            .count(conn)
            .await?
            > 0;
        if !controls_a_member {
            return Err(not_found());
        }
    }
    if network.mode != NetworkMode::Consortium.as_str() {
        return Err(ApiError::conflict(
            "not_a_consortium",
            "this is a public network; membership applies to consortium networks",
        ));
    }
    Ok(Access { network, owner })
}

async fn admitted_count(conn: &impl ConnectionTrait, network_id: Uuid) -> Result<u64, DbErr> {
    consortium_member::Entity::find()
        .filter(consortium_member::Column::NetworkId.eq(network_id))
        .filter(consortium_member::Column::State.eq(MemberState::Admitted.as_str()))
        .count(conn)
        .await
}

/// Where the approvals of an admission or a removal stand after a request.
struct Tally {
    approvals: u64,
    threshold: u64,
}

/// Records the approvals of `member`'s admission or removal by the admitted members of
/// its network that the caller's tenant controls (all, or those `as_members` names; never
/// `member` itself) and audits them as `action`, in a transaction left open: at the
/// threshold the caller applies the decision in it, then [`conclude_approval`] commits.
async fn record_approvals(
    state: &AppState,
    scope: &Scope,
    access: &Access,
    member: &consortium_member::Model,
    decision: Decision,
    as_members: Option<&[Uuid]>,
    action: &str,
) -> ApiResult<(DatabaseTransaction, Tally)> {
    let mine: Vec<consortium_member::Model> = consortium_member::Entity::find()
        .filter(consortium_member::Column::NetworkId.eq(member.network_id))
        .filter(consortium_member::Column::MemberTenantId.eq(scope.tenant().get()))
        .filter(consortium_member::Column::State.eq(MemberState::Admitted.as_str()))
        .filter(consortium_member::Column::Id.ne(member.id))
        .all(&state.db)
        .await?;
    let approvers = approvals::chosen(&mine, as_members, decision)?;
    let txn = state.db.begin().await?;
    let added = approvals::record(
        &txn,
        decision,
        member.id,
        &approvers,
        &scope.actor(),
        Utc::now(),
    )
    .await?;
    let tally = Tally {
        approvals: approvals::count(&txn, decision, member.id).await?,
        threshold: approval_threshold(admitted_count(&txn, member.network_id).await?),
    };
    let details = serde_json::json!({
        "member_id": member.id,
        "organisation": member.organisation,
        "approved_as": added,
        "approvals": tally.approvals,
        "threshold": tally.threshold,
    });
    access
        .audit(&txn, scope, action, member.id, details)
        .await?;
    Ok((txn, tally))
}

/// Commits an approval, hands the network it changed (if the threshold was reached) to
/// the provisioner, and returns the member as it is now with that network generation.
async fn conclude_approval(
    state: &AppState,
    scope: &Scope,
    txn: DatabaseTransaction,
    member_id: Uuid,
    changed: Option<network::Model>,
) -> ApiResult<(Member, Option<i64>)> {
    txn.commit().await?;
    let network_generation = match changed {
        Some(row) => Some(reconcile::apply(state, row).await?.generation),
        None => None,
    };
    let member = consortium_member::Entity::find_by_id(member_id)
        .one(&state.db)
        .await?
        .ok_or_else(|| ApiError::not_found("member"))?;
    Ok((
        to_member(&state.db, scope, member).await?,
        network_generation,
    ))
}

async fn to_member(
    conn: &impl ConnectionTrait,
    scope: &Scope,
    row: consortium_member::Model,
) -> ApiResult<Member> {
    let approvals = approvals::count(conn, Decision::Admission, row.id).await?;
    let removal_approvals = approvals::count(conn, Decision::Removal, row.id).await?;
    Ok(Member {
        id: row.id,
        organisation: row.organisation,
        nodes: row.nodes,
        state: MemberState::parse(&row.state).unwrap_or(MemberState::Invited),
        key_custody: row.key_custody,
        admin_public_key: row.admin_public_key,
        controlled_by_caller: row.member_tenant_id == Some(scope.tenant().get()),
        approvals,
        removal_approvals,
        created_at: row.created_at,
        updated_at: row.updated_at,
    })
}

/// The consortium's members and their admission state.
#[utoipa::path(get, path = "/v1/networks/{id}/members", tag = "consortium", params(("id" = Uuid, Path)),
    responses((status = 200, body = MemberList), (status = "default", body = crate::error::Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn list_members(
    State(state): State<AppState>,
    scope: Scope,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<MemberList>> {
    let access = access(&state.db, &scope, id).await?;
    let rows = consortium_member::Entity::find()
        .filter(consortium_member::Column::NetworkId.eq(access.network.id))
        .order_by_asc(consortium_member::Column::Id)
        .all(&state.db)
        .await?;
    let mut items = Vec::with_capacity(rows.len());
    for row in rows {
        items.push(to_member(&state.db, &scope, row).await?);
    }
    let admitted = admitted_count(&state.db, id).await?;
    Ok(Json(MemberList {
        network_id: id,
        admitted,
        threshold: approval_threshold(admitted),
        items,
    }))
}

/// Invites an organisation: creates an `Invited` member and an expiring token for it.
#[utoipa::path(post, path = "/v1/networks/{id}/invitations", tag = "consortium", params(("id" = Uuid, Path)),
    request_body = CreateInvitationRequest,
    responses((status = 201, body = CreatedInvitation), (status = "default", body = crate::error::Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn invite(
    State(state): State<AppState>,
    scope: Scope,
    Path(id): Path<Uuid>,
    Json(request): Json<CreateInvitationRequest>,
) -> ApiResult<(StatusCode, Json<CreatedInvitation>)> {
    let access = access(&state.db, &scope, id).await?;
    if !access.owner {
        return Err(ApiError::forbidden(
            "only the tenant that owns the consortium network invites organisations",
        ));
    }
    scope.require(Role::Admin)?;
    if NetworkPhase::parse(&access.network.phase) == NetworkPhase::Deleting {
        return Err(ApiError::conflict(
            "network_deleting",
            "the network is being deleted",
        ));
    }
    let organisation = request.organisation.trim().to_string();
    let nodes = request.nodes.unwrap_or(1);
    let hours = request.expires_in_hours.unwrap_or(DEFAULT_INVITATION_HOURS);
    let mut errors = Vec::new();
    if organisation.is_empty() || organisation.len() > 100 {
        errors.push(FieldError::new(
            "organisation",
            "must be 1..=100 characters",
        ));
    }
    if !(1..=MAX_NODES_PER_MEMBER).contains(&nodes) {
        errors.push(FieldError::new(
            "nodes",
            format!("must be within 1..={MAX_NODES_PER_MEMBER}"),
        ));
    }
    if !(1..=MAX_INVITATION_HOURS).contains(&hours) {
        errors.push(FieldError::new(
            "expires_in_hours",
            format!("must be within 1..={MAX_INVITATION_HOURS}"),
        ));
    }
    if let Some(invited) = request.tenant_id {
        if invited == access.network.tenant_id {
            errors.push(FieldError::new(
                "tenant_id",
                "is the consortium's own tenant, which cannot accept its invitations",
            ));
        } else if tenant::Entity::find_by_id(invited)
            .one(&state.db)
            .await?
            .is_none()
        {
            errors.push(FieldError::new("tenant_id", "no tenant has this id"));
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::validation(errors));
    }
    let taken = consortium_member::Entity::find()
        .filter(consortium_member::Column::NetworkId.eq(id))
        .filter(consortium_member::Column::Organisation.eq(&organisation))
        .count(&state.db)
        .await?
        > 0;
    if taken {
        return Err(ApiError::conflict(
            "organisation_taken",
            format!("{organisation:?} is already a member or invited"),
        ));
    }
    let token = secret::generate(INVITATION_PREFIX);
    let now = Utc::now();
    let expires_at = now + Duration::hours(i64::from(hours));
    let txn = state.db.begin().await?;
    let member = consortium_member::ActiveModel {
        id: Set(Uuid::now_v7()),
        network_id: Set(id),
        network_tenant_id: Set(access.network.tenant_id),
        member_tenant_id: Set(None),
        organisation: Set(organisation.clone()),
        nodes: Set(i32::try_from(nodes).unwrap_or(i32::MAX)),
        state: Set(MemberState::Invited.as_str().to_string()),
        key_custody: Set(None),
        admin_public_key: Set(None),
        sealed_private_key: Set(None),
        created_at: Set(now),
        updated_at: Set(now),
    }
    .insert(&txn)
    .await?;
    let invitation = consortium_invitation::ActiveModel {
        id: Set(Uuid::now_v7()),
        network_id: Set(id),
        network_tenant_id: Set(access.network.tenant_id),
        member_id: Set(member.id),
        token_hash: Set(secret::digest(&token)),
        expires_at: Set(expires_at),
        accepted_at: Set(None),
        accepted_by_tenant_id: Set(None),
        created_by: Set(scope.actor()),
        created_at: Set(now),
        revoked_at: Set(None),
        invited_tenant_id: Set(request.tenant_id),
    }
    .insert(&txn)
    .await?;
    audit::record(
        &txn,
        scope.tenant(),
        &scope.actor(),
        "consortium.invite",
        Some(format!("network:{id}")),
        serde_json::json!({
            "organisation": organisation,
            "member_id": member.id,
            "invitation_id": invitation.id,
            "expires_at": expires_at,
        }),
    )
    .await?;
    txn.commit().await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedInvitation {
            invitation_id: invitation.id,
            member: to_member(&state.db, &scope, member).await?,
            expires_at,
            token,
        }),
    ))
}

/// Accepts an invitation for the caller's tenant, registering the organisation key.
/// The member becomes `Proposed` and awaits approval.
#[utoipa::path(post, path = "/v1/consortium/invitations/accept", tag = "consortium",
    request_body = AcceptInvitationRequest,
    responses((status = 200, body = Member), (status = "default", body = crate::error::Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn accept(
    State(state): State<AppState>,
    scope: Scope,
    Json(request): Json<AcceptInvitationRequest>,
) -> ApiResult<Json<Member>> {
    scope.require(Role::Admin)?;
    let invitation = consortium_invitation::Entity::find()
        .filter(consortium_invitation::Column::TokenHash.eq(secret::digest(&request.token)))
        .one(&state.db)
        .await?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "invitation_not_found",
                "no invitation has this token",
            )
        })?;
    let tenant = scope.tenant().get();
    if invitation
        .invited_tenant_id
        .is_some_and(|invited| invited != tenant)
    {
        return Err(ApiError::forbidden(
            "this invitation names another tenant as the only one that may accept it",
        ));
    }
    if invitation.accepted_at.is_some() {
        return Err(ApiError::conflict(
            "invitation_used",
            "this invitation was already accepted",
        ));
    }
    if invitation.revoked_at.is_some() {
        return Err(ApiError::new(
            StatusCode::GONE,
            "invitation_revoked",
            "the consortium revoked this invitation (or rejected its organisation); ask it \
             for a new one",
        ));
    }
    if invitation.expires_at <= Utc::now() {
        return Err(ApiError::new(
            StatusCode::GONE,
            "invitation_expired",
            "this invitation has expired; ask the consortium for a new one",
        ));
    }
    if invitation.network_tenant_id == tenant {
        return Err(ApiError::conflict(
            "own_consortium",
            "the consortium's own tenant cannot accept its invitations; another \
             organisation's tenant must",
        ));
    }
    let already = consortium_member::Entity::find()
        .filter(consortium_member::Column::NetworkId.eq(invitation.network_id))
        .filter(consortium_member::Column::MemberTenantId.eq(tenant))
        .count(&state.db)
        .await?
        > 0;
    if already {
        return Err(ApiError::conflict(
            "already_member",
            "this tenant already takes part in the consortium",
        ));
    }
    let (custody, public_key, sealed) = match &request.admin_public_key {
        Some(key) => {
            if custody::parse_public_key(key).is_none() {
                return Err(ApiError::validation(vec![FieldError::new(
                    "admin_public_key",
                    "must be a hex-encoded Ed25519 public key (64 hex digits, a valid point)",
                )]));
            }
            ("external", key.to_lowercase(), None)
        }
        None => {
            let key = custody::generate_custodied(&state.master_key, invitation.member_id)
                .map_err(ApiError::internal)?;
            ("custodied", key.public_hex, Some(key.sealed_private))
        }
    };
    let now = Utc::now();
    let txn = state.db.begin().await?;
    let claimed = consortium_invitation::Entity::update_many()
        .col_expr(consortium_invitation::Column::AcceptedAt, Expr::value(now))
        .col_expr(
            consortium_invitation::Column::AcceptedByTenantId,
            Expr::value(tenant),
        )
        .filter(consortium_invitation::Column::Id.eq(invitation.id))
        .filter(consortium_invitation::Column::AcceptedAt.is_null())
        .exec(&txn)
        .await?;
    if claimed.rows_affected != 1 {
        return Err(ApiError::conflict(
            "invitation_used",
            "this invitation was already accepted",
        ));
    }
    consortium_member::Entity::update_many()
        .col_expr(
            consortium_member::Column::MemberTenantId,
            Expr::value(tenant),
        )
        .col_expr(
            consortium_member::Column::State,
            Expr::value(MemberState::Proposed.as_str()),
        )
        .col_expr(consortium_member::Column::KeyCustody, Expr::value(custody))
        .col_expr(
            consortium_member::Column::AdminPublicKey,
            Expr::value(public_key.clone()),
        )
        .col_expr(
            consortium_member::Column::SealedPrivateKey,
            Expr::value(sealed),
        )
        .col_expr(consortium_member::Column::UpdatedAt, Expr::value(now))
        .filter(consortium_member::Column::Id.eq(invitation.member_id))
        .filter(consortium_member::Column::State.eq(MemberState::Invited.as_str()))
        .exec(&txn)
        .await?;
    let details = serde_json::json!({
        "network_id": invitation.network_id,
        "member_id": invitation.member_id,
        "key_custody": custody,
        "admin_public_key": public_key,
    });
    audit::record(
        &txn,
        scope.tenant(),
        &scope.actor(),
        "consortium.accept",
        Some(format!("network:{}", invitation.network_id)),
        details.clone(),
    )
    .await?;
    audit::record(
        &txn,
        TenantId::trusted(invitation.network_tenant_id),
        &format!("tenant:{tenant}"),
        "consortium.invitation_accepted",
        Some(format!("member:{}", invitation.member_id)),
        details,
    )
    .await?;
    let member = consortium_member::Entity::find_by_id(invitation.member_id)
        .one(&txn)
        .await?
        .ok_or_else(|| ApiError::not_found("member"))?;
    txn.commit().await?;
    Ok(Json(to_member(&state.db, &scope, member).await?))
}

/// Approves a `Proposed` member's admission on behalf of admitted members the caller
/// controls. When the approvals reach the threshold the member is admitted and the
/// network's desired state gains the member (written through the provisioner).
#[utoipa::path(post, path = "/v1/networks/{id}/members/{member_id}/approvals", tag = "consortium",
    params(("id" = Uuid, Path), ("member_id" = Uuid, Path)),
    request_body = ApproveRequest,
    responses((status = 200, body = ApprovalOutcome), (status = "default", body = crate::error::Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn approve(
    State(state): State<AppState>,
    scope: Scope,
    Path((id, member_id)): Path<(Uuid, Uuid)>,
    Json(request): Json<ApproveRequest>,
) -> ApiResult<Json<ApprovalOutcome>> {
    let access = access(&state.db, &scope, id).await?;
    scope.require(Role::Admin)?;
    let candidate = consortium_member::Entity::find_by_id(member_id)
        .filter(consortium_member::Column::NetworkId.eq(id))
        .one(&state.db)
        .await?
        .ok_or_else(|| ApiError::not_found("member"))?;
    if MemberState::parse(&candidate.state) != Some(MemberState::Proposed) {
        return Err(ApiError::conflict(
            "member_not_proposed",
            format!(
                "only a Proposed member can be approved; this one is {}",
                candidate.state
            ),
        ));
    }
    let (txn, tally) = record_approvals(
        &state,
        &scope,
        &access,
        &candidate,
        Decision::Admission,
        request.as_members.as_deref(),
        "consortium.approve",
    )
    .await?;
    let mut admitted_network = None;
    if tally.approvals >= tally.threshold {
        let promoted = consortium_member::Entity::update_many()
            .col_expr(
                consortium_member::Column::State,
                Expr::value(MemberState::Admitted.as_str()),
            )
            .col_expr(
                consortium_member::Column::UpdatedAt,
                Expr::value(Utc::now()),
            )
            .filter(consortium_member::Column::Id.eq(member_id))
            .filter(consortium_member::Column::State.eq(MemberState::Proposed.as_str()))
            .exec(&txn)
            .await?;
        if promoted.rows_affected == 1 {
            let network_row = network::Entity::find_by_id(id)
                .one(&txn)
                .await?
                .ok_or_else(|| ApiError::not_found("network"))?;
            let spec: NetworkSpec = serde_json::from_value(network_row.spec.clone())
                .map_err(|err| ApiError::internal(format!("network {id} spec: {err}")))?;
            let next = spec
                .with_member(MemberSpec {
                    organisation: candidate.organisation.clone(),
                    nodes: u32::try_from(candidate.nodes).unwrap_or(1),
                    admin_public_key: candidate.admin_public_key.clone(),
                })
                .map_err(ApiError::validation)?;
            let owner_tenant = TenantId::trusted(network_row.tenant_id);
            let updated = store::update_spec(&txn, owner_tenant, &network_row, &next)
                .await?
                .ok_or_else(|| {
                    ApiError::conflict(
                        "concurrent_update",
                        "the network changed during the admission; approve again",
                    )
                })?;
            crate::billing::ledger::record(&txn, &state.billing, &updated, &next).await?;
            audit::record(
                &txn,
                owner_tenant,
                &scope.actor(),
                "consortium.admit",
                Some(format!("member:{member_id}")),
                serde_json::json!({
                    "organisation": candidate.organisation,
                    "network_generation": updated.generation,
                }),
            )
            .await?;
            admitted_network = Some(updated);
        }
    }
    let (member, network_generation) =
        conclude_approval(&state, &scope, txn, member_id, admitted_network).await?;
    Ok(Json(ApprovalOutcome {
        member,
        approvals: tally.approvals,
        threshold: tally.threshold,
        network_generation,
    }))
}

/// Rejects an `Invited` or `Proposed` member (withdrawing its invitation). Any admin of
/// the owner tenant or of a tenant controlling an admitted member may: admission needs a
/// supermajority, so one admitted member's objection is enough to stop it here.
#[utoipa::path(post, path = "/v1/networks/{id}/members/{member_id}/rejection", tag = "consortium",
    params(("id" = Uuid, Path), ("member_id" = Uuid, Path)),
    responses((status = 200, body = Member), (status = "default", body = crate::error::Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn reject(
    State(state): State<AppState>,
    scope: Scope,
    Path((id, member_id)): Path<(Uuid, Uuid)>,
) -> ApiResult<Json<Member>> {
    let access = access(&state.db, &scope, id).await?;
    scope.require(Role::Admin)?;
    let tenant = scope.tenant().get();
    if !access.owner {
        let admitted_here = consortium_member::Entity::find()
            .filter(consortium_member::Column::NetworkId.eq(id))
            .filter(consortium_member::Column::MemberTenantId.eq(tenant))
            .filter(consortium_member::Column::State.eq(MemberState::Admitted.as_str()))
            .count(&state.db)
            .await?
            > 0;
        if !admitted_here {
            return Err(ApiError::forbidden(
                "only the owner or an admitted member can reject an admission",
            ));
        }
    }
    let candidate = consortium_member::Entity::find_by_id(member_id)
        .filter(consortium_member::Column::NetworkId.eq(id))
        .one(&state.db)
        .await?
        .ok_or_else(|| ApiError::not_found("member"))?;
    let now = Utc::now();
    let txn = state.db.begin().await?;
    let changed = consortium_member::Entity::update_many()
        .col_expr(
            consortium_member::Column::State,
            Expr::value(MemberState::Rejected.as_str()),
        )
        .col_expr(consortium_member::Column::UpdatedAt, Expr::value(now))
        .filter(consortium_member::Column::Id.eq(member_id))
        .filter(consortium_member::Column::State.is_in([
            MemberState::Invited.as_str(),
            MemberState::Proposed.as_str(),
        ]))
        .exec(&txn)
        .await?;
    if changed.rows_affected != 1 {
        return Err(ApiError::conflict(
            "member_not_pending",
            format!(
                "only an Invited or Proposed member can be rejected; this one is {}",
                candidate.state
            ),
        ));
    }
    // An invitation not yet accepted can no longer be.
    consortium_invitation::Entity::update_many()
        .col_expr(consortium_invitation::Column::RevokedAt, Expr::value(now))
        .filter(consortium_invitation::Column::MemberId.eq(member_id))
        .filter(consortium_invitation::Column::AcceptedAt.is_null())
        .filter(consortium_invitation::Column::RevokedAt.is_null())
        .exec(&txn)
        .await?;
    let details = serde_json::json!({
        "member_id": member_id,
        "organisation": candidate.organisation,
        "previous_state": candidate.state,
    });
    access
        .audit(&txn, &scope, "consortium.reject", member_id, details)
        .await?;
    let row = consortium_member::Entity::find_by_id(member_id)
        .one(&txn)
        .await?
        .ok_or_else(|| ApiError::not_found("member"))?;
    txn.commit().await?;
    Ok(Json(to_member(&state.db, &scope, row).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threshold_is_a_bft_supermajority() {
        let table: Vec<u64> = (1..=7).map(approval_threshold).collect();
        assert_eq!(table, [1, 2, 3, 3, 4, 5, 5]);
        for admitted in 1..100u64 {
            let threshold = approval_threshold(admitted);
            assert!(threshold * 3 > admitted * 2, "{admitted}");
            assert!(threshold <= admitted);
        }
    }

    #[test]
    fn member_states_round_trip() {
        for state in ["Invited", "Proposed", "Admitted", "Rejected", "Removed"] {
            assert_eq!(MemberState::parse(state).unwrap().as_str(), state);
        }
        assert_eq!(MemberState::parse("admitted"), None);
    }
}
