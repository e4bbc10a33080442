"""How each attention of one batch runs: by the structure of the token order, with no mask where it allows.

VISOR's one visibility rule (docs/DESIGN.md §3.2) is causal by position: key j is
visible to query i iff ``pos(j) ≤ pos(i)``. The streams (:mod:`visor_model.streams`)
keep each row's valid tokens first and in position order, padding after them, so:

* **text over text** (mode T) is plain causal attention in stream order —
  ``is_causal``, no mask, padded rows included (a valid query never reaches a
  padding slot, which all come after it);
* **every token over every token** (mode S) is plain causal in the *merged*
  order — both streams interleaved by position, valid tokens first — which costs
  one gather into that order and one back per S layer, linear in the tokens;
* **text over the image** (mode C): text token i sees the first ``c_i`` visual
  tokens (those at earlier positions) and the text up to itself. ``c_i`` is a step
  function — 0 before the image, ``Nv`` after it — so the text queries fall into
  *segments* of equal ``c``. When no row is padded and every row has the same
  segments (one prompt template, one image size), each segment is one attention
  call without a mask: its queries over ``[visual[:c] ; text[:end]]`` with
  causality aligned to the lower right (:data:`~visor_model.layers.CAUSAL`, which
  runs the flash kernel on a GPU) — and the gated sublayer needs no causal
  rule at all. Otherwise a boolean mask over the text rows only (``[B, 1, Tt, m]``,
  linear in the visual tokens) is built once per batch.

No ``[n, n]`` mask over the whole sequence is ever built. :class:`AttentionLayout`
also holds the batch's rotary embeddings per stream, and caches the visual tokens'
inverse RMS while the visual stream is unchanged (it changes only in S layers).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import nn

from .layers import CAUSAL, Attend, PositionEmbedding, attention, attention_or_zero
from .streams import Streams

Segment = tuple[int, int, int]  # text queries [start, end) that see the first `visible` visual tokens


@dataclass(frozen=True)
class RowSet:
    """A subset of a batch's rows: ``key`` on the host (row indices, sorted), ``index`` the same on the device."""

    key: tuple[int, ...]
    index: torch.LongTensor


def _take(x: torch.Tensor, index: torch.LongTensor, dim: int) -> torch.Tensor:
    """``x`` gathered along ``dim`` by ``index [B, N]`` (the index broadcast over the other trailing dims)."""
    shape = [index.shape[0]] + [1] * (x.dim() - 1)
    shape[dim] = index.shape[1]
    return x.gather(dim, index.view(shape).expand(*x.shape[:dim], index.shape[1], *x.shape[dim + 1 :]))


class AttentionLayout:
    """Attention structure of one batch (or a subset of its rows): orders, segments, fallback masks, RoPE."""

    def __init__(self, streams: Streams, pe_t: PositionEmbedding, pe_v: PositionEmbedding):
        self.streams = streams
        self.pe_t, self.pe_v = pe_t, pe_v
        self._lazy: dict[str, object] = {}
        self._subsets: dict[tuple[int, ...], AttentionLayout] = {}
        self._rms_source: torch.Tensor | None = None
        self._inv_rms: torch.Tensor | None = None

    @classmethod
    def build(cls, streams: Streams, rotary: nn.Module, like: torch.Tensor) -> AttentionLayout:
        """The layout of ``streams`` with rotary embeddings from ``rotary`` (in ``like``'s dtype)."""
        return cls(streams, rotary(like, streams.text_pos), rotary(like, streams.visual_pos))

    def select(self, row_set: RowSet | None) -> AttentionLayout:
        """The layout of a subset of rows (``None``: all rows); built once per subset."""
        if row_set is None:
            return self
        key, rows = row_set.key, row_set.index
        if key not in self._subsets:
            s = self.streams
            streams = Streams(*(getattr(s, f.name).index_select(0, rows) for f in fields(s)))
            pick = lambda pe: tuple(t.index_select(0, rows) for t in pe)  # noqa: E731
            self._subsets[key] = AttentionLayout(streams, pick(self.pe_t), pick(self.pe_v))
        return self._subsets[key]

    def _get(self, name: str, build):
        if name not in self._lazy:
            self._lazy[name] = build()
        return self._lazy[name]

    # ----------------------------------------------------------------- mode S
    @property
    def merged_order(self) -> tuple[torch.LongTensor, torch.LongTensor]:
        """``(order, inverse)``, each ``[B, Nv + Tt]``: ``cat([visual, text])[order]`` is position order with
        valid tokens first; ``merged[inverse]`` is back in ``cat([visual, text])`` order."""

        def build():
            s = self.streams
            pos = torch.cat([s.visual_pos, s.text_pos], 1)
            valid = torch.cat([s.visual_valid, s.text_valid], 1)
            after = pos.amax(1, keepdim=True) + 1 + torch.arange(pos.shape[1], device=pos.device)
            order = torch.argsort(torch.where(valid, pos, after), dim=1, stable=True)
            return order, torch.argsort(order, dim=1)

        return self._get("merged_order", build)

    def to_merged(self, h_v: torch.Tensor, h_t: torch.Tensor) -> torch.Tensor:
        """Visual ``[B, Nv, D]`` and text ``[B, Tt, D]`` as one sequence ``[B, Nv + Tt, D]`` in position order."""
        return _take(torch.cat([h_v, h_t], 1), self.merged_order[0], 1)

    def from_merged(self, merged: torch.Tensor, dim: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """Split a merged-order tensor (sequence along ``dim``) back into ``(visual, text)``."""
        back = _take(merged, self.merged_order[1], dim)
        return back.split([self.streams.visual_pos.shape[1], self.streams.text_pos.shape[1]], dim)

    @property
    def pe_merged(self) -> PositionEmbedding:
        """Rotary embeddings ``(cos, sin)`` of the merged sequence."""
        pairs = zip(self.pe_v, self.pe_t, strict=True)
        return self._get("pe_merged", lambda: tuple(self.to_merged(v, t) for v, t in pairs))

    # ----------------------------------------------------------------- mode C
    @property
    def segments(self) -> list[Segment] | None:
        """The text-query segments shared by every row, or None when rows are padded or differ."""

        def build():
            s = self.streams
            if not (bool(s.text_valid.all()) and bool(s.visual_valid.all())):
                return None
            visible = torch.searchsorted(s.visual_pos.contiguous(), s.text_pos.contiguous())  # [B, Tt]
            if not bool((visible == visible[:1]).all()):
                return None
            counts = visible[0].tolist()
            starts = [i for i in range(len(counts)) if i == 0 or counts[i] != counts[i - 1]]
            return [(a, b, counts[a]) for a, b in zip(starts, [*starts[1:], len(counts)], strict=True)]

        return self._get("segments", build)

    def _mask(self, name: str) -> torch.BoolTensor:
        """Fallback masks over the text rows: ``text_visual [B, 1, Tt, Nv]``, ``text_all [B, 1, Tt, Nv + Tt]``."""

        def build():
            s = self.streams
            visual = (s.visual_pos[:, None, :] < s.text_pos[:, :, None]) & s.visual_valid[:, None, :]
            if name == "text_visual":
                return visual[:, None]
            causal = torch.ones(s.text_pos.shape[1], s.text_pos.shape[1], dtype=torch.bool,
                                device=s.text_pos.device).tril()
            text = causal & (s.text_valid[:, None, :] | ~s.text_valid[:, :, None])  # padding rows never empty
            return torch.cat([visual, text], -1)[:, None]

        return self._get(name, build)

    def text_over_all(
        self, attend: Attend, q: torch.Tensor, kv_v: tuple[torch.Tensor, torch.Tensor],
        kv_t: tuple[torch.Tensor, torch.Tensor],
    ) -> torch.Tensor:
        """Text queries ``[B, H, Tt, d]`` over ``[visual ; text]`` keys/values (joint mode C): ``[B, Tt, H*d]``."""
        (k_v, v_v), (k_t, v_t) = kv_v, kv_t
        if self.segments is None:
            return attend(q, torch.cat([k_v, k_t], 2), torch.cat([v_v, v_t], 2), self._mask("text_all"))
        outs = []
        for start, end, visible in self.segments:
            if visible:
                k = torch.cat([k_v[:, :, :visible], k_t[:, :, :end]], 2)
                v = torch.cat([v_v[:, :, :visible], v_t[:, :, :end]], 2)
            else:
                k, v = k_t[:, :, :end], v_t[:, :, :end]
            outs.append(attend(q[:, :, start:end], k, v, CAUSAL))
        return torch.cat(outs, 1) if len(outs) > 1 else outs[0]

    def text_over_visual(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
        """Text queries over the visual keys only (gated mode C): ``[B, Tt, H*d]``, zero for text before the image."""
        if self.segments is None:
            return attention_or_zero(q, k, v, self._mask("text_visual"), scale)
        outs = [
            attention(q[:, :, start:end], k[:, :, :visible], v[:, :, :visible], None, scale)
            if visible else q.new_zeros(q.shape[0], end - start, q.shape[1] * q.shape[3])
            for start, end, visible in self.segments
        ]
        return torch.cat(outs, 1) if len(outs) > 1 else outs[0]

    # ----------------------------------------------------------- visual RMS
    def visual_inv_rms(self, h_v: torch.Tensor, eps: float) -> torch.Tensor:
        """``rsqrt(mean(h_v²) + eps)`` per visual token ``[B, Nv, 1]`` (float32). Without autograd (inference)
        it is computed once and reused while ``h_v`` is the same tensor — in every layer up to the next S
        layer; with autograd it is recomputed (activation checkpointing replays each layer on its own)."""
        if self._rms_source is not h_v or torch.is_grad_enabled():
            mean_square = torch.linalg.vector_norm(h_v.float(), dim=-1, keepdim=True).square() / h_v.shape[-1]
            self._rms_source, self._inv_rms = h_v, torch.rsqrt(mean_square + eps)
        return self._inv_rms

