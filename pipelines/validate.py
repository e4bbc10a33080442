"""Validation of one raw sample: decode its JSON and image, or name why it is rejected.

A sample is ``<key>.json`` in the LLaVA conversation format
(``{"conversations": [{"from": "human", "value": "<image>\\n…"}, {"from": "gpt", "value": "…"}, …]}``,
other fields kept as metadata; optional ``answers`` — a list of reference strings — and ``metric`` — one of
:data:`METRICS` — say how a generated answer is scored) plus at most one ``<key>.jpg|jpeg|png|webp``.
:func:`parse_sample` returns a :class:`ParsedSample` or raises :class:`Rejected`
with one of :data:`REASONS`; nothing else escapes it.
"""

from __future__ import annotations

import io
import json
import warnings
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from .options import METRICS

IMAGE_PLACEHOLDER = "<image>"
USER_ROLES = ("human", "user")
ASSISTANT_ROLES = ("gpt", "assistant")

REASONS: dict[str, str] = {
    "truncated_shard": "the tar ends inside this sample (truncated or corrupt shard)",
    "duplicate_member": "two members with the same name in one sample",
    "split_sample": "the sample's members are not contiguous in the tar",
    "multiple_images": "more than one image file in one sample",
    "empty_file": "a zero-byte image or JSON member",
    "missing_json": "an image without a JSON member",
    "missing_image": "the conversation has an <image> placeholder but the sample has no image",
    "malformed_json": "the JSON member does not parse",
    "non_utf8_text": "the JSON member is not valid UTF-8",
    "bad_conversation": "no alternating human/gpt turns with string values",
    "no_image_placeholder": "an image but no <image> placeholder in the first human turn",
    "extra_image_placeholders": "more <image> placeholders than images",
    "empty_answer": "an answer that is empty or only whitespace",
    "undecodable_image": "the image bytes are truncated or not an image",
    "decompression_bomb": "the image declares more pixels than the configured limit",
    "too_long": "the tokenized sequence is longer than the configured max_length",
    "processing_error": "the processor raised an unexpected error (see the detail)",
    "bad_answers": "'answers' is not a non-empty list of non-empty strings",
    "unknown_metric": f"'metric' is not one of {', '.join(METRICS)}",
    "missing_image_file": "the source row names an image file that does not exist (visor data pack)",
    "unreadable_source": "a source file or row that does not parse as JSON (visor data pack)",
}


class Rejected(Exception):
    """A sample that must be quarantined: ``reason`` (a key of :data:`REASONS`) and a ``detail``."""

    def __init__(self, reason: str, detail: str = ""):
        assert reason in REASONS, reason
        super().__init__(f"{reason}: {detail or REASONS[reason]}")
        self.reason = reason
        self.detail = detail or REASONS[reason]


@dataclass
class ParsedSample:
    """A sample that passed validation; ``turns`` are (question, answer) pairs with the
    ``<image>`` placeholder removed from the first question; ``image`` is RGB or None."""

    turns: list[tuple[str, str]]
    image: Image.Image | None
    metadata: dict[str, Any] = field(default_factory=dict)


def _conversation(record: Any) -> list[tuple[str, str]]:
    if not isinstance(record, dict) or not isinstance(record.get("conversations"), list):
        raise Rejected("bad_conversation", "no 'conversations' list")
    messages = record["conversations"]
    if not messages or len(messages) % 2:
        raise Rejected("bad_conversation", f"{len(messages)} messages (need human/gpt pairs)")
    turns = []
    for user, assistant in zip(messages[::2], messages[1::2], strict=True):
        for message, roles in ((user, USER_ROLES), (assistant, ASSISTANT_ROLES)):
            if not isinstance(message, dict) or message.get("from") not in roles:
                raise Rejected("bad_conversation", f"expected a message from one of {roles}")
            if not isinstance(message.get("value"), str):
                raise Rejected("bad_conversation", "a message 'value' is not a string")
        turns.append((user["value"], assistant["value"]))
    return turns


def decode_image(data: bytes, max_pixels: int) -> Image.Image:
    """RGB image from encoded bytes; checks the declared size against ``max_pixels`` before decoding."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                raise Rejected("decompression_bomb", f"{width}x{height} > max_pixels={max_pixels}")
            image.load()
    except Rejected:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise Rejected("decompression_bomb", f"{err} (max_pixels={max_pixels})") from err
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, struct.error, ...
        raise Rejected("undecodable_image", f"{type(err).__name__}: {err}") from err
    if width < 1 or height < 1:
        raise Rejected("undecodable_image", f"image of size {width}x{height}")
    return to_rgb(image)


def to_rgb(image: Image.Image) -> Image.Image:
    """``image`` as 8-bit RGB. Pillow's own ``convert("RGB")`` clips the 16-bit (``I;16*``) and 32-bit (``I``, ``F``)
    grey modes to 0-255, turning every 16-bit greyscale PNG into black and white: their values are scaled instead
    (16-bit and integer: ``/257``; float: taken as 0-1)."""
    if image.mode.startswith("I") or image.mode == "F":
        import numpy as np

        values = np.asarray(image, dtype=np.float64)
        values = values * 255 if image.mode == "F" else values / 257
        image = Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), "L")
    return image.convert("RGB")


def check_references(record: dict) -> None:
    """Raise :class:`Rejected` unless the optional ``answers`` (a non-empty list of non-empty strings: the
    references a generated answer is scored against) and ``metric`` (one of :data:`METRICS`) are well formed."""
    answers = record.get("answers")
    if answers is not None and (not isinstance(answers, list) or not answers
                                or not all(isinstance(a, str) and a.strip() for a in answers)):
        raise Rejected("bad_answers", f"answers = {str(answers)[:200]}")
    metric = record.get("metric")
    if metric is not None and metric not in METRICS:
        raise Rejected("unknown_metric", f"metric = {str(metric)[:100]}")


def parse_sample(image: bytes | None, record: bytes | None, max_pixels: int) -> ParsedSample:
    """Validate one sample's raw members (see the module docstring)."""
    if (image is not None and len(image) == 0) or (record is not None and len(record) == 0):
        raise Rejected("empty_file")
    if record is None:
        raise Rejected("missing_json")
    try:
        text = record.decode("utf-8")
    except UnicodeDecodeError as err:
        raise Rejected("non_utf8_text", str(err)) from err
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise Rejected("malformed_json", str(err)) from err
    turns = _conversation(data)
    placeholders = [question.count(IMAGE_PLACEHOLDER) for question, _ in turns]
    if image is None and sum(placeholders):
        raise Rejected("missing_image")
    if image is not None and placeholders[0] == 0:
        raise Rejected("no_image_placeholder")
    if sum(placeholders) > (1 if image is not None else 0):
        raise Rejected("extra_image_placeholders", f"{sum(placeholders)} placeholders")
    if any(not answer.strip() for _, answer in turns):
        raise Rejected("empty_answer")
    check_references(data)
    first = turns[0][0].replace(IMAGE_PLACEHOLDER, "").strip()
    turns = [(first, turns[0][1].strip())] + [(q.strip(), a.strip()) for q, a in turns[1:]]
    metadata = {k: v for k, v in data.items() if k != "conversations"}
    return ParsedSample(turns, decode_image(image, max_pixels) if image is not None else None, metadata)
