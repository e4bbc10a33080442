"""Deterministic synthetic fine-grained VQA shards for the tiny VISOR model (32-px tiles, patch 8, up to 3x3 grid).

Every image (64 or 96 px a side, so the anyres grids 2x2, 3x2, 2x3 and 3x3 all
occur) is a plain background holding three 8x8 boxes aligned to the 8-px patch
grid of the full-resolution tiles, so each box is exactly one visual token: a
1-px frame around a 6x6 interior with one of ``PATTERNS``. Two boxes have white
frames and sit side by side inside one 2x2 window of patches (the window 2x2
token reduction averages into one token), with different patterns; the third, a
distractor, has a black frame and sits in another window. Two question types,
single-word answers:

* ``coarse`` (difficulty 1) — the background colour: every token shows it;
* ``fine`` (difficulty 2) — the pattern of the *left* (or *right*) white box. Both
  white boxes look alike, so which one is left exists only in how the two tokens
  relate: the right box's left neighbour is a white box, the left box's is not.
  A model answers only if visual tokens attend to each other before the text reads
  them — every layer of full attention, VISOR's S layers; with budget 0 (C layers
  only) or 2x2 pooling (the pair is averaged into one token) it knows the pair
  but not its order: 0.5 given the pair, by construction.

Every pattern averages to the same grey, so downscaling to the 32x32 base tile
(2x or 3x) leaves only a faint resampling residue, while in the full-resolution
tiles the pattern fills 36 of the 64 pixels of one patch.

The miniature relies on a vision tower that sees patches, not relations: the
``bench-quality`` and demo recipes use ``model.tiny.vision: patches`` (the patch
embedding alone, no position, frozen; :func:`visor_model.presets.tiny_config`),
so relating visual tokens happens in the language model, as it does for SigLIP's
local features in the paper. A tower that attends across patches could order the
pair itself and leave nothing for the S layers (docs/BENCHMARKS.md).

Training samples ask all three questions (coarse, left, right) in one
conversation; held-out (eval, policy) samples ask one (see :func:`write_split`),
*fine* alternating left and right. The ``detail`` split asks only the fine
questions (left and right): the first stage of a training recipe, so that ordering
the pair is learned before the easy question takes the model's attention
elsewhere (measured: a tiny model trained on every question at once stays at 0.5
on *fine* for 700 steps; with 600 steps of the fine questions first it reaches
0.85; a third question type, the black box's pattern — a look-up — was learned
at once but then kept the model from learning the order; see
``docs/BENCHMARKS.md``).

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
PATTERNS = ["horizontal", "vertical", "checkered", "plain"]
IMAGE_SIZES: list[tuple[int, int]] = [(64, 64), (96, 64), (64, 96), (96, 96)]  # (width, height)
BASE_TILE = 32
PATCH = 8  # the vision tower's patch: every box is one patch
WINDOW = 2 * PATCH  # the 2x2 window of patches that token reduction pools into one token
BOX = 8  # box side in px: 1-px frame, 6x6 patterned interior
QUESTION_TYPES = ("coarse", "fine")
DIFFICULTY = {"coarse": 1, "fine": 2}
QUESTIONS = {
    "coarse": "what colour is the background ?",
    "left": "what pattern is in the left white box ?",
    "right": "what pattern is in the right white box ?",
}
"""Each question by the answer it asks for: the fine type asks ``left`` or ``right``."""
TRAINING_TURNS = ("coarse", "left", "right")
DETAIL_TURNS = ("left", "right")  # the fine questions alone: the first stage of a recipe
SPLITS = {"train": 0, "eval": 1, "policy": 2, "detail": 3}
ONLY_FINE_SPLITS = {"detail"}  # every sample's own question is fine; it asks the box questions
ALL_QUESTIONS_SPLITS = {"train"}  # training samples ask every question; held-out ones ask one
CHANCE = {"coarse": 1 / len(COLOURS), "fine": 1 / len(PATTERNS)}  # uniform guessing


@dataclass(frozen=True)
class Sample:
    """One rendered sample. ``pair`` holds the (left, right) white boxes' patterns (different), ``pair_xy`` the
    top-left pixel of the left one (a multiple of ``WINDOW`` horizontally, of ``PATCH`` vertically: both boxes in
    one pooling window); ``black``/``black_xy`` the distractor's pattern and top-left pixel (another window).

    ``question_type`` is this sample's own (first) question; ``side`` (``left``/``right``) which white box a
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
        return {"coarse": self.background, "left": self.pair[0], "right": self.pair[1]}

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
    """The colour of interior pixel ``(dx, dy)`` (1..6 inside the frame) of a box with ``pattern``."""
    if pattern == "plain":
        return GREY
    on = {"horizontal": dy, "vertical": dx, "checkered": dx + dy}[pattern] % 2
    return WHITE if on else BLACK


def draw_box(image: Image.Image, x: int, y: int, pattern: str, frame: tuple[int, int, int] = WHITE) -> None:
    """The 8x8 box at ``(x, y)``: a 1-px ``frame``, ``pattern`` inside."""
    ImageDraw.Draw(image).rectangle((x, y, x + BOX - 1, y + BOX - 1), outline=frame)
    pixels = image.load()
    for dy in range(1, BOX - 1):
        for dx in range(1, BOX - 1):
            pixels[x + dx, y + dy] = pattern_pixel(pattern, dx, dy)


def render_sample(seed: int, split: str, index: int) -> Sample:
    """The sample ``index`` of ``split`` for ``seed``; question types alternate coarse and fine (only fine in the
    ``detail`` split), and fine questions alternate left and right."""
    rng = np.random.default_rng([seed, SPLITS[split], index])
    question_type = "fine" if split in ONLY_FINE_SPLITS else QUESTION_TYPES[index % len(QUESTION_TYPES)]
    side = ("left", "right")[(index // len(QUESTION_TYPES)) % 2 if split not in ONLY_FINE_SPLITS else index % 2]
    width, height = IMAGE_SIZES[int(rng.integers(len(IMAGE_SIZES)))]
    background = list(COLOURS)[int(rng.integers(len(COLOURS)))]
    left, right = (PATTERNS[int(i)] for i in rng.choice(len(PATTERNS), 2, replace=False))
    black = PATTERNS[int(rng.integers(len(PATTERNS)))]
    windows = [(x, y) for y in range(0, height, WINDOW) for x in range(0, width, WINDOW)]
    pair_window, black_window = (windows[int(i)] for i in rng.choice(len(windows), 2, replace=False))
    pair_xy = (pair_window[0], pair_window[1] + PATCH * int(rng.integers(2)))
    black_xy = (black_window[0] + PATCH * int(rng.integers(2)), black_window[1] + PATCH * int(rng.integers(2)))

    image = Image.new("RGB", (width, height), COLOURS[background])
    draw_box(image, *pair_xy, left)
    draw_box(image, pair_xy[0] + PATCH, pair_xy[1], right)
    draw_box(image, *black_xy, black, frame=BLACK)
    return Sample(
        key=f"{split}{index:08d}", image=image, question_type=question_type, side=side, background=background,
        pair=(left, right), pair_xy=pair_xy, black=black, black_xy=black_xy,
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

    Samples of the splits in ``ALL_QUESTIONS_SPLITS`` ask every question in one conversation: four answers
    to learn from for one image's visual tokens, at almost the cost of one, so training learns the skills in
    far fewer steps (see ``docs/BENCHMARKS.md``); ``detail`` samples ask left and right. The held-out splits
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
                "png": _png(sample.image),
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
