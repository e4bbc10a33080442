"""The budget policy: a small MLP predicting, per budget, whether it is sufficient.

Input (docs/DESIGN.md §3.7), taken before the first budget-dependent layer
(``LayerPlan.policy_layer``), where every budget has computed the same thing:

* the hidden state of the last valid text token (the end of the prompt), and
* the mean of the visual stream over its valid tokens (zeros for a text-only sample),

concatenated to ``[B, 2D]``. Output: one logit per budget ``[B, K+1]``;
``sigmoid(logit_b)`` is the predicted probability that budget ``b`` answers
correctly. :func:`choose_budget` runs the cheapest budget whose probability is
≥ τ, or the largest budget when none is.
"""

from __future__ import annotations

import torch
from torch import nn


class BudgetPolicy(nn.Module):
    def __init__(self, hidden_size: int, policy_hidden_size: int, num_budgets: int):
        super().__init__()
        self.norm = nn.LayerNorm(2 * hidden_size)
        self.mlp = nn.Sequential(
            nn.Linear(2 * hidden_size, policy_hidden_size),
            nn.GELU(),
            nn.Linear(policy_hidden_size, num_budgets),
        )

    @staticmethod
    def features(
        h_t: torch.Tensor, text_valid: torch.Tensor, h_v: torch.Tensor | None, visual_valid: torch.Tensor | None
    ) -> torch.Tensor:
        """``[B, 2D]`` policy input from the streams ``h_t [B, Tt, D]`` and ``h_v [B, Nv, D]``."""
        last = last_valid_index(text_valid)
        text = h_t[torch.arange(h_t.shape[0], device=h_t.device), last]
        if h_v is None or h_v.shape[1] == 0:
            return torch.cat([text, torch.zeros_like(text)], dim=-1)
        weights = visual_valid.to(h_v.dtype)[..., None]
        pooled = (h_v * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        return torch.cat([text, pooled], dim=-1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.norm(features.to(self.norm.weight.dtype)))


def choose_budget(logits: torch.Tensor, tau: float) -> torch.LongTensor:
    """Cheapest budget with ``sigmoid(logit) >= tau`` per row, else the largest. ``[B, K+1] -> [B]``."""
    sufficient = torch.sigmoid(logits.float()) >= tau
    num_budgets = logits.shape[-1]
    first = torch.where(sufficient, torch.arange(num_budgets, device=logits.device), num_budgets).amin(-1)
    return first.clamp(max=num_budgets - 1)


def last_valid_index(valid: torch.Tensor) -> torch.LongTensor:
    """Index of the last True entry of each row of ``valid [B, T]`` (0 for an empty row)."""
    positions = torch.arange(valid.shape[1], device=valid.device)
    return (valid.long() * (positions + 1)).argmax(-1) * valid.any(-1)
