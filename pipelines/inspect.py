"""``visor data inspect``: statistics of a shard set through the real pipeline, and pictures of samples.

:func:`inspect_shards` runs the same read → validate → tile/tokenize path the
jobs use (so its numbers are what training will see) and returns::

    {"samples": rows read, "valid": n, "quarantined": {reason: count}, "data_version": str,
     "shards": count, "question_types": {type: count}, "tokens": {min, mean, p50, p95, max},
     "tiles": {tiles per image: count}, "benchmarks": {data_source: count}, "metrics": {metric: count}}

(``benchmarks`` and ``metrics`` count only the samples that have one.)

``samples == valid + sum(quarantined.values())`` always holds.
:func:`render_samples` draws a few samples (the anyres tiles as the model sees
them, un-normalized) with their question and answer to PNG files.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .dataset import build_split
from .options import ReadOptions
from .quarantine import QuarantineLedger
from .shards import ShardSet

if TYPE_CHECKING:
    from visor_model.processing import VisorProcessor

STAT_COLUMNS = ["num_tiles", "length", "question_type", "data_source", "metric"]


def _token_stats(lengths: list[int]) -> dict[str, float]:
    if not lengths:
        return {}
    values = np.asarray(lengths)
    return {"min": int(values.min()), "mean": round(float(values.mean()), 1), "p50": float(np.percentile(values, 50)),
            "p95": float(np.percentile(values, 95)), "max": int(values.max())}


def inspect_shards(
    source: ShardSet | str | list[str],
    processor: VisorProcessor,
    options: ReadOptions | None = None,
    report_path: Path | None = None,
) -> dict:
    """Statistics of the shards of ``source`` (a shard set or a spec; see the module docstring); one pass over
    the data.

    Writes the quarantine report (JSON lines) to ``report_path`` when given.
    """
    import ray

    ledger = QuarantineLedger.remote()
    split = build_split(source, processor, options, ledger)
    types: Counter[str] = Counter()
    tiles: Counter[int] = Counter()
    sources: Counter[str] = Counter()
    metrics: Counter[str] = Counter()
    lengths: list[int] = []
    for batch in split.dataset.select_columns(STAT_COLUMNS).iter_batches(batch_size=256, batch_format="numpy"):
        types.update(str(t) or "(none)" for t in batch["question_type"])
        tiles.update(int(t) for t in batch["num_tiles"])
        sources.update(str(s) for s in batch["data_source"] if str(s))
        metrics.update(str(m) for m in batch["metric"] if str(m))
        lengths.extend(int(x) for x in batch["length"])
    report = ray.get(ledger.report.remote())
    if report_path is not None:
        report.write_jsonl(report_path)
    return {
        "samples": report.seen,
        "valid": report.valid,
        "quarantined": report.by_reason,
        "data_version": split.version,
        "shards": len(split.shards),
        "question_types": dict(sorted(types.items())),
        "tokens": _token_stats(lengths),
        "tiles": {str(k): v for k, v in sorted(tiles.items())},
        "benchmarks": dict(sorted(sources.items())),
        "metrics": dict(sorted(metrics.items())),
    }


def _unnormalize(tiles: np.ndarray, processor: VisorProcessor) -> np.ndarray:
    """``[tiles, 3, H, W]`` normalized floats → ``[tiles, H, W, 3]`` uint8."""
    mean = np.asarray(processor.image_processor.image_mean, dtype=np.float32)[:, None, None]
    std = np.asarray(processor.image_processor.image_std, dtype=np.float32)[:, None, None]
    pixels = (tiles * std + mean) * 255.0
    return np.clip(pixels, 0, 255).round().astype(np.uint8).transpose(0, 2, 3, 1)


def render_samples(
    source: ShardSet | str | list[str],
    processor: VisorProcessor,
    out: Path,
    count: int = 4,
    options: ReadOptions | None = None,
) -> list[Path]:
    """Draw the first ``count`` valid samples to ``out/<key>.png``: every tile of the image
    (the base tile first, as the model receives them) and the conversation's text."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    split = build_split(source, processor, options)
    paths = []
    for row in split.dataset.limit(count).iter_rows():
        tiles = _unnormalize(np.asarray(row["pixel_values"]), processor) if row["num_tiles"] else []
        columns = max(len(tiles), 1)
        fig, axes = plt.subplots(1, columns, figsize=(2.2 * columns, 2.8), squeeze=False)
        for i, ax in enumerate(axes[0]):
            ax.axis("off")
            if i < len(tiles):
                ax.imshow(tiles[i], interpolation="nearest")
                ax.set_title("base" if i == 0 else f"tile {i}", fontsize=8)
        labels = np.asarray(row["labels"])
        text = processor.tokenizer.decode(np.asarray(row["input_ids"])[labels == -100], skip_special_tokens=True)
        answer = processor.tokenizer.decode(labels[labels != -100], skip_special_tokens=True)
        height, width = (int(v) for v in row["image_sizes"])
        title = f"{row['key']} ({width}x{height} px, {row['num_tiles']} tiles)"
        fig.suptitle(f"{title}\n{text.strip()[-80:]} → {answer.strip()}", fontsize=8)
        path = out / f"{row['key'].replace('/', '_')}.png"
        fig.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(fig)
        paths.append(path)
    return paths
