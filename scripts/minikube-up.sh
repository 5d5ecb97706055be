#!/usr/bin/env bash
# The meshed Guestbook on minikube, in one command:
#
#   scripts/minikube-up.sh              # start (or reuse) the profile, build, load, apply, wait
#   SKIP_BUILD=1 scripts/minikube-up.sh # reuse the images already built
#   scripts/down.sh minikube            # delete the profile again
#
# The same steps as scripts/kind-up.sh, with `minikube image load` instead of
# `kind load`, and no port mapping: the gateway is a NodePort Service whose
# URL this script prints at the end. Running it again is safe.
set -euo pipefail
cd "$(dirname "$0")/.."

PROFILE=micromesh
CONTEXT="$PROFILE"
OVERLAY=k8s/overlays/minikube
IMAGES=(mesh-control mesh-proxy guestbook-ui guestbook-service helloworld-service sentiment-service)
# Native sidecars need Kubernetes 1.29+: minikube 1.33 is the first whose
# default Kubernetes is newer. kubectl 1.27+ has kustomize v5 built in.
MIN_MINIKUBE=1.33.0
MIN_KUBECTL=1.27.0

SCRIPT=minikube-up.sh
# shellcheck source-path=SCRIPTDIR source=cluster-common.sh
source scripts/cluster-common.sh

# === prerequisites: all checked first, all reported at once ===
problems=()
# Docker builds the images (scripts/build-images.sh), whatever minikube's driver.
if ! command -v docker >/dev/null 2>&1; then
    problems+=("docker is missing: install Docker (https://docs.docker.com/get-docker/); it builds the images")
elif ! docker info >/dev/null 2>&1; then
    problems+=("docker is installed but its engine does not answer ('docker info' fails): start Docker")
fi
if ! command -v minikube >/dev/null 2>&1; then
    problems+=("minikube is missing: install minikube $MIN_MINIKUBE or newer (https://minikube.sigs.k8s.io/docs/start/)")
else
    minikube_version="$(minikube version --short 2>/dev/null | sed -n 's/^v\([0-9][0-9.]*\).*/\1/p')"
    if [ -z "$minikube_version" ] || ! version_ge "$minikube_version" "$MIN_MINIKUBE"; then
        problems+=("minikube ${minikube_version:-(unknown version)} is too old: native sidecars need Kubernetes 1.29+; install minikube $MIN_MINIKUBE or newer (https://minikube.sigs.k8s.io/docs/start/)")
    fi
fi
check_kubectl "$MIN_KUBECTL"
report_problems
say "minikube $minikube_version, kubectl $kubectl_version"

workspace_version
started=$SECONDS

# === the cluster ===
if minikube -p "$PROFILE" status >/dev/null 2>&1; then
    say "minikube profile $PROFILE is running; reusing it"
else
    say "starting minikube profile $PROFILE"
    minikube -p "$PROFILE" start \
        || die "minikube could not start (output above); 'scripts/down.sh minikube' removes a half-made profile"
fi

# === the images, the manifests, every Deployment ready ===
# shellcheck disable=SC2317 # called through build_and_load
load_into_minikube() {
    say "loading $1 into minikube"
    minikube -p "$PROFILE" image load "$1"
}
build_and_load load_into_minikube
apply_and_wait

# === the page: node IP and the gateway's node port ===
node_port="$(kubectl --context "$CONTEXT" -n mesh-system get service ingressgateway -o jsonpath='{.spec.ports[0].nodePort}')"
url="http://$(minikube -p "$PROFILE" ip):$node_port/"
say "checking $url"
for _ in $(seq 1 30); do
    if curl -fsS --max-time 3 "$url" 2>/dev/null | grep -q '<title>Guestbook'; then
        say "the Guestbook answers at $url ($((SECONDS - started))s in all)"
        break
    fi
    sleep 2
done
if ! curl -fsS --max-time 3 "$url" 2>/dev/null | grep -q '<title>Guestbook'; then
    # With the docker driver on macOS or Windows the node IP is not
    # reachable from the host; minikube then opens a tunnel instead.
    say "$url does not answer from here (the docker driver on macOS/Windows hides the node IP);"
    say "run 'minikube -p $PROFILE service ingressgateway -n mesh-system --url' and open the URL it prints"
fi
cat <<EOF

Next steps:
  open $url                         the Guestbook, through the mesh's gateway
  kubectl --context $CONTEXT -n guestbook get pods   every pod: app + mesh-proxy sidecar
  meshctl --context $CONTEXT dashboard        the mesh's dashboard on http://127.0.0.1:15014
  meshctl --context $CONTEXT get proxies      every sidecar the control plane serves
  scripts/addons-up.sh minikube              optional: Prometheus, Grafana, Kiali, Zipkin
  labs/README.md                             the labs, in their cluster variant
  scripts/down.sh minikube                   delete the profile when done
EOF
