//! The OpenAPI 3.1 document, generated from the handlers and types. The committed copy
//! (`console-api/openapi.json`) is compared with this by a test, so an API change shows
//! up in review as a diff of that file. Regenerate with
//! `cargo run -p trellis-console -- openapi > console-api/openapi.json`.

use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::{
    alerts, api_keys, audit, billing, consortium, error, identity, monitoring, networks, node_rpc,
    provisioner, users,
};

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Trellis console API",
        description = "Multi-tenant control plane of Trellis: identity, tenants and chain networks. \
Errors are RFC 9457 problem documents (application/problem+json).",
        version = "0.1.0",
    ),
    paths(
        identity::signup, identity::login, identity::refresh, identity::logout, identity::me,
        identity::jwks,
        users::create, users::list, users::get_one, users::update, users::remove,
        api_keys::create, api_keys::list, api_keys::revoke,
        networks::create, networks::list, networks::get_one, networks::update, networks::remove,
        consortium::list_members, consortium::invite, consortium::accept, consortium::approve,
        consortium::reject, consortium::proposal::get_proposal,
        consortium::proposal::post_approval, consortium::removal::approve_removal,
        consortium::invitations::list_sent, consortium::invitations::list_received,
        consortium::invitations::revoke,
        audit::list,
        node_rpc::forward_any, node_rpc::forward_to_shard,
        billing::api::my_plan, billing::api::usage, billing::api::usage_events,
        billing::api::invoice_of, billing::admin::list_plans, billing::admin::put_plan,
        billing::admin::set_tenant_plan,
        monitoring::api::current, monitoring::api::history,
        alerts::list, alerts::webhooks::create, alerts::webhooks::list, alerts::webhooks::remove,
        alerts::webhooks::deliveries,
    ),
    components(schemas(error::Problem, error::FieldError, provisioner::ObservedStatus)),
    modifiers(&BearerAuth),
    tags(
        (name = "auth", description = "Sign-up, sign-in, tokens"),
        (name = "users", description = "Users of the caller's tenant"),
        (name = "api-keys", description = "API keys for automation"),
        (name = "networks", description = "Chain networks"),
        (name = "consortium", description = "Consortium membership: invitations, admission, removal"),
        (name = "audit", description = "The tenant's audit log"),
        (name = "node-rpc", description = "JSON-RPC of the tenant's networks' nodes, proxied"),
        (name = "billing", description = "Plans, quotas, usage and invoices"),
        (name = "monitoring", description = "Network health and its history"),
        (name = "alerts", description = "Alerts and the webhooks they are delivered to"),
    ),
)]
pub struct ApiDoc;

/// The document as pretty-printed JSON with a trailing newline.
pub fn json() -> String {
    let mut text = ApiDoc::openapi()
        .to_pretty_json()
        .unwrap_or_else(|err| format!("{{\"error\": \"{err}\"}}"));
    text.push('\n');
    text
}
