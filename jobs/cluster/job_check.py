"""The semantic pass over rendered manifests: every job they declare could start, read as an operator would.

:func:`job_errors` takes the manifests of :func:`jobs.cluster.infra.manifests` (or any set of parsed documents) and,
for every ``RayJob`` entrypoint and every container whose command is ``visor …`` (the retrain ``CronJob``):

* the command parses with the ``visor`` command line (sub-command, options, values);
* its config loads with the project's loader (:func:`jobs.config.load_config`, the job's schema): a preset name,
  or a file on a volume its pod mounts from a ``ConfigMap`` among the manifests (read from there); a retrain's
  training config likewise;
* every local path it names — the config, the model (``model.path``/``processor``, ``--model``), the data
  (``data.train``, ``policy.data``, ``evaluate.data``, ``--data``), the storage (``run.storage_path``, ``--out``) and a
  SQLite tracking store — is absolute and on a volume that every pod of the cluster the job runs on mounts
  (``s3://``, ``models:/`` and other URIs pass). ``lock_dir`` is node-local scratch by design and not checked.
  ``visor submit JOB --address …`` runs JOB on the ``RayCluster`` the address names (which must be rendered);
* every job that reads a data split (train, policy, eval) reads the same shard specs as the others;
* a training job's workers fit the worker groups at ``maxReplicas`` and leave at least ``data.preprocess_cpus``
  CPUs on some pod for Ray Data's read and preprocessing tasks (otherwise training waits for data forever);

and every ``RayService``'s ``serveConfigV2`` is valid for Ray Serve's own schema, with ``args`` that load as a
:class:`jobs.serving.config.ServeConfig` and none that ``app_builder`` ignores (``host``, ``port``). Every error is a
line ``Kind name: field: problem``.
"""

from __future__ import annotations

import math
import shlex
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import yaml

from jobs.cluster.infra import cpu_count
from jobs.cluster.localize import local_path
from jobs.config import CONFIG_DIR, ConfigError, load_config, path_fields

if TYPE_CHECKING:
    import click

RAY_KINDS = ("RayCluster", "RayJob", "RayService")
UNCHECKED_PATHS = ("lock_dir",)  # a retrain's lock: node-local scratch by design
PATH_PARAMS = ("data", "model", "out", "tracking_uri")  # the jobs' own path options (``--baselines`` apart)
SPLIT_OF_DATA = {"train-policy": "policy", "evaluate": "eval"}  # the split a job's --data reads
IGNORED_SERVE_ARGS = ("host", "port")  # app_builder builds the app; Serve's http_options place the proxy


@dataclass
class Pod:
    """A pod template as far as paths go: where it is, and its Ray (first) container's mounts."""

    where: str
    mounts: dict[str, dict] = field(default_factory=dict)  # mountPath → the pod volume (its name and source)
    cpus: float = 0.0
    gpus: float = 0.0
    max_replicas: int = 1

    def volume_of(self, path: str) -> tuple[str, dict] | None:
        """``(mountPath, volume)`` of the mount that holds ``path``, the deepest one; None when no mount does."""
        parts = PurePosixPath(path).parts
        found = [(mount, volume) for mount, volume in self.mounts.items()
                 if parts[:len(PurePosixPath(mount).parts)] == PurePosixPath(mount).parts]
        return max(found, key=lambda item: len(item[0])) if found else None

    def describe_mounts(self) -> str:
        return ", ".join(sorted(self.mounts)) or "none"


def _quantity(value: Any) -> float:
    return cpu_count(str(value)) if value is not None else 0.0


def pod(where: str, template: dict, ray_start: dict | None = None, max_replicas: int = 1) -> Pod:
    """The :class:`Pod` of a pod ``template`` (Ray's resources from ``rayStartParams`` or the container limits)."""
    spec = template.get("spec") or {}
    containers = spec.get("containers") or [{}]
    volumes = {v.get("name"): v for v in spec.get("volumes") or []}
    mounts = {m["mountPath"]: volumes.get(m.get("name"), {"name": m.get("name")})
              for m in containers[0].get("volumeMounts") or [] if "mountPath" in m}
    limits = (containers[0].get("resources") or {}).get("limits") or {}
    ray_start = ray_start or {}
    cpus = _quantity(ray_start.get("num-cpus", limits.get("cpu")))
    gpus = float(ray_start.get("num-gpus", limits.get("nvidia.com/gpu", 0)))
    return Pod(where, mounts, cpus, gpus, max_replicas)


def cluster_pods(spec: dict) -> tuple[Pod, list[Pod]]:
    """``(head, worker groups)`` of a KubeRay cluster spec."""
    head = spec.get("headGroupSpec") or {}
    workers = [pod(f"worker group {g.get('groupName')}", g.get("template") or {}, g.get("rayStartParams"),
                   int(g.get("maxReplicas", g.get("replicas", 1)))) for g in spec.get("workerGroupSpecs") or []]
    return pod("head", head.get("template") or {}, head.get("rayStartParams")), workers


@dataclass
class Context:
    """Where a command runs: its name for messages, the pod that reads its config, the pods that run it, and the
    ``visor`` command line that parses it."""

    where: str
    reader: Pod
    runners: list[Pod]
    workers: list[Pod]
    configmaps: dict[str, dict[str, str]]
    clusters: dict[str, dict]
    command_line: click.Group
    errors: list[str] = field(default_factory=list)
    splits: dict[str, dict[tuple[str, ...], list[str]]] = field(default_factory=dict)  # split → specs → readers

    def split(self, split: str, name: str, specs: list[str]) -> None:
        """Record that this job reads ``specs`` as data split ``split`` (setting ``name``)."""
        self.splits.setdefault(split, {}).setdefault(tuple(specs), []).append(f"{self.where} {name}")

    def error(self, text: str) -> None:
        self.errors.append(f"{self.where}: {text}")

    def path(self, name: str, value: Any) -> None:
        """Check one path-valued setting (a list: each item) against the pods that run the job."""
        for one in value if isinstance(value, list) else [value]:
            path = local_path(one) if isinstance(one, str) else None
            if path is None:
                continue  # a URI: s3://, models:/, http(s)://
            if not PurePosixPath(path).is_absolute():
                self.error(f"{name} {one!r} is a relative path (it would resolve in the job's temporary working "
                           "directory): use s3:// or an absolute path on a mounted volume")
                continue
            for runner in self.runners:
                if runner.volume_of(path) is None:
                    self.error(f"{name} {one!r} is on no volume that the {runner.where} pod mounts (mounts: "
                               f"{runner.describe_mounts()})")

    def config_source(self, name: str, config: str) -> Any:
        """What :func:`load_config` should read for ``config``: a preset name or the mapping of a mounted
        ConfigMap file; None (and an error) when it cannot be read."""
        if "/" not in config and (CONFIG_DIR / f"{config}.yaml").is_file():
            return config
        found = self.reader.volume_of(config) if PurePosixPath(config).is_absolute() else None
        if found is None:
            self.error(f"{name} {config!r} is neither a preset nor a file on a volume that the {self.reader.where} "
                       f"pod mounts (mounts: {self.reader.describe_mounts()})")
            return None
        mount, volume = found
        source = volume.get("configMap")
        if source is None:
            self.error(f"{name} {config!r} is on volume {volume.get('name')!r}, which is not a ConfigMap: it cannot "
                       "be read here (keep configs in a ConfigMap)")
            return None
        relative = str(PurePosixPath(config).relative_to(mount))
        keys = {item["path"]: item["key"] for item in source.get("items") or []} or None
        key = keys.get(relative) if keys is not None else relative
        data = self.configmaps.get(source.get("name"))
        if data is None or key not in data:
            self.error(f"{name} {config!r}: ConfigMap {source.get('name')!r} (mounted at {mount}) has no such key "
                       f"{key!r}")
            return None
        return yaml.safe_load(data[key]) or {}

    def load(self, schema: type, name: str, config: str, overrides: list[str]) -> Any:
        source = self.config_source(name, config)
        if source is None:
            return None
        try:
            return load_config(schema, source, overrides)
        except ConfigError as err:
            self.error(f"{name} {config!r} does not load: {err}")
            return None


def _train_checks(ctx: Context, config: Any, prefix: str = "") -> None:
    """Paths of a training config and of its stages; its workers and Ray Data on the worker groups."""
    stages = [config.stage(i) for i in range(len(config.stages))] if config.stages else [config]
    ctx.split("train", f"{prefix}data.train", config.data.train)
    for name, holder, key in path_fields(type(config), config.model_dump(mode="json")):
        ctx.path(f"{prefix}{name}", holder[key])
    seen = set()  # stages that share their workers and data settings are checked once; without worker groups
    for stage in stages if ctx.workers else []:  # Ray runs inside the job's own pod: nothing to place
        key = (stage.scaling.model_dump_json(), stage.data.preprocess_cpus)
        if key not in seen:
            seen.add(key)
            _cpu_check(ctx, stage, prefix)


def _cpu_check(ctx: Context, config: Any, prefix: str) -> None:
    """The workers of ``config`` placed on the worker groups at ``maxReplicas``; some pod must keep
    ``data.preprocess_cpus`` CPUs for Ray Data."""
    scaling, need = config.scaling, config.data.preprocess_cpus
    left, free = scaling.num_workers, []
    for group in ctx.workers:
        per_pod = math.floor(group.cpus / scaling.cpus_per_worker)
        if scaling.use_gpu:
            per_pod = min(per_pod, math.floor(group.gpus / scaling.gpus_per_worker))
        for _replica in range(group.max_replicas):
            placed = min(left, per_pod)
            left -= placed
            free.append(group.cpus - placed * scaling.cpus_per_worker)
    name = f"{prefix}scaling ({config.name})"
    if left > 0:
        ctx.error(f"{name}: {scaling.num_workers} workers of {scaling.cpus_per_worker:g} CPUs"
                  f"{f' and {scaling.gpus_per_worker:g} GPUs' if scaling.use_gpu else ''} do not fit the worker "
                  f"groups at maxReplicas ({left} left over)")
    elif max(free + [p.cpus for p in ctx.runners if p not in ctx.workers], default=0) < need:
        ctx.error(f"{name}: no CPU left for Ray Data: {scaling.num_workers} training workers take "
                  f"{scaling.cpus_per_worker:g} CPUs each and leave no pod with data.preprocess_cpus ({need:g}) — "
                  "training would wait for data forever (give workers fewer CPUs: cluster.gpuWorkers.dataCpus)")


def _command(ctx: Context, argv: list[str], field_name: str) -> None:
    """Parse ``argv`` (``visor …``) with the command line, then check what the job reads and where it runs."""
    import typer

    if argv[:3] == ["python", "-m", "jobs.cli"]:  # the same command line, as `ray job submit` examples spell it
        argv = ["visor", *argv[3:]]
    if argv[:1] != ["visor"] or len(argv) < 2:
        ctx.error(f"{field_name}: {shlex.join(argv)!r} is not a visor command")
        return
    command = ctx.command_line.commands.get(argv[1])
    if command is None:
        ctx.error(f"{field_name}: visor has no command {argv[1]!r}")
        return
    try:
        parsed = command.make_context(argv[1], list(argv[2:]))
    except typer.TyperException as err:
        ctx.error(f"{field_name}: `visor {argv[1]}`: {err.format_message()}")
        return
    params = parsed.params
    if argv[1] == "submit":
        _submitted(ctx, params, list(parsed.args), field_name)
    elif argv[1] == "train":
        from jobs.train.config import TrainConfig

        config = ctx.load(TrainConfig, "--config", params["config"], params["set_"])
        if config is not None:
            _train_checks(ctx, config)
    elif argv[1] == "retrain":
        _retrain(ctx, params)
    for name in PATH_PARAMS:
        if params.get(name) is not None:
            ctx.path(f"--{name.replace('_', '-')}", [str(v) for v in params[name]]
                     if isinstance(params[name], list | tuple) else str(params[name]))
    if argv[1] in SPLIT_OF_DATA:
        ctx.split(SPLIT_OF_DATA[argv[1]], "--data", list(params["data"]))
    for baseline in params.get("baselines") or []:
        ctx.path("--baselines", baseline.partition("=")[2])


def _retrain(ctx: Context, params: dict) -> None:
    from jobs.retrain.config import RetrainConfig

    retrain = ctx.load(RetrainConfig, "--config", params["config"], params["set_"])
    if retrain is None:
        return
    for name, holder, key in path_fields(RetrainConfig, retrain.model_dump(mode="json", exclude={"train"})):
        if name not in UNCHECKED_PATHS:
            ctx.path(name, holder[key])
    ctx.split("policy", "policy.data", retrain.policy.data)
    ctx.split("eval", "evaluate.data", retrain.evaluate.data)
    _train_checks(ctx, retrain.train, prefix="train.")


def _submitted(ctx: Context, params: dict, args: list[str], field_name: str) -> None:
    """``visor submit JOB --address … [--config …] [-- args]``: JOB checked on the RayCluster the address names,
    its config read where ``visor submit`` runs."""
    host = urlparse(params.get("address") or "").hostname or ""
    cluster = host.split(".")[0].removesuffix("-head-svc") if host.split(".")[0].endswith("-head-svc") else None
    if cluster not in ctx.clusters:
        ctx.error(f"{field_name}: --address {params.get('address')!r} names no RayCluster of these manifests "
                  f"({', '.join(sorted(ctx.clusters)) or 'none'}; address http://<name>-head-svc.<namespace>…:8265)")
        return
    head, workers = cluster_pods(ctx.clusters[cluster])
    for one in (head, *workers):
        one.where = f"RayCluster {cluster} {one.where}"
    job = Context(ctx.where, ctx.reader, [head, *workers], workers, ctx.configmaps, ctx.clusters, ctx.command_line,
                  ctx.errors, ctx.splits)
    config = ["--config", params["config"]] if params.get("config") else []
    _command(job, ["visor", params["job"], *config, *args], f"{field_name} (run on RayCluster {cluster})")


def _serve_errors(name: str, spec: dict) -> Iterator[str]:
    from ray.serve.schema import ServeDeploySchema

    from jobs.serving.config import ServeConfig

    try:
        serve_config = ServeDeploySchema.model_validate(yaml.safe_load(spec.get("serveConfigV2") or "") or {})
    except (ValueError, yaml.YAMLError) as err:
        yield f"{name}: spec.serveConfigV2: not a Ray Serve config: {err}"
        return
    for index, application in enumerate(serve_config.applications):
        where = f"{name}: spec.serveConfigV2 applications[{index}].args"
        for ignored in sorted(set(application.args) & set(IGNORED_SERVE_ARGS)):
            yield f"{where}.{ignored}: ignored by app_builder (the proxy listens where http_options say)"
        try:
            load_config(ServeConfig, {k: v for k, v in application.args.items() if k not in IGNORED_SERVE_ARGS})
        except ConfigError as err:
            yield f"{where}: {err}"


def job_errors(files: dict[str, list[dict]], command_line: click.Group) -> list[str]:
    """Every reason a job of ``files`` (file name → documents) could not start; empty when all can.
    ``command_line``: the ``visor`` command line (``typer.main.get_command(jobs.cli.app)``), passed in by the
    command that checks, so that this module stays below the CLI."""
    documents = [d for docs in files.values() for d in docs if isinstance(d, dict)]
    configmaps = {_name(d): d.get("data") or {} for d in documents if d.get("kind") == "ConfigMap"}
    clusters = {_name(d): d.get("spec") or {} for d in documents if d.get("kind") == "RayCluster"}
    errors: list[str] = []
    splits: dict[str, dict[tuple[str, ...], list[str]]] = {}
    for document in documents:
        kind, name = document.get("kind"), f"{document.get('kind')} {_name(document)}"
        spec = document.get("spec") or {}
        if kind == "RayJob":
            head, workers = cluster_pods(spec.get("rayClusterSpec") or {})
            ctx = Context(name, head, [head, *workers], workers, configmaps, clusters, command_line, errors, splits)
            _command(ctx, shlex.split(spec.get("entrypoint", "")), "spec.entrypoint")
        elif kind == "RayService":
            errors.extend(_serve_errors(name, spec))
        elif kind not in RAY_KINDS:
            for template, where in _pod_templates(spec, "spec"):
                for index, container in enumerate((template.get("spec") or {}).get("containers") or []):
                    if (container.get("command") or [None])[0] == "visor":
                        here = pod(where, template)  # the job runs in this pod (`visor submit`: on a cluster)
                        ctx = Context(name, here, [here], [], configmaps, clusters, command_line, errors,
                                      splits)
                        _command(ctx, list(container["command"]), f"{where}.spec.containers[{index}].command")
    for split, readers in splits.items():
        if len(readers) > 1:
            errors.append(f"data split {split!r} is read as different shards by different jobs: "
                          + "; ".join(f"{', '.join(names)}: {list(specs)}" for specs, names in readers.items()))
    return errors


def _name(document: dict) -> str:
    return str((document.get("metadata") or {}).get("name", "<no name>"))


def _pod_templates(node: Any, where: str) -> Iterator[tuple[dict, str]]:
    """``(pod template, its dotted path)`` for every mapping under ``node`` whose ``spec`` has ``containers``."""
    if isinstance(node, dict):
        if isinstance(node.get("spec"), dict) and "containers" in node["spec"]:
            yield node, where
            return
        for key, value in node.items():
            yield from _pod_templates(value, f"{where}.{key}")
