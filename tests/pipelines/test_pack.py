"""``visor data pack``: LLaVA JSON with an image root, JSON lines, parquet with image structs → shards the reader
takes; every bad-row kind skipped and counted by reason; byte-identical output; S3 sources and output."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

from jobs.cli import app
from pipelines.pack import PackOptions, benchmark_in, default_metric, list_sources, pack, tar_bytes
from pipelines.shards import S3Options, ShardSet

from .helpers import tiny_png


def _encoded(mode: str, fmt: str, size: tuple[int, int] = (40, 30), seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    if mode == "I;16":
        image = Image.fromarray(rng.integers(0, 65535, size[::-1], dtype=np.uint16))
    else:
        image = Image.fromarray(rng.integers(0, 255, (*size[::-1], 3), dtype=np.uint8)).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def turn(question: str = "<image>\nwhat colour is the box ?", answer: str = "red") -> list[dict]:
    return [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]


def make_sources(root: Path) -> dict[str, Path]:
    """Small sources of each shape, with images of odd modes and one row of every bad kind.

    ``llava.json`` (image root ``images/``): 7 good rows (RGB JPEG, CMYK JPEG, palette PNG, LA PNG, 16-bit PNG,
    GIF, text-only) and 6 bad (missing file, undecodable, no conversation, no placeholder, two placeholders,
    two images). ``extra.jsonl``: 2 good (one with answers/metric), 1 unparsable line, 1 text-only row with an
    ``<image>`` placeholder. ``docvqa/val.parquet``: 3 good (image bytes; image path; a question + answers row).
    """
    images = root / "images"
    (images / "coco").mkdir(parents=True)
    files = {"coco/rgb.jpg": _encoded("RGB", "JPEG"), "coco/cmyk.jpg": _encoded("CMYK", "JPEG", seed=1),
             "p.png": _encoded("P", "PNG", seed=2), "la.png": _encoded("LA", "PNG", seed=3),
             "i16.png": _encoded("I;16", "PNG", seed=4), "anim.gif": _encoded("P", "GIF", seed=5),
             "broken.png": b"\x89PNG not really"}
    for name, data in files.items():
        (images / name).write_bytes(data)
    rows = [{"id": "rgb", "image": "coco/rgb.jpg", "conversations": turn() + turn("how many ?", "it")},
            {"id": "cmyk", "image": "coco/cmyk.jpg", "conversations": turn()},
            {"id": 7, "image": "p.png", "conversations": turn("what is it ?\n<image>", "box")},
            {"id": "la", "image": "la.png", "conversations": turn()},
            {"id": "i16", "image": "i16.png", "conversations": turn()},
            {"id": "gif", "image": "anim.gif", "conversations": turn()},
            {"id": "text", "conversations": turn("is it red ?", "red")},
            {"id": "missing", "image": "coco/nothing.jpg", "conversations": turn()},
            {"id": "broken", "image": "broken.png", "conversations": turn()},
            {"id": "noconv", "image": "coco/rgb.jpg"},
            {"id": "noplace", "image": "coco/rgb.jpg", "conversations": turn("what colour ?")},
            {"id": "twoplace", "image": "coco/rgb.jpg", "conversations": turn("<image> <image> what ?")},
            {"id": "multi", "image": ["coco/rgb.jpg", "p.png"], "conversations": turn("<image> <image> what ?")}]
    sources = root / "sources"
    sources.mkdir()
    (sources / "llava.json").write_text(json.dumps(rows))
    lines = [json.dumps({"id": "l1", "image": str(images / "coco/rgb.jpg"), "conversations": turn()}),
             "{not json",
             json.dumps({"id": "l2", "conversations": turn("how many ?", "two"), "answers": ["two", "2"],
                         "metric": "vqa", "data_source": "textvqa"}),
             json.dumps({"id": "l3", "conversations": turn()})]
    (sources / "extra.jsonl").write_text("\n".join(lines) + "\n")
    (sources / "docvqa").mkdir()
    table = pa.table({
        "image": [{"bytes": tiny_png(seed=9), "path": None}, {"bytes": None, "path": "coco/rgb.jpg"},
                  {"bytes": tiny_png(seed=8), "path": "x.png"}],
        "conversations": [turn(), turn("<image>\nhow many ?", "two"), None],
        "question": [None, None, "what is the date ?"],
        "answers": [None, None, ["1 may", "may 1"]],
    })
    pq.write_table(table, sources / "docvqa" / "val.parquet")
    return {"json": sources / "llava.json", "jsonl": sources / "extra.jsonl", "parquet": sources / "docvqa",
            "images": images}


EXPECTED_SKIPPED = {"bad_conversation": 1, "extra_image_placeholders": 1, "missing_image": 1,
                    "missing_image_file": 1, "multiple_images": 1, "no_image_placeholder": 1,
                    "undecodable_image": 1, "unreadable_source": 1}


@pytest.fixture(scope="module")
def packed(tmp_path_factory, ray_local):
    root = tmp_path_factory.mktemp("pack")
    sources = make_sources(root)
    specs = [str(sources["json"]), str(sources["jsonl"]), str(sources["parquet"])]
    options = PackOptions(image_root=str(sources["images"]), shard_size=4)
    first = pack(specs, str(root / "out"), options)
    return root, sources, specs, options, first


def test_pack_counts_every_bad_row_by_reason_and_is_deterministic(packed) -> None:
    root, sources, specs, options, summary = packed
    assert summary["rows"] == 13 + 4 + 3 and summary["packed"] == 7 + 2 + 3
    assert summary["skipped"] == EXPECTED_SKIPPED
    assert summary["shards"] == ["part-000000.tar", "part-000001.tar", "part-000002.tar"]
    report = [json.loads(line) for line in (root / "out" / "pack_quarantine.jsonl").read_text().splitlines()]
    assert {r["reason"] for r in report} == set(EXPECTED_SKIPPED)
    by_reason = {r["reason"]: r for r in report}
    assert by_reason["multiple_images"]["detail"].endswith("not supported yet")
    assert by_reason["missing_image_file"]["key"] == "0000_000000007"  # source 0, row 7
    assert by_reason["unreadable_source"]["url"].endswith("extra.jsonl")
    again = pack(specs, str(root / "again"), options)  # same input, another run → the same bytes
    for name in summary["shards"]:
        assert (root / "out" / name).read_bytes() == (root / "again" / name).read_bytes()
    assert again["data_version"] == summary["data_version"] == ShardSet.resolve(str(root / "out")).version


def test_packed_samples_keep_their_bytes_references_and_metric(packed) -> None:
    import tarfile

    root, sources, _, _, _ = packed
    members: dict[str, bytes] = {}
    for shard in sorted((root / "out").glob("part-*.tar")):
        with tarfile.open(shard) as archive:
            members.update({m.name: archive.extractfile(m).read() for m in archive})
    assert members["0000_000000000.jpg"] == (sources["images"] / "coco/rgb.jpg").read_bytes()  # not re-encoded
    assert members["0000_000000001.jpg"] == (sources["images"] / "coco/cmyk.jpg").read_bytes()
    assert members["0000_000000004.png"] == (sources["images"] / "i16.png").read_bytes()
    assert Image.open(io.BytesIO(members["0000_000000005.png"])).format == "PNG"  # a GIF: stored as PNG
    assert "0000_000000006.json" in members and not any(m.startswith("0000_000000006.") and not m.endswith(
        ".json") for m in members)  # text-only
    record = json.loads(members["0001_000000002.json"])
    assert record["answers"] == ["two", "2"] and record["metric"] == "vqa" and record["data_source"] == "textvqa"
    export = json.loads(members["0002_000000002.json"])  # a benchmark export row: question + answers, docvqa path
    assert export["conversations"][0]["value"] == "<image>\nwhat is the date ?"
    assert export["answers"] == ["1 may", "may 1"] and export["metric"] == "anls"
    assert json.loads(members["0000_000000002.json"])["id"] == 7


def test_packed_shards_through_inspect_and_two_training_steps(packed, processor) -> None:
    from jobs.train.config import ModelConfig, OptimConfig
    from jobs.train.model_setup import build_model, freeze
    from jobs.train.steps import budgets_for_step, make_optimizer, optimizer_step
    from pipelines.dataset import Collator, build_split
    from pipelines.options import ReadOptions

    root, _, _, _, summary = packed
    processor.save_pretrained(root / "processor")
    result = CliRunner().invoke(app, ["data", "inspect", str(root / "out"), "--processor", str(root / "processor"),
                                      "--json"])
    assert result.exit_code == 0, result.output
    stats = json.loads(result.stdout.strip().splitlines()[-1])
    assert stats["samples"] == stats["valid"] == summary["packed"] and stats["quarantined"] == {}
    assert stats["data_version"] == summary["data_version"]
    assert stats["tiles"]["0"] == 2  # the two text-only samples
    # the parquet file lies under docvqa/: its three rows are DocVQA's, scored by ANLS
    assert stats["metrics"] == {"anls": 3, "vqa": 1} and stats["benchmarks"] == {"docvqa": 3, "textvqa": 1}
    # two optimizer steps of the training step function on batches read from the packed shards
    split = build_split(str(root / "out"), processor, ReadOptions(preprocess_batch_size=4))
    batches = split.dataset.iter_torch_batches(batch_size=6, collate_fn=Collator(processor.tokenizer.pad_token_id))
    model = build_model(ModelConfig(tiny={"num_layers": 3, "hidden_size": 32}), len(processor.tokenizer), seed=0)
    freeze(model, [])
    optimizer, scheduler = make_optimizer(model, OptimConfig(lr=1e-3, warmup_steps=1, max_steps=2))
    before = [p.detach().clone() for p in model.parameters() if p.requires_grad]
    for step, batch in enumerate(batches):
        result = optimizer_step(model, [batch], budgets_for_step("uniform", model.plan.num_budgets, 0, step),
                                optimizer, scheduler, 1.0)
        assert result.samples == 6 and all(np.isfinite(v) for v in result.losses.values())
    assert step == 1  # 12 samples, 6 a batch: two steps
    after = [p.detach() for p in model.parameters() if p.requires_grad]
    assert any(not (a == b).all() for a, b in zip(after, before, strict=True))


def test_pack_command_and_errors(packed) -> None:
    root, sources, _, _, summary = packed
    runner = CliRunner()
    result = runner.invoke(app, ["data", "pack", str(sources["json"]), "--image-root", str(sources["images"]),
                                 "--out", str(root / "cli"), "--max-shard-bytes", "1", "--image-format", "png",
                                 "--prefix", "mix", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["packed"] == 7 and len(out["shards"]) == 7 and len(out["data_version"]) == 16  # a sample a shard
    assert json.loads((root / "cli" / "pack_manifest.json").read_text()) == out
    import tarfile

    names = [m for shard in sorted((root / "cli").glob("mix-*.tar")) for m in tarfile.open(shard).getnames()]
    assert sum(n.endswith(".png") for n in names) == 6 and not any(n.endswith(".jpg") for n in names)  # re-encoded
    result = runner.invoke(app, ["data", "pack", str(root / "nothing-*.json"), "--out", str(root / "x")])
    assert result.exit_code == 2 and "matches no .json" in result.output
    result = runner.invoke(app, ["data", "pack", str(sources["json"]), "--out", str(root / "x"), "--metric", "bleu"])
    assert result.exit_code == 2 and "bleu" in result.output


def test_source_listing_defaults_and_tar_layout(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    for name in ("a/2.jsonl", "a/1.json", "a/notes.txt", "b.parquet"):
        (tmp_path / name).write_text("")
    found = list_sources([str(tmp_path / "a"), str(tmp_path / "*.parquet")])
    assert [(Path(s.url).name, s.format) for s in found] == [("1.json", "json"), ("2.jsonl", "jsonl"),
                                                             ("b.parquet", "parquet")]
    with pytest.raises(ValueError, match="not a .json"):
        list_sources([str(tmp_path / "a" / "notes.txt")])
    assert default_metric("", "s3://x/lmms-lab/ChartQA/test.parquet") == "relaxed"
    assert default_metric("OCRBench", "") == "contains" and default_metric("", "mine.json") is None
    assert benchmark_in("s3://raw/lmms-lab/DocVQA/InfographicVQA/validation-0.parquet") == "infographicvqa"
    data = tar_bytes([("k1", b"{}", b"img", "png"), ("k2", b"{}", None, "")])
    import tarfile

    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        infos = archive.getmembers()
    assert [i.name for i in infos] == ["k1.png", "k1.json", "k2.json"]
    assert {(i.mtime, i.uid, i.uname, i.mode) for i in infos} == {(0, 0, "visor", 0o644)}


def test_pack_from_and_to_s3(ray_local, s3_env, tmp_path: Path) -> None:
    import boto3

    sources = make_sources(tmp_path)
    client = boto3.client("s3", endpoint_url=s3_env, region_name="us-east-1")
    client.create_bucket(Bucket="raw")
    for key, path in (("src/llava.json", sources["json"]), ("src/extra.jsonl", sources["jsonl"]),
                      ("src/docvqa/val.parquet", sources["parquet"] / "val.parquet")):
        client.put_object(Bucket="raw", Key=key, Body=path.read_bytes())
    for path in sources["images"].rglob("*"):
        if path.is_file():
            client.put_object(Bucket="raw", Key=f"img/{path.relative_to(sources['images']).as_posix()}",
                              Body=path.read_bytes())
    options = PackOptions(image_root="s3://raw/img", shard_size=4, storage=S3Options())
    remote = pack(["s3://raw/src/llava.json", "s3://raw/src/*.jsonl", "s3://raw/src/docvqa/"], "s3://raw/shards",
                  options)
    local = pack([str(sources["json"]), str(sources["jsonl"]), str(sources["parquet"])], str(tmp_path / "local"),
                 PackOptions(image_root=str(sources["images"]), shard_size=4))
    assert remote["packed"] == local["packed"] == 12 and remote["skipped"] == local["skipped"] == EXPECTED_SKIPPED
    assert remote["data_version"] == local["data_version"]  # the same bytes wherever they were packed
    assert ShardSet.resolve("s3://raw/shards").version == remote["data_version"]
    report = client.get_object(Bucket="raw", Key="shards/pack_quarantine.jsonl")["Body"].read().decode()
    assert {json.loads(line)["url"] for line in report.splitlines()} == {"s3://raw/src/llava.json",
                                                                         "s3://raw/src/extra.jsonl"}


def test_references_and_metric_are_checked_like_the_rest_of_a_sample() -> None:
    from pipelines.validate import Rejected, parse_sample

    def sample(**extra) -> bytes:
        return json.dumps({"conversations": turn("what ?", "red"), **extra}).encode()

    parsed = parse_sample(None, sample(answers=["red", "Red"], metric="vqa"), 10**6)
    assert parsed.metadata == {"answers": ["red", "Red"], "metric": "vqa"}
    for extra, reason in (({"answers": "red"}, "bad_answers"), ({"answers": []}, "bad_answers"),
                          ({"answers": ["red", " "]}, "bad_answers"), ({"metric": "bleu"}, "unknown_metric")):
        with pytest.raises(Rejected) as caught:
            parse_sample(None, sample(**extra), 10**6)
        assert caught.value.reason == reason, extra


def test_benchmark_export_rows_get_references_metric_and_source() -> None:
    from pipelines.pack import pack_row

    chartqa = json.dumps({"question": "what is the peak ?", "answer": "12", "type": "human_test", "label": "12.0"})
    record, image, extension = pack_row("/x/lmms-lab/ChartQA/test.parquet", chartqa, tiny_png(), PackOptions())
    sample = json.loads(record)
    assert sample["conversations"] == turn("<image>\nwhat is the peak ?", "12")
    assert (sample["answers"], sample["metric"], sample["data_source"]) == (["12"], "relaxed", "chartqa")
    assert image == tiny_png() and extension == "png"
    chosen = PackOptions(answers_field="label", metric="exact", data_source="charts")
    sample = json.loads(pack_row("/x/mine.parquet", chartqa, tiny_png(), chosen)[0])
    assert (sample["answers"], sample["metric"], sample["data_source"]) == (["12.0"], "exact", "charts")
    plain = json.dumps({"conversations": turn("is it red ?", "red")})  # no references, no benchmark: neither added
    assert set(json.loads(pack_row("/x/train.jsonl", plain, None, PackOptions())[0])) == {"conversations"}
