#!/usr/bin/env python3
"""hello-grpc: a tiny gRPC greeting service, for the gRPC lab (Python, grpcio).

Where it sits in the request path:

    hello-grpc client -> [its sidecar] -> [sidecar] -> hello-grpc server (this file)

It answers one unary call, `/hello.Greeter/SayHello`, with a greeting and
the instance that answered (its version and HOSTNAME, like a pod name), so a
client that makes many calls can count how they spread over the instances.
That is the point of the demo: gRPC keeps one long-lived HTTP/2 connection
and sends every call on it, so balancing per *connection* (what a Kubernetes
Service does) sends every call to one pod; a sidecar balances per *request*.

Messages are JSON bytes, not protobuf: `{"name": "ray"}` in,
`{"greeting": "Hello ray", "version": "v1", "hostname": "..."}` out.
gRPC carries any bytes (the content type stays `application/grpc`), and JSON
needs no .proto file, no code generation and no protoc, so this file is all
there is. A real service would use protobuf; the mesh sees the same frames.

It also serves the standard health service, `/grpc.health.v1.Health/Check`,
which Kubernetes' `grpc:` probes and `grpc_health_probe` call. Its messages
are protobuf, but tiny enough to write by hand (see HEALTH_SERVING).

Run it:

    python3 services/hello-grpc/server.py                   # listens on :8080
    python3 services/hello-grpc/client.py --direct 127.0.0.1:8080 --calls 5

Environment (bad values stop the process at start with a message naming the
variable):

    HOST          bind address, default 0.0.0.0
    PORT          listen port, default 8080 (0 picks a free port)
    VERSION       version reported in answers, default v1
    HOSTNAME      instance name reported in answers, default the OS hostname
    GREETING      first word of the greeting, default Hello
    FAILURE_RATE  0.0..1.0: that share of calls fail with UNAVAILABLE, for
                  the retry step of the lab, default 0

This service calls no other service: it has no trace headers to forward.
"""

import json
import os
import random
import socket
import sys
import threading
from concurrent import futures
from dataclasses import dataclass
from typing import Mapping

import grpc

SERVICE = "hello.Greeter"
METHOD = "SayHello"

# grpc.health.v1.HealthCheckResponse{status: SERVING}: field 1 (tag 0x08,
# varint) with value 1. The request (an optional service name) is ignored:
# this process serves one service, and it is up if it answers at all.
HEALTH_SERVING = b"\x08\x01"


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


def load_config(env: Mapping[str, str]) -> Config:
    """Read the config from a mapping (os.environ in main, a dict in tests)."""

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
            f"FAILURE_RATE={rate_text!r} is not a number; set it between 0.0 and 1.0 (0.5 fails half the calls)"
        ) from None
    # `not (a <= x <= b)` also rejects NaN.
    if not 0.0 <= failure_rate <= 1.0:
        raise ConfigError(
            f"FAILURE_RATE={rate_text} is out of range; set it between 0.0 and 1.0 (0.5 fails half the calls)"
        )

    return Config(
        host=get("HOST", "0.0.0.0"),
        port=port,
        version=get("VERSION", "v1"),
        # meshctl sets HOSTNAME to the instance name, Kubernetes to the pod name.
        hostname=get("HOSTNAME", socket.gethostname()),
        greeting=get("GREETING", "Hello"),
        failure_rate=failure_rate,
    )


# === the service ===


class Greeter:
    """The calls this server answers; bytes in, bytes out (grpcio frames them)."""

    def __init__(self, config: Config):
        self.config = config
        # grpcio runs handlers on a thread pool: count under a lock.
        self.lock = threading.Lock()
        self.calls = 0

    def say_hello(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        cfg = self.config
        with self.lock:
            self.calls += 1
        try:
            name = json.loads(request.decode("utf-8") or "{}").get("name", "")
        except (UnicodeDecodeError, json.JSONDecodeError, AttributeError):
            # A gRPC error, not an exception: the client gets a status it can act on.
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, 'the request must be JSON like {"name": "ray"}')
        # random.random() is in [0.0, 1.0): a rate of 0 never fails, 1 always does.
        if random.random() < cfg.failure_rate:
            context.abort(
                grpc.StatusCode.UNAVAILABLE,
                f"failure injected by FAILURE_RATE={cfg.failure_rate} on {cfg.hostname} (the app failed, not the mesh)",
            )
        answer = {"greeting": f"{cfg.greeting} {name}".strip(), "version": cfg.version, "hostname": cfg.hostname}
        return json.dumps(answer).encode("utf-8")

    def health_check(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        return HEALTH_SERVING


def make_server(config: Config) -> "tuple[grpc.Server, int, Greeter]":
    """Bind the server (not yet started); returns it, the bound port and the servicer.

    Generic handlers map a method name to a function on raw bytes: with no
    request_deserializer/response_serializer, grpcio hands the handler the
    message's bytes and sends back the bytes it returns.
    """
    greeter = Greeter(config)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                SERVICE, {METHOD: grpc.unary_unary_rpc_method_handler(greeter.say_hello)}
            ),
            grpc.method_handlers_generic_handler(
                "grpc.health.v1.Health", {"Check": grpc.unary_unary_rpc_method_handler(greeter.health_check)}
            ),
        )
    )
    # Plaintext HTTP/2 (h2c): between the sidecar and its app nothing leaves
    # the pod; mutual TLS between sidecars is the mesh's job.
    port = server.add_insecure_port(f"{config.host}:{config.port}")
    if port == 0:
        raise OSError(f"cannot listen on {config.host}:{config.port}")
    return server, port, greeter


def main() -> int:
    try:
        config = load_config(os.environ)
    except ConfigError as err:
        print(f"hello-grpc: bad configuration: {err}", file=sys.stderr)
        return 2
    try:
        server, port, _ = make_server(config)
    except (OSError, RuntimeError) as err:
        print(
            f"hello-grpc: {err}; is another process using the port? set PORT to another one",
            file=sys.stderr,
        )
        return 1
    server.start()
    print(
        f"hello-grpc {config.version} listening on {config.host}:{port} (gRPC, HTTP/2 cleartext; "
        f"hostname={config.hostname}, failure_rate={config.failure_rate})",
        file=sys.stderr,
        flush=True,
    )
    try:
        server.wait_for_termination()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop(grace=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
