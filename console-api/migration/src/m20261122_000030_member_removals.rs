//! Approvals of an admitted consortium member's removal, one per approving member: the
//! reverse of `consortium_approvals` (admission), kept apart so a member's admission and
//! a later removal never share a count.
use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table("consortium_removal_approvals")
                    .col(pk_uuid("id"))
                    .col(uuid("member_id"))
                    .col(uuid("approver_member_id"))
                    .col(string("approved_by"))
                    .col(timestamp_with_time_zone("created_at"))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_consortium_removal_approvals_member")
                            .from("consortium_removal_approvals", "member_id")
                            .to("consortium_members", "id")
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("uq_consortium_removal_approvals_pair")
                    .table("consortium_removal_approvals")
                    .col("member_id")
                    .col("approver_member_id")
                    .unique()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(
                Table::drop()
                    .table("consortium_removal_approvals")
                    .to_owned(),
            )
            .await
    }
}
