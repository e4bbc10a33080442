"""``visor demo`` (what ``make demo`` runs): the whole local pipeline on synthetic data, then a summary.

shards (``demo-data/``) → ``visor retrain --config retrain-demo`` (train on local Ray →
policy → evaluate → promote, all tracked in ``./mlflow.db``) → one request to the
champion through the Ray Serve endpoint (OpenAI client, on a free port of 127.0.0.1)
→ the champion's evaluation table, its version and how to open the MLflow UI. Run it
again and the retrain is skipped (same data version); the rest runs again.
"""

from __future__ import annotations

import json
from pathlib import Path

from jobs.sections import CHAMPION, REGISTERED_MODEL

DATA = Path("demo-data")
SPLITS = {"train": 6000, "eval": 300, "policy": 300, "detail": 9600}  # a fresh sample a step in `detail`
SHARD_SIZE, SEED = 500, 0


def ensure_data(out: Path = DATA) -> None:
    """Write the demo shards unless ``out`` already holds exactly them (same counts, seed and questions: shards
    of an older generator are rewritten)."""
    from pipelines.synth import QUESTIONS, write_synth

    manifest = out / "manifest.json"
    if manifest.exists():
        found = json.loads(manifest.read_text())
        counts = {k: v["samples"] for k, v in found["splits"].items()}
        if found.get("seed") == SEED and counts == SPLITS and found.get("questions") == QUESTIONS:
            return
    write_synth(out, SPLITS["train"], SPLITS["eval"], SHARD_SIZE, SEED, policy=SPLITS["policy"],
                detail=SPLITS["detail"])


def champion_summary(tracking_uri: str, name: str = REGISTERED_MODEL) -> str:
    """The champion's evaluation table (from its evaluation run) and where to look next."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from jobs.evaluation.report import EvalReport, format_report
    from jobs.registry.tracking import alias_version

    champion = alias_version(MlflowClient(tracking_uri), name, CHAMPION)
    if champion is None:
        return f"no champion for {name!r} yet"
    data_version = champion.tags["eval/latest_data_version"]
    run_id = champion.tags[f"eval/{data_version}/run_id"]
    mlflow.set_tracking_uri(tracking_uri)
    report = EvalReport.model_validate_json(Path(mlflow.artifacts.download_artifacts(
        run_id=run_id, artifact_path="eval_report.json")).read_text())
    return "\n".join([
        f"champion: models:/{name}/{champion.version} (trained on data version {champion.tags.get('data_version')}, "
        f"τ = {champion.tags.get('policy.tau', '-')})",
        f"evaluation on {report.samples} samples (data version {data_version}):",
        format_report(report),
        "",
        f"MLflow UI: mlflow ui --backend-store-uri {tracking_uri}   (then open http://127.0.0.1:5000)",
    ])


def serve_one_request(tracking_uri: str) -> str:
    """Start the Serve app on a free local port, ask the champion one image question, stop the app."""
    import socket

    from openai import OpenAI
    from ray import serve

    from jobs.serving.config import ServeConfig
    from jobs.serving.openai_protocol import user_messages
    from jobs.serving.serve import start
    from pipelines.synth import render_sample

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    start(ServeConfig(tracking_uri=tracking_uri, port=port, cpus_per_replica=0.5))
    try:
        sample = render_sample(SEED, "eval", 0)
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused")
        reply = client.chat.completions.create(model="visor", messages=user_messages(sample.question, sample.image),
                                               temperature=0, max_tokens=4, extra_body={"visor_budget": "auto"})
    finally:
        serve.shutdown()
    visor = reply.model_extra["visor"]
    return (f"served one request (POST /v1/chat/completions on 127.0.0.1:{port}): {sample.question!r} → "
            f"{reply.choices[0].message.content!r} (reference {sample.answer!r}); budget {visor['budget']} chosen by "
            f"the policy, {visor['flops'] / 1e6:.1f} MFLOPs, {visor['saving_vs_full_attention']:.1f}x less than "
            "full attention")


def run_demo() -> str:
    from jobs.config import load_config
    from jobs.registry.tracking import tracking_uri
    from jobs.retrain.config import RetrainConfig
    from jobs.retrain.retrain import run_retrain

    ensure_data()
    outcome = run_retrain(load_config(RetrainConfig, "retrain-demo"))
    uri = tracking_uri()
    return "\n\n".join([f"retrain: {outcome.status} — {outcome.reason}", serve_one_request(uri),
                         champion_summary(uri)])
