"""Settings of the data jobs, as :class:`jobs.config.Section` schemas: ``visor data synth`` (:class:`SynthConfig`),
``visor data pack`` (:class:`PackConfig`) and ``visor data inspect`` (:class:`InspectConfig`)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from jobs.config import LOCAL_PATH, Section
from jobs.sections import PackSection, ReadSection


class SynthConfig(Section):
    """The synthetic benchmark (:func:`pipelines.synth.write_synth`): how many samples of each split."""

    out: Annotated[str, LOCAL_PATH] = Field(description="Directory for the shards, tokenizer/, processor/ and "
                                            "manifest.json.")
    train: int = Field(3000, ge=0, description="Number of training samples.")
    eval: int = Field(300, ge=0, description="Number of evaluation samples.")
    policy: int = Field(0, ge=0, description="Number of held-out samples for the policy job (policy-*.tar).")
    detail: int = Field(0, ge=0, description="Number of training samples asking only the fine questions "
                        "(detail-*.tar, a recipe's first stage).")
    shard_size: int = Field(1000, ge=1, description="Samples per shard.")
    seed: int = Field(0, description="Random seed; the same seed writes byte-identical shards.")


class PackConfig(PackSection):
    """Sources packed into shards (:func:`pipelines.pack.pack`), and how."""

    source: Annotated[list[str], LOCAL_PATH] = Field(min_length=1, description="LLaVA JSON / JSON lines / parquet "
                                                     "files, directories or globs, local or s3://…")
    out: Annotated[str, LOCAL_PATH] = Field(description="Directory (or s3://bucket/prefix) for the shards.")


class InspectConfig(Section):
    """A shard set's statistics (:func:`pipelines.inspect.inspect_shards`), read as a job reads it."""

    spec: Annotated[list[str], LOCAL_PATH] = Field(min_length=1, description="Shard spec(s): file, directory, "
                                                   "glob, brace pattern or s3://…")
    processor: Annotated[str | None, LOCAL_PATH] = Field(None, description="Saved VisorProcessor (default: "
                                                         "SPEC/processor).")
    read: ReadSection = Field(default_factory=ReadSection)
    render: Annotated[str | None, LOCAL_PATH] = Field(None, description="Draw a few samples with their tiles to "
                                                      "PNGs in this directory.")
    render_count: int = Field(4, ge=1, description="How many samples --render draws.")
    report: Annotated[str | None, LOCAL_PATH] = Field(None, description="Write the quarantine report (JSON "
                                                      "lines) here.")
