"""VISOR: VISion On Request — a LLaVA-OneVision-style model whose text reaches the
high-resolution visual tokens only through a few cross-attention (C) and
self-attention (S) layers, with a per-sample budget of S layers.

Usable on its own (no Ray, no MLflow)::

    from visor_model import VisorForConditionalGeneration, LayerPlan
    model = VisorForConditionalGeneration.from_llava_onevision("path/to/llava-ov", plan=LayerPlan.default(24))
"""

from . import flops
from .cache import VisorCache
from .config import VisorConfig
from .modeling import GenerationResult, VisorForConditionalGeneration, VisorOutput
from .plan import LayerPlan
from .processing import VisorProcessor

__all__ = [
    "GenerationResult",
    "LayerPlan",
    "VisorCache",
    "VisorConfig",
    "VisorForConditionalGeneration",
    "VisorOutput",
    "VisorProcessor",
    "flops",
]
