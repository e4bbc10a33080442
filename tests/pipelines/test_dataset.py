"""The Ray Data path: planted bad samples are quarantined by reason, valid ones all come out;
ShardWriter shards, S3 shards (moto on 127.0.0.1) and the collate function."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from pipelines.dataset import Collator, build_split
from pipelines.options import ReadOptions
from pipelines.quarantine import QuarantineLedger
from pipelines.shards import data_version, resolve_shards
from pipelines.synth import write_synth
from tests.pipelines.helpers import add_member, bomb_png, record, tiny_png, upload

LONG_QUESTION = "<image>\n" + " ".join(["what colour is the box ?"] * 60)

# key -> (members, expected reason or None for valid); written with webdataset.ShardWriter
CONTENT_CASES: dict[str, tuple[dict[str, bytes], str | None]] = {
    "valid-a": ({"png": tiny_png(40, 30, 1), "json": record(question_type="coarse")}, None),
    "valid-b": ({"jpg": tiny_png(70, 20, 2), "json": record(answer="blue green")}, None),
    "text-only": ({"json": record(question="how many ?", answer="it")}, None),
    "multi-turn": ({"png": tiny_png(33, 33, 3), "json": json.dumps({"conversations": [
        {"from": "human", "value": "<image>\nwhat colour is the box ?"}, {"from": "gpt", "value": "red"},
        {"from": "human", "value": "how many ?"}, {"from": "gpt", "value": "blue"}]}).encode()}, None),
    "truncated-image": ({"png": tiny_png(40, 40, 4)[:60], "json": record()}, "undecodable_image"),
    "garbage-image": ({"png": b"this is not an image", "json": record()}, "undecodable_image"),
    "zero-byte": ({"png": b"", "json": record()}, "empty_file"),
    "bomb": ({"png": bomb_png(), "json": record()}, "decompression_bomb"),
    "no-json": ({"png": tiny_png(20, 20, 5)}, "missing_json"),
    "no-image": ({"json": record()}, "missing_image"),
    "bad-json": ({"png": tiny_png(20, 20, 6), "json": b'{"conversations": [oops'}, "malformed_json"),
    "latin1": ({"png": tiny_png(20, 20, 7), "json": record(answer="CAFE").replace(b"CAFE", b"caf\xe9")},
               "non_utf8_text"),
    "no-placeholder": ({"png": tiny_png(20, 20, 8), "json": record(question="what colour ?")},
                       "no_image_placeholder"),
    "two-placeholders": ({"png": tiny_png(20, 20, 9), "json": record(question="<image> <image> what ?")},
                         "extra_image_placeholders"),
    "empty-answer": ({"png": tiny_png(20, 20, 10), "json": record(answer="  ")}, "empty_answer"),
    "not-a-conversation": ({"png": tiny_png(20, 20, 11), "json": b'{"question": "what?"}'}, "bad_conversation"),
    "too-long": ({"png": tiny_png(20, 20, 12), "json": record(question=LONG_QUESTION)}, "too_long"),
}
MAX_LENGTH = 200


def write_planted(root: Path) -> dict[tuple[str, str], str | None]:
    """Three shards: content-level cases (ShardWriter), structural cases (tarfile), a truncated shard.
    Returns the expected outcome for each (shard file name, key)."""
    import webdataset as wds

    root.mkdir(parents=True, exist_ok=True)
    expected: dict[tuple[str, str], str | None] = {}
    with wds.ShardWriter(str(root / "content-%06d.tar"), maxcount=1000, verbose=0) as sink:
        for key, (members, reason) in CONTENT_CASES.items():
            sink.write({"__key__": key, **members})
            expected[("content-000000.tar", key)] = reason
    with tarfile.open(root / "structure-000000.tar", "w") as archive:
        add_member(archive, "ok-1.png", tiny_png(30, 30, 20))
        add_member(archive, "ok-1.json", record())
        add_member(archive, "dup.json", record())
        add_member(archive, "dup.json", record())
        add_member(archive, "two-images.png", tiny_png(30, 30, 21))
        add_member(archive, "two-images.jpg", tiny_png(30, 30, 22))
        add_member(archive, "two-images.json", record())
        add_member(archive, "split.png", tiny_png(30, 30, 23))
        add_member(archive, "ok-2.json", record(question="how many ?", answer="blue"))
        add_member(archive, "split.json", record())
    expected.update({("structure-000000.tar", "ok-1"): None, ("structure-000000.tar", "dup"): "duplicate_member",
                     ("structure-000000.tar", "two-images"): "multiple_images",
                     ("structure-000000.tar", "split"): "split_sample",  # its first part: missing_json
                     ("structure-000000.tar", "ok-2"): None})
    whole = root / "whole.tmp"
    with tarfile.open(whole, "w") as archive:
        for i in range(3):
            add_member(archive, f"before-{i}.png", tiny_png(30, 30, 30 + i))
            add_member(archive, f"before-{i}.json", record())
        add_member(archive, "cut.png", tiny_png(64, 64, 40))
        cut_offset = archive.offset - 5000  # inside cut.png's data
    data = whole.read_bytes()
    whole.unlink()
    (root / "truncated-000000.tar").write_bytes(data[:cut_offset])
    expected.update({("truncated-000000.tar", f"before-{i}"): None for i in range(3)})
    expected[("truncated-000000.tar", "cut")] = "truncated_shard"
    return expected


def collect(split, pad_id: int = 0) -> list[dict]:
    rows = []
    for batch in split.dataset.iter_batches(batch_size=7, batch_format="numpy"):
        for i in range(len(batch["key"])):
            rows.append({name: batch[name][i] for name in batch})
    return rows


def test_planted_bad_samples_are_quarantined_by_reason(ray_local, processor, tmp_path: Path) -> None:
    expected = write_planted(tmp_path / "shards")
    ledger = QuarantineLedger.remote()
    options = ReadOptions(max_length=MAX_LENGTH, preprocess_batch_size=4)
    split = build_split(str(tmp_path / "shards"), processor, options, ledger)
    rows = collect(split)
    report = ray_local.get(ledger.report.remote())

    valid = {k for k, reason in expected.items() if reason is None}
    assert {(Path(r["url"]).name, r["key"]) for r in rows} == valid and len(rows) == len(valid)
    quarantined = {(Path(r["url"]).name, r["key"], r["reason"]) for r in report.records}
    # the first, contiguous part of the split sample has its image but no JSON: quarantined too
    assert quarantined == {(*k, reason) for k, reason in expected.items() if reason is not None} | {
        ("structure-000000.tar", "split", "missing_json")}
    assert report.seen == len(rows) + len(report.records) and report.valid == len(rows)
    assert report.by_reason["undecodable_image"] == 2

    lines = [json.loads(x) for x in report.write_jsonl(tmp_path / "q.jsonl").read_text().splitlines()]
    assert len(lines) == len(report.records) and set(lines[0]) == {"url", "key", "reason", "detail"}
    assert all(Path(line["url"]).is_absolute() for line in lines)

    by_key = {r["key"]: r for r in rows}
    multi = by_key["multi-turn"]
    kept = multi["labels"][multi["labels"] != -100]
    assert processor.tokenizer.decode(kept, skip_special_tokens=True).split() == ["red", "blue"]
    assert by_key["text-only"]["num_tiles"] == 0 and by_key["text-only"]["pixel_values"].shape == (0, 3, 32, 32)
    assert by_key["valid-a"]["question_type"] == "coarse"
    assert by_key["valid-b"]["image_sizes"].tolist() == [20, 70]
    assert max(r["length"] for r in rows) <= MAX_LENGTH


def test_rows_match_the_processor_and_collate_pads(ray_local, processor, tmp_path: Path) -> None:
    write_synth(tmp_path, 12, 0, 5, seed=1)
    split = build_split(str(tmp_path / "train-*.tar"), processor, ReadOptions(preprocess_batch_size=5))
    rows = sorted(collect(split), key=lambda r: r["key"])
    assert len(rows) == 12 and split.version == data_version(resolve_shards(str(tmp_path / "train-*.tar")))

    import webdataset as wds  # the generator's shards read back with webdataset's own reader

    samples = sorted(wds.WebDataset(sorted(str(p) for p in tmp_path.glob("train-*.tar")), shardshuffle=False)
                     .decode("pil"), key=lambda s: s["__key__"])
    for row, sample in zip(rows, samples, strict=True):
        conversation = sample["json"]["conversations"]  # training samples: three turns
        turns = [(conversation[i]["value"].replace("<image>", "").strip(), conversation[i + 1]["value"])
                 for i in range(0, len(conversation), 2)]
        assert len(turns) == 3
        example = processor.build_chat(sample["png"].convert("RGB"), turns)
        assert np.array_equal(row["input_ids"], example["input_ids"][0].numpy())
        assert np.array_equal(row["labels"], example["labels"][0].numpy())
        assert np.array_equal(row["pixel_values"], example["pixel_values"][0].numpy())

    batch = {name: np.array([r[name] for r in rows[:4]] + [None], dtype=object)[:4] for name in rows[0]}
    collated = Collator(pad_token_id=0)(batch)
    lengths = [len(r["input_ids"]) for r in rows[:4]]
    assert collated["input_ids"].shape == (4, max(lengths))
    assert collated["attention_mask"].sum(1).tolist() == lengths
    tiles = [r["num_tiles"] for r in rows[:4]]
    assert collated["pixel_values"].shape[:2] == (4, max(tiles)) and collated["image_sizes"].shape == (4, 2)
    for i, row in enumerate(rows[:4]):
        assert torch.equal(collated["pixel_values"][i, : tiles[i]], torch.as_tensor(row["pixel_values"]))
        assert not collated["pixel_values"][i, tiles[i]:].any()
        assert (collated["labels"][i, lengths[i]:] == -100).all()


def test_collate_without_images_has_no_pixel_values() -> None:
    batch = {"input_ids": np.array([np.array([5, 6, 7]), np.array([5])], dtype=object),
             "labels": np.array([np.array([-100, 6, 7]), np.array([5])], dtype=object),
             "pixel_values": np.array([np.zeros((0, 3, 8, 8)), np.zeros((0, 3, 8, 8))], dtype=object),
             "image_sizes": np.array([np.zeros(2), np.zeros(2)], dtype=object)}
    out = Collator(pad_token_id=9)(batch)
    assert set(out) == {"input_ids", "attention_mask", "labels"}
    assert out["input_ids"].tolist() == [[5, 6, 7], [5, 9, 9]] and out["labels"].tolist() == [[-100, 6, 7],
                                                                                              [5, -100, -100]]


def test_s3_shards_give_the_same_rows_and_version(ray_local, processor, s3_env: str, tmp_path: Path) -> None:
    write_synth(tmp_path, 9, 0, 4, seed=2)
    upload(s3_env, "visor-rows", tmp_path, "synth")
    local = build_split(str(tmp_path / "train-*.tar"), processor)
    remote = build_split("s3://visor-rows/synth/", processor)
    assert remote.version == local.version
    local_rows, remote_rows = (sorted(collect(s), key=lambda r: r["key"]) for s in (local, remote))
    assert [r["url"] for r in remote_rows] == [f"s3://visor-rows/synth/{Path(r['url']).name}" for r in local_rows]
    for a, b in zip(local_rows, remote_rows, strict=True):
        assert a["key"] == b["key"] and np.array_equal(a["input_ids"], b["input_ids"])
        assert np.array_equal(a["pixel_values"], b["pixel_values"])
    with pytest.raises(FileNotFoundError, match="s3://no-such-bucket/synth"):
        build_split("s3://no-such-bucket/synth", processor)
