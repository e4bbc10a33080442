"""How a split is read and preprocessed (:class:`ReadOptions`) and how sources are packed into shards
(:class:`PackOptions`) — in a module of its own, importing nothing, so job configs can take their defaults from
it without importing Ray."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .shards import S3Options

# how a sample's ``answers`` are scored against a generated answer (jobs/evaluation/metrics.py implements each)
METRICS = ("exact", "anls", "relaxed", "vqa", "contains")


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


@dataclass(frozen=True)
class PackOptions:
    """How rows become samples and samples become shards.

    ``image_root``: where relative image paths point (None: each source's folder); ``answers_field``: the column
    holding the references (None: ``answers``, else ``answer``); ``metric``: the metric of every row (None: the
    row's own ``metric``, else by :data:`BENCHMARK_METRICS`, else none); ``data_source``: stored in every sample
    (None: the row's own);
    ``image_format``: ``keep``, ``png`` or ``jpg``; ``max_image_pixels``: the reader's decompression-bomb limit;
    ``shard_size`` samples / ``max_shard_bytes`` bytes at most per shard (a sample larger than that gets a shard
    of its own); ``prefix``: shards are ``<prefix>-NNNNNN.tar``; ``batch_size`` rows per packing call;
    ``rows_per_task``: the rows read are re-cut into blocks of at most this many, one packing task each (one big
    JSON file is one block when read: without this its images would load in one task); ``cpus``: reserved by
    each packing task; ``storage``: how ``s3://`` sources, images and output are reached (None: from the
    environment).
    """

    image_root: str | None = None
    answers_field: str | None = None
    metric: str | None = None
    data_source: str | None = None
    image_format: str = "keep"
    max_image_pixels: int = 50_000_000
    shard_size: int = 1000
    max_shard_bytes: int = 1 << 30
    prefix: str = "part"
    batch_size: int = 16
    rows_per_task: int = 64
    cpus: float = 1.0
    storage: S3Options | None = None

    def __post_init__(self) -> None:
        if self.metric is not None and self.metric not in METRICS:
            raise ValueError(f"metric {self.metric!r} is not one of {', '.join(METRICS)}")
        if self.image_format not in ("keep", "png", "jpg"):
            raise ValueError(f"image_format must be keep, png or jpg, got {self.image_format!r}")
        if min(self.shard_size, self.max_shard_bytes, self.batch_size, self.rows_per_task) < 1 or self.cpus <= 0:
            raise ValueError("shard_size, max_shard_bytes, batch_size, rows_per_task and cpus must be positive")
