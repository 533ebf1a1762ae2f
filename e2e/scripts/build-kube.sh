#!/usr/bin/env bash
# Builds the test cluster's binaries from Go modules and caches them by version:
#   etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, kwok
# into ${TRELLIS_CACHE:-~/.cache/trellis}/kube-<version>/bin. The versions are pinned in
# e2e/kube-bin/go.mod (k8s.io/kubernetes plus every staging module replaced by its
# matching v0.X.Y tag). A warm cache makes this a no-op; prints the bin dir on stdout.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
mod="$here/kube-bin"
version=$(awk '$1 == "k8s.io/kubernetes" { print $2 }' "$mod/go.mod")
[ -n "$version" ] || { echo "build-kube: no k8s.io/kubernetes version in $mod/go.mod" >&2; exit 1; }
# The cache key covers the exact module graph, so a change to go.mod/go.sum rebuilds.
key=$(cat "$mod/go.mod" "$mod/go.sum" "$mod/tools.go" | sha256sum | cut -c1-12)
out="${TRELLIS_CACHE:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/trellis}/kube-$version-$key"
bins=(etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kwok)

complete() { for b in "${bins[@]}"; do [ -x "$out/bin/$b" ] || return 1; done; }
if complete; then echo "$out/bin"; exit 0; fi
# --check: only tell whether the binaries are cached (exit 1 if not), never build.
[ "${1:-}" = --check ] && exit 1

command -v go >/dev/null || { echo "build-kube: Go is required (https://go.dev/doc/install)" >&2; exit 1; }
major=${version#v}; major=${major%%.*}
minor=${version#v*.}; minor=${minor%%.*}
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $pkg.gitVersion=$version -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
  ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done

tmp="$out.tmp.$$"
rm -rf "$tmp"; mkdir -p "$tmp/bin"
trap 'rm -rf "$tmp"' EXIT
echo "build-kube: building Kubernetes $version test binaries into $out (cold: several minutes)" >&2
cd "$mod"
export CGO_ENABLED=0 GOFLAGS=-mod=readonly # go.sum is complete: a build never edits it
go build -tags selinux,notest -trimpath -ldflags "$ldflags" -o "$tmp/bin/" \
  k8s.io/kubernetes/cmd/kube-apiserver \
  k8s.io/kubernetes/cmd/kube-controller-manager \
  k8s.io/kubernetes/cmd/kube-scheduler \
  k8s.io/kubernetes/cmd/kubectl \
  sigs.k8s.io/kwok/cmd/kwok
go build -trimpath -ldflags "-s -w" -o "$tmp/bin/etcd" go.etcd.io/etcd/server/v3
# Publish atomically: a half-built cache is never mistaken for a complete one.
rm -rf "$out"; mv "$tmp" "$out"
echo "$out/bin"
