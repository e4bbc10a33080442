"""Test-only fault injection: reachable through VISOR_TEST_FAULT alone, parsed in one place."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobs.faults import fail_stage, serve_fault, train_fault


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


def test_serve_faults_strike_only_marked_requests_at_their_call(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VISOR_TEST_FAULT", raising=False)
    assert serve_fault() is None
    monkeypatch.setenv("VISOR_TEST_FAULT", "serve:marker=BOOM:at=decode")
    fault = serve_fault()
    fault.maybe_fail("prefill", ["a BOOM"])  # not its call
    fault.maybe_fail("decode", ["quiet", "calm"])  # no marked request in the batch
    with pytest.raises(RuntimeError, match=r"injected fault \(VISOR_TEST_FAULT\) in the model's decode"):
        fault.maybe_fail("decode", ["quiet", "a BOOM here"])
    monkeypatch.setenv("VISOR_TEST_FAULT", "serve:marker=BOOM:error=value")
    with pytest.raises(ValueError, match="prefill of a request containing 'BOOM'"):
        serve_fault().maybe_fail("prefill", ["BOOM"])
    monkeypatch.setenv("VISOR_TEST_FAULT", "serve:marker=BOOM:at=sample")
    with pytest.raises(ValueError, match="at=prefill|decode"):
        serve_fault()
    monkeypatch.setenv("VISOR_TEST_FAULT", "train:rank=0:step=1")
    assert serve_fault() is None
