"""``visor promote``: move the ``champion`` alias to the ``challenger`` when the rule says it is no worse.

Both versions are compared on the evaluation of the same data (the
challenger's ``eval/latest_data_version``; tags ``eval/<data version>/accuracy``
and ``…/mean_flops`` written by ``visor evaluate``). The rule: promote when

    challenger accuracy ≥ champion accuracy − accuracy_tolerance   and
    challenger mean FLOPs ≤ champion mean FLOPs × (1 + flops_tolerance).

The first evaluated model becomes champion. The decision, the reason and the
numbers are recorded in the challenger's tags (``promotion.*``); asking again
about the same challenger, champion and data under the same rule returns the
recorded decision and writes nothing. A challenger without an evaluation is refused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from mlflow.tracking import MlflowClient

from jobs.registry.config import PromoteConfig, PromotionRule
from jobs.registry.tracking import alias_version
from jobs.sections import CHALLENGER, CHAMPION, REGISTERED_MODEL


class PromotionError(RuntimeError):
    """Promotion cannot be decided (no challenger, no evaluation); the message says what to do."""


@dataclass
class Decision:
    promoted: bool
    reason: str
    challenger: str
    champion: str | None
    data_version: str | None
    numbers: dict
    recorded: bool = True  # False for a dry run or a decision read back unchanged


def _evaluation(version, data_version: str) -> dict | None:
    tags = version.tags
    prefix = f"eval/{data_version}"
    if f"{prefix}/accuracy" not in tags:
        return None
    return {"accuracy": float(tags[f"{prefix}/accuracy"]), "mean_flops": float(tags[f"{prefix}/mean_flops"])}


def decide(challenger: dict, champion: dict, rule: PromotionRule) -> tuple[bool, str]:
    """Apply the rule to two ``{"accuracy", "mean_flops"}`` evaluations."""
    accuracy_ok = challenger["accuracy"] >= champion["accuracy"] - rule.accuracy_tolerance - 1e-12
    flops_ok = challenger["mean_flops"] <= champion["mean_flops"] * (1 + rule.flops_tolerance) + 1e-6
    detail = (f"accuracy {challenger['accuracy']:.4f} vs {champion['accuracy']:.4f} "
              f"(tolerance {rule.accuracy_tolerance}), mean FLOPs {challenger['mean_flops']:.4g} vs "
              f"{champion['mean_flops']:.4g} (tolerance {rule.flops_tolerance:.0%})")
    if accuracy_ok and flops_ok:
        return True, f"no less accurate at no more compute: {detail}"
    problems = [p for p, ok in (("less accurate", accuracy_ok), ("more compute", flops_ok)) if not ok]
    return False, f"{' and '.join(problems)}: {detail}"


def promote(tracking_uri: str, name: str = REGISTERED_MODEL, rule: PromotionRule | None = None,
            dry_run: bool = False) -> Decision:
    """Decide on the current challenger of ``name`` and, unless ``dry_run``, act on it."""
    rule = rule or PromotionRule()
    client = MlflowClient(tracking_uri)
    challenger = alias_version(client, name, CHALLENGER)
    if challenger is None:
        raise PromotionError(f"registered model {name!r} has no 'challenger' version to promote")
    data_version = challenger.tags.get("eval/latest_data_version")
    if data_version is None:
        raise PromotionError(
            f"{name} version {challenger.version} (challenger) has no evaluation; run "
            f"`visor evaluate --model models:/{name}/{challenger.version} --data …` first"
        )
    mine = _evaluation(challenger, data_version)
    champion = alias_version(client, name, CHAMPION)
    if champion is not None and str(champion.version) == str(challenger.version):
        return Decision(True, "the challenger is already the champion", str(challenger.version),
                        str(champion.version), data_version, {CHALLENGER: mine}, recorded=False)
    if champion is None:
        promoted, reason, numbers = True, "no champion yet: the first evaluated model becomes champion", {}
    else:
        theirs = _evaluation(champion, data_version)
        if theirs is None:
            raise PromotionError(
                f"champion {name} version {champion.version} has no evaluation on data version {data_version}; "
                f"run `visor evaluate --model models:/{name}/{champion.version}` on the same data first"
            )
        promoted, reason = decide(mine, theirs, rule)
        numbers = {CHAMPION: theirs}
    numbers[CHALLENGER] = mine
    numbers["rule"] = {"accuracy_tolerance": rule.accuracy_tolerance, "flops_tolerance": rule.flops_tolerance}
    against = str(champion.version) if champion is not None else "none"
    tags = challenger.tags
    same_rule = json.loads(tags.get("promotion.numbers", "{}")).get("rule") == numbers["rule"]
    if tags.get("promotion.compared_to") == against and tags.get("promotion.data_version") == data_version \
            and same_rule:
        return Decision(tags["promotion.decision"] == "promoted", tags["promotion.reason"], str(challenger.version),
                        None if champion is None else str(champion.version), data_version,
                        json.loads(tags["promotion.numbers"]), recorded=False)
    decision = Decision(promoted, reason, str(challenger.version),
                        None if champion is None else str(champion.version), data_version, numbers,
                        recorded=not dry_run)
    if dry_run:
        return decision
    for key, value in {"promotion.decision": "promoted" if promoted else "rejected", "promotion.reason": reason,
                       "promotion.compared_to": against, "promotion.data_version": data_version,
                       "promotion.numbers": json.dumps(numbers, sort_keys=True)}.items():
        client.set_model_version_tag(name, challenger.version, key, value)
    if promoted:
        client.set_registered_model_alias(name, CHAMPION, challenger.version)
        if champion is not None:
            client.set_model_version_tag(name, champion.version, "promotion.replaced_by", str(challenger.version))
    return decision


def run(config: PromoteConfig) -> Decision:
    """``visor promote``: :func:`promote` on ``config``'s registered model, in its tracking store."""
    from jobs.registry.tracking import tracking_uri

    return promote(tracking_uri(config.tracking_uri), config.registered_model, config.rule, config.dry_run)
