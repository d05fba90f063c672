"""Validation of rendered objects against the JSON schemas kept in deploy/k8s/schemas.

`Validator(schema_dir).errors(obj)` lists every schema violation of one object (empty: valid),
with the JSON path of each; an object whose apiVersion/kind has no schema is an error too.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any, Dict, List, Mapping, Tuple

import jsonschema
import referencing
import referencing.jsonschema

# What the kubernetes-validate schemas call their shared definitions file.
K8S_DEFINITIONS_URI = "/api/_definitions.json"


class Validator:
    def __init__(self, schema_dir: pathlib.Path):
        self.schema_dir = schema_dir
        manifest = json.loads((schema_dir / "MANIFEST.json").read_text())
        self.by_kind: Dict[Tuple[str, str], Dict[str, Any]] = {}
        resources = []
        for path in manifest["files"]:
            schema = json.loads((schema_dir / path).read_text())
            if path.endswith("/_definitions.json"):
                resource = referencing.Resource.from_contents(
                    schema, default_specification=referencing.jsonschema.DRAFT202012)
                # The per-kind files refer to it as /api/_definitions.json relative to their own $id.
                resources.append((K8S_DEFINITIONS_URI, resource))
                if resource.id():
                    resources.append((resource.id(), resource))
                continue
            for api_version, kind in self._kinds(schema):
                self.by_kind[(api_version, kind)] = schema
        self.registry = referencing.Registry().with_resources(resources)

    @staticmethod
    def _kinds(schema: Mapping[str, Any]) -> List[Tuple[str, str]]:
        if "x-dp-group-version-kind" in schema:
            gvk = schema["x-dp-group-version-kind"]
            return [("%s/%s" % (gvk["group"], gvk["version"]), gvk["kind"])]
        result = []
        for gvk in schema.get("x-kubernetes-group-version-kind", []):
            api_version = "%s/%s" % (gvk["group"], gvk["version"]) if gvk["group"] else gvk["version"]
            result.append((api_version, gvk["kind"]))
        return result

    def has_schema(self, api_version: str, kind: str) -> bool:
        return (api_version, kind) in self.by_kind

    def errors(self, obj: Mapping[str, Any]) -> List[str]:
        key = (obj.get("apiVersion"), obj.get("kind"))
        name = "%s/%s %s" % (key[0], key[1], obj.get("metadata", {}).get("name"))
        if key not in self.by_kind:
            return ["%s: no schema for apiVersion %s kind %s in %s" % (name, key[0], key[1], self.schema_dir)]
        validator = jsonschema.Draft202012Validator(self.by_kind[key], registry=self.registry)
        problems = []
        for error in sorted(validator.iter_errors(obj), key=lambda e: list(e.absolute_path)):
            where = "/".join(str(p) for p in error.absolute_path) or "(root)"
            problems.append("%s: %s: %s" % (name, where, error.message[:300]))
        return problems
