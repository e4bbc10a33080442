"""LLaVA-OneVision's anyres rule: how many tiles and visual tokens an image of a given size becomes.

``transformers`` decides the tile grid from the image size (``image_size_to_num_patches``: the best
pinpoint resolution, plus the base tile) and packs the tiles' patch grids into the visual tokens
(``LlavaOnevisionModel.pack_image_features``: unpad to the image's aspect ratio, shrink to at most
``anyres_max_9`` base tiles of tokens, one newline token per row). These functions run that same code on
a one-channel dummy, so a count is exactly what the model would produce, with no weights and no image —
what :mod:`visor_model.flops` and ``visor flops --image-size`` need. With ``token_reduction`` the packing
runs on the pooled grid, as :class:`~visor_model.modeling.VisorBackbone` does.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
from transformers.models.llava_onevision.modeling_llava_onevision import (
    LlavaOnevisionModel,
    image_size_to_num_patches,
)

from .config import VisorConfig


def pooled_side(config: VisorConfig) -> int:
    """Side of a tile's patch grid after ``token_reduction`` (``ceil(side / factor)``)."""
    vision = config.vision_config
    return -(-(vision.image_size // vision.patch_size) // config.token_reduction)


def packing_view(config: VisorConfig) -> SimpleNamespace:
    """What ``LlavaOnevisionModel.pack_image_features`` reads of ``self`` for the (pooled) patch grid: the
    tile size, a patch size giving :func:`pooled_side` patches a side, and the pinpoints."""
    vision = config.vision_config
    side = pooled_side(config)
    patch = vision.image_size // side
    if vision.image_size // patch != side:
        raise ValueError(
            f"token_reduction={config.token_reduction} does not fit a "
            f"{vision.image_size // vision.patch_size}x{vision.image_size // vision.patch_size} patch grid"
        )
    return SimpleNamespace(config=SimpleNamespace(
        vision_config=SimpleNamespace(image_size=vision.image_size, patch_size=patch),
        image_grid_pinpoints=config.image_grid_pinpoints,
    ))


def num_tiles(config: VisorConfig, height: int, width: int) -> int:
    """Tiles (base tile included) of one image of ``height × width`` pixels."""
    return image_size_to_num_patches((height, width), config.image_grid_pinpoints, config.vision_config.image_size)


def image_tokens(config: VisorConfig, height: int, width: int) -> tuple[int, int]:
    """``(tiles, visual tokens)`` of one image of ``height × width`` pixels, the tokens after any token
    reduction: exactly what the model's vision path gives it."""
    if height < 1 or width < 1:
        raise ValueError(f"an image size must be positive, got {height}x{width}")
    tiles = num_tiles(config, height, width)
    dummy = torch.ones(tiles, pooled_side(config) ** 2, 1)
    packed, _ = LlavaOnevisionModel.pack_image_features(
        packing_view(config), [dummy], torch.tensor([[height, width]]), torch.ones(1), config.vision_aspect_ratio
    )
    return tiles, packed[0].shape[0]
