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
"""

from __future__ import annotations

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
