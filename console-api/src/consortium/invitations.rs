//! Listing consortium invitations — those a network's owner sent, and those a tenant
//! received — with their status, and revoking a pending one.
//!
//! An invitation is bound to a tenant when it is accepted, or from the start when the
//! inviter named the tenant (`tenant_id`): "received" lists the invitations bound to the
//! caller's tenant either way. Token hashes are never shown; the token itself was shown
//! once, to the inviter.

use axum::extract::State;
use chrono::{DateTime, Utc};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ColumnTrait, Condition, EntityTrait, QueryFilter, QueryOrder, QuerySelect, TransactionTrait,
};
use serde::{Deserialize, Serialize};
use trellis_console_entity::{consortium_invitation, consortium_member};
use utoipa::ToSchema;
use uuid::Uuid;

use super::{MemberState, access};
use crate::app::AppState;
use crate::auth::Role;
use crate::error::{ApiError, ApiResult, Json, Path, Query};
use crate::pagination::{self, PageQuery};
use crate::tenancy::Scope;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum InvitationStatus {
    /// Not accepted, revoked or expired: its token can still be accepted.
    Pending,
    Accepted,
    Expired,
    Revoked,
}

impl InvitationStatus {
    /// Acceptance and revocation are final; expiry applies only to what is left.
    pub fn of(row: &consortium_invitation::Model, now: DateTime<Utc>) -> Self {
        if row.accepted_at.is_some() {
            InvitationStatus::Accepted
        } else if row.revoked_at.is_some() {
            InvitationStatus::Revoked
        } else if row.expires_at <= now {
            InvitationStatus::Expired
        } else {
            InvitationStatus::Pending
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct Invitation {
    pub id: Uuid,
    pub network_id: Uuid,
    pub member_id: Uuid,
    /// The invited organisation's name.
    pub organisation: String,
    pub status: InvitationStatus,
    /// The tenant that may accept it, when the inviter named one.
    pub invited_tenant_id: Option<Uuid>,
    pub expires_at: DateTime<Utc>,
    pub accepted_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct InvitationPage {
    pub items: Vec<Invitation>,
    pub next_cursor: Option<String>,
}

/// One page of invitations matching `condition`, oldest first, with their organisations.
async fn page(
    state: &AppState,
    condition: Condition,
    query: &PageQuery,
) -> ApiResult<InvitationPage> {
    let page = query.parse()?;
    let mut select = consortium_invitation::Entity::find()
        .filter(condition)
        .order_by_asc(consortium_invitation::Column::Id)
        .limit(page.limit + 1);
    if let Some(after) = page.after {
        select = select.filter(consortium_invitation::Column::Id.gt(after));
    }
    let rows = select.all(&state.db).await?;
    let (rows, next_cursor) = pagination::finish(rows, page.limit, |row| row.id);
    let members = consortium_member::Entity::find()
        .filter(consortium_member::Column::Id.is_in(rows.iter().map(|r| r.member_id)))
        .all(&state.db)
        .await?;
    let now = Utc::now();
    let items = rows
        .into_iter()
        .map(|row| Invitation {
            organisation: members
                .iter()
                .find(|m| m.id == row.member_id)
                .map(|m| m.organisation.clone())
                .unwrap_or_default(),
            status: InvitationStatus::of(&row, now),
            id: row.id,
            network_id: row.network_id,
            member_id: row.member_id,
            invited_tenant_id: row.invited_tenant_id,
            expires_at: row.expires_at,
            accepted_at: row.accepted_at,
            revoked_at: row.revoked_at,
            created_at: row.created_at,
        })
        .collect();
    Ok(InvitationPage { items, next_cursor })
}

/// The invitations the network's owner sent (keyset pagination, oldest first).
#[utoipa::path(get, path = "/v1/networks/{id}/invitations", tag = "consortium",
    params(("id" = Uuid, Path), PageQuery),
    responses((status = 200, body = InvitationPage), (status = "default", body = crate::error::Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn list_sent(
    State(state): State<AppState>,
    scope: Scope,
    Path(id): Path<Uuid>,
    Query(query): Query<PageQuery>,
) -> ApiResult<Json<InvitationPage>> {
    let access = access(&state.db, &scope, id).await?;
    if !access.owner {
        return Err(ApiError::forbidden(
            "only the tenant that owns the consortium network sees its invitations",
        ));
    }
    let condition = Condition::all()
        .add(consortium_invitation::Column::NetworkId.eq(id))
        .add(consortium_invitation::Column::NetworkTenantId.eq(scope.tenant().get()));
    Ok(Json(page(&state, condition, &query).await?))
}

/// The invitations bound to the caller's tenant: those naming it and those it
/// accepted, across consortia (keyset pagination, oldest first).
#[utoipa::path(get, path = "/v1/consortium/invitations/received", tag = "consortium",
    params(PageQuery),
    responses((status = 200, body = InvitationPage), (status = "default", body = crate::error::Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn list_received(
    State(state): State<AppState>,
    scope: Scope,
    Query(query): Query<PageQuery>,
) -> ApiResult<Json<InvitationPage>> {
    let tenant = scope.tenant().get();
    let condition = Condition::any()
        .add(consortium_invitation::Column::InvitedTenantId.eq(tenant))
        .add(consortium_invitation::Column::AcceptedByTenantId.eq(tenant));
    Ok(Json(page(&state, condition, &query).await?))
}

/// Revokes a pending invitation: its token stops working and its `Invited` member is
/// `Rejected` (as a rejection would).
#[utoipa::path(delete, path = "/v1/networks/{id}/invitations/{invitation_id}", tag = "consortium",
    params(("id" = Uuid, Path), ("invitation_id" = Uuid, Path)),
    responses((status = 200, body = Invitation), (status = "default", body = crate::error::Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn revoke(
    State(state): State<AppState>,
    scope: Scope,
    Path((id, invitation_id)): Path<(Uuid, Uuid)>,
) -> ApiResult<Json<Invitation>> {
    let access = access(&state.db, &scope, id).await?;
    let not_found = || ApiError::not_found("invitation");
    if !access.owner {
        return Err(not_found());
    }
    scope.require(Role::Admin)?;
    let row = consortium_invitation::Entity::find_by_id(invitation_id)
        .filter(consortium_invitation::Column::NetworkId.eq(id))
        .one(&state.db)
        .await?
        .ok_or_else(not_found)?;
    let now = Utc::now();
    let status = InvitationStatus::of(&row, now);
    if status != InvitationStatus::Pending {
        return Err(ApiError::conflict(
            "invitation_not_pending",
            format!(
                "only a pending invitation can be revoked; this one is {}",
                serde_json::to_value(status)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default()
            ),
        ));
    }
    let txn = state.db.begin().await?;
    let revoked = consortium_invitation::Entity::update_many()
        .col_expr(consortium_invitation::Column::RevokedAt, Expr::value(now))
        .filter(consortium_invitation::Column::Id.eq(invitation_id))
        .filter(consortium_invitation::Column::AcceptedAt.is_null())
        .filter(consortium_invitation::Column::RevokedAt.is_null())
        .exec(&txn)
        .await?;
    if revoked.rows_affected != 1 {
        return Err(ApiError::conflict(
            "invitation_not_pending",
            "the invitation was accepted or revoked meanwhile",
        ));
    }
    consortium_member::Entity::update_many()
        .col_expr(
            consortium_member::Column::State,
            Expr::value(MemberState::Rejected.as_str()),
        )
        .col_expr(consortium_member::Column::UpdatedAt, Expr::value(now))
        .filter(consortium_member::Column::Id.eq(row.member_id))
        .filter(consortium_member::Column::State.eq(MemberState::Invited.as_str()))
        .exec(&txn)
        .await?;
    access
        .audit(
            &txn,
            &scope,
            "consortium.invitation_revoke",
            row.member_id,
            serde_json::json!({"invitation_id": invitation_id, "network_id": id}),
        )
        .await?;
    txn.commit().await?;
    let condition = Condition::all().add(consortium_invitation::Column::Id.eq(invitation_id));
    page(&state, condition, &PageQuery::default())
        .await?
        .items
        .into_iter()
        .next()
        .map(Json)
        .ok_or_else(not_found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    #[test]
    fn status_is_final_once_accepted_or_revoked() {
        let now = Utc::now();
        let mut row = consortium_invitation::Model {
            id: Uuid::now_v7(),
            network_id: Uuid::now_v7(),
            network_tenant_id: Uuid::now_v7(),
            member_id: Uuid::now_v7(),
            token_hash: "h".into(),
            expires_at: now + Duration::hours(1),
            accepted_at: None,
            accepted_by_tenant_id: None,
            created_by: "user:x".into(),
            created_at: now,
            revoked_at: None,
            invited_tenant_id: None,
        };
        assert_eq!(InvitationStatus::of(&row, now), InvitationStatus::Pending);
        let later = now + Duration::hours(2);
        assert_eq!(InvitationStatus::of(&row, later), InvitationStatus::Expired);
        row.revoked_at = Some(now);
        assert_eq!(InvitationStatus::of(&row, later), InvitationStatus::Revoked);
        row.accepted_at = Some(now);
        assert_eq!(
            InvitationStatus::of(&row, later),
            InvitationStatus::Accepted
        );
    }
}
