"""Config sections that several jobs share: where MLflow runs and models go (:class:`TrackingSection`), how
shards are read (:class:`ReadSection`), how sources are packed into shards (:class:`PackSection`), where a model
infers (:class:`InferenceSection`) and how an S3-compatible store is reached (:class:`S3Section`)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from jobs.config import LOCAL_PATH, Section, default_of
from pipelines.options import METRICS, PackOptions, ReadOptions
from pipelines.shards import S3Options


class TrackingSection(Section):
    """The MLflow store (``tracking_uri``, resolved by :func:`jobs.registry.tracking.tracking_uri`) and the
    registered model that trained versions join and whose aliases are promoted and served."""

    tracking_uri: Annotated[str | None, LOCAL_PATH] = Field(None, description="MLflow tracking URI (default: "
                                                            "$MLFLOW_TRACKING_URI or ./mlflow.db).")
    registered_model: str = Field("visor", description="Registered model (new versions join it; its aliases are "
                                  "promoted and served).")


REGISTERED_MODEL: str = default_of(TrackingSection, "registered_model")
CHAMPION, CHALLENGER = "champion", "challenger"  # the registered model's aliases: served, and awaiting promotion
DEFAULT_STORE = "mlflow.db"  # the SQLite tracking store in the working directory when no URI is set


DEVICE_PATTERN = r"^(auto|cpu|cuda(:\d+)?)$"
DTYPE_PATTERN = r"^(auto|float32|bfloat16|float16)$"


class InferenceSection(Section):
    """Where and in what precision a model infers (:mod:`jobs.inference_device`): serving replicas, scoring
    actors and the pyfunc model share these settings."""

    device: str = Field("auto", pattern=DEVICE_PATTERN, description="Where the model infers: auto (CUDA when "
                        "this process sees a GPU, else the CPU), cpu, cuda or cuda:N.")
    dtype: str = Field("auto", pattern=DTYPE_PATTERN, description="Inference precision: auto (bfloat16 on CUDA, "
                       "float32 on the CPU), float32, bfloat16 or float16 (CUDA only).")


class ReadSection(Section):
    """How shards are read and preprocessed (``pipelines.options.ReadOptions``, whose defaults these are)."""

    max_length: int = Field(default_of(ReadOptions, "max_length"), ge=8,
                            description="Longest sequence accepted, in tokens.")
    max_image_pixels: int = Field(default_of(ReadOptions, "max_image_pixels"), ge=1,
                                  description="Largest image accepted, in pixels.")
    preprocess_batch_size: int = Field(default_of(ReadOptions, "preprocess_batch_size"), ge=1,
                                       description="Samples per preprocessing (map_batches) call.")
    preprocess_cpus: float = Field(default_of(ReadOptions, "preprocess_cpus"), gt=0,
                                   description="CPUs reserved by each read and preprocessing task.")
    preprocess_concurrency: int | None = Field(default_of(ReadOptions, "preprocess_concurrency"), ge=1,
                                               description="Preprocessing tasks at once (None: Ray decides).")

    def read_options(self) -> ReadOptions:
        return ReadOptions(**{name: getattr(self, name) for name in ReadSection.model_fields})


class PackSection(Section):
    """How ``visor data pack`` turns sources into shards (``pipelines.options.PackOptions``, whose defaults these
    are)."""

    image_root: str | None = Field(default_of(PackOptions, "image_root"), description="Where the images' relative "
                                   "paths point, local or s3:// (default: each source file's folder).")
    answers_field: str | None = Field(default_of(PackOptions, "answers_field"), description="Column holding the "
                                      "reference answers (default: 'answers', else 'answer').")
    metric: str | None = Field(default_of(PackOptions, "metric"), description=f"Metric of every row: "
                               f"{', '.join(METRICS)} (default: the row's own, else its benchmark's, else none).")
    data_source: str | None = Field(default_of(PackOptions, "data_source"), description="Benchmark name stored in "
                                    "every sample (default: the row's 'data_source', else a benchmark the path names).")
    image_format: str = Field(default_of(PackOptions, "image_format"), pattern="^(keep|png|jpg)$",
                              description="keep (store the image bytes as they came), png or jpg (re-encode).")
    max_image_pixels: int = Field(default_of(PackOptions, "max_image_pixels"), ge=1,
                                  description="Largest image accepted, in pixels.")
    shard_size: int = Field(default_of(PackOptions, "shard_size"), ge=1, description="Samples per shard at most.")
    max_shard_bytes: int = Field(default_of(PackOptions, "max_shard_bytes"), ge=1,
                                 description="Bytes per shard at most (a larger sample gets a shard of its own).")
    prefix: str = Field(default_of(PackOptions, "prefix"), pattern=r"^[\w-]+$",
                        description="Shards are PREFIX-NNNNNN.tar.")
    cpus: float = Field(default_of(PackOptions, "cpus"), gt=0, description="CPUs reserved by each packing task.")

    def pack_options(self) -> PackOptions:
        return PackOptions(**{name: getattr(self, name) for name in PackSection.model_fields})


class S3Section(Section):
    """An S3-compatible store; unset fields fall back to the ``AWS_*`` environment variables.
    Credentials are never read from the config (use the environment or an instance role)."""

    endpoint_url: str | None = None
    region: str | None = None

    def options(self) -> S3Options:
        options = S3Options()
        options.endpoint_url = self.endpoint_url or options.endpoint_url
        options.region = self.region or options.region
        return options
