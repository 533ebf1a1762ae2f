//! The Trellis Kubernetes operator: reconciles `ChainNetwork` resources into running
//! networks (see `docs/operator.md`).
//!
//! Pipeline: validate ([`trellis_crd::validate`]) → plan ([`trellis_crd::topology`]) →
//! keys ([`keys`]) → genesis ([`genesis`], once) → build ([`build`], pure) → apply and clean up ([`controller`]) →
//! status ([`status`], pure). The chain itself is reached only through [`chain`].

pub mod archive;
pub mod build;
pub mod cache;
pub mod chain;
pub mod controller;
pub mod endpoints;
pub mod genesis;
pub mod keys;
pub mod labels;
pub mod lease;
pub mod local;
pub mod member;
pub mod metrics;
pub mod monitoring;
pub mod pool;
pub mod requests;
pub mod reshard;
pub mod rollout;
pub mod scaling;
pub mod server;
pub mod status;
pub mod telemetry;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;

/// One CRD as YAML (what the chart's `crds/<name>.yaml` holds).
pub fn crd_yaml(crd: &CustomResourceDefinition) -> Result<String, serde_yaml::Error> {
    serde_yaml::to_string(crd)
}

/// Every CRD as one YAML stream (`trellis-operator crd`).
pub fn crds_yaml() -> Result<String, serde_yaml::Error> {
    let mut out = String::new();
    for crd in trellis_crd::crds() {
        out.push_str("---\n");
        out.push_str(&crd_yaml(&crd)?);
    }
    Ok(out)
}

/// File name of a CRD in the chart (`<plural>.<group>.yaml`).
pub fn crd_file_name(crd: &CustomResourceDefinition) -> String {
    format!("{}.{}.yaml", crd.spec.names.plural, crd.spec.group)
}
