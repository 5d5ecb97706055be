#!/usr/bin/env bash
# The meshed Guestbook on a kind cluster, at http://localhost:8080, in one
# command:
#
#   scripts/kind-up.sh              # create (or reuse) the cluster, build, load, apply, wait
#   SKIP_BUILD=1 scripts/kind-up.sh # reuse the images already built
#   scripts/down.sh kind            # delete the cluster again
#
# Steps: check docker, kind and kubectl (and their versions), create the
# cluster `micromesh` from k8s/kind-cluster.yaml unless it exists, build the
# images with scripts/build-images.sh (tag: the workspace version), load them
# into the node with `kind load docker-image`, `kubectl apply -k
# k8s/overlays/kind`, wait for every Deployment, check the page answers.
# Running it again is safe: each step keeps what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

CLUSTER=micromesh
CONTEXT="kind-$CLUSTER"
OVERLAY=k8s/overlays/kind
URL=http://localhost:8080/
IMAGES=(mesh-control mesh-proxy guestbook-ui guestbook-service helloworld-service sentiment-service)
# Native sidecars need Kubernetes 1.29+: kind 0.21 is the first whose
# default node image is 1.29. kubectl 1.27+ has kustomize v5 built in.
MIN_KIND=0.21.0
MIN_KUBECTL=1.27.0
MIN_DOCKER=20.10.0

SCRIPT=kind-up.sh
# shellcheck source-path=SCRIPTDIR source=cluster-common.sh
source scripts/cluster-common.sh

# === prerequisites: all checked first, all reported at once ===
problems=()
if ! command -v docker >/dev/null 2>&1; then
    problems+=("docker is missing: install Docker (https://docs.docker.com/get-docker/)")
else
    docker_version="$(docker version --format '{{.Client.Version}}' 2>/dev/null || true)"
    if ! docker info >/dev/null 2>&1; then
        problems+=("docker is installed but its engine does not answer ('docker info' fails): start Docker Desktop or 'sudo systemctl start docker'")
    elif [ -n "$docker_version" ] && ! version_ge "${docker_version%%[-+]*}" "$MIN_DOCKER"; then
        problems+=("docker $docker_version is too old: install Docker $MIN_DOCKER or newer (https://docs.docker.com/get-docker/)")
    fi
fi
if ! command -v kind >/dev/null 2>&1; then
    problems+=("kind is missing: install kind $MIN_KIND or newer (https://kind.sigs.k8s.io/docs/user/quick-start/#installation, e.g. 'go install sigs.k8s.io/kind@latest' or 'brew install kind')")
else
    kind_version="$(kind version 2>/dev/null | sed -n 's/^kind v\([0-9][0-9.]*\).*/\1/p')"
    if [ -z "$kind_version" ] || ! version_ge "$kind_version" "$MIN_KIND"; then
        problems+=("kind ${kind_version:-(unknown version)} is too old: native sidecars need Kubernetes 1.29, which kind $MIN_KIND+ runs; install a newer kind (https://kind.sigs.k8s.io/docs/user/quick-start/#installation)")
    fi
fi
check_kubectl "$MIN_KUBECTL"
report_problems
say "docker $docker_version, kind $kind_version, kubectl $kubectl_version"

workspace_version
started=$SECONDS

# === the cluster ===
if kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
    say "cluster $CLUSTER exists; reusing it"
    # A kubeconfig edited since (or another machine's) may lack its context.
    kind export kubeconfig --name "$CLUSTER" >/dev/null 2>&1 \
        || die "cannot write the kubeconfig of cluster $CLUSTER; 'scripts/down.sh kind' and run again"
else
    say "creating the kind cluster $CLUSTER (k8s/kind-cluster.yaml: localhost:8080 -> the gateway)"
    kind create cluster --config k8s/kind-cluster.yaml \
        || die "kind could not create the cluster (output above); is port 8080 free? ('scripts/down.sh kind' removes a half-made one)"
fi

# === the images, the manifests, every Deployment ready ===
# shellcheck disable=SC2317 # called through build_and_load
load_into_kind() {
    say "loading $1 into the cluster"
    kind load docker-image --name "$CLUSTER" "$1" >/dev/null
}
build_and_load load_into_kind
apply_and_wait

# === the page ===
say "checking $URL"
for _ in $(seq 1 30); do
    if curl -fsS --max-time 3 "$URL" 2>/dev/null | grep -q '<title>Guestbook'; then
        say "the Guestbook answers at $URL ($((SECONDS - started))s in all)"
        cat <<EOF

Next steps:
  open $URL                              the Guestbook, through the mesh's gateway
  kubectl -n guestbook get pods              every pod: app + mesh-proxy sidecar
  meshctl dashboard                          the mesh's dashboard on http://127.0.0.1:15014
  meshctl get proxies                        every sidecar the control plane serves
  scripts/addons-up.sh                       optional: Prometheus, Grafana, Kiali, Zipkin
  labs/README.md                             the labs, in their cluster variant
  scripts/down.sh kind                       delete the cluster when done
EOF
        exit 0
    fi
    sleep 2
done
die "every Deployment is ready but $URL does not serve the Guestbook page; try 'curl -v $URL' and 'kubectl --context $CONTEXT -n mesh-system logs deployment/ingressgateway'"
