"""Tests for the hello-grpc demo: real grpcio servers on 127.0.0.1:0, the
client's own functions against them.

Run them:

    python3 -m unittest discover -s services/hello-grpc -v
"""

import io
import json
import os
import random
import sys
import unittest
from contextlib import redirect_stdout

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import grpc  # noqa: E402

import client  # noqa: E402 (needs the path above)
import server  # noqa: E402


class Running:
    """A started server on a free port; `address` is 127.0.0.1:PORT."""

    def __init__(self, hostname, **overrides):
        config = server.Config(host="127.0.0.1", port=0, hostname=hostname, **overrides)
        self.server, port, self.greeter = server.make_server(config)
        self.server.start()
        self.address = f"127.0.0.1:{port}"

    def close(self):
        self.server.stop(grace=None).wait()


class HelloGrpcTest(unittest.TestCase):
    def start(self, hostname="hello-grpc-v1-test", **overrides):
        running = Running(hostname, **overrides)
        self.addCleanup(running.close)
        return running

    def channel(self, address):
        channel = client.open_channel(address, "hello-grpc:8080")
        self.addCleanup(channel.close)
        return channel

    def test_a_call_answers_the_greeting_and_the_instance(self):
        hw = self.start(version="v2", greeting="Hola")
        say_hello = self.channel(hw.address).unary_unary(client.METHOD)
        answer = json.loads(say_hello(json.dumps({"name": "ray"}).encode(), timeout=10))
        self.assertEqual(answer, {"greeting": "Hola ray", "version": "v2", "hostname": "hello-grpc-v1-test"})

    def test_one_channel_sends_every_call_to_the_one_server_it_connected_to(self):
        # Three servers, a connection-level choice among them (kube-proxy's):
        # all thirty calls land on the server the connection went to.
        servers = [self.start(f"hello-grpc-{i}") for i in range(3)]
        addresses = ",".join(s.address for s in servers)
        address = client.pick_direct(addresses, random.Random(7))
        results = client.call_many(self.channel(address), 30, "ray", timeout=10)
        hosts = {host for host, code in results}
        chosen = next(s for s in servers if s.address == address)
        self.assertEqual(hosts, {chosen.greeter.config.hostname}, results)
        self.assertEqual(chosen.greeter.calls, 30)
        self.assertEqual(sum(s.greeter.calls for s in servers), 30, "the others got none")

    def test_injected_failures_are_grpc_unavailable(self):
        hw = self.start(failure_rate=1.0)
        results = client.call_many(self.channel(hw.address), 3, "ray", timeout=10)
        self.assertEqual(results, [("", "UNAVAILABLE")] * 3)
        summary = client.report(results, hw.address)
        self.assertIn("0 answered, 3 failed", summary)
        self.assertIn("     3 UNAVAILABLE", summary)

    def test_a_request_that_is_not_json_is_an_invalid_argument(self):
        hw = self.start()
        say_hello = self.channel(hw.address).unary_unary(client.METHOD)
        with self.assertRaises(grpc.RpcError) as caught:
            say_hello(b"\xff not json", timeout=10)
        self.assertEqual(caught.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn('{"name": "ray"}', caught.exception.details())

    def test_the_standard_health_check_says_serving(self):
        hw = self.start()
        check = self.channel(hw.address).unary_unary("/grpc.health.v1.Health/Check")
        self.assertEqual(check(b"", timeout=10), b"\x08\x01")

    def test_the_client_prints_who_answered(self):
        hw = self.start()
        out = io.StringIO()
        with redirect_stdout(out):
            code = client.main(["--direct", hw.address, "--calls", "4"], env={})
        self.assertEqual(code, 0)
        self.assertIn("4 answered, 0 failed", out.getvalue())
        self.assertIn("     4 hello-grpc-v1-test", out.getvalue())
        out = io.StringIO()
        with redirect_stdout(out):
            client.main(["--direct", hw.address, "--calls", "2", "--each"], env={})
        self.assertEqual(out.getvalue().split(), ["hello-grpc-v1-test"] * 2)

    def test_the_client_finds_its_sidecar_in_http_proxy(self):
        self.assertEqual(client.sidecar_address({"HTTP_PROXY": "http://127.0.0.1:15001"}), "127.0.0.1:15001")
        self.assertEqual(client.sidecar_address({"http_proxy": "127.0.0.1:4000"}), "127.0.0.1:4000")
        with self.assertRaises(client.UsageError) as caught:
            client.sidecar_address({})
        self.assertIn("--direct", str(caught.exception))
        with self.assertRaises(client.UsageError):
            client.sidecar_address({"HTTP_PROXY": "http://sidecar"})


class ConfigTest(unittest.TestCase):
    def test_defaults_and_overrides(self):
        cfg = server.load_config({"PORT": "9000", "VERSION": "v2", "HOSTNAME": "h", "FAILURE_RATE": "0.25"})
        self.assertEqual((cfg.port, cfg.version, cfg.hostname, cfg.failure_rate), (9000, "v2", "h", 0.25))
        self.assertEqual(server.load_config({"HOSTNAME": "h"}).port, 8080)

    def test_bad_values_name_the_variable(self):
        for env, needle in [
            ({"PORT": "http"}, "PORT='http' is not a number"),
            ({"PORT": "70000"}, "PORT=70000 is out of range"),
            ({"FAILURE_RATE": "half"}, "FAILURE_RATE='half' is not a number"),
            ({"FAILURE_RATE": "nan"}, "FAILURE_RATE=nan is out of range"),
        ]:
            with self.assertRaises(server.ConfigError) as caught:
                server.load_config(env)
            self.assertIn(needle, str(caught.exception))


if __name__ == "__main__":
    unittest.main()
