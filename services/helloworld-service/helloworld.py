#!/usr/bin/env python3
"""helloworld-service: the Guestbook's greeting service (Python, standard library only).

Where it sits in the request path:

    user -> gateway -> guestbook-ui -> [sidecar] -> helloworld-service (this file)

guestbook-ui calls `GET http://helloworld-service:8080/hello/{name}` and shows
the greeting, the version and the hostname, so you can see on the page which
instance (v1 "Hello" or v2 "Hola") the mesh routed the request to. This is the
service the canary, fault-injection and retry labs steer traffic to.

Run it:

    python3 services/helloworld-service/helloworld.py
    curl localhost:8080/hello/ray
    # {"greeting": "Hello ray", "version": "v1", "hostname": "..."}

    GREETING=Hola VERSION=v2 PORT=8081 python3 services/helloworld-service/helloworld.py

Environment (bad values stop the process at start with a message naming the
variable):

    HOST          bind address, default 0.0.0.0
    PORT          listen port, default 8080 (0 picks a free port)
    VERSION       version reported in answers, default v1
    HOSTNAME      instance name reported in answers (like a pod name),
                  default: the OS hostname
    GREETING      first word of the greeting, default Hello (v2 runs with Hola)
    FAILURE_RATE  0.0..1.0: that share of /hello requests answer 503, for the
                  resilience labs (retries, outlier detection), default 0
    DELAY_MS      milliseconds to wait before answering /hello, for the
                  timeout labs, default 0
    OTEL_EXPORTER_OTLP_TRACES_ENDPOINT
                  where to send this service's own span (OTLP/HTTP JSON),
                  e.g. http://127.0.0.1:15010/v1/traces (the control plane's
                  collector); OTEL_EXPORTER_OTLP_ENDPOINT + /v1/traces also
                  works (OpenTelemetry's names). Default: no span is sent
    OTEL_SERVICE_NAME  the span's service, default helloworld-service

This service calls no other service, so it has no trace headers to forward;
the services that do call others (guestbook-ui, guestbook-service) forward
them, and say why. It does *read* them: with an OTLP endpoint set it reports
one span of its own ("greet", the work inside the request), as an app with
an OpenTelemetry SDK would, under the span its sidecar recorded, so the
trace shows the app's part as well as the mesh's (see export_span).
"""

import json
import os
import random
import socket
import sys
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Mapping


# === Config ===


class ConfigError(ValueError):
    """A bad environment variable; the message names it and says what to write."""


@dataclass(frozen=True)
class Config:
    host: str = "0.0.0.0"
    port: int = 8080
    version: str = "v1"
    hostname: str = ""
    greeting: str = "Hello"
    failure_rate: float = 0.0
    delay_ms: int = 0
    otlp_endpoint: str = ""
    service_name: str = "helloworld-service"


def load_config(env: Mapping[str, str]) -> Config:
    """Read the config from a mapping (os.environ in main, a dict in tests).

    Taking a mapping rather than reading os.environ here keeps the parsing
    testable without touching the process environment (the linkerd
    `Strings::get` shape the Rust services use too).
    """

    def get(name: str, default: str) -> str:
        value = env.get(name, "")
        return value if value.strip() != "" else default

    port_text = get("PORT", "8080")
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigError(f"PORT={port_text!r} is not a number; set PORT to a port like 8080") from None
    if not 0 <= port <= 65535:
        raise ConfigError(f"PORT={port} is out of range; set PORT between 0 and 65535")

    rate_text = get("FAILURE_RATE", "0")
    try:
        failure_rate = float(rate_text)
    except ValueError:
        raise ConfigError(
            f"FAILURE_RATE={rate_text!r} is not a number; set it between 0.0 and 1.0 (0.5 fails half the requests)"
        ) from None
    # `not (a <= x <= b)` also rejects NaN, which every comparison answers False.
    if not 0.0 <= failure_rate <= 1.0:
        raise ConfigError(
            f"FAILURE_RATE={rate_text} is out of range; set it between 0.0 and 1.0 (0.5 fails half the requests)"
        )

    delay_text = get("DELAY_MS", "0")
    try:
        delay_ms = int(delay_text)
    except ValueError:
        raise ConfigError(f"DELAY_MS={delay_text!r} is not a whole number of milliseconds; write e.g. DELAY_MS=500") from None
    if delay_ms < 0:
        raise ConfigError(f"DELAY_MS={delay_ms} is negative; write 0 or more milliseconds")

    # OpenTelemetry's own variable names, so the usual SDK settings work.
    otlp_endpoint = get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "")
    if not otlp_endpoint and get("OTEL_EXPORTER_OTLP_ENDPOINT", ""):
        otlp_endpoint = get("OTEL_EXPORTER_OTLP_ENDPOINT", "").rstrip("/") + "/v1/traces"
    if otlp_endpoint and not otlp_endpoint.startswith(("http://", "https://")):
        raise ConfigError(
            f"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT={otlp_endpoint!r} is not an http(s) URL; "
            "write e.g. http://127.0.0.1:15010/v1/traces"
        )

    return Config(
        host=get("HOST", "0.0.0.0"),
        port=port,
        version=get("VERSION", "v1"),
        # Kubernetes sets HOSTNAME to the pod name; meshctl sets it to the
        # instance name. Outside both, the OS hostname is the best we have.
        hostname=get("HOSTNAME", socket.gethostname()),
        greeting=get("GREETING", "Hello"),
        failure_rate=failure_rate,
        delay_ms=delay_ms,
        otlp_endpoint=otlp_endpoint,
        service_name=get("OTEL_SERVICE_NAME", "helloworld-service"),
    )


# === Its own span, over OTLP ===

# The collector is reached directly, never through HTTP_PROXY (which points
# at this app's sidecar inside `meshctl up`): telemetry is not mesh traffic.
DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def export_span(cfg: Config, traceparent: str, start_ns: int, end_ns: int, status: int) -> None:
    """Send one span, "greet", as OTLP/HTTP JSON, on a thread of its own.

    What an OpenTelemetry SDK does, in twenty lines of standard library: take
    the trace id and parent span id from the W3C `traceparent` header the
    sidecar set on this request (`00-{trace}-{parent}-{flags}`), make a new
    span id, and export. Without a sampled traceparent there is no trace to
    join, and nothing is sent. A failed export is logged, never an error for
    the request.
    """
    parts = traceparent.strip().split("-")
    if not cfg.otlp_endpoint or len(parts) != 4 or len(parts[1]) != 32 or len(parts[2]) != 16:
        return
    try:
        sampled = int(parts[3], 16) & 1
    except ValueError:  # a malformed header is ignored, as the sidecar ignores it
        return
    if not sampled:  # the mesh records nothing for this request either
        return
    span = {
        "traceId": parts[1], "spanId": os.urandom(8).hex(), "parentSpanId": parts[2],
        "name": "greet", "kind": 1,  # INTERNAL: work inside the sidecar's SERVER span
        "startTimeUnixNano": str(start_ns), "endTimeUnixNano": str(end_ns),
        "attributes": [{"key": "http.response.status_code", "value": {"intValue": str(status)}},
                       {"key": "service.version", "value": {"stringValue": cfg.version}}],
    }
    if status >= 500:
        span["status"] = {"code": 2, "message": f"answered {status}"}
    body = {"resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": cfg.service_name}}]},
        "scopeSpans": [{"scope": {"name": "helloworld.py"}, "spans": [span]}],
    }]}

    def send() -> None:
        request = urllib.request.Request(
            cfg.otlp_endpoint, data=json.dumps(body).encode("utf-8"),
            headers={"Content-Type": "application/json"}, method="POST",
        )
        try:
            with DIRECT.open(request, timeout=5) as resp:
                resp.read()
        except OSError as err:  # URLError and HTTPError are OSErrors
            sys.stderr.write(f"helloworld-service: span not exported to {cfg.otlp_endpoint}: {err}\n")

    threading.Thread(target=send, daemon=True).start()


# === HTTP handler ===


class HelloHandler(BaseHTTPRequestHandler):
    """Answers /hello/{name} and /health. `config` is set by make_server."""

    config: Config = Config()
    # HTTP/1.1 keeps connections open between requests, which the sidecar's
    # connection pool reuses; every answer below sets Content-Length for that.
    protocol_version = "HTTP/1.1"
    server_version = "helloworld-service"

    def do_GET(self) -> None:  # noqa: N802 (the name http.server looks for)
        path = urllib.parse.urlsplit(self.path).path
        if path == "/health":
            self.send_text(200, "ok")
        elif path.startswith("/hello/") and len(path) > len("/hello/"):
            self.hello(urllib.parse.unquote(path[len("/hello/"):]))
        else:
            self.send_json(404, {"error": f"no route for GET {path}; try GET /hello/{{name}} or GET /health"})

    def hello(self, name: str) -> None:
        start_ns = time.time_ns()
        status = self._hello(name)
        export_span(self.config, self.headers.get("traceparent", ""), start_ns, time.time_ns(), status)

    def _hello(self, name: str) -> int:
        """Answer /hello/{name}; returns the status sent."""
        cfg = self.config
        if cfg.delay_ms > 0:
            # Each request runs on its own thread (ThreadingHTTPServer), so
            # sleeping delays only this answer, like a slow instance would.
            time.sleep(cfg.delay_ms / 1000.0)
        # random.random() is in [0.0, 1.0): a rate of 0 never fails, 1 always does.
        if random.random() < cfg.failure_rate:
            self.send_json(
                503,
                {
                    "error": f"failure injected by FAILURE_RATE={cfg.failure_rate} (the app itself failed, not the mesh)",
                    "version": cfg.version,
                    "hostname": cfg.hostname,
                },
            )
            return 503
        self.send_json(
            200,
            {"greeting": f"{cfg.greeting} {name}", "version": cfg.version, "hostname": cfg.hostname},
        )
        return 200

    def send_json(self, status: int, body: dict) -> None:
        self.send_body(status, "application/json", json.dumps(body).encode("utf-8"))

    def send_text(self, status: int, text: str) -> None:
        self.send_body(status, "text/plain; charset=utf-8", text.encode("utf-8"))

    def send_body(self, status: int, content_type: str, data: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (http.server's name)
        # One line per request on stderr, prefixed so interleaved logs in
        # `meshctl up` say which process wrote them.
        sys.stderr.write(f"helloworld-service {self.config.version}: {format % args}\n")


def make_server(config: Config) -> ThreadingHTTPServer:
    """Bind the server (not yet serving). Port 0 picks a free port: see server_address."""
    handler = type("BoundHelloHandler", (HelloHandler,), {"config": config})
    server = ThreadingHTTPServer((config.host, config.port), handler)
    # Threads per request must not keep the process alive on Ctrl-C.
    server.daemon_threads = True
    return server


def main() -> int:
    try:
        config = load_config(os.environ)
    except ConfigError as err:
        print(f"helloworld-service: bad configuration: {err}", file=sys.stderr)
        return 2
    try:
        server = make_server(config)
    except OSError as err:
        print(
            f"helloworld-service: cannot listen on {config.host}:{config.port}: {err}; "
            "is another process using the port? set PORT to another one",
            file=sys.stderr,
        )
        return 1
    host, port = server.server_address[:2]
    print(
        f"helloworld-service {config.version} listening on http://{host}:{port} "
        f"(hostname={config.hostname}, greeting={config.greeting!r}, "
        f"failure_rate={config.failure_rate}, delay_ms={config.delay_ms})",
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


if __name__ == "__main__":
    sys.exit(main())
