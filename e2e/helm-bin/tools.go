//go:build tools

// Wrapper module that pins the Helm CLI used by the chart checks (e2e/scripts/build-helm.sh).
package tools

import _ "helm.sh/helm/v4/cmd/helm"
