"""The reduced KV cache of VISOR generation (docs/DESIGN.md §3.5).

Every layer keeps text keys/values; a layer keeps visual keys/values only for the rows that read
the image there (mode C, S or ``s``). Per layer ``l``:

* ``keys[l]``/``values[l]`` ``[B, Hkv, capacity, d]`` and ``key_valid[l]`` ``[B, capacity]`` — the text
  entries, preallocated for the whole generation (``length`` of them written so far); a row's padding
  takes no slot, but a shorter row's text part is as wide as the longest row's;
* ``visual[l]`` — the visual keys/values the layer's own attention reads, as :class:`VisualPart`\\ s:
  the rows with the same number of visual tokens share one ``[b, Hkv, n, d]`` tensor, so a batch of
  images of different sizes holds what its rows would alone (no padding to the widest image);
* ``gated[l]`` — the same for the gated cross-attention sublayer of a ``gated`` C layer.

A row then holds ``L × text_len + |C ∪ S_b| × Nv`` entries, which :meth:`VisorCache.num_entries` counts.
Decode attends over the text part and every visual part of a layer and merges them by their
log-sum-exp (:func:`visor_model.layers.attention_over_parts`).

Rows can join and leave between decode steps (continuous batching): :meth:`VisorCache.concat` stacks
caches (text parts padded to a common length, visual parts kept as they are, those of equal width
merged), :meth:`VisorCache.select` keeps a subset of rows, :meth:`VisorCache.compact` drops what no
remaining row holds. :class:`DecodeState` is a cache together with what the next decode step needs
per row (logits, next position, the budget used).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import torch


@dataclass
class VisualPart:
    """Visual keys/values ``[b, Hkv, n, d]`` of the batch rows ``rows`` (host) = ``index`` (device), every row
    with exactly ``n`` visual tokens (so no mask)."""

    rows: tuple[int, ...]
    index: torch.LongTensor
    keys: torch.Tensor
    values: torch.Tensor

    @property
    def width(self) -> int:
        return self.keys.shape[2]

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.keys, self.values))


def split_visual(
    rows: tuple[int, ...], keys: torch.Tensor, values: torch.Tensor, widths: list[int]
) -> list[VisualPart]:
    """Visual K/V ``[len(rows), Hkv, N, d]`` of batch rows ``rows`` (each row's valid tokens first) as parts of
    equal width; ``widths[r]`` is batch row ``r``'s visual token count (rows without any are left out)."""
    by_width: dict[int, list[int]] = defaultdict(list)
    for local, row in enumerate(rows):
        if widths[row]:
            by_width[widths[row]].append(local)
    parts = []
    for width, local in sorted(by_width.items()):
        members = tuple(rows[i] for i in local)
        if len(local) == len(rows) and width == keys.shape[2]:
            k, v = keys, values
        else:
            pick = torch.tensor(local, device=keys.device)
            k = keys.index_select(0, pick)[:, :, :width].contiguous()
            v = values.index_select(0, pick)[:, :, :width].contiguous()
        parts.append(VisualPart(members, torch.tensor(members, device=keys.device), k, v))
    return parts


def _merge_equal_widths(parts: list[VisualPart]) -> list[VisualPart]:
    """Parts of the same width as one part (rows concatenated), so decode makes one attention call per width."""
    by_width: dict[int, list[VisualPart]] = defaultdict(list)
    for part in parts:
        by_width[part.width].append(part)
    merged = []
    for _, same in sorted(by_width.items()):
        if len(same) == 1:
            merged.append(same[0])
            continue
        rows = tuple(r for p in same for r in p.rows)
        merged.append(VisualPart(rows, torch.cat([p.index for p in same]), torch.cat([p.keys for p in same]),
                                 torch.cat([p.values for p in same])))
    return merged


def _shifted(parts: list[VisualPart], offset: int) -> list[VisualPart]:
    return [VisualPart(tuple(r + offset for r in p.rows), p.index + offset, p.keys, p.values) for p in parts]


class VisorCache:
    def __init__(self, num_layers: int, text_len: int, capacity: int):
        self.num_layers = num_layers
        self.length = text_len  # text entries written so far (prompt slots + generated)
        self.capacity = text_len + capacity
        self.keys: list[torch.Tensor | None] = [None] * num_layers
        self.values: list[torch.Tensor | None] = [None] * num_layers
        self.key_valid: list[torch.Tensor | None] = [None] * num_layers
        self.visual: list[list[VisualPart]] = [[] for _ in range(num_layers)]
        self.gated: list[list[VisualPart]] = [[] for _ in range(num_layers)]

    def write_prefill(self, layer: int, text_kv: tuple[torch.Tensor, torch.Tensor], text_valid: torch.Tensor) -> None:
        """Store a layer's prompt text entries ``[B, Hkv, text_len, d]`` (``text_valid [B, text_len]``); its visual
        parts go to ``visual[layer]`` / ``gated[layer]``."""
        k_t, v_t = text_kv
        batch, heads, text_len, dim = k_t.shape
        shape = (batch, heads, self.capacity, dim)
        keys, values = k_t.new_zeros(shape), v_t.new_zeros(shape)
        valid = torch.zeros(batch, self.capacity, dtype=torch.bool, device=k_t.device)
        keys[:, :, :text_len], values[:, :, :text_len], valid[:, :text_len] = k_t, v_t, text_valid
        self.keys[layer], self.values[layer], self.key_valid[layer] = keys, values, valid

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Write one new text entry ``[B, Hkv, 1, d]`` and return the text part ``(K, V, valid)`` up to it."""
        if self.length >= self.capacity:
            raise RuntimeError("VisorCache is full: allocate it with a larger capacity")
        end = self.length
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
        """A cache holding only ``rows`` (in that order; same text slots). A row may be chosen several times:
        each copy is a row of its own (``n`` choices of one prefilled prompt decode on from one prefill)."""
        chosen: dict[int, list[int]] = defaultdict(list)
        for new, row in enumerate(rows.tolist()):
            chosen[row].append(new)
        out = VisorCache(self.num_layers, self.length, self.capacity - self.length)
        for layer in range(self.num_layers):
            out.keys[layer] = self.keys[layer].index_select(0, rows)
            out.values[layer] = self.values[layer].index_select(0, rows)
            out.key_valid[layer] = self.key_valid[layer].index_select(0, rows)
            out.visual[layer] = _select_parts(self.visual[layer], chosen)
            out.gated[layer] = _select_parts(self.gated[layer], chosen)
        return out

    def compact(self) -> None:
        """Drop the text slots no row holds (left by rows that joined with longer prompts and then left), so a
        decode that rows keep joining does not grow without bound. Visual parts leave with their rows
        (:meth:`select`): they never hold a slot for a row that is gone."""
        used = torch.zeros(self.length, dtype=torch.bool, device=self.key_valid[0].device)
        for layer in range(self.num_layers):
            used |= self.key_valid[layer][:, : self.length].any(0)
        if bool(used.all()):
            return
        kept = used.nonzero().squeeze(1)
        room = self.capacity - self.length
        columns = torch.cat([kept, torch.arange(self.length, self.capacity, device=kept.device)])
        for layer in range(self.num_layers):
            self.keys[layer] = self.keys[layer].index_select(2, columns)
            self.values[layer] = self.values[layer].index_select(2, columns)
            self.key_valid[layer] = self.key_valid[layer].index_select(1, columns)
        self.length = len(kept)
        self.capacity = self.length + room

    @staticmethod
    def concat(caches: list[VisorCache]) -> VisorCache:
        """The rows of ``caches`` in one cache: each cache's text entries keep their slots and are followed by
        invalid ones up to the longest ``length``, the room left is the largest any cache had, and the visual
        parts are kept (those of equal width merged)."""
        if len(caches) == 1:
            return caches[0]
        first = caches[0]
        length = max(c.length for c in caches)
        out = VisorCache(first.num_layers, length, max(c.capacity - c.length for c in caches))
        offsets = [0]
        for c in caches:
            offsets.append(offsets[-1] + c.batch_size)
        for layer in range(first.num_layers):
            parts = [_pad_text(c, layer, out.capacity) for c in caches]
            out.keys[layer], out.values[layer], out.key_valid[layer] = (torch.cat(t) for t in zip(*parts, strict=True))
            for kind in ("visual", "gated"):
                shifted = [p for c, offset in zip(caches, offsets, strict=False)
                           for p in _shifted(getattr(c, kind)[layer], offset)]
                getattr(out, kind)[layer] = _merge_equal_widths(shifted)
        return out

    def num_entries(self) -> torch.LongTensor:
        """Real K/V entries per row ``[B]`` (text + visual, all layers, both attention kinds)."""
        total = sum(valid[:, : self.length].sum(1) for valid in self.key_valid)
        return total + self.num_visual_entries()

    def num_visual_entries(self) -> torch.LongTensor:
        """Visual K/V entries per row ``[B]``."""
        total = torch.zeros(self.batch_size, dtype=torch.long, device=self.key_valid[0].device)
        for part in (p for parts in self.visual + self.gated for p in parts):
            total = total.index_add(0, part.index, torch.full_like(part.index, part.width))
        return total

    def nbytes(self) -> int:
        """Bytes held by the cache tensors (preallocated text capacity included)."""
        text = sum(t.numel() * t.element_size() for t in self.keys + self.values if t is not None)
        return text + sum(p.nbytes() for parts in self.visual + self.gated for p in parts)


def _select_parts(parts: list[VisualPart], chosen: dict[int, list[int]]) -> list[VisualPart]:
    """The parts' rows that are in ``chosen`` (old row -> its new rows, one per copy), renumbered; parts left with
    no row dropped."""
    out = []
    for part in parts:
        pairs = [(i, new) for i, row in enumerate(part.rows) for new in chosen.get(row, ())]
        if not pairs:
            continue
        local = [i for i, _ in pairs]
        rows = tuple(new for _, new in pairs)
        if local == list(range(len(part.rows))):
            keys, values = part.keys, part.values
        else:
            pick = torch.tensor(local, device=part.keys.device)
            keys, values = part.keys.index_select(0, pick), part.values.index_select(0, pick)
        out.append(VisualPart(rows, torch.tensor(rows, device=part.keys.device), keys, values))
    return out


def _pad_text(cache: VisorCache, layer: int, capacity: int) -> tuple[torch.Tensor, ...]:
    """``cache``'s text part at ``layer`` as ``(keys, values, valid)`` with ``capacity`` slots: its ``length``
    entries first, every later slot invalid."""
    keys, values, valid = cache.keys[layer], cache.values[layer], cache.key_valid[layer]
    own = cache.length
    batch, heads, _, dim = keys.shape
    new_keys = keys.new_zeros(batch, heads, capacity, dim)
    new_values = values.new_zeros(batch, heads, capacity, dim)
    new_valid = valid.new_zeros(batch, capacity)
    new_keys[:, :, :own], new_values[:, :, :own] = keys[:, :, :own], values[:, :, :own]
    new_valid[:, :own] = valid[:, :own]
    return new_keys, new_values, new_valid


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
