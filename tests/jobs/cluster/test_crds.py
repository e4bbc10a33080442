"""KubeRay's CRD schemas: the committed derived schema is what KubeRay v1.7.0's CRDs give, and objects are checked
with the API server's structural-schema semantics, strictly (unknown fields refused, named with the object)."""

from __future__ import annotations

import copy
import hashlib
import re
from pathlib import Path

import jsonschema
import pytest
import yaml
from typer.testing import CliRunner

from jobs.cli import app
from jobs.cluster import crds
from jobs.cluster.infra import Values, manifests
from jobs.cluster.kube_schema import crd_errors, to_json_schema
from jobs.config import load_config

ROOT = Path(__file__).resolve().parents[3]
SOURCE = ROOT.parent / "shared" / "kuberay-crds"  # beside the checkout, as in CI
needs_source = pytest.mark.skipif(not SOURCE.is_dir(), reason=f"needs KubeRay's CRD files in {SOURCE} (the "
                                  "checkout's ../shared/kuberay-crds, present in CI)")


@needs_source
def test_the_committed_schema_is_exactly_what_the_crds_give() -> None:
    assert crds.DEFAULT_SOURCE == SOURCE
    committed = crds.SCHEMA_FILE.read_text()
    assert crds.render_json(crds.derive(SOURCE)) == committed, "run `visor infra crds` and commit the result"
    recorded = crds.load()["derivedFrom"]
    assert recorded["kuberay"] == "v1.7.0" and recorded["apiVersion"] == "ray.io/v1"
    for name in crds.CRD_FILES.values():
        digest = hashlib.sha256((SOURCE / name).read_bytes()).hexdigest()
        assert recorded["sha256"][name] == digest
        assert f"{digest}  {name}" in (crds.SCHEMA_DIR / "SOURCE.txt").read_text()
    assert (crds.SCHEMA_DIR / "LICENSE").read_bytes() == (SOURCE / "LICENSE").read_bytes()


@needs_source
def test_derivation_keeps_the_v1_schema_without_descriptions_or_status() -> None:
    crd = yaml.load((SOURCE / "ray.io_rayjobs.yaml").read_text(), Loader=crds.FAST_LOADER)
    (v1,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    original = v1["schema"]["openAPIV3Schema"]
    derived = crds.version_schema(crd, "RayJob")
    assert "status" in original["properties"] and "status" not in derived["properties"]
    assert derived["properties"]["spec"]["properties"]["entrypoint"] == {"type": "string"}
    assert '"description"' not in crds.SCHEMA_FILE.read_text()
    with pytest.raises(ValueError, match="not the ray.io CRD of RayService"):
        crds.version_schema(crd, "RayService")


def test_shared_subtrees_resolve_to_the_same_schema() -> None:
    document = crds.load()
    assert set(document["kinds"]) == {"RayCluster", "RayJob", "RayService"}
    assert len(crds.SCHEMA_FILE.read_bytes()) < 200_000  # the three CRDs are 3.4 MB of YAML

    def expand(node):
        if isinstance(node, dict) and set(node) == {"$ref"}:
            return expand(document["$defs"][node["$ref"].removeprefix("#/$defs/")])
        return crds.map_subschemas(node, lambda _name, child: expand(child)) if isinstance(node, dict) else node

    job = expand(document["kinds"]["RayJob"])["properties"]["spec"]["properties"]
    cluster = expand(document["kinds"]["RayCluster"])["properties"]["spec"]
    assert job["rayClusterSpec"] == cluster  # one RayClusterSpec schema, shared
    containers = cluster["properties"]["headGroupSpec"]["properties"]["template"]["properties"]["spec"][
        "properties"]["containers"]
    assert containers["type"] == "array" and "resources" in containers["items"]["properties"]


def accepts(schema: dict, instance) -> bool:
    return jsonschema.Draft202012Validator(to_json_schema(schema)).is_valid(instance)


def test_structural_schema_semantics() -> None:
    int_or_string = {"x-kubernetes-int-or-string": True, "anyOf": [{"type": "integer"}, {"type": "string"}]}
    assert accepts(int_or_string, 3) and accepts(int_or_string, "500m")
    assert not accepts(int_or_string, 1.5) and not accepts(int_or_string, None)
    assert accepts({"type": "string", "nullable": True}, None) and not accepts({"type": "string"}, None)
    strict = {"type": "object", "properties": {"a": {"type": "integer"}}}
    assert accepts(strict, {"a": 1}) and not accepts(strict, {"a": 1, "b": 2})
    preserve = {**strict, "x-kubernetes-preserve-unknown-fields": True}
    assert accepts(preserve, {"a": 1, "b": 2}) and not accepts(preserve, {"a": "one"})
    mapping = {"type": "object", "additionalProperties": {"type": "string"}}
    assert accepts(mapping, {"any": "x"}) and not accepts(mapping, {"any": 1})
    assert not accepts({"type": "object"}, {"kept": "nothing"}) and accepts({"type": "object"}, {})
    embedded = {"type": "object", "x-kubernetes-embedded-resource": True, "properties": {"spec": {"type": "object"}}}
    resource = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "labels": {"a": "b"}}, "spec": {}}
    assert accepts(embedded, resource)
    assert not accepts(embedded, {**resource, "metadata": {"name": "p", "labelz": {}}})
    assert not accepts(embedded, {**resource, "metadata": {"labels": {"a": 1}}})


def rendered(kind_file: str) -> dict:
    return copy.deepcopy(manifests(load_config(Values, ROOT / "infra" / "values.yaml"))[kind_file][0])


def test_rendered_kuberay_objects_pass_the_crds_strictly() -> None:
    objects = [d for docs in manifests(load_config(Values, ROOT / "infra" / "values.yaml")).values() for d in docs
               if d["apiVersion"] == "ray.io/v1"]
    assert sorted(d["kind"] for d in objects) == ["RayCluster", "RayJob", "RayJob", "RayJob", "RayService"]
    assert [crd_errors(d) for d in objects] == [[]] * 5


def test_an_unknown_field_deep_in_a_pod_template_is_refused_with_object_and_path() -> None:
    job = rendered("rayjob-train.yaml")
    worker = job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    worker["template"]["spec"]["containers"][0]["volumeMountz"] = []
    worker["maxReplicas"] = "8"
    job["metadata"]["labelz"] = {}
    errors = crd_errors(job)
    assert errors == [
        "RayJob visor-train: metadata.labelz: unknown field",
        "RayJob visor-train: spec.rayClusterSpec.workerGroupSpecs[0].maxReplicas: '8' is not of type 'integer'",
        "RayJob visor-train: spec.rayClusterSpec.workerGroupSpecs[0].template.spec.containers[0].volumeMountz: "
        "unknown field",
    ]


def test_quantities_nulls_status_and_the_api_version() -> None:
    service = rendered("rayservice.yaml")
    limits = service["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"]
    limits["limits"]["cpu"] = 4  # int-or-string: an integer quantity is fine
    assert crd_errors(service) == []
    limits["limits"]["memory"] = None
    service["status"] = {}
    errors = crd_errors(service)
    assert "RayService visor-serve: status: unknown field" in errors
    assert any(re.search(r"limits\.memory: None is not of type 'integer', 'string'", e) for e in errors), errors
    assert crd_errors({**service, "apiVersion": "ray.io/v1alpha1"}) == [
        "RayService visor-serve: apiVersion: 'ray.io/v1alpha1' is not 'ray.io/v1'"]


@needs_source
def test_visor_infra_crds_writes_the_committed_file(tmp_path: Path) -> None:
    out = tmp_path / "kuberay.json"
    result = CliRunner().invoke(app, ["infra", "crds", "--source", str(SOURCE), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_text() == crds.SCHEMA_FILE.read_text()
