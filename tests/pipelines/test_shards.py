"""Shard specs (local and S3 through a moto server on 127.0.0.1) and the data version."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from pipelines.shards import S3Options, ShardInfo, ShardSet, data_version, resolve_shards
from tests.pipelines.helpers import upload


def write_shards(root: Path, n: int, prefix: str = "train") -> list[Path]:
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = root / f"{prefix}-{i:06d}.tar"
        path.write_bytes(f"shard {i} of {prefix}".encode() * (i + 1))
        paths.append(path)
    return paths


@pytest.fixture
def shard_dir(tmp_path: Path) -> Path:
    write_shards(tmp_path / "data", 3)
    write_shards(tmp_path / "data", 2, prefix="eval")
    (tmp_path / "data" / "notes.txt").write_text("not a shard")
    return tmp_path / "data"


def urls(shards: list[ShardInfo]) -> list[str]:
    return [Path(s.url).name for s in shards]


def test_directory_spec_lists_every_tar_sorted(shard_dir: Path) -> None:
    shards = resolve_shards(str(shard_dir))
    assert urls(shards) == ["eval-000000.tar", "eval-000001.tar", "train-000000.tar", "train-000001.tar",
                            "train-000002.tar"]
    first = shards[2]
    data = (shard_dir / "train-000000.tar").read_bytes()
    assert Path(first.url).is_absolute() and first.size == len(data)
    assert first.fingerprint == hashlib.md5(data).hexdigest() and first.name == "train-000000.tar"


def test_glob_brace_file_and_list_specs(shard_dir: Path) -> None:
    assert urls(resolve_shards(f"{shard_dir}/train-*.tar")) == [f"train-00000{i}.tar" for i in range(3)]
    assert urls(resolve_shards(f"{shard_dir}/train-{{000000..000001}}.tar")) == ["train-000000.tar",
                                                                                "train-000001.tar"]
    assert urls(resolve_shards(str(shard_dir / "eval-000001.tar"))) == ["eval-000001.tar"]
    both = resolve_shards([str(shard_dir / "train-000002.tar"), f"{shard_dir}/eval-*.tar"])
    assert urls(both) == ["train-000002.tar", "eval-000000.tar", "eval-000001.tar"]


def test_spec_matching_nothing_names_the_spec(shard_dir: Path) -> None:
    for spec in (f"{shard_dir}/test-*.tar", str(shard_dir / "missing.tar"), str(shard_dir / "empty")):
        with pytest.raises(ValueError, match="matches no"):
            resolve_shards(spec)
    with pytest.raises(ValueError, match="train-000003.tar does not exist"):
        resolve_shards(f"{shard_dir}/train-{{000000..000007}}.tar")


def test_data_version_changes_on_add_and_modify_not_on_reorder(shard_dir: Path) -> None:
    shards = resolve_shards(str(shard_dir))
    version = data_version(shards)
    assert len(version) == 16 and version == data_version(list(reversed(shards)))
    assert data_version(resolve_shards(str(shard_dir))) == version
    write_shards(shard_dir, 4)  # adds train-000003.tar, rewrites the others identically
    added = data_version(resolve_shards(str(shard_dir)))
    assert added != version
    path = shard_dir / "train-000001.tar"
    data = bytearray(path.read_bytes())
    data[0] ^= 1  # same size, different content
    path.write_bytes(bytes(data))
    assert data_version(resolve_shards(str(shard_dir))) not in (version, added)


def test_s3_options_read_env(s3_env: str) -> None:
    options = S3Options()
    assert (options.endpoint_url, options.region, options.key, options.secret) == (
        s3_env, "us-east-1", "testing", "testing")
    assert options.filesystem().client_kwargs == {"region_name": "us-east-1"}


def test_s3_specs_give_the_same_data_version_as_local(shard_dir: Path, s3_env: str) -> None:
    upload(s3_env, "visor-data", shard_dir, "synth/v1")
    local = resolve_shards(str(shard_dir))
    remote = resolve_shards("s3://visor-data/synth/v1")
    assert [s.url for s in remote] == [f"s3://visor-data/synth/v1/{Path(s.url).name}" for s in local]
    assert [(s.name, s.size, s.fingerprint) for s in remote] == [(s.name, s.size, s.fingerprint) for s in local]
    assert data_version(remote) == data_version(local)
    assert data_version(resolve_shards("s3://visor-data/synth/v1/")) == data_version(local)
    single = resolve_shards("s3://visor-data/synth/v1/train-000001.tar")
    assert [s.name for s in single] == ["train-000001.tar"]
    assert len(resolve_shards("s3://visor-data/synth/v1/train-*.tar")) == 3
    assert len(resolve_shards("s3://visor-data/synth/v1/eval-{000000..000001}.tar")) == 2


def test_s3_errors_name_the_url(shard_dir: Path, s3_env: str) -> None:
    upload(s3_env, "visor-errors", shard_dir, "data")
    with pytest.raises(FileNotFoundError, match="s3://no-such-bucket/data"):
        resolve_shards("s3://no-such-bucket/data")
    with pytest.raises(ValueError, match="s3://visor-errors/elsewhere"):
        resolve_shards("s3://visor-errors/elsewhere")


def test_missing_credentials_name_the_url(s3_env: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    assert os.environ.get("AWS_ACCESS_KEY_ID") is None
    with pytest.raises(PermissionError, match="s3://visor-data/synth"):
        resolve_shards("s3://visor-data/synth")


def test_a_shard_set_is_listed_once_and_finds_its_processor(shard_dir: Path) -> None:
    spec = [f"{shard_dir}/train-*.tar", str(shard_dir / "eval-000000.tar")]
    shards = ShardSet.resolve(spec)
    assert urls(list(shards.shards)) == ["train-000000.tar", "train-000001.tar", "train-000002.tar",
                                         "eval-000000.tar"]
    assert len(shards) == 4 and shards.version == data_version(resolve_shards(spec))
    assert ShardSet.of(shards) is shards and shards.processor_dir() is None
    (shard_dir / "processor").mkdir()
    assert shards.processor_dir() == shard_dir / "processor"  # beside the shards, where `visor data synth` puts it
    nested = shard_dir / "more"
    write_shards(nested, 1)
    assert ShardSet.resolve(str(nested)).processor_dir() == shard_dir / "processor"  # or one folder up
    assert ShardSet((ShardInfo("s3://bucket/a.tar", 1, "0" * 32, "a.tar"),)).processor_dir() is None
