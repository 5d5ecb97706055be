#!/usr/bin/env bash
# The ConfigMap that holds Grafana's dashboards, made from a directory of
# Grafana dashboard JSON files (Istio's, which scripts/addons-up.sh
# downloads from the release pinned in k8s/addons/dashboards.lock):
#
#   scripts/addons-dashboards.sh DIR > dashboards.yaml
#
# Prints the ConfigMap `istio-grafana-dashboards` (namespace mesh-system)
# with one key per *.json file; k8s/addons/grafana.yaml mounts it where its
# dashboard provider looks. Refuses a file that is not a Grafana dashboard
# (a JSON object with "panels") and a set too big for one ConfigMap (the API
# server stores at most 1 MiB per object). Needs kubectl (its
# `create configmap --dry-run=client` writes the YAML; no cluster is used).
set -euo pipefail

SCRIPT=addons-dashboards.sh
die() { printf '%s: %s\n' "$SCRIPT" "$*" >&2; exit 1; }

dir=${1:-}
[ -n "$dir" ] || die "usage: scripts/addons-dashboards.sh DIR (a directory of Grafana dashboard JSON files)"
[ -d "$dir" ] || die "$dir is not a directory"
command -v kubectl >/dev/null 2>&1 \
    || die "kubectl is missing: install kubectl 1.27 or newer (https://kubernetes.io/docs/tasks/tools/)"

shopt -s nullglob
files=("$dir"/*.json)
[ ${#files[@]} -gt 0 ] || die "no *.json file in $dir"

# A ConfigMap's whole object must stay under 1 MiB; leave room for the
# metadata and the YAML quoting.
limit=$((1024 * 1024 - 16 * 1024))
total=0
args=()
for file in "${files[@]}"; do
    first="$(head -c 64 "$file" | tr -d ' \t\r\n' | head -c 1)"
    if [ "$first" != "{" ] || ! grep -q '"panels"' "$file"; then
        die "$file is not a Grafana dashboard (a JSON object with \"panels\"); was the download cut short or replaced by an error page?"
    fi
    total=$((total + $(wc -c < "$file")))
    args+=("--from-file=$file")
done
[ "$total" -le "$limit" ] \
    || die "the dashboards in $dir add up to $total bytes, more than one ConfigMap holds ($limit); install fewer"

kubectl create configmap istio-grafana-dashboards --namespace mesh-system \
    "${args[@]}" --dry-run=client -o yaml
