"""Deterministic synthetic fine-grained VQA shards for the tiny VISOR model (32-px tiles, up to 3x3 grid).

Every image (64 or 96 px a side, so the anyres grids 2x2, 3x2, 2x3 and 3x3 all
occur) has a plain background, 1–4 large filled squares/circles of one other
colour (8–14 px) and one small box: a 1-px white frame around a grey 4x4 interior
holding a 2x2-px coloured mark. Three question types, single-word answers:

* ``coarse`` (difficulty 1) — the background colour: readable from the 32x32 base tile;
* ``counting`` (difficulty 2) — how many large shapes (``one`` .. ``four``);
* ``fine`` (difficulty 3) — the colour of the mark. The mark straddles base-tile
  pixel boundaries on both axes, so downscaling to 32x32 spreads it over four
  pixels at <= 1/4 coverage each and mixes it with the grey/white box: its colour
  is gone from the base tile, while the full-resolution tiles keep it exactly.

A sample is a pure function of ``(seed, split, index)``; shards are written with
fixed tar mtimes, so the same arguments give byte-identical files.
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (40, 60, 220),
    "yellow": (240, 220, 30),
    "purple": (140, 40, 170),
    "orange": (245, 140, 20),
}
WHITE = (255, 255, 255)
GREY = (128, 128, 128)
COUNTS = ["one", "two", "three", "four"]
IMAGE_SIZES: list[tuple[int, int]] = [(64, 64), (96, 64), (64, 96), (96, 96)]  # (width, height)
BASE_TILE = 32
QUESTION_TYPES = ("coarse", "counting", "fine")
DIFFICULTY = {"coarse": 1, "counting": 2, "fine": 3}
QUESTIONS = {
    "coarse": "what colour is the background ?",
    "counting": "how many shapes are there ?",
    "fine": "what colour is the dot in the white box ?",
}
SPLITS = {"train": 0, "eval": 1, "policy": 2}
MARK = 2  # mark side in px
BOX = 8  # box side in px: 1-px white frame, 6x6 grey inside, the mark somewhere inside


@dataclass(frozen=True)
class Sample:
    """One rendered sample; ``mark_xy`` is the top-left pixel of the 2x2 mark."""

    key: str
    image: Image.Image
    question_type: str
    question: str
    answer: str
    background: str
    shape_colour: str
    num_shapes: int
    mark_colour: str
    mark_xy: tuple[int, int]

    def record(self) -> dict:
        """The LLaVA-conversation JSON stored next to the image."""
        return {
            "conversations": [
                {"from": "human", "value": f"<image>\n{self.question}"},
                {"from": "gpt", "value": self.answer},
            ],
            "question_type": self.question_type,
            "difficulty": DIFFICULTY[self.question_type],
        }


def vocabulary() -> list[str]:
    """Every word of every question and answer (the tokenizer splits on whitespace and punctuation)."""
    words = {w for q in QUESTIONS.values() for w in q.split()}
    return sorted(words | set(COLOURS) | set(COUNTS))


def _straddling(rng: np.random.Generator, low: int, high: int, scale: float) -> int:
    """A coordinate in [low, high] where a 2-px mark crosses a base-tile pixel boundary (``scale`` px a pixel)
    but not a full-resolution tile boundary (every ``BASE_TILE`` px)."""
    options = [x for x in range(low, high + 1) if int((x + 1) / scale) != int(x / scale) and (x + 1) % BASE_TILE]
    return int(rng.choice(options)) if options else int(rng.integers(low, high + 1))


def _overlaps(a: tuple[int, int, int, int], b: tuple[int, int, int, int], gap: int = 2) -> bool:
    return not (a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1])


def render_sample(seed: int, split: str, index: int) -> Sample:
    """The sample ``index`` of ``split`` for ``seed``; question types cycle coarse, counting, fine."""
    rng = np.random.default_rng([seed, SPLITS[split], index])
    question_type = QUESTION_TYPES[index % len(QUESTION_TYPES)]
    width, height = IMAGE_SIZES[int(rng.integers(len(IMAGE_SIZES)))]
    names = list(COLOURS)
    background, shape_colour, mark_colour = (names[i] for i in rng.permutation(len(names))[:3])
    image = Image.new("RGB", (width, height), COLOURS[background])
    draw = ImageDraw.Draw(image)

    # The box first, then shapes placed around it.
    bx = int(rng.integers(1, width - BOX - 1))
    by = int(rng.integers(1, height - BOX - 1))
    box = (bx, by, bx + BOX - 1, by + BOX - 1)
    draw.rectangle(box, fill=GREY, outline=WHITE)
    mx = _straddling(rng, bx + 1, bx + BOX - 1 - MARK, width / BASE_TILE)
    my = _straddling(rng, by + 1, by + BOX - 1 - MARK, height / BASE_TILE)
    draw.rectangle((mx, my, mx + MARK - 1, my + MARK - 1), fill=COLOURS[mark_colour])

    num_shapes = int(rng.integers(1, len(COUNTS) + 1))
    placed: list[tuple[int, int, int, int]] = [box]
    while len(placed) < num_shapes + 1:
        side = int(rng.integers(8, 15))
        x, y = int(rng.integers(0, width - side + 1)), int(rng.integers(0, height - side + 1))
        rect = (x, y, x + side - 1, y + side - 1)
        if any(_overlaps(rect, other) for other in placed):
            continue
        placed.append(rect)
        if rng.random() < 0.5:
            draw.rectangle(rect, fill=COLOURS[shape_colour])
        else:
            draw.ellipse(rect, fill=COLOURS[shape_colour])

    answer = {"coarse": background, "counting": COUNTS[num_shapes - 1], "fine": mark_colour}[question_type]
    return Sample(
        key=f"{split}{index:08d}", image=image, question_type=question_type, question=QUESTIONS[question_type],
        answer=answer, background=background, shape_colour=shape_colour, num_shapes=num_shapes,
        mark_colour=mark_colour, mark_xy=(mx, my),
    )


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _split_shards(out: Path, split: str) -> list[str]:
    """Names of the ``<split>-NNNNNN.tar`` files in ``out``, sorted."""
    return sorted(p.name for p in out.glob(f"{split}-*.tar") if re.fullmatch(rf"{split}-\d{{6}}\.tar", p.name))


def write_split(out: Path, split: str, count: int, shard_size: int, seed: int) -> dict[str, int]:
    """Write ``count`` samples to ``out/<split>-%06d.tar`` (``shard_size`` a shard); returns counts per type.

    Existing ``out/<split>-NNNNNN.tar`` files are deleted first, so the directory holds exactly this split.
    """
    import webdataset as wds

    counts = dict.fromkeys(QUESTION_TYPES, 0)
    for stale in _split_shards(out, split):  # shards of an earlier run would otherwise join this split
        (out / stale).unlink()
    if count == 0:
        return counts
    pattern = str(out / f"{split}-%06d.tar")
    with wds.ShardWriter(pattern, maxcount=shard_size, verbose=0, mtime=0.0, user="visor", group="visor") as sink:
        for index in range(count):
            sample = render_sample(seed, split, index)
            counts[sample.question_type] += 1
            sink.write({
                "__key__": sample.key,
                "png": _png(sample.image),
                "json": json.dumps(sample.record(), sort_keys=True).encode(),
            })
    return counts


def write_synth(out: Path, train: int, eval: int, shard_size: int, seed: int, policy: int = 0) -> dict:
    """Write train/eval/policy shards (``policy``: held-out samples for the policy job), ``out/tokenizer``
    (word-level, whole vocabulary), ``out/processor`` (the
    ``VisorProcessor`` of :func:`visor_model.presets.tiny_config` with that tokenizer) and ``out/manifest.json``.

    Returns the manifest: sample counts per split and question type, seed, image sizes, colours, shards.
    """
    from visor_model.presets import tiny_config, tiny_processor, word_tokenizer

    if shard_size < 1 or min(train, eval, policy) < 0:
        raise ValueError("need shard_size >= 1 and non-negative sample counts")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    splits = {}
    for split, count in (("train", train), ("eval", eval), ("policy", policy)):
        by_type = write_split(out, split, count, shard_size, seed)
        shards = _split_shards(out, split)
        splits[split] = {"samples": count, "question_types": by_type, "shards": shards}
    tokenizer = word_tokenizer(vocabulary())
    tokenizer.save_pretrained(out / "tokenizer")
    tiny_processor(tokenizer, tiny_config(len(tokenizer))).save_pretrained(out / "processor")
    manifest = {
        "seed": seed,
        "shard_size": shard_size,
        "splits": splits,
        "image_sizes": [list(s) for s in IMAGE_SIZES],
        "base_tile": BASE_TILE,
        "colours": list(COLOURS),
        "questions": QUESTIONS,
        "difficulty": DIFFICULTY,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest
