//! A real Kubernetes control plane for tests, and a namespace per test.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    HostPathVolumeSource, Namespace, ObjectReference, PersistentVolume, PersistentVolumeSpec,
};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::{DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};

use crate::supervised::{self, EnvError, Supervised};

/// Use this kubeconfig instead of starting a cluster (e.g. one started by the README
/// test command, or your own cluster: tests only touch the namespaces they create).
pub const KUBECONFIG_VAR: &str = "TRELLIS_TEST_KUBECONFIG";
/// When `1`, a missing cluster fails the test instead of skipping it.
pub const REQUIRE_VAR: &str = "TRELLIS_REQUIRE_CLUSTER";
/// Label put on every namespace a test creates, to find leftovers on your own cluster.
pub const TEST_LABEL: &str = "trellis.dev/test";

struct Cluster {
    kubeconfig: PathBuf,
    _owned: Option<Supervised>,
}

static CLUSTER: OnceLock<Result<Cluster, String>> = OnceLock::new();

/// Directory of the cached Kubernetes binaries (kubectl among them), if built.
pub fn bin_dir() -> Option<PathBuf> {
    let out = std::process::Command::new("bash")
        .arg(supervised::scripts_dir().join("build-kube.sh"))
        .arg("--check")
        .output()
        .ok()?;
    let dir = String::from_utf8(out.stdout).ok()?;
    out.status
        .success()
        .then(|| PathBuf::from(dir.trim()))
        .filter(|d| d.is_dir())
}

/// The path to the `kubectl` built with the test cluster, if built.
pub fn kubectl() -> Option<PathBuf> {
    bin_dir().map(|d| d.join("kubectl"))
}

fn cluster() -> Result<&'static Cluster, EnvError> {
    CLUSTER
        .get_or_init(|| {
            if let Some(path) = std::env::var_os(KUBECONFIG_VAR) {
                return Ok(Cluster {
                    kubeconfig: PathBuf::from(path),
                    _owned: None,
                });
            }
            if bin_dir().is_none() && !supervised::required(REQUIRE_VAR) {
                return Err(format!(
                    "no test cluster: set {KUBECONFIG_VAR}, or build the binaries with \
                     e2e/scripts/build-kube.sh, or run the README test command"
                ));
            }
            let owned = supervised::start("cluster", "cluster.sh").map_err(|e| e.to_string())?;
            Ok(Cluster {
                kubeconfig: PathBuf::from(&owned.endpoint),
                _owned: Some(owned),
            })
        })
        .as_ref()
        .map_err(|e| EnvError::Unavailable(e.clone()))
}

/// The kubeconfig of the shared test cluster, starting it if needed.
pub async fn kubeconfig() -> Result<PathBuf, EnvError> {
    tokio::task::spawn_blocking(cluster)
        .await
        .map_err(|e| EnvError::Unavailable(e.to_string()))?
        .map(|c| c.kubeconfig.clone())
}

/// A client for the cluster described by `kubeconfig`, bound to the current runtime.
pub async fn client_from(kubeconfig: &Path) -> Result<Client, EnvError> {
    // kube links rustls with ring and reqwest (in tests) with aws-lc-rs: with both
    // compiled in, rustls needs to be told which to use.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let kc = Kubeconfig::read_from(kubeconfig).map_err(|e| EnvError::Kube(e.to_string()))?;
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .map_err(|e| EnvError::Kube(e.to_string()))?;
    Client::try_from(config).map_err(|e| EnvError::Kube(e.to_string()))
}

/// A namespace of its own on the shared test cluster; deleted when dropped.
pub struct TestNamespace {
    /// An admin client for the cluster (bound to the runtime that created it).
    pub client: Client,
    /// The namespace's name: the test's hint plus a random suffix.
    pub name: String,
    kubeconfig: PathBuf,
}

impl TestNamespace {
    /// The cluster's admin kubeconfig, for processes a test starts (kubectl, the operator).
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// Creates one hostPath PersistentVolume of `size` pre-bound to each named claim of
    /// this namespace, and returns the volumes' names. The test cluster has no storage
    /// provisioner, so Pods with volume claims stay Pending without these; the real PV
    /// controller still does the binding. The volumes are deleted with the namespace.
    pub async fn prebound_volumes(
        &self,
        claims: &[String],
        size: &str,
    ) -> Result<Vec<String>, EnvError> {
        self.prebound_volumes_in(&self.name, claims, size).await
    }

    /// Like [`Self::prebound_volumes`], for claims of another namespace (one the product
    /// created, e.g. a tenant's); the volumes are still deleted with this namespace.
    pub async fn prebound_volumes_in(
        &self,
        namespace: &str,
        claims: &[String],
        size: &str,
    ) -> Result<Vec<String>, EnvError> {
        let api: Api<PersistentVolume> = Api::all(self.client.clone());
        let mut names = Vec::with_capacity(claims.len());
        for claim in claims {
            let name = format!("{}-{claim}", self.name);
            let pv = PersistentVolume {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    labels: Some([(TEST_LABEL.to_string(), self.name.clone())].into()),
                    ..ObjectMeta::default()
                },
                spec: Some(PersistentVolumeSpec {
                    capacity: Some([("storage".to_string(), Quantity(size.to_string()))].into()),
                    access_modes: Some(vec!["ReadWriteOnce".to_string()]),
                    persistent_volume_reclaim_policy: Some("Retain".to_string()),
                    host_path: Some(HostPathVolumeSource {
                        path: format!("/tmp/trellis-e2e/{name}"),
                        ..HostPathVolumeSource::default()
                    }),
                    claim_ref: Some(ObjectReference {
                        namespace: Some(namespace.to_string()),
                        name: Some(claim.clone()),
                        ..ObjectReference::default()
                    }),
                    ..PersistentVolumeSpec::default()
                }),
                ..PersistentVolume::default()
            };
            api.create(&PostParams::default(), &pv)
                .await
                .map_err(|e| EnvError::Kube(format!("creating volume {name}: {e}")))?;
            names.push(name);
        }
        Ok(names)
    }

    /// A typed API for objects of this namespace.
    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.name)
    }
}

/// How long dropping a [`TestNamespace`] waits for the apiserver to accept its deletion.
const DELETE_WAIT: Duration = Duration::from_secs(10);

impl Drop for TestNamespace {
    /// Deletes the namespace (and this namespace's volumes) before returning, also when
    /// the test failed (drop runs while the panic unwinds). The deletion is only sent
    /// (the namespace controller removes the contents afterwards), so this takes one
    /// round trip, not the namespace's termination. It is waited for: a test binary
    /// exits as soon as its last test returns, and a clean-up left to a detached thread
    /// died with it, leaving the namespace behind.
    fn drop(&mut self) {
        // The test's runtime may be gone, or be this very thread (a current-thread
        // runtime cannot serve its client while blocked here): delete from a thread and
        // runtime of our own, and wait for it.
        let (name, kubeconfig) = (self.name.clone(), self.kubeconfig.clone());
        let cleanup = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let delete = async {
                    let client = client_from(&kubeconfig).await.ok()?;
                    let volumes = Api::<PersistentVolume>::all(client.clone());
                    let _ = volumes
                        .delete_collection(
                            &DeleteParams::background(),
                            &ListParams::default().labels(&format!("{TEST_LABEL}={name}")),
                        )
                        .await;
                    Api::<Namespace>::all(client)
                        .delete(&name, &DeleteParams::background())
                        .await
                        .ok()
                };
                if tokio::time::timeout(DELETE_WAIT, delete).await.is_err() {
                    eprintln!(
                        "test namespace {name}: deletion not accepted within {DELETE_WAIT:?}"
                    );
                }
            });
        });
        let _ = cleanup.join();
    }
}

/// Creates a fresh namespace on the shared test cluster (starting the cluster once per
/// test binary). Returns `None` after printing `SKIPPED` when no cluster can be had and
/// [`REQUIRE_VAR`] is not `1`; panics when it is.
pub async fn test_namespace(hint: &str) -> Option<TestNamespace> {
    match try_test_namespace(hint).await {
        Ok(ns) => Some(ns),
        Err(EnvError::Unavailable(why)) if !supervised::required(REQUIRE_VAR) => {
            eprintln!("SKIPPED {hint}: {why}");
            None
        }
        Err(e) => fail(hint, &e),
    }
}

#[allow(clippy::panic)] // A test helper: failing the test is its job.
fn fail(hint: &str, e: &EnvError) -> ! {
    panic!("test cluster for {hint}: {e}")
}

/// Like [`test_namespace`], but returns the error instead of skipping or panicking.
pub async fn try_test_namespace(hint: &str) -> Result<TestNamespace, EnvError> {
    let kubeconfig = kubeconfig().await?;
    let client = client_from(&kubeconfig).await?;
    let name = format!("{}-{}", supervised::sanitize(hint), supervised::suffix());
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            labels: Some([(TEST_LABEL.to_string(), "true".to_string())].into()),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    };
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .map_err(|e| EnvError::Kube(format!("creating namespace {name}: {e}")))?;
    Ok(TestNamespace {
        client,
        name,
        kubeconfig,
    })
}

/// Server-side applies `crds` (tests sharing the cluster may apply the same ones) and
/// waits until each is Established, i.e. served by the apiserver.
pub async fn apply_crds(
    client: &Client,
    crds: impl IntoIterator<Item = CustomResourceDefinition>,
) -> Result<(), EnvError> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let params = PatchParams::apply("trellis-e2e").force();
    for crd in crds {
        let name = crd.metadata.name.clone().unwrap_or_default();
        api.patch(&name, &params, &Patch::Apply(&crd))
            .await
            .map_err(|e| EnvError::Kube(format!("applying CRD {name}: {e}")))?;
        eventually(
            &format!("CRD {name} established"),
            Duration::from_secs(60),
            || {
                let api = api.clone();
                let name = name.clone();
                async move {
                    let crd = api.get(&name).await.ok()?;
                    crd.status?
                        .conditions?
                        .iter()
                        .any(|c| c.type_ == "Established" && c.status == "True")
                        .then_some(())
                }
            },
        )
        .await;
    }
    Ok(())
}

/// Polls `check` every 200 ms until it returns `Some`, or fails the test after `timeout`
/// with `what` in the message.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() >= deadline {
            fail(what, &EnvError::Kube(format!("not true after {timeout:?}")));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
