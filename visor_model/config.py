"""``VisorConfig``: a LLaVA-OneVision config plus the VISOR layer plan and knobs.

``VisorConfig`` subclasses ``transformers.LlavaOnevisionConfig``, so every
LLaVA-OneVision field (vision tower, projector, Qwen2 text config, anyres grid)
keeps its meaning and a VISOR model holds the same weights under the same names.
It adds:

* ``plan`` — the :class:`~visor_model.plan.LayerPlan` as a dict (default:
  ``LayerPlan.default(num_layers)``);
* ``cross_attention`` — ``"joint"`` (the layer's own attention, text queries over
  visual + text keys; no new parameters) or ``"gated"`` (a separate tanh-gated
  cross-attention sublayer before the layer, with a conditional positional
  encoding on the visual keys/values);
* ``cpe_kernel_size`` — kernel of the depthwise 1-D convolution of the gated CPE;
* ``token_reduction`` — visual-token pooling factor per tile side (1 = none,
  2 = 2×2 average pooling of every tile's patch grid);
* ``policy_hidden_size`` / ``policy_tau`` — the budget policy MLP width and the
  sufficiency threshold used by ``budget="auto"``;
* ``policy_trained`` — set by the policy job once the policy head is trained (before
  that ``"auto"`` runs an untrained head, and evaluation reports no policy row).
"""

from __future__ import annotations

from typing import Any, Literal

from transformers import LlavaOnevisionConfig

from .plan import LayerPlan

CROSS_ATTENTION_VARIANTS = ("joint", "gated")  # the first is the default
TOKEN_REDUCTIONS = (1, 2)  # visual-token pooling factors per tile side; the first (none) is the default


class VisorConfig(LlavaOnevisionConfig):
    model_type = "visor"

    plan: dict[str, Any] | None = None
    cross_attention: Literal["joint", "gated"] = CROSS_ATTENTION_VARIANTS[0]
    cpe_kernel_size: int = 7
    token_reduction: int = TOKEN_REDUCTIONS[0]
    policy_hidden_size: int = 256
    policy_tau: float = 0.5
    policy_trained: bool = False

    def __post_init__(self, **kwargs: Any) -> None:
        super().__post_init__(**kwargs)
        num_layers = self.text_config.num_hidden_layers
        if self.plan is None:
            self.plan = LayerPlan.default(num_layers).to_dict()
        elif isinstance(self.plan, LayerPlan):
            self.plan = self.plan.to_dict()
        plan = self.layer_plan  # validates
        if plan.num_layers != num_layers:
            raise ValueError(
                f"plan is for {plan.num_layers} layers but the text model has {num_layers} decoder layers"
            )
        if self.cross_attention not in CROSS_ATTENTION_VARIANTS:
            raise ValueError(
                f"cross_attention must be one of {CROSS_ATTENTION_VARIANTS}, got {self.cross_attention!r}"
            )
        if self.token_reduction not in (1, 2):
            raise ValueError(f"token_reduction must be 1 (none) or 2 (2x2 pooling), got {self.token_reduction}")
        if self.cpe_kernel_size < 1 or self.cpe_kernel_size % 2 == 0:
            raise ValueError(f"cpe_kernel_size must be a positive odd number, got {self.cpe_kernel_size}")
        if not 0.0 <= self.policy_tau <= 1.0:
            raise ValueError(f"policy_tau must lie in [0, 1], got {self.policy_tau}")
        if getattr(self.text_config, "use_sliding_window", False):
            raise ValueError("VISOR does not support sliding-window attention in the text model")

    @property
    def layer_plan(self) -> LayerPlan:
        return LayerPlan.from_dict(self.plan)

    def to_llava_onevision_config(self) -> LlavaOnevisionConfig:
        """The ``LlavaOnevisionConfig`` with the same shapes (the VISOR fields dropped)."""
        own = set(VisorConfig.__dataclass_fields__) - set(LlavaOnevisionConfig.__dataclass_fields__)
        data = {k: v for k, v in self.to_dict().items() if k not in own}
        for key in ("model_type", "transformers_version", "architectures"):
            data.pop(key, None)
        return LlavaOnevisionConfig(**data)

    @classmethod
    def from_llava_onevision_config(cls, config: LlavaOnevisionConfig, **visor_fields: Any) -> VisorConfig:
        """Copy a ``LlavaOnevisionConfig`` and add the VISOR fields given."""
        data = config.to_dict()
        for key in ("model_type", "architectures", "transformers_version"):
            data.pop(key, None)
        return cls(**data, **visor_fields)
