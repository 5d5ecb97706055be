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

say() { printf '==> %s\n' "$*"; }
die() { printf 'minikube-up.sh: %s\n' "$*" >&2; exit 1; }
version_ge() { [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n1)" = "$2" ]; }

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
if ! command -v kubectl >/dev/null 2>&1; then
    problems+=("kubectl is missing: install kubectl $MIN_KUBECTL or newer (https://kubernetes.io/docs/tasks/tools/)")
else
    kubectl_version="$(kubectl version --client 2>/dev/null | sed -n 's/^Client Version: v\([0-9][0-9.]*\).*/\1/p')"
    if [ -z "$kubectl_version" ] || ! version_ge "$kubectl_version" "$MIN_KUBECTL"; then
        problems+=("kubectl ${kubectl_version:-(unknown version)} is too old: 'kubectl apply -k' needs kustomize v5, in kubectl $MIN_KUBECTL+; install a newer one (https://kubernetes.io/docs/tasks/tools/)")
    fi
fi
if [ ${#problems[@]} -gt 0 ]; then
    printf 'minikube-up.sh: cannot start, %d prerequisite(s) missing:\n' "${#problems[@]}" >&2
    printf '  - %s\n' "${problems[@]}" >&2
    exit 1
fi
say "minikube $minikube_version, kubectl $kubectl_version"

VERSION="$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' Cargo.toml)"
[ -n "$VERSION" ] || die "no version in Cargo.toml's [workspace.package]; run this from a micromesh checkout"
started=$SECONDS

# === the cluster ===
if minikube -p "$PROFILE" status >/dev/null 2>&1; then
    say "minikube profile $PROFILE is running; reusing it"
else
    say "starting minikube profile $PROFILE"
    minikube -p "$PROFILE" start \
        || die "minikube could not start (output above); 'scripts/down.sh minikube' removes a half-made profile"
fi

# === the images ===
if [ -n "${SKIP_BUILD:-}" ]; then
    say "SKIP_BUILD set: using the micromesh/*:$VERSION images already built"
else
    say "building the images, tag $VERSION (scripts/build-images.sh; the first build takes minutes)"
    TAG="$VERSION" scripts/build-images.sh
fi
for name in "${IMAGES[@]}"; do
    ref="micromesh/$name:$VERSION"
    docker image inspect "$ref" >/dev/null 2>&1 \
        || die "image $ref is missing: run 'TAG=$VERSION scripts/build-images.sh' (or this script without SKIP_BUILD)"
    say "loading $ref into minikube"
    minikube -p "$PROFILE" image load "$ref"
done

# === the manifests ===
say "kubectl apply -k $OVERLAY"
kubectl --context "$CONTEXT" apply -k "$OVERLAY"

# === wait for every Deployment, one progress line each ===
deployments=()
for ns in mesh-system guestbook; do
    for d in $(kubectl --context "$CONTEXT" -n "$ns" get deployments -o name); do
        deployments+=("$ns/${d#*/}")
    done
done
i=0
for entry in "${deployments[@]}"; do
    i=$((i + 1))
    ns="${entry%%/*}"
    name="${entry#*/}"
    t0=$SECONDS
    printf '==> [%d/%d] %-40s ' "$i" "${#deployments[@]}" "$entry"
    if kubectl --context "$CONTEXT" -n "$ns" rollout status "deployment/$name" --timeout=300s >/dev/null; then
        printf 'ready (%ds)\n' $((SECONDS - t0))
    else
        printf 'NOT READY\n'
        die "$entry did not become ready in 5 minutes; look at 'kubectl --context $CONTEXT -n $ns describe deployment $name' and 'kubectl --context $CONTEXT -n $ns logs deployment/$name --all-containers'"
    fi
done

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
  kubectl --context $CONTEXT -n mesh-system port-forward svc/mesh-control 15014:15014
                                             then http://localhost:15014: the dashboard
  labs/README.md                             the labs, in their cluster variant
  scripts/down.sh minikube                   delete the profile when done
EOF
