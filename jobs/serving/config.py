"""Settings of the endpoint (:class:`ServeConfig`, and :class:`~jobs.inputs.Limits`, which the ``mlflow.pyfunc``
model shares), as :class:`jobs.config.Section` schemas.

``visor serve`` takes its flags' defaults and help from these fields, a Ray Serve ``serveConfigV2``
passes them as the application's ``args`` (:func:`jobs.serving.serve.app_builder`), and the infra values
file declares the same fields (``serve:``) for the RayService it renders.
"""

from __future__ import annotations

import os

from pydantic import Field, model_validator

from jobs.config import Section, field_of
from jobs.inputs import Limits
from jobs.sections import CHAMPION, REGISTERED_MODEL, InferenceSection, TrackingSection

__all__ = ["Limits", "ServeConfig", "TOKEN_ENV"]

TOKEN_ENV = "VISOR_API_TOKEN"


class ServeConfig(Section):
    """Server settings; ``api_token`` defaults to ``$VISOR_API_TOKEN`` (None: no authentication)."""

    renamed = {"model_uri": "model", "num_replicas": "replicas", "reload_poll_s": "reload_poll_seconds",
               "batch_wait_timeout_s": "batch_wait_timeout_seconds"}

    model: str = Field(f"models:/{REGISTERED_MODEL}@{CHAMPION}", description="MLflow model URI to serve.")
    tracking_uri: str | None = field_of(TrackingSection, "tracking_uri")
    host: str = Field("127.0.0.1", description="Address of the HTTP proxy.")
    port: int = Field(8000, ge=0, le=65535, description="Port of the HTTP proxy.")
    replicas: int = Field(1, ge=1, description="Model replicas.")
    cpus_per_replica: float = Field(1.0, gt=0, description="CPUs reserved by each replica.")
    replica_gpus: float = Field(0.0, ge=0, description="GPUs Ray reserves for each replica (a fraction shares one; "
                                "0: none, the replica infers on its CPUs).")
    device: str = field_of(InferenceSection, "device")
    dtype: str = field_of(InferenceSection, "dtype")
    max_ongoing_requests: int = Field(32, ge=1, description="In-flight requests per replica.")
    max_batch_size: int = Field(8, ge=1, description="Rows decoded together (a request of n choices takes n).")
    max_queued_requests: int = Field(64, ge=1, description="Requests that may wait for a decode slot; more get "
                                     "429 with Retry-After.")
    batch_wait_timeout_seconds: float = Field(0.02, ge=0, description="How long an idle replica waits for more "
                                              "requests before prefilling the first, in seconds.")
    image_cache_mb: float = Field(256.0, ge=0, description="Image-feature cache of each replica, in MiB of visual "
                                  "tokens (least recently used images evicted; 0: off).")
    reload_poll_seconds: float = Field(0.0, ge=0, description="Seconds between checks of the alias (0: only on "
                                       "POST /admin/reload).")
    api_token: str | None = Field(default_factory=lambda: os.environ.get(TOKEN_ENV) or None, repr=False)
    limits: Limits = Field(default_factory=Limits)

    @property
    def batch_wait_timeout_s(self) -> float:
        """The old name, read by ``jobs/serving/serve.py`` until it moves to ``batch_wait_timeout_seconds`` (issue 30,
        branch issue-30-openai); the key itself is accepted as a deprecated alias (``renamed``)."""
        return self.batch_wait_timeout_seconds

    @model_validator(mode="after")
    def _batches_can_fill(self) -> ServeConfig:
        if self.max_ongoing_requests < self.max_batch_size:
            raise ValueError("max_ongoing_requests must be >= max_batch_size, or batches can never fill")
        return self
