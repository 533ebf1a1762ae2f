//! Test environments for Trellis, shared by every crate's tests.
//!
//! * [`kube`]: a real Kubernetes control plane (etcd, kube-apiserver,
//!   kube-controller-manager, kube-scheduler and kwok's fake nodes) running as plain
//!   processes on loopback; each test gets its own namespace.
//! * [`postgres`]: a real PostgreSQL server on loopback; each test gets a fresh database.
//! * [`tools`]: the command-line tools tests drive (Helm, the workspace's binaries).
//!
//! Both are started at most once per test binary, by the scripts in `e2e/scripts/`, and
//! both stop when the test binary exits, however it exits: the scripts watch their
//! standard input, which only this process holds open. The README's test command
//! starts one of each up front and points every test binary at them through
//! `TRELLIS_TEST_KUBECONFIG` and `TRELLIS_TEST_DATABASE_URL`.
//!
//! When an environment cannot be had, the helpers return `None` and the test prints a
//! loud `SKIPPED` line — unless `TRELLIS_REQUIRE_CLUSTER=1` / `TRELLIS_REQUIRE_POSTGRES=1`
//! is set (the README's test command sets both), in which case they panic.

pub mod kube;
pub mod postgres;
mod supervised;
pub mod tools;

pub use supervised::EnvError;
