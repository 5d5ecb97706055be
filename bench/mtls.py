"""The benchmark's TLS cases: what mutual TLS between two proxies costs (issue 17).

A mesh with security on encrypts every hop between sidecars and makes both
ends prove who they are. bench.py measures that hop twice, the same way it
measures everything else (same rounds, same columns):

  mesh-path+mtls   client -> sidecar outbound ==mTLS==> sidecar inbound -> upstream
                   Both sidecars get their certificates from a real
                   mesh-control: its CA signs a CSR from each (mesh/control/src/ca.rs),
                   each proves its identity with the one-time bootstrap token
                   `meshctl up` would hand it (MESH_IDENTITY_TOKEN, below), and
                   the two then talk TLS 1.3 with SPIFFE identities
                   (mesh/proxy/src/tls.rs). A mesh-wide PeerAuthentication
                   STRICT makes the server sidecar refuse plaintext, so the
                   case cannot quietly measure a plaintext hop: a 200 through
                   it is a 200 over mutual TLS. With telemetry on, the server
                   sidecar's own metrics must say so too
                   (connection_security_policy="mutual_tls", none "none").
  envoy-path+tls   client -> Envoy ==TLS, client certificate==> Envoy -> upstream
                   The same shape with two Envoys: the client Envoy originates
                   TLS with a client certificate and checks the server's SPIFFE
                   ID, the server Envoy requires a client certificate
                   (`require_client_certificate`) and checks the client's. The
                   certificates are made here with the openssl CLI, ECDSA P-256
                   and TLS 1.3 only, what the mesh's CA and sidecars use, and
                   they carry the same SPIFFE URIs. Envoy's TLS counters
                   (`ssl.handshake` on both sides) must show the handshakes.

Their plaintext twins (mesh-path, and envoy-path: two Envoys without TLS) are
the baseline: the difference is what mutual TLS adds on each side.

This file holds what those cases need beside the processes: the bootstrap
token, the STRICT policy, the certificates and Envoy's TLS settings, and the
checks that read the proxies' own accounts of the hop. Everything here is
tested in test_bench.py without starting a proxy.
"""

import hashlib
import hmac
import re
import shutil
import subprocess
from pathlib import Path

# mesh_api::identity::DEFAULT_TRUST_DOMAIN; locally the namespace is Istio's
# default and the service account is the service's name (meshctl up's rule).
TRUST_DOMAIN = "cluster.local"
NAMESPACE = "default"

# Applied to mesh-control before the server sidecar starts. The root
# namespace's selector-less policy is mesh-wide (Istio's documented YAML,
# mesh/api/src/config/peer_authentication.rs).
STRICT_MESH_WIDE = """apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: default
  namespace: istio-system
spec:
  mtls:
    mode: STRICT
"""


# === mesh: identities from mesh-control's CA ===


def spiffe_id(service_account, namespace=NAMESPACE):
    """`spiffe://cluster.local/ns/<namespace>/sa/<service account>` (mesh_api::identity)."""
    return f"spiffe://{TRUST_DOMAIN}/ns/{namespace}/sa/{service_account}"


def hmac_sha256_hex(key, message):
    return hmac.new(key.encode(), message.encode(), hashlib.sha256).hexdigest()


def bootstrap_token(write_token, service_account, namespace=NAMESPACE):
    """The one-time token that proves an identity to mesh-control's CA.

    The same as mesh_api::identity::bootstrap_token, what `meshctl up`
    hands each proxy: HMAC-SHA256 of the SPIFFE ID, keyed with the control
    plane's write token, in lower-case hex. Only someone holding the write
    token can make one, and one token proves one identity only.
    """
    return hmac_sha256_hex(write_token, spiffe_id(service_account, namespace))


def identity_env(write_token, service):
    """What a sidecar needs to ask the CA for its certificate: its service
    account (the service's name, as meshctl up names them), its namespace
    and its bootstrap token."""
    return {
        "MESH_NAMESPACE": NAMESPACE,
        "MESH_SERVICE_ACCOUNT": service,
        "MESH_IDENTITY_TOKEN": bootstrap_token(write_token, service),
    }


def apply_request(yaml_text, name="bench-peer-authentication.yaml"):
    """The body of mesh-control's `POST /v1/config/apply` (mesh_api::config::ApplyRequest)."""
    return {"files": [{"name": name, "content": yaml_text}]}


def holds_certificate(certs, service):
    """Whether a sidecar's `GET /certs` answer (mesh_api::identity::WorkloadCerts)
    shows a certificate for `service`'s identity."""
    return bool(certs.get("certChain")) and certs.get("identity") == spiffe_id(service)


def inbound_mode(config_dump):
    """The PeerAuthentication mode a sidecar's inbound listener runs, from its
    `GET /config_dump` (no snapshot yet: None; no policy: PERMISSIVE)."""
    snapshot = config_dump.get("snapshot")
    if not snapshot:
        return None
    mode = snapshot.get("inbound", {}).get("mtls", {}).get("mode", "UNSET")
    return "PERMISSIVE" if mode == "UNSET" else mode


_SAMPLE = re.compile(r"^istio_requests_total\{(?P<labels>[^}]*)\}\s+(?P<value>\S+)", re.M)


def security_policies(prometheus_text):
    """Requests the destination sidecar counted, by connection_security_policy:
    {"mutual_tls": 1234} from its `/stats/prometheus`."""
    counts = {}
    for sample in _SAMPLE.finditer(prometheus_text):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', sample.group("labels")))
        if labels.get("reporter") != "destination":
            continue
        policy = labels.get("connection_security_policy", "?")
        counts[policy] = counts.get(policy, 0) + float(sample.group("value"))
    return counts


def check_mutual_tls_counted(counts, where):
    """Fail loudly unless every request the server sidecar counted came over mutual TLS."""
    plain = {k: v for k, v in counts.items() if k != "mutual_tls" and v}
    if plain or not counts.get("mutual_tls"):
        raise RuntimeError(
            f"the hop into {where} was not all mutual TLS: istio_requests_total by "
            f"connection_security_policy is {counts or 'empty'}; the mesh-path+mtls cases "
            "measure the encrypted hop only (see bench/mtls.py)")


# === Envoy: certificates made here, TLS on both Envoys ===


class Certs:
    """One CA and two leaves (server and client) in `directory`, PEM files."""

    def __init__(self, directory):
        self.dir = Path(directory)
        self.ca = self.dir / "ca.crt"
        self.server_cert, self.server_key = self.dir / "server.crt", self.dir / "server.key"
        self.client_cert, self.client_key = self.dir / "client.crt", self.dir / "client.key"
        # The same identities the mesh-path+mtls sidecars hold.
        self.server_id = spiffe_id("upstream")
        self.client_id = spiffe_id("bench-client")


def openssl_commands(certs):
    """The openssl CLI calls that make `certs`: ECDSA P-256 keys, a one-day CA,
    and two leaves with one SPIFFE URI SAN each, usable for client and server
    auth (as the mesh's workload certificates are). Returns [(argv, extfile
    text or None)]."""
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    commands = [([
        "openssl", "req", "-x509", *ec, "-keyout", str(certs.dir / "ca.key"), "-out", str(certs.ca),
        "-days", "1", "-subj", "/O=micromesh bench/CN=bench-ca",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign"], None)]
    for name, cert, key, identity in (("server", certs.server_cert, certs.server_key, certs.server_id),
                                      ("client", certs.client_cert, certs.client_key, certs.client_id)):
        csr = certs.dir / f"{name}.csr"
        commands.append((["openssl", "req", *ec, "-keyout", str(key), "-out", str(csr),
                          "-subj", f"/O=micromesh bench/CN={name}"], None))
        commands.append((["openssl", "x509", "-req", "-in", str(csr), "-CA", str(certs.ca),
                          "-CAkey", str(certs.dir / "ca.key"), "-CAcreateserial", "-days", "1",
                          "-out", str(cert), "-extfile", str(certs.dir / f"{name}.ext")],
                         "basicConstraints=critical,CA:FALSE\n"
                         "keyUsage=critical,digitalSignature,keyEncipherment\n"
                         "extendedKeyUsage=serverAuth,clientAuth\n"
                         f"subjectAltName=critical,URI:{identity}\n"))
    return commands


def make_certs(directory):
    """Run the openssl calls; a missing openssl or a failed call is a clear error."""
    if not shutil.which("openssl"):
        raise RuntimeError("envoy-path+tls needs the openssl CLI to make its certificates "
                           "(apt-get install openssl)")
    certs = Certs(directory)
    certs.dir.mkdir(parents=True, exist_ok=True)
    for argv, extfile in openssl_commands(certs):
        if extfile:
            Path(argv[argv.index("-extfile") + 1]).write_text(extfile)
        out = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            raise RuntimeError(f"making the Envoy certificates failed: {' '.join(argv)}:\n"
                               f"{out.stderr.strip()[-600:]}")
    return certs


def _common_tls_context(cert, key, ca, peer_id):
    """A certificate to present, the CA a peer's chain must end at, and the
    peer's SPIFFE ID (Istio's Envoys match the URI SAN the same way); TLS 1.3
    only, as between micromesh's sidecars."""
    return {
        "tls_params": {"tls_minimum_protocol_version": "TLSv1_3",
                       "tls_maximum_protocol_version": "TLSv1_3"},
        "tls_certificates": [{"certificate_chain": {"filename": str(cert)},
                              "private_key": {"filename": str(key)}}],
        "validation_context": {
            "trusted_ca": {"filename": str(ca)},
            "match_typed_subject_alt_names": [{"san_type": "URI", "matcher": {"exact": peer_id}}],
        },
    }


def envoy_server_tls(certs):
    """The server Envoy's listener `transport_socket`: TLS, client certificate required."""
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            "require_client_certificate": True,
            "common_tls_context": _common_tls_context(certs.server_cert, certs.server_key, certs.ca,
                                                      certs.client_id),
        },
    }


def envoy_client_tls(certs):
    """The client Envoy's cluster `transport_socket`: originate TLS with a client certificate."""
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "common_tls_context": _common_tls_context(certs.client_cert, certs.client_key, certs.ca,
                                                      certs.server_id),
        },
    }


def envoy_handshakes(stats_text):
    """The sum of every `*.ssl.handshake` counter in Envoy's `/stats` text."""
    total = 0
    for line in stats_text.splitlines():
        name, _, value = line.partition(": ")
        if name.endswith(".ssl.handshake") and value.strip().isdigit():
            total += int(value)
    return total
