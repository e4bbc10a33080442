"""``visor infra render``: the Kubernetes manifests of a deployment, rendered from one values file.

:func:`render` turns ``infra/values.yaml`` (validated by :class:`Values`) into:

* ``namespace.yaml``; ``secrets.example.yaml`` (the secrets the pods read, with placeholders);
* ``raycluster.yaml`` — KubeRay ``RayCluster``: a CPU head and an autoscaled GPU worker group;
* ``rayjob-train.yaml``, ``rayjob-train-policy.yaml``, ``rayjob-retrain.yaml`` — ``RayJob``s on
  their own clusters (``shutdownAfterJobFinishes``, ``ttlSecondsAfterFinished``);
* ``rayservice.yaml`` — ``RayService`` for the endpoint (``jobs.serving.serve:app_builder``);
* ``retrain-config.yaml`` + ``cronjob-retrain.yaml`` — a Kubernetes ``CronJob`` (concurrency
  ``Forbid``) that runs ``visor submit retrain … --wait`` against the RayCluster every night
  (KubeRay's own ``RayCronJob`` is alpha, behind a feature gate, with no concurrency policy);
* ``mlflow.yaml`` — the MLflow tracking server (``Deployment`` + ``Service``), PostgreSQL
  backend from a secret, artifacts proxied to S3 (``--artifacts-destination``).

Every command in them is a ``visor`` sub-command (the tests run each one's ``--help``). The values
file is a :class:`jobs.config.Section` schema like every config, in camelCase (Kubernetes style): a
setting it shares with a job has the job's name (``serve.reloadPollSeconds`` is the endpoint's
``reload_poll_seconds``), constraints and default.
"""

from __future__ import annotations

import copy
import json
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from jobs.config import INCLUDE_KEY, Section, apply_override, field_of
from jobs.sections import CHALLENGER, REGISTERED_MODEL
from jobs.serving.config import ServeConfig

if TYPE_CHECKING:
    import click


class _Values(Section):
    """Fields are snake_case here and camelCase in the values file (Kubernetes style)."""

    model_config = ConfigDict(populate_by_name=True, alias_generator=to_camel)


class Resources(_Values):
    """One pod's container resources (Kubernetes quantities; Ray advertises the CPU and GPU limits)."""

    cpu: str
    memory: str
    gpus: int = Field(0, ge=0)


class WorkerGroup(Resources):
    """The autoscaled GPU worker group. ``data_cpus`` of each pod's CPUs are left to Ray Data (read, validate,
    tile): every training job is rendered with ``scaling.cpus_per_worker = (cpu - dataCpus) / gpus``.
    ``pod_spec``: more fields of the worker pods' spec (``nodeSelector``, ``tolerations`` …), checked against the
    KubeRay schema like everything else."""

    min_replicas: int = Field(0, ge=0)
    max_replicas: int = Field(1, ge=0)
    data_cpus: float = Field(2, ge=0)
    pod_spec: dict[str, Any] = {}

    @model_validator(mode="after")
    def _room_for_training(self) -> WorkerGroup:
        if cpu_count(self.cpu) <= self.data_cpus:
            raise ValueError(f"dataCpus ({self.data_cpus:g}) leaves no CPU of cpu ({self.cpu}) to training")
        return self

    def cpus_per_worker(self) -> float:
        """CPUs each training worker reserves: the pod's CPUs less ``data_cpus``, shared by its GPUs."""
        return (cpu_count(self.cpu) - self.data_cpus) / max(self.gpus, 1)


class ClusterValues(_Values):
    name: str
    head: Resources
    gpu_workers: WorkerGroup
    auth_mode: str = "disabled"  # KubeRay authOptions.mode (the in-cluster CronJob submits without a token)


class StorageValues(_Values):
    """The bucket of checkpoints (``s3://<bucket>/<runsPrefix>``: ``run.storage_path`` of every training run) and
    MLflow artifacts, and how pods reach it."""

    bucket: str
    runs_prefix: str = "runs"
    endpoint_url: str = ""
    region: str = "us-east-1"
    credentials_secret: str


class MlflowValues(_Values):
    name: str = "mlflow"
    port: int = 5000
    database_secret: str
    artifacts_prefix: str = "mlflow-artifacts"


class ModelValues(_Values):
    """Where training starts from (``model.path`` of every training job): ``s3://…``, a registry URI, or a path on
    one of ``volumes``; None keeps the training config's own."""

    path: str | None = None


class VolumeValues(_Values):
    """A volume every Ray pod mounts at ``mount_path``; ``source`` is its Kubernetes volume source, e.g.
    ``{persistentVolumeClaim: {claimName: visor-models}}``."""

    name: str
    mount_path: str = Field(pattern=r"^/")
    read_only: bool = True
    source: dict[str, Any] = Field(min_length=1, max_length=1)


class DataValues(_Values):
    """The shard specs of each data split, used by every job that reads the split."""

    train: list[str] = Field(min_length=1)
    policy: list[str] = Field(min_length=1)
    eval: list[str] = Field(min_length=1)


class TrainValues(_Values):
    config: str
    overrides: list[str] = []


class PolicyValues(_Values):
    model: str = f"models:/{REGISTERED_MODEL}@{CHALLENGER}"


class RetrainValues(_Values):
    """The nightly retrain: its schedule, where its config is mounted (from a ConfigMap), and that config's
    training config (:class:`jobs.retrain.config.RetrainConfig`); its data comes from ``data``."""

    config: str = Field("/config/retrain.yaml", pattern=r"^/.*[^/]$")
    schedule: str
    train_config: str = "llava-ov-0.5b"
    train_overrides: list[str] = []


class ServeValues(_Values):
    """The RayService: the endpoint's own settings (:class:`jobs.serving.config.ServeConfig`, each under its
    ``ServeConfig`` name, camel-cased in the file: ``maxBatchSize`` is ``max_batch_size`` from the values file to the
    application's ``args``) and the secret holding ``VISOR_API_TOKEN``."""

    model: str = field_of(ServeConfig, "model")
    replicas: int = field_of(ServeConfig, "replicas")
    replica_gpus: float = field_of(ServeConfig, "replica_gpus")
    max_batch_size: int = field_of(ServeConfig, "max_batch_size")
    max_queued_requests: int = field_of(ServeConfig, "max_queued_requests")
    reload_poll_seconds: float = field_of(ServeConfig, "reload_poll_seconds")
    token_secret: str | None = None

    def serve_args(self) -> dict[str, object]:
        """The ``ServeConfig`` settings these values hold, by their ``ServeConfig`` names."""
        return self.model_dump(include=set(ServeConfig.model_fields))


MOVED = {("policy", "data"): "data.policy", ("retrain", "policy"): "data.policy",
         ("retrain", "policyData"): "data.policy", ("retrain", "evalData"): "data.eval"}


class Values(_Values):
    namespace: str
    image: str
    image_pull_policy: str = "IfNotPresent"
    ray_version: str = "2.60.0"
    cluster: ClusterValues
    storage: StorageValues
    model: ModelValues = ModelValues()
    volumes: list[VolumeValues] = []
    data: DataValues
    mlflow: MlflowValues
    train: TrainValues
    policy: PolicyValues = PolicyValues()
    retrain: RetrainValues
    serve: ServeValues
    job_ttl_seconds: int = 86400

    @model_validator(mode="before")
    @classmethod
    def _moved(cls, data: Any) -> Any:
        """The data keys of earlier values files name their new place (not moved silently: the train-policy job's
        and the retrain's policy data were two keys that selected different shards)."""
        for (section, key), new in MOVED.items():
            if isinstance(data, dict) and isinstance(data.get(section), dict) and key in data[section]:
                raise ValueError(f"{section}.{key} moved to {new} (one key per data split, used by every job)")
        return data


def cpu_count(quantity: str) -> float:
    """CPUs of a Kubernetes CPU quantity: ``"8"``, ``"7.5"``, ``"7500m"``."""
    text = str(quantity).strip()
    try:
        return float(text[:-1]) / 1000 if text.endswith("m") else float(text)
    except ValueError:
        raise ValueError(f"{quantity!r} is not a CPU quantity (e.g. 8, 7.5, 7500m)") from None


# ------------------------------------------------------------------------------------------------ pieces
def _meta(values: Values, name: str, **labels: str) -> dict:
    return {"name": name, "namespace": values.namespace, "labels": {"app.kubernetes.io/part-of": "visor", **labels}}


def _tracking_uri(values: Values) -> str:
    return f"http://{values.mlflow.name}.{values.namespace}.svc.cluster.local:{values.mlflow.port}"


def _env(values: Values) -> list[dict]:
    env = [{"name": "MLFLOW_TRACKING_URI", "value": _tracking_uri(values)},
           {"name": "AWS_REGION", "value": values.storage.region}]
    if values.storage.endpoint_url:
        env.append({"name": "AWS_ENDPOINT_URL", "value": values.storage.endpoint_url})
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        env.append({"name": key, "valueFrom": {"secretKeyRef": {"name": values.storage.credentials_secret,
                                                                 "key": key}}})
    return env


def _container(values: Values, name: str, resources: Resources | None = None, **extra: Any) -> dict:
    container = {"name": name, "image": values.image, "imagePullPolicy": values.image_pull_policy, "env": _env(values)}
    if resources is not None:
        limits = {"cpu": resources.cpu, "memory": resources.memory}
        if resources.gpus:
            limits["nvidia.com/gpu"] = resources.gpus
        container["resources"] = {"limits": limits, "requests": dict(limits)}
    return {**container, **extra}


def _volumes(every: list[VolumeValues]) -> tuple[list[dict], list[dict]]:
    """``(pod volumes, container volumeMounts)`` of ``every``."""
    return ([{"name": v.name, **v.source} for v in every],
            [{"name": v.name, "mountPath": v.mount_path, "readOnly": v.read_only} for v in every])


def _pod(container: dict, volumes: tuple[list[dict], list[dict]], **spec: Any) -> dict:
    """A pod template of one container that mounts ``volumes`` (``(pod volumes, volumeMounts)``)."""
    pod_volumes, mounts = copy.deepcopy(volumes)  # each pod its own lists (no YAML anchors, no shared edits)
    if mounts:
        container = {**container, "volumeMounts": mounts}
    return {"spec": {"containers": [container], **({"volumes": pod_volumes} if pod_volumes else {}), **spec}}


def _ray_cluster_spec(values: Values, extra_volumes: tuple[VolumeValues, ...] = ()) -> dict:
    """A KubeRay cluster: a head that runs drivers only (``num-cpus: 0``) and the GPU worker group; every pod
    mounts ``values.volumes`` and ``extra_volumes``."""
    workers = values.cluster.gpu_workers
    volumes = _volumes([*values.volumes, *extra_volumes])
    return {
        "rayVersion": values.ray_version,
        "enableInTreeAutoscaling": True,
        "authOptions": {"mode": values.cluster.auth_mode},
        "headGroupSpec": {
            "rayStartParams": {"dashboard-host": "0.0.0.0", "num-cpus": "0"},
            "template": _pod(_container(values, "ray-head", values.cluster.head, ports=[
                {"containerPort": 6379, "name": "gcs"}, {"containerPort": 8265, "name": "dashboard"},
                {"containerPort": 8000, "name": "serve"}]), volumes),
        },
        "workerGroupSpecs": [{
            "groupName": "gpu", "replicas": workers.min_replicas, "minReplicas": workers.min_replicas,
            "maxReplicas": workers.max_replicas, "rayStartParams": {},
            "template": _pod(_container(values, "ray-worker", workers), volumes, **workers.pod_spec),
        }],
    }


def _shell(*args: str) -> str:
    return shlex.join(args)


def _sets(overrides: list[str]) -> list[str]:
    return [item for override in overrides for item in ("--set", override)]


def _ray_job(values: Values, name: str, entrypoint: str, extra_volumes: tuple[VolumeValues, ...] = ()) -> dict:
    """A RayJob on its own cluster. ``ttlSecondsAfterFinished`` deletes that cluster after the job ends; the RayJob
    object itself stays until deleted (``kubectl delete rayjob``)."""
    return {
        "apiVersion": "ray.io/v1", "kind": "RayJob", "metadata": _meta(values, name, **{"visor/job": name}),
        "spec": {
            "entrypoint": entrypoint, "submissionMode": "K8sJobMode", "shutdownAfterJobFinishes": True,
            "ttlSecondsAfterFinished": values.job_ttl_seconds,
            "rayClusterSpec": _ray_cluster_spec(values, extra_volumes),
        },
    }


def training_overrides(values: Values) -> list[str]:
    """The ``--set`` items every training job gets from the values, before its own overrides: the model it starts
    from, the training split, where checkpoints go, and the CPUs a training worker takes (the rest of each GPU pod's
    CPUs are Ray Data's)."""
    sets = [f"data.train={json.dumps(values.data.train)}",
            f"run.storage_path=s3://{values.storage.bucket}/{values.storage.runs_prefix}",
            f"scaling.cpus_per_worker={values.cluster.gpu_workers.cpus_per_worker():g}"]
    return ([f"model.path={values.model.path}"] if values.model.path else []) + sets


CONFIG_VOLUME = "config"
RETRAIN_CONFIGMAP = "visor-retrain"


def _retrain_config_volume(values: Values) -> VolumeValues:
    """The retrain ConfigMap, mounted so that its one key is the file ``retrain.config``."""
    path = Path(values.retrain.config)
    return VolumeValues(name=CONFIG_VOLUME, mount_path=str(path.parent), source={"configMap": {
        "name": RETRAIN_CONFIGMAP, "items": [{"key": path.name, "path": path.name}]}})


def manifests(values: Values) -> dict[str, list[dict]]:
    """File name → the manifests (dicts) it holds."""
    cluster_address = f"http://{values.cluster.name}-head-svc.{values.namespace}.svc.cluster.local:8265"
    serve_args = {**values.serve.serve_args(), "tracking_uri": _tracking_uri(values),
                  "max_ongoing_requests": 4 * values.serve.max_batch_size}
    serve_config = {"http_options": {"host": "0.0.0.0", "port": 8000},  # the head's "serve" port
                    "applications": [{"name": "visor", "route_prefix": "/",
                                      "import_path": "jobs.serving.serve:app_builder", "args": serve_args}]}
    train = {INCLUDE_KEY: values.retrain.train_config}
    for item in training_overrides(values) + values.retrain.train_overrides:
        apply_override(train, item)
    retrain_config = {"train": train, "policy": {"data": values.data.policy}, "evaluate": {"data": values.data.eval},
                      "lock_dir": "/tmp/visor-locks"}
    config_volume = _retrain_config_volume(values)
    ray_service_head = _ray_cluster_spec(values)
    if values.serve.token_secret:
        for group in [ray_service_head["headGroupSpec"], *ray_service_head["workerGroupSpecs"]]:
            group["template"]["spec"]["containers"][0]["env"].append({"name": "VISOR_API_TOKEN", "valueFrom": {
                "secretKeyRef": {"name": values.serve.token_secret, "key": "VISOR_API_TOKEN", "optional": True}}})
    artifacts = f"s3://{values.storage.bucket}/{values.mlflow.artifacts_prefix}"
    mlflow_env = _env(values)[1:] + [{"name": "MLFLOW_BACKEND_STORE_URI", "valueFrom": {"secretKeyRef": {
        "name": values.mlflow.database_secret, "key": "MLFLOW_BACKEND_STORE_URI"}}}]
    if values.storage.endpoint_url:
        mlflow_env.append({"name": "MLFLOW_S3_ENDPOINT_URL", "value": values.storage.endpoint_url})
    mlflow_labels = {"app.kubernetes.io/name": values.mlflow.name}
    policy_data = [item for spec in values.data.policy for item in ("--data", spec)]
    return {
        "namespace.yaml": [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": values.namespace}}],
        "secrets.example.yaml": [
            {"apiVersion": "v1", "kind": "Secret", "metadata": _meta(values, values.storage.credentials_secret),
             "type": "Opaque", "stringData": {"AWS_ACCESS_KEY_ID": "CHANGE-ME", "AWS_SECRET_ACCESS_KEY": "CHANGE-ME"}},
            {"apiVersion": "v1", "kind": "Secret", "metadata": _meta(values, values.mlflow.database_secret),
             "type": "Opaque",
             "stringData": {"MLFLOW_BACKEND_STORE_URI": "postgresql://mlflow:CHANGE-ME@postgres:5432/mlflow"}},
        ] + ([{"apiVersion": "v1", "kind": "Secret", "metadata": _meta(values, values.serve.token_secret),
               "type": "Opaque", "stringData": {"VISOR_API_TOKEN": "CHANGE-ME"}}] if values.serve.token_secret else []),
        "raycluster.yaml": [{"apiVersion": "ray.io/v1", "kind": "RayCluster",
                             "metadata": _meta(values, values.cluster.name), "spec": _ray_cluster_spec(values)}],
        "rayjob-train.yaml": [_ray_job(values, "visor-train", _shell(
            "visor", "train", "--config", values.train.config,
            *_sets(training_overrides(values) + values.train.overrides)))],
        "rayjob-train-policy.yaml": [_ray_job(values, "visor-train-policy", _shell(
            "visor", "train-policy", "--model", values.policy.model, *policy_data))],
        "rayjob-retrain.yaml": [_ray_job(values, "visor-retrain", _shell(
            "visor", "retrain", "--config", values.retrain.config), extra_volumes=(config_volume,))],
        "rayservice.yaml": [{
            "apiVersion": "ray.io/v1", "kind": "RayService", "metadata": _meta(values, "visor-serve"),
            "spec": {"serveConfigV2": yaml.safe_dump(serve_config, sort_keys=False),
                     "rayClusterConfig": ray_service_head},
        }],
        "retrain-config.yaml": [{"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(values, RETRAIN_CONFIGMAP),
                                 "data": {Path(values.retrain.config).name: yaml.safe_dump(retrain_config,
                                                                                           sort_keys=False)}}],
        "cronjob-retrain.yaml": [{
            "apiVersion": "batch/v1", "kind": "CronJob", "metadata": _meta(values, "visor-retrain-nightly"),
            "spec": {
                "schedule": values.retrain.schedule, "concurrencyPolicy": "Forbid", "startingDeadlineSeconds": 3600,
                "successfulJobsHistoryLimit": 3, "failedJobsHistoryLimit": 3,
                "jobTemplate": {"spec": {"backoffLimit": 0, "template": _pod(_container(
                    values, "submit-retrain", command=["visor", "submit", "retrain", "--address", cluster_address,
                                                       "--config", values.retrain.config, "--wait"]),
                    _volumes([config_volume]), restartPolicy="Never")}},
            },
        }],
        "mlflow.yaml": [
            {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": _meta(values, values.mlflow.name),
             "spec": {"replicas": 1, "selector": {"matchLabels": mlflow_labels}, "template": {
                 "metadata": {"labels": dict(mlflow_labels)},
                 "spec": {"containers": [{
                     "name": "mlflow", "image": values.image, "imagePullPolicy": values.image_pull_policy,
                     "command": ["sh", "-c", _shell(
                         "mlflow", "server", "--host", "0.0.0.0", "--port", str(values.mlflow.port),
                         "--artifacts-destination", artifacts) + ' --backend-store-uri "$MLFLOW_BACKEND_STORE_URI"'],
                     "env": mlflow_env, "ports": [{"containerPort": values.mlflow.port, "name": "http"}],
                     "readinessProbe": {"httpGet": {"path": "/health", "port": values.mlflow.port}},
                 }]}}}},
            {"apiVersion": "v1", "kind": "Service", "metadata": _meta(values, values.mlflow.name),
             "spec": {"selector": mlflow_labels, "ports": [{"port": values.mlflow.port, "targetPort": "http"}]}},
        ],
    }


def render(values: Values, out: str | Path) -> list[Path]:
    """Write every manifest file of :func:`manifests` into ``out``; returns the paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, documents in manifests(values).items():
        path = out / name
        path.write_text("# Rendered by `visor infra render`; edit infra/values.yaml instead.\n"
                        + yaml.safe_dump_all(documents, sort_keys=False))
        paths.append(path)
    return paths


def check_manifests(files: dict[str, list[dict]], command_line: click.Group) -> list[str]:
    """Every problem of the manifests ``files`` (file name → documents), one line each naming the object and the
    field: the KubeRay objects against KubeRay's CRD schemas, strictly (:mod:`jobs.cluster.kube_schema`), then
    every job they declare, parsed with ``command_line`` (the ``visor`` command line;
    :mod:`jobs.cluster.job_check`). Empty when all pass."""
    from jobs.cluster.job_check import RAY_KINDS, job_errors
    from jobs.cluster.kube_schema import crd_errors

    documents = [d for docs in files.values() for d in docs]
    return [e for d in documents if d.get("kind") in RAY_KINDS for e in crd_errors(d)] + job_errors(files, command_line)
