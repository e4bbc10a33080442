"""Driving ``transformers``' Qwen2 decoder layers in VISOR's three modes.

VISOR never re-implements a decoder layer: it calls the layer's own modules
(``input_layernorm``, ``q/k/v/o_proj``, ``post_attention_layernorm``, ``mlp``)
and ``transformers``' rotary helpers, but chooses which tokens are queries and
which are keys. A layer step is split so every mode composes from the same pieces:

* :func:`project` — norm + q/k/v projections + RoPE for a set of tokens
  (:func:`project_visual_kv`: keys/values only, for the many visual tokens of a C layer);
* :func:`layer_attend` — the layer's attention of given queries over given keys/values;
* :func:`finish` — ``o_proj``, residual, then the MLP block.

Shapes: hidden ``[B, n, D]``; queries ``[B, H, n, d]``; keys/values
``[B, Hkv, m, d]``. An attention *mask* is None (every key visible),
:data:`CAUSAL` (no mask tensor: the flash kernel can run) or, only where the
structure does not allow one of those, a boolean tensor ``[B, 1, n, m]`` (True =
may attend) — see :mod:`visor_model.attention_layout`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention.bias import CausalBias, causal_lower_right
from transformers.models.qwen2.modeling_qwen2 import Qwen2RMSNorm, repeat_kv, rotate_half

_SDPA_HAS_GQA = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2]) >= (2, 5)

PositionEmbedding = tuple[torch.Tensor, torch.Tensor]  # (cos, sin), each [B, n, d]


class _Causal:
    """Causal attention aligned to the lower right: of ``n`` queries over ``m`` keys, query ``i`` sees keys
    ``j ≤ i + m - n`` (the queries are the last ``n`` tokens of the key sequence). ``n == m`` is plain
    ``is_causal``; otherwise a GPU runs it as :func:`~torch.nn.attention.bias.causal_lower_right` (flash
    kernel) and a CPU with a ``[n, m]`` mask over these queries only."""

    def __repr__(self) -> str:
        return "CAUSAL"


CAUSAL = _Causal()
Mask = torch.Tensor | _Causal | None
Attend = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, Mask], torch.Tensor]


def apply_rope(x: torch.Tensor, pos_emb: PositionEmbedding) -> torch.Tensor:
    """Rotary embedding of ``x`` ``[B, h, n, d]`` (the formula of ``apply_rotary_pos_emb``)."""
    cos, sin = (t.unsqueeze(1) for t in pos_emb)
    return x * cos + rotate_half(x) * sin


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Mask, scale: float, dropout: float = 0.0
) -> torch.Tensor:
    """Scaled dot-product attention with grouped K/V; returns ``[B, n, H*d]``.

    Grouped K/V (``H = g·Hkv``) run without copying K/V: with no mask tensor through SDPA's ``enable_gqa``;
    under a boolean mask — where a GPU would leave the fused kernels for the math kernel with
    ``enable_gqa`` — the ``g`` query heads of each K/V head are folded into the query axis
    (``[B, Hkv, g·n, d]``, the mask repeated per head), which is plain multi-head attention.
    """
    n, m = q.shape[2], k.shape[2]
    kwargs = {}
    if mask is CAUSAL:
        if n == m:
            mask, kwargs["is_causal"] = None, True
        elif q.is_cuda:
            mask = causal_lower_right(n, m)
        else:
            mask = torch.ones(n, m, dtype=torch.bool, device=q.device).tril(m - n)
    groups = q.shape[1] // k.shape[1]
    if groups > 1 and isinstance(mask, torch.Tensor) and not isinstance(mask, CausalBias):
        batch, heads, _, dim = q.shape
        folded_q = q.reshape(batch, k.shape[1], groups * n, dim)  # head h = kv head h // g, group h % g
        folded_mask = mask[..., None, :, :].expand(*mask.shape[:-2], groups, n, m).reshape(
            *mask.shape[:-2], groups * n, m
        )
        out = F.scaled_dot_product_attention(folded_q, k, v, attn_mask=folded_mask, dropout_p=dropout, scale=scale)
        return out.view(batch, heads, n, -1).transpose(1, 2).flatten(2)
    if groups > 1 and not _SDPA_HAS_GQA:
        k, v = repeat_kv(k, groups), repeat_kv(v, groups)
    elif groups > 1:
        kwargs["enable_gqa"] = True
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, scale=scale, **kwargs)
    return out.transpose(1, 2).flatten(2)


def attention_over_parts(
    q: torch.Tensor, text: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None, parts: list, scale: float
) -> torch.Tensor:
    """One query per row ``q [B, H, 1, d]`` over keys held in pieces: ``text = (K, V, valid)`` over every row
    (``[B, Hkv, m, d]``, ``valid [B, m]``; or None) and visual parts (:class:`~visor_model.cache.VisualPart`:
    rows ``index``, ``keys``/``values`` ``[b, Hkv, n, d]``, all valid). Each piece is attended on its own and
    the pieces are merged by their log-sum-exp — exactly one softmax over all of a row's keys, without
    concatenating them. A row with no key gets zeros. Text alone (a layer with no visual part) is one SDPA
    call. Returns ``[B, 1, H*d]``.

    The ``g`` query heads of a K/V head are folded (``[B, Hkv, g, d]``), so grouped K/V are read once; the
    scores and the running sums are float32.
    """
    if not parts and text is not None:  # text keys alone (every T layer; a row's new token is always valid)
        keys, values, valid = text
        return attention(q, keys, values, valid[:, None, None, :], scale)
    batch, heads, _, dim = q.shape
    kv_heads = (text[0] if text is not None else parts[0].keys).shape[1]
    folded = q.reshape(batch, kv_heads, heads // kv_heads, dim).float()
    best = folded.new_full((batch, kv_heads, heads // kv_heads, 1), float("-inf"))
    total = torch.zeros_like(best)
    acc: torch.Tensor | None = None
    pieces = ([(None, text[0], text[1], text[2])] if text is not None else []) + [
        (p.index, p.keys, p.values, None) for p in parts
    ]
    for rows, keys, values, valid in pieces:
        query = folded if rows is None else folded.index_select(0, rows)
        scores = torch.matmul(query, keys.float().transpose(-1, -2)) * scale  # [b, Hkv, g, n]
        if valid is not None:
            scores = scores.masked_fill(~valid[:, None, None, :], float("-inf"))
        if acc is None:
            acc = folded.new_zeros(batch, kv_heads, heads // kv_heads, values.shape[-1])
        old = (best, total, acc) if rows is None else tuple(t.index_select(0, rows) for t in (best, total, acc))
        new_best = torch.maximum(old[0], scores.amax(-1, keepdim=True))
        shift = new_best.masked_fill(new_best == float("-inf"), 0.0)
        weights = torch.exp(scores - shift)
        keep = torch.exp(old[0] - shift)
        new = (new_best, old[1] * keep + weights.sum(-1, keepdim=True),
               old[2] * keep + torch.matmul(weights, values.float()))
        if rows is None:
            best, total, acc = new
        else:
            best, total, acc = (t.index_copy(0, rows, n) for t, n in zip((best, total, acc), new, strict=True))
    out = acc / total.clamp(min=torch.finfo(total.dtype).tiny)  # zero where no key: acc is 0 there
    return out.to(q.dtype).reshape(batch, heads, -1).unsqueeze(1).flatten(2)


def attention_or_zero(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.BoolTensor, scale: float
) -> torch.Tensor:
    """:func:`attention` under a boolean ``mask``; a query with no visible key gets a zero output."""
    has_key = mask.any(-1, keepdim=True)  # [B, 1, n, 1]
    out = attention(q, k, v, mask | ~has_key, scale)
    return out * has_key[:, 0].to(out.dtype)


def _heads(x: torch.Tensor, head_dim: int) -> torch.Tensor:
    return x.view(*x.shape[:-1], x.shape[-1] // head_dim, head_dim).transpose(1, 2)


def project(
    layer: nn.Module, hidden: torch.Tensor, pos_emb: PositionEmbedding, queries: bool = True
) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """Norm + projections + RoPE of ``hidden`` for decoder ``layer``: ``(q | None, k, v)``."""
    attn = layer.self_attn
    x = layer.input_layernorm(hidden)
    k = apply_rope(_heads(attn.k_proj(x), attn.head_dim), pos_emb)
    v = _heads(attn.v_proj(x), attn.head_dim)
    q = apply_rope(_heads(attn.q_proj(x), attn.head_dim), pos_emb) if queries else None
    return q, k, v


def project_visual_kv(
    layer: nn.Module, hidden: torch.Tensor, inv_rms: torch.Tensor, pos_emb: PositionEmbedding
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys and values of many tokens that are never queries: :func:`project` with ``queries=False``.

    The RMSNorm is folded into the projection — ``proj(w ⊙ x · r) = r · (x (W ⊙ w)ᵀ) + b`` with
    ``r = inv_rms`` per token ``[B, n, 1]`` — so the ``[B, n, D]`` normalised copy is never written:
    one matmul over the raw hidden states, then a scale of its ``[B, n, 2·Hkv·d]`` output.
    """
    attn, norm = layer.self_attn, layer.input_layernorm
    weight = torch.cat([attn.k_proj.weight, attn.v_proj.weight]) * norm.weight
    kv, scale = F.linear(hidden, weight), inv_rms.to(hidden.dtype)
    if attn.k_proj.bias is None:
        kv = kv * scale
    else:
        kv = torch.addcmul(torch.cat([attn.k_proj.bias, attn.v_proj.bias]), kv, scale)
    k, v = kv.chunk(2, dim=-1)
    return apply_rope(_heads(k, attn.head_dim), pos_emb), _heads(v, attn.head_dim)


def layer_attend(layer: nn.Module) -> Attend:
    """``attend(q, k, v, mask) -> [B, n, H*d]`` with ``layer``'s scale (and its dropout while training)."""
    attn = layer.self_attn
    dropout = attn.attention_dropout if layer.training else 0.0
    return lambda q, k, v, mask: attention(q, k, v, mask, attn.scaling, dropout)


def finish(layer: nn.Module, hidden: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
    """``o_proj`` of the attention output ``[B, n, H*d]``, residual, MLP block. Returns new ``hidden``."""
    hidden = hidden + layer.self_attn.o_proj(attended)
    return hidden + layer.mlp(layer.post_attention_layernorm(hidden))


class GatedCrossAttention(nn.Module):
    """The ``gated`` cross-attention sublayer run before a C layer (docs/DESIGN.md §3.3).

    ``h_t ← h_t + tanh(g) · o_proj(Attn(q_proj(norm(h_t)), k/v_proj(cpe(norm(h_v)))))``

    No rotary embedding; the visual keys/values see positions through a
    conditional positional encoding ``x + DWConv1d_k(x)`` along the visual
    sequence (initialised to zero, i.e. identity). The gate ``g`` starts at 0,
    so a freshly converted model computes exactly the base model. The causal
    rule still applies: a text query sees only visual tokens at earlier positions.
    """

    def __init__(self, hidden_size: int, num_heads: int, num_kv_heads: int, head_dim: int, eps: float, kernel: int):
        super().__init__()
        self.head_dim = head_dim
        self.scaling = head_dim**-0.5
        self.norm = Qwen2RMSNorm(hidden_size, eps=eps)
        self.q_proj = nn.Linear(hidden_size, num_heads * head_dim, bias=True)
        self.k_proj = nn.Linear(hidden_size, num_kv_heads * head_dim, bias=True)
        self.v_proj = nn.Linear(hidden_size, num_kv_heads * head_dim, bias=True)
        self.o_proj = nn.Linear(num_heads * head_dim, hidden_size, bias=False)
        self.cpe = nn.Conv1d(hidden_size, hidden_size, kernel, padding=kernel // 2, groups=hidden_size)
        self.gate = nn.Parameter(torch.zeros(1))
        nn.init.zeros_(self.cpe.weight)
        nn.init.zeros_(self.cpe.bias)

    @torch.no_grad()
    def copy_from(self, layer: nn.Module) -> None:
        """Initialise norm and q/k/v/o from a decoder layer's own attention."""
        attn = layer.self_attn
        self.norm.weight.copy_(layer.input_layernorm.weight)
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            getattr(self, name).load_state_dict(getattr(attn, name).state_dict())

    def visual_kv(self, h_v: torch.Tensor, valid_v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys/values ``[B, Hkv, Nv, d]`` of the visual stream (padding zeroed before the conv)."""
        x = self.norm(h_v) * valid_v[..., None].to(h_v.dtype)
        x = x + self.cpe(x.transpose(1, 2)).transpose(1, 2)
        return _heads(self.k_proj(x), self.head_dim), _heads(self.v_proj(x), self.head_dim)

    def query(self, h_t: torch.Tensor) -> torch.Tensor:
        """Queries ``[B, H, Tt, d]`` of the text tokens."""
        return _heads(self.q_proj(self.norm(h_t)), self.head_dim)

    def update(self, h_t: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
        """``h_t + tanh(g) · o_proj(attended)``, ``attended`` ``[B, Tt, H*d]`` (zero rows: no update)."""
        return h_t + torch.tanh(self.gate) * self.o_proj(attended)
