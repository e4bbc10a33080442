"""Rendered manifests: they parse, carry the right kinds and fields, run real `visor` commands, follow the values."""

from __future__ import annotations

import importlib
import shlex
import warnings
from pathlib import Path

import kubernetes_validate
import yaml
from typer.testing import CliRunner

from jobs.cli import app
from jobs.cluster.infra import Values
from jobs.config import load_config
from jobs.serving.config import ServeConfig

VALUES = Path(__file__).resolve().parents[3] / "infra" / "values.yaml"
KINDS = {
    "namespace.yaml": ["Namespace"], "raycluster.yaml": ["RayCluster"], "rayjob-train.yaml": ["RayJob"],
    "rayjob-train-policy.yaml": ["RayJob"], "rayjob-retrain.yaml": ["RayJob"], "rayservice.yaml": ["RayService"],
    "retrain-config.yaml": ["ConfigMap"], "cronjob-retrain.yaml": ["CronJob"], "mlflow.yaml": ["Deployment", "Service"],
    "secrets.example.yaml": ["Secret", "Secret", "Secret"],
}
KUBERAY = {"RayCluster", "RayJob", "RayService"}  # custom resources: no core schema
API = {"RayCluster": "ray.io/v1", "RayJob": "ray.io/v1", "RayService": "ray.io/v1", "CronJob": "batch/v1",
       "Deployment": "apps/v1", "Service": "v1", "ConfigMap": "v1", "Secret": "v1", "Namespace": "v1"}


def render(tmp_path: Path, **changes) -> dict[str, list[dict]]:
    values = yaml.safe_load(VALUES.read_text())
    for dotted, value in changes.items():
        node = values
        *parents, leaf = dotted.split("__")
        for part in parents:
            node = node[part]
        node[leaf] = value
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["infra", "render", "--values", str(path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    return {p.name: list(yaml.safe_load_all(p.read_text())) for p in sorted(out.glob("*.yaml"))}


def containers(document: dict) -> list[dict]:
    found = []

    def walk(node) -> None:
        if isinstance(node, dict):
            found.extend(c for c in node.get("containers", []) if isinstance(c, dict))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(document)
    return found


def visor_commands(files: dict[str, list[dict]]) -> list[list[str]]:
    commands = []
    for documents in files.values():
        for doc in documents:
            if doc["kind"] == "RayJob":
                commands.append(shlex.split(doc["spec"]["entrypoint"]))
            for container in containers(doc):
                if container.get("command", [None])[0] == "visor":
                    commands.append(container["command"])
    return commands


def test_manifests_parse_with_the_right_kinds_and_fields(tmp_path: Path) -> None:
    files = render(tmp_path)
    assert {name: [d["kind"] for d in docs] for name, docs in files.items()} == KINDS
    for docs in files.values():
        for doc in docs:
            assert doc["apiVersion"] == API[doc["kind"]] and doc["metadata"]["name"]
    (cluster,) = files["raycluster.yaml"]
    worker = cluster["spec"]["workerGroupSpecs"][0]
    assert worker["minReplicas"] == 0 and worker["maxReplicas"] == 8 and cluster["spec"]["enableInTreeAutoscaling"]
    assert worker["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    for name in ("rayjob-train.yaml", "rayjob-train-policy.yaml", "rayjob-retrain.yaml"):
        spec = files[name][0]["spec"]
        assert spec["shutdownAfterJobFinishes"] and spec["ttlSecondsAfterFinished"] == 86400
        assert spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"]
    serve_config = yaml.safe_load(files["rayservice.yaml"][0]["spec"]["serveConfigV2"])
    (application,) = serve_config["applications"]
    module, attribute = application["import_path"].split(":")
    assert callable(getattr(importlib.import_module(module), attribute))
    assert application["args"]["model"] == "models:/visor@champion"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the rendered args use the current names
        served = load_config(ServeConfig, application["args"])
    assert served.replicas == 2 and served.reload_poll_seconds == 300
    deployment, service = files["mlflow.yaml"]
    command = deployment["spec"]["template"]["spec"]["containers"][0]["command"][-1]
    assert "--artifacts-destination s3://visor/mlflow-artifacts" in command and "MLFLOW_BACKEND_STORE_URI" in command
    assert service["spec"]["ports"][0]["port"] == 5000
    retrain = yaml.safe_load(files["retrain-config.yaml"][0]["data"]["retrain.yaml"])
    from jobs.registry.config import RetrainConfig
    RetrainConfig.model_validate(retrain)  # the ConfigMap holds a valid retrain config


def test_every_command_is_a_real_visor_subcommand(tmp_path: Path) -> None:
    commands = visor_commands(render(tmp_path))
    assert {c[1] for c in commands} == {"train", "train-policy", "retrain", "submit"}
    runner = CliRunner()
    for command in commands:
        result = runner.invoke(app, [*command[1:2], "--help"])
        assert result.exit_code == 0, (command, result.output)
        for option in (a for a in command[2:] if a.startswith("--")):
            assert option in result.output, (command, option)  # every flag used exists


def test_the_cronjob_and_everything_follow_the_values(tmp_path: Path) -> None:
    base = render(tmp_path / "a")
    changed = render(tmp_path / "b", namespace="ml-prod", image="registry.local/visor:2.0",
                     retrain__schedule="30 4 * * 1", mlflow__port=5500)
    (cron,) = changed["cronjob-retrain.yaml"]
    assert cron["spec"]["schedule"] == "30 4 * * 1" and cron["spec"]["concurrencyPolicy"] == "Forbid"
    assert base["cronjob-retrain.yaml"][0]["spec"]["schedule"] == load_config(Values, VALUES).retrain.schedule
    for name, documents in changed.items():
        for doc in documents:
            if doc["kind"] != "Namespace":
                assert doc["metadata"]["namespace"] == "ml-prod", name
            for container in containers(doc):
                assert container["image"] == "registry.local/visor:2.0", name
                for env in container.get("env", []):
                    if env["name"] == "MLFLOW_TRACKING_URI":
                        assert env["value"] == "http://mlflow.ml-prod.svc.cluster.local:5500"
    submit = next(c for c in visor_commands(changed) if c[1] == "submit")
    assert "http://visor-head-svc.ml-prod.svc.cluster.local:8265" in submit


def test_bad_values_name_the_field(tmp_path: Path) -> None:
    path = tmp_path / "values.yaml"
    values = yaml.safe_load(VALUES.read_text())
    values["cluster"]["gpuWorkers"]["maxReplicass"] = 3
    path.write_text(yaml.safe_dump(values))
    result = CliRunner().invoke(app, ["infra", "render", "--values", str(path), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "cluster.gpuWorkers.maxReplicass" in result.output


def pod_templates(node) -> list[dict]:
    """Every pod template (a mapping whose ``spec`` has ``containers``) inside ``node``."""
    if isinstance(node, list):
        return [t for value in node for t in pod_templates(value)]
    if not isinstance(node, dict):
        return []
    own = [node] if isinstance(node.get("spec"), dict) and "containers" in node["spec"] else []
    return own + [t for key, value in node.items() if key != "spec" or not own for t in pod_templates(value)]


def test_manifests_pass_the_kubernetes_schemas(tmp_path: Path) -> None:
    """Core kinds against their Kubernetes schema (strict: unknown fields fail); the KubeRay resources' pod
    templates (head and workers) as core ``PodTemplate`` objects."""
    version = kubernetes_validate.latest_version()
    checked = {"core": 0, "pod templates": 0}
    for name, documents in render(tmp_path).items():
        for document in documents:
            if document["kind"] not in KUBERAY:
                kubernetes_validate.validate(document, version, strict=True)
                checked["core"] += 1
                continue
            for template in pod_templates(document["spec"]):
                wrapped = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": f"{name}-template"},
                           "template": template}
                kubernetes_validate.validate(wrapped, version, strict=True)
                checked["pod templates"] += 1
    assert checked == {"core": 8, "pod templates": 10}  # head + workers of the cluster, the service, 3 jobs
