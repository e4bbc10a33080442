"""The one config idiom (jobs.config): every shipped preset and values file validates under current names, every
command-line default is its schema's, renamed keys still work for a release, errors name the field."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest
import typer
import yaml

from jobs.cli import app
from jobs.cluster.infra import Values
from jobs.config import CONFIG_DIR, ConfigDeprecationWarning, ConfigError, Section, load_config
from jobs.evaluation.config import PolicyOptions, ScoreOptions
from jobs.registry.config import PromotionRule
from jobs.retrain.config import RetrainConfig
from jobs.sections import PackSection, ReadSection, TrackingSection
from jobs.serving.config import Limits, ServeConfig
from jobs.train.config import TrainConfig

VALUES = Path(__file__).resolve().parents[2] / "infra" / "values.yaml"

# command → (the schemas its options come from, the options that are job inputs or console switches rather than
# settings)
COMMANDS: dict[tuple[str, ...], tuple[tuple[type[Section], ...], set[str]]] = {
    ("serve",): ((ServeConfig, Limits), {"verbose"}),
    ("train-policy",): ((PolicyOptions, ScoreOptions, TrackingSection), {"model", "data", "verbose"}),
    ("evaluate",): ((ScoreOptions, TrackingSection), {"model", "data", "baseline", "out", "verbose"}),
    ("promote",): ((PromotionRule, TrackingSection), {"dry_run"}),
    ("data", "inspect"): ((ReadSection,), {"spec", "processor", "as_json", "render", "render_count", "report",
                                           "verbose"}),
    ("data", "pack"): ((PackSection,), {"source", "out", "as_json", "verbose"}),
}


def strict(schema: type[Section], source, overrides=()):
    """Load with deprecation warnings as errors: what is shipped uses only current names."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConfigDeprecationWarning)
        return load_config(schema, source, overrides)


@pytest.mark.parametrize("preset", sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
def test_every_shipped_preset_validates_under_current_names(preset: str) -> None:
    data = yaml.safe_load((CONFIG_DIR / f"{preset}.yaml").read_text())
    if "train_config" in data:
        retrain = strict(RetrainConfig, preset)
        strict(TrainConfig, retrain.train_config, retrain.train_overrides)
    else:
        strict(TrainConfig, preset)
    strict(Values, VALUES)


@pytest.mark.parametrize("path", list(COMMANDS), ids=" ".join)
def test_command_line_defaults_and_help_are_the_schema_fields(path: tuple[str, ...]) -> None:
    command = typer.main.get_command(app)
    for name in path:
        command = command.commands[name]
    schemas, inputs = COMMANDS[path]
    fields = {name: field for schema in schemas for name, field in schema.model_fields.items()}
    options = [p for p in command.params if not getattr(p, "hidden", False)]
    assert {p.name for p in options} - set(fields) == inputs  # a setting's flag carries the field's name
    for param in options:
        if param.name in fields:
            field = fields[param.name]
            assert param.default == field.get_default(call_default_factory=True), (path, param.name)
            assert param.help == field.description, (path, param.name)


def test_shared_settings_keep_one_default() -> None:
    serve, values = ServeConfig(), Values.model_fields["serve"].annotation.model_fields
    for name in ("model", "replicas", "replica_gpus", "max_batch_size", "reload_poll_seconds"):
        assert values[name].get_default() == getattr(serve, name), name
    policy, retrain = PolicyOptions(), RetrainConfig.model_fields["policy"].annotation
    for name in ("loss_tolerance", "heldout_fraction", "accuracy_target", "epochs"):
        assert retrain.model_fields[name].get_default() == getattr(policy, name), name
    read = ReadSection().read_options()
    assert ScoreOptions().read.read_options() == read
    assert Limits().max_image_pixels == read.max_image_pixels
    assert ServeConfig().model == f"models:/{PolicyOptions().registered_model}@champion"


def test_renamed_keys_are_accepted_with_a_warning_for_one_release() -> None:
    with pytest.warns(ConfigDeprecationWarning) as renamed:
        serve = load_config(ServeConfig, {"model_uri": "models:/visor/3", "num_replicas": 2, "reload_poll_s": 5})
    assert sorted(str(w.message).split("'")[1:4:2] for w in renamed) == [
        ["model_uri", "model"], ["num_replicas", "replicas"], ["reload_poll_s", "reload_poll_seconds"]]
    assert (serve.model, serve.replicas, serve.reload_poll_seconds) == ("models:/visor/3", 2, 5.0)
    with pytest.warns(ConfigDeprecationWarning, match="'score_batch_size'.*use 'score.batch_size'"):
        retrain = load_config(RetrainConfig, "retrain-demo", ["score_batch_size=7", "score.actors=2"])
    assert (retrain.score.batch_size, retrain.score.actors) == (7, 2)
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


@pytest.mark.parametrize("stages, message", [
    ([{"optim": {"max_steps": 3}}], r"stages\[0\].name: every stage needs a name"),
    ([{"name": "a"}, {"name": "a"}], r"stages\[1\].name: stage name 'a' is used twice"),
    ([{"name": "a", "mlflow": {"experiment": "x"}}], r"stages\[0\] \(a\): \['mlflow'\] cannot differ"),
    ([{"name": "a"}, {"name": "b", "model": {"path": "x"}}], r"stages\[1\] \(b\): model.path cannot be set after"),
    ([{"name": "a", "optim": {"lr": -1}}], r"stages\[0\] \(a\): optim.lr: Input should be greater than 0"),
    ([{"name": "a", "budgets": {"strategy": "greedy"}}], r"stages\[0\] \(a\): budgets.strategy: Input should be"),
])
def test_recipe_errors_name_the_stage_and_field(stages, message) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(TrainConfig, {**RECIPE, "stages": stages})


def test_model_plan_settings_are_exclusive() -> None:
    with pytest.raises(ConfigError, match="either model.plan or model.cross_layers"):
        load_config(TrainConfig, {**RECIPE, "stages": [], "model": {"plan": "default", "cross_layers": [1],
                                                                    "budgets": [[]]}})
    with pytest.raises(ConfigError, match="registry URI: it needs model.init 'visor'"):
        load_config(TrainConfig, {**RECIPE, "stages": [], "model": {"init": "llava", "path": "models:/visor/1"}})
