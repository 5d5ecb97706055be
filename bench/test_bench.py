"""Unit tests of bench.py's parsing and arithmetic (no processes started).

    python3 -m unittest discover -s bench -p 'test_*.py'

The harness end to end is exercised by `./scripts/bench.sh --smoke`.
"""

import io
import os
import sys
import unittest
import unittest.mock

sys.path.insert(0, os.path.dirname(__file__))
import bench  # noqa: E402

WRK_OUTPUT = """Running 10s test @ http://127.0.0.1:4000/
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.23ms  200.00us   5.00ms   90.00%
    Req/Sec    40.00k     1.00k   42.00k    80.00%
  400123 requests in 10.00s, 60.00MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 5
Requests/sec:  40012.30
Transfer/sec:      6.00MB
"""


def latency(p50, p99):
    return {"corrected": {"p50_us": p50, "p99_us": p99, "count": 1000},
            "unsent": 0, "errors": 0, "non_2xx": 0}


class ParseWrk(unittest.TestCase):
    def test_requests_seconds_and_every_kind_of_error(self):
        self.assertEqual(bench.parse_wrk(WRK_OUTPUT), (400123, 10.0, 8))

    def test_unreadable_output_is_an_error_that_shows_it(self):
        with self.assertRaises(RuntimeError) as e:
            bench.parse_wrk("unable to connect to 127.0.0.1:1 Connection refused")
        self.assertIn("Connection refused", str(e.exception))

    def test_durations(self):
        self.assertEqual(bench.parse_duration("1.50s"), 1.5)
        self.assertEqual(bench.parse_duration("2m"), 120.0)
        self.assertAlmostEqual(bench.parse_duration("250ms"), 0.25)


class Summary(unittest.TestCase):
    def test_median_and_half_range(self):
        self.assertEqual(bench.median_spread([10, 30, 20]), (20, 10))
        self.assertEqual(bench.median_spread([None, 4]), (4, 0))
        self.assertEqual(bench.median_spread([]), (None, None))

    def test_added_latency_is_paired_with_direct_in_the_same_round(self):
        # Round 2 is slower for everyone (a noisy neighbour): pairing by
        # round keeps the added latency steady at 50 µs.
        rounds = [
            {"direct": {"lat_1000": latency(100, 200)}, "nginx": {"lat_1000": latency(150, 300)}},
            {"direct": {"lat_1000": latency(400, 900)}, "nginx": {"lat_1000": latency(450, 1000)}},
        ]
        s = bench.summarise(rounds, ["direct", "nginx"], [1000])
        self.assertEqual(s["nginx"]["added_p50_1000"], [50, 50])
        self.assertEqual(s["nginx"]["added_p99_1000"], [100, 100])

    def test_targets_say_by_how_much_they_are_missed(self):
        summary = {
            "micromesh": {"cpu_us_per_req_max": [30.0], "cpu_us_per_req_1000": [None],
                          "added_p50_1000": [40.0], "rss_load_kb": [12 * 1024],
                          "rps_per_core": [9000]},
            "nginx": {"cpu_us_per_req_max": [25.0], "cpu_us_per_req_1000": [None],
                      "added_p50_1000": [50.0], "rps_per_core": [20000]},
            "envoy": {"rps_per_core": [2000]},
        }
        out = io.StringIO()
        bench.print_targets(summary, [1000], out)
        text = out.getvalue()
        self.assertIn("CPU/request @max <= nginx's: 30.0 µs vs 25.0 µs: MISSED by 20%", text)
        self.assertIn("added p50 @1000/s <= nginx's: 40.0 µs vs 50.0 µs: met", text)
        self.assertIn("RSS under load <= 10 MB: 12.0 MB vs 10.0 MB: MISSED by 20%", text)
        self.assertIn("4x Envoy's (req/s per busy core): 9000.0 req/s vs 8000.0 req/s: met", text)


CALLGRIND_OUTPUT = """# callgrind format
version: 1
creator: callgrind-3.19.0
pid: 4242
cmd:  mesh-proxy
events: Ir
fl=(1) ???
fn=(1) main
0 12
summary: 123456789
totals: 123456789
"""


class Callgrind(unittest.TestCase):
    def test_start_up_cancels_between_two_run_lengths(self):
        # A proxy that costs 5M instructions to start and stop and 40,000
        # per request: 500 requests -> 25M, 2,500 -> 105M.
        start, per = 5_000_000, 40_000
        short = (500, start + 500 * per)
        long = (2500, start + 2500 * per)
        self.assertEqual(bench.instructions_per_request(short, long), 40_000)

    def test_run_lengths_that_cannot_give_an_answer_are_refused(self):
        with self.assertRaises(ValueError) as e:
            bench.instructions_per_request((2500, 10), (500, 20))
        self.assertIn("must serve more", str(e.exception))
        with self.assertRaises(ValueError) as e:
            bench.instructions_per_request((500, 20), (2500, 10))
        self.assertIn("did not exit cleanly", str(e.exception))

    def test_the_total_is_read_from_the_output_file(self):
        import tempfile
        with tempfile.NamedTemporaryFile("w", suffix=".out", delete=False) as f:
            f.write(CALLGRIND_OUTPUT)
        self.addCleanup(os.unlink, f.name)
        self.assertEqual(bench.callgrind_total(f.name), 123456789)
        with tempfile.NamedTemporaryFile("w", delete=False) as f:
            f.write("events: Ir\n")
        self.addCleanup(os.unlink, f.name)
        with self.assertRaises(RuntimeError):
            bench.callgrind_total(f.name)

    def test_allocations_are_the_calls_into_the_allocator(self):
        import tempfile
        text = (CALLGRIND_OUTPUT + "fn=(2) handle\ncfn=(3) malloc\ncalls=7 0\n0 70\n"
                "cfn=(4) free\ncalls=7 0\n0 30\nfn=(5) other\ncfn=(3)\ncalls=5 0\n0 50\n"
                "cfn=(6) realloc\ncalls=2 0\n0 9\n")
        with tempfile.NamedTemporaryFile("w", delete=False) as f:
            f.write(text)
        self.addCleanup(os.unlink, f.name)
        # malloc 7 + 5 (its second mention by number only), realloc 2; free is no allocation.
        self.assertEqual(bench.callgrind_allocations(f.name), 14)
        with tempfile.NamedTemporaryFile("w", delete=False) as f:
            f.write(CALLGRIND_OUTPUT + "fn=(2) handle\ncfn=(3) operator new(unsigned long)\ncalls=4 0\n0 8\n")
        self.addCleanup(os.unlink, f.name)
        self.assertEqual(bench.callgrind_allocations(f.name), 4, "C++ allocates with operator new")
        with tempfile.NamedTemporaryFile("w", delete=False) as f:
            f.write(CALLGRIND_OUTPUT + "fn=(2) 0x0000000000401000\ncfn=(3) 0x0000000000402000\ncalls=9 0\n")
        self.addCleanup(os.unlink, f.name)
        self.assertIsNone(bench.callgrind_allocations(f.name), "a stripped binary: unknown, not zero")

    def test_the_table_says_how_far_each_target_is(self):
        results = {name: {"per_request": value} for name, value in
                   [("micromesh", 24_000.0), ("micromesh+telemetry", 27_000.0), ("nginx", 20_000.0)]}
        results["nginx"]["allocations_per_request"] = 6.0
        out = io.StringIO()
        bench.print_callgrind(results, 500, 2500, out)
        text = out.getvalue()
        self.assertIn("| micromesh           | 24.0k                    | 1.20x    | -  ", text)
        self.assertIn("target micromesh <= 1x nginx: 1.20x, missed by 20%", text)
        self.assertIn("| nginx               | 20.0k                    | 1.00x    | 6.0 ", text)
        self.assertIn("target micromesh+telemetry <= 1.5x nginx: 1.35x, met", text)

    def test_callgrind_measures_its_own_cases_by_default(self):
        args = bench.parse_args(["--callgrind"])
        self.assertEqual(args.cases, bench.CALLGRIND_CASES)
        self.assertEqual(args.callgrind_requests, [500, 2500])
        with self.assertRaises(SystemExit):
            bench.parse_args(["--callgrind", "--callgrind-requests", "2500,500"])


class Configs(unittest.TestCase):
    def test_every_proxy_gets_one_worker_and_upstream_keepalive(self):
        nginx = bench.nginx_proxy_conf("/tmp/w", 4000, 5000)
        self.assertIn("worker_processes 1;", nginx)
        self.assertIn("keepalive 64;", nginx)
        self.assertIn('proxy_set_header Connection "";', nginx)
        self.assertIn("server 127.0.0.1:5000;", nginx)
        self.assertIn("nbthread 1", bench.haproxy_conf(4000, 5000))
        envoy = bench.envoy_conf(4000, 5000, 4001)
        cluster = envoy["static_resources"]["clusters"][0]
        endpoint = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
        self.assertEqual(endpoint["address"]["socket_address"]["port_value"], 5000)

    def test_smoke_is_short_and_direct_is_always_measured(self):
        args = bench.parse_args(["--smoke", "--cases", "nginx"])
        self.assertEqual(args.rounds, 1)
        self.assertLessEqual(args.duration, 1.0)
        self.assertEqual(args.cases, ["direct", "nginx"])
        self.assertEqual(args.profile, "debug")

    def test_a_static_binary_is_told_from_a_dynamic_one(self):
        import struct
        import tempfile

        def elf(program_header_types):
            """An ELF64 little-endian header and these program headers, nothing else."""
            phoff, phentsize = 64, 56
            header = bytearray(64)
            header[:6] = b"\x7fELF\x02\x01"
            struct.pack_into("<Q", header, 0x20, phoff)
            struct.pack_into("<HH", header, 0x36, phentsize, len(program_header_types))
            table = b"".join(struct.pack("<I", t) + bytes(phentsize - 4) for t in program_header_types)
            f = tempfile.NamedTemporaryFile(delete=False)
            f.write(bytes(header) + table)
            f.close()
            self.addCleanup(os.unlink, f.name)
            return f.name

        PT_LOAD, PT_INTERP = 1, 3
        self.assertFalse(bench.has_interpreter(elf([PT_LOAD, PT_LOAD])))
        self.assertTrue(bench.has_interpreter(elf([PT_LOAD, PT_INTERP, PT_LOAD])))
        self.assertIsNone(bench.has_interpreter(__file__))  # not ELF
        self.assertIsNone(bench.has_interpreter("/nonexistent/mesh-proxy"))


if __name__ == "__main__":
    unittest.main()


# === the data-path cases (datapath.py) ===

import datapath  # noqa: E402

H2LOAD_OUTPUT = """starting benchmark...
spawning thread #0: 1 total client(s). 2000 total requests
Application protocol: h2c
progress: 10% done
progress: 100% done

finished in 156.02ms, 12818.87 req/s, 451.26KB/s
requests: 2000 total, 2000 started, 2000 done, 1998 succeeded, 2 failed, 0 errored, 0 timeout
status codes: 1998 2xx, 0 3xx, 0 4xx, 2 5xx
traffic: 70.41KB (72100) total, 11.74KB (12020) headers (space savings 93.12%), 0B (0) data
"""


class DataPathTest(unittest.TestCase):
    def test_h2load_summary(self):
        ok, failed, seconds, rate = datapath.parse_h2load(H2LOAD_OUTPUT)
        self.assertEqual((ok, failed), (1998, 2))
        self.assertAlmostEqual(seconds, 0.15602)
        self.assertAlmostEqual(rate, 12818.87)
        in_seconds = H2LOAD_OUTPUT.replace("finished in 156.02ms", "finished in 2.50s")
        self.assertAlmostEqual(datapath.parse_h2load(in_seconds)[2], 2.5)
        with self.assertRaises(RuntimeError) as caught:
            datapath.parse_h2load("connect: Connection refused\n")
        self.assertIn("Connection refused", str(caught.exception))

    def test_grpc_frame_is_flag_length_payload(self):
        self.assertEqual(datapath.grpc_frame(b"hi"), b"\x00\x00\x00\x00\x02hi")

    def test_websocket_accept_is_rfc_6455s_example(self):
        self.assertEqual(datapath.ws_accept("dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")

    def test_frames_round_trip_masked_and_not(self):
        for payload in (b"x" * 32, b"y" * 300):
            for mask in (True, False):
                frame = datapath.make_frame(payload, mask=mask)
                self.assertEqual(datapath.read_frame(io.BytesIO(frame)), (0x2, payload))

    def test_the_echo_server_echoes_through_a_real_socket(self):
        echo = datapath.EchoServer()
        self.addCleanup(echo.stop)
        times = datapath.ws_round_trips(echo.port, "upstream:8080", 5)
        self.assertEqual(len(times), 5)
        self.assertTrue(all(t > 0 for t in times))

    def test_the_data_path_table(self):
        rounds = [[
            {"case": "upload-10MiB", "direct_mb_s": 1000.0, "mesh_mb_s": 500.0,
             "rss_before_kb": 4096, "rss_after_kb": 5120, "rss_growth_kb": 1024},
            {"case": "websocket-echo", "messages": 200, "direct_p50_us": 40.0, "direct_p99_us": 90.0,
             "mesh_p50_us": 120.0, "mesh_p99_us": 300.0},
            {"case": "grpc-unary", "calls": 2000, "mesh_calls_s": 9000.0, "mesh_cpu_us_per_call": 80.0,
             "envoy_calls_s": 7000.0, "envoy_cpu_us_per_call": 120.0},
        ]]
        out = io.StringIO()
        datapath.print_data_path(rounds, out)
        text = out.getvalue()
        self.assertIn("| upload-10MiB | 1000 MB/s | 500 MB/s (50%) | sidecar RSS 4.0 -> 5.0 MB |", text)
        self.assertIn("p50 120 µs, p99 300 µs", text)
        self.assertIn("Envoy 7000 calls/s, 120.0 µs CPU/call | 9000 calls/s, 80.0 µs CPU/call", text)

    def test_data_cases_are_checked_by_name(self):
        self.assertEqual(bench.parse_args(["--data-cases", "none"]).data_cases, [])
        self.assertEqual(bench.parse_args(["--data-cases", "grpc-unary"]).data_cases, ["grpc-unary"])
        with self.assertRaises(SystemExit):
            with unittest.mock.patch("sys.stderr", io.StringIO()):
                bench.parse_args(["--data-cases", "upload-1GiB"])


# === the TLS cases (mtls.py) ===

import json  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402

import mtls  # noqa: E402

PROMETHEUS_TEXT = """# HELP istio_requests_total Total number of requests.
# TYPE istio_requests_total counter
istio_requests_total{reporter="source",source_workload="bench-client",connection_security_policy="unknown",response_code="200"} 7
istio_requests_total{reporter="destination",source_workload="bench-client",connection_security_policy="mutual_tls",response_code="200"} 40
istio_requests_total{reporter="destination",source_workload="bench-client",connection_security_policy="mutual_tls",response_code="503"} 2
istio_build{component="proxy",tag="0.1.0"} 1
"""


class MeshMtlsSetup(unittest.TestCase):
    def test_the_bootstrap_token_is_an_hmac_of_the_spiffe_id_keyed_by_the_write_token(self):
        # RFC 4231, test case 2: the HMAC-SHA256 the Rust side (ring) computes too.
        self.assertEqual(mtls.hmac_sha256_hex("Jefe", "what do ya want for nothing?"),
                         "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
        self.assertEqual(mtls.spiffe_id("upstream"), "spiffe://cluster.local/ns/default/sa/upstream")
        token = mtls.bootstrap_token("write-token-1", "upstream")
        self.assertEqual(token, mtls.hmac_sha256_hex("write-token-1",
                                                     "spiffe://cluster.local/ns/default/sa/upstream"))
        self.assertRegex(token, r"^[0-9a-f]{64}$")
        self.assertNotEqual(token, mtls.bootstrap_token("write-token-1", "bench-client"),
                            "one token proves one identity")
        self.assertNotEqual(token, mtls.bootstrap_token("write-token-2", "upstream"))

    def test_a_sidecar_gets_its_service_account_namespace_and_token(self):
        env = mtls.identity_env("w", "upstream")
        self.assertEqual(env, {"MESH_NAMESPACE": "default", "MESH_SERVICE_ACCOUNT": "upstream",
                               "MESH_IDENTITY_TOKEN": mtls.bootstrap_token("w", "upstream")})

    def test_the_strict_policy_is_mesh_wide_and_sent_as_an_apply(self):
        body = mtls.apply_request(mtls.STRICT_MESH_WIDE)
        self.assertEqual(list(body), ["files"])
        content = body["files"][0]["content"]
        for line in ("apiVersion: security.istio.io/v1", "kind: PeerAuthentication",
                     "namespace: istio-system", "mode: STRICT"):
            self.assertIn(line, content)
        self.assertNotIn("selector", content, "a selector would make it a workload policy")

    def test_the_server_is_ready_only_with_its_certificate_and_strict(self):
        certs = {"identity": "spiffe://cluster.local/ns/default/sa/upstream", "certChain": ["PEM"]}
        self.assertTrue(mtls.holds_certificate(certs, "upstream"))
        self.assertFalse(mtls.holds_certificate({"reason": "no certificate yet"}, "upstream"))
        self.assertFalse(mtls.holds_certificate(certs, "bench-client"), "someone else's identity")
        self.assertIsNone(mtls.inbound_mode({"snapshot": None}))
        self.assertEqual(mtls.inbound_mode({"snapshot": {"version": 3}}), "PERMISSIVE")
        self.assertEqual(mtls.inbound_mode({"snapshot": {"inbound": {"mtls": {"mode": "STRICT"}}}}),
                         "STRICT")
        self.assertEqual(mtls.inbound_mode({"snapshot": {"inbound": {"mtls": {"mode": "UNSET"}}}}),
                         "PERMISSIVE")

    def test_only_a_hop_counted_all_mutual_tls_passes(self):
        counts = mtls.security_policies(PROMETHEUS_TEXT)
        self.assertEqual(counts, {"mutual_tls": 42.0}, "the destination's count only")
        mtls.check_mutual_tls_counted(counts, "server")
        plain = PROMETHEUS_TEXT + ('istio_requests_total{reporter="destination",'
                                   'connection_security_policy="none",response_code="200"} 1\n')
        with self.assertRaises(RuntimeError) as caught:
            mtls.check_mutual_tls_counted(mtls.security_policies(plain), "server")
        self.assertIn("'none': 1.0", str(caught.exception))
        with self.assertRaises(RuntimeError) as caught:
            mtls.check_mutual_tls_counted({}, "server")
        self.assertIn("empty", str(caught.exception))

    def test_the_new_cases_are_in_the_default_rotation(self):
        args = bench.parse_args(["--smoke", "--cases", "mesh-path,mesh-path+mtls,envoy-path,envoy-path+tls"])
        self.assertEqual(args.cases, ["direct", "mesh-path", "mesh-path+mtls", "envoy-path", "envoy-path+tls"])
        for case in ("mesh-path+mtls", "mesh-path+mtls+telemetry", "envoy-path", "envoy-path+tls"):
            self.assertIn(case, bench.ALL_CASES)


class EnvoyTlsSetup(unittest.TestCase):
    def certs(self):
        return mtls.Certs("/tmp/certs")

    def test_the_server_envoy_requires_a_client_certificate(self):
        conf = bench.envoy_conf(4000, 5000, 4001, listener_tls=mtls.envoy_server_tls(self.certs()))
        socket = conf["static_resources"]["listeners"][0]["filter_chains"][0]["transport_socket"]
        self.assertEqual(socket["name"], "envoy.transport_sockets.tls")
        tls = socket["typed_config"]
        self.assertTrue(tls["@type"].endswith("tls.v3.DownstreamTlsContext"))
        self.assertIs(tls["require_client_certificate"], True)
        common = tls["common_tls_context"]
        self.assertEqual(common["tls_certificates"][0]["certificate_chain"]["filename"], "/tmp/certs/server.crt")
        self.assertEqual(common["validation_context"]["trusted_ca"]["filename"], "/tmp/certs/ca.crt")
        self.assertEqual(common["validation_context"]["match_typed_subject_alt_names"],
                         [{"san_type": "URI",
                           "matcher": {"exact": "spiffe://cluster.local/ns/default/sa/bench-client"}}])
        self.assertEqual(common["tls_params"]["tls_minimum_protocol_version"], "TLSv1_3")
        self.assertNotIn("transport_socket", conf["static_resources"]["clusters"][0],
                         "the server Envoy speaks plaintext to the upstream, as a sidecar to its app")

    def test_the_client_envoy_originates_tls_with_its_certificate(self):
        conf = bench.envoy_conf(4000, 5000, 4001, cluster_tls=mtls.envoy_client_tls(self.certs()))
        cluster = conf["static_resources"]["clusters"][0]
        tls = cluster["transport_socket"]["typed_config"]
        self.assertTrue(tls["@type"].endswith("tls.v3.UpstreamTlsContext"))
        common = tls["common_tls_context"]
        self.assertEqual(common["tls_certificates"][0]["private_key"]["filename"], "/tmp/certs/client.key")
        self.assertEqual(common["validation_context"]["match_typed_subject_alt_names"][0]["matcher"],
                         {"exact": "spiffe://cluster.local/ns/default/sa/upstream"})
        self.assertNotIn("transport_socket", conf["static_resources"]["listeners"][0]["filter_chains"][0])
        json.dumps(conf)  # what bench.py writes for Envoy

    def test_the_certificates_verify_and_carry_the_spiffe_ids(self):
        directory = tempfile.mkdtemp()
        self.addCleanup(subprocess.run, ["rm", "-rf", directory])
        certs = mtls.make_certs(directory)
        for leaf, identity in ((certs.server_cert, certs.server_id), (certs.client_cert, certs.client_id)):
            verified = subprocess.run(["openssl", "verify", "-CAfile", str(certs.ca), str(leaf)],
                                      capture_output=True, text=True)
            self.assertEqual(verified.returncode, 0, verified.stdout + verified.stderr)
            text = subprocess.run(["openssl", "x509", "-in", str(leaf), "-noout", "-text"],
                                  capture_output=True, text=True).stdout
            self.assertIn(f"URI:{identity}", text)
            self.assertIn("TLS Web Client Authentication", text)
            self.assertIn("TLS Web Server Authentication", text)
            self.assertIn("prime256v1", text)

    def test_handshakes_are_read_from_envoy_stats(self):
        stats = ("cluster.upstream.ssl.handshake: 3\nlistener.127.0.0.1_4000.ssl.handshake: 2\n"
                 "listener.127.0.0.1_4000.ssl.no_certificate: 0\ncluster.upstream.upstream_rq_200: 9\n")
        self.assertEqual(mtls.envoy_handshakes(stats), 5)
        self.assertEqual(mtls.envoy_handshakes("cluster.upstream.upstream_rq_200: 9\n"), 0)


class TlsCost(unittest.TestCase):
    def test_each_tls_case_is_set_against_its_plaintext_twin(self):
        def case(cpu, p50, rss_kb):
            return {"cpu_us_per_req_max": [cpu], "cpu_us_per_req_1000": [cpu * 2],
                    "added_p50_1000": [p50], "added_p99_1000": [p50 * 3], "rss_load_kb": [rss_kb]}
        summary = {"mesh-path": case(80.0, 300, 10240), "mesh-path+mtls": case(95.5, 340, 11264),
                   "envoy-path": case(250.0, 700, 130000), "envoy-path+tls": case(270.0, 760, 131024)}
        out = io.StringIO()
        bench.print_tls_cost(summary, [1000], out)
        text = out.getvalue()
        self.assertIn("| mesh-path+mtls - mesh-path  | +15.5           | +31.0            | +40           "
                      "| +120          | +1.0        |", text)
        self.assertIn("| envoy-path+tls - envoy-path | +20.0           | +40.0            | +60 ", text)
        self.assertNotIn("telemetry", text, "a pair measured on one side only is left out")
        empty = io.StringIO()
        bench.print_tls_cost({"mesh-path": case(1, 1, 1)}, [1000], empty)
        self.assertEqual(empty.getvalue(), "")
