//! Approvals by existing members: of an admission (a Proposed member joins) or of a
//! removal (an Admitted member leaves). Both are counted against the same threshold of
//! admitted members and recorded the same way, one row per approving member, in a table
//! of their own (so an admission's approvals never count towards a later removal).

use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DbErr, EntityTrait, PaginatorTrait,
    QueryFilter, Set,
};
use trellis_console_entity::{consortium_approval, consortium_member, consortium_removal_approval};
use uuid::Uuid;

use crate::error::{ApiError, ApiResult};

/// What the members approve.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Admission,
    Removal,
}

impl Decision {
    fn noun(self) -> &'static str {
        match self {
            Decision::Admission => "admission",
            Decision::Removal => "removal",
        }
    }
}

/// The approving members a request names (`as_members`), or else all of `mine` (the
/// calling tenant's admitted members that may approve). Naming one that is not among
/// `mine` is refused, never silently skipped.
pub fn chosen<'a>(
    mine: &'a [consortium_member::Model],
    as_members: Option<&[Uuid]>,
    decision: Decision,
) -> ApiResult<Vec<&'a consortium_member::Model>> {
    let approvers = match as_members {
        None => mine.iter().collect(),
        Some(ids) => ids
            .iter()
            .map(|wanted| {
                mine.iter().find(|m| m.id == *wanted).ok_or_else(|| {
                    ApiError::forbidden(match decision {
                        Decision::Admission => format!(
                            "member {wanted} is not an admitted member controlled by this tenant"
                        ),
                        Decision::Removal => format!(
                            "member {wanted} is not an admitted member controlled by this tenant \
                             (other than the one being removed)"
                        ),
                    })
                })
            })
            .collect::<ApiResult<Vec<_>>>()?,
    };
    if approvers.is_empty() {
        return Err(ApiError::forbidden(match decision {
            Decision::Admission => "this tenant controls no admitted member of the consortium",
            Decision::Removal => {
                "this tenant controls no admitted member of the consortium other than the one \
                 being removed; the other members approve a removal"
            }
        }));
    }
    Ok(approvers)
}

/// Records an approval of `member_id`'s admission or removal by each approver that has
/// not approved it yet; returns the organisations that newly approved. Nothing new is a
/// conflict (`already_approved`): a repeated request must not look like progress.
pub async fn record(
    conn: &impl ConnectionTrait,
    decision: Decision,
    member_id: Uuid,
    approvers: &[&consortium_member::Model],
    actor: &str,
    now: DateTime<Utc>,
) -> ApiResult<Vec<String>> {
    let mut added = Vec::new();
    for approver in approvers {
        if has_approved(conn, decision, member_id, approver.id).await? {
            continue;
        }
        let id = Set(Uuid::now_v7());
        match decision {
            Decision::Admission => {
                consortium_approval::ActiveModel {
                    id,
                    member_id: Set(member_id),
                    approver_member_id: Set(approver.id),
                    approved_by: Set(actor.to_owned()),
                    created_at: Set(now),
                }
                .insert(conn)
                .await?;
            }
            Decision::Removal => {
                consortium_removal_approval::ActiveModel {
                    id,
                    member_id: Set(member_id),
                    approver_member_id: Set(approver.id),
                    approved_by: Set(actor.to_owned()),
                    created_at: Set(now),
                }
                .insert(conn)
                .await?;
            }
        }
        added.push(approver.organisation.clone());
    }
    if added.is_empty() {
        return Err(ApiError::conflict(
            "already_approved",
            format!(
                "these members have already approved this {}",
                decision.noun()
            ),
        ));
    }
    Ok(added)
}

/// How many members have approved `member_id`'s admission or removal.
pub async fn count(
    conn: &impl ConnectionTrait,
    decision: Decision,
    member_id: Uuid,
) -> Result<u64, DbErr> {
    match decision {
        Decision::Admission => {
            consortium_approval::Entity::find()
                .filter(consortium_approval::Column::MemberId.eq(member_id))
                .count(conn)
                .await
        }
        Decision::Removal => {
            consortium_removal_approval::Entity::find()
                .filter(consortium_removal_approval::Column::MemberId.eq(member_id))
                .count(conn)
                .await
        }
    }
}

async fn has_approved(
    conn: &impl ConnectionTrait,
    decision: Decision,
    member_id: Uuid,
    approver: Uuid,
) -> Result<bool, DbErr> {
    let found = match decision {
        Decision::Admission => {
            consortium_approval::Entity::find()
                .filter(consortium_approval::Column::MemberId.eq(member_id))
                .filter(consortium_approval::Column::ApproverMemberId.eq(approver))
                .count(conn)
                .await?
        }
        Decision::Removal => {
            consortium_removal_approval::Entity::find()
                .filter(consortium_removal_approval::Column::MemberId.eq(member_id))
                .filter(consortium_removal_approval::Column::ApproverMemberId.eq(approver))
                .count(conn)
                .await?
        }
    };
    Ok(found > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(organisation: &str) -> consortium_member::Model {
        consortium_member::Model {
            id: Uuid::now_v7(),
            network_id: Uuid::nil(),
            network_tenant_id: Uuid::nil(),
            member_tenant_id: None,
            organisation: organisation.into(),
            nodes: 1,
            state: "Admitted".into(),
            key_custody: None,
            admin_public_key: None,
            sealed_private_key: None,
            created_at: Utc::now(),
            updated_at: Utc::now(),
        }
    }

    #[test]
    fn approvers_are_all_of_mine_or_exactly_those_named() {
        let mine = [member("org-a"), member("org-b")];
        let all = chosen(&mine, None, Decision::Admission).expect("all of mine");
        assert_eq!(all.len(), 2);
        let one = chosen(&mine, Some(&[mine[1].id]), Decision::Removal).expect("the named one");
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].organisation, "org-b");
    }

    #[test]
    fn naming_a_member_not_mine_or_having_none_is_refused() {
        let mine = [member("org-a")];
        let stranger = Uuid::now_v7();
        let refused = chosen(&mine, Some(&[mine[0].id, stranger]), Decision::Removal)
            .expect_err("a member this tenant does not control");
        let text = format!("{refused:?}");
        assert!(text.contains(&stranger.to_string()), "{text}");
        assert!(text.contains("other than the one being removed"), "{text}");
        let none = chosen(&[], None, Decision::Admission).expect_err("no member of mine");
        assert!(
            format!("{none:?}").contains("controls no admitted member"),
            "{none:?}"
        );
    }
}
