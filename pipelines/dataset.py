"""The one data path of every job: shards → Ray Data → validated, tiled, tokenized rows.

``build_split`` reads a shard set (or lists a spec) with :class:`pipelines.reader.ShardDatasource`
(raw bytes, streaming, one read task per shard file) and runs
:func:`preprocess_batch` in ``map_batches``: each sample is validated
(:func:`pipelines.validate.parse_sample`) and turned into model inputs by
``VisorProcessor.build_chat`` (the LLaVA-OneVision anyres tiler and chat
template, so pixels and tokens are the reference ones). Rejected samples go to
the :class:`pipelines.quarantine.QuarantineLedger`; nothing is materialized.

Output rows (one per valid sample):

==============  =====================================================
``key``, ``url``  the sample key and its shard (``s3://…`` or a local path)
``input_ids``   int64 ``[T]`` — the whole conversation
``labels``      int64 ``[T]`` — answer tokens, -100 elsewhere
``pixel_values``  float32 ``[tiles, 3, H, W]`` (``tiles`` = 0 without an image)
``image_sizes`` int64 ``[2]`` — (height, width), zeros without an image
``num_tiles``, ``length``  int — tiles and tokens (for statistics and bucketing)
``question_type``  str — from the JSON metadata, ``""`` when absent
``data_source``  str — the benchmark the sample comes from (metadata), ``""`` when absent
``metric``      str — how a generated answer is scored (``pipelines.validate.METRICS``), ``""``: teacher-forced
                exact match of the conversation's answer
``answers``     str — the JSON list of reference answers, ``"[]"`` when absent
``metadata``    str — the JSON of the sample's other fields
==============  =====================================================

:class:`Collator` turns a batch of such rows into the model's inputs.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from ray.data.collate_fn import NumpyBatchCollateFn

from .options import ReadOptions
from .reader import ShardDatasource
from .shards import ShardSet
from .validate import Rejected, parse_sample

if TYPE_CHECKING:
    import pyarrow as pa
    import ray.data
    from ray.actor import ActorHandle

    from visor_model.processing import VisorProcessor

TENSOR_COLUMNS = ("input_ids", "labels", "pixel_values", "image_sizes")
OUTPUT_COLUMNS = ("key", "url", *TENSOR_COLUMNS, "num_tiles", "length", "question_type", "data_source", "metric",
                  "answers", "metadata")


@dataclass
class Split:
    """A lazily read, preprocessed split: its Ray ``dataset`` and the ``shards`` it reads."""

    dataset: ray.data.Dataset
    shards: ShardSet

    @property
    def version(self) -> str:
        return self.shards.version


def _quarantine(row: dict, reason: str, detail: str) -> dict:
    return {"url": row["url"], "key": row["key"], "reason": reason, "detail": detail[:500]}


def object_column(values: Sequence[Any]) -> np.ndarray:
    """A 1-D object array with one element per value (``np.array`` would stack equal-shaped arrays into one
    block): how variable-shape tensors travel in a Ray Data column."""
    column = np.empty(len(values), dtype=object)
    column[:] = values
    return column


def preprocess_batch(
    batch: pa.Table, processor: VisorProcessor, options: ReadOptions, ledger: ActorHandle | None
) -> dict[str, np.ndarray]:
    """Validate and preprocess a batch of raw rows (columns of :mod:`pipelines.reader`).

    Returns the output columns of the module docstring for the valid rows;
    rejected rows are reported to ``ledger`` (synchronously, so a report read
    after the data is consumed is complete). Never raises on bad samples.
    """
    out: dict[str, list] = {name: [] for name in OUTPUT_COLUMNS}
    rejected: list[dict] = []
    tile_shape = _tile_shape(processor)
    for row in batch.to_pylist():
        try:
            if row["error"] is not None:
                raise Rejected(row["error"])
            sample = parse_sample(row["image"], row["json"], options.max_image_pixels)
            try:
                example = processor.build_chat(sample.image, sample.turns, options.max_length)
            except ValueError as err:
                if "longer than max_length" not in str(err):
                    raise
                raise Rejected("too_long", str(err)) from err
        except Rejected as err:
            rejected.append(_quarantine(row, err.reason, err.detail))
            continue
        except Exception as err:  # a processor bug on one odd sample must not end the job
            rejected.append(_quarantine(row, "processing_error", f"{type(err).__name__}: {err}"))
            continue
        pixel_values = example.get("pixel_values")
        out["key"].append(row["key"])
        out["url"].append(row["url"])
        out["input_ids"].append(example["input_ids"][0].numpy().astype(np.int64))
        out["labels"].append(example["labels"][0].numpy().astype(np.int64))
        out["pixel_values"].append(
            pixel_values[0].numpy().astype(np.float32) if pixel_values is not None
            else np.zeros((0, *tile_shape), np.float32)
        )
        out["image_sizes"].append(
            example["image_sizes"][0].numpy().astype(np.int64) if pixel_values is not None else np.zeros(2, np.int64)
        )
        out["num_tiles"].append(0 if pixel_values is None else int(pixel_values.shape[1]))
        out["length"].append(int(example["input_ids"].shape[1]))
        out["question_type"].append(str(sample.metadata.get("question_type", "")))
        out["data_source"].append(str(sample.metadata.get("data_source", "")))
        out["metric"].append(str(sample.metadata.get("metric", "")))
        out["answers"].append(json.dumps(sample.metadata.get("answers", [])))
        out["metadata"].append(json.dumps(sample.metadata, sort_keys=True, default=str))
    if ledger is not None:
        import ray

        ray.get(ledger.add.remote(batch.num_rows, len(out["key"]), rejected))
    if not out["key"]:
        return {name: object_column([]) for name in OUTPUT_COLUMNS}
    return {name: object_column(values) if name in TENSOR_COLUMNS else np.array(values)
            for name, values in out.items()}


def _tile_shape(processor: VisorProcessor) -> tuple[int, int, int]:
    size = processor.image_processor.size
    return 3, int(size["height"]), int(size["width"])


def build_split(
    source: ShardSet | str | Sequence[str],
    processor: VisorProcessor,
    options: ReadOptions | None = None,
    ledger: ActorHandle | None = None,
) -> Split:
    """The preprocessed Ray dataset of ``source`` — a :class:`~pipelines.shards.ShardSet`, or a spec listed
    here — lazy; see the module docstring.

    Listing a spec raises ``ValueError`` / ``FileNotFoundError`` / ``PermissionError``
    naming it before anything runs when it matches nothing or S3 refuses the listing.
    """
    import ray.data

    options = options or ReadOptions()
    shards = ShardSet.of(source)
    remote = [s for s in shards.shards if s.url.startswith("s3://")]
    if remote and len(remote) != len(shards):
        raise ValueError(f"{len(remote)} of the {len(shards)} shards are on S3, the others local; read them as "
                         "separate splits")
    filesystem = shards.storage.filesystem() if remote else None
    paths = [s.url.removeprefix("s3://") for s in shards.shards]
    source = ShardDatasource(
        paths, filesystem=filesystem, rows_per_block=options.rows_per_block, url_scheme="s3://" if remote else ""
    )
    dataset = ray.data.read_datasource(source, num_cpus=options.preprocess_cpus, override_num_blocks=len(paths))
    dataset = dataset.map_batches(
        preprocess_batch,
        fn_kwargs={"processor": processor, "options": options, "ledger": ledger},
        batch_size=options.preprocess_batch_size,
        batch_format="pyarrow",
        num_cpus=options.preprocess_cpus,
        compute=ray.data.TaskPoolStrategy(size=options.preprocess_concurrency),
    )
    return Split(dataset, shards)


class Collator(NumpyBatchCollateFn):
    """``collate_fn`` for ``iter_torch_batches``: rows of :func:`preprocess_batch` → model inputs.

    Text is right-padded to the longest sample (``pad_token_id``, labels -100,
    ``attention_mask`` 0); the images of the samples that have one are stacked
    in sample order as ``pixel_values [images, max_tiles, 3, H, W]`` (missing
    tiles zero, as ``transformers`` pads them; the model reads only the tiles
    ``image_sizes [images, 2]`` implies) — absent when no sample has an image.
    With ``with_keys``, ``keys`` holds each sample's ``url#key`` as zero-padded
    UTF-8 bytes ``[B, n]`` (uint8: Ray moves only tensors); :func:`decode_keys` reads it.
    ``padding_side="left"`` pads text on the left instead (prompts for generation;
    ``labels`` may then be absent).
    """

    def __init__(self, pad_token_id: int, with_keys: bool = False, padding_side: str = "right"):
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        self.pad_token_id = pad_token_id
        self.with_keys = with_keys
        self.padding_side = padding_side

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        # Arrays from Ray are read-only: copy them into fresh numpy views of the output tensors.
        lengths = [len(x) for x in batch["input_ids"]]
        shape = (len(lengths), max(lengths))
        input_ids = np.full(shape, self.pad_token_id, dtype=np.int64)
        labels = np.full(shape, -100, dtype=np.int64)
        attention_mask = np.zeros(shape, dtype=np.int64)
        targets = batch["labels"] if "labels" in batch else [None] * len(lengths)
        for i, (x, y) in enumerate(zip(batch["input_ids"], targets, strict=True)):
            cols = slice(shape[1] - len(x), None) if self.padding_side == "left" else slice(0, len(x))
            input_ids[i, cols], attention_mask[i, cols] = x, 1
            if y is not None:
                labels[i, cols] = y
        out = {"input_ids": input_ids, "attention_mask": attention_mask}
        if "labels" in batch:
            out["labels"] = labels
        if self.with_keys:
            names = [f"{u}#{k}".encode() for u, k in zip(batch["url"], batch["key"], strict=True)]
            keys = np.zeros((len(names), max(len(n) for n in names)), dtype=np.uint8)
            for i, name in enumerate(names):
                keys[i, : len(name)] = np.frombuffer(name, dtype=np.uint8)
            out["keys"] = keys
        with_image = [i for i, p in enumerate(batch["pixel_values"]) if len(p)]
        if with_image:
            tiles = [batch["pixel_values"][i] for i in with_image]
            pixel_values = np.zeros((len(tiles), max(len(t) for t in tiles), *tiles[0].shape[1:]), np.float32)
            for i, t in enumerate(tiles):
                pixel_values[i, : len(t)] = t
            out["pixel_values"] = pixel_values
            out["image_sizes"] = np.stack([batch["image_sizes"][i] for i in with_image]).astype(np.int64)
        return {name: torch.from_numpy(value) for name, value in out.items()}


def decode_keys(keys: torch.Tensor) -> list[str]:
    """The ``url#key`` strings of a :class:`Collator` ``keys`` tensor."""
    return [bytes(row[row != 0].tolist()).decode() for row in keys.cpu()]
