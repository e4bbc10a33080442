"""A KubeRay object checked as the Kubernetes API server would check it: against its CRD's schema, strictly.

:func:`crd_errors` validates a ``RayCluster``/``RayJob``/``RayService`` document against the committed schema of
:mod:`jobs.cluster.crds` with ``jsonschema``, after :func:`to_json_schema` has given the Kubernetes
structural-schema keywords their API-server meaning:

* ``x-kubernetes-int-or-string: true`` — an integer or a string;
* ``nullable: true`` — ``null`` is allowed too (otherwise a ``null`` value is a type error);
* unknown fields — refused, as ``kubectl apply --validate=strict`` (server-side strict field validation) refuses
  fields the API server would prune: everywhere except under ``x-kubernetes-preserve-unknown-fields: true``; an
  object schema with ``additionalProperties`` is a map (any key, each value checked); one with neither
  ``properties`` nor ``additionalProperties`` keeps no field at all;
* ``x-kubernetes-embedded-resource: true`` and the root — ``apiVersion``, ``kind`` and ``metadata`` are allowed,
  ``metadata`` checked as an ``ObjectMeta`` (:data:`OBJECT_META`: its fields, their types).

Not checked: the CEL rules (``x-kubernetes-validations``), ``format`` and list-map key uniqueness. Every error is a
line ``Kind name: dotted.path[0].field: problem``.
"""

from __future__ import annotations

import functools
from typing import Any

import jsonschema

from jobs.cluster import crds

STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
OBJECT_META = {  # the settable fields of a Kubernetes ObjectMeta (meta/v1), as the API server decodes them
    "type": "object", "additionalProperties": False, "properties": {
        "name": {"type": "string"}, "generateName": {"type": "string"}, "namespace": {"type": "string"},
        "labels": STRING_MAP, "annotations": STRING_MAP, "finalizers": {"type": "array", "items": {"type": "string"}},
        "ownerReferences": {"type": "array", "items": {"type": "object"}}, "uid": {"type": "string"},
        "resourceVersion": {"type": "string"}, "generation": {"type": "integer"},
        "creationTimestamp": {"type": ["string", "null"]}, "deletionTimestamp": {"type": ["string", "null"]},
        "deletionGracePeriodSeconds": {"type": "integer"}, "managedFields": {"type": "array"},
        "selfLink": {"type": "string"}}}
KUBERNETES_ONLY = ("nullable", "format", "default", "x-kubernetes-int-or-string",
                   "x-kubernetes-preserve-unknown-fields", "x-kubernetes-embedded-resource",
                   "x-kubernetes-validations", "x-kubernetes-list-type", "x-kubernetes-list-map-keys",
                   "x-kubernetes-map-type")


def to_json_schema(node: dict[str, Any], resource: bool = False) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) that accepts what the API server accepts for the structural schema ``node``
    under strict field validation (see the module docstring); ``resource``: ``node`` is an object's root."""
    out = crds.map_subschemas(node, lambda _name, child: to_json_schema(child))
    for keyword in KUBERNETES_ONLY:
        out.pop(keyword, None)
    if node.get("x-kubernetes-int-or-string"):
        out["type"] = ["integer", "string"]
    if node.get("nullable") and "type" in out:
        out["type"] = [*(out["type"] if isinstance(out["type"], list) else [out["type"]]), "null"]
    if resource or node.get("x-kubernetes-embedded-resource"):
        out["properties"] = {**out.get("properties", {}), "apiVersion": {"type": "string"},
                             "kind": {"type": "string"}, "metadata": OBJECT_META}
    if node.get("type") == "object" and "additionalProperties" not in node \
            and not node.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


@functools.cache
def validator(kind: str) -> jsonschema.protocols.Validator:
    """The strict validator of a KubeRay ``kind`` (``RayCluster``, ``RayJob``, ``RayService``)."""
    document = crds.load()
    if kind not in document["kinds"]:
        raise KeyError(f"{kind} is not a KubeRay kind ({', '.join(sorted(document['kinds']))})")
    schema = to_json_schema(document["kinds"][kind], resource=True)
    schema["$defs"] = {name: to_json_schema(definition) for name, definition in document["$defs"].items()}
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return jsonschema.Draft202012Validator(schema)


def dotted(path: Any) -> str:
    """``spec.workerGroupSpecs[0].template`` from a jsonschema path (keys and list indices)."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else f".{part}" if text else str(part)
    return text or "(root)"


def _describe(error: jsonschema.ValidationError) -> list[str]:
    where = dotted(error.absolute_path)
    if error.validator == "additionalProperties":
        known = set(error.schema.get("properties", {}))
        return [f"{where + '.' if error.absolute_path else ''}{field}: unknown field"
                for field in sorted(set(error.instance) - known)]
    return [f"{where}: {error.message}"]


def crd_errors(document: dict[str, Any]) -> list[str]:
    """Every way ``document`` (a KubeRay object) breaks its CRD's schema, one line each, naming the object and the
    field; empty when the API server would accept it with strict field validation."""
    kind = document.get("kind")
    name = f"{kind} {(document.get('metadata') or {}).get('name', '<no name>')}"
    expected = f"{crds.API_GROUP}/{crds.API_VERSION}"
    if document.get("apiVersion") != expected:
        return [f"{name}: apiVersion: {document.get('apiVersion')!r} is not {expected!r}"]
    try:
        check = validator(str(kind))
    except KeyError as err:
        return [f"{name}: kind: {err.args[0]}"]
    errors = sorted(check.iter_errors(document), key=lambda e: [str(p) for p in e.absolute_path])
    specific = {tuple(e.absolute_path) for e in errors if e.validator != "anyOf"}
    errors = [e for e in errors if e.validator != "anyOf" or tuple(e.absolute_path) not in specific]
    return [f"{name}: {line}" for error in errors for line in _describe(error)]
