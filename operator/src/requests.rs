//! Counts the operator's apiserver requests by verb and resource
//! (`trellis_operator_kube_requests_total{verb,resource}`): a tower layer on the kube
//! client, so every request is counted, the watches' included, whoever sends it.
//!
//! The apiserver is the shared bottleneck of a cluster that creates many networks at
//! once (docs/benchmarks.md): every request the operator saves is apiserver time the
//! other controllers get back, and this metric shows where the operator's go.

use std::sync::Arc;

use kube::client::{Body, ClientBuilder};
use kube::{Client, Config};

use crate::metrics::Metrics;

/// A kube client whose requests are counted in `metrics`.
pub fn counted_client(config: Config, metrics: Arc<Metrics>) -> Result<Client, kube::Error> {
    let count = tower::util::MapRequestLayer::new(move |request: http::Request<Body>| {
        let (verb, resource) = classify(
            request.method(),
            request.uri(),
            request.headers().get(http::header::CONTENT_TYPE),
        );
        metrics.kube_request(verb, &resource);
        request
    });
    Ok(ClientBuilder::try_from(config)?.with_layer(&count).build())
}

/// The Kubernetes verb and the resource (`resource` or `resource/subresource`) of a
/// request, as the apiserver's own `apiserver_request_total` names them; discovery and
/// other non-resource paths are resource `-`.
pub fn classify(
    method: &http::Method,
    uri: &http::Uri,
    content_type: Option<&http::HeaderValue>,
) -> (&'static str, String) {
    let segments: Vec<&str> = uri.path().split('/').filter(|s| !s.is_empty()).collect();
    // `/api/v1/...` (core) or `/apis/<group>/<version>/...`.
    let rest = match segments.as_slice() {
        ["api", _version, rest @ ..] => rest,
        ["apis", _group, _version, rest @ ..] => rest,
        _ => &[][..],
    };
    // A namespaced path: `namespaces/<ns>/<resource>/...`; `namespaces/<name>` alone is
    // the namespace object itself.
    let rest = match rest {
        ["namespaces", _namespace, resource, more @ ..] => {
            let mut path = vec![*resource];
            path.extend_from_slice(more);
            path
        }
        other => other.to_vec(),
    };
    let (resource, named) = match rest.as_slice() {
        [] => return (verb_of(method, false, false, content_type), "-".to_owned()),
        [resource] => ((*resource).to_owned(), false),
        [resource, _name] => ((*resource).to_owned(), true),
        [resource, _name, subresource, ..] => (format!("{resource}/{subresource}"), true),
    };
    let watch = uri
        .query()
        .is_some_and(|q| q.split('&').any(|p| p == "watch=true" || p == "watch=1"));
    (verb_of(method, named, watch, content_type), resource)
}

fn verb_of(
    method: &http::Method,
    named: bool,
    watch: bool,
    content_type: Option<&http::HeaderValue>,
) -> &'static str {
    match *method {
        http::Method::GET if watch => "watch",
        http::Method::GET if named => "get",
        http::Method::GET => "list",
        http::Method::POST => "create",
        http::Method::PUT => "update",
        http::Method::PATCH
            if content_type
                .and_then(|c| c.to_str().ok())
                .is_some_and(|c| c.starts_with("application/apply-patch")) =>
        {
            "apply"
        }
        http::Method::PATCH => "patch",
        http::Method::DELETE if named => "delete",
        http::Method::DELETE => "deletecollection",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(method: &str, uri: &str, content_type: Option<&str>) -> (&'static str, String) {
        let method = http::Method::from_bytes(method.as_bytes()).unwrap();
        let uri: http::Uri = uri.parse().unwrap();
        let content_type = content_type.map(|c| http::HeaderValue::from_str(c).unwrap());
        classify(&method, &uri, content_type.as_ref())
    }

    #[test]
    fn names_verbs_and_resources_like_the_apiserver() {
        let (v, r) = of(
            "GET",
            "/apis/apps/v1/namespaces/ns/statefulsets?labelSelector=a%3Db",
            None,
        );
        assert_eq!((v, r.as_str()), ("list", "statefulsets"));
        let (v, r) = of(
            "GET",
            "/apis/apps/v1/statefulsets?watch=true&resourceVersion=5",
            None,
        );
        assert_eq!((v, r.as_str()), ("watch", "statefulsets"));
        let (v, r) = of(
            "GET",
            "/api/v1/namespaces/ns/configmaps/alpha-genesis",
            None,
        );
        assert_eq!((v, r.as_str()), ("get", "configmaps"));
        let (v, r) = of("POST", "/api/v1/namespaces/ns/secrets", None);
        assert_eq!((v, r.as_str()), ("create", "secrets"));
        let (v, r) = of(
            "PATCH",
            "/apis/apps/v1/namespaces/ns/statefulsets/alpha-beacon?fieldManager=trellis-operator&force=true",
            Some("application/apply-patch+yaml"),
        );
        assert_eq!((v, r.as_str()), ("apply", "statefulsets"));
        let (v, r) = of(
            "PATCH",
            "/apis/trellis.dev/v1alpha1/namespaces/ns/chainnetworks/alpha/status",
            Some("application/merge-patch+json"),
        );
        assert_eq!((v, r.as_str()), ("patch", "chainnetworks/status"));
        let (v, r) = of(
            "DELETE",
            "/apis/policy/v1/namespaces/ns/poddisruptionbudgets/x",
            None,
        );
        assert_eq!((v, r.as_str()), ("delete", "poddisruptionbudgets"));
        let (v, r) = of("DELETE", "/api/v1/namespaces/ns", None);
        assert_eq!((v, r.as_str()), ("delete", "namespaces"));
        let (v, r) = of(
            "PUT",
            "/apis/coordination.k8s.io/v1/namespaces/ns/leases/l",
            None,
        );
        assert_eq!((v, r.as_str()), ("update", "leases"));
        let (v, r) = of("GET", "/apis/monitoring.coreos.com/v1", None);
        assert_eq!((v, r.as_str()), ("list", "-"));
        let (v, r) = of("GET", "/version", None);
        assert_eq!((v, r.as_str()), ("list", "-"));
    }
}
