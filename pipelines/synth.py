"""Deterministic synthetic fine-grained VQA shards for the tiny VISOR model (32-px tiles, patch 8, up to 3x3 grid).

Every image (64 or 96 px a side, so the anyres grids 2x2, 3x2, 2x3 and 3x3 all
occur) is a plain background divided into a 4x4 grid of cells — one cell per
token of the base tile (32 px, patch 8) — holding 1–4 black squares/circles
(one a cell, a few px smaller than its shorter side) and, in another cell, one
8x8 box: a 1-px white frame around a 6x6 interior with one of ``PATTERNS``,
aligned to the 8-px patch grid of the full-resolution tiles. Three question
types, single-word answers:

* ``coarse`` (difficulty 1) — the background colour: every token shows it;
* ``counting`` (difficulty 2) — how many shapes (``one`` .. ``four``): how many
  base-tile tokens are dark;
* ``fine`` (difficulty 3) — the box's pattern: ``horizontal`` or ``vertical``
  1-px stripes, ``checkered`` or ``plain`` grey. Every pattern averages to the
  same grey, so downscaling to the 32x32 base tile (2x or 3x) leaves only a
  faint resampling residue, while in the full-resolution tiles the pattern fills
  36 of the 64 pixels of one patch.

Training samples ask all three questions in one three-turn conversation;
held-out (eval, policy) samples ask one (see :func:`write_split`). The ``detail`` split
asks only the fine question: the first stage of a training recipe, so that looking up one
visual token among a hundred is learned before the easier questions take the model's
attention elsewhere (measured: a tiny model trained on all three questions at once often
stays at chance on *fine* for a thousand steps; see ``docs/BENCHMARKS.md``).

Why this layout (measured, see ``docs/BENCHMARKS.md``): a tiny model trained from
scratch learns to find a patch-aligned box and read a pattern that fills it in a
few hundred steps, but not a 2x2-px coloured mark inside a box at an arbitrary
offset (it stays at chance for thousands of steps); it counts black shapes that
each fill one base token, not shapes of the image's own colours and sizes.

A sample is a pure function of ``(seed, split, index)``; shards are written with
fixed tar mtimes, so the same arguments give byte-identical files.
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
BLACK = (0, 0, 0)
GREY = (128, 128, 128)
COUNTS = ["one", "two", "three", "four"]
PATTERNS = ["horizontal", "vertical", "checkered", "plain"]
IMAGE_SIZES: list[tuple[int, int]] = [(64, 64), (96, 64), (64, 96), (96, 96)]  # (width, height)
BASE_TILE = 32
GRID = 4  # cells per side: one cell per base-tile token
PATCH = 8  # the vision tower's patch: the box is aligned to it
BOX = 8  # box side in px: 1-px white frame, 6x6 patterned interior
QUESTION_TYPES = ("coarse", "counting", "fine")
DIFFICULTY = {"coarse": 1, "counting": 2, "fine": 3}
QUESTIONS = {
    "coarse": "what colour is the background ?",
    "counting": "how many shapes are there ?",
    "fine": "what pattern is in the white box ?",
}
SPLITS = {"train": 0, "eval": 1, "policy": 2, "detail": 3}
ONLY_FINE_SPLITS = {"detail"}  # every sample asks the fine question
ALL_QUESTIONS_SPLITS = {"train"}  # training samples ask all three questions; held-out ones ask one
CHANCE = {"coarse": 1 / len(COLOURS), "counting": 1 / len(COUNTS), "fine": 1 / len(PATTERNS)}  # uniform guessing


@dataclass(frozen=True)
class Sample:
    """One rendered sample; ``box_xy`` is the top-left pixel of the 8x8 box (a multiple of ``PATCH``).

    ``question_type`` is this sample's own (first) question; :meth:`answers` has every question type's answer.
    """

    key: str
    image: Image.Image
    question_type: str
    background: str
    num_shapes: int
    pattern: str
    box_xy: tuple[int, int]

    @property
    def question(self) -> str:
        return QUESTIONS[self.question_type]

    @property
    def answer(self) -> str:
        return self.answers()[self.question_type]

    def answers(self) -> dict[str, str]:
        """The answer to every question type about this image."""
        return {"coarse": self.background, "counting": COUNTS[self.num_shapes - 1], "fine": self.pattern}

    def record(self, all_questions: bool = False) -> dict[str, Any]:
        """The LLaVA-conversation JSON stored next to the image: one turn (this sample's question), or with
        ``all_questions`` three turns — this sample's question type first, then the others in cyclic order."""
        first = QUESTION_TYPES.index(self.question_type)
        kinds = (QUESTION_TYPES[first:] + QUESTION_TYPES[:first]) if all_questions else (self.question_type,)
        answers = self.answers()
        conversations: list[dict] = []
        for i, kind in enumerate(kinds):
            question = QUESTIONS[kind] if i else f"<image>\n{QUESTIONS[kind]}"
            conversations += [{"from": "human", "value": question}, {"from": "gpt", "value": answers[kind]}]
        return {
            "conversations": conversations,
            "question_type": self.question_type,
            "difficulty": DIFFICULTY[self.question_type],
        }


def vocabulary() -> list[str]:
    """Every word of every question and answer (the tokenizer splits on whitespace and punctuation)."""
    words = {w for q in QUESTIONS.values() for w in q.split()}
    return sorted(words | set(COLOURS) | set(COUNTS) | set(PATTERNS))


def pattern_pixel(pattern: str, dx: int, dy: int) -> tuple[int, int, int]:
    """The colour of interior pixel ``(dx, dy)`` (1..6 inside the frame) of a box with ``pattern``."""
    if pattern == "plain":
        return GREY
    on = {"horizontal": dy, "vertical": dx, "checkered": dx + dy}[pattern] % 2
    return WHITE if on else BLACK


def draw_box(image: Image.Image, x: int, y: int, pattern: str) -> None:
    """The 8x8 box at ``(x, y)``: white frame, ``pattern`` inside."""
    ImageDraw.Draw(image).rectangle((x, y, x + BOX - 1, y + BOX - 1), outline=WHITE)
    pixels = image.load()
    for dy in range(1, BOX - 1):
        for dx in range(1, BOX - 1):
            pixels[x + dx, y + dy] = pattern_pixel(pattern, dx, dy)


def render_sample(seed: int, split: str, index: int) -> Sample:
    """The sample ``index`` of ``split`` for ``seed``; question types cycle coarse, counting, fine (only fine
    in the ``detail`` split)."""
    rng = np.random.default_rng([seed, SPLITS[split], index])
    question_type = "fine" if split in ONLY_FINE_SPLITS else QUESTION_TYPES[index % len(QUESTION_TYPES)]
    width, height = IMAGE_SIZES[int(rng.integers(len(IMAGE_SIZES)))]
    background = list(COLOURS)[int(rng.integers(len(COLOURS)))]
    pattern = PATTERNS[int(rng.integers(len(PATTERNS)))]
    num_shapes = int(rng.integers(1, len(COUNTS) + 1))
    image = Image.new("RGB", (width, height), COLOURS[background])
    draw = ImageDraw.Draw(image)
    cell_w, cell_h = width // GRID, height // GRID
    box_cell, *shape_cells = (int(c) for c in rng.permutation(GRID * GRID)[: num_shapes + 1])

    bx = box_cell % GRID * cell_w + PATCH * int(rng.integers(cell_w // PATCH))
    by = box_cell // GRID * cell_h + PATCH * int(rng.integers(cell_h // PATCH))
    draw_box(image, bx, by, pattern)
    for cell in shape_cells:
        side = min(cell_w, cell_h) - int(rng.integers(2, 5))
        x = cell % GRID * cell_w + int(rng.integers(cell_w - side + 1))
        y = cell // GRID * cell_h + int(rng.integers(cell_h - side + 1))
        shape = draw.rectangle if rng.random() < 0.5 else draw.ellipse
        shape((x, y, x + side - 1, y + side - 1), fill=BLACK)

    return Sample(
        key=f"{split}{index:08d}", image=image, question_type=question_type, background=background,
        num_shapes=num_shapes, pattern=pattern, box_xy=(bx, by),
    )


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _split_shards(out: Path, split: str) -> list[str]:
    """Names of the ``<split>-NNNNNN.tar`` files in ``out``, sorted."""
    return sorted(p.name for p in out.glob(f"{split}-*.tar") if re.fullmatch(rf"{split}-\d{{6}}\.tar", p.name))


def write_split(out: Path, split: str, count: int, shard_size: int, seed: int) -> dict[str, int]:
    """Write ``count`` samples to ``out/<split>-%06d.tar`` (``shard_size`` a shard); returns counts per type
    (of each sample's first question).

    Samples of the splits in ``ALL_QUESTIONS_SPLITS`` ask all three questions in one conversation: three
    answers to learn from for one image's visual tokens, at almost the cost of one, so training learns the
    skills in far fewer steps (see ``docs/BENCHMARKS.md``). The held-out splits ask one question, so accuracy
    and the policy's budget are per question type.

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
                "json": json.dumps(sample.record(split in ALL_QUESTIONS_SPLITS), sort_keys=True).encode(),
            })
    return counts


def write_synth(out: Path, train: int, eval: int, shard_size: int, seed: int, policy: int = 0,
                detail: int = 0) -> dict:
    """Write train/eval/policy/detail shards (``policy``: held-out samples for the policy job; ``detail``: training
    samples that ask only the fine question), ``out/tokenizer``
    (word-level, whole vocabulary), ``out/processor`` (the
    ``VisorProcessor`` of :func:`visor_model.presets.tiny_config` with that tokenizer) and ``out/manifest.json``.

    Returns the manifest: sample counts per split and question type, seed, image sizes, colours, patterns,
    questions, the splits whose samples ask every question, shards.
    """
    from visor_model.presets import tiny_config, tiny_processor, word_tokenizer

    if shard_size < 1 or min(train, eval, policy, detail) < 0:
        raise ValueError("need shard_size >= 1 and non-negative sample counts")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    splits = {}
    for split, count in (("train", train), ("eval", eval), ("policy", policy), ("detail", detail)):
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
        "patterns": PATTERNS,
        "questions": QUESTIONS,
        "all_questions_splits": sorted(ALL_QUESTIONS_SPLITS),
        "difficulty": DIFFICULTY,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest
