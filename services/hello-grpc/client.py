#!/usr/bin/env python3
"""hello-grpc client: many calls on one gRPC channel, and who answered them.

A gRPC channel opens one HTTP/2 connection and sends every call on it, as
streams. Whoever balances *connections* (a Kubernetes Service: kube-proxy
picks a pod when the connection opens) therefore sends every call to the
same server. The mesh's sidecar balances *requests*: each call picks its
instance. This client shows the difference by counting the instances that
answered:

    # straight to the servers, no mesh: one connection, one server
    python3 services/hello-grpc/client.py --direct ADDR1,ADDR2,ADDR3 --calls 300

    # through this app's sidecar (meshed): the calls spread
    meshctl exec hello-grpc-client -- python3 services/hello-grpc/client.py --calls 300

Like the other Guestbook apps it calls the service by name
(`hello-grpc:8080`) and lets its sidecar route. grpcio would send a proxy
`CONNECT` (an opaque tunnel) if it saw HTTP_PROXY, which a sidecar cannot
route or balance; so the client dials its sidecar itself (the address in
HTTP_PROXY) and names the service in `:authority`, the way HTTP/1.1 apps
name it in the request line. In transparent mode (iptables, as Istio
does) the app would simply dial `hello-grpc:8080`.

`--direct` takes the servers' addresses and, like kube-proxy, picks one at
random for the connection: every call then lands there.

`--serve` (or HELLO_GRPC_CLIENT_MODE=serve, how `meshctl up` starts it)
runs no calls: it answers `GET /health` on PORT and waits, so the mesh can
keep a meshed client instance around to `meshctl exec` into (Istio's
samples do the same with their `sleep` pod).

Output: one line per instance with its count, then failures by gRPC code.
`--each` prints one line per call instead (the instance, or the code of a
failed call), for `grep -c`.
"""

import argparse
import json
import os
import random
import sys
import urllib.parse
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import List, Mapping, Optional, Tuple

import grpc

METHOD = "/hello.Greeter/SayHello"


class UsageError(ValueError):
    """A bad flag or environment; the message says what to write."""


def sidecar_address(env: Mapping[str, str]) -> str:
    """`host:port` of this app's sidecar, from HTTP_PROXY (set by the mesh)."""
    proxy = env.get("HTTP_PROXY") or env.get("http_proxy") or ""
    if not proxy:
        raise UsageError(
            "no sidecar: HTTP_PROXY is not set. Run the client in a meshed instance "
            "(meshctl exec hello-grpc-client -- python3 services/hello-grpc/client.py), "
            "or call servers directly with --direct HOST:PORT[,HOST:PORT...]"
        )
    parsed = urllib.parse.urlsplit(proxy if "://" in proxy else "http://" + proxy)
    if not parsed.hostname or not parsed.port:
        raise UsageError(f"HTTP_PROXY={proxy!r} names no host and port; the mesh sets it like http://127.0.0.1:15001")
    return f"{parsed.hostname}:{parsed.port}"


def pick_direct(addresses: str, rng: random.Random) -> str:
    """One address of a comma-separated list, at random: a connection-level balancer."""
    choices = [a.strip() for a in addresses.split(",") if a.strip()]
    if not choices:
        raise UsageError("--direct needs at least one HOST:PORT")
    return rng.choice(choices)


def open_channel(address: str, authority: str) -> grpc.Channel:
    """One channel, hence one HTTP/2 connection, to `address`, naming `authority`."""
    return grpc.insecure_channel(
        address,
        options=[
            ("grpc.default_authority", authority),
            # Dial `address` ourselves; never tunnel through HTTP_PROXY with CONNECT.
            ("grpc.enable_http_proxy", 0),
        ],
    )


def call_many(channel: grpc.Channel, calls: int, name: str, timeout: float) -> List[Tuple[str, str]]:
    """Make `calls` unary calls one after another; per call (instance or "", error code or "")."""
    say_hello = channel.unary_unary(METHOD)  # no serializers: bytes in, bytes out
    request = json.dumps({"name": name}).encode("utf-8")
    results = []
    for _ in range(calls):
        try:
            answer = json.loads(say_hello(request, timeout=timeout))
            results.append((answer.get("hostname", "?"), ""))
        except grpc.RpcError as err:
            results.append(("", err.code().name))
    return results


def report(results: List[Tuple[str, str]], where: str) -> str:
    """The summary: who answered how many, then failures by code."""
    answered = Counter(h for h, code in results if not code)
    failed = Counter(code for _, code in results if code)
    lines = [f"{len(results)} calls on one channel to {where}: {sum(answered.values())} answered, {sum(failed.values())} failed"]
    lines += [f"{count:6d} {host}" for host, count in sorted(answered.items())]
    lines += [f"{count:6d} {code}" for code, count in sorted(failed.items())]
    return "\n".join(lines)


# === --serve: an idle meshed instance ===


class HealthHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 (the name http.server looks for)
        status, body = (200, b"ok") if self.path == "/health" else (404, b"try GET /health\n")
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (http.server's name)
        pass  # health probes every quarter second would drown the log


def serve(env: Mapping[str, str]) -> int:
    host = env.get("HOST") or "0.0.0.0"
    port_text = env.get("PORT") or "8080"
    try:
        port = int(port_text)
    except ValueError:
        print(f"hello-grpc client: PORT={port_text!r} is not a number; set PORT to a port like 8080", file=sys.stderr)
        return 2
    server = ThreadingHTTPServer((host, port), HealthHandler)
    server.daemon_threads = True
    print(
        f"hello-grpc client idle on http://{host}:{server.server_address[1]}/health; "
        "run calls with `meshctl exec hello-grpc-client -- python3 services/hello-grpc/client.py`",
        file=sys.stderr,
        flush=True,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def main(argv: Optional[List[str]] = None, env: Mapping[str, str] = os.environ) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=30, help="how many calls, one after another (default 30)")
    parser.add_argument("--name", default="grpc", help="the name to greet")
    parser.add_argument("--service", default="hello-grpc:8080", help="the service called, as :authority")
    parser.add_argument("--direct", metavar="HOST:PORT[,...]", help="no mesh: one connection to one of these")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per call (gRPC deadline)")
    parser.add_argument("--each", action="store_true", help="one line per call instead of the summary")
    parser.add_argument("--serve", action="store_true", help="answer GET /health on PORT and wait")
    args = parser.parse_args(argv)
    if args.serve or env.get("HELLO_GRPC_CLIENT_MODE") == "serve":
        return serve(env)
    if args.calls < 1:
        parser.error(f"--calls {args.calls}: make at least one call")
    try:
        if args.direct:
            address = pick_direct(args.direct, random.Random())
            where = f"{address} (a server, directly)"
        else:
            address = sidecar_address(env)
            where = f"{args.service} through the sidecar at {address}"
    except UsageError as err:
        print(f"hello-grpc client: {err}", file=sys.stderr)
        return 2
    with open_channel(address, args.service) as channel:
        results = call_many(channel, args.calls, args.name, args.timeout)
    if args.each:
        print("\n".join(host or code for host, code in results))
    else:
        print(report(results, where))
    return 0


if __name__ == "__main__":
    sys.exit(main())
