"""The replica's image-feature cache: a follow-up turn about the same image skips the vision tower.

Every turn of a chat re-sends its image; the vision tower (most of a prefill's cost) would encode it again.
:class:`ImageFeatureCache` keeps, per image, the visual tokens the model's
:meth:`~visor_model.VisorForConditionalGeneration.image_features` made of it — ``[n'_k, D]`` on the model's device,
in its dtype — and the slots it takes in ``input_ids``. Entries are keyed by the model version and a SHA-256 of
the preprocessed image (its pixel tiles and size, so the same picture sent as PNG or JPEG-identical pixels hits;
a different model version never does), kept in least-recently-used order and bounded by bytes (the tensors'
sizes): adding an entry evicts the oldest until the total fits; an entry larger than the whole bound is not kept.
A hit hands back the very tensor a miss computed, so an answer never depends on whether the cache hit (tested
token for token). vLLM's multimodal cache is the model for this.

Only the engine's thread reads and writes entries; :meth:`snapshot` (for ``/admin/stats``) may run on another.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable

import numpy as np
import torch


def image_key(version: str, pixel_values: np.ndarray, image_sizes: np.ndarray) -> str:
    """The cache key of one preprocessed image (``pixel_values [tiles, 3, H, W]``, ``image_sizes [2]``) under a
    model version."""
    digest = hashlib.sha256()
    for part in (np.ascontiguousarray(pixel_values), np.ascontiguousarray(image_sizes)):
        digest.update(str((part.dtype, part.shape)).encode())
        digest.update(part.tobytes())
    return f"{version}:{digest.hexdigest()}"


class ImageFeatureCache:
    """LRU cache of per-image visual tokens, at most ``max_bytes`` bytes of tensors (0: off).

    ``on_lookup(hit)`` is called for every lookup (the replica's Serve metrics count them).
    """

    def __init__(self, max_bytes: int, on_lookup: Callable[[bool], None] | None = None):
        self.max_bytes = max_bytes
        self.on_lookup = on_lookup
        self._entries: OrderedDict[str, tuple[torch.Tensor, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = self.misses = self.evictions = 0

    @staticmethod
    def size_of(features: torch.Tensor) -> int:
        return features.numel() * features.element_size()

    def get(self, key: str) -> tuple[torch.Tensor, int] | None:
        """The entry of ``key`` (visual tokens, slots), now the most recently used; None on a miss."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                self.hits += 1
            else:
                self.misses += 1
        if self.on_lookup is not None:
            self.on_lookup(entry is not None)
        return entry

    def put(self, key: str, features: torch.Tensor, slots: int) -> None:
        """Keep ``features [n', D]`` (and its ``slots``) under ``key``, evicting the least recently used entries
        until the total fits ``max_bytes``; an entry larger than ``max_bytes`` is not kept."""
        size = self.size_of(features)
        if size > self.max_bytes:
            return
        with self._lock:
            if key in self._entries:
                self._bytes -= self.size_of(self._entries.pop(key)[0])
            while self._entries and self._bytes + size > self.max_bytes:
                _, (old, _) = self._entries.popitem(last=False)
                self._bytes -= self.size_of(old)
                self.evictions += 1
            self._entries[key] = (features, slots)
            self._bytes += size

    def snapshot(self) -> dict:
        """Counters for ``GET /admin/stats``: hits, misses, evictions, entries, bytes held and the bound."""
        with self._lock:
            return {"hits": self.hits, "misses": self.misses, "evictions": self.evictions,
                    "entries": len(self._entries), "bytes": self._bytes, "max_bytes": self.max_bytes}
