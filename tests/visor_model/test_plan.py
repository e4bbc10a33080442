import pytest

from visor_model import LayerPlan


@pytest.mark.parametrize("layers", [2, 3, 6, 24, 28])
def test_default_plan_shape(layers):
    plan = LayerPlan.default(layers)
    third = max(1, layers // 3)
    assert len(plan.cross_layers) == third
    assert len(plan.budgets[-1]) == third
    assert plan.budgets[0] == ()
    assert not set(plan.cross_layers) & set(plan.budgets[-1])
    for small, large in zip(plan.budgets, plan.budgets[1:], strict=False):
        assert set(small) < set(large)
    assert any(c < plan.policy_layer for c in plan.cross_layers)
    plan.check_policy_ready()


def test_default_plan_spreads_cross_layers_evenly():
    plan = LayerPlan.default(24)
    assert plan.cross_layers == (1, 4, 7, 10, 13, 16, 19, 22)
    assert plan.budgets[-1] == (2, 5, 8, 11, 14, 17, 20, 23)


def test_modes_and_visual_layers():
    plan = LayerPlan(num_layers=6, cross_layers=(1, 4), budgets=((), (2,), (2, 5)))
    assert plan.modes(0) == ["T", "C", "T", "T", "C", "T"]
    assert plan.modes(2) == ["T", "C", "S", "T", "C", "S"]
    assert plan.visual_layers(1) == [1, 2, 4]
    assert plan.run_modes(1) == plan.modes(1)  # layer 4 (C) still reads the visual stream after layer 2
    assert plan.run_modes(2) == ["T", "C", "S", "T", "C", "s"]  # nothing reads layer 5's visual update
    assert "T C S T C s" in plan.describe() and "(s: " in plan.describe()


def test_run_modes_keep_the_update_the_policy_reads():
    """A final S layer before the policy layer keeps its visual update: ``budget="auto"`` reads the visual
    stream there. A one-budget plan (full attention) has no policy: its last layer runs as ``s``."""
    plan = LayerPlan(num_layers=6, cross_layers=(1,), budgets=((2,), (2, 4)))
    assert plan.policy_layer == 4
    assert plan.run_modes(0) == ["T", "C", "S", "T", "T", "T"]
    assert plan.run_modes(1) == ["T", "C", "S", "T", "s", "T"]
    assert LayerPlan.full_attention(3).run_modes(0) == ["S", "S", "s"]


def test_full_attention_is_all_s():
    plan = LayerPlan.full_attention(4)
    assert plan.num_budgets == 1 and plan.modes(0) == ["S"] * 4
    with pytest.raises(ValueError, match="at least two budgets"):
        plan.check_policy_ready()


def test_round_trip_dict():
    plan = LayerPlan.default(12)
    assert LayerPlan.from_dict(plan.to_dict()) == plan


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_layers=4, cross_layers=(7,), budgets=((),)), "do not exist"),
        (dict(num_layers=4, cross_layers=(), budgets=((1,), (-1,))), "do not exist"),
        (dict(num_layers=4, cross_layers=(), budgets=((1,), (2,))), "nested"),
        (dict(num_layers=4, cross_layers=(), budgets=()), "at least one budget"),
    ],
)
def test_invalid_plans(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LayerPlan(**kwargs)


def test_budget_out_of_range():
    with pytest.raises(ValueError, match="out of range: this plan has budgets 0..2"):
        LayerPlan.default(6).check_budget(3)


def test_policy_needs_cross_layer_before_first_candidate():
    plan = LayerPlan(num_layers=4, cross_layers=(3,), budgets=((), (0,)))
    with pytest.raises(ValueError, match="before layer 0"):
        plan.check_policy_ready()
