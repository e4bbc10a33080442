"""Layer plans: which decoder layers run in which mode under which budget.

A VISOR decoder layer runs in one of three modes (docs/DESIGN.md §3.3):

* ``T`` (text-only): text queries over text keys; the visual stream is untouched.
* ``C`` (cross): text queries also read the visual tokens' keys/values; only the
  text stream is updated.
* ``S`` (self): the unchanged decoder layer over visual + text tokens; both
  streams are updated.

What *runs* differs in one place (:meth:`LayerPlan.run_modes`): an S layer after which no
layer reads the visual stream — the last layer of a budget that touches the image, when it
is an S layer — would update visual tokens nobody reads. It runs as ``s``: its text queries
read ``[visual ; text]`` through the layer's own attention (exactly the text side of S),
and the visual update is skipped. The text stream, hence every logit, is unchanged.

A :class:`LayerPlan` gives each layer a *base* mode (``C`` for the layers listed
in ``cross_layers``, ``T`` for the others) and a list of nested budgets
``S_0 ⊂ S_1 ⊂ … ⊂ S_K``. Budget ``b`` runs the layers of ``S_b`` in mode ``S``
and every other layer in its base mode. Budgets are ordered by cost, so "the
cheapest budget" is always the smallest index.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

Mode = Literal["T", "C", "S"]
RunMode = Literal["T", "C", "S", "s"]  # "s": an S layer whose visual update nothing reads (text side only)


@dataclass(frozen=True)
class LayerPlan:
    """Base modes and nested self-attention budgets for ``num_layers`` decoder layers.

    Invariants (checked in ``__post_init__``): every index lies in
    ``[0, num_layers)``; each budget is sorted and duplicate-free; budgets are
    nested (``S_b ⊆ S_{b+1}``) and at least one budget exists.
    """

    num_layers: int
    cross_layers: tuple[int, ...]
    budgets: tuple[tuple[int, ...], ...]

    def __post_init__(self) -> None:
        if self.num_layers < 1:
            raise ValueError(f"LayerPlan.num_layers must be >= 1, got {self.num_layers}")
        object.__setattr__(self, "cross_layers", tuple(sorted(set(int(i) for i in self.cross_layers))))
        object.__setattr__(self, "budgets", tuple(tuple(sorted(set(int(i) for i in b))) for b in self.budgets))
        if not self.budgets:
            raise ValueError("LayerPlan needs at least one budget")
        for name, layers in [("cross_layers", self.cross_layers)] + [
            (f"budgets[{b}]", layers) for b, layers in enumerate(self.budgets)
        ]:
            bad = [i for i in layers if not 0 <= i < self.num_layers]
            if bad:
                raise ValueError(
                    f"LayerPlan.{name} names layers {bad} that do not exist (the model has {self.num_layers} "
                    f"decoder layers, indices 0..{self.num_layers - 1})"
                )
        for b in range(1, len(self.budgets)):
            if not set(self.budgets[b - 1]) <= set(self.budgets[b]):
                raise ValueError(
                    f"LayerPlan budgets must be nested: budgets[{b - 1}]={list(self.budgets[b - 1])} is not a "
                    f"subset of budgets[{b}]={list(self.budgets[b])}"
                )

    # ------------------------------------------------------------------ queries
    @property
    def num_budgets(self) -> int:
        return len(self.budgets)

    @property
    def max_budget(self) -> int:
        return len(self.budgets) - 1

    def check_budget(self, budget: int) -> int:
        """Return ``budget`` as an int, or raise a ``ValueError`` naming the valid range."""
        if not 0 <= int(budget) <= self.max_budget:
            raise ValueError(f"budget {budget} is out of range: this plan has budgets 0..{self.max_budget}")
        return int(budget)

    def mode(self, layer: int, budget: int) -> Mode:
        """Mode of ``layer`` under ``budget``: ``S`` if in ``S_budget``, else its base mode."""
        if layer in self.budgets[self.check_budget(budget)]:
            return "S"
        return "C" if layer in self.cross_layers else "T"

    def modes(self, budget: int) -> list[Mode]:
        return [self.mode(i, budget) for i in range(self.num_layers)]

    def run_modes(self, budget: int) -> list[RunMode]:
        """What each layer runs under ``budget``: :meth:`modes`, except that an S layer with no later layer
        reading the visual stream (mode C or S) runs as ``s`` — the text side of S alone.

        Under ``budget="auto"`` the policy reads the visual stream at :attr:`policy_layer`, so an S layer
        before it keeps its update (with two or more budgets; a one-budget plan has no policy).
        """
        modes: list[RunMode] = list(self.modes(budget))
        readers = [i for i, m in enumerate(modes) if m != "T"]
        if readers and modes[readers[-1]] == "S":
            last = readers[-1]
            if self.num_budgets == 1 or last >= self.policy_layer:
                modes[last] = "s"
        return modes

    def visual_layers(self, budget: int) -> list[int]:
        """Layers that read visual keys/values under ``budget`` (``C ∪ S_b``)."""
        return [i for i, m in enumerate(self.modes(budget)) if m != "T"]

    @property
    def policy_layer(self) -> int:
        """First layer whose mode depends on the budget (``min(S_K \\ S_0)``).

        Every budget computes the same thing before this layer, so the policy
        reads its features there and the forward pass then continues with the
        budget it picked. Equals ``num_layers`` when the plan has one budget.
        """
        varying = set(self.budgets[-1]) - set(self.budgets[0])
        return min(varying) if varying else self.num_layers

    def check_policy_ready(self) -> None:
        """Raise unless a policy can run: ≥2 budgets and a C layer before :attr:`policy_layer`."""
        if self.num_budgets < 2:
            raise ValueError("budget='auto' needs a plan with at least two budgets")
        if not any(i < self.policy_layer for i in self.cross_layers) and not any(
            i < self.policy_layer for i in self.budgets[0]
        ):
            raise ValueError(
                f"budget='auto' needs a cross-attention (C) or S_0 layer before layer {self.policy_layer}, "
                "the first budget-dependent layer, so that the policy's features have seen the image"
            )

    def describe(self) -> str:
        """A text picture of what runs: one row per budget, one column per layer (T/C/S/s, :meth:`run_modes`)."""
        header = "budget | " + " ".join(f"{i % 10}" for i in range(self.num_layers))
        rows = [header, "-" * len(header)]
        for b in range(self.num_budgets):
            rows.append(f"{b:>6} | " + " ".join(self.run_modes(b)))
        if any("s" in self.run_modes(b) for b in range(self.num_budgets)):
            rows.append("(s: an S layer after which nothing reads the visual tokens: only its text side runs)")
        return "\n".join(rows)

    # ------------------------------------------------------------ constructors
    @classmethod
    def full_attention(cls, num_layers: int) -> LayerPlan:
        """Every layer in mode S under the single budget 0: exactly LLaVA-OneVision."""
        return cls(num_layers=num_layers, cross_layers=(), budgets=(tuple(range(num_layers)),))

    @classmethod
    def default(cls, num_layers: int, num_budgets: int = 4) -> LayerPlan:
        """The paper-style plan: ``|C| = |S_K| = max(1, L // 3)``, spread evenly.

        Layer ``3i+1``-style slots are C layers and the layer right after each
        is an S candidate, so the first S candidate always has a C layer before
        it (the policy's features have seen the image). Budgets grow from
        ``S_0 = ∅`` to ``S_K`` = all candidates; each larger budget adds the
        candidate farthest from those already chosen, so every budget's S
        layers stay spread through the depth.
        """
        if num_layers < 2:
            raise ValueError("LayerPlan.default needs at least 2 decoder layers")
        n = max(1, num_layers // 3)
        spacing = num_layers / n
        cross = [int(i * spacing + (spacing - 1) / 2) for i in range(n)]
        candidates = [c + 1 for c in cross]
        order = _farthest_point_order(candidates)
        num_budgets = max(2, min(num_budgets, n + 1))
        sizes = sorted({round(k * n / (num_budgets - 1)) for k in range(num_budgets)})
        budgets = tuple(tuple(sorted(order[:s])) for s in sizes)
        return cls(num_layers=num_layers, cross_layers=tuple(cross), budgets=budgets)

    # ---------------------------------------------------------- serialisation
    def to_dict(self) -> dict[str, Any]:
        return {
            "num_layers": self.num_layers,
            "cross_layers": list(self.cross_layers),
            "budgets": [list(b) for b in self.budgets],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LayerPlan:
        unknown = set(data) - {"num_layers", "cross_layers", "budgets"}
        if unknown:
            raise ValueError(f"unknown LayerPlan fields {sorted(unknown)}")
        return cls(
            num_layers=int(data["num_layers"]),
            cross_layers=tuple(data.get("cross_layers", ())),
            budgets=tuple(tuple(b) for b in data["budgets"]),
        )


def _farthest_point_order(candidates: Sequence[int]) -> list[int]:
    """Order ``candidates`` so that every prefix is spread out: start with the
    first, then repeatedly take the one farthest from those chosen (ties: lowest)."""
    remaining = list(candidates)
    chosen = [remaining.pop(0)]
    while remaining:
        best = max(remaining, key=lambda c: (min(abs(c - x) for x in chosen), -c))
        remaining.remove(best)
        chosen.append(best)
    return chosen
