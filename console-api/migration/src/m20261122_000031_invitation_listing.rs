//! Invitations can be revoked (kept, with the time, so lists show `revoked` rather than
//! `expired`) and may name the one tenant that can accept them (so that tenant sees the
//! pending invitation among those it received).
use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // One column per statement: SQLite alters one at a time.
        manager
            .alter_table(
                Table::alter()
                    .table("consortium_invitations")
                    .add_column(timestamp_with_time_zone_null("revoked_at"))
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table("consortium_invitations")
                    .add_column(uuid_null("invited_tenant_id"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ix_consortium_invitations_invited_tenant")
                    .table("consortium_invitations")
                    .col("invited_tenant_id")
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(
                Index::drop()
                    .name("ix_consortium_invitations_invited_tenant")
                    .table("consortium_invitations")
                    .to_owned(),
            )
            .await?;
        for column in ["invited_tenant_id", "revoked_at"] {
            manager
                .alter_table(
                    Table::alter()
                        .table("consortium_invitations")
                        .drop_column(column)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }
}
