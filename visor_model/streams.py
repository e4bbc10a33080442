"""Split a LLaVA-OneVision input into VISOR's text and visual streams.

The processor produces LLaVA-OneVision inputs: ``input_ids`` where each image is
already expanded to ``n_i`` copies of the image token. VISOR keeps the same
positions (docs/DESIGN.md §3.2) but stores the two kinds of token apart:

* text stream ``[B, Tt]`` — the non-image, non-padding tokens of each row, in
  order, padded on the right; ``text_index`` maps them back to columns of
  ``input_ids``;
* visual stream ``[B, Nv]`` — the image features of each row, in order, padded
  on the right.

Both streams hold each row's valid tokens first and in position order (whatever
side the input was padded on); :mod:`visor_model.attention_layout` relies on this
to run causal attention without masks.

Positions are ``cumsum(kept) - 1`` over the row, where padding counts 0, text
counts 1 and image slots count 1 only when kept (with token reduction an image
of ``n_i`` slots keeps its first ``n'_i``). Without reduction and padding this
is ``0..T-1``, the reference layout; left padding only shifts a row's positions
by a constant, which rotary embeddings do not see.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Streams:
    """Token layout of one batch. Shapes: B rows, Tt text slots, Nv visual slots."""

    text_ids: torch.LongTensor  # [B, Tt] token ids (pad id where invalid)
    text_index: torch.LongTensor  # [B, Tt] column in input_ids of each text slot
    text_pos: torch.LongTensor  # [B, Tt]
    text_valid: torch.BoolTensor  # [B, Tt]
    visual_pos: torch.LongTensor  # [B, Nv]
    visual_valid: torch.BoolTensor  # [B, Nv]

    @property
    def num_visual(self) -> torch.LongTensor:
        """Visual tokens per row, ``[B]``."""
        return self.visual_valid.sum(1)

    @property
    def last_position(self) -> torch.LongTensor:
        """Largest position of a valid token (text or visual) per row, ``[B]``."""
        last = self.text_pos.masked_fill(~self.text_valid, -1).amax(1)
        if self.visual_pos.shape[1]:
            last = torch.maximum(last, self.visual_pos.masked_fill(~self.visual_valid, -1).amax(1))
        return last

    @property
    def num_text(self) -> torch.LongTensor:
        """Valid text tokens per row, ``[B]``."""
        return self.text_valid.sum(1)


def _compact(select: torch.BoolTensor) -> tuple[torch.LongTensor, torch.BoolTensor]:
    """Column indices of the selected entries of each row, left-aligned.

    Returns ``(index [B, M], valid [B, M])`` with ``M`` the largest per-row count;
    ``index`` is 0 where ``valid`` is False.
    """
    counts = select.sum(1)
    width = int(counts.max()) if select.numel() else 0
    order = torch.argsort((~select).to(torch.int8), dim=1, stable=True)[:, :width]
    valid = torch.arange(width, device=select.device)[None, :] < counts[:, None]
    return order * valid, valid


def prompt_columns(labels: torch.LongTensor) -> torch.BoolTensor:
    """``[B, T]``: the columns of ``labels`` (``input_ids`` layout, -100 = not trained) before each row's first
    labelled column — the prompt; the token just before that column predicts the first answer token."""
    columns = torch.arange(labels.shape[1], device=labels.device)
    first = torch.where(labels != -100, columns, labels.shape[1]).amin(1, keepdim=True)
    return columns < first


def split_streams(
    input_ids: torch.LongTensor,
    attention_mask: torch.Tensor | None,
    image_token_id: int,
    slots_per_image: list[int],
    kept_per_image: list[int],
    pad_token_id: int = 0,
) -> Streams:
    """Build the text/visual layout of ``input_ids``.

    ``slots_per_image[k]`` is the number of image tokens image ``k`` occupies in
    ``input_ids`` (images in row-major order); ``kept_per_image[k] <= slots`` is
    how many visual tokens the model actually has for it.
    """
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    attention_mask = attention_mask.bool()
    is_image = input_ids == image_token_id
    num_slots = int(is_image.sum())
    if num_slots != sum(slots_per_image):
        raise ValueError(
            f"the number of images does not match the <image> placeholders: input_ids hold {num_slots} image "
            f"tokens but the {len(slots_per_image)} image(s) given need {sum(slots_per_image)} "
            f"({slots_per_image}); pass input_ids and pixel_values from the same processor call"
        )
    keep = attention_mask & ~is_image
    if num_slots:
        device = input_ids.device
        starts = torch.tensor([0, *slots_per_image], device=device).cumsum(0)
        kept = torch.tensor(kept_per_image, device=device)
        rank = torch.arange(num_slots, device=device)
        image_of_slot = torch.searchsorted(starts[1:], rank, right=True)
        slot_kept = (rank - starts[image_of_slot]) < kept[image_of_slot]
        keep = keep.masked_scatter(is_image, slot_kept & attention_mask[is_image])
    positions = keep.long().cumsum(1) - 1

    text_index, text_valid = _compact(~is_image & attention_mask)
    visual_index, visual_valid = _compact(is_image & keep)
    text_ids = input_ids.gather(1, text_index).masked_fill(~text_valid, pad_token_id)
    return Streams(
        text_ids=text_ids,
        text_index=text_index,
        text_pos=positions.gather(1, text_index).clamp(min=0),
        text_valid=text_valid,
        visual_pos=positions.gather(1, visual_index).clamp(min=0),
        visual_valid=visual_valid,
    )


def scatter_visual(features: list[torch.Tensor], visual_valid: torch.BoolTensor) -> torch.Tensor:
    """Place per-image features ``[n'_k, D]`` (row-major image order) into ``[B, Nv, D]``."""
    batch, width = visual_valid.shape
    if not features:
        raise ValueError("scatter_visual needs at least one image")
    flat = features[0] if len(features) == 1 else torch.cat(features, dim=0)
    if bool(visual_valid.all()):  # every row full: row-major order is the features' order, no copy
        return flat.view(batch, width, flat.shape[-1])
    out = flat.new_zeros(batch, width, flat.shape[-1])
    return out.masked_scatter(visual_valid[..., None], flat)
