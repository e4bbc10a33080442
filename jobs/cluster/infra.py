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

import shlex
from pathlib import Path
from typing import Any

import yaml
from pydantic import ConfigDict, Field
from pydantic.alias_generators import to_camel

from jobs.config import Section, field_of
from jobs.sections import REGISTERED_MODEL
from jobs.serving.config import ServeConfig


class _Values(Section):
    """Fields are snake_case here and camelCase in the values file (Kubernetes style)."""

    model_config = ConfigDict(populate_by_name=True, alias_generator=to_camel)


class Resources(_Values):
    cpu: str
    memory: str
    gpus: int = 0
    min_replicas: int = Field(0, ge=0)
    max_replicas: int = Field(1, ge=0)


class ClusterValues(_Values):
    name: str
    head: Resources
    gpu_workers: Resources
    auth_mode: str = "disabled"  # KubeRay authOptions.mode (the in-cluster CronJob submits without a token)


class StorageValues(_Values):
    bucket: str
    endpoint_url: str = ""
    region: str = "us-east-1"
    credentials_secret: str


class MlflowValues(_Values):
    name: str = "mlflow"
    port: int = 5000
    database_secret: str
    artifacts_prefix: str = "mlflow-artifacts"


class TrainValues(_Values):
    config: str
    overrides: list[str] = []


class PolicyValues(_Values):
    data: str
    model: str = f"models:/{REGISTERED_MODEL}@challenger"


class RetrainPolicyValues(_Values):
    data: list[str]


class RetrainValues(_Values):
    """The nightly retrain: its schedule, where its config is mounted, and that config's fields
    (:class:`jobs.registry.config.RetrainConfig`, written into a ConfigMap)."""

    renamed = {"policyData": "policy.data"}

    config: str = "/config/retrain.yaml"
    schedule: str
    train_config: str = "llava-ov-0.5b"
    train_overrides: list[str] = []
    policy: RetrainPolicyValues
    eval_data: list[str]


class ServeValues(_Values):
    """The RayService: the endpoint's own settings (:class:`jobs.serving.config.ServeConfig`) and the secret
    holding ``VISOR_API_TOKEN``."""

    model: str = field_of(ServeConfig, "model")
    replicas: int = field_of(ServeConfig, "replicas")
    max_batch_size: int = field_of(ServeConfig, "max_batch_size")
    reload_poll_seconds: float = field_of(ServeConfig, "reload_poll_seconds")
    token_secret: str | None = None


class Values(_Values):
    namespace: str
    image: str
    image_pull_policy: str = "IfNotPresent"
    ray_version: str = "2.60.0"
    cluster: ClusterValues
    storage: StorageValues
    mlflow: MlflowValues
    train: TrainValues
    policy: PolicyValues
    retrain: RetrainValues
    serve: ServeValues
    job_ttl_seconds: int = 86400


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


def _ray_cluster_spec(values: Values) -> dict:
    workers = values.cluster.gpu_workers
    return {
        "rayVersion": values.ray_version,
        "enableInTreeAutoscaling": True,
        "authOptions": {"mode": values.cluster.auth_mode},
        "headGroupSpec": {
            "rayStartParams": {"dashboard-host": "0.0.0.0", "num-cpus": "0"},
            "template": {"spec": {"containers": [_container(values, "ray-head", values.cluster.head, ports=[
                {"containerPort": 6379, "name": "gcs"}, {"containerPort": 8265, "name": "dashboard"},
                {"containerPort": 8000, "name": "serve"}])]}},
        },
        "workerGroupSpecs": [{
            "groupName": "gpu", "replicas": workers.min_replicas, "minReplicas": workers.min_replicas,
            "maxReplicas": workers.max_replicas, "rayStartParams": {},
            "template": {"spec": {"containers": [_container(values, "ray-worker", workers)]}},
        }],
    }


def _shell(*args: str) -> str:
    return shlex.join(args)


def _sets(overrides: list[str]) -> list[str]:
    return [item for override in overrides for item in ("--set", override)]


def _ray_job(values: Values, name: str, entrypoint: str) -> dict:
    return {
        "apiVersion": "ray.io/v1", "kind": "RayJob", "metadata": _meta(values, name, **{"visor/job": name}),
        "spec": {
            "entrypoint": entrypoint, "submissionMode": "K8sJobMode", "shutdownAfterJobFinishes": True,
            "ttlSecondsAfterFinished": values.job_ttl_seconds, "rayClusterSpec": _ray_cluster_spec(values),
        },
    }


def manifests(values: Values) -> dict[str, list[dict]]:
    """File name → the manifests (dicts) it holds."""
    cluster_address = f"http://{values.cluster.name}-head-svc.{values.namespace}.svc.cluster.local:8265"
    serve_args = {"model": values.serve.model, "tracking_uri": _tracking_uri(values),
                  "replicas": values.serve.replicas, "max_batch_size": values.serve.max_batch_size,
                  "max_ongoing_requests": 4 * values.serve.max_batch_size,
                  "reload_poll_seconds": values.serve.reload_poll_seconds, "host": "0.0.0.0"}
    serve_config = {"applications": [{"name": "visor", "route_prefix": "/",
                                      "import_path": "jobs.serving.serve:app_builder", "args": serve_args}]}
    retrain_config = {
        "train_config": values.retrain.train_config, "train_overrides": values.retrain.train_overrides,
        "policy": {"data": values.retrain.policy.data}, "eval_data": values.retrain.eval_data,
        "lock_dir": "/tmp/visor-locks",
    }
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
            "visor", "train", "--config", values.train.config, *_sets(values.train.overrides)))],
        "rayjob-train-policy.yaml": [_ray_job(values, "visor-train-policy", _shell(
            "visor", "train-policy", "--model", values.policy.model, "--data", values.policy.data))],
        "rayjob-retrain.yaml": [_ray_job(values, "visor-retrain", _shell(
            "visor", "retrain", "--config", values.retrain.config))],
        "rayservice.yaml": [{
            "apiVersion": "ray.io/v1", "kind": "RayService", "metadata": _meta(values, "visor-serve"),
            "spec": {"serveConfigV2": yaml.safe_dump(serve_config, sort_keys=False),
                     "rayClusterConfig": ray_service_head},
        }],
        "retrain-config.yaml": [{"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(values, "visor-retrain"),
                                 "data": {"retrain.yaml": yaml.safe_dump(retrain_config, sort_keys=False)}}],
        "cronjob-retrain.yaml": [{
            "apiVersion": "batch/v1", "kind": "CronJob", "metadata": _meta(values, "visor-retrain-nightly"),
            "spec": {
                "schedule": values.retrain.schedule, "concurrencyPolicy": "Forbid", "startingDeadlineSeconds": 3600,
                "successfulJobsHistoryLimit": 3, "failedJobsHistoryLimit": 3,
                "jobTemplate": {"spec": {"backoffLimit": 0, "template": {"spec": {
                    "restartPolicy": "Never",
                    "containers": [_container(values, "submit-retrain", command=[
                        "visor", "submit", "retrain", "--address", cluster_address, "--config",
                        values.retrain.config, "--wait"],
                        volumeMounts=[{"name": "config", "mountPath": str(Path(values.retrain.config).parent)}])],
                    "volumes": [{"name": "config", "configMap": {"name": "visor-retrain"}}],
                }}}},
            },
        }],
        "mlflow.yaml": [
            {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": _meta(values, values.mlflow.name),
             "spec": {"replicas": 1, "selector": {"matchLabels": mlflow_labels}, "template": {
                 "metadata": {"labels": mlflow_labels},
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
