"""The one config idiom (jobs.config): every shipped preset and values file validates under current names, every
command-line default is its schema's, renamed keys still work for a release, errors name the field."""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import get_args

import pytest
import torch
import typer
import yaml
from PIL import Image

from jobs.cli import app
from jobs.cli.options import JOBS, field_at
from jobs.cluster.infra import Values
from jobs.config import CONFIG_DIR, ConfigDeprecationWarning, ConfigError, Section, load_config
from jobs.evaluation.config import EvaluateConfig, PolicyConfig, ScoreOptions
from jobs.retrain.config import RetrainConfig
from jobs.sections import ReadSection
from jobs.serving.config import Limits, ServeConfig
from jobs.train.config import FREEZABLE, CrossAttention, TokenReduction, TrainConfig, TrainStage

VALUES = Path(__file__).resolve().parents[2] / "infra" / "values.yaml"

# every shipped preset → the job that runs it (a new preset must say which)
PRESET_JOBS = {"demo-tiny": "train", "demo-recipe": "train", "bench-quality": "train", "llava-ov-0.5b": "train",
               "llava-ov-7b": "train", "retrain-demo": "retrain", "train-policy-demo": "train-policy",
               "evaluate-demo": "evaluate", "promote-demo": "promote", "serve-demo": "serve",
               "synth-demo": "synth", "pack-example": "pack", "inspect-demo": "inspect"}
JOB_COMMANDS = {"train": ("train",), "retrain": ("retrain",), "train-policy": ("train-policy",),
                "evaluate": ("evaluate",), "promote": ("promote",), "serve": ("serve",),
                "synth": ("data", "synth"), "pack": ("data", "pack"), "inspect": ("data", "inspect")}
NOT_SETTINGS = {"config", "set_", "verbose", "as_json"}  # the config source and console switches


def strict(schema: type[Section], source, overrides=()):
    """Load with deprecation warnings as errors: what is shipped uses only current names."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConfigDeprecationWarning)
        return load_config(schema, source, overrides)


def command_of(job: str):
    command = typer.main.get_command(app)
    for name in JOB_COMMANDS[job]:
        command = command.commands[name]
    return command


def test_every_job_has_a_shipped_config_and_every_preset_a_job() -> None:
    assert set(PRESET_JOBS) == {p.stem for p in CONFIG_DIR.glob("*.yaml")}
    assert set(PRESET_JOBS.values()) == set(JOB_COMMANDS) == set(JOBS)


@pytest.mark.parametrize("preset", sorted(PRESET_JOBS))
def test_every_shipped_preset_validates_under_current_names(preset: str) -> None:
    strict(JOBS[PRESET_JOBS[preset]].schema, preset)  # a retrain's training config too: nested in it
    strict(Values, VALUES)


@pytest.mark.parametrize("job", sorted(JOB_COMMANDS))
def test_every_job_takes_config_set_and_a_flag_per_common_field(job: str) -> None:
    spec, command = JOBS[job], command_of(job)
    options = {p.name: p for p in command.params if not getattr(p, "hidden", False)}
    assert {"config", "set_"} <= set(options)
    flags = {dotted.rpartition(".")[2]: dotted for dotted in (*spec.flags, *spec.arguments)}
    assert set(options) - NOT_SETTINGS == set(flags)  # a setting's flag carries the field's name
    for name, dotted in flags.items():
        info = field_at(spec.schema, dotted)
        assert options[name].default is None, (job, name)  # a flag left out keeps the config's value
        assert options[name].help == info.description and info.description, (job, name)
        if not info.is_required() and name not in spec.arguments:
            assert options[name].show_default == str(info.get_default(call_default_factory=True)), (job, name)


def test_a_job_config_comes_from_the_file_then_the_flags_then_set(tmp_path: Path) -> None:
    (tmp_path / "eval.yaml").write_text("model: models:/visor/1\ndata: [a]\nscore: {batch_size: 4, actors: 3}\n")
    params = command_of("evaluate").make_context("evaluate", [
        "--config", str(tmp_path / "eval.yaml"), "--batch-size", "8", "--set", "score.batch_size=9",
        "--baselines", "llava=models:/llava/1", "--max-new-tokens", "5"]).params
    config = JOBS["evaluate"].resolve(params)
    assert isinstance(config, EvaluateConfig)
    assert (config.model, config.data, config.score.actors) == ("models:/visor/1", ["a"], 3)  # from the file
    assert (config.score.batch_size, config.score.max_new_tokens) == (9, 5)  # --set over the flag over the file
    assert config.baselines == {"llava": "models:/llava/1"}
    with pytest.raises(typer.BadParameter, match="score.batch_size: Input should be greater than or equal to 1"):
        JOBS["evaluate"].resolve(command_of("evaluate").make_context("evaluate", [
            "--model", "m", "--data", "d", "--batch-size", "0"]).params)
    with pytest.raises(typer.BadParameter, match="data: Field required"):
        JOBS["evaluate"].resolve(command_of("evaluate").make_context("evaluate", ["--model", "m"]).params)


@pytest.mark.parametrize(("job", "old", "value", "field", "expected"), [
    ("evaluate", "--baseline", "b=models:/b/1", "baselines", {"b": "models:/b/1"}),
    ("promote", "--name", "other", "registered_model", "other"),
    ("serve", "--reload-poll", "5", "reload_poll_seconds", 5.0),
])
def test_old_flag_names_work_for_one_release_with_a_warning(job, old, value, field, expected) -> None:
    args = ["--model", "m", "--data", "d"] if job == "evaluate" else []
    params = command_of(job).make_context(job, [*args, old, value]).params
    with pytest.warns(ConfigDeprecationWarning, match=f"'{old}' is deprecated.*use '--{field.replace('_', '-')}'"):
        config = JOBS[job].resolve(params)
    assert getattr(config, field) == expected


def test_shared_settings_keep_one_default() -> None:
    serve, values = ServeConfig(), Values.model_fields["serve"].annotation.model_fields
    shared = set(values) & set(ServeConfig.model_fields)
    assert shared == set(values) - {"token_secret"}  # a values setting of the endpoint is a ServeConfig field
    for name in shared:
        assert values[name].get_default() == getattr(serve, name), name
    policy, retrain = PolicyConfig.model_fields, RetrainConfig.model_fields["policy"].annotation
    for name in ("loss_tolerance", "heldout_fraction", "accuracy_target", "epochs"):
        assert retrain.model_fields[name].get_default() == policy[name].get_default(), name
    read = ReadSection().read_options()
    assert ScoreOptions().read.read_options() == read
    assert Limits().max_image_pixels == read.max_image_pixels
    assert ServeConfig().model == f"models:/{policy['registered_model'].get_default()}@champion"


def test_renamed_keys_are_accepted_with_a_warning_for_one_release() -> None:
    with pytest.warns(ConfigDeprecationWarning) as renamed:
        serve = load_config(ServeConfig, {"model_uri": "models:/visor/3", "num_replicas": 2, "reload_poll_s": 5,
                                          "batch_wait_timeout_s": 0.5})
    assert sorted(str(w.message).split("'")[1:4:2] for w in renamed) == [
        ["batch_wait_timeout_s", "batch_wait_timeout_seconds"], ["model_uri", "model"],
        ["num_replicas", "replicas"], ["reload_poll_s", "reload_poll_seconds"]]
    assert (serve.model, serve.replicas, serve.reload_poll_seconds) == ("models:/visor/3", 2, 5.0)
    assert serve.batch_wait_timeout_seconds == 0.5
    with pytest.warns(ConfigDeprecationWarning, match="'budgets' is deprecated.*use 'sampling'") as drawn:
        recipe = load_config(TrainConfig, {**RECIPE, "budgets": {"strategy": "sandwich"},
                                           "stages": [{"name": "a", "budgets": {"strategy": "largest"}}]})
    assert len(drawn) == 2 and recipe.sampling.strategy == "sandwich"  # the recipe's, and its stage's
    assert recipe.stage(0).sampling.strategy == "largest" and recipe.stages[0].model_dump() == {
        "name": "a", "sampling": {"strategy": "largest"}}
    with pytest.warns(ConfigDeprecationWarning, match="'score_batch_size'.*use 'score.batch_size'"):
        retrain = load_config(RetrainConfig, "retrain-demo", ["score_batch_size=7", "score.actors=2"])
    assert (retrain.score.batch_size, retrain.score.actors) == (7, 2)
    with pytest.warns(ConfigDeprecationWarning) as old_train:  # the training config by file + --set items
        old = load_config(RetrainConfig, {"train_config": "demo-recipe", "train_overrides": ["optim.lr=0.5"],
                                          "policy": {"data": ["p"]}, "eval_data": ["e"]})
    assert sorted(str(w.message).split("'")[1] for w in old_train) == ["eval_data", "train_config/train_overrides"]
    assert old.train == load_config(TrainConfig, "demo-recipe", ["optim.lr=0.5"]) and old.evaluate.data == ["e"]
    values = yaml.safe_load(VALUES.read_text())
    values["retrain"]["policyData"] = values["data"]["policy"]  # moved (not renamed): it names its new place
    with pytest.raises(ConfigError, match="retrain.policyData moved to data.policy"):
        load_config(Values, values)
    with pytest.warns(ConfigDeprecationWarning), pytest.raises(ConfigError, match="keep only 'replicas'"):
        load_config(ServeConfig, {"num_replicas": 2, "replicas": 3})


def test_errors_name_the_dotted_field_and_the_source() -> None:
    with pytest.raises(ConfigError, match=r"ServeConfig: limits.max_new_tokens: Input should be greater"):
        load_config(ServeConfig, {"limits": {"max_new_tokens": 0}})
    with pytest.raises(ConfigError, match=r"retrain-demo.yaml: policy.epochs: Input should be greater"):
        load_config(RetrainConfig, "retrain-demo", ["policy.epochs=0"])
    with pytest.raises(ConfigError, match="max_ongoing_requests must be >= max_batch_size"):
        load_config(ServeConfig, {"max_batch_size": 64})
    with pytest.raises(ConfigError, match=r"fault: Extra inputs are not permitted"):  # test hooks are not config
        load_config(TrainConfig, "demo-tiny", ["fault.fail_at_step=3"])


def plain(output: str) -> str:
    """Typer's output without its box drawing and line wrapping."""
    return " ".join(re.sub(r"[\u2500-\u257f]", " ", output).split())


def test_renamed_flags_still_work(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    runner = CliRunner()
    with pytest.warns(ConfigDeprecationWarning, match="'--reload-poll' is deprecated.*'--reload-poll-seconds'"):
        result = runner.invoke(app, ["serve", "--reload-poll", "-1"])  # checked as reload_poll_seconds
    assert result.exit_code == 2 and "reload_poll_seconds: Input should be greater than or equal to 0" in plain(
        result.output)
    bad = runner.invoke(app, ["serve", "--max-batch-size", "0"])
    assert bad.exit_code == 2 and "max_batch_size: Input should be greater than or equal to 1" in plain(bad.output)
    with pytest.warns(ConfigDeprecationWarning, match="'--name' is deprecated.*'--registered-model'"):
        result = runner.invoke(app, ["promote", "--name", "elsewhere", "--tracking-uri",
                                     f"sqlite:///{tmp_path / 'mlflow.db'}"])
    assert result.exit_code == 1 and "registered model 'elsewhere' has no 'challenger'" in plain(result.output)


RECIPE = {
    "name": "recipe", "data": {"train": ["shards/*.tar"]}, "model": {"plan": "full_attention"},
    "optim": {"max_steps": 100, "lr": 2e-3},
    "stages": [
        {"name": "pretrain"},
        {"name": "universal", "model": {"plan": "default"}, "optim": {"max_steps": 30},
         "data": {"train": ["other/*.tar"]}, "freeze": ["vision_tower"]},
    ],
}


def test_a_recipe_stage_is_its_keys_merged_over_the_config() -> None:
    recipe = strict(TrainConfig, RECIPE)
    assert recipe.stage_names == ["pretrain", "universal"]
    first, second = recipe.stage(0), recipe.stage(1, "runs/pretrain/model")
    assert first.name == "recipe.pretrain" and first.model.plan == "full_attention" and first.optim.max_steps == 100
    assert second.name == "recipe.universal" and second.model.plan == "default"
    assert (second.model.init, second.model.path) == ("visor", "runs/pretrain/model")
    assert second.optim.max_steps == 30 and second.optim.lr == 2e-3  # a section merges key by key
    assert second.data.train == ["other/*.tar"] and second.freeze == ["vision_tower"]
    assert not first.stages and not second.stages
    assert recipe.final().name == "recipe.universal"
    warm = recipe.warm_started("models:/visor/3")
    assert (warm.model.init, warm.model.path, warm.model.plan) == ("visor", "models:/visor/3", None)
    assert warm.optim.max_steps == 30 and not warm.stages


def test_stages_are_typed_partial_configs_that_dump_only_what_they_set() -> None:
    recipe = strict(TrainConfig, RECIPE)
    universal = recipe.stages[1]
    assert isinstance(universal, TrainStage) and universal.optim.max_steps == 30 and universal.optim.lr is None
    assert universal.model_dump() == RECIPE["stages"][1]  # the YAML form, as written
    assert TrainConfig.model_validate(recipe.model_dump(mode="json")) == recipe
    with pytest.raises(ConfigError, match=r"stages\[0\] \(a\): optim.lrr: Extra inputs are not permitted"):
        load_config(TrainConfig, {**RECIPE, "stages": [{"name": "a", "optim": {"lrr": 1}}]})


def test_a_retrain_nests_its_training_config_by_name_or_in_place(tmp_path: Path) -> None:
    named = strict(RetrainConfig, "retrain-demo", ["train.optim.max_steps=7"])  # train: demo-recipe
    assert named.train.name == "demo-recipe" and named.train.optim.max_steps == 7
    assert named.train.stages == load_config(TrainConfig, "demo-recipe").stages
    changed = strict(RetrainConfig, {**yaml.safe_load((CONFIG_DIR / "retrain-demo.yaml").read_text()),
                                     "train": {"config": "demo-recipe", "optim": {"lr": 0.5}, "stages": []}})
    preset_steps = load_config(TrainConfig, "demo-recipe").optim.max_steps  # the keys not changed come from it
    assert changed.train.optim.lr == 0.5 and changed.train.optim.max_steps == preset_steps and not changed.train.stages
    inline = strict(RetrainConfig, {**named.model_dump(mode="json"), "lock_dir": str(tmp_path)})
    assert inline.train == named.train
    with pytest.raises(ConfigError, match="RetrainConfig: train: config 'nope' is neither a file nor a preset"):
        load_config(RetrainConfig, {"train": {"config": "nope"}, "policy": {"data": ["p"]},
                                    "evaluate": {"data": ["e"]}})


@pytest.mark.parametrize("stages, message", [
    ([{"optim": {"max_steps": 3}}], r"stages\[0\].name: every stage needs a name"),
    ([{"name": "a"}, {"name": "a"}], r"stages\[1\].name: stage name 'a' is used twice"),
    ([{"name": "a", "mlflow": {"experiment": "x"}}], r"stages\[0\] \(a\): \['mlflow'\] cannot differ"),
    ([{"name": "a"}, {"name": "b", "model": {"path": "x"}}], r"stages\[1\] \(b\): model.path cannot be set after"),
    ([{"name": "a", "optim": {"lr": -1}}], r"stages\[0\] \(a\): optim.lr: Input should be greater than 0"),
    ([{"name": "a", "sampling": {"strategy": "greedy"}}], r"stages\[0\] \(a\): sampling.strategy: Input should be"),
])
def test_recipe_errors_name_the_stage_and_field(stages, message) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(TrainConfig, {**RECIPE, "stages": stages})


def test_a_patch_only_vision_tower_must_stay_frozen_in_every_stage() -> None:
    patches = {"init": "tiny", "plan": "full_attention", "tiny": {"vision": "patches"}}
    with pytest.raises(ConfigError, match=r"model.tiny.vision: patches needs freeze: \[vision_tower\]"):
        load_config(TrainConfig, {**RECIPE, "stages": [], "model": patches})
    with pytest.raises(ConfigError, match=r"stages\[0\] \(pretrain\): .*needs freeze: \[vision_tower\]"):
        load_config(TrainConfig, {**RECIPE, "model": patches, "freeze": ["vision_tower"],
                                  "stages": [{"name": "pretrain", "freeze": []}]})
    config = load_config(TrainConfig, {**RECIPE, "model": patches, "freeze": ["vision_tower"]})
    assert config.stage(0).freeze == ["vision_tower"] and config.stage(1).freeze == ["vision_tower"]


def test_a_patch_only_tiny_model_has_no_positions_and_no_attention_across_patches() -> None:
    from jobs.train.model_setup import build_model
    from visor_model.presets import tiny_processor, word_tokenizer

    config = load_config(TrainConfig, {**RECIPE, "stages": [], "freeze": ["vision_tower"],
                                       "model": {"init": "tiny", "tiny": {"vision": "patches"}}})
    model = build_model(config.model, 40, seed=0).eval()
    assert not model.model.vision_tower.embeddings.position_embedding.weight.any()
    processor = tiny_processor(word_tokenizer(["x"]), model.config)
    image = Image.new("RGB", (64, 64), (200, 30, 30))
    image.paste((0, 0, 0), (8, 8, 16, 16))  # the same dark patch at two places in one tile
    image.paste((0, 0, 0), (48, 40, 56, 48))
    inputs = processor(text=["<image>"], images=[image], return_tensors="pt")
    with torch.no_grad():
        (tokens,), _ = model.image_features(inputs["pixel_values"], inputs["image_sizes"])
    assert tokens.shape[0] == 16 + 8 * 9  # the base tile's 4x4 tokens, then 8 rows of 8 patches and a newline
    patch = lambda row, col: tokens[16 + 9 * row + col]  # noqa: E731
    assert torch.equal(patch(1, 1), patch(5, 6)) and torch.equal(patch(0, 0), patch(7, 7))  # where is not seen
    assert not torch.allclose(patch(1, 1), patch(0, 0)) and torch.equal(patch(1, 2), patch(0, 0))


def test_model_plan_settings_are_exclusive() -> None:
    with pytest.raises(ConfigError, match="either model.plan or model.cross_layers"):
        load_config(TrainConfig, {**RECIPE, "stages": [], "model": {"plan": "default", "cross_layers": [1],
                                                                    "budgets": [[]]}})
    with pytest.raises(ConfigError, match="registry URI: it needs model.init 'visor'"):
        load_config(TrainConfig, {**RECIPE, "stages": [], "model": {"init": "llava", "path": "models:/visor/1"}})


def test_model_variants_and_freezable_groups_have_one_source() -> None:
    from visor_model import VisorConfig, VisorForConditionalGeneration
    from visor_model.config import CROSS_ATTENTION_VARIANTS, TOKEN_REDUCTIONS
    from visor_model.presets import tiny_config

    assert get_args(CrossAttention) == CROSS_ATTENTION_VARIANTS and get_args(TokenReduction) == TOKEN_REDUCTIONS
    defaults = VisorConfig()
    assert (defaults.cross_attention, defaults.token_reduction) == (CROSS_ATTENTION_VARIANTS[0], TOKEN_REDUCTIONS[0])
    model = VisorForConditionalGeneration(tiny_config(64, num_layers=3, hidden_size=32, cross_attention="gated"))
    for name, _ in model.named_parameters():  # every parameter is in exactly one group (or the policy's own)
        groups = [group for group, prefixes in FREEZABLE.items() if name.startswith(prefixes)]
        assert len(groups) == (0 if name.startswith("policy.") else 1), name
    with pytest.raises(ConfigError, match="freeze.0: Input should be 'vision_tower'"):
        load_config(TrainConfig, {**RECIPE, "stages": [], "freeze": ["vision"]})
    assert TrainConfig.model_validate({**RECIPE, "stages": [], "freeze": list(FREEZABLE)[1:]}).freeze


def _sections(schema: type) -> set[type]:
    """``schema`` and every section under it."""
    from jobs.config import model_type

    found = {schema}
    for field in schema.model_fields.values():
        sub = model_type(field.annotation)
        if sub is not None and issubclass(sub, Section):
            found |= _sections(sub)
    return found


def test_every_deprecated_name_is_listed_in_the_readme() -> None:
    from jobs.retrain.config import OLD_TRAIN_KEYS

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    table = readme[readme.index("**Deprecated names**"):readme.index("## Using the model")]
    old = {name for spec in JOBS.values() for section in _sections(spec.schema) for name in section.renamed}
    old |= {flag for spec in JOBS.values() for flag in spec.renamed} | set(OLD_TRAIN_KEYS)
    assert {"budgets", "eval_data", "batch_wait_timeout_s", "--baseline", "train_config"} <= old
    assert [name for name in sorted(old) if f"`{name}" not in table] == []
