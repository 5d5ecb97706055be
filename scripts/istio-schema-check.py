#!/usr/bin/env python3
"""Check Istio YAML against Istio's own CRD schemas, offline.

micromesh promises that a lab's YAML is valid Istio YAML. This script is the
referee: it validates every resource document of every FILE against the
`openAPIV3Schema` of its kind and version in Istio's CRD file (istio/api's
kubernetes/customresourcedefinitions.gen.yaml), the way the Kubernetes API
server does before Istio ever sees the resource.

    scripts/istio-schema-check.py --crds customresourcedefinitions.gen.yaml labs/*/*.yaml
    scripts/istio-schema-check.py --crds crds.yaml --list-fields VirtualService DestinationRule Gateway

Output: one line per document, `OK` or `FAIL` with the schema errors and their
field paths; exit status 1 when any document fails (or has no CRD at all, like
the Mixer and rbac.istio.io kinds Istio has removed).

How the OpenAPI schema becomes a JSON Schema, as the API server reads it:
- `nullable: true` also allows null;
- objects with `properties` are closed (unknown fields are errors), because
  kubectl's default strict field validation rejects them, unless the schema
  says `x-kubernetes-preserve-unknown-fields`;
- `apiVersion`, `kind` and `metadata` are implicit at the root (with the API
  server's rules for names: DNS subdomains, namespaces DNS labels);
- `format: int32`/`uint32`/`int64` bound integers;
- `x-kubernetes-validations` (CEL): the duration rule Istio uses everywhere
  (`duration(self) >= duration('1ms')`) is checked with Go's duration syntax;
  other CEL rules are listed on stderr as not checked.

Needs Python 3 with PyYAML and jsonschema (`pip install PyYAML jsonschema`).
"""

import argparse
import re
import sys

try:
    import yaml
    import jsonschema
    from jsonschema import Draft202012Validator, FormatChecker, validators
except ImportError as missing:  # a missing prerequisite fails clearly
    sys.exit(
        f"istio-schema-check: {missing}. Install the prerequisites: "
        "python3 -m pip install PyYAML jsonschema"
    )

DURATION_RULE = "duration(self) >= duration('1ms')"
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
# Go's time.ParseDuration syntax, which Istio's durations follow.
DURATION = re.compile(r"^[-+]?(?:(?:\d+\.?\d*|\.\d+)(?:ns|us|µs|ms|s|m|h))+$")
UNITS_NS = {"ns": 1, "us": 1e3, "µs": 1e3, "ms": 1e6, "s": 1e9, "m": 60e9, "h": 3600e9}
INT_RANGES = {
    "int32": (-(2**31), 2**31 - 1),
    "uint32": (0, 2**32 - 1),
    "int64": (-(2**63), 2**63 - 1),
}

unchecked_rules = set()


def duration_ns(text):
    """Nanoseconds of a Go duration string, or None if it is not one."""
    if not isinstance(text, str) or not DURATION.match(text):
        return None
    sign = -1 if text.startswith("-") else 1
    total = 0.0
    for number, unit in re.findall(r"(\d+\.?\d*|\.\d+)(ns|us|µs|ms|s|m|h)", text):
        total += float(number) * UNITS_NS[unit]
    return sign * total


# === OpenAPI v3 (structural) -> JSON Schema ===


def convert(schema, root=False):
    """Translate one OpenAPI schema node, recursively."""
    if isinstance(schema, list):
        return [convert(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key in ("properties", "patternProperties", "definitions"):
            out[key] = {k: convert(v) for k, v in value.items()}
        elif key in ("items", "additionalProperties", "not"):
            out[key] = convert(value)
        elif key in ("allOf", "anyOf", "oneOf"):
            out[key] = [convert(v) for v in value]
        elif key == "x-kubernetes-validations":
            rules = [v.get("rule", "") for v in value]
            if DURATION_RULE in rules:
                out["x-duration-min-1ms"] = True
            unchecked_rules.update(r for r in rules if r != DURATION_RULE)
        elif key.startswith("x-kubernetes-") or key in ("nullable", "description"):
            continue
        else:
            out[key] = value

    if schema.get("nullable"):
        kind = out.get("type")
        if isinstance(kind, str):
            out["type"] = [kind, "null"]
        if "enum" in out:
            out["enum"] = list(out["enum"]) + [None]

    preserve = schema.get("x-kubernetes-preserve-unknown-fields", False)
    if "properties" in out and "additionalProperties" not in out and not preserve:
        out["additionalProperties"] = False

    if root:
        props = out.setdefault("properties", {})
        props.setdefault("apiVersion", {"type": "string"})
        props.setdefault("kind", {"type": "string"})
        props.setdefault(
            "metadata",
            {
                "type": "object",
                "properties": {
                    # The API server's name rules: a DNS subdomain, a DNS label.
                    "name": {"type": "string", "maxLength": 253, "pattern": DNS_SUBDOMAIN},
                    "namespace": {"type": "string", "maxLength": 63, "pattern": DNS_LABEL},
                    "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                    "annotations": {
                        "type": "object",
                        "additionalProperties": {"type": "string"},
                    },
                },
            },
        )
        out["required"] = sorted(set(out.get("required", [])) | {"apiVersion", "kind", "metadata"})
    return out


def duration_keyword(validator, enabled, instance, schema):
    if not enabled or not isinstance(instance, str):
        return
    ns = duration_ns(instance)
    if ns is None:
        yield jsonschema.ValidationError(
            f"{instance!r} is not a duration (write e.g. '5s', '100ms', '1.5s')"
        )
    elif ns < 1e6:
        yield jsonschema.ValidationError(f"{instance!r}: must be a valid duration greater than 1ms")


Validator = validators.extend(Draft202012Validator, {"x-duration-min-1ms": duration_keyword})

formats = FormatChecker()
for name, (low, high) in INT_RANGES.items():
    formats.checks(name)(lambda v, low=low, high=high: not isinstance(v, int) or low <= v <= high)


# === CRDs ===


def load_crds(path):
    """(group, version, kind) -> converted schema."""
    with open(path, encoding="utf-8") as f:
        documents = [d for d in yaml.safe_load_all(f) if d]
    schemas = {}
    for crd in documents:
        if crd.get("kind") != "CustomResourceDefinition":
            continue
        spec = crd["spec"]
        for version in spec.get("versions", []):
            if not version.get("served", True):
                continue
            raw = version.get("schema", {}).get("openAPIV3Schema")
            if raw is None:
                continue
            key = (spec["group"], version["name"], spec["names"]["kind"])
            schemas[key] = (convert(raw, root=True), raw)
    return schemas


def field_paths(schema, path=""):
    """Every field path of a raw schema: `spec.http[].fault.delay.percent`."""
    for name, sub in sorted((schema.get("properties") or {}).items()):
        here = f"{path}.{name}" if path else name
        yield here
        yield from field_paths_below(sub, here)


def field_paths_below(schema, path):
    yield from field_paths(schema, path)
    if "items" in schema:
        yield from field_paths_below(schema["items"], path + "[]")
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict):
        yield from field_paths_below(extra, path + ".*")


# === checking ===


def format_path(error):
    parts = []
    for p in error.absolute_path:
        if isinstance(p, int):
            parts.append(f"[{p}]")
        else:
            parts.append(("." if parts else "") + str(p))
    return "".join(parts) or "(document)"


def describe(error):
    if error.validator == "additionalProperties" and error.validator_value is False:
        known = set(error.schema.get("properties", {}))
        unknown = sorted(k for k in error.instance if k not in known)
        base = format_path(error)
        return "; ".join(f"{base}.{k}: unknown field" for k in unknown)
    return f"{format_path(error)}: {error.message}"


def check_document(schemas, doc):
    """None when valid, else the error text."""
    if not isinstance(doc, dict):
        return "not a resource (expected a mapping with apiVersion and kind)"
    api_version, kind = doc.get("apiVersion"), doc.get("kind")
    if not isinstance(api_version, str) or not isinstance(kind, str):
        return "apiVersion and kind are required"
    group, _, version = api_version.rpartition("/")
    entry = schemas.get((group, version, kind))
    if entry is None:
        return f"no CRD serves {api_version} {kind} (not an Istio resource, or removed from Istio)"
    validator = Validator(entry[0], format_checker=formats)
    errors = sorted(validator.iter_errors(doc), key=lambda e: [str(p) for p in e.absolute_path])
    if not errors:
        return None
    return "; ".join(describe(e) for e in errors)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--crds", required=True, help="Istio's customresourcedefinitions.gen.yaml")
    parser.add_argument(
        "--list-fields",
        nargs="+",
        metavar="KIND",
        help="print every field path of these kinds (their v1 schema) and exit",
    )
    parser.add_argument("files", nargs="*", metavar="FILE")
    args = parser.parse_args()

    try:
        schemas = load_crds(args.crds)
    except (OSError, yaml.YAMLError) as e:
        sys.exit(f"istio-schema-check: cannot read the CRDs in {args.crds}: {e}")

    if args.list_fields:
        for kind in args.list_fields:
            # networking.istio.io or security.istio.io: kinds are unique across Istio's groups.
            entry = next((e for (g, v, k), e in schemas.items() if v == "v1" and k == kind), None)
            if entry is None:
                sys.exit(f"istio-schema-check: no {kind} served at v1 in {args.crds}")
            for path in field_paths(entry[1]["properties"]["spec"], "spec"):
                print(f"{kind} {path}")
        return 0

    if not args.files:
        parser.error("give at least one FILE to check")

    failed = False
    for name in args.files:
        try:
            with open(name, encoding="utf-8") as f:
                documents = list(yaml.safe_load_all(f))
        except (OSError, yaml.YAMLError) as e:
            print(f"{name}: FAIL cannot read YAML: {e}".replace("\n", " "))
            failed = True
            continue
        number = 0
        for doc in documents:
            if doc is None:
                continue  # empty document
            number += 1
            label = f"{name} #{number}"
            if isinstance(doc, dict):
                meta = doc.get("metadata") if isinstance(doc.get("metadata"), dict) else {}
                label += f" {doc.get('kind', '?')} {meta.get('name', '?')}"
            problem = check_document(schemas, doc)
            if problem is None:
                print(f"{label}: OK")
            else:
                print(f"{label}: FAIL {problem}")
                failed = True

    if unchecked_rules:
        print(
            f"note: {len(unchecked_rules)} CEL validation rule(s) other than the duration rule were not checked",
            file=sys.stderr,
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
