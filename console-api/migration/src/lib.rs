//! Schema migrations of the Trellis console database, one file per change.
//!
//! The console runs [`Migrator::up`] at start-up, so a new binary brings its schema
//! with it. Migrations are written once and never edited after release: a change to
//! the schema is a new file. The same migrations run on SQLite and PostgreSQL.

pub use sea_orm_migration::prelude::*;

mod m20261122_000001_identity;
mod m20261122_000002_networks;
mod m20261122_000003_audit;
mod m20261122_000004_consortium;
mod m20261122_000010_billing;
mod m20261122_000011_monitoring;
mod m20261122_000020_governance_approvals;
mod m20261122_000030_member_removals;
mod m20261122_000031_invitation_listing;
mod m20261122_000040_network_autoscaler;
mod m20261122_000060_network_versions;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261122_000001_identity::Migration),
            Box::new(m20261122_000002_networks::Migration),
            Box::new(m20261122_000003_audit::Migration),
            Box::new(m20261122_000004_consortium::Migration),
            Box::new(m20261122_000010_billing::Migration),
            Box::new(m20261122_000011_monitoring::Migration),
            Box::new(m20261122_000020_governance_approvals::Migration),
            Box::new(m20261122_000030_member_removals::Migration),
            Box::new(m20261122_000031_invitation_listing::Migration),
            Box::new(m20261122_000040_network_autoscaler::Migration),
            Box::new(m20261122_000060_network_versions::Migration),
        ]
    }
}
