"""Tests for helloworld-service: start the real server on 127.0.0.1:0 in a
thread and talk HTTP to it (standard library only).

Run them:

    python3 -m unittest discover -s services/helloworld-service -v
"""

import json
import os
import sys
import threading
import time
import unittest
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import helloworld  # noqa: E402 (needs the path above)

# Talk to 127.0.0.1 directly even if the developer's shell has HTTP_PROXY set
# (inside `meshctl up` it points at a sidecar): the test checks the app alone.
DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class Running:
    """A server from make_server(config), serving on a thread until closed."""

    def __init__(self, **overrides):
        config = helloworld.Config(host="127.0.0.1", port=0, hostname="hw-test-1", **overrides)
        self.server = helloworld.make_server(config)
        self.base = "http://127.0.0.1:%d" % self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def get(self, path):
        """(status, body bytes, content type) for GET path; HTTP errors included."""
        try:
            with DIRECT.open(self.base + path, timeout=10) as resp:
                return resp.status, resp.read(), resp.headers.get("Content-Type")
        except urllib.error.HTTPError as err:
            with err:
                return err.code, err.read(), err.headers.get("Content-Type")

    def close(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


class HelloTest(unittest.TestCase):
    def start(self, **overrides):
        running = Running(**overrides)
        self.addCleanup(running.close)
        return running

    def test_greeting_version_and_hostname(self):
        hw = self.start(version="v2", greeting="Hola")
        status, body, ctype = hw.get("/hello/ray")
        self.assertEqual(status, 200)
        self.assertEqual(ctype, "application/json")
        self.assertEqual(json.loads(body), {"greeting": "Hola ray", "version": "v2", "hostname": "hw-test-1"})

    def test_name_is_url_decoded(self):
        hw = self.start()
        status, body, _ = hw.get("/hello/Mary%20Ann")
        self.assertEqual(status, 200)
        self.assertEqual(json.loads(body)["greeting"], "Hello Mary Ann")

    def test_health(self):
        hw = self.start()
        self.assertEqual(hw.get("/health")[:2], (200, b"ok"))

    def test_failure_rate_one_always_fails_with_503(self):
        hw = self.start(failure_rate=1.0)
        for _ in range(20):
            status, body, _ = hw.get("/hello/ray")
            self.assertEqual(status, 503)
            self.assertIn("FAILURE_RATE", json.loads(body)["error"])
        # /health is not subject to the injected failures: the sidecar's
        # probe must keep seeing a live app.
        self.assertEqual(hw.get("/health")[0], 200)

    def test_failure_rate_zero_never_fails(self):
        hw = self.start(failure_rate=0.0)
        for _ in range(50):
            self.assertEqual(hw.get("/hello/ray")[0], 200)

    def test_delay_ms_delays_the_answer(self):
        hw = self.start(delay_ms=200)
        started = time.monotonic()
        self.assertEqual(hw.get("/hello/ray")[0], 200)
        self.assertGreaterEqual(time.monotonic() - started, 0.2)

    def test_unknown_path_is_404_json(self):
        hw = self.start()
        for path in ("/nope", "/hello/", "/hello"):
            status, body, ctype = hw.get(path)
            self.assertEqual(status, 404, path)
            self.assertEqual(ctype, "application/json")
            self.assertIn("/hello/{name}", json.loads(body)["error"])


class FakeCollector:
    """An OTLP/HTTP endpoint on 127.0.0.1:0 that keeps every JSON body posted."""

    def __init__(self):
        self.bodies = []
        self.arrived = threading.Event()
        outer = self

        class Handler(helloworld.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                length = int(self.headers.get("Content-Length", "0"))
                outer.bodies.append((self.path, self.headers.get("Content-Type"), json.loads(self.rfile.read(length))))
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")
                outer.arrived.set()

            def log_message(self, *args):
                pass

        self.server = helloworld.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = "http://127.0.0.1:%d/v1/traces" % self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class OtlpSpanTest(unittest.TestCase):
    def test_a_request_with_traceparent_reports_a_greet_span_under_the_sidecars(self):
        collector = FakeCollector()
        self.addCleanup(collector.close)
        hw = Running(otlp_endpoint=collector.url)
        self.addCleanup(hw.close)
        trace, parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
        request = urllib.request.Request(
            hw.base + "/hello/ray", headers={"traceparent": f"00-{trace}-{parent}-01"}
        )
        with DIRECT.open(request, timeout=10) as resp:
            self.assertEqual(resp.status, 200)
        self.assertTrue(collector.arrived.wait(10), "no span was exported")
        path, ctype, body = collector.bodies[0]
        self.assertEqual((path, ctype), ("/v1/traces", "application/json"))
        resource_spans = body["resourceSpans"][0]
        self.assertEqual(
            resource_spans["resource"]["attributes"],
            [{"key": "service.name", "value": {"stringValue": "helloworld-service"}}],
        )
        span = resource_spans["scopeSpans"][0]["spans"][0]
        # The sidecar's trace, under the sidecar's span: one trace, not two.
        self.assertEqual((span["traceId"], span["parentSpanId"]), (trace, parent))
        self.assertEqual((span["name"], span["kind"]), ("greet", 1))
        self.assertRegex(span["spanId"], "^[0-9a-f]{16}$")
        self.assertLessEqual(int(span["startTimeUnixNano"]), int(span["endTimeUnixNano"]))


class ConfigTest(unittest.TestCase):
    def test_defaults(self):
        cfg = helloworld.load_config({"HOSTNAME": "pod-1"})
        self.assertEqual(
            cfg,
            helloworld.Config(host="0.0.0.0", port=8080, version="v1", hostname="pod-1",
                              greeting="Hello", failure_rate=0.0, delay_ms=0),
        )

    def test_hostname_falls_back_to_os_hostname(self):
        self.assertEqual(helloworld.load_config({}).hostname, helloworld.socket.gethostname())

    def test_values_are_read(self):
        cfg = helloworld.load_config(
            {"HOST": "127.0.0.1", "PORT": "9000", "VERSION": "v2", "GREETING": "Hola",
             "FAILURE_RATE": "0.25", "DELAY_MS": "150", "HOSTNAME": "hw-2"}
        )
        self.assertEqual((cfg.host, cfg.port, cfg.version, cfg.greeting), ("127.0.0.1", 9000, "v2", "Hola"))
        self.assertEqual((cfg.failure_rate, cfg.delay_ms, cfg.hostname), (0.25, 150, "hw-2"))

    def test_otlp_endpoint_uses_opentelemetrys_variables(self):
        traces = helloworld.load_config({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"})
        self.assertEqual(traces.otlp_endpoint, "http://c:4318/v1/traces")
        base = helloworld.load_config({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318/", "OTEL_SERVICE_NAME": "hw"})
        self.assertEqual((base.otlp_endpoint, base.service_name), ("http://c:4318/v1/traces", "hw"))
        self.assertEqual(helloworld.load_config({}).otlp_endpoint, "")

    def test_bad_values_name_the_variable(self):
        for env, name in [
            ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "c:4318"}, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
            ({"PORT": "eighty"}, "PORT"),
            ({"PORT": "70000"}, "PORT"),
            ({"FAILURE_RATE": "half"}, "FAILURE_RATE"),
            ({"FAILURE_RATE": "1.5"}, "FAILURE_RATE"),
            ({"FAILURE_RATE": "nan"}, "FAILURE_RATE"),
            ({"DELAY_MS": "0.5s"}, "DELAY_MS"),
            ({"DELAY_MS": "-1"}, "DELAY_MS"),
        ]:
            with self.subTest(env=env):
                with self.assertRaises(helloworld.ConfigError) as ctx:
                    helloworld.load_config(env)
                self.assertIn(name, str(ctx.exception))


if __name__ == "__main__":
    unittest.main()
