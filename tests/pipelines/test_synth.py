"""The synthetic VQA generator: the fine pattern's design claim, determinism, shards, tokenizer, CLI."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from jobs.cli import app
from pipelines.synth import (
    BASE_TILE,
    BOX,
    COLOURS,
    GRID,
    IMAGE_SIZES,
    PATCH,
    PATTERNS,
    QUESTION_TYPES,
    QUESTIONS,
    draw_box,
    pattern_pixel,
    render_sample,
    vocabulary,
    write_synth,
)
from visor_model.presets import tiny_config
from visor_model.presets import word_tokenizer as make_tokenizer


def base_tile(image: Image.Image) -> np.ndarray:
    """The image as the processor's base tile: resized (bicubic) to 32x32, shape (32, 32, 3) float."""
    return np.asarray(image.resize((BASE_TILE, BASE_TILE), Image.BICUBIC)).astype(float)


@pytest.mark.parametrize("index", [2, 5, 8, 11, 14, 17, 20, 23, 26, 29])
def test_fine_pattern_fills_a_patch_at_full_resolution_and_fades_from_base_tile(index: int) -> None:
    sample = render_sample(3, "train", index)
    assert sample.question_type == "fine" and sample.answer == sample.pattern
    assert sample.pattern in PATTERNS
    width, height = sample.image.size
    assert [width, height] in tiny_config(64).image_grid_pinpoints  # tiles are exact crops, no resize
    bx, by = sample.box_xy
    assert bx % PATCH == 0 and by % PATCH == 0  # the box is one patch of a full-resolution tile
    full = np.asarray(sample.image)
    interior = full[by + 1 : by + BOX - 1, bx + 1 : bx + BOX - 1]
    expected = [[pattern_pixel(sample.pattern, dx, dy) for dx in range(1, BOX - 1)] for dy in range(1, BOX - 1)]
    assert np.array_equal(interior, np.array(expected, np.uint8))

    renders = {}
    for pattern in PATTERNS:  # the same image with each pattern in the box
        image = sample.image.copy()
        draw_box(image, bx, by, pattern)
        renders[pattern] = (np.asarray(image).astype(float), base_tile(image))
    for a in PATTERNS:
        for b in PATTERNS:
            if a != b:
                full_diff = np.abs(renders[a][0] - renders[b][0]).max(-1)
                assert (full_diff >= 127).sum() >= 18  # at full resolution half the interior differs or more
                assert np.abs(renders[a][1] - renders[b][1]).max() <= 50  # in the base tile a faint residue


def test_samples_are_deterministic_and_cover_sizes_counts_and_patterns() -> None:
    first = [render_sample(0, "train", i) for i in range(60)]
    again = [render_sample(0, "train", i) for i in range(60)]
    other = [render_sample(1, "train", i) for i in range(60)]
    for a, b in zip(first, again, strict=True):
        assert a.record() == b.record() and a.image.tobytes() == b.image.tobytes()
    assert any(a.image.tobytes() != c.image.tobytes() for a, c in zip(first, other, strict=True))
    assert first[0].image.tobytes() != render_sample(0, "eval", 0).image.tobytes()
    assert {s.image.size for s in first} == set(IMAGE_SIZES)
    assert {s.num_shapes for s in first} == {1, 2, 3, 4}
    assert {s.pattern for s in first} == set(PATTERNS)
    for s in first:
        assert "." not in s.key
        cells = np.asarray(s.image.resize((GRID, GRID), Image.BOX)).mean(-1)  # one value per base-tile token
        background = np.mean(COLOURS[s.background])
        assert (cells < 0.8 * background).sum() == s.num_shapes  # every shape darkens exactly one cell


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    write_synth(out, train=25, eval=7, shard_size=10, seed=5)
    return out


def test_shards_read_back_with_webdataset(synth_dir: Path) -> None:
    import webdataset as wds

    assert sorted(p.name for p in synth_dir.glob("*.tar")) == [
        "eval-000000.tar", "train-000000.tar", "train-000001.tar", "train-000002.tar"]
    urls = [str(p) for p in sorted(synth_dir.glob("train-*.tar"))]
    samples = list(wds.WebDataset(urls, shardshuffle=False).decode("pil"))
    assert len(samples) == 25
    held_out = list(wds.WebDataset(str(synth_dir / "eval-000000.tar"), shardshuffle=False).decode("pil"))
    assert [s["json"] for s in held_out] == [render_sample(5, "eval", i).record() for i in range(7)]
    assert all(len(s["json"]["conversations"]) == 2 for s in held_out)  # held-out samples ask one question
    types = Counter()
    for i, sample in enumerate(samples):
        expected = render_sample(5, "train", i)
        assert sample["__key__"] == expected.key
        record = sample["json"]
        assert record == expected.record(all_questions=True)  # training samples ask all three questions
        turns = record["conversations"]
        assert [t["from"] for t in turns] == ["human", "gpt"] * 3
        assert turns[0]["value"] == f"<image>\n{expected.question}" and turns[1]["value"] == expected.answer
        assert sum("<image>" in t["value"] for t in turns) == 1
        assert sorted(t["value"] for t in turns[1::2]) == sorted(expected.answers().values())
        assert all(len(t["value"].split()) == 1 for t in turns[1::2])
        image = sample["png"]
        assert image.mode == "RGB" and np.array_equal(np.asarray(image), np.asarray(expected.image))
        types[record["question_type"]] += 1
    assert set(types) == set(QUESTION_TYPES)

    manifest = json.loads((synth_dir / "manifest.json").read_text())
    assert manifest["seed"] == 5 and manifest["splits"]["train"]["samples"] == 25
    assert manifest["splits"]["train"]["question_types"] == dict(types)
    assert manifest["splits"]["eval"]["question_types"] == {"coarse": 3, "counting": 2, "fine": 2}
    assert manifest["splits"]["train"]["shards"] == [Path(u).name for u in urls]


def test_same_seed_writes_identical_bytes(synth_dir: Path, tmp_path: Path) -> None:
    write_synth(tmp_path / "same", train=25, eval=7, shard_size=10, seed=5)
    write_synth(tmp_path / "other", train=25, eval=7, shard_size=10, seed=6)
    for path in synth_dir.glob("*.tar"):
        assert (tmp_path / "same" / path.name).read_bytes() == path.read_bytes()
        assert (tmp_path / "other" / path.name).read_bytes() != path.read_bytes()
    assert (tmp_path / "same" / "manifest.json").read_text() == (synth_dir / "manifest.json").read_text()


def test_tokenizer_covers_every_question_and_answer(synth_dir: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(synth_dir / "tokenizer")
    assert len(tokenizer) == len(make_tokenizer(vocabulary()))
    for i in range(30):
        sample = render_sample(5, "eval", i)
        for text in (sample.record()["conversations"][0]["value"], sample.answer):
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            assert tokenizer.unk_token_id not in ids and ids
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "<image>\nwhat colour is the background ?"}], tokenize=False,
        add_generation_prompt=True)
    assert tokenizer.unk_token_id not in tokenizer(prompt, add_special_tokens=False)["input_ids"]


def test_cli_synth(tmp_path: Path) -> None:
    runner = CliRunner()
    help_text = runner.invoke(app, ["data", "synth", "--help"]).output
    assert "--shard-size" in help_text and "--seed" in help_text
    out = tmp_path / "cli"
    result = runner.invoke(app, ["data", "synth", "--out", str(out), "--train", "4", "--eval", "2",
                                 "--shard-size", "3", "--seed", "9"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.glob("*.tar")) == ["eval-000000.tar", "train-000000.tar", "train-000001.tar"]
    assert json.loads((out / "manifest.json").read_text())["splits"]["eval"]["samples"] == 2
    assert (out / "tokenizer" / "tokenizer.json").is_file()
    bad = runner.invoke(app, ["data", "synth", "--out", str(out), "--shard-size", "0"])
    assert bad.exit_code != 0


def test_rerun_with_fewer_samples_removes_stale_shards(tmp_path: Path) -> None:
    from pipelines.shards import data_version, resolve_shards

    write_synth(tmp_path, train=9, eval=0, shard_size=3, seed=0)
    (tmp_path / "train-keep.tar").write_bytes(b"not ours")
    assert len(list(tmp_path.glob("train-0*.tar"))) == 3
    manifest = write_synth(tmp_path, train=4, eval=0, shard_size=3, seed=0)
    assert manifest["splits"]["train"]["shards"] == ["train-000000.tar", "train-000001.tar"]
    assert sorted(p.name for p in tmp_path.glob("*.tar")) == ["train-000000.tar", "train-000001.tar",
                                                               "train-keep.tar"]
    fresh = tmp_path / "fresh"
    write_synth(fresh, train=4, eval=0, shard_size=3, seed=0)
    assert data_version(resolve_shards(f"{tmp_path}/train-0*.tar")) == data_version(resolve_shards(str(fresh)))


def test_detail_split_asks_only_the_fine_question(tmp_path: Path) -> None:
    import webdataset as wds

    manifest = write_synth(tmp_path, train=0, eval=0, shard_size=4, seed=2, detail=6)
    assert manifest["splits"]["detail"]["question_types"] == {"coarse": 0, "counting": 0, "fine": 6}
    samples = list(wds.WebDataset(str(tmp_path / "detail-000000.tar"), shardshuffle=False).decode("pil"))
    samples += list(wds.WebDataset(str(tmp_path / "detail-000001.tar"), shardshuffle=False).decode("pil"))
    assert len(samples) == 6
    for i, sample in enumerate(samples):
        expected = render_sample(2, "detail", i)
        turns = sample["json"]["conversations"]
        assert len(turns) == 2 and turns[0]["value"] == f"<image>\n{QUESTIONS['fine']}"
        assert turns[1]["value"] == expected.pattern and expected.key == sample["__key__"]
