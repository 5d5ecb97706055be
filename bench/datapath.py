"""The data-path cases of the benchmark: big bodies, WebSocket, gRPC.

The request cases in bench.py measure what a sidecar costs per small
request. Issue 14 made the data path carry more than small requests: bodies
stream (no size limit, RSS flat), WebSockets are spliced as tunnels, and
HTTP/2 and gRPC cross both sidecars. These cases check that each of those
works through the full mesh path (client -> sidecar outbound -> sidecar
inbound -> upstream) and what it costs, against the same thing without a
proxy (or, for gRPC, through Envoy):

  upload-10MiB     one 10 MiB POST; MB/s direct vs through the mesh path,
                   and how much each sidecar's RSS grew (a streamed body
                   should not grow it by anything like 10 MiB);
  download-10MiB   one 10 MiB GET of a static file, the same numbers;
  websocket-echo   round trips of a 32-byte message on one WebSocket to a
                   stdlib echo server: p50 and p99, direct vs the mesh path;
  grpc-unary       h2load (nghttp2-client) sends gRPC-shaped unary calls
                   (POST, content-type application/grpc, one 5-byte-framed
                   message) on one HTTP/2 connection, 10 streams at once, to
                   an nginx answering over cleartext HTTP/2: calls/s and the
                   proxies' CPU per call, the mesh path against Envoy
                   (HTTP/2 both sides). nginx is not a gRPC server (no
                   trailers), so the upstream costs the same under both
                   proxies and stays out of the comparison.

Each case starts what it needs and stops it; `run_round` runs them all once.
"""

import base64
import hashlib
import http.client
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import threading
import time
from pathlib import Path

DATA_CASES = ["upload-10MiB", "download-10MiB", "websocket-echo", "grpc-unary"]
BLOB_BYTES = 10 * 1024 * 1024
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


# === parsing (tested in test_bench.py) ===


def parse_h2load(text):
    """(succeeded, failed, seconds, req/s) from h2load's summary, or a RuntimeError."""
    finished = re.search(r"finished in ([\d.]+)(m?s), ([\d.]+) req/s", text)
    requests = re.search(r"requests: (\d+) total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed", text)
    if not finished or not requests:
        raise RuntimeError(f"h2load printed no summary:\n{text.strip()[-600:]}")
    seconds = float(finished.group(1)) / (1000.0 if finished.group(2) == "ms" else 1.0)
    return int(requests.group(2)), int(requests.group(3)), seconds, float(finished.group(3))


def grpc_frame(payload):
    """One gRPC message: not compressed, 4-byte big-endian length, payload."""
    return b"\x00" + len(payload).to_bytes(4, "big") + payload


def ws_accept(key):
    """The Sec-WebSocket-Accept for a Sec-WebSocket-Key (RFC 6455, 4.2.2)."""
    return base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()


# === upstreams ===


def data_upstream_conf(workdir, h1_port, h2_port):
    """nginx: /blob (a 10 MiB file) and POST /upload on HTTP/1.1; gRPC-shaped
    answers on cleartext HTTP/2 (prior knowledge, as gRPC and the sidecars speak it)."""
    return f"""
worker_processes 1;
daemon off;
error_log {workdir}/data-upstream-error.log warn;
pid {workdir}/data-upstream.pid;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {workdir}/client_body;
    proxy_temp_path {workdir}/proxy_temp;
    fastcgi_temp_path {workdir}/fastcgi_temp;
    uwsgi_temp_path {workdir}/uwsgi_temp;
    scgi_temp_path {workdir}/scgi_temp;
    server {{
        listen 127.0.0.1:{h1_port};
        client_max_body_size 0;
        root {workdir}/data;
        location = /upload {{ return 200 "stored\\n"; }}
    }}
    server {{
        listen 127.0.0.1:{h2_port} http2;
        location / {{
            default_type application/grpc;
            return 200 "";
        }}
    }}
}}
"""


class EchoServer:
    """A WebSocket echo server on 127.0.0.1, standard library only: one
    thread per connection, unmasked answers to masked client frames."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.closed = False
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while not self.closed:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.serve, args=(conn,), daemon=True).start()

    def serve(self, conn):
        with conn:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                head += chunk
            key = re.search(rb"(?im)^sec-websocket-key:\s*(\S+)", head)
            if not key:
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
                return
            conn.sendall(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                          f"Sec-WebSocket-Accept: {ws_accept(key.group(1).decode())}\r\n\r\n").encode())
            reader = conn.makefile("rb")
            while True:
                frame = read_frame(reader)
                if frame is None or frame[0] == 0x8:  # closed, or a close frame
                    return
                conn.sendall(make_frame(frame[1], mask=False))

    def stop(self):
        self.closed = True
        self.sock.close()


def make_frame(payload, mask=True):
    """One final binary frame; a client's is masked (RFC 6455, 5.3)."""
    head = bytearray([0x82])
    length = len(payload)
    bit = 0x80 if mask else 0
    if length < 126:
        head.append(bit | length)
    else:
        head.append(bit | 126)
        head += length.to_bytes(2, "big")
    if not mask:
        return bytes(head) + payload
    key = os.urandom(4)
    return bytes(head) + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def read_frame(reader):
    """(opcode, payload) of the next frame, or None at the end of the stream."""
    head = reader.read(2)
    if len(head) < 2:
        return None
    opcode, length, masked = head[0] & 0x0F, head[1] & 0x7F, head[1] & 0x80
    if length == 126:
        length = int.from_bytes(reader.read(2), "big")
    elif length == 127:
        length = int.from_bytes(reader.read(8), "big")
    key = reader.read(4) if masked else None
    payload = reader.read(length)
    if key:
        payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return opcode, payload


# === clients ===


def attempt(check):
    """`check()` as a readiness probe: an exception (refused, reset) is "not yet"."""
    def probe():
        try:
            return check()
        except (OSError, RuntimeError, http.client.HTTPException):
            return False
    return probe


def transfer(port, method, path, host, body=None):
    """(bytes moved, seconds, status) of one request with a 10 MiB body up or down."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    start = time.perf_counter()
    conn.request(method, path, body=body, headers={"Host": host})
    rsp = conn.getresponse()
    received = 0
    while True:
        chunk = rsp.read(256 * 1024)
        if not chunk:
            break
        received += len(chunk)
    seconds = time.perf_counter() - start
    conn.close()
    return (len(body) if body else received), seconds, rsp.status


def ws_round_trips(port, host, count):
    """Round-trip times (µs) of `count` 32-byte messages on one WebSocket."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET /echo HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    reader = sock.makefile("rb")
    status = reader.readline()
    if b" 101 " not in status:
        raise RuntimeError(f"WebSocket upgrade through 127.0.0.1:{port} refused: {status!r}")
    while reader.readline() not in (b"\r\n", b""):
        pass
    payload = b"x" * 32
    times = []
    for _ in range(count):
        start = time.perf_counter()
        sock.sendall(make_frame(payload))
        frame = read_frame(reader)
        if frame is None or frame[1] != payload:
            raise RuntimeError(f"WebSocket echo through 127.0.0.1:{port} broke: {frame!r:.100}")
        times.append((time.perf_counter() - start) * 1e6)
    sock.close()
    return times


# === the cases ===


class DataPath:
    """Runs the data-path cases with the request cases' machinery (`bench`)."""

    def __init__(self, bench, b):
        """`bench`: bench.py's Bench; `b`: bench.py itself (Proc, Running, envoy_conf, ...)."""
        self.bench = bench
        self.b = b
        self.workdir = Path(bench.workdir)
        self.upstream = None
        self.h2load_path = shutil.which("h2load")
        if not self.h2load_path:
            b.fail("the grpc-unary case needs h2load (apt-get install nghttp2-client; "
                   "./scripts/bench.sh installs it), or leave it out with --data-cases")

    def start_upstream(self):
        data = self.workdir / "data"
        data.mkdir(exist_ok=True)
        blob = data / "blob"
        if not blob.exists():
            blob.write_bytes(os.urandom(BLOB_BYTES))
        # nginx started by root serves files as `nobody`: the file must be
        # readable and the private work dir passable (not listable) by others.
        os.chmod(self.workdir, 0o711)
        os.chmod(data, 0o755)
        os.chmod(blob, 0o644)
        self.h1_port, self.h2_port = self.b.free_port(), self.b.free_port()
        conf = self.workdir / "data-upstream.conf"
        conf.write_text(data_upstream_conf(self.workdir, self.h1_port, self.h2_port))
        self.upstream = self.b.Proc("data-upstream-nginx", [self.bench.tools.nginx, "-p", str(self.workdir),
                                                          "-c", str(conf)],
                                  str(self.workdir), core=self.bench.load_core)
        self.b.wait_until("starting the data upstream",
                          attempt(lambda: transfer(self.h1_port, "POST", "/upload", "upstream:8080", b"x")[2] == 200),
                          10, [self.upstream])

    def stop(self):
        if self.upstream:
            self.upstream.stop()
            self.upstream = None

    def mesh_path(self, app_port):
        """The two-sidecar mesh path in front of `app_port` (bench.py's own, telemetry off)."""
        saved = self.bench.upstream_port
        self.bench.upstream_port = app_port
        try:
            running = self.bench.start_micromesh(hops=2, telemetry="off")
        finally:
            self.bench.upstream_port = saved
        return running

    def wait_routed(self, running, probe):
        try:
            self.b.wait_until("waiting for the mesh path to route", attempt(probe), 30,
                              running.proxies + running.helpers)
        except RuntimeError:
            running.stop()
            raise

    def rss(self, running):
        """VmRSS in kB of each sidecar."""
        return [self.b.memory_kb(p.tree())[0] or 0 for p in running.proxies]

    def bodies(self, case):
        up = case.startswith("upload")
        method, path = ("POST", "/upload") if up else ("GET", "/blob")
        body = os.urandom(BLOB_BYTES) if up else None
        direct = transfer(self.h1_port, method, path, "upstream:8080", body)
        running = self.mesh_path(self.h1_port)
        try:
            self.wait_routed(running, lambda: transfer(running.port, "POST", "/upload",
                                                       "upstream:8080", b"x")[2] == 200)
            before = self.rss(running)
            meshed = transfer(running.port, method, path, "upstream:8080", body)
            after = self.rss(running)
        finally:
            running.stop()
        for label, (moved, _, status) in (("direct", direct), ("mesh path", meshed)):
            if status != 200 or moved != BLOB_BYTES:
                raise RuntimeError(f"{case} {label}: status {status}, {moved} of {BLOB_BYTES} bytes")
        return {
            "case": case,
            "direct_mb_s": BLOB_BYTES / direct[1] / 1e6,
            "mesh_mb_s": BLOB_BYTES / meshed[1] / 1e6,
            "rss_before_kb": max(before), "rss_after_kb": max(after),
            "rss_growth_kb": max(a - b for a, b in zip(after, before)),
        }

    def websocket(self, count):
        echo = EchoServer()
        try:
            direct = ws_round_trips(echo.port, "upstream:8080", count)
            running = self.mesh_path(echo.port)
            try:
                self.wait_routed(running, lambda: ws_round_trips(running.port, "upstream:8080", 1))
                meshed = ws_round_trips(running.port, "upstream:8080", count)
            finally:
                running.stop()
        finally:
            echo.stop()

        def pct(values, q):
            return statistics.quantiles(values, n=100)[q - 1] if len(values) > 1 else values[0]
        return {"case": "websocket-echo", "messages": count,
                "direct_p50_us": statistics.median(direct), "direct_p99_us": pct(direct, 99),
                "mesh_p50_us": statistics.median(meshed), "mesh_p99_us": pct(meshed, 99)}

    def h2load(self, port, calls, authority):
        payload = self.workdir / "grpc-request.bin"
        payload.write_bytes(grpc_frame(b'{"name":"bench"}'))
        argv = self.bench.pinned([self.h2load_path, "-n", str(calls), "-c", "1", "-m", "10",
                                  "-d", str(payload), "-H", "content-type: application/grpc",
                                  "-H", "te: trailers", "-H", f":authority: {authority}",
                                  f"http://127.0.0.1:{port}/hello.Greeter/SayHello"])
        out = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        return parse_h2load(out.stdout + out.stderr)

    def grpc(self, calls):
        result = {"case": "grpc-unary", "calls": calls}
        # Through the mesh path: the client sidecar's outbound takes HTTP/2
        # with prior knowledge, as a gRPC app sends it.
        running = self.mesh_path(self.h2_port)
        try:
            self.wait_routed(running, lambda: self.h2load(running.port, 1, "upstream:8080")[0] == 1)
            result.update(self.measure_h2(running, calls, "mesh"))
        finally:
            running.stop()
        envoy = self.start_envoy_h2()
        try:
            self.wait_routed(envoy, lambda: self.h2load(envoy.port, 1, "upstream:8080")[0] == 1)
            result.update(self.measure_h2(envoy, calls, "envoy"))
        finally:
            envoy.stop()
        return result

    def measure_h2(self, running, calls, label):
        pids = running.proxy_pids()
        self.h2load(running.port, max(calls // 10, 1), "upstream:8080")  # warm up
        cpu0 = self.b.runtime_seconds(pids)
        ok, failed, seconds, rate = self.h2load(running.port, calls, "upstream:8080")
        cpu = self.b.runtime_seconds(pids) - cpu0
        if failed or ok != calls:
            raise RuntimeError(f"grpc-unary through {label}: {ok} of {calls} calls succeeded, {failed} failed")
        return {f"{label}_calls_s": rate, f"{label}_cpu_us_per_call": cpu * 1e6 / calls}

    def start_envoy_h2(self):
        """Envoy with HTTP/2 both sides: codec AUTO downstream, h2 to the upstream."""
        # The request cases' Envoy config, its cluster made HTTP/2.
        port, admin = self.b.free_port(), self.b.free_port()
        conf = self.b.envoy_conf(port, self.h2_port, admin)
        for cluster in conf["static_resources"]["clusters"]:
            cluster["typed_extension_protocol_options"] = {
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                    "explicit_http_config": {"http2_protocol_options": {}},
                }
            }
        path = self.workdir / "envoy-h2.json"
        path.write_text(json.dumps(conf, indent=1))
        proc = self.b.Proc("envoy-h2", [self.bench.tools.envoy, "-c", str(path), "--concurrency", "1",
                                      "--disable-hot-restart", "-l", "warning"],
                         str(self.workdir), core=self.bench.proxy_core)
        return self.b.Running(port, [proc])

    def run_round(self, cases, smoke):
        results = []
        for case in cases:
            t = time.monotonic()
            if case in ("upload-10MiB", "download-10MiB"):
                r = self.bodies(case)
                line = (f"direct {r['direct_mb_s']:>7.0f} MB/s   mesh path {r['mesh_mb_s']:>7.0f} MB/s   "
                        f"sidecar RSS +{r['rss_growth_kb']} kB")
            elif case == "websocket-echo":
                r = self.websocket(200 if smoke else 2000)
                line = (f"p50 direct {r['direct_p50_us']:>5.0f} µs   mesh path {r['mesh_p50_us']:>5.0f} µs   "
                        f"p99 {r['direct_p99_us']:.0f} / {r['mesh_p99_us']:.0f} µs")
            else:
                r = self.grpc(2000 if smoke else 50000)
                line = (f"mesh path {r['mesh_calls_s']:>7.0f} calls/s {r['mesh_cpu_us_per_call']:>6.1f} µs CPU/call   "
                        f"envoy {r['envoy_calls_s']:>7.0f} calls/s {r['envoy_cpu_us_per_call']:>6.1f} µs CPU/call")
            print(f"  {case:<20} {line}   ({time.monotonic() - t:.0f} s)", flush=True)
            results.append(r)
        return results


def print_data_path(rounds, out):
    """Medians over rounds of each data-path case, as a markdown table."""
    if not rounds:
        return
    by_case = {}
    for results in rounds:
        for r in results:
            by_case.setdefault(r["case"], []).append(r)

    def med(case, key):
        return statistics.median(r[key] for r in by_case[case])
    print("\n## Data path (issue 14): medians over rounds\n", file=out)
    print("| case | without the mesh | through the mesh path | note |", file=out)
    print("|---|---|---|---|", file=out)
    for case in ("upload-10MiB", "download-10MiB"):
        if case in by_case:
            print(f"| {case} | {med(case, 'direct_mb_s'):.0f} MB/s | {med(case, 'mesh_mb_s'):.0f} MB/s "
                  f"({med(case, 'mesh_mb_s') / med(case, 'direct_mb_s'):.0%}) | sidecar RSS "
                  f"{med(case, 'rss_before_kb') / 1024:.1f} -> {med(case, 'rss_after_kb') / 1024:.1f} MB |", file=out)
    if "websocket-echo" in by_case:
        c = "websocket-echo"
        print(f"| {c} round trip | p50 {med(c, 'direct_p50_us'):.0f} µs, p99 {med(c, 'direct_p99_us'):.0f} µs | "
              f"p50 {med(c, 'mesh_p50_us'):.0f} µs, p99 {med(c, 'mesh_p99_us'):.0f} µs | one connection, "
              f"32-byte messages |", file=out)
    if "grpc-unary" in by_case:
        c = "grpc-unary"
        print(f"| {c} (vs Envoy, HTTP/2 both sides) | Envoy {med(c, 'envoy_calls_s'):.0f} calls/s, "
              f"{med(c, 'envoy_cpu_us_per_call'):.1f} µs CPU/call | {med(c, 'mesh_calls_s'):.0f} calls/s, "
              f"{med(c, 'mesh_cpu_us_per_call'):.1f} µs CPU/call (two sidecars) | h2load, 1 connection, "
              f"10 streams |", file=out)
