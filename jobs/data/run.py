"""The data jobs as functions of their configs, each returning a typed result: :func:`synth` (``visor data synth``),
:func:`pack` (``visor data pack``), :func:`inspect` (``visor data inspect``). The work is ``pipelines``'s; these
read the config, start Ray where a job needs it, and type what comes back. A result's ``model_dump(mode="json")``
is what ``--json`` prints (and, for ``pack``, the ``pack_manifest.json`` it writes).

Errors: a ``ValueError`` (or ``OSError``) names the setting that is wrong (``processor: …``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel

from jobs.data.config import InspectConfig, PackConfig, SynthConfig


class SynthResult(BaseModel):
    """What ``visor data synth`` wrote: ``out`` and the samples of each split (train, eval, policy, detail)."""

    out: str
    samples: dict[str, int]


class PackResult(BaseModel):
    """What ``visor data pack`` did: rows read, packed, skipped per reason; the shards written to ``out`` and
    their data version (None when nothing was packed)."""

    rows: int
    packed: int
    skipped: dict[str, int]
    shards: list[str]
    data_version: str | None
    out: str


class InspectResult(BaseModel):
    """A shard set's statistics (:func:`pipelines.inspect.inspect_shards`) and the PNGs rendered, if asked."""

    samples: int
    valid: int
    quarantined: dict[str, int]
    data_version: str
    shards: int
    question_types: dict[str, int]
    tokens: dict[str, int | float]  # min, mean, p50, p95, max of the sequence lengths (empty: no valid sample)
    tiles: dict[str, int]  # tiles per sample → samples
    benchmarks: dict[str, int]
    metrics: dict[str, int]
    rendered: list[str] = []


def synth(config: SynthConfig) -> SynthResult:
    """Write the synthetic benchmark's shards, tokenizer, processor and manifest into ``config.out``."""
    from pipelines.synth import write_synth

    manifest = write_synth(Path(config.out), config.train, config.eval, config.shard_size, config.seed,
                           config.policy, config.detail)
    return SynthResult(out=config.out, samples={split: info["samples"] for split, info in manifest["splits"].items()})


def pack(config: PackConfig, progress: Callable[[int, int], None] | None = None) -> PackResult:
    """Pack ``config.source`` into shards in ``config.out`` on Ray Data; ``progress(rows, skipped)`` as it goes."""
    from jobs.ray_env import init_ray
    from pipelines.pack import pack as run_pack

    options = config.pack_options()
    init_ray()
    return PackResult.model_validate(run_pack(config.source, config.out, options, progress=progress))


def inspect(config: InspectConfig) -> InspectResult:
    """Read ``config.spec`` as a job reads it (with ``config.read``) and count what is there; render samples and
    write the quarantine report where asked."""
    from jobs.ray_env import init_ray
    from pipelines.inspect import inspect_shards, render_samples
    from pipelines.shards import ShardSet
    from visor_model.processing import VisorProcessor

    shards = ShardSet.resolve(config.spec)
    source = config.processor or shards.processor_dir()
    if source is None:
        raise ValueError("processor: no processor/ next to the shards; pass --processor DIR")
    try:
        processor = VisorProcessor.from_pretrained(source)
    except (OSError, ValueError) as err:
        raise ValueError(f"processor: cannot load a processor from {source}: {err}") from err
    options = config.read.read_options()
    init_ray()
    stats = inspect_shards(shards, processor, options, report_path=config.report and Path(config.report))
    rendered = (render_samples(shards, processor, Path(config.render), config.render_count, options)
                if config.render else [])
    return InspectResult.model_validate({**stats, "rendered": [str(path) for path in rendered]})
