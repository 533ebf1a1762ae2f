//! Approvals of chain governance proposals that organisations with their own keys sign
//! offline and post to the console (bring-your-own-key members).
use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table("governance_approvals")
                    .col(pk_uuid("id"))
                    .col(uuid("network_id"))
                    .col(uuid("member_id"))
                    .col(uuid("approver_member_id"))
                    .col(string("proposal_hash"))
                    .col(string("approval"))
                    .col(string("approved_by"))
                    .col(timestamp_with_time_zone("created_at"))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_governance_approvals_member")
                            .from("governance_approvals", "member_id")
                            .to("consortium_members", "id")
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("uq_governance_approvals_signer")
                    .table("governance_approvals")
                    .col("proposal_hash")
                    .col("approver_member_id")
                    .unique()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table("governance_approvals").to_owned())
            .await
    }
}
