#!/usr/bin/env bash
# Builds the Helm CLI from Go modules and caches it by version:
#   ${TRELLIS_CACHE:-~/.cache/trellis}/helm-<version>-<hash>/bin/helm
# The version is pinned in e2e/helm-bin/go.mod (helm.sh/helm/v4). A warm cache makes this
# a no-op; prints the bin dir on stdout. `--check` only tells whether it is cached.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
mod="$here/helm-bin"
version=$(grep -oE "helm\.sh/helm/v4 v[0-9][0-9.]*" "$mod/go.mod" | head -1 | cut -d" " -f2)
[ -n "$version" ] || { echo "build-helm: no helm.sh/helm/v4 version in $mod/go.mod" >&2; exit 1; }
key=$(cat "$mod/go.mod" "$mod/go.sum" "$mod/tools.go" | sha256sum | cut -c1-12)
out="${TRELLIS_CACHE:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/trellis}/helm-$version-$key"

if [ -x "$out/bin/helm" ]; then echo "$out/bin"; exit 0; fi
[ "${1:-}" = --check ] && exit 1

command -v go >/dev/null || { echo "build-helm: Go is required (https://go.dev/doc/install)" >&2; exit 1; }
tmp="$out.tmp.$$"
rm -rf "$tmp"; mkdir -p "$tmp/bin"
trap 'rm -rf "$tmp"' EXIT
echo "build-helm: building Helm $version into $out (cold: a few minutes)" >&2
cd "$mod"
export CGO_ENABLED=0 GOFLAGS=-mod=readonly # go.sum is complete: a build never edits it
go build -trimpath -ldflags "-s -w -X helm.sh/helm/v4/internal/version.version=$version" \
  -o "$tmp/bin/helm" helm.sh/helm/v4/cmd/helm
# Publish atomically: a half-built cache is never mistaken for a complete one.
rm -rf "$out"; mv "$tmp" "$out"
echo "$out/bin"
