"""Driving ``transformers``' Qwen2 decoder layers in VISOR's three modes.

VISOR never re-implements a decoder layer: it calls the layer's own modules
(``input_layernorm``, ``q/k/v/o_proj``, ``post_attention_layernorm``, ``mlp``)
and ``transformers``' rotary helpers, but chooses which tokens are queries and
which are keys. A layer step is split in two so every mode composes from the
same pieces:

* :func:`project` — norm + q/k/v projections + RoPE for a set of tokens;
* :func:`finish` — attention of those queries over given keys/values, ``o_proj``,
  residual, then the MLP block.

Shapes: hidden ``[B, n, D]``; queries ``[B, H, n, d]``; keys/values
``[B, Hkv, m, d]``; boolean masks ``[B, 1, n, m]`` (True = may attend).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.qwen2.modeling_qwen2 import Qwen2RMSNorm, repeat_kv, rotate_half

_SDPA_HAS_GQA = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2]) >= (2, 5)

PositionEmbedding = tuple[torch.Tensor, torch.Tensor]  # (cos, sin), each [B, n, d]


def apply_rope(x: torch.Tensor, pos_emb: PositionEmbedding) -> torch.Tensor:
    """Rotary embedding of ``x`` ``[B, h, n, d]`` (the formula of ``apply_rotary_pos_emb``)."""
    cos, sin = (t.unsqueeze(1) for t in pos_emb)
    return x * cos + rotate_half(x) * sin


def visibility(
    pos_q: torch.Tensor, valid_q: torch.Tensor, pos_k: torch.Tensor, valid_k: torch.Tensor
) -> torch.BoolTensor:
    """The one causal rule: key j is visible to query i iff pos(j) ≤ pos(i) and j is valid.

    Padding queries may also see padding keys at or before their position, so no
    row is empty (their outputs are never read). Returns ``[B, 1, n, m]``.
    """
    allowed = valid_k[:, None, :] | ~valid_q[:, :, None]
    return ((pos_k[:, None, :] <= pos_q[:, :, None]) & allowed)[:, None]


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.BoolTensor, scale: float, dropout: float = 0.0
) -> torch.Tensor:
    """Scaled dot-product attention with grouped K/V; returns ``[B, n, H*d]``."""
    groups = q.shape[1] // k.shape[1]
    if groups > 1 and not _SDPA_HAS_GQA:
        k, v = repeat_kv(k, groups), repeat_kv(v, groups)
    kwargs = {"enable_gqa": True} if groups > 1 and _SDPA_HAS_GQA else {}
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, scale=scale, **kwargs)
    return out.transpose(1, 2).flatten(2)


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


def finish(
    layer: nn.Module,
    hidden: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.BoolTensor,
) -> torch.Tensor:
    """Attention of ``q`` over ``(k, v)``, ``o_proj``, residual, MLP block. Returns new ``hidden``."""
    attn = layer.self_attn
    dropout = attn.attention_dropout if layer.training else 0.0
    hidden = hidden + attn.o_proj(attention(q, k, v, mask, attn.scaling, dropout))
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

    def forward(self, h_t: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.BoolTensor) -> torch.Tensor:
        """``mask`` ``[B, 1, Tt, Nv]``; text rows with no visible visual key get no update."""
        has_key = mask.any(-1, keepdim=True)  # [B, 1, Tt, 1]
        q = _heads(self.q_proj(self.norm(h_t)), self.head_dim)
        out = attention(q, k, v, mask | ~has_key, self.scaling)
        out = out * has_key[:, 0].to(out.dtype)
        return h_t + torch.tanh(self.gate) * self.o_proj(out)
