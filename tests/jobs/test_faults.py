"""Test-only fault injection: reachable through VISOR_TEST_FAULT alone, parsed in one place."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobs.faults import fail_stage, train_fault


def test_faults_come_only_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("VISOR_TEST_FAULT", raising=False)
    assert train_fault("run") is None
    fail_stage("policy")  # nothing asked: nothing raised

    monkeypatch.setenv("VISOR_TEST_FAULT", "train:rank=1:step=3")
    fault = train_fault("run")
    assert (fault.rank, fault.step) == (1, 3)
    fault = type(fault)(fault.rank, fault.step, tmp_path / "marker")
    fault.maybe_fail(0, 3)
    fault.maybe_fail(1, 2)
    with pytest.raises(RuntimeError, match=r"injected fault \(VISOR_TEST_FAULT\) at step 3 on rank 1"):
        fault.maybe_fail(1, 3)
    fault.maybe_fail(1, 3)  # once: the replacement worker carries on
    fail_stage("policy")  # a training fault is not a retrain fault

    monkeypatch.setenv("VISOR_TEST_FAULT", "retrain:stage=evaluate")
    assert train_fault("run") is None
    fail_stage("policy")
    with pytest.raises(RuntimeError, match="injected failure in retrain stage evaluate"):
        fail_stage("evaluate")
    fail_stage("evaluate", "recipe")  # a retrain fault is not a recipe fault

    monkeypatch.setenv("VISOR_TEST_FAULT", "recipe:stage=universal")
    fail_stage("universal")
    with pytest.raises(RuntimeError, match="injected failure in recipe stage universal"):
        fail_stage("universal", "recipe")

    monkeypatch.setenv("VISOR_TEST_FAULT", "train:step")
    with pytest.raises(ValueError, match="expected train:rank=R:step=S, retrain:stage=NAME, recipe:stage=NAME"):
        train_fault("run")
