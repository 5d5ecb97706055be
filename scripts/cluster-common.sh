# shellcheck shell=bash
# What scripts/kind-up.sh and scripts/minikube-up.sh share: the prerequisite
# checks, the workspace version, and the steps after the cluster exists
# (build and load the images, apply the overlay, wait for every Deployment).
# Sourced, never run; the caller sets `set -euo pipefail`, SCRIPT (its own
# name, for messages), CONTEXT, OVERLAY and IMAGES, and collects
# prerequisite problems in the array `problems`.

say() { printf '==> %s\n' "$*"; }
die() { printf '%s: %s\n' "$SCRIPT" "$*" >&2; exit 1; }
# version_ge A B: whether version A >= version B (dotted numbers).
version_ge() { [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n1)" = "$2" ]; }

# check_kubectl MIN: kubectl present and at least MIN (kustomize v5 is in
# kubectl 1.27+); sets kubectl_version.
check_kubectl() {
    if ! command -v kubectl >/dev/null 2>&1; then
        problems+=("kubectl is missing: install kubectl $1 or newer (https://kubernetes.io/docs/tasks/tools/)")
        return
    fi
    kubectl_version="$(kubectl version --client 2>/dev/null | sed -n 's/^Client Version: v\([0-9][0-9.]*\).*/\1/p')"
    if [ -z "$kubectl_version" ] || ! version_ge "$kubectl_version" "$1"; then
        problems+=("kubectl ${kubectl_version:-(unknown version)} is too old: 'kubectl apply -k' needs kustomize v5, in kubectl $1+; install a newer one (https://kubernetes.io/docs/tasks/tools/)")
    fi
}

# report_problems: every missing prerequisite at once, then stop.
report_problems() {
    if [ ${#problems[@]} -gt 0 ]; then
        printf '%s: cannot start, %d prerequisite(s) missing:\n' "$SCRIPT" "${#problems[@]}" >&2
        printf '  - %s\n' "${problems[@]}" >&2
        exit 1
    fi
}

# The images' tag: the workspace version (never `latest`).
workspace_version() {
    VERSION="$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' Cargo.toml)"
    [ -n "$VERSION" ] || die "no version in Cargo.toml's [workspace.package]; run this from a micromesh checkout"
}

# build_and_load LOADER: build the images (unless SKIP_BUILD) and hand each
# to LOADER (a function taking the image reference) to put it on the node.
build_and_load() {
    if [ -n "${SKIP_BUILD:-}" ]; then
        say "SKIP_BUILD set: using the micromesh/*:$VERSION images already built"
    else
        say "building the images, tag $VERSION (scripts/build-images.sh; the first build takes minutes)"
        TAG="$VERSION" scripts/build-images.sh
    fi
    local name ref
    for name in "${IMAGES[@]}"; do
        ref="micromesh/$name:$VERSION"
        docker image inspect "$ref" >/dev/null 2>&1 \
            || die "image $ref is missing: run 'TAG=$VERSION scripts/build-images.sh' (or this script without SKIP_BUILD)"
        "$1" "$ref"
    done
}

# apply_and_wait: `kubectl apply -k` the overlay, then wait for every
# Deployment with one progress line each.
apply_and_wait() {
    say "kubectl apply -k $OVERLAY"
    kubectl --context "$CONTEXT" apply -k "$OVERLAY"
    local deployments=() ns d entry name t0 i=0
    for ns in mesh-system guestbook; do
        for d in $(kubectl --context "$CONTEXT" -n "$ns" get deployments -o name); do
            deployments+=("$ns/${d#*/}")
        done
    done
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
}
