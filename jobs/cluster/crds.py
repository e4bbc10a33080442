"""KubeRay's CRD schemas as this project keeps them: derived from KubeRay's own CRDs, committed, reproducible.

The KubeRay ``RayCluster``/``RayJob``/``RayService`` CRDs (``ray.io_*.yaml`` of KubeRay :data:`KUBERAY_VERSION`,
Apache-2.0) are not on any package registry; CI and every developer have them beside the checkout, in
``../shared/kuberay-crds/`` (:data:`DEFAULT_SOURCE`), a user's fresh clone does not. So :func:`derive` turns them
into one small JSON file, committed as :data:`SCHEMA_FILE` (with ``SOURCE.txt`` and KubeRay's ``LICENSE`` beside
it), and ``visor infra crds`` writes it. The derivation keeps exactly what validation needs:

* the ``openAPIV3Schema`` of the served and stored version ``v1`` of each CRD, every field unchanged
  (Kubernetes' structural-schema keys included: ``x-kubernetes-int-or-string``, ``nullable``,
  ``x-kubernetes-preserve-unknown-fields``, ``x-kubernetes-embedded-resource``, CEL ``x-kubernetes-validations``);
* minus every ``description`` (documentation only) and the root ``status`` (a subresource the operator writes,
  never part of a manifest);
* with every subtree of at least :data:`SHARE_MIN_CHARS` characters that occurs twice or more (the pod template
  schema appears in all three kinds) stored once under ``$defs`` and referenced as ``{"$ref": "#/$defs/NAME"}``
  (NAME: the property it first appears under, then 10 hex digits of its SHA-256 — stable across runs).

Invariant (tested when the source is present): the committed file is byte for byte what :func:`render_json` of
:func:`derive` gives for the source files, whose SHA-256s it records.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

KUBERAY_VERSION = "v1.7.0"
API_GROUP, API_VERSION = "ray.io", "v1"
CRD_FILES = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml",
             "RayService": "ray.io_rayservices.yaml"}
SCHEMA_DIR = Path(__file__).parent / "crds"
SCHEMA_FILE = SCHEMA_DIR / f"kuberay-{KUBERAY_VERSION}.json"
DEFAULT_SOURCE = Path(__file__).resolve().parents[2].parent / "shared" / "kuberay-crds"  # beside the checkout
SHARE_MIN_CHARS = 400
FAST_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the same YAML, parsed in C when libyaml is there
SCHEMA_LISTS = ("allOf", "anyOf", "oneOf")
SCHEMA_ONES = ("items", "additionalProperties", "not")


def subschemas(node: dict) -> Iterator[tuple[str, dict]]:
    """``(property name or keyword, schema)`` for every schema directly inside the schema ``node``."""
    for name, child in (node.get("properties") or {}).items():
        yield name, child
    for keyword in SCHEMA_ONES:
        if isinstance(node.get(keyword), dict):
            yield keyword, node[keyword]
    for keyword in SCHEMA_LISTS:
        for child in node.get(keyword) or []:
            yield keyword, child


def map_subschemas(node: dict, function) -> dict:
    """A copy of ``node`` whose direct sub-schemas are ``function(name, child)``."""
    out = {key: value for key, value in node.items() if key != "description"}
    if "properties" in node:
        out["properties"] = {name: function(name, child) for name, child in node["properties"].items()}
    for keyword in SCHEMA_ONES:
        if isinstance(node.get(keyword), dict):
            out[keyword] = function(keyword, node[keyword])
    for keyword in SCHEMA_LISTS:
        if keyword in node:
            out[keyword] = [function(keyword, child) for child in node[keyword]]
    return out


def _canonical(node: Any) -> str:
    return json.dumps(node, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def version_schema(crd: dict, kind: str) -> dict:
    """The ``openAPIV3Schema`` of version :data:`API_VERSION` of ``crd`` (checked to be ``kind`` of
    :data:`API_GROUP`), without descriptions or the root ``status``."""
    names = crd.get("spec", {}).get("names", {})
    if crd.get("kind") != "CustomResourceDefinition" or names.get("kind") != kind or crd["spec"]["group"] != API_GROUP:
        raise ValueError(f"not the {API_GROUP} CRD of {kind}")
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == API_VERSION]
    schema = copy.deepcopy(version["schema"]["openAPIV3Schema"])
    schema.get("properties", {}).pop("status", None)

    def strip(_name: str, node: dict) -> dict:
        return map_subschemas(node, strip)

    return strip("", schema)


def _share(kinds: dict[str, dict]) -> dict[str, Any]:
    """``kinds`` with repeated large subtrees moved into ``$defs`` (see the module docstring)."""
    counts: Counter[str] = Counter()

    def count(node: dict) -> None:
        counts[_canonical(node)] += 1
        for _name, child in subschemas(node):
            count(child)

    for schema in kinds.values():
        count(schema)
    shared = {text for text, n in counts.items() if n >= 2 and len(text) >= SHARE_MIN_CHARS}
    defs: dict[str, dict] = {}
    names: dict[str, str] = {}

    def rewrite(name: str, node: dict, top: bool = False) -> dict:
        text = _canonical(node)
        if not top and text in shared:
            if text not in names:
                names[text] = f"{name}-{hashlib.sha256(text.encode()).hexdigest()[:10]}"
                defs[names[text]] = rewrite(name, node, top=True)
            return {"$ref": f"#/$defs/{names[text]}"}
        return map_subschemas(node, rewrite)

    rewritten = {kind: rewrite(kind, schema, top=True) for kind, schema in kinds.items()}
    return {"kinds": rewritten, "$defs": dict(sorted(defs.items()))}


def derive(source: Path = DEFAULT_SOURCE) -> dict[str, Any]:
    """The derived schema document of the CRDs in ``source`` (see the module docstring)."""
    kinds, digests = {}, {}
    for kind, file_name in CRD_FILES.items():
        raw = (Path(source) / file_name).read_bytes()
        digests[file_name] = hashlib.sha256(raw).hexdigest()
        kinds[kind] = version_schema(yaml.load(raw, Loader=FAST_LOADER), kind)
    return {"derivedFrom": {"kuberay": KUBERAY_VERSION, "apiVersion": f"{API_GROUP}/{API_VERSION}",
                            "sha256": digests, "by": "visor infra crds (jobs/cluster/crds.py)"},
            **_share(kinds)}


def _block(entries: dict[str, Any]) -> list[str]:
    items = sorted(entries.items())
    return [f"{json.dumps(key)}: {_canonical(value)}{',' if i < len(items) - 1 else ''}"
            for i, (key, value) in enumerate(items)]


def render_json(document: dict[str, Any]) -> str:
    """The committed text of a derived document: sorted keys, one line per kind and per ``$defs`` entry (diffable)."""
    lines = ["{", f'"derivedFrom": {_canonical(document["derivedFrom"])},', '"kinds": {', *_block(document["kinds"]),
             "},", '"$defs": {', *_block(document["$defs"]), "}", "}"]
    return "\n".join(lines) + "\n"


def load(path: Path = SCHEMA_FILE) -> dict[str, Any]:
    """The committed derived schema document."""
    return json.loads(Path(path).read_text())


def write(source: Path = DEFAULT_SOURCE, out: Path = SCHEMA_FILE) -> Path:
    """Derive from ``source`` and write :data:`SCHEMA_FILE` (or ``out``); returns the path."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_json(derive(source)))
    return out
