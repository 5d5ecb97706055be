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

This service calls no other service, so it has no trace headers to forward;
the services that do call others (guestbook-ui, guestbook-service) forward
them, and say why.
"""

import json
import os
import random
import socket
import sys
import time
import urllib.parse
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
    )


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
            return
        self.send_json(
            200,
            {"greeting": f"{cfg.greeting} {name}", "version": cfg.version, "hostname": cfg.hostname},
        )

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
