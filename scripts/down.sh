#!/usr/bin/env bash
# Removes what scripts/kind-up.sh or scripts/minikube-up.sh made:
#
#   scripts/down.sh kind                    # delete the kind cluster `micromesh`
#   scripts/down.sh minikube                # delete the minikube profile `micromesh`
#   scripts/down.sh kind --keep-cluster     # keep the cluster, remove the mesh and the Guestbook
#
# Safe to run twice: what is already gone is reported, not an error.
set -euo pipefail
cd "$(dirname "$0")/.."

NAME=micromesh
die() { printf 'down.sh: %s\n' "$*" >&2; exit 1; }
usage="usage: scripts/down.sh kind|minikube [--keep-cluster]"

target="${1:-}"
keep=""
case "${2:-}" in
    "") ;;
    --keep-cluster) keep=1 ;;
    *) die "unknown option '${2}'; $usage" ;;
esac
case "$target" in
    kind) tool=kind; context="kind-$NAME" ;;
    minikube) tool=minikube; context="$NAME" ;;
    *) die "say which cluster to remove; $usage" ;;
esac
command -v "$tool" >/dev/null 2>&1 \
    || die "$tool is not installed, so there is no $target cluster of micromesh to remove"

if [ -n "$keep" ]; then
    command -v kubectl >/dev/null 2>&1 || die "kubectl is missing: install it (https://kubernetes.io/docs/tasks/tools/)"
    # The addons overlay holds the mesh, the Guestbook and the addons
    # (scripts/addons-up.sh): deleting it removes whichever were applied.
    echo "==> kubectl delete -k k8s/overlays/$target-addons (the mesh, the Guestbook, the addons if any; the cluster stays)"
    kubectl --context "$context" delete -k "k8s/overlays/$target-addons" --ignore-not-found
    exit 0
fi

case "$target" in
    kind)
        if kind get clusters 2>/dev/null | grep -qx "$NAME"; then
            echo "==> deleting the kind cluster $NAME"
            kind delete cluster --name "$NAME"
        else
            echo "==> no kind cluster $NAME; nothing to remove"
        fi
        ;;
    minikube)
        if minikube profile list -o json 2>/dev/null | grep -q "\"Name\":\"$NAME\""; then
            echo "==> deleting the minikube profile $NAME"
            minikube -p "$NAME" delete
        else
            echo "==> no minikube profile $NAME; nothing to remove"
        fi
        ;;
esac
