"""Settings of promotion (:class:`PromotionRule`) and of ``visor promote`` (:class:`PromoteConfig`), as
:class:`jobs.config.Section` schemas."""

from __future__ import annotations

from pydantic import Field

from jobs.config import Section
from jobs.sections import TrackingSection


class PromotionRule(Section):
    """Promote when the challenger's accuracy ≥ the champion's − ``accuracy_tolerance`` and its mean FLOPs ≤
    the champion's × (1 + ``flops_tolerance``) (see :mod:`jobs.registry.promote`)."""

    accuracy_tolerance: float = Field(0.0, ge=0, description="Accuracy the challenger may lose.")
    flops_tolerance: float = Field(0.0, ge=0, description="Relative extra mean FLOPs the challenger may cost.")



class PromoteConfig(TrackingSection):
    """``visor promote``: the registered model whose challenger is judged (and the store), and the rule."""

    rule: PromotionRule = Field(default_factory=PromotionRule)
    dry_run: bool = Field(False, description="Decide and print, change nothing.")
