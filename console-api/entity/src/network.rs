//! A chain network's desired state (`spec`, versioned by `generation`) and the last
//! status observed from the provisioner.
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "networks")]
pub struct Model {
    /// UUIDv7: time-ordered, so it doubles as the keyset-pagination key.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub tenant_id: Uuid,
    /// Unique per tenant; a DNS label (it names the ChainNetwork resource).
    pub name: String,
    /// `public` or `consortium`.
    pub mode: String,
    /// The validated desired state, as the console API's `NetworkSpec` JSON.
    pub spec: Json,
    /// Bumped on every change of `spec`.
    pub generation: i64,
    /// The last generation the provisioner accepted; `< generation` means pending.
    pub provisioned_generation: i64,
    /// Coarse lifecycle: `Pending`, `Provisioning`, `Running`, `Paused`, `Stopped`,
    /// `Deleting`, `Failed`.
    pub phase: String,
    /// The provisioner's last observed status, when it reported one.
    pub status: Option<Json>,
    /// The last error from the provisioner (external, safe to show to the tenant).
    pub provision_error: Option<String>,
    /// The built-in autoscaler's newest change of the shard count (the console API's
    /// `AutoscalerStatus` JSON), written with that change and its audit entry.
    pub autoscaler: Option<Json>,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
