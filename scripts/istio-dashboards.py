#!/usr/bin/env python3
"""Run every panel query of Istio's own Grafana dashboards against a
Prometheus that scrapes a running micromesh, with the template variables
filled in the way Grafana fills them, and check that each HTTP panel has data.

    scripts/istio-dashboards.py --prometheus http://127.0.0.1:9090 \\
        --scrape-interval 1 --select namespace=default \\
        ../shared/istio/dashboards/*.json

What Grafana does, and so what this does:

- Variables are resolved in the dashboard's order. A `query_result(EXPR)`
  variable runs EXPR as an instant query, writes each result as
  `name{label="value",...} value timestamp` and keeps the variable's regex's
  first group of each line; a `custom` variable's options are its
  comma-separated query.
- The value: the one given with --select (it must be among the options,
  which is what checks the variable's own query), else the saved `current`
  (`$__all` is every option), else the first option. A variable with no
  option at all is a failure: every panel that uses it would be empty, which
  is how Istio's dashboards looked at micromesh before its sidecars had the
  namespace labels.
- Values go into a query as Grafana's Prometheus data source formats them:
  a single-valued variable as it is; a multi-valued or include-all one
  regex-escaped, several values as `(a|b)`.
- `$__rate_interval` is max($__interval + scrape interval, 4 x scrape
  interval), with `$__interval` the dashboard's time range over 1000 points,
  never below the scrape interval.
- Every `custom` variable (the reporter, `$qrep`) is tried with each of its
  options, so the source and the destination side are both checked.

Which panels may be empty, by rule and reported by name:
- TCP panels (`istio_tcp_*`): micromesh proxies HTTP only.
- Targets that split traffic by mTLS (`connection_security_policy="mutual_tls"`
  or `!=`, `destination_principal=~"spiffe.*"` or `!~`): which half has data
  depends on the reporter and the peer (see `MTLS` below).

Exit status 0 when every other target returned data, 1 otherwise.
"""

import argparse
import itertools
import json
import math
import re
import sys
import time
import urllib.parse
import urllib.request

TCP = re.compile(r"istio_tcp_")
# Istio's panels split traffic by security: `connection_security_policy=
# "mutual_tls"` and `!="mutual_tls"` (and principals). Sidecars talk mutual
# TLS by default now, so which half has data depends on the reporter and the
# peer: such a query is run once and, when empty, noted, never failed.
MTLS = re.compile(r'connection_security_policy!?="mutual_tls"|destination_principal[=!]~"spiffe')
REGEX_SPECIAL = re.compile(r"([\\^$*+?.()|{}\[\]/])")


class Prometheus:
    def __init__(self, url):
        self.url = url.rstrip("/")

    def query(self, expr):
        """The result vector of an instant query (a failed query raises)."""
        url = self.url + "/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(url, timeout=10) as response:
            body = json.load(response)
        if body.get("status") != "success":
            raise RuntimeError(f"query failed: {expr}: {body}")
        data = body["data"]
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        return data["result"]


def has_data(results):
    """True when a sample is a number: a quantile of nothing is NaN, which
    Grafana draws as no data."""
    for r in results:
        try:
            if not math.isnan(float(r["value"][1])):
                return True
        except (KeyError, ValueError):
            pass
    return False


def rate_interval(dashboard, scrape):
    """Grafana's $__rate_interval for this dashboard's default time range."""
    span = dashboard.get("time", {}).get("from", "now-30m")
    m = re.fullmatch(r"now-(\d+)([smhd])", span)
    seconds = int(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)] if m else 1800
    interval = max(scrape, math.ceil(seconds / 1000))
    return f"{max(interval + scrape, 4 * scrape)}s"


def js_regex(text):
    """Grafana's `/pattern/flags` as a Python regex."""
    m = re.fullmatch(r"/(.*)/([gimsuy]*)", text or "")
    if not m:
        return None
    flags = re.IGNORECASE if "i" in m.group(2) else 0
    return re.compile(m.group(1), flags)


def as_line(result):
    metric = dict(result["metric"])
    name = metric.pop("__name__", "")
    labels = ",".join(f'{k}="{v}"' for k, v in metric.items())
    value, ts = result["value"][1], result["value"][0]
    return f"{name}{{{labels}}} {value} {int(float(ts) * 1000)}"


def fill(text, values):
    """Substitute `$name` and `${name}` (longest names first)."""
    for name in sorted(values, key=len, reverse=True):
        text = text.replace("${" + name + "}", values[name]).replace("$" + name, values[name])
    return text


def formatted(variable, chosen):
    if not (variable.get("multi") or variable.get("includeAll")):
        return chosen[0]
    escaped = [REGEX_SPECIAL.sub(r"\\\\\1", v) for v in chosen]
    return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"


def resolve(dashboard, prometheus, selections, fixed, interval):
    """Each variable's formatted value, or raise naming the empty one."""
    values = {"__rate_interval": interval, "datasource": "prometheus"}
    for variable in dashboard.get("templating", {}).get("list", []):
        name, kind = variable["name"], variable.get("type")
        if kind == "datasource":
            continue
        if kind == "custom":
            options = [o.strip() for o in variable["query"].split(",")]
        elif kind == "query":
            query = variable["query"]
            m = re.fullmatch(r"\s*query_result\((.*)\)\s*", query, re.S)
            if not m:
                raise SystemExit(f"variable ${name}: unsupported query {query!r}")
            expr = fill(m.group(1), values)
            regex = js_regex(variable.get("regex"))
            options = []
            for result in prometheus.query(expr):
                line = as_line(result)
                if regex is None:
                    options.append(line)
                    continue
                found = regex.search(line)
                if found and found.group(1) not in options:
                    options.append(found.group(1))
            if variable.get("sort") in (1, 3, 5):
                options.sort()
            elif variable.get("sort") in (2, 4, 6):
                options.sort(reverse=True)
        else:
            raise SystemExit(f"variable ${name}: unsupported type {kind}")
        if not options:
            raise LookupError(
                f"variable ${name} has no options: its query returned nothing "
                f"({variable['query']})"
            )
        wanted = fixed.get(name) or selections.get(name)
        current = (variable.get("current") or {}).get("value")
        if wanted is not None:
            if wanted not in options:
                raise LookupError(f"variable ${name} has no option {wanted!r}; it has {options}")
            chosen = [wanted]
        elif current == "$__all" or current == ["$__all"]:
            chosen = options
        elif isinstance(current, str) and current in options:
            chosen = [current]
        else:
            chosen = [options[0]]
        values[name] = formatted(variable, chosen)
    return values


def panels(items):
    for panel in items:
        yield from panels(panel.get("panels", []))
        if panel.get("type") not in ("row", "text") and panel.get("targets"):
            yield panel


def check(dashboard_path, prometheus, selections, scrape, wait):
    """(failures, expected-empty notes, checked count) for one dashboard."""
    dashboard = json.load(open(dashboard_path))
    title = dashboard.get("title", dashboard_path)
    interval = rate_interval(dashboard, scrape)
    customs = [v for v in dashboard.get("templating", {}).get("list", []) if v.get("type") == "custom"]
    combos = itertools.product(
        *[[(v["name"], o.strip()) for o in v["query"].split(",")] for v in customs]
    )
    failures, notes, checked = [], set(), 0
    for combo in combos:
        fixed = dict(combo)
        where = ", ".join(f"${k}={v}" for k, v in combo) or "defaults"
        try:
            values = resolve(dashboard, prometheus, selections, fixed, interval)
        except LookupError as e:
            failures.append(f"{title} ({where}): {e}")
            continue
        for panel in panels(dashboard.get("panels", [])):
            name = panel.get("title", "?")
            exprs = [t["expr"] for t in panel["targets"] if t.get("expr") and not t.get("hide")]
            if any(TCP.search(e) for e in exprs):
                notes.add(f"{title} / {name}: TCP panel, micromesh proxies HTTP only")
                continue
            for expr in exprs:
                query = fill(expr, values)
                if MTLS.search(expr):
                    checked += 1
                    if not has_data(prometheus.query(query)):
                        notes.add(f"{title} / {name}: one half of its mTLS / plaintext split")
                    continue
                checked += 1
                deadline = time.monotonic() + wait
                while True:
                    ok = has_data(prometheus.query(query))
                    if ok or time.monotonic() >= deadline:
                        break
                    time.sleep(1)
                if not ok:
                    failures.append(f"{title} / {name} ({where}): no data for {query}")
    return failures, notes, checked


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prometheus", required=True)
    parser.add_argument("--scrape-interval", type=int, default=1, help="seconds")
    parser.add_argument("--select", action="append", default=[], metavar="VAR=VALUE")
    parser.add_argument("--wait", type=float, default=10, help="seconds a query may take to have data")
    parser.add_argument("dashboards", nargs="+")
    args = parser.parse_args()
    selections = dict(s.split("=", 1) for s in args.select)
    prometheus = Prometheus(args.prometheus)
    all_failures, total = [], 0
    for path in args.dashboards:
        failures, notes, checked = check(path, prometheus, selections, args.scrape_interval, args.wait)
        total += checked
        all_failures += failures
        print(f"{path}: {checked} queries run, {len(failures)} without data")
        for note in sorted(notes):
            print(f"  expected empty: {note}")
    for failure in all_failures:
        print(f"FAIL: {failure}")
    if all_failures:
        return 1
    print(f"every HTTP panel query has data ({total} queries)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
