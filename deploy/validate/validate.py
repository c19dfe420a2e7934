#!/usr/bin/env python3
"""Strict schema validation of rendered manifests, built-in kinds and custom resources alike.

Usage: validate.py --kubernetes-version 1.30 [--kubernetes-version 1.37 ...] FILE...

* Built-in kinds: kubernetes-validate's schemas for each given Kubernetes version, strict
  (a field the API does not know is an error, as `kubectl apply --validate=strict` would say).
* Custom resources: the vendored CRD schemas in deploy/schemas/ (upstream openAPIV3Schema),
  made strict the way the API server treats structural schemas: an object with `properties`
  admits no other field unless it says `x-kubernetes-preserve-unknown-fields`; `nullable` and
  `x-kubernetes-int-or-string` are honoured; `metadata` is checked against the strict ObjectMeta.
  CEL rules (`x-kubernetes-validations`) are not evaluated: only the API server can.
* A kind with no schema here is an error, never a silent pass. So is a duplicate kind/name.
"""
import argparse
import copy
import glob
import os
import sys

import jsonschema
import referencing
import referencing.jsonschema
import yaml
from kubernetes_validate import utils as kv

SCHEMAS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "schemas")
OBJECT_META = "https://kubernetes.io/api/_definitions.json#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"


def structural_to_strict(schema):
    """An OpenAPI v3 structural schema as a strict JSON Schema (2020-12)."""
    if isinstance(schema, list):
        return [structural_to_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key in ("properties", "patternProperties"):
            out[key] = {name: structural_to_strict(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties", "not") or key in ("allOf", "anyOf", "oneOf"):
            out[key] = structural_to_strict(value)
        elif key.startswith("x-kubernetes-") or key == "nullable":
            continue
        else:
            out[key] = value
    if schema.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if schema.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if (out.get("type") == "object" and "properties" in out and "additionalProperties" not in out
            and not schema.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


def load_crd_schemas():
    """(apiVersion, kind) -> strict JSON Schema, from deploy/schemas/*.yaml."""
    schemas = {}
    for path in sorted(glob.glob(os.path.join(SCHEMAS, "*.yaml"))):
        with open(path) as f:
            doc = yaml.safe_load(f)
        schema = structural_to_strict(doc["openAPIV3Schema"])
        props = schema.setdefault("properties", {})
        props["metadata"] = {"$ref": OBJECT_META}
        schema["required"] = sorted(set(schema.get("required", [])) | {"apiVersion", "kind", "metadata"})
        schemas[(doc["apiVersion"], doc["kind"])] = (os.path.basename(path), schema)
    return schemas


def definitions_registry(version):
    """The strict Kubernetes definitions of `version` (for ObjectMeta), as a referencing registry."""
    defs = kv.schema_contents(f"kubernetes-json-schema/v{version}.0-local-strict/_definitions.json", version)
    return referencing.Resource.from_contents(defs) @ referencing.Registry()


def name_of(doc):
    meta = doc.get("metadata") or {}
    ns = meta.get("namespace")
    return f"{doc.get('kind')}/{(ns + '/') if ns else ''}{meta.get('name')}"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kubernetes-version", action="append", required=True)
    parser.add_argument("files", nargs="+")
    args = parser.parse_args()

    crds = load_crd_schemas()
    registries = {v: definitions_registry(v) for v in args.kubernetes_version}
    failures = 0
    for path in args.files:
        with open(path) as f:
            docs = [d for d in yaml.safe_load_all(f) if d]
        seen = set()
        counts = {"built-in": 0, "custom": 0}
        for doc in docs:
            where = f"{path}: {name_of(doc)}"
            if not isinstance(doc, dict) or "apiVersion" not in doc or "kind" not in doc:
                print(f"ERROR {where}: no apiVersion/kind")
                failures += 1
                continue
            if name_of(doc) in seen:
                print(f"ERROR {where}: defined twice")
                failures += 1
            seen.add(name_of(doc))
            crd = crds.get((doc["apiVersion"], doc["kind"]))
            # A CRD schema does not change with the Kubernetes version: checked once (ObjectMeta of
            # the first version given); built-in kinds once per version.
            for version in args.kubernetes_version[:1] if crd else args.kubernetes_version:
                try:
                    if crd:
                        source, schema = crd
                        validator = jsonschema.Draft202012Validator(schema, registry=registries[version])
                        errors = sorted(validator.iter_errors(copy.deepcopy(doc)), key=lambda e: list(e.path))
                        for e in errors:
                            field = ".".join(str(p) for p in e.absolute_path) or "(root)"
                            print(f"ERROR {where} [{source}]: {field}: {e.message}")
                        failures += len(errors)
                    else:
                        kv.validate(doc, version, strict=True)
                except kv.ValidationError as e:
                    field = ".".join(str(p) for p in e.path) or "(root)"
                    print(f"ERROR {where} [k8s {e.version}]: {field}: {e.message}")
                    failures += 1
                except kv.SchemaNotFoundError:
                    print(f"ERROR {where}: no schema for {doc['apiVersion']} {doc['kind']} in Kubernetes "
                          f"{version} nor in deploy/schemas/")
                    failures += 1
            counts["custom" if crd else "built-in"] += 1
        print(f"{path}: {len(docs)} resources ({counts['built-in']} built-in, {counts['custom']} custom) "
              f"checked against Kubernetes {', '.join(args.kubernetes_version)}")
    if failures:
        print(f"{failures} schema error(s)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
