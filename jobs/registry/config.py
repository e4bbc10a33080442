"""Settings of promotion (:class:`PromotionRule`, ``visor promote``), as a :class:`jobs.config.Section` schema."""

from __future__ import annotations

from pydantic import Field

from jobs.config import Section


class PromotionRule(Section):
    """Promote when the challenger's accuracy ≥ the champion's − ``accuracy_tolerance`` and its mean FLOPs ≤
    the champion's × (1 + ``flops_tolerance``) (see :mod:`jobs.registry.promote`)."""

    accuracy_tolerance: float = Field(0.0, ge=0, description="Accuracy the challenger may lose.")
    flops_tolerance: float = Field(0.0, ge=0, description="Relative extra mean FLOPs the challenger may cost.")

