//! Consortium membership: members (with custodied or external organisation keys),
//! invitations with expiring tokens, and admission approvals.
use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table("consortium_members")
                    .col(pk_uuid("id"))
                    .col(uuid("network_id"))
                    .col(uuid("network_tenant_id"))
                    .col(uuid_null("member_tenant_id"))
                    .col(string("organisation"))
                    .col(integer("nodes"))
                    .col(string("state"))
                    .col(string_null("key_custody"))
                    .col(string_null("admin_public_key"))
                    .col(text_null("sealed_private_key"))
                    .col(timestamp_with_time_zone("created_at"))
                    .col(timestamp_with_time_zone("updated_at"))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_consortium_members_network")
                            .from("consortium_members", "network_id")
                            .to("networks", "id")
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("uq_consortium_members_organisation")
                    .table("consortium_members")
                    .col("network_id")
                    .col("organisation")
                    .unique()
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_consortium_members_tenant")
                    .table("consortium_members")
                    .col("member_tenant_id")
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table("consortium_invitations")
                    .col(pk_uuid("id"))
                    .col(uuid("network_id"))
                    .col(uuid("network_tenant_id"))
                    .col(uuid("member_id"))
                    .col(string_uniq("token_hash"))
                    .col(timestamp_with_time_zone("expires_at"))
                    .col(timestamp_with_time_zone_null("accepted_at"))
                    .col(uuid_null("accepted_by_tenant_id"))
                    .col(string("created_by"))
                    .col(timestamp_with_time_zone("created_at"))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_consortium_invitations_member")
                            .from("consortium_invitations", "member_id")
                            .to("consortium_members", "id")
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table("consortium_approvals")
                    .col(pk_uuid("id"))
                    .col(uuid("member_id"))
                    .col(uuid("approver_member_id"))
                    .col(string("approved_by"))
                    .col(timestamp_with_time_zone("created_at"))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_consortium_approvals_member")
                            .from("consortium_approvals", "member_id")
                            .to("consortium_members", "id")
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("uq_consortium_approvals_pair")
                    .table("consortium_approvals")
                    .col("member_id")
                    .col("approver_member_id")
                    .unique()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            "consortium_approvals",
            "consortium_invitations",
            "consortium_members",
        ] {
            manager
                .drop_table(Table::drop().table(table).to_owned())
                .await?;
        }
        Ok(())
    }
}
