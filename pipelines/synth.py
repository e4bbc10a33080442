"""Deterministic synthetic fine-grained VQA shards for the tiny VISOR model (32-px tiles, patch 8, 2x2 grid).

Every image is 64x64 px (an exact 2x2 grid of full-resolution tiles; the base tile is the image
halved) on a plain background holding three 8x8 boxes aligned to the 8-px patch grid, so each box is
exactly one visual token: a 1-px frame around a 6x6 interior with one of ``PATTERNS``. Two boxes have
white frames and sit one above the other inside one 2x2 window of patches (the window 2x2 token
reduction averages into one token), with different patterns; the third, a distractor, has a black
frame and sits away from the pair's rows (see :func:`render_sample`). Two question types, single-word answers:

* ``coarse`` (difficulty 1) — the background colour: every token shows it;
* ``fine`` (difficulty 2) — the pattern of the *top* (or *bottom*) white box. Both white boxes look
  alike, so which one is on top exists only in how the two tokens relate: the bottom box's upper
  neighbour — nine visual tokens earlier in the sequence (eight patches and the row's
  ``image_newline``) — is a white box, the top box's is not. A model answers only if visual tokens
  attend to each other before the text reads them — every layer of full attention, VISOR's S layers.

What cannot answer it, by construction (tested through the real model, ``tests/pipelines/test_synth.py``:
an image and its twin with the two patterns exchanged give *identical* outputs):

* 2x2 pooling: the pair is averaged into one token;
* gated C layers alone (budget 0; the recipes' variant): they read visual tokens without rotary
  positions, through a convolution over the visual sequence (kernel 7), and the pair is placed where
  both boxes' neighbourhoods hold the same tokens at the same offsets, so the two tokens are
  exchangeable (see :func:`render_sample`). The ``joint`` variant gives visual keys rotary
  positions, so its budget 0 could order the pair: the miniature is built for ``gated``;
* the base tile: the synthetic processor halves the image with nearest-neighbour sampling (every
  second pixel, odd rows and columns), and every pattern is white on exactly those pixels, so in the
  overview every white box is the same white square. (The bicubic default leaves an order-dependent
  trace of the pair there, which a model learned to read: docs/BENCHMARKS.md.)

The miniature relies on a vision tower that sees patches, not relations: the ``bench-quality`` and
demo recipes use ``model.tiny.vision: patches`` (the patch embedding alone, no position, frozen;
:func:`visor_model.presets.tiny_config`), so relating visual tokens happens in the language model, as
it does for SigLIP's local features in the paper.

Training samples ask all three questions (coarse, top, bottom) in one conversation; held-out (eval,
policy) samples ask one (see :func:`write_split`), *fine* alternating top and bottom. The ``detail``
split asks only the fine questions (top and bottom): the first stage of a training recipe, so that
ordering the pair is learned before the easy question takes the model's attention elsewhere (see
``docs/BENCHMARKS.md``).

A sample is a pure function of ``(seed, split, index)``; shards are written with fixed tar mtimes,
so the same arguments give byte-identical files.
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
PATTERNS = ["horizontal", "vertical", "checkered", "dotted"]
IMAGE_SIZES: list[tuple[int, int]] = [(64, 64)]  # (width, height): the base tile is the image halved, exactly
BASE_TILE = 32
OVERVIEW_RESAMPLE = Image.Resampling.NEAREST  # halving keeps the odd pixels, where every pattern is white
PATCH = 8  # the vision tower's patch: every box is one patch
WINDOW = 2 * PATCH  # the 2x2 window of patches that token reduction pools into one token
BOX = 8  # box side in px: 1-px frame, 6x6 patterned interior
QUESTION_TYPES = ("coarse", "fine")
DIFFICULTY = {"coarse": 1, "fine": 2}
PAIR_COLUMNS = (3, 4)  # the pair's patch column and row of windows (below): see ``render_sample``
PAIR_WINDOW_ROWS = (1, 2)
QUESTIONS = {
    "coarse": "what colour is the background ?",
    "top": "what pattern is in the top white box ?",
    "bottom": "what pattern is in the bottom white box ?",
}
"""Each question by the answer it asks for: the fine type asks ``top`` or ``bottom``."""
SIDES = ("top", "bottom")
TRAINING_TURNS = ("coarse", *SIDES)
DETAIL_TURNS = SIDES  # the fine questions alone: the first stage of a recipe
SPLITS = {"train": 0, "eval": 1, "policy": 2, "detail": 3}
ONLY_FINE_SPLITS = {"detail"}  # every sample's own question is fine; it asks the box questions
ALL_QUESTIONS_SPLITS = {"train"}  # training samples ask every question; held-out ones ask one
CHANCE = {"coarse": 1 / len(COLOURS), "fine": 1 / len(PATTERNS)}  # uniform guessing


@dataclass(frozen=True)
class Sample:
    """One rendered sample. ``pair`` holds the (top, bottom) white boxes' patterns (different), ``pair_xy`` the
    top-left pixel of the top one (column ``PATCH * PAIR_COLUMNS``, row a multiple of ``WINDOW``: both boxes in
    one pooling window); ``black``/``black_xy`` the distractor's pattern and top-left pixel (not in the patch row
    above the pair, the pair's rows or the row below).

    ``question_type`` is this sample's own (first) question; ``side`` (``top``/``bottom``) which white box a
    *fine* question asks for; :meth:`answers` has every question's answer.
    """

    key: str
    image: Image.Image
    question_type: str
    side: str
    background: str
    pair: tuple[str, str]
    pair_xy: tuple[int, int]
    black: str
    black_xy: tuple[int, int]

    @property
    def kind(self) -> str:
        """The question this sample asks: a key of ``QUESTIONS``."""
        return self.side if self.question_type == "fine" else self.question_type

    @property
    def question(self) -> str:
        return QUESTIONS[self.kind]

    @property
    def answer(self) -> str:
        return self.answers()[self.kind]

    def answers(self) -> dict[str, str]:
        """The answer to every question (keys of ``QUESTIONS``) about this image."""
        return {"coarse": self.background, SIDES[0]: self.pair[0], SIDES[1]: self.pair[1]}

    def record(self, kinds: tuple[str, ...] | None = None) -> dict[str, Any]:
        """The LLaVA-conversation JSON stored next to the image: one turn per question of ``kinds`` (default:
        this sample's own question), the image in the first."""
        answers = self.answers()
        conversations: list[dict] = []
        for i, kind in enumerate(kinds or (self.kind,)):
            question = QUESTIONS[kind] if i else f"<image>\n{QUESTIONS[kind]}"
            conversations += [{"from": "human", "value": question}, {"from": "gpt", "value": answers[kind]}]
        return {
            "conversations": conversations,
            "question_type": self.question_type,
            "difficulty": DIFFICULTY[self.question_type],
        }

    def turns_for(self, split: str) -> tuple[str, ...]:
        """The questions a sample of ``split`` asks: every question in a training split (``TRAINING_TURNS``), the
        fine questions in the ``detail`` split (``DETAIL_TURNS``), this sample's own first and the others in cyclic
        order; its own question alone in a held-out split."""
        turns = TRAINING_TURNS if split in ALL_QUESTIONS_SPLITS else DETAIL_TURNS if split in ONLY_FINE_SPLITS else ()
        if not turns:
            return (self.kind,)
        first = turns.index(self.kind)
        return turns[first:] + turns[:first]


def vocabulary() -> list[str]:
    """Every word of every question and answer (the tokenizer splits on whitespace and punctuation)."""
    words = {w for q in QUESTIONS.values() for w in q.split()}
    return sorted(words | set(COLOURS) | set(PATTERNS))


def pattern_pixel(pattern: str, dx: int, dy: int) -> tuple[int, int, int]:
    """The colour of interior pixel ``(dx, dy)`` (1..6 inside the frame) of a box with ``pattern``: black stripes
    on the even rows (``horizontal``) or columns (``vertical``), a checkerboard, or black dots where both are
    even (``dotted``). Every pattern is white where ``dx`` and ``dy`` are both odd — the pixels the base tile
    keeps (nearest-neighbour halving), so there every white box is the same white square."""
    black = {
        "horizontal": dy % 2 == 0,
        "vertical": dx % 2 == 0,
        "checkered": (dx + dy) % 2 == 1,
        "dotted": dx % 2 == 0 and dy % 2 == 0,
    }[pattern]
    return BLACK if black else WHITE


def draw_box(image: Image.Image, x: int, y: int, pattern: str, frame: tuple[int, int, int] = WHITE) -> None:
    """The 8x8 box at ``(x, y)``: a 1-px ``frame``, ``pattern`` inside."""
    ImageDraw.Draw(image).rectangle((x, y, x + BOX - 1, y + BOX - 1), outline=frame)
    pixels = image.load()
    for dy in range(1, BOX - 1):
        for dx in range(1, BOX - 1):
            pixels[x + dx, y + dy] = pattern_pixel(pattern, dx, dy)


def distractor_rows(pair_row: int, height: int) -> list[int]:
    """The patch rows the distractor may take when the pair's top box is in patch row ``pair_row``: not the row
    above the pair, the pair's two rows or the row below (see :func:`render_sample`)."""
    return [y for y in range(height // PATCH) if not pair_row - 1 <= y <= pair_row + 2]


def render_sample(seed: int, split: str, index: int) -> Sample:
    """The sample ``index`` of ``split`` for ``seed``; question types alternate coarse and fine (only fine in the
    ``detail`` split), and fine questions alternate top and bottom.

    Placement keeps the two white boxes exchangeable for C layers: in the visual sequence (rows of 8 patches and
    an ``image_newline``) the gated convolution mixes a token with 3 on either side, so a box token reaches 6
    tokens either side (its neighbours' neighbours); with the pair in columns 3-4 of the middle windows' rows and
    the distractor not in the row above the pair, the pair's rows or the row below, both boxes' reach holds the
    same background and newline tokens at the same offsets (never the base tile, never the end of the sequence).
    That holds for any column; the pair keeps to columns 3-4, the placements the recipes were measured with."""
    rng = np.random.default_rng([seed, SPLITS[split], index])
    question_type = "fine" if split in ONLY_FINE_SPLITS else QUESTION_TYPES[index % len(QUESTION_TYPES)]
    side = SIDES[(index // len(QUESTION_TYPES)) % 2 if split not in ONLY_FINE_SPLITS else index % 2]
    width, height = IMAGE_SIZES[int(rng.integers(len(IMAGE_SIZES)))]
    background = list(COLOURS)[int(rng.integers(len(COLOURS)))]
    top, bottom = (PATTERNS[int(i)] for i in rng.choice(len(PATTERNS), 2, replace=False))
    black = PATTERNS[int(rng.integers(len(PATTERNS)))]
    pair_row = PAIR_WINDOW_ROWS[int(rng.integers(len(PAIR_WINDOW_ROWS)))] * (WINDOW // PATCH)  # in patches
    pair_xy = (PATCH * PAIR_COLUMNS[int(rng.integers(len(PAIR_COLUMNS)))], PATCH * pair_row)
    black_rows = distractor_rows(pair_row, height)
    black_xy = (PATCH * int(rng.integers(width // PATCH)), PATCH * black_rows[int(rng.integers(len(black_rows)))])

    image = Image.new("RGB", (width, height), COLOURS[background])
    draw_box(image, *pair_xy, top)
    draw_box(image, pair_xy[0], pair_xy[1] + PATCH, bottom)
    draw_box(image, *black_xy, black, frame=BLACK)
    return Sample(
        key=f"{split}{index:08d}", image=image, question_type=question_type, side=side, background=background,
        pair=(top, bottom), pair_xy=pair_xy, black=black, black_xy=black_xy,
    )


def png_bytes(image: Image.Image) -> bytes:
    """``image`` as a PNG file's bytes (what a shard stores)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _split_shards(out: Path, split: str) -> list[str]:
    """Names of the ``<split>-NNNNNN.tar`` files in ``out``, sorted."""
    return sorted(p.name for p in out.glob(f"{split}-*.tar") if re.fullmatch(rf"{split}-\d{{6}}\.tar", p.name))


def write_split(out: Path, split: str, count: int, shard_size: int, seed: int) -> dict[str, int]:
    """Write ``count`` samples to ``out/<split>-%06d.tar`` (``shard_size`` a shard); returns counts per type
    (of each sample's first question).

    Samples of the splits in ``ALL_QUESTIONS_SPLITS`` ask every question in one conversation: four answers
    to learn from for one image's visual tokens, at almost the cost of one, so training learns the skills in
    far fewer steps (see ``docs/BENCHMARKS.md``); ``detail`` samples ask top and bottom. The held-out splits
    ask one question, so accuracy and the policy's budget are per question type.

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
                "png": png_bytes(sample.image),
                "json": json.dumps(sample.record(sample.turns_for(split)), sort_keys=True).encode(),
            })
    return counts


def write_synth(out: Path, train: int, eval: int, shard_size: int, seed: int, policy: int = 0,
                detail: int = 0) -> dict:
    """Write train/eval/policy/detail shards (``policy``: held-out samples for the policy job; ``detail``: training
    samples that ask only the fine questions), ``out/tokenizer``
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
    processor = tiny_processor(tokenizer, tiny_config(len(tokenizer)), resample=OVERVIEW_RESAMPLE)
    processor.save_pretrained(out / "processor")
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
