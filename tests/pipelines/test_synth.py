"""The synthetic VQA generator: the fine pattern's design claim, determinism, shards, tokenizer, CLI."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from jobs.cli import app
from pipelines.synth import (
    BASE_TILE,
    BLACK,
    BOX,
    DETAIL_TURNS,
    IMAGE_SIZES,
    OVERVIEW_RESAMPLE,
    PAIR_COLUMNS,
    PAIR_WINDOW_ROWS,
    PATCH,
    PATTERNS,
    QUESTION_TYPES,
    QUESTIONS,
    TRAINING_TURNS,
    WHITE,
    WINDOW,
    distractor_rows,
    draw_box,
    pattern_pixel,
    render_sample,
    vocabulary,
    write_synth,
)
from visor_model.presets import tiny_config
from visor_model.presets import word_tokenizer as make_tokenizer


def base_tile(image: Image.Image) -> np.ndarray:
    """The image as the synthetic processor's base tile (halved, nearest-neighbour), shape (32, 32, 3) float."""
    return np.asarray(image.resize((BASE_TILE, BASE_TILE), OVERVIEW_RESAMPLE)).astype(float)


def box_pixels(image: Image.Image, xy: tuple[int, int]) -> np.ndarray:
    x, y = xy
    return np.asarray(image)[y : y + BOX, x : x + BOX]


def expected_box(pattern: str, frame: tuple[int, int, int]) -> np.ndarray:
    box = np.empty((BOX, BOX, 3), np.uint8)
    box[:] = frame
    box[1:-1, 1:-1] = [[pattern_pixel(pattern, dx, dy) for dx in range(1, BOX - 1)] for dy in range(1, BOX - 1)]
    return box


@pytest.mark.parametrize("index", range(0, 30, 3))
def test_boxes_are_single_patches_and_the_pair_shares_one_pooling_window(index: int) -> None:
    sample = render_sample(3, "train", index)
    width, height = sample.image.size
    assert [width, height] in tiny_config(64).image_grid_pinpoints  # tiles are exact crops, no resize
    (px, py), (kx, ky) = sample.pair_xy, sample.black_xy
    assert px // PATCH in PAIR_COLUMNS and py % WINDOW == 0 and kx % PATCH == 0 and ky % PATCH == 0
    assert not py // PATCH - 1 <= ky // PATCH <= py // PATCH + 2  # the black box is away from the pair's rows
    top, bottom = sample.pair
    assert top != bottom and {top, bottom, sample.black} <= set(PATTERNS)
    assert np.array_equal(box_pixels(sample.image, (px, py)), expected_box(top, WHITE))
    assert np.array_equal(box_pixels(sample.image, (px, py + PATCH)), expected_box(bottom, WHITE))
    assert np.array_equal(box_pixels(sample.image, (kx, ky)), expected_box(sample.black, BLACK))
    assert sample.answers() == {"coarse": sample.background, "top": top, "bottom": bottom}


def test_patterns_differ_at_full_resolution_and_vanish_from_the_base_tile() -> None:
    sample = render_sample(3, "eval", 2)
    renders = {}
    for pattern in PATTERNS:  # the same image with each pattern in the top white box
        image = sample.image.copy()
        draw_box(image, *sample.pair_xy, pattern)
        renders[pattern] = (np.asarray(image).astype(float), base_tile(image))
    for a in PATTERNS:
        for b in PATTERNS:
            if a != b:
                full_diff = np.abs(renders[a][0] - renders[b][0]).max(-1)
                assert (full_diff >= 127).sum() >= 9  # at full resolution a quarter of the interior differs or more
                assert np.array_equal(renders[a][1], renders[b][1])  # in the base tile: nothing


def reach(sequence: list[str], i: int) -> list[str]:
    """The tokens from 6 before to 6 after position ``i`` ("padding" past either end)."""
    return [sequence[j] if 0 <= j < len(sequence) else "padding" for j in range(i - 6, i + 7)]


def test_every_placement_keeps_the_pair_exchangeable_for_the_gated_convolution() -> None:
    """Token-level check of every placement the generator allows: in the visual sequence (the base tile's tokens,
    then rows of patches each ended by ``image_newline``) the two box tokens see the same tokens at every offset
    a gated C layer's convolution reaches (kernel 7: 3 either side, and those tokens' own 3 — 6 in all)."""
    width, height = IMAGE_SIZES[0]
    columns, base = width // PATCH, (BASE_TILE // PATCH) ** 2
    checked = 0
    for column in PAIR_COLUMNS:
        for pair_row in (r * WINDOW // PATCH for r in PAIR_WINDOW_ROWS):
            for black in ((x, y) for y in distractor_rows(pair_row, height) for x in range(columns)):
                grid = {(column, pair_row): "pair", (column, pair_row + 1): "pair", black: "black"}
                sequence = [f"base {i}" for i in range(base)] + [
                    grid.get((x, y), "background") if x < columns else "newline"
                    for y in range(height // PATCH) for x in range(columns + 1)]
                top = base + pair_row * (columns + 1) + column
                bottom = top + columns + 1
                assert reach(sequence, top) == reach(sequence, bottom), (column, pair_row, black)
                checked += 1
    assert checked == len(PAIR_COLUMNS) * len(PAIR_WINDOW_ROWS) * 4 * columns


def swapped(sample) -> Image.Image:
    """The sample's image with its two white boxes exchanged."""
    image = sample.image.copy()
    draw_box(image, *sample.pair_xy, sample.pair[1])
    draw_box(image, sample.pair_xy[0], sample.pair_xy[1] + PATCH, sample.pair[0])
    return image


@pytest.fixture(scope="module")
def twin_logits() -> dict[tuple[str, int], torch.Tensor]:
    """Answer-position logits of samples and their twins (white boxes exchanged) through real tiny models with the
    patch-only tower and the synthetic processor, in float64: ``{(model, index): [2, vocab]}`` (sample, twin). The gated
    sublayers' gates and position convolutions are drawn at random (they start at zero), so what C layers read
    is not hidden behind a closed gate."""
    from visor_model.modeling import VisorForConditionalGeneration
    from visor_model.plan import LayerPlan
    from visor_model.presets import drop_vision_positions, tiny_processor

    tokenizer = make_tokenizer(vocabulary())
    models = {
        "full attention": {"plan": LayerPlan.full_attention(6).to_dict()},
        "token reduction": {"plan": LayerPlan.full_attention(6).to_dict(), "token_reduction": 2},
        "VISOR": {"cross_attention": "gated"},
    }
    logits = {}
    for name, fields in models.items():
        config = tiny_config(len(tokenizer), vision="patches", **fields)
        torch.manual_seed(0)
        model = VisorForConditionalGeneration(config).double().eval()  # float64: "the same" up to 1e-12
        drop_vision_positions(model)
        with torch.no_grad():
            for param_name, param in model.named_parameters():
                if ".cpe." in param_name or param_name.endswith("gate"):
                    param.normal_(0.0, 0.5)
        processor = tiny_processor(tokenizer, config, resample=OVERVIEW_RESAMPLE)
        for index in range(0, 16, 2):
            sample = render_sample(1, "eval", index)
            prompt = f"<image>\n{QUESTIONS['top']}"
            inputs = processor(text=[prompt] * 2, images=[sample.image, swapped(sample)], return_tensors="pt")
            inputs["pixel_values"] = inputs["pixel_values"].double()
            budgets = range(config.layer_plan.num_budgets)
            with torch.no_grad():
                for budget in budgets:
                    out = model(**inputs, budget=torch.full((2,), budget)).logits[:, -1]
                    logits[f"{name} {budget}" if len(budgets) > 1 else name, index] = out
    return logits


def twins_differ(logits: dict, name: str) -> list[float]:
    return [float((pair[0] - pair[1]).abs().max()) for (model, _), pair in logits.items() if model == name]


@pytest.mark.parametrize("name", ["token reduction", "VISOR 0"])
def test_pooling_and_c_layers_alone_cannot_tell_top_from_bottom(twin_logits: dict, name: str) -> None:
    """The fine question's design claim, through the real model: 2x2 pooling and budget 0 (C layers only, their
    position convolution included) give the same output for an image and its twin with the two patterns
    exchanged — the order of the pair is not in what they read, nor in the base tile — so they can answer *fine*
    only at 0.5 given the pair."""
    assert max(twins_differ(twin_logits, name)) < 1e-10  # summation order only


@pytest.mark.parametrize("name", ["full attention", "VISOR 1", "VISOR 2"])
def test_relating_visual_tokens_can_tell_top_from_bottom(twin_logits: dict, name: str) -> None:
    """Where visual tokens attend to each other with rotary positions (every layer of full attention, VISOR's S
    layers) the twins' outputs differ: the order is there to be learned."""
    assert min(twins_differ(twin_logits, name)) > 1e-6


def test_samples_are_deterministic_and_cover_sides_and_patterns() -> None:
    first = [render_sample(0, "train", i) for i in range(60)]
    again = [render_sample(0, "train", i) for i in range(60)]
    other = [render_sample(1, "train", i) for i in range(60)]
    for a, b in zip(first, again, strict=True):
        assert a.record() == b.record() and a.image.tobytes() == b.image.tobytes()
    assert any(a.image.tobytes() != c.image.tobytes() for a, c in zip(first, other, strict=True))
    assert first[0].image.tobytes() != render_sample(0, "eval", 0).image.tobytes()
    assert {s.image.size for s in first} == set(IMAGE_SIZES)
    assert {s.black for s in first} == set(PATTERNS) == {s.pair[0] for s in first}
    assert {s.pair_xy for s in first} == {(PATCH * c, WINDOW * r) for c in PAIR_COLUMNS for r in PAIR_WINDOW_ROWS}
    held_out = [render_sample(0, "eval", i) for i in range(12)]
    assert [s.kind for s in held_out] == ["coarse", "top", "coarse", "bottom"] * 3
    assert all("." not in s.key for s in first)


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
        assert record == expected.record(expected.turns_for("train"))
        turns = record["conversations"]  # training samples ask every question, their own first
        assert [t["from"] for t in turns] == ["human", "gpt"] * len(TRAINING_TURNS)
        assert turns[0]["value"] == f"<image>\n{expected.question}" and turns[1]["value"] == expected.answer
        assert sum("<image>" in t["value"] for t in turns) == 1
        assert [t["value"] for t in turns[1::2]] == [expected.answers()[k] for k in expected.turns_for("train")]
        assert all(len(t["value"].split()) == 1 for t in turns[1::2])
        image = sample["png"]
        assert image.mode == "RGB" and np.array_equal(np.asarray(image), np.asarray(expected.image))
        types[record["question_type"]] += 1
    assert set(types) == set(QUESTION_TYPES)

    manifest = json.loads((synth_dir / "manifest.json").read_text())
    assert manifest["seed"] == 5 and manifest["splits"]["train"]["samples"] == 25
    assert manifest["splits"]["train"]["question_types"] == dict(types)
    assert manifest["splits"]["eval"]["question_types"] == {"coarse": 4, "fine": 3}
    assert manifest["splits"]["train"]["shards"] == [Path(u).name for u in urls]


def test_same_seed_writes_identical_bytes(synth_dir: Path, tmp_path: Path) -> None:
    write_synth(tmp_path / "same", train=25, eval=7, shard_size=10, seed=5)
    write_synth(tmp_path / "other", train=25, eval=7, shard_size=10, seed=6)
    for path in synth_dir.glob("*.tar"):
        assert (tmp_path / "same" / path.name).read_bytes() == path.read_bytes()
        assert (tmp_path / "other" / path.name).read_bytes() != path.read_bytes()
    assert (tmp_path / "same" / "manifest.json").read_text() == (synth_dir / "manifest.json").read_text()


def test_saved_processor_halves_the_base_tile_by_nearest_neighbour(synth_dir: Path) -> None:
    from visor_model.processing import VisorProcessor

    processor = VisorProcessor.from_pretrained(synth_dir / "processor")
    sample = render_sample(5, "eval", 0)
    inputs = processor(text=["<image>"] * 2, images=[sample.image, swapped(sample)], return_tensors="pt")
    assert processor.image_processor.resample == OVERVIEW_RESAMPLE
    assert torch.equal(inputs["pixel_values"][0, 0], inputs["pixel_values"][1, 0])  # the overviews: identical


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


def test_detail_split_asks_the_box_questions(tmp_path: Path) -> None:
    import webdataset as wds

    manifest = write_synth(tmp_path, train=0, eval=0, shard_size=4, seed=2, detail=6)
    assert manifest["splits"]["detail"]["question_types"] == {"coarse": 0, "fine": 6}
    samples = list(wds.WebDataset(str(tmp_path / "detail-000000.tar"), shardshuffle=False).decode("pil"))
    samples += list(wds.WebDataset(str(tmp_path / "detail-000001.tar"), shardshuffle=False).decode("pil"))
    assert len(samples) == 6
    for i, sample in enumerate(samples):
        expected = render_sample(2, "detail", i)
        turns = sample["json"]["conversations"]
        kinds = expected.turns_for("detail")
        assert kinds[0] == ("top" if i % 2 == 0 else "bottom") and sorted(kinds) == sorted(DETAIL_TURNS)
        assert [t["value"] for t in turns[0::2]] == [("<image>\n" if not j else "") + QUESTIONS[k]
                                                   for j, k in enumerate(kinds)]
        assert [t["value"] for t in turns[1::2]] == [expected.answers()[k] for k in kinds]
        assert expected.key == sample["__key__"] and sample["json"]["question_type"] == "fine"
