#!/usr/bin/env bash
# A real Kubernetes control plane as plain processes on loopback, for tests.
#
#   cluster.sh STATE_DIR
#
# Starts etcd, kube-apiserver (TLS, service-account keys, RBAC), kube-controller-manager,
# kube-scheduler and kwok (fake nodes whose Pods become Running and Ready), registers
# $TRELLIS_KWOK_NODES fake nodes (default 3), writes STATE_DIR/kubeconfig and prints
#
#   ready STATE_DIR/kubeconfig
#
# on stdout. It then stays up until its standard input closes (the process that started
# it exited, however it died) or it gets SIGINT/SIGTERM, and tears everything down.
# Every component runs with a parent-death signal, so even a SIGKILL of this script
# leaves no process behind. Component logs are in STATE_DIR/logs.
#
# Each cluster gets its own loopback address (127.X.Y.1), so several can run at once
# with fixed ports. Service and Pod IPs are loopback too (127.96/16, 127.64/16): nothing
# here can ever send a packet off the machine, even if a test dials a ClusterIP.
set -euo pipefail

dir=${1:?usage: cluster.sh STATE_DIR}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=supervise.sh
source "$here/scripts/supervise.sh"
stop_signal=KILL # a throwaway cluster: no graceful shutdown to wait for
bin=$("$here/scripts/build-kube.sh")
nodes=${TRELLIS_KWOK_NODES:-3}

ip=${TRELLIS_CLUSTER_IP:-$(random_loopback 1)}
etcd_port=2379 etcd_peer=2380 api_port=6443
pki="$dir/pki" logs="$dir/logs"
rm -rf "$dir/etcd" "$pki" "$logs"
mkdir -p "$pki" "$logs"

# --- certificates: one CA, a serving cert, one client cert per component ---
ossl() { openssl "$@" 2>/dev/null; }
ossl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
  -keyout "$pki/ca.key" -out "$pki/ca.crt" -subj "/CN=trellis-test-ca"
issue() { # issue NAME SUBJECT [SAN]
  local name=$1 subj=$2 san=${3:-}
  ossl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -keyout "$pki/$name.key" -out "$pki/$name.csr" -subj "$subj"
  local ext="$pki/$name.ext"
  if [ -n "$san" ]; then
    printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth,clientAuth\n' "$san" >"$ext"
  else
    printf 'extendedKeyUsage=clientAuth\n' >"$ext"
  fi
  ossl x509 -req -in "$pki/$name.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" \
    -CAcreateserial -days 2 -out "$pki/$name.crt" -extfile "$ext"
}
issue apiserver "/CN=kube-apiserver" \
  "IP:$ip,IP:127.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc"
issue admin "/O=system:masters/CN=trellis-test-admin"
issue controller-manager "/CN=system:kube-controller-manager"
issue scheduler "/CN=system:kube-scheduler"
issue kwok "/O=system:masters/CN=kwok"
ossl ecparam -name prime256v1 -genkey -noout -out "$pki/sa.key"
ossl ec -in "$pki/sa.key" -pubout -out "$pki/sa.pub"
[ -s "$pki/sa.pub" ] && [ -s "$pki/kwok.crt" ] || fail "openssl could not create the certificates"

kubeconfig() { # kubeconfig NAME -> writes $dir/NAME.kubeconfig
  cat >"$dir/$1.kubeconfig" <<KC
apiVersion: v1
kind: Config
clusters:
- name: trellis-test
  cluster:
    server: https://$ip:$api_port
    certificate-authority: $pki/ca.crt
users:
- name: $1
  user:
    client-certificate: $pki/$1.crt
    client-key: $pki/$1.key
contexts:
- name: trellis-test
  context: {cluster: trellis-test, user: $1}
current-context: trellis-test
KC
}
for c in admin controller-manager scheduler kwok; do kubeconfig $c; done

# --- etcd ---
start etcd "$bin/etcd" --name trellis --data-dir "$dir/etcd" \
  --listen-client-urls "http://$ip:$etcd_port" --advertise-client-urls "http://$ip:$etcd_port" \
  --listen-peer-urls "http://$ip:$etcd_peer" --initial-advertise-peer-urls "http://$ip:$etcd_peer" \
  --initial-cluster "trellis=http://$ip:$etcd_peer" --listen-metrics-urls "" \
  --unsafe-no-fsync --log-level warn

# --- kube-apiserver ---
start kube-apiserver "$bin/kube-apiserver" \
  --etcd-servers "http://$ip:$etcd_port" \
  --bind-address "$ip" --advertise-address "$ip" --secure-port $api_port \
  --cert-dir "$dir/apiserver" \
  --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
  --client-ca-file "$pki/ca.crt" \
  --service-account-issuer "https://kubernetes.default.svc" \
  --service-account-key-file "$pki/sa.pub" --service-account-signing-key-file "$pki/sa.key" \
  --authorization-mode RBAC \
  --service-cluster-ip-range 127.96.0.0/16 \
  --allow-privileged=true \
  --disable-admission-plugins TaintNodesByCondition \
  --enable-priority-and-fairness=false \
  --profiling=false

wait_for "kube-apiserver /readyz" 90 "$bin/kubectl" --kubeconfig "$dir/admin.kubeconfig" get --raw /readyz

# --- controllers, scheduler, kwok ---
# kwok's nodes send no heartbeats, so the node lifecycle controller (which would mark
# them NotReady and evict their Pods) is off, and so is the admission plugin that
# taints new nodes not-ready until that controller clears it. IPAM and cloud
# controllers have nothing to do here, and neither have the Endpoints/EndpointSlice
# controllers: kwok gives Pods loopback IPs (127.64/16, below), which Endpoints and
# EndpointSlices refuse, so they could only fail, retry and write a Warning Event per
# try (3,000 failed syncs and 2,000 Events for 50 networks, a large share of the
# apiserver's work). No test reads Endpoints: node RPC goes through the operator's
# resolver.
#
# Client rate limits: the defaults (controller-manager 20 QPS / burst 30 per controller,
# scheduler 50 / 100) are sized for shared production apiservers; here they, not the
# apiserver, set the pace: the StatefulSet controller needed 89 s to create the pods and
# claims of 50 networks. 300 / 600 removes that throttle (its wait is ~0 s now; the
# apiserver's latency is the limit) — large production clusters raise them the same
# way. --concurrent-statefulset-syncs 20 (default 5): StatefulSets of many networks
# are synced side by side, each waiting on the apiserver, not the CPU.
# docs/testing.md lists these flags.
start kube-controller-manager "$bin/kube-controller-manager" \
  --kubeconfig "$dir/controller-manager.kubeconfig" \
  --bind-address "$ip" --secure-port 10257 \
  --authentication-skip-lookup --authorization-always-allow-paths /healthz,/metrics \
  --leader-elect=false --use-service-account-credentials=true \
  --kube-api-qps 300 --kube-api-burst 600 --concurrent-statefulset-syncs 20 \
  --service-account-private-key-file "$pki/sa.key" --root-ca-file "$pki/ca.crt" \
  --cluster-signing-cert-file "$pki/ca.crt" --cluster-signing-key-file "$pki/ca.key" \
  --controllers '*,-nodeipam,-nodelifecycle,-cloud-node-lifecycle,-service-lb-controller,-endpoints-controller,-endpointslice-controller,-endpointslice-mirroring-controller'
cat >"$dir/scheduler.yaml" <<CONFIG
apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
clientConnection:
  kubeconfig: $dir/scheduler.kubeconfig
  qps: 300
  burst: 600
leaderElection:
  leaderElect: false
CONFIG
start kube-scheduler "$bin/kube-scheduler" --config "$dir/scheduler.yaml" \
  --authentication-kubeconfig "$dir/scheduler.kubeconfig" \
  --authorization-kubeconfig "$dir/scheduler.kubeconfig" \
  --authorization-always-allow-paths /healthz,/readyz,/livez,/metrics \
  --bind-address "$ip" --secure-port 10259
start kwok "$bin/kwok" \
  --kubeconfig "$dir/kwok.kubeconfig" --config "$here/kwok/stages.yaml" \
  --manage-all-nodes=false \
  --manage-nodes-with-annotation-selector kwok.x-k8s.io/node=fake \
  --node-ip 127.63.0.1 --cidr 127.64.0.1/16 \
  --server-address "$ip:10247"

kubectl=("$bin/kubectl" --kubeconfig "$dir/admin.kubeconfig")
for i in $(seq "$nodes"); do
  cat <<NODE
apiVersion: v1
kind: Node
metadata:
  name: kwok-node-$i
  annotations: {kwok.x-k8s.io/node: fake, node.alpha.kubernetes.io/ttl: "0"}
  labels:
    type: kwok
    kubernetes.io/hostname: kwok-node-$i
    kubernetes.io/os: linux
    kubernetes.io/arch: amd64
    topology.kubernetes.io/zone: zone-$(( (i - 1) % 3 ))
---
NODE
done | "${kubectl[@]}" apply -f - >/dev/null || fail "could not register the kwok nodes"

wait_for "$nodes kwok nodes Ready" 60 "${kubectl[@]}" wait --for=condition=Ready node --all --timeout=1s
# The default ServiceAccount appearing proves the controller-manager is working.
wait_for "the default ServiceAccount" 60 "${kubectl[@]}" get serviceaccount default -n default

cp "$dir/admin.kubeconfig" "$dir/kubeconfig"
echo "ready $dir/kubeconfig"

stay_up
