//! The optional `ServiceMonitor` child (`spec.serviceMonitor`): the Prometheus Operator
//! scrapes every validator's `/metrics` through its committee's headless Service.
//!
//! The ServiceMonitor CRD belongs to the Prometheus Operator, which many clusters do not
//! run. The object is built (pure, [`service_monitor`]) and applied only when the
//! cluster serves `monitoring.coreos.com/v1` `servicemonitors`; without it the toggle
//! does nothing and the operator says so in its log, instead of failing every reconcile.

use std::collections::BTreeMap;

use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use kube::{Client, ResourceExt};
use serde_json::json;
use tracing::info;
use trellis_crd::ChainNetwork;

use crate::build::{self, BuildError};
use crate::labels;

const GROUP: &str = "monitoring.coreos.com";
const VERSION: &str = "v1";
const KIND: &str = "ServiceMonitor";
const PLURAL: &str = "servicemonitors";

/// How often Prometheus scrapes each validator.
pub const SCRAPE_INTERVAL: &str = "30s";

fn api_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(GROUP, VERSION, KIND), PLURAL)
}

/// Name of the network's ServiceMonitor.
pub fn service_monitor_name(network: &str) -> String {
    format!("{network}-nodes")
}

/// The network's ServiceMonitor: the headless Services of its beacon and shards (not the
/// client RPC Service, which would scrape one validator at random), port `rpc`, path
/// `/metrics`.
pub fn service_monitor(network: &ChainNetwork) -> Result<DynamicObject, BuildError> {
    let name = network
        .metadata
        .name
        .clone()
        .ok_or(BuildError::MissingMetadata("name"))?;
    let meta = build::child_meta(
        network,
        service_monitor_name(&name),
        labels::network_labels(&name),
    )?;
    let mut object = DynamicObject::new(&service_monitor_name(&name), &api_resource());
    object.metadata = meta;
    object.data = json!({
        "spec": {
            "selector": {
                "matchLabels": BTreeMap::from([
                    (labels::NAME, labels::NODE_APP),
                    (labels::INSTANCE, name.as_str()),
                ]),
                "matchExpressions": [{
                    "key": labels::COMPONENT,
                    "operator": "In",
                    "values": ["beacon", "shard"],
                }],
            },
            "endpoints": [{
                "port": "rpc",
                "path": "/metrics",
                "interval": SCRAPE_INTERVAL,
            }],
            // The nodes' metrics carry `network` and `shard` labels of their own.
            "jobLabel": labels::INSTANCE,
        }
    });
    Ok(object)
}

/// Whether the cluster serves ServiceMonitors (the Prometheus Operator's CRD).
async fn served(client: &Client) -> Result<bool, kube::Error> {
    match client
        .list_api_group_resources(&format!("{GROUP}/{VERSION}"))
        .await
    {
        Ok(list) => Ok(list.resources.iter().any(|r| r.name == PLURAL)),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(false),
        Err(e) => Err(e),
    }
}

/// Applies the network's ServiceMonitor when `spec.serviceMonitor` asks for one, or
/// deletes the one it owns when not; nothing when the cluster has no ServiceMonitor CRD.
pub async fn reconcile(
    client: &Client,
    network: &ChainNetwork,
) -> Result<(), crate::controller::Error> {
    if !served(client).await? {
        if network.spec.service_monitor {
            info!(
                network = %network.name_any(),
                "spec.serviceMonitor is set, but the cluster has no ServiceMonitor CRD \
                 (monitoring.coreos.com/v1): nothing applied"
            );
        }
        return Ok(());
    }
    let namespace = network.namespace().unwrap_or_default();
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &namespace, &api_resource());
    let name = service_monitor_name(&network.name_any());
    if network.spec.service_monitor {
        let object = service_monitor(network)?;
        api.patch(
            &name,
            &PatchParams::apply(labels::MANAGER).force(),
            &Patch::Apply(&object),
        )
        .await?;
        return Ok(());
    }
    // Toggled off: delete the one this network owns (and only that one).
    let uid = network.metadata.uid.clone().unwrap_or_default();
    if let Some(existing) = api.get_opt(&name).await?
        && existing
            .owner_references()
            .iter()
            .any(|o| o.uid == uid && o.controller == Some(true))
    {
        match api.delete(&name, &DeleteParams::background()).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use trellis_crd::{ChainNetworkSpec, NetworkMode};

    #[test]
    fn the_service_monitor_scrapes_the_committee_services() {
        let mut network = ChainNetwork::new(
            "alpha",
            ChainNetworkSpec::new(NetworkMode::Public, "trellis-node:1"),
        );
        network.metadata = ObjectMeta {
            name: Some("alpha".into()),
            namespace: Some("tenant-a".into()),
            uid: Some("uid-1".into()),
            ..ObjectMeta::default()
        };
        let object = service_monitor(&network).unwrap();
        let types = object.types.clone().unwrap();
        assert_eq!(types.api_version, "monitoring.coreos.com/v1");
        assert_eq!(types.kind, "ServiceMonitor");
        assert_eq!(object.metadata.name.as_deref(), Some("alpha-nodes"));
        assert_eq!(object.metadata.namespace.as_deref(), Some("tenant-a"));
        let owner = &object.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.uid.as_str(), owner.controller),
            ("uid-1", Some(true))
        );
        let spec = &object.data["spec"];
        assert_eq!(spec["selector"]["matchLabels"][labels::INSTANCE], "alpha");
        assert_eq!(
            spec["selector"]["matchExpressions"][0]["values"],
            json!(["beacon", "shard"])
        );
        assert_eq!(spec["endpoints"][0]["port"], "rpc");
        assert_eq!(spec["endpoints"][0]["path"], "/metrics");
        // The Services it selects carry those labels and name that port.
        let topology = trellis_crd::topology::plan(
            &trellis_crd::topology::NetworkId::new("tenant-a", "alpha"),
            &network.spec,
        )
        .unwrap();
        let shard = topology.shards().next().unwrap();
        let service = build::headless_service(&network, shard).unwrap();
        let service_labels = service.metadata.labels.unwrap();
        assert_eq!(service_labels[labels::INSTANCE], "alpha");
        assert_eq!(service_labels[labels::NAME], labels::NODE_APP);
        assert_eq!(service_labels[labels::COMPONENT], "shard");
        assert!(
            service
                .spec
                .unwrap()
                .ports
                .unwrap()
                .iter()
                .any(|p| p.name.as_deref() == Some("rpc"))
        );
    }
}
