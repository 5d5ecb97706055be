#!/usr/bin/env bash
# The optional observability addons on the micromesh cluster: Prometheus,
# Grafana with Istio's dashboards, Kiali, and Zipkin (k8s/addons/). Off by
# default; run after scripts/kind-up.sh (or minikube-up.sh):
#
#   scripts/addons-up.sh            # kind (cluster micromesh)
#   scripts/addons-up.sh minikube   # minikube (profile micromesh)
#
# Steps: check kubectl, curl and a sha256 tool, and that the cluster's
# context exists; download Istio's Grafana dashboards from the release
# pinned in k8s/addons/dashboards.lock and refuse any file whose sha256
# differs; load them into the ConfigMap istio-grafana-dashboards
# (scripts/addons-dashboards.sh; server-side apply, as the set is larger
# than a client-side apply's annotation may be); `kubectl apply -k
# k8s/overlays/<cluster>-addons` (the mesh and the Guestbook as kind-up.sh
# applies them, plus the addons, and the sidecars reporting spans to Zipkin:
# their pods roll); wait for every Deployment; print what the addons
# request and how to open each one. Running it again is safe.
# Remove them (with the mesh) by `scripts/down.sh kind --keep-cluster`, or
# go back to the mesh without them with `kubectl apply -k k8s/overlays/kind`
# and `kubectl -n mesh-system delete deployment prometheus grafana kiali zipkin`.
set -euo pipefail
cd "$(dirname "$0")/.."

SCRIPT=addons-up.sh
MIN_KUBECTL=1.27.0
# What the four addons request, on top of the mesh and the Guestbook
# (tests/k8s/tests/addons.rs sums the rendered overlay and checks these).
ADDONS_CPU=125m
ADDONS_MEMORY=544Mi
ADDONS=(prometheus grafana kiali zipkin)
# shellcheck source-path=SCRIPTDIR source=cluster-common.sh
source scripts/cluster-common.sh

target=${1:-kind}
case "$target" in
    kind) CONTEXT=kind-micromesh ;;
    minikube) CONTEXT=micromesh ;;
    *) die "usage: scripts/addons-up.sh [kind|minikube]" ;;
esac
OVERLAY="k8s/overlays/$target-addons"

# === prerequisites: all checked first, all reported at once ===
problems=()
check_kubectl "$MIN_KUBECTL"
command -v curl >/dev/null 2>&1 \
    || problems+=("curl is missing: install curl (it downloads Istio's dashboards)")
if command -v sha256sum >/dev/null 2>&1; then
    sha256() { sha256sum "$1" | cut -d' ' -f1; }
elif command -v shasum >/dev/null 2>&1; then
    sha256() { shasum -a 256 "$1" | cut -d' ' -f1; }
else
    problems+=("sha256sum (or shasum) is missing: install coreutils (it checks the dashboards' checksums)")
fi
report_problems
kubectl config get-contexts -o name 2>/dev/null | grep -qx "$CONTEXT" \
    || die "kubectl has no context $CONTEXT: bring the cluster up first with scripts/$target-up.sh"

# === Istio's dashboards, pinned and checked ===
lock=k8s/addons/dashboards.lock
tag="$(sed -n 's/^ISTIO_TAG=//p' "$lock")"
[ -n "$tag" ] || die "$lock names no ISTIO_TAG"
dir="$(mktemp -d)"
trap 'rm -rf "$dir"' EXIT
say "downloading Istio $tag's Grafana dashboards"
while read -r sum file; do
    url="https://raw.githubusercontent.com/istio/istio/$tag/manifests/addons/dashboards/$file"
    curl -fsSL --retry 2 -o "$dir/$file" "$url" \
        || die "cannot download $url; check the network (or a proxy) and run again"
    got="$(sha256 "$dir/$file")"
    [ "$got" = "$sum" ] \
        || die "$file from Istio $tag has sha256 $got, not the $sum pinned in $lock; refusing it (a changed or cut-short download)"
done < <(grep -E '^[0-9a-f]{64} ' "$lock")
scripts/addons-dashboards.sh "$dir" \
    | kubectl --context "$CONTEXT" apply --server-side --force-conflicts -f -

# === the addons, and the sidecars reporting to Zipkin ===
apply_and_wait

say "the addons request $ADDONS_CPU CPU and $ADDONS_MEMORY of memory, on top of the mesh and the Guestbook (README, On kind or minikube)"
cat <<NEXT

Open them through port-forwards (Ctrl-C stops one):
  kubectl --context $CONTEXT -n mesh-system port-forward svc/grafana 3000:3000      # http://localhost:3000 (Dashboards > istio)
  kubectl --context $CONTEXT -n mesh-system port-forward svc/kiali 20001:20001      # http://localhost:20001/kiali
  kubectl --context $CONTEXT -n mesh-system port-forward svc/prometheus 9090:9090   # http://localhost:9090
  kubectl --context $CONTEXT -n mesh-system port-forward svc/zipkin 9411:9411       # http://localhost:9411
Spans now go to Zipkin: meshctl traces and the mesh dashboard's Traces view stay empty.
What each shows: k8s/README.md, "Observability addons". Lab 08 uses them.
NEXT
for addon in "${ADDONS[@]}"; do
    kubectl --context "$CONTEXT" -n mesh-system get "deployment/$addon" >/dev/null \
        || die "deployment $addon is missing after the apply"
done
