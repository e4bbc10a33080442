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


def _register_with_auto_classes() -> None:
    """Make ``visor`` a model type ``transformers`` knows: ``AutoConfig``, ``AutoModelForImageTextToText`` and
    ``AutoProcessor`` load a saved VISOR directory, and loading its tokenizer or processor reads the config
    without warning that a ``visor`` config instantiates a base config."""
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    AutoConfig.register(VisorConfig.model_type, VisorConfig, exist_ok=True)
    AutoModelForImageTextToText.register(VisorConfig, VisorForConditionalGeneration, exist_ok=True)
    AutoProcessor.register(VisorConfig, VisorProcessor, exist_ok=True)


_register_with_auto_classes()

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
