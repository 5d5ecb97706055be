#!/usr/bin/env bash
# Istio's own Grafana dashboards against a running micromesh, through a real
# Prometheus: the conformance step for "existing dashboards work".
#
#   ./scripts/istio-dashboards.sh ../shared
#
# 1. `meshctl up` runs the Guestbook (gateway, sidecars, control plane) and
#    a loop loads its page through the gateway, so every hop has traffic.
# 2. Debian's `prometheus` scrapes every proxy's /stats/prometheus (the
#    admin addresses the control plane lists at /v1/proxies) and the control
#    plane's /metrics, once a second.
# 3. scripts/istio-dashboards.py fills each dashboard's template variables
#    as Grafana does, with namespace `default` selected, and runs every
#    panel's query: each HTTP panel must return data; TCP panels and mTLS
#    targets are listed as expected-empty, by name.
# 4. `promtool check metrics` on a sidecar's page and the control plane's:
#    the only lints allowed are the ones Istio's own pages get (the
#    sidecar's milliseconds; istiod's two counters named without `_total`).
#
# About a minute: the mesh starts in ~15 s, Prometheus needs a few scrapes.
set -euo pipefail
cd "$(dirname "$0")/.."

shared=${1:?usage: scripts/istio-dashboards.sh PATH-TO-SHARED}
dashboards="$shared/istio/dashboards"
ls "$dashboards"/*.json >/dev/null 2>&1 || { echo "no dashboards in $dashboards" >&2; exit 1; }
for tool in prometheus promtool curl python3; do
    command -v "$tool" >/dev/null || {
        echo "this check needs $tool: apt-get install prometheus curl python3 (or run scripts/setup-test-machine.sh)" >&2
        exit 1
    }
done

bin=target/debug
[ -x "$bin/meshctl" ] || cargo build --workspace --bins
export PATH="$PWD/$bin:$PATH"

work=$(mktemp -d)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
control_port=$(free_port)
gateway_port=$(free_port)
prom_port=$(free_port)
control="http://127.0.0.1:$control_port"
export MESH_WORKDIR="$work" MESH_CONTROL_URL="$control"

pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    meshctl down >/dev/null 2>&1 || true
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

echo "--- the Guestbook, with traffic"
meshctl up --control-port "$control_port" --gateway-port "$gateway_port" >"$work/up.log" 2>&1 &
pids+=($!)
for _ in $(seq 600); do grep -q "micromesh is up" "$work/up.log" && break; sleep 0.2; done
grep -q "micromesh is up" "$work/up.log" || { cat "$work/up.log"; echo "FAIL: meshctl up did not come up"; exit 1; }
page="http://127.0.0.1:$gateway_port/"
( while :; do curl -s -o /dev/null "$page" || true; sleep 0.05; done ) &
pids+=($!)

echo "--- Prometheus scraping every proxy and the control plane"
targets=$(curl -sf "$control/v1/proxies" | python3 -c '
import json, sys
print(", ".join(repr(p["adminAddress"]) for p in json.load(sys.stdin) if p.get("adminAddress")))')
[ -n "$targets" ] || { echo "FAIL: the control plane lists no proxy admin address"; exit 1; }
cat >"$work/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  scrape_timeout: 900ms
scrape_configs:
- job_name: envoy-stats
  metrics_path: /stats/prometheus
  static_configs: [{targets: [$targets]}]
- job_name: pilot
  metrics_path: /metrics
  static_configs: [{targets: ['127.0.0.1:$control_port']}]
EOF
prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/tsdb" \
    --web.listen-address="127.0.0.1:$prom_port" >"$work/prometheus.log" 2>&1 &
pids+=($!)
prom="http://127.0.0.1:$prom_port"
for _ in $(seq 150); do curl -sf "$prom/-/ready" >/dev/null && break; sleep 0.2; done
curl -sf "$prom/-/ready" >/dev/null || { cat "$work/prometheus.log"; echo "FAIL: prometheus did not start"; exit 1; }
echo "scraping: $targets and 127.0.0.1:$control_port"
# A rate needs two scrapes inside its window ($__rate_interval is 4 s here).
sleep 6

echo "--- every panel of Istio's dashboards, namespace default selected"
failures=0
python3 scripts/istio-dashboards.py --prometheus "$prom" --scrape-interval 1 \
    --select namespace=default --select workload=guestbook-ui \
    --select service=helloworld-service.default.svc.cluster.local \
    "$dashboards"/*.json || failures=$((failures + 1))

echo "--- promtool check metrics"
istio_lints='istio_request_duration_milliseconds use base unit "seconds" instead of "milliseconds"
pilot_xds_pushes counter metrics should have "_total" suffix
pilot_total_xds_rejects counter metrics should have "_total" suffix'
lint() {
    local what=$1 url=$2 body out
    if ! body=$(curl -sf "$url"); then
        echo "FAIL: $what: cannot read $url"
        failures=$((failures + 1))
        return
    fi
    out=$(promtool check metrics <<<"$body" 2>&1 | grep -vxF "$istio_lints" || true)
    if [ -n "$out" ]; then
        echo "FAIL: promtool on $what: $out"
        failures=$((failures + 1))
    else
        echo "ok: $what: only Istio's own lints"
    fi
}
first=$(tr -d "' " <<<"${targets%%,*}")
lint "a sidecar ($first)" "http://$first/stats/prometheus"
lint "the control plane" "$control/metrics"

echo
if [ "$failures" -gt 0 ]; then
    echo "istio-dashboards: $failures failure(s)"
    exit 1
fi
echo "istio-dashboards: all checks passed"
