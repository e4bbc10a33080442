"""Shard specs and the data version.

A *shard spec* names WebDataset tar files: a local file, a directory (every
``*.tar`` below it, recursively, sorted), a glob (``data/train-*.tar``), a brace
pattern (``train-{000000..000009}.tar``), or ``s3://bucket/prefix`` (every
``.tar`` object under the prefix) / ``s3://bucket/key.tar``; globs and braces
work on S3 too. A list of specs is the concatenation of their shards.

The *data version* (:func:`data_version`) hashes, for every shard, its name
relative to its spec root, its size and the MD5 of its bytes. The MD5 equals the
S3 ETag of a non-multipart upload, so the same files give the same version
whether listed locally or from S3; the order of the list does not matter.

A :class:`ShardSet` is a spec listed once, with the S3 options that reach it: a
job lists its data once and passes the set down (to the split, the data version,
the processor next to the shards) instead of the spec.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from braceexpand import braceexpand

if TYPE_CHECKING:
    import s3fs

MAGIC = "*?[{"
_CHUNK = 1 << 20


def _env(*names: str) -> str | None:
    for name in names:
        if os.environ.get(name):
            return os.environ[name]
    return None


@dataclass
class S3Options:
    """How to reach an S3-compatible store; every field defaults from the usual ``AWS_*`` variable.

    Always pass the filesystem from :meth:`filesystem` explicitly: pyarrow's own
    ``S3FileSystem()`` ignores ``AWS_ENDPOINT_URL``.
    """

    endpoint_url: str | None = field(default_factory=lambda: _env("AWS_ENDPOINT_URL"))
    region: str | None = field(default_factory=lambda: _env("AWS_REGION", "AWS_DEFAULT_REGION"))
    key: str | None = field(default_factory=lambda: _env("AWS_ACCESS_KEY_ID"))
    secret: str | None = field(default_factory=lambda: _env("AWS_SECRET_ACCESS_KEY"))
    anon: bool = False

    def filesystem(self) -> s3fs.S3FileSystem:
        """A fresh ``s3fs.S3FileSystem`` built from these options (no instance or listing cache)."""
        import s3fs

        client_kwargs = {"region_name": self.region} if self.region else {}
        return s3fs.S3FileSystem(
            anon=self.anon,
            key=self.key,
            secret=self.secret,
            endpoint_url=self.endpoint_url,
            client_kwargs=client_kwargs,
            skip_instance_cache=True,
            use_listings_cache=False,
        )


@dataclass(frozen=True)
class ShardInfo:
    """One shard: ``url`` (``s3://bucket/key`` or an absolute local path), ``size`` in bytes,
    ``fingerprint`` (hex MD5 of the bytes) and ``name`` (path relative to the spec's root)."""

    url: str
    size: int
    fingerprint: str
    name: str


def _root(spec: str) -> str:
    """The directory part of ``spec`` before its first glob/brace character."""
    cut = min((i for i in (spec.find(c) for c in MAGIC) if i >= 0), default=-1)
    if cut < 0:
        return spec
    return spec[: spec.rfind("/", 0, cut) + 1] if "/" in spec[:cut] else ""


def _has_magic(spec: str) -> bool:
    return any(c in spec for c in MAGIC)


@lru_cache(maxsize=65536)
def _local_md5(path: str, size: int, mtime_ns: int) -> str:
    """MD5 of a local file; cached by (path, size, mtime) so repeated resolves don't re-read it."""
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _local_info(path: Path, root: Path) -> ShardInfo:
    path = path.resolve()
    stat = path.stat()
    try:
        name = path.relative_to(root.resolve()).as_posix()
    except ValueError:
        name = path.name
    return ShardInfo(str(path), stat.st_size, _local_md5(str(path), stat.st_size, stat.st_mtime_ns), name)


def _resolve_local(spec: str) -> list[ShardInfo]:
    path = Path(spec).expanduser()
    if _has_magic(spec):
        root = Path(_root(spec) or ".")
        matches: set[str] = set()
        for pattern in braceexpand(spec):
            found = glob.glob(os.path.expanduser(pattern))
            if not found and not _has_magic(pattern):
                raise ValueError(f"shard spec {spec!r}: {pattern} does not exist")
            matches.update(found)
        return [_local_info(Path(m), root) for m in sorted(matches) if Path(m).is_file()]
    if path.is_dir():
        return [_local_info(p, path) for p in sorted(path.rglob("*.tar")) if p.is_file()]
    if path.is_file():
        return [_local_info(path, path.parent)]
    return []


def _s3_md5(fs: s3fs.S3FileSystem, key: str, etag: str) -> str:
    etag = etag.strip('"')
    if etag and "-" not in etag:
        return etag
    digest = hashlib.md5()  # multipart upload: the ETag is not the MD5 of the bytes
    with fs.open(key, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _s3_info(fs: s3fs.S3FileSystem, info: dict, root: str) -> ShardInfo:
    key = info["name"]
    name = key[len(root):] if root and key.startswith(root) else key.rsplit("/", 1)[-1]
    return ShardInfo(f"s3://{key}", int(info["size"]), _s3_md5(fs, key, info.get("ETag", "")), name.lstrip("/"))


def _resolve_s3(spec: str, storage: S3Options) -> list[ShardInfo]:
    fs = storage.filesystem()
    path = spec[len("s3://"):]
    if not path or path.startswith("/"):
        raise ValueError(f"bad S3 URL {spec!r}: expected s3://bucket/prefix")
    try:
        if _has_magic(path):
            root = _root(path)
            infos = [i for p in braceexpand(path) for i in fs.glob(p, detail=True).values()]
        else:
            root = path.rstrip("/") + "/"
            infos = list(fs.find(root, detail=True).values())
            if not infos and path.endswith(".tar") and fs.isfile(path):
                root = path.rsplit("/", 1)[0] + "/" if "/" in path else ""
                infos = [fs.info(path)]
        infos = sorted((i for i in infos if i.get("type") == "file" and i["name"].endswith(".tar")),
                       key=lambda i: i["name"])
        return [_s3_info(fs, i, root) for i in infos]
    except FileNotFoundError as err:
        raise FileNotFoundError(f"cannot list {spec}: bucket or prefix not found ({err})") from err
    except PermissionError as err:
        raise PermissionError(f"cannot list {spec}: access denied or missing credentials ({err})") from err
    except OSError as err:
        raise OSError(f"cannot list {spec}: {err}") from err
    except Exception as err:  # botocore: NoCredentialsError, EndpointConnectionError, ...
        if type(err).__module__.startswith("botocore"):
            raise PermissionError(f"cannot list {spec}: {type(err).__name__}: {err}") from err
        raise


def resolve_shards(spec: str | list[str], storage: S3Options | None = None) -> list[ShardInfo]:
    """All shards named by ``spec`` (one spec or a list, concatenated in order, each sorted by name).

    Raises ``ValueError`` naming the spec when it matches nothing, and
    ``FileNotFoundError`` / ``PermissionError`` naming the URL when S3 refuses.
    """
    specs = [spec] if isinstance(spec, str) else list(spec)
    if not specs:
        raise ValueError("no shard spec given")
    shards: list[ShardInfo] = []
    for one in specs:
        if one.startswith("s3://"):
            found = _resolve_s3(one, storage or S3Options())
        else:
            found = _resolve_local(one)
        if not found:
            raise ValueError(f"shard spec {one!r} matches no .tar shard")
        shards.extend(found)
    return shards


def data_version(shards: Sequence[ShardInfo]) -> str:
    """16 hex chars of the SHA-256 of the sorted (name, size, content MD5) of ``shards``.

    Independent of list order and of where the shards live (local or S3); changes
    when a shard is added, removed, renamed or modified.
    """
    rows = sorted((s.name, s.size, s.fingerprint) for s in shards)
    return hashlib.sha256(json.dumps(rows, separators=(",", ":")).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ShardSet:
    """The shards of a spec, listed once (``shards``, in :func:`resolve_shards` order), and the S3 options
    (``storage``) that reach them."""

    shards: tuple[ShardInfo, ...]
    storage: S3Options = field(default_factory=S3Options)

    @classmethod
    def resolve(cls, spec: str | Sequence[str], storage: S3Options | None = None) -> ShardSet:
        """List ``spec`` now (raises as :func:`resolve_shards` does)."""
        storage = storage or S3Options()
        return cls(tuple(resolve_shards(list(spec) if not isinstance(spec, str) else spec, storage)), storage)

    @classmethod
    def of(cls, source: ShardSet | str | Sequence[str]) -> ShardSet:
        """``source`` itself when it is already listed, else its listing (S3 options from the environment)."""
        return source if isinstance(source, ShardSet) else cls.resolve(source)

    def __len__(self) -> int:
        return len(self.shards)

    @property
    def version(self) -> str:
        """The data version of these shards (:func:`data_version`)."""
        return data_version(self.shards)

    def processor_dir(self) -> Path | None:
        """The ``processor/`` directory beside the first local shard — in its folder or the one above, where
        ``visor data synth`` writes the processor of its shards; None for S3 shards or when there is none."""
        first = self.shards[0].url
        if first.startswith("s3://"):
            return None
        for folder in Path(first).parents[:2]:
            if (folder / "processor").is_dir():
                return folder / "processor"
        return None
