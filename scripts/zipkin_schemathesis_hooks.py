"""schemathesis hooks for scripts/zipkin-conformance.sh (loaded through
SCHEMATHESIS_HOOKS): lets schemathesis send `POST /api/v2/spans` as
`application/x-protobuf`, the second body format Zipkin's spec lists.

schemathesis generates a span list as JSON-like data from the spec's
`ListOfSpans` schema; this encodes it as Zipkin's proto3 `ListOfSpans`
(openzipkin's zipkin.proto: the same field numbers as
mesh/control/src/collector/proto.rs), by hand with the standard library.
Generated data that breaks the schema on purpose (negative tests) is
encoded as far as it goes: a field of the wrong type is left out, an id
that is not hex is sent as its raw text, so the collector sees bad ids.
"""

import struct

import schemathesis

KINDS = {"CLIENT": 1, "SERVER": 2, "PRODUCER": 3, "CONSUMER": 4}


def varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # negative numbers: two's complement, as protobuf does
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def key(field: int, wire_type: int) -> bytes:
    return varint(field << 3 | wire_type)


def length_delimited(field: int, payload: bytes) -> bytes:
    return key(field, 2) + varint(len(payload)) + payload


def fixed64(field: int, value: int) -> bytes:
    return key(field, 1) + struct.pack("<Q", value & ((1 << 64) - 1))


def id_bytes(value) -> bytes:
    text = str(value)
    try:
        return bytes.fromhex(text) if len(text) % 2 == 0 else bytes.fromhex("0" + text)
    except ValueError:
        return text.encode("utf-8", "replace")


def ip_bytes(value) -> bytes:
    import ipaddress

    try:
        return ipaddress.ip_address(str(value)).packed
    except ValueError:
        return b""


def endpoint(value) -> bytes:
    if not isinstance(value, dict):
        return b""
    out = b""
    if isinstance(value.get("serviceName"), str):
        out += length_delimited(1, value["serviceName"].encode())
    for field, name in ((2, "ipv4"), (3, "ipv6")):
        if name in value:
            packed = ip_bytes(value[name])
            if packed:
                out += length_delimited(field, packed)
    if isinstance(value.get("port"), int) and not isinstance(value.get("port"), bool):
        out += key(4, 0) + varint(value["port"])
    return out


def span(value) -> bytes:
    if not isinstance(value, dict):
        return b""
    out = b""
    for field, name in ((1, "traceId"), (2, "parentId"), (3, "id")):
        if name in value and value[name] is not None:
            out += length_delimited(field, id_bytes(value[name]))
    kind = value.get("kind")
    if isinstance(kind, str) and kind in KINDS:
        out += key(4, 0) + varint(KINDS[kind])
    if isinstance(value.get("name"), str):
        out += length_delimited(5, value["name"].encode())
    if isinstance(value.get("timestamp"), int) and not isinstance(value["timestamp"], bool):
        out += fixed64(6, value["timestamp"])
    if isinstance(value.get("duration"), int) and not isinstance(value["duration"], bool):
        out += key(7, 0) + varint(value["duration"])
    for field, name in ((8, "localEndpoint"), (9, "remoteEndpoint")):
        if name in value:
            out += length_delimited(field, endpoint(value[name]))
    for annotation in value.get("annotations") or []:
        if isinstance(annotation, dict):
            body = b""
            if isinstance(annotation.get("timestamp"), int):
                body += fixed64(1, annotation["timestamp"])
            if isinstance(annotation.get("value"), str):
                body += length_delimited(2, annotation["value"].encode())
            out += length_delimited(10, body)
    tags = value.get("tags")
    if isinstance(tags, dict):
        for tag_key, tag_value in tags.items():
            entry = length_delimited(1, str(tag_key).encode()) + length_delimited(2, str(tag_value).encode())
            out += length_delimited(11, entry)
    for field, name in ((12, "debug"), (13, "shared")):
        if value.get(name) is True:
            out += key(field, 0) + varint(1)
    return out


@schemathesis.serializer("application/x-protobuf")
def list_of_spans(ctx, value):
    """A JSON-shaped span list -> protobuf ListOfSpans bytes."""
    spans = value if isinstance(value, list) else [value]
    return b"".join(length_delimited(1, span(s)) for s in spans)
