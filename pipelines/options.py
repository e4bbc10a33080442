"""How a split is read and preprocessed (:class:`ReadOptions`) — in a module of its own, importing nothing,
so job configs can take their defaults from it without importing Ray."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ReadOptions:
    """How a split is read and preprocessed.

    ``max_length`` (tokens) and ``max_image_pixels`` are validation limits;
    ``preprocess_batch_size`` samples go through one ``map_batches`` call;
    ``preprocess_cpus`` is reserved by each read and preprocessing task (fractions
    let them share a core with training workers); ``preprocess_concurrency`` caps the
    number of preprocessing tasks at once (None: Ray decides); ``rows_per_block`` is
    the reader's block size.
    """

    max_length: int = 2048
    max_image_pixels: int = 50_000_000
    preprocess_batch_size: int = 16
    preprocess_cpus: float = 1.0
    preprocess_concurrency: int | None = None
    rows_per_block: int = 64
