"""Policy job, evaluation job, the registry model format and promotion, on a real MLflow store and local Ray."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from jobs.evaluation.config import PolicyTraining, ScoreOptions
from jobs.evaluation.evaluate import evaluate
from jobs.evaluation.policy import choose_tau, fit_policy, run_policy_job, sufficiency
from jobs.evaluation.report import EvalReport
from jobs.evaluation.scoring import score_batch
from jobs.registry.config import PromotionRule
from jobs.registry.model_format import load_visor
from jobs.registry.promote import PromotionError, decide, promote
from jobs.train.config import ModelConfig
from jobs.train.model_setup import build_model
from pipelines.synth import QUESTION_TYPES, render_sample, write_synth
from visor_model.anyres import num_tiles
from visor_model.flops import visor_flops
from visor_model.processing import VisorProcessor

from ..batches import fixed_batch

OPTIONS = ScoreOptions(batch_size=12)


def test_sufficiency_and_tau_choice() -> None:
    loss = np.array([[0.10, 0.05, 0.02], [2.0, 1.0, 0.9], [0.5, 0.5, 0.5]])
    correct = np.array([[True, True, True], [False, False, True], [False, False, False]])
    assert sufficiency(loss, correct, 0.05).tolist() == [[1, 1, 1], [0, 0, 1], [1, 1, 1]]
    assert sufficiency(loss, correct, 0.0).tolist() == [[1, 1, 1], [0, 0, 1], [1, 1, 1]]
    flops = np.tile([1.0, 2.0, 3.0], (4, 1))
    right = np.array([[True, True, True], [False, True, True], [False, False, True], [True, True, True]])
    probs = np.array([[0.9, 0.9, 0.9], [0.3, 0.8, 0.9], [0.1, 0.2, 0.9], [0.6, 0.7, 0.9]])
    tau, summary = choose_tau(probs, right, flops, target=1.0)  # every sample must stay right
    assert summary.accuracy == 1.0 and summary.target_met and summary.budget_counts == [2, 1, 1]
    assert 0.3 < tau <= 0.6  # the cheapest τ that still sends sample 1 to budget 1 and sample 2 to budget 2
    cheap_tau, cheap = choose_tau(probs, right, flops, target=0.5)
    assert cheap.mean_flops < summary.mean_flops and cheap.accuracy >= 0.5 and cheap_tau < tau


def test_the_policy_learns_from_its_input() -> None:
    from jobs.evaluation.scoring import Scores

    rng = np.random.default_rng(0)
    n, dim = 400, 8
    features = rng.normal(size=(n, 2 * dim)).astype(np.float32)
    hard = features[:, 0] > 0  # easy samples: budget 0 answers; hard ones need budget 2
    correct = np.stack([~hard, ~hard, np.ones(n, bool)], axis=1)
    loss = np.where(correct, 0.1, 2.0).astype(np.float32)
    columns = {"key": np.array([f"k{i}" for i in range(n)]), "url": np.array(["u"] * n), "features": features,
               "loss": loss, "correct": correct, "flops": np.tile([1.0, 2.0, 3.0], (n, 1))}
    head, tau, summary, labels = fit_policy(Scores(columns, "v", {}), dim, 32, PolicyTraining(epochs=300))
    with torch.no_grad():
        probs = torch.sigmoid(head(torch.as_tensor(features))).numpy()
    chosen = np.where((probs >= tau).any(1), (probs >= tau).argmax(1), 2)
    assert (chosen[~hard] == 0).mean() > 0.9 and (chosen[hard] == 2).mean() > 0.9  # separable by feature 0
    assert summary.accuracy >= 0.97 and summary.mean_flops < 2.5
    assert summary.train_samples + summary.heldout_samples == n and len(summary.label_rate_per_budget) == 3


def prompt_batch(processor, count: int = 12) -> dict:
    samples = [render_sample(4, "policy", i) for i in range(count)]
    processor.tokenizer.padding_side = "left"
    batch = dict(processor(text=[processor.prompt(s.question) for s in samples], images=[s.image for s in samples],
                           return_tensors="pt", padding=True))
    batch.pop("batch_num_images", None)
    return batch


def test_policy_job_registers_a_version_whose_auto_budget_uses_its_input(registry) -> None:
    outcome = run_policy_job(registry.model_uri, str(registry.data / "policy-*.tar"), registry.uri,
                             PolicyTraining(loss_tolerance=0.0, epochs=300), OPTIONS)
    assert outcome.registered_version == "2" and 0 < outcome.tau < 1
    rates = outcome.heldout.label_rate_per_budget
    assert any(0 < r < 1 for r in rates), "the per-budget labels are constant: the test data proves nothing"
    client = MlflowClient(registry.uri)
    version = client.get_model_version_by_alias("visor", "challenger")
    assert str(version.version) == "2" and version.tags["parent_version"] == "1"
    assert version.tags["data_version"] == client.get_model_version("visor", "1").tags["data_version"]

    mlflow.set_tracking_uri(registry.uri)
    model, processor = load_visor("models:/visor/2")
    assert model.config.policy_trained and model.config.policy_tau == outcome.tau
    result = model.generate(**prompt_batch(processor, 24), budget="auto", max_new_tokens=2,
                            return_dict_in_generate=True)
    assert len(set(result.budget.tolist())) > 1  # the policy's choice depends on the sample


def test_evaluation_reports_flops_from_token_counts_and_logs_plots(registry, tmp_path) -> None:
    spec = str(registry.data / "eval-*.tar")
    on_gpu = OPTIONS.model_copy(update={"gpus_per_actor": 1.0})  # the local Ray's one logical GPU
    outcome = evaluate("models:/visor@challenger", spec, registry.uri, on_gpu, out=tmp_path / "report.json")
    report = outcome.report
    assert EvalReport.model_validate_json((tmp_path / "report.json").read_text()) == report  # the file, typed
    assert json.loads((tmp_path / "report.json").read_text()) == report.model_dump(mode="json")
    assert report.samples == 36 and report.operating_point == "policy" and report.point is report.policy
    # the actor was given Ray's GPU; with no CUDA here, "auto" fell back to the CPU in float32
    expected = "cuda:0" if torch.cuda.is_available() else "cpu"
    assert [(p["device"], p["ray_gpu_ids"]) for p in report.scored_on] == [(expected, ["0"])]
    assert report.scored_on[0]["dtype"] == ("bfloat16" if torch.cuda.is_available() else "float32")

    mlflow.set_tracking_uri(registry.uri)
    model, processor = load_visor("models:/visor@challenger")
    counts = []
    for i in range(36):
        sample = render_sample(4, "eval", i)
        example = processor.build_example(sample.image, sample.question, sample.answer)
        prompt_len = int((example["labels"][0] != -100).nonzero()[0])
        visual = int((example["input_ids"][0] == model.config.image_token_id).sum())
        counts.append((visual, prompt_len - visual, int(example["pixel_values"].shape[1])))
    assert [r.budget for r in report.budgets] == list(range(model.plan.num_budgets))
    for row in report.budgets:
        expected = np.mean([visor_flops(model.config, row.budget, *c)["total"] for c in counts])
        assert row.mean_flops == pytest.approx(expected, rel=1e-9) and not row.budget_histogram
    assert set(report.policy.budget_histogram) == set(QUESTION_TYPES)
    assert sum(sum(n.values()) for n in report.policy.budget_histogram.values()) == 36
    assert report.budgets[0].saving_vs_llava_ov > report.budgets[-1].saving_vs_llava_ov > 1

    client = MlflowClient(registry.uri)
    plots = {a.path for a in client.list_artifacts(outcome.run_id, "plots")}
    assert plots == {"plots/pareto.png", "plots/budget_histogram.png"}
    tags = client.get_model_version("visor", "2").tags
    assert tags["eval/latest_data_version"] == report.data_version
    assert float(tags[f"eval/{report.data_version}/accuracy"]) == report.policy.accuracy


def test_sufficiency_follows_the_benchmark_metric() -> None:
    loss = np.array([[1.0, 1.0, 1.0], [3.0, 2.0, 1.0]])
    score = np.array([[0.6, 0.9, 0.9], [0.0, 0.0, 0.0]])  # e.g. ANLS of each budget's greedy answer
    assert sufficiency(loss, score, 0.0).tolist() == [[1, 1, 1], [0, 0, 1]]  # loss ties make all sufficient
    assert sufficiency(loss + [[0.5, 0, 0], [0, 0, 0]], score, 0.1).tolist() == [[0, 1, 1], [0, 0, 1]]


def test_evaluation_by_generation_scores_each_benchmark_with_its_metric(registry, tmp_path) -> None:
    """Packed benchmark rows (answers + metric + data_source): greedy answers scored per benchmark; the expected
    scores come from answers generated here one sample at a time."""
    from jobs.evaluation.metrics import score as metric_score
    from pipelines.pack import PackOptions, pack

    mlflow.set_tracking_uri(registry.uri)
    model, processor = load_visor(registry.model_uri)
    largest = model.plan.num_budgets - 1
    tokenizer = processor.tokenizer
    answers = []
    (tmp_path / "img").mkdir()
    samples = [render_sample(4, "eval", i) for i in range(6)]
    for i, sample in enumerate(samples):
        sample.image.save(tmp_path / "img" / f"{i}.png")
        inputs = processor(text=[processor.prompt(sample.question)], images=[sample.image], return_tensors="pt")
        inputs.pop("batch_num_images", None)
        out = model.generate(**inputs, budget=largest, max_new_tokens=3, eos_token_id=tokenizer.eos_token_id,
                             pad_token_id=tokenizer.pad_token_id)
        answers.append(tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip())
    assert all(answers), answers
    cases = [("docvqa", "anls", [answers[0] + "zz"]), ("ocrbench", "contains", [answers[1]]),
             ("textvqa", "vqa", [answers[2]] * 3 + ["zzz"] * 7), ("chartqa", "relaxed", ["42"]),
             ("mine", "exact", [answers[4]]), ("", None, None)]
    lines = []
    for i, (sample, (source, metric, refs)) in enumerate(zip(samples, cases, strict=True)):
        row = {"image": f"img/{i}.png", "conversations": [{"from": "human", "value": f"<image>\n{sample.question}"},
                                                      {"from": "gpt", "value": sample.answer}]}
        row.update({k: v for k, v in (("data_source", source), ("metric", metric), ("answers", refs)) if v})
        lines.append(json.dumps(row))
    (tmp_path / "bench.jsonl").write_text("\n".join(lines))
    packed = pack([str(tmp_path / "bench.jsonl")], str(tmp_path / "shards"), PackOptions())
    assert packed["packed"] == 6

    uri = MlflowClient(registry.uri).get_model_version("visor", "1").source  # not a registered URI: no eval tags
    options = ScoreOptions(batch_size=6, max_new_tokens=3)
    report = evaluate(uri, str(tmp_path / "shards"), registry.uri, options).report
    row = report.row(f"budget {largest}")
    expected = {source: metric_score(metric, answers[i], refs)
                for i, (source, metric, refs) in enumerate(cases) if metric}
    assert expected["ocrbench"] == 1.0 and expected["textvqa"] == pytest.approx(0.9)  # the references say so
    assert set(row.accuracy_by_benchmark) == set(row.mean_flops_by_benchmark) == {*expected, ""}
    for source, value in expected.items():
        assert row.accuracy_by_benchmark[source] == pytest.approx(value), source
    client = MlflowClient(registry.uri)
    (run,) = client.search_runs([client.get_experiment_by_name("visor-eval").experiment_id],
                                f"tags.model_uri = '{uri}'")
    assert run.data.metrics[f"budget_{largest}/accuracy/textvqa"] == pytest.approx(0.9)
    assert "plots/benchmarks.png" in {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    logged = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="generated_answers.jsonl",
                                                 tracking_uri=registry.uri)
    generated = {r["data_source"]: r for r in map(json.loads, Path(logged).read_text().splitlines())}
    assert set(generated) == set(expected)  # the sample without a metric is not generated for
    assert [generated[s]["prediction"] for s in ("docvqa", "ocrbench")] == answers[:2]
    assert generated["textvqa"]["score"][largest] == pytest.approx(0.9)


def test_scoring_a_one_budget_plan_gives_no_policy_input(tmp_path) -> None:
    """The evaluation's baselines (full attention, token reduction) have one budget and no policy."""
    write_synth(tmp_path, 0, 0, 1, seed=0)
    processor = VisorProcessor.from_pretrained(tmp_path / "processor")
    config = ModelConfig(tiny={"num_layers": 2, "hidden_size": 32}, cross_layers=[], budgets=[[0, 1]])
    model = build_model(config, len(processor.tokenizer), seed=0)
    batch = fixed_batch(processor, 4, "eval")
    tiles = np.array([num_tiles(model.config, *size) for size in batch["image_sizes"].tolist()])
    scores = score_batch(model, batch, tiles)
    assert scores["features"].shape == (4, 0)
    assert scores["correct"].shape == scores["flops"].shape == (4, 1)
    # full attention computes the baseline, less its last layer's visual update, which nothing reads (run mode s)
    assert (scores["flops"][:, 0] < scores["baseline_flops"]).all()
    assert np.allclose(scores["flops"][:, 0], scores["baseline_flops"], rtol=0.5)


def test_promotion_rules_idempotence_and_refusal(registry) -> None:
    client = MlflowClient(registry.uri)
    mlflow.set_tracking_uri(registry.uri)
    source = client.get_model_version("visor", "2").source

    client.set_registered_model_alias("visor", "challenger", "1")  # version 1 was never evaluated
    with pytest.raises(PromotionError, match="version 1 .challenger. has no evaluation"):
        promote(registry.uri)
    client.set_registered_model_alias("visor", "challenger", "2")
    first = promote(registry.uri)
    assert first.promoted and "first evaluated model" in first.reason
    assert str(client.get_model_version_by_alias("visor", "champion").version) == "2"
    again = promote(registry.uri)
    assert again.promoted and not again.recorded and "already the champion" in again.reason

    tags = client.get_model_version("visor", "2").tags
    data_version = tags["eval/latest_data_version"]
    accuracy, flops = float(tags[f"eval/{data_version}/accuracy"]), float(tags[f"eval/{data_version}/mean_flops"])

    def challenger(acc: float, mean_flops: float) -> str:
        version = str(mlflow.register_model(source, "visor").version)
        for key, value in {f"eval/{data_version}/accuracy": acc, f"eval/{data_version}/mean_flops": mean_flops,
                           "eval/latest_data_version": data_version}.items():
            client.set_model_version_tag("visor", version, key, str(value))
        client.set_registered_model_alias("visor", "challenger", version)
        return version

    worse = challenger(accuracy - 0.1, flops)
    assert promote(registry.uri, dry_run=True).recorded is False
    decision = promote(registry.uri)
    assert not decision.promoted and decision.reason.startswith("less accurate")
    tagged = client.get_model_version("visor", worse).tags
    assert tagged["promotion.decision"] == "rejected" and tagged["promotion.compared_to"] == "2"
    repeat = promote(registry.uri)
    assert not repeat.promoted and not repeat.recorded and client.get_model_version("visor", worse).tags == tagged
    assert str(client.get_model_version_by_alias("visor", "champion").version) == "2"

    pricier = challenger(accuracy, flops * 1.5)
    assert not promote(registry.uri).promoted and "more compute" in client.get_model_version(
        "visor", pricier).tags["promotion.reason"]
    looser = promote(registry.uri, rule=PromotionRule(flops_tolerance=0.6))  # a new rule is a new decision
    assert looser.promoted and str(client.get_model_version_by_alias("visor", "champion").version) == pricier
    assert client.get_model_version("visor", "2").tags["promotion.replaced_by"] == pricier
    better = challenger(accuracy + 0.05, flops)
    assert promote(registry.uri).promoted
    assert str(client.get_model_version_by_alias("visor", "champion").version) == better
    assert decide({"accuracy": 0.5, "mean_flops": 10}, {"accuracy": 0.52, "mean_flops": 10},
                  PromotionRule(accuracy_tolerance=0.03))[0]


def test_a_fresh_process_answers_with_only_the_registry_uri(registry, tmp_path) -> None:
    image = render_sample(4, "eval", 0).image
    from io import BytesIO
    buffer = BytesIO()
    image.save(buffer, format="PNG")
    script = (
        "import base64, sys, mlflow, pandas as pd\n"
        "model = mlflow.pyfunc.load_model('models:/visor@champion')\n"
        "out = model.predict(pd.DataFrame([{'question': 'what colour is the background ?', "
        f"'image': '{base64.b64encode(buffer.getvalue()).decode()}', 'budget': 'auto', 'max_new_tokens': 3}}]))\n"
        "print(out.to_json(orient='records'))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["MLFLOW_TRACKING_URI"] = registry.uri
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    (row,) = json.loads(result.stdout.strip().splitlines()[-1])
    assert isinstance(row["answer"], str) and row["budget"] in (0, 1) and row["flops"] > 0
    assert Path(tmp_path).exists() and not list(Path(tmp_path).iterdir())  # it wrote nothing where it ran


def test_scoring_runs_the_vision_tower_once_per_batch(tmp_path) -> None:
    """Every budget and the policy's features read one vision-tower run (a forward hook counts them), with the
    same losses and correctness as each budget running the tower itself."""
    from tests.visor_model.test_work_done_once import TowerCalls

    write_synth(tmp_path, 0, 0, 1, seed=0)
    processor = VisorProcessor.from_pretrained(tmp_path / "processor")
    config = ModelConfig(tiny={"num_layers": 4, "hidden_size": 32}, cross_layers=[1], budgets=[[], [2], [2, 3]])
    model = build_model(config, len(processor.tokenizer), seed=0)
    batch = fixed_batch(processor, 4, "eval")
    tiles = np.array([num_tiles(model.config, *size) for size in batch["image_sizes"].tolist()])
    with TowerCalls(model) as counted:
        scores = score_batch(model, batch, tiles)
    assert counted.calls == 1
    with torch.no_grad():
        for budget in range(3):
            alone = model(**batch, budget=budget)
            assert np.array_equal(scores["loss"][:, budget], alone.loss_per_sample.numpy())
            assert np.array_equal(scores["correct"][:, budget], alone.correct_per_sample.numpy())
