"""``visor data inspect``: counts through the real pipeline, JSON for scripts, rendered samples."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import webdataset as wds
from PIL import Image
from typer.testing import CliRunner

from jobs.cli import app
from pipelines.synth import write_synth
from tests.pipelines.helpers import record, tiny_png


def test_inspect_json_counts_and_render(ray_local, tmp_path: Path) -> None:
    write_synth(tmp_path, 9, 3, 6, seed=3)
    with wds.ShardWriter(str(tmp_path / "bad-%06d.tar"), maxcount=10, verbose=0) as sink:
        sink.write({"__key__": "broken", "png": b"\x89PNG broken", "json": record()})
        sink.write({"__key__": "empty", "png": tiny_png(), "json": record(answer="")})
    runner = CliRunner()
    result = runner.invoke(app, ["data", "inspect", str(tmp_path), "--json", "--render", str(tmp_path / "render"),
                                 "--render-count", "2", "--report", str(tmp_path / "q.jsonl")])
    assert result.exit_code == 0, result.output
    stats = json.loads(result.stdout.strip().splitlines()[-1])
    assert stats["samples"] == 14 and stats["valid"] == 12
    assert stats["quarantined"] == {"empty_answer": 1, "undecodable_image": 1}
    assert stats["question_types"] == {"coarse": 7, "fine": 5} and stats["shards"] == 4
    assert sum(stats["tiles"].values()) == 12 and set(stats["tiles"]) <= {"5", "7", "10"}
    assert stats["tokens"]["max"] <= 256 and len(stats["data_version"]) == 16  # three-turn training samples
    assert sorted(json.loads(line)["key"] for line in (tmp_path / "q.jsonl").read_text().splitlines()) == [
        "broken", "empty"]
    pictures = sorted((tmp_path / "render").glob("*.png"))
    assert len(pictures) == 2 and Image.open(pictures[0]).size[0] > 200


def test_inspect_errors_are_clear(ray_local, tmp_path: Path) -> None:
    write_synth(tmp_path / "data", 3, 0, 3, seed=0)
    runner = CliRunner()
    result = runner.invoke(app, ["data", "inspect", str(tmp_path / "data" / "nothing-*.tar")])
    assert result.exit_code == 2 and "matches no .tar shard" in result.output
    result = runner.invoke(app, ["data", "inspect", str(tmp_path / "data"), "--processor", str(tmp_path)])
    assert result.exit_code == 2 and "cannot load a processor" in result.output
    (tmp_path / "elsewhere").mkdir()  # shards without a processor/ beside them
    shutil.copy(next((tmp_path / "data").glob("train-*.tar")), tmp_path / "elsewhere")
    result = runner.invoke(app, ["data", "inspect", str(tmp_path / "elsewhere")])
    assert result.exit_code == 2 and "--processor" in result.output
