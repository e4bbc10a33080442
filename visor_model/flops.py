"""Analytic FLOPs of a VISOR forward pass and of the LLaVA-OneVision baseline.

Counted as ``torch.utils.flop_counter.FlopCounterMode`` counts a real forward:
2 FLOPs per multiply-add of every matmul, linear and convolution, and attention
as the kernels compute it — ``2·h·s_q·s_k·(d + d_v)`` for the full query×key
rectangle passed, with no causal discount. Normalisations, activations, rotary
embeddings, interpolation and pooling are elementwise and not counted.

Per sample, for ``Nt`` text tokens (the text stream: prompt and answer, no
padding), ``Nv`` visual tokens (after any token reduction) and ``tiles`` image
tiles (base tile included):

* ``vision`` — SigLIP on every tile (patch-embedding convolution + every encoder layer);
* ``projector`` — the two projector linears on every tile's patches;
* ``language`` — the decoder layers in what they run under the budget
  (:meth:`~visor_model.plan.LayerPlan.run_modes`), plus ``lm_head`` on the text
  tokens (VISOR computes logits for text tokens only; the baseline is counted the
  same way, so the comparison is fair). The baseline is LLaVA-OneVision as
  ``transformers`` runs it: every layer over every token.

Mode costs (``P`` = per-token projection + MLP cost, ``Pkv`` its K/V part,
``a = 4·H·d`` attention cost per query-key pair):
T ``Nt·P + a·Nt²``; S ``(Nt+Nv)·P + a·(Nt+Nv)²``; joint C and ``s`` (the text side
of an S layer whose visual update nothing reads) ``Nt·P + Nv·Pkv + a·Nt·(Nt+Nv)``;
gated C = T + ``Nt·(Pq+Po) + Nv·Pkv + 2·Nv·D·k + a·Nt·Nv``.

The tile count of an image comes from its size by the processor's anyres rule
(:func:`visor_model.anyres.image_tokens`); there is no estimate from a token count.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from .config import VisorConfig
from .plan import LayerPlan, RunMode

KEYS = ("vision", "projector", "language", "total")


def _head_dim(text) -> int:
    return getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads


def tokens_per_tile(config: VisorConfig) -> int:
    """Visual tokens one tile contributes to the language model (after reduction)."""
    vision = config.vision_config
    side = vision.image_size // vision.patch_size
    return math.ceil(side / config.token_reduction) ** 2


def vision_flops(config: VisorConfig, num_tiles: int) -> dict[str, float]:
    """SigLIP and projector FLOPs for ``num_tiles`` tiles."""
    vision, text = config.vision_config, config.text_config
    patches = (vision.image_size // vision.patch_size) ** 2
    dim, inter = vision.hidden_size, vision.intermediate_size
    embed = 2 * patches * dim * vision.num_channels * vision.patch_size**2
    per_layer = patches * (8 * dim * dim + 4 * dim * inter) + 4 * patches * patches * dim
    tower = num_tiles * (embed + vision.num_hidden_layers * per_layer)
    projector = num_tiles * patches * 2 * (dim + text.hidden_size) * text.hidden_size
    return {"vision": float(tower), "projector": float(projector)}


def _layer_costs(config: VisorConfig) -> dict[str, float]:
    text = config.text_config
    d, hd = text.hidden_size, _head_dim(text)
    q = 2 * d * text.num_attention_heads * hd
    kv = 4 * d * text.num_key_value_heads * hd
    return {
        "q": q,
        "kv": kv,
        "o": q,
        "mlp": 6 * d * text.intermediate_size,
        "pair": 4 * text.num_attention_heads * hd,
        "cpe": 2 * d * config.cpe_kernel_size,
    }


def _modes_flops(config: VisorConfig, modes: Sequence[RunMode], num_visual_tokens: int, num_text_tokens: int) -> float:
    """Decoder layers running ``modes`` (one per layer) plus ``lm_head`` on the text tokens."""
    c = _layer_costs(config)
    per_token = c["q"] + c["kv"] + c["o"] + c["mlp"]
    nt, nv = num_text_tokens, num_visual_tokens
    total = 0.0
    for mode in modes:
        if mode == "S":
            total += (nt + nv) * per_token + c["pair"] * (nt + nv) ** 2
            continue
        total += nt * per_token + c["pair"] * nt * nt
        if not nv or mode == "T":
            continue
        if mode == "s" or config.cross_attention == "joint":
            total += nv * c["kv"] + c["pair"] * nt * nv
        else:
            total += nt * (c["q"] + c["o"]) + nv * c["kv"] + nv * c["cpe"] + c["pair"] * nt * nv
    return total + 2.0 * nt * config.text_config.hidden_size * config.text_config.vocab_size


def language_flops(
    config: VisorConfig, budget: int, num_visual_tokens: int, num_text_tokens: int, plan: LayerPlan | None = None
) -> float:
    """Decoder layers as they run under ``budget`` plus ``lm_head`` on the text tokens."""
    plan = plan or config.layer_plan
    return _modes_flops(config, plan.run_modes(budget), num_visual_tokens, num_text_tokens)


def visor_flops(
    config: VisorConfig,
    budget: int,
    num_visual_tokens: int,
    num_text_tokens: int,
    num_tiles: int,
    plan: LayerPlan | None = None,
) -> dict[str, float]:
    """FLOPs of one sample's forward under ``budget``: ``{vision, projector, language, total}``; ``num_tiles``
    is the sample's tile count (base tile included; 0 without an image)."""
    plan = plan or config.layer_plan
    plan.check_budget(budget)
    out = vision_flops(config, num_tiles)
    out["language"] = language_flops(config, budget, num_visual_tokens, num_text_tokens, plan)
    out["total"] = out["vision"] + out["projector"] + out["language"]
    return out


def baseline_flops(
    config: VisorConfig, num_visual_tokens: int, num_text_tokens: int, num_tiles: int
) -> dict[str, float]:
    """FLOPs of the LLaVA-OneVision forward as ``transformers`` runs it (every layer over visual + text tokens)."""
    out = vision_flops(config, num_tiles)
    modes: list[RunMode] = ["S"] * config.text_config.num_hidden_layers
    out["language"] = _modes_flops(config, modes, num_visual_tokens, num_text_tokens)
    out["total"] = out["vision"] + out["projector"] + out["language"]
    return out


def flops_table(
    config: VisorConfig, num_visual_tokens: int, num_text_tokens: int, num_tiles: int
) -> dict:
    """Baseline and every budget, with savings (baseline / budget), as printed by ``visor flops --json``."""
    plan = config.layer_plan
    base = baseline_flops(config, num_visual_tokens, num_text_tokens, num_tiles)
    rows = []
    for b in range(plan.num_budgets):
        f = visor_flops(config, b, num_visual_tokens, num_text_tokens, num_tiles)
        rows.append(
            {
                "budget": b,
                "sa_layers": list(plan.budgets[b]),
                "text_side_only": [i for i, m in enumerate(plan.run_modes(b)) if m == "s"],
                "language": f["language"],
                "total": f["total"],
                "saving_language": base["language"] / f["language"],
                "saving_total": base["total"] / f["total"],
            }
        )
    return {
        "config": {
            "num_visual_tokens": num_visual_tokens,
            "num_text_tokens": num_text_tokens,
            "num_tiles": num_tiles,
            "cross_attention": config.cross_attention,
            "cross_layers": list(plan.cross_layers),
        },
        "baseline": base,
        "budgets": rows,
    }
