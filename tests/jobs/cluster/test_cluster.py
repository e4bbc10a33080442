"""Cluster operations against real processes: a `ray start --head` cluster for `visor submit` / `visor jobs`,
and an `mlflow server` (SQLite backend, artifacts on the moto S3 endpoint) for concurrent retrains and loading
the champion from another process."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from pipelines.synth import write_synth

BIN = Path(sys.executable).parent
VISOR = str(BIN / "visor")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(url: str, seconds: float = 90, ok: int = 500) -> None:
    """Wait until ``url`` answers with a status below ``ok`` (201: only 200 will do)."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code < ok:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise TimeoutError(f"{url} did not come up in {seconds} s")


def environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "MLFLOW_"))}
    return {**env, "RAY_AUTH_MODE": "disabled", "PATH": f"{BIN}{os.pathsep}{env['PATH']}", **extra}


@pytest.fixture(scope="module")
def ray_head():
    """`ray start --head --block` on free ports (its own temp dir); SIGTERM stops exactly this cluster."""
    dashboard = free_port()
    temp = tempfile.mkdtemp(prefix="/tmp/rh")
    process = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", f"--port={free_port()}", "--dashboard-host=127.0.0.1",
         f"--dashboard-port={dashboard}", f"--dashboard-agent-listen-port={free_port()}",
         f"--ray-client-server-port={free_port()}", "--num-cpus=2", "--include-dashboard=true",
         "--disable-usage-stats", f"--temp-dir={temp}"],
        # no drain on SIGTERM (Ray waits up to 30 s for a node's work to quiesce; a test cluster has none to keep)
        env=environment(RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0"), stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True,
    )
    address = f"http://127.0.0.1:{dashboard}"
    try:
        wait_for(f"{address}/api/version")
        deadline = time.time() + 60
        while time.time() < deadline:  # the job agent registers a little after the dashboard answers
            if subprocess.run([VISOR, "jobs", "list", "--address", address], env=environment(),
                              capture_output=True).returncode == 0:
                break
            time.sleep(1)
        yield address
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(120)


def visor(*args: str, cwd: Path, timeout: int = 600, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([VISOR, *args], cwd=cwd, env=environment(**env), capture_output=True, text=True,
                          timeout=timeout)


def squeezed(text: str) -> str:
    """``text`` without whitespace or the side of rich's error box (which wraps and folds it)."""
    return "".join(text.replace("│", "").split())


def train_config(root: Path) -> dict:
    """demo-tiny, small, on ``root``'s data (the tracking store: the environment's)."""
    return {"config": "demo-tiny", "data": {"train": [f"{root}/data/train-*.tar"], "batch_size": 4},
            "optim": {"max_steps": 3}, "model": {"tiny": {"num_layers": 3}},
            "run": {"storage_path": str(root / "runs")}, "scaling": {"num_workers": 1}}


@pytest.fixture(scope="module")
def submitted_train(ray_head, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """`visor submit train --wait` of the demo-tiny preset from a directory holding its relative paths."""
    root = tmp_path_factory.mktemp("submitted")
    write_synth(root / "demo-data", 24, 0, 12, seed=1)
    result = visor("submit", "train", "--address", ray_head, "--config", "demo-tiny", "--wait", "--set",
                   "optim.max_steps=3", "--set=data.batch_size=4", "--set", "model.tiny.num_layers=3", cwd=root)
    return root, result


def test_submit_train_waits_for_success_and_logs_show_it(ray_head, submitted_train) -> None:
    """The demo-tiny preset's relative paths (shards, checkpoints, ./mlflow.db) mean the submitting directory's."""
    root, result = submitted_train
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    submission = result.stdout.split("submitted ", 1)[1].split()[0]
    assert f"job {submission}: SUCCEEDED" in result.stdout
    assert "Tasks:" not in result.stdout and "it/s]" not in result.stdout  # no progress bars in a job's log
    logs = visor("jobs", "logs", submission, "--address", ray_head, cwd=root)
    assert logs.returncode == 0 and "trained 3 steps" in logs.stdout
    assert "[visor train] step 3/3" in logs.stdout and "logs: " not in logs.stdout  # everything in the job's log
    listed = visor("jobs", "list", "--address", ray_head, cwd=root)
    assert f"{submission}\tSUCCEEDED" in listed.stdout
    assert visor("jobs", "status", submission, "--address", ray_head, cwd=root).stdout.strip() == "SUCCEEDED"

    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")  # the submitting directory's store
    (run,) = client.search_runs([client.get_experiment_by_name("visor-train").experiment_id])
    assert run.data.params["data.train"] == str([f"{root}/demo-data/train-*.tar"])
    assert client.get_model_version_by_alias("visor", "challenger").run_id == run.info.run_id
    assert list((root / "runs").glob("demo-tiny-*/checkpoint_*"))  # checkpoints beside it too
    assert f"model and checkpoint: {root}/runs/demo-tiny-" in logs.stdout


def test_submit_evaluate_ships_its_resolved_config_file(ray_head, submitted_train) -> None:
    """`visor submit evaluate --config FILE` with a flag and a --set: the job runs the config as resolved here,
    its relative paths (data, report, store) the submitting directory's."""
    root, trained = submitted_train
    assert trained.returncode == 0
    (root / "eval.yaml").write_text("model: models:/visor@challenger\ndata: ['demo-data/train-*.tar']\n"
                                    "out: reports/eval.json\nscore: {batch_size: 32, cpus_per_actor: 0.5}\n")
    result = visor("submit", "evaluate", "--address", ray_head, "--config", "eval.yaml", "--wait", "--",
                   "--batch-size", "8", "--set", "score.max_new_tokens=4", cwd=root)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert ": SUCCEEDED" in result.stdout
    report = json.loads((root / "reports" / "eval.json").read_text())
    assert report["samples"] == 24 and report["model_uri"] == "models:/visor@challenger"

    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    assert client.get_model_version_by_alias("visor", "challenger").tags["eval/latest_data_version"] == \
        report["data_version"]


def test_submit_serve_runs_the_endpoint_on_the_cluster_until_stopped(ray_head, submitted_train) -> None:
    """A long-running job: the challenger of the submitting directory's store answers on the head's port."""
    root, trained = submitted_train
    assert trained.returncode == 0, trained.stdout[-3000:]
    port = free_port()
    result = visor("submit", "serve", "--address", ray_head, "--", "--model", "models:/visor@challenger", "--port",
                   str(port), "--replicas", "1", cwd=root)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    submission = result.stdout.split("submitted ", 1)[1].split()[0]
    try:
        wait_for(f"http://127.0.0.1:{port}/health", seconds=300, ok=201)  # the proxy answers 404 before the app is up
        reply = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", timeout=60, json={
            "model": "visor", "max_tokens": 2, "temperature": 0,
            "messages": [{"role": "user", "content": "how many shapes are there ?"}]})
        assert reply.status_code == 200 and reply.json()["visor"]["model_version"] == "1"
        assert visor("jobs", "status", submission, "--address", ray_head, cwd=root).stdout.strip() == "RUNNING"
    finally:
        visor("jobs", "stop", submission, "--address", ray_head, cwd=root)
        # the application outlives its job (like `serve deploy`): remove it, freeing the head's CPUs
        subprocess.run([str(BIN / "serve"), "shutdown", "-a", ray_head, "-y"], env=environment(), timeout=120,
                       capture_output=True)


def test_submitting_local_paths_to_a_remote_cluster_is_refused_before_upload(tmp_path: Path) -> None:
    result = visor("submit", "train", "--address", "http://10.255.255.1:8265", "--config", "demo-tiny",
                   "--set", "run.storage_path=s3://bucket/runs", cwd=tmp_path, timeout=60)
    assert result.returncode == 2 and "submitted" not in result.stdout
    message = squeezed(result.stderr)
    assert squeezed("temporary working_dir or a node's disk: data.train ('demo-data/train-*.tar')") in message
    assert "run.storage_path('" not in message and "MLFLOW_TRACKING_URI('sqlite:///mlflow.db')" in message


def test_a_failing_job_reports_failure(ray_head, tmp_path: Path) -> None:
    """…and its relative ``--data`` argument meant the submitting directory's path, not its working_dir's."""
    result = visor("submit", "evaluate", "--address", ray_head, "--wait", "--", "--model", "models:/visor/1",
                   "--data", "missing/eval-*.tar", cwd=tmp_path)
    assert result.returncode == 1 and ": FAILED" in result.stdout
    assert squeezed(f"'{tmp_path}/missing/eval-*.tar' matches no .tar shard") in squeezed(result.stdout)
    submission = result.stdout.split("submitted ", 1)[1].split()[0]
    status = visor("jobs", "status", submission, "--address", ray_head, cwd=tmp_path)
    assert status.returncode == 1 and status.stdout.strip() == "FAILED"
    assert visor("submit", "demo", "--address", ray_head, cwd=tmp_path).returncode == 2  # not submittable


@pytest.fixture
def mlflow_server(moto_endpoint: str, tmp_path: Path):
    """`mlflow server` with a SQLite backend and artifacts proxied to a bucket on the moto endpoint."""
    import boto3

    boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1", aws_access_key_id="testing",
                 aws_secret_access_key="testing").create_bucket(Bucket="mlflow-artifacts")
    port = free_port()
    env = environment(MLFLOW_S3_ENDPOINT_URL=moto_endpoint, AWS_ACCESS_KEY_ID="testing",
                      AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    process = subprocess.Popen(
        [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--artifacts-destination", "s3://mlflow-artifacts/visor", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        wait_for(f"http://127.0.0.1:{port}/health")
        yield f"http://127.0.0.1:{port}"
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(60)


def test_concurrent_retrains_against_a_tracking_server_run_once(mlflow_server, moto_endpoint, tmp_path) -> None:
    write_synth(tmp_path / "data", 24, 12, 12, seed=2, policy=24)
    config = tmp_path / "retrain.yaml"
    config.write_text(json.dumps({
        "train": train_config(tmp_path),
        "policy": {"data": [f"{tmp_path}/data/policy-*.tar"], "epochs": 50},
        "evaluate": {"data": [f"{tmp_path}/data/eval-*.tar"]}, "score": {"batch_size": 12},
        "lock_dir": str(tmp_path / "locks"),
    }))
    env = {"MLFLOW_TRACKING_URI": mlflow_server}  # clients need no S3 credentials: the server proxies artifacts
    first = subprocess.Popen([VISOR, "retrain", "--config", str(config)], cwd=tmp_path, env=environment(**env),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lock = tmp_path / "locks" / "retrain-visor.lock"
    deadline = time.time() + 60
    while not lock.exists() and time.time() < deadline:
        time.sleep(0.2)
    second = visor("retrain", "--config", str(config), cwd=tmp_path, **env)
    output, _ = first.communicate(timeout=900)
    assert first.returncode == 0, output[-3000:]
    assert "promoted" in output.splitlines()[-1]
    assert second.returncode == 3 and "a retrain is already running" in second.stderr

    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("visor-retrain")
    (train,) = client.search_runs([experiment.experiment_id], "tags.job = 'train'")
    assert [m.step for m in client.get_metric_history(train.info.run_id, "lr")][-1] == 3
    champion = client.get_model_version_by_alias("visor", "champion")
    assert champion.tags["data_version"] == train.data.tags["data_version"]

    script = ("import mlflow, pandas as pd\n"
              "m = mlflow.pyfunc.load_model('models:/visor@champion')\n"
              "print(m.predict(pd.DataFrame([{'question': 'how many shapes are there ?', 'image': '', "
              "'budget': '0', 'max_new_tokens': 2}])).to_json(orient='records'))\n")
    loaded = subprocess.run([sys.executable, "-c", script], cwd=tempfile.mkdtemp(), env=environment(**env),
                            capture_output=True, text=True, timeout=300)
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    assert json.loads(loaded.stdout.strip().splitlines()[-1])[0]["budget"] == 0
