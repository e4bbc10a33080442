"""The reduced KV cache of VISOR generation (docs/DESIGN.md §3.5).

Every layer keeps text keys/values; a layer keeps visual keys/values only for
the samples that read the image there (mode C or S). Per layer ``l``:

* ``keys[l]``/``values[l]`` ``[B, Hkv, Nv_l + capacity, d]`` — the keys the
  layer's own attention reads: first ``Nv_l`` visual entries (``Nv_l = 0`` when
  no sample uses the layer's own attention over the image: text-only layers and
  ``gated`` C layers), then text entries, preallocated for the whole generation;
* ``key_valid[l]`` ``[B, Nv_l + capacity]`` — which entries are real;
* ``gated[l]`` — ``(k, v, valid)`` of the gated cross-attention sublayer, or None.

A sample then holds ``L × text_len + |C ∪ S_b| × Nv`` entries, which
:meth:`VisorCache.num_entries` counts.

Rows can join and leave between decode steps (continuous batching):
:meth:`VisorCache.concat` stacks caches of different batches — each layer's visual part and
text part padded with invalid entries so every row appends at the same slot — and
:meth:`VisorCache.select` keeps a subset of rows. :class:`DecodeState` is a cache together with
what the next decode step needs per row (logits, next position, the budget used).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


class VisorCache:
    def __init__(self, num_layers: int, text_len: int, capacity: int):
        self.num_layers = num_layers
        self.length = text_len  # text entries written so far (prompt slots + generated)
        self.capacity = text_len + capacity
        self.keys: list[torch.Tensor | None] = [None] * num_layers
        self.values: list[torch.Tensor | None] = [None] * num_layers
        self.key_valid: list[torch.Tensor | None] = [None] * num_layers
        self.visual_offset: list[int] = [0] * num_layers
        self.gated: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None] = [None] * num_layers

    def write_prefill(
        self,
        layer: int,
        text_kv: tuple[torch.Tensor, torch.Tensor],
        text_valid: torch.Tensor,
        visual_kv: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None,
    ) -> None:
        """Store a layer's prompt entries. ``visual_kv = (k, v, valid [B, Nv])`` or None."""
        k_t, v_t = text_kv
        batch, heads, text_len, dim = k_t.shape
        offset = 0 if visual_kv is None else visual_kv[0].shape[2]
        shape = (batch, heads, offset + self.capacity, dim)
        keys, values = k_t.new_zeros(shape), v_t.new_zeros(shape)
        valid = torch.zeros(batch, offset + self.capacity, dtype=torch.bool, device=k_t.device)
        if visual_kv is not None:
            keys[:, :, :offset], values[:, :, :offset], valid[:, :offset] = visual_kv
        keys[:, :, offset : offset + text_len] = k_t
        values[:, :, offset : offset + text_len] = v_t
        valid[:, offset : offset + text_len] = text_valid
        self.keys[layer], self.values[layer], self.key_valid[layer] = keys, values, valid
        self.visual_offset[layer] = offset

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Write one new text entry ``[B, Hkv, 1, d]`` and return views ``(K, V, valid)`` up to it."""
        if self.length >= self.capacity:
            raise RuntimeError("VisorCache is full: allocate it with a larger capacity")
        end = self.visual_offset[layer] + self.length
        self.keys[layer][:, :, end : end + 1] = k
        self.values[layer][:, :, end : end + 1] = v
        self.key_valid[layer][:, end] = True
        stop = end + 1
        return self.keys[layer][:, :, :stop], self.values[layer][:, :, :stop], self.key_valid[layer][:, :stop]

    def advance(self) -> None:
        """Mark the entry written by :meth:`append` in every layer as part of the cache."""
        self.length += 1

    @property
    def batch_size(self) -> int:
        return self.key_valid[0].shape[0]

    def select(self, rows: torch.LongTensor) -> VisorCache:
        """A cache holding only ``rows`` (same slots)."""
        out = VisorCache(self.num_layers, self.length, self.capacity - self.length)
        out.visual_offset = list(self.visual_offset)
        for layer in range(self.num_layers):
            out.keys[layer] = self.keys[layer].index_select(0, rows)
            out.values[layer] = self.values[layer].index_select(0, rows)
            out.key_valid[layer] = self.key_valid[layer].index_select(0, rows)
            if self.gated[layer] is not None:
                out.gated[layer] = tuple(t.index_select(0, rows) for t in self.gated[layer])
        return out

    def compact(self) -> None:
        """Drop the slots no row holds, so a decode that rows keep joining and leaving neither grows without
        bound nor keeps paying for rows that left: text slots of rows that joined with longer prompts, and
        visual slots past the widest image a remaining row has (each layer's visual part and each gated
        sublayer's). Visual entries are valid-first in every row, so a width is a count."""
        text_used = torch.zeros(self.length, dtype=torch.bool, device=self.key_valid[0].device)
        for layer in range(self.num_layers):
            offset = self.visual_offset[layer]
            text_used |= self.key_valid[layer][:, offset : offset + self.length].any(0)
        widths = [valid[:, :offset].sum(1).amax() for valid, offset in zip(self.key_valid, self.visual_offset,
                                                                           strict=True)]
        widths += [g[2].sum(1).amax() for g in self.gated if g is not None]
        host = torch.stack(widths).tolist()  # one copy to the host for every layer's width
        visual, gated = host[: self.num_layers], iter(host[self.num_layers :])
        for layer, part in enumerate(self.gated):
            width = None if part is None else next(gated)
            if part is not None and width < part[2].shape[1]:  # a copy, so the wider tensors are freed
                k, v, valid = part
                self.gated[layer] = (k[:, :, :width].contiguous(), v[:, :, :width].contiguous(),
                                     valid[:, :width].clone())
        if bool(text_used.all()) and visual == self.visual_offset:
            return
        kept = text_used.nonzero().squeeze(1)
        room = self.capacity - self.length
        for layer in range(self.num_layers):
            offset, width = self.visual_offset[layer], visual[layer]
            columns = torch.cat([torch.arange(width, device=kept.device), offset + kept,
                                 torch.arange(offset + self.length, offset + self.capacity, device=kept.device)])
            self.keys[layer] = self.keys[layer].index_select(2, columns)
            self.values[layer] = self.values[layer].index_select(2, columns)
            self.key_valid[layer] = self.key_valid[layer].index_select(1, columns)
            self.visual_offset[layer] = width
        self.length = len(kept)
        self.capacity = self.length + room

    @staticmethod
    def concat(caches: list[VisorCache]) -> VisorCache:
        """The rows of ``caches`` in one cache: per layer the visual part is padded to the widest, each cache's
        text entries keep their slots and are followed by invalid ones up to the longest ``length``, and the
        room left is the largest any cache had."""
        if len(caches) == 1:
            return caches[0]
        first = caches[0]
        length = max(c.length for c in caches)
        out = VisorCache(first.num_layers, length, max(c.capacity - c.length for c in caches))
        for layer in range(first.num_layers):
            offset = max(c.visual_offset[layer] for c in caches)
            parts = [_pad_layer(c, layer, offset, out.capacity) for c in caches]
            out.keys[layer], out.values[layer], out.key_valid[layer] = (torch.cat(t) for t in zip(*parts, strict=True))
            out.visual_offset[layer] = offset
            gated = [c.gated[layer] for c in caches]
            if any(g is not None for g in gated):
                out.gated[layer] = _concat_gated(gated, [c.batch_size for c in caches])
        return out

    def num_entries(self) -> torch.LongTensor:
        """Real K/V entries per sample ``[B]`` (text + visual, all layers, both attention kinds)."""
        total = None
        for layer in range(self.num_layers):
            count = self.key_valid[layer][:, : self.visual_offset[layer] + self.length].sum(1)
            if self.gated[layer] is not None:
                count = count + self.gated[layer][2].sum(1)
            total = count if total is None else total + count
        return total

    def num_visual_entries(self) -> torch.LongTensor:
        """Visual K/V entries per sample ``[B]``."""
        total = torch.zeros_like(self.key_valid[0][:, 0], dtype=torch.long)
        for layer in range(self.num_layers):
            total = total + self.key_valid[layer][:, : self.visual_offset[layer]].sum(1)
            if self.gated[layer] is not None:
                total = total + self.gated[layer][2].sum(1)
        return total

    def nbytes(self) -> int:
        """Bytes held by the cache tensors (preallocated text capacity included)."""
        size = sum(t.numel() * t.element_size() for t in self.keys + self.values if t is not None)
        return size + sum(k.numel() * k.element_size() * 2 for k, _, _ in filter(None, self.gated))


def _pad_layer(cache: VisorCache, layer: int, offset: int, capacity: int) -> tuple[torch.Tensor, ...]:
    """``cache``'s layer as ``(keys, values, valid)`` with ``offset`` visual slots and ``capacity`` text slots."""
    keys, values, valid = cache.keys[layer], cache.values[layer], cache.key_valid[layer]
    own, length = cache.visual_offset[layer], cache.length
    batch, heads, _, dim = keys.shape
    new_keys = keys.new_zeros(batch, heads, offset + capacity, dim)
    new_values = values.new_zeros(batch, heads, offset + capacity, dim)
    new_valid = valid.new_zeros(batch, offset + capacity)
    for target, source in ((new_keys, keys), (new_values, values)):
        target[:, :, :own] = source[:, :, :own]
        target[:, :, offset : offset + length] = source[:, :, own : own + length]
    new_valid[:, :own] = valid[:, :own]
    new_valid[:, offset : offset + length] = valid[:, own : own + length]
    return new_keys, new_values, new_valid


def _concat_gated(parts: list[tuple[torch.Tensor, ...] | None], sizes: list[int]) -> tuple[torch.Tensor, ...]:
    """Gated-sublayer ``(k, v, valid)`` of several caches in one, visual slots padded (None: no valid slot)."""
    template = next(p for p in parts if p is not None)
    width = max(p[0].shape[2] for p in parts if p is not None)
    heads, dim = template[0].shape[1], template[0].shape[3]
    keys, values, valid = [], [], []
    for part, batch in zip(parts, sizes, strict=True):
        k = template[0].new_zeros(batch, heads, width, dim)
        v = template[1].new_zeros(batch, heads, width, dim)
        ok = template[2].new_zeros(batch, width)
        if part is not None:
            n = part[0].shape[2]
            k[:, :, :n], v[:, :, :n], ok[:, :n] = part
        keys.append(k)
        values.append(v)
        valid.append(ok)
    return torch.cat(keys), torch.cat(values), torch.cat(valid)


@dataclass
class DecodeState:
    """Rows being decoded: their cache, the logits of their next token ``[B, V]``, the position it will take
    ``[B]``, and per row the budget used and the visual/text token counts of the prompt ``[B]``."""

    cache: VisorCache
    logits: torch.Tensor
    next_pos: torch.LongTensor
    budget: torch.LongTensor
    num_visual: torch.LongTensor
    num_text: torch.LongTensor

    def select(self, rows: torch.LongTensor) -> DecodeState:
        return DecodeState(self.cache.select(rows), *(t.index_select(0, rows) for t in (
            self.logits, self.next_pos, self.budget, self.num_visual, self.num_text)))

    @staticmethod
    def concat(states: list[DecodeState]) -> DecodeState:
        return DecodeState(VisorCache.concat([s.cache for s in states]), *(
            torch.cat([getattr(s, name) for s in states])
            for name in ("logits", "next_pos", "budget", "num_visual", "num_text")))
