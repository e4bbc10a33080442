"""Rendered manifests: they parse, carry the right kinds and fields, run real `visor` commands, follow the values."""

from __future__ import annotations

import importlib
import re
import shlex
import warnings
from pathlib import Path

import kubernetes_validate
import pytest
import typer
import yaml
from typer.testing import CliRunner

from jobs.cli import app
from jobs.cluster.infra import Values, check_manifests, cpu_count
from jobs.config import ConfigError, load_config
from jobs.retrain.config import RetrainConfig
from jobs.serving.config import ServeConfig
from jobs.train.config import TrainConfig

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
    assert served.replica_gpus == 1  # each replica asks Ray for a GPU of the RayService's GPU workers
    assert (served.max_batch_size, served.max_queued_requests, served.max_ongoing_requests) == (8, 64, 32)
    service_workers = files["rayservice.yaml"][0]["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    assert service_workers[0]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    deployment, service = files["mlflow.yaml"]
    command = deployment["spec"]["template"]["spec"]["containers"][0]["command"][-1]
    assert "--artifacts-destination s3://visor/mlflow-artifacts" in command and "MLFLOW_BACKEND_STORE_URI" in command
    assert service["spec"]["ports"][0]["port"] == 5000
    retrain = yaml.safe_load(files["retrain-config.yaml"][0]["data"]["retrain.yaml"])
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


def check(tmp_path: Path, values: dict) -> tuple[int, list[str]]:
    """``visor infra check`` of ``values``: its exit code and the problems it prints."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    result = CliRunner().invoke(app, ["infra", "check", "--values", str(path)])
    return result.exit_code, [line for line in result.output.splitlines() if line]


def test_the_shipped_values_pass_every_check(tmp_path: Path) -> None:
    files = render(tmp_path)
    assert check_manifests(files, typer.main.get_command(app)) == []
    code, output = check(tmp_path, yaml.safe_load(VALUES.read_text()))
    assert code == 0 and output == ["13 objects: KubeRay schemas (strict) and every job's command, config, paths "
                                    "and CPUs: ok"]
    result = CliRunner().invoke(app, ["infra", "check", "--rendered", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output


def test_every_job_gets_its_config_model_data_and_cpus(tmp_path: Path) -> None:
    files = render(tmp_path)
    (job,) = files["rayjob-retrain.yaml"]
    (configmap,) = files["retrain-config.yaml"]
    for group in [job["spec"]["rayClusterSpec"]["headGroupSpec"], *job["spec"]["rayClusterSpec"]["workerGroupSpecs"]]:
        spec = group["template"]["spec"]
        assert spec["containers"][0]["volumeMounts"] == [{"name": "config", "mountPath": "/config", "readOnly": True}]
        assert spec["volumes"][0]["configMap"]["name"] == configmap["metadata"]["name"]
    retrain = yaml.safe_load(configmap["data"]["retrain.yaml"])
    train = load_config(RetrainConfig, retrain).train
    entrypoint = shlex.split(files["rayjob-train.yaml"][0]["spec"]["entrypoint"])
    trained = load_config(TrainConfig, entrypoint[3], entrypoint[5::2])
    for config in (train, trained):  # the same model, data, storage and CPUs in both training jobs
        assert config.model.path == "s3://visor/models/llava-onevision-qwen2-0.5b-ov-hf"
        assert config.data.train == ["s3://visor/data/train-*.tar"] and config.run.storage_path == "s3://visor/runs"
        assert config.scaling.cpus_per_worker == 6  # 8 CPUs a pod, 2 left to Ray Data
    policy = shlex.split(files["rayjob-train-policy.yaml"][0]["spec"]["entrypoint"])
    assert policy[policy.index("--data") + 1] == retrain["policy"]["data"][0] == "s3://visor/data/policy-*.tar"
    serve_config = yaml.safe_load(files["rayservice.yaml"][0]["spec"]["serveConfigV2"])
    assert serve_config["http_options"] == {"host": "0.0.0.0", "port": 8000}
    assert not {"host", "port"} & set(serve_config["applications"][0]["args"])


def test_broken_values_are_refused_naming_the_object_and_the_field(tmp_path: Path) -> None:
    values = yaml.safe_load(VALUES.read_text())
    values["model"]["path"] = "/models/llava-ov"  # a local path no pod mounts
    values["cluster"]["gpuWorkers"]["podSpec"] = {"tolerationz": []}  # a typo KubeRay's schema refuses
    code, output = check(tmp_path / "a", values)
    assert code == 1
    assert "RayJob visor-train: spec.rayClusterSpec.workerGroupSpecs[0].template.spec.tolerationz: unknown field" \
        in output
    assert "RayCluster visor: spec.workerGroupSpecs[0].template.spec.tolerationz: unknown field" in output
    assert "RayJob visor-train: model.path '/models/llava-ov' is on no volume that the worker group gpu pod mounts " \
        "(mounts: none)" in output
    assert "RayJob visor-retrain: train.model.path '/models/llava-ov' is on no volume that the head pod " \
        "mounts (mounts: /config)" in output
    assert any(line.startswith("CronJob visor-retrain-nightly: train.model.path '/models/llava-ov' is on no "
                               "volume that the RayCluster visor head pod") for line in output), output
    values["cluster"]["gpuWorkers"]["podSpec"] = {"tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}]}
    values["volumes"] = [{"name": "models", "mountPath": "/models",
                          "source": {"persistentVolumeClaim": {"claimName": "visor-models", "readOnly": True}}}]
    code, output = check(tmp_path / "b", values)
    assert code == 0, output  # the volume on every Ray pod, the model path is fine; the tolerations too


def test_jobs_that_cannot_start_are_refused(tmp_path: Path) -> None:
    values = yaml.safe_load(VALUES.read_text())
    values["cluster"]["gpuWorkers"]["dataCpus"] = 0.5  # workers take 7.5 of 8 CPUs: Ray Data needs 1
    values["retrain"]["trainOverrides"] = ["data.train=['s3://visor/other/train-*.tar']"]
    values["train"]["overrides"] = ["data.train=['relative/train-*.tar']"]
    code, output = check(tmp_path, values)
    assert code == 1
    text = "\n".join(output)
    assert "RayJob visor-train: scaling (llava-ov-0.5b.largest): no CPU left for Ray Data: 8 training workers " \
           "take 7.5 CPUs each" in text
    assert "RayJob visor-train: data.train 'relative/train-*.tar' is a relative path" in text
    assert "data split 'train' is read as different shards by different jobs: RayJob visor-train data.train: " \
           "['relative/train-*.tar']; RayJob visor-retrain train.data.train, CronJob visor-retrain-nightly " \
           "train.data.train: ['s3://visor/other/train-*.tar']" in text
    values["retrain"]["trainOverrides"] = ["optim.lrr=1"]
    text = "\n".join(check(tmp_path / "b", values)[1])
    assert re.search(r"RayJob visor-retrain: --config '/config/retrain.yaml' does not load: .*train.optim.lrr: Extra "
                     "inputs", text)


def test_a_retrain_without_its_config_and_a_serve_app_with_ignored_args_are_refused(tmp_path: Path) -> None:
    files = render(tmp_path)
    (job,) = files["rayjob-retrain.yaml"]
    for group in [job["spec"]["rayClusterSpec"]["headGroupSpec"], *job["spec"]["rayClusterSpec"]["workerGroupSpecs"]]:
        group["template"]["spec"]["containers"][0].pop("volumeMounts")
    (service,) = files["rayservice.yaml"]
    serve_config = yaml.safe_load(service["spec"]["serveConfigV2"])
    serve_config["applications"][0]["args"]["host"] = "0.0.0.0"
    service["spec"]["serveConfigV2"] = yaml.safe_dump(serve_config)
    files["rayjob-train-policy.yaml"][0]["spec"]["entrypoint"] += " --epochz 3"
    assert check_manifests(files, typer.main.get_command(app)) == [
        "RayJob visor-retrain: --config '/config/retrain.yaml' is neither a preset nor a file on a volume that the "
        "head pod mounts (mounts: none)",
        "RayJob visor-train-policy: spec.entrypoint: `visor train-policy`: No such option: --epochz (Possible "
        "options: --epochs)",
        "RayService visor-serve: spec.serveConfigV2 applications[0].args.host: ignored by app_builder (the proxy "
        "listens where http_options say)",
    ]


def test_data_keys_that_moved_name_their_new_place(tmp_path: Path) -> None:
    values = yaml.safe_load(VALUES.read_text())
    values["retrain"]["evalData"] = ["s3://visor/data/eval-*.tar"]
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    result = CliRunner().invoke(app, ["infra", "render", "--values", str(path), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "retrain.evalData moved to data.eval" in " ".join(result.output.split())


def test_cpu_quantities_and_room_left_for_training(tmp_path: Path) -> None:
    assert (cpu_count("8"), cpu_count("7.5"), cpu_count("7500m"), cpu_count(" 2 ")) == (8, 7.5, 7.5, 2)
    with pytest.raises(ValueError, match="'eight' is not a CPU quantity"):
        cpu_count("eight")
    values = yaml.safe_load(VALUES.read_text())
    values["cluster"]["gpuWorkers"].update(cpu="16", gpus=2, dataCpus=4)
    assert load_config(Values, values).cluster.gpu_workers.cpus_per_worker() == 6  # (16 - 4) / 2 GPUs
    values["cluster"]["gpuWorkers"]["dataCpus"] = 16
    with pytest.raises(ConfigError, match=r"cluster.gpuWorkers: .*dataCpus \(16\) leaves no CPU of cpu \(16\)"):
        load_config(Values, values)
