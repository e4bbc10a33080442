"""A Ray Data datasource for WebDataset shards that never fails a job on a damaged shard.

Why not ``ray.data.read_webdataset``: on a truncated tar, a member name seen
twice in one sample, or a sample whose members are not contiguous it raises,
which fails the read task and, after retries, the whole job. This reader walks
the tar stream the same way (members grouped by the key before the first dot
of the file name, as WebDataset defines it) but turns each of those cases into
a row carrying an ``error`` reason, so the validation step quarantines and
counts it while every intact sample of the shard still comes through. It also
keeps raw bytes only: nothing is unpickled or decoded here.

Rows (one per sample; an Arrow block of :data:`SCHEMA` per ``rows_per_block`` samples):

* ``key`` (str), ``url`` (the shard's path as given to the reader);
* ``image`` (bytes or None) and ``image_ext`` (``jpg``/``jpeg``/``png``/``webp`` or None);
* ``json`` (bytes or None);
* ``error`` (None, or a reader-level reason: ``truncated_shard``,
  ``duplicate_member``, ``split_sample``, ``multiple_images``).
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterator

import pyarrow as pa
from ray.data.datasource import FileBasedDatasource

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
SCHEMA = pa.schema([("key", pa.string()), ("url", pa.string()), ("image", pa.binary()),
                    ("image_ext", pa.string()), ("json", pa.binary()), ("error", pa.string())])
COLUMNS = tuple(SCHEMA.names)


def split_member(name: str) -> tuple[str, str] | None:
    """``(key, extension)`` of a tar member: the key is the path up to the first dot of the
    file name (WebDataset's rule), the extension the rest, lower-cased; None without a dot."""
    directory, _, filename = name.rpartition("/")
    if "." not in filename or filename.startswith("."):
        return None
    stem, extension = filename.split(".", 1)
    return (f"{directory}/{stem}" if directory else stem), extension.lower()


def _empty_row(key: str, url: str) -> dict:
    return dict.fromkeys(COLUMNS) | {"key": key, "url": url}


def iter_samples(stream, url: str) -> Iterator[dict]:
    """Rows of the tar ``stream`` (see the module docstring); never raises on bad tar content."""
    current: dict | None = None
    finished: set[str] = set()

    def flush(row: dict | None) -> Iterator[dict]:
        if row is not None:
            finished.add(row["key"])
            yield row

    try:
        with tarfile.open(fileobj=stream, mode="r|*") as archive:
            for member in archive:
                if not member.isreg():
                    continue
                parts = split_member(member.name)
                if parts is None:
                    continue
                key, extension = parts
                if current is None or key != current["key"]:
                    yield from flush(current)
                    current = _empty_row(key, url)
                    if key in finished:
                        current["error"] = "split_sample"
                data = archive.extractfile(member).read()  # a truncated member raises here, blaming its sample
                if extension in IMAGE_EXTENSIONS:
                    if current["image_ext"] is not None:
                        same = current["image_ext"] == extension
                        current["error"] = current["error"] or ("duplicate_member" if same else "multiple_images")
                    current["image"], current["image_ext"] = data, extension
                elif extension == "json":
                    if current["json"] is not None:
                        current["error"] = current["error"] or "duplicate_member"
                    current["json"] = data
    except (tarfile.TarError, EOFError, OSError, ValueError):
        truncated = current or _empty_row("<unreadable>", url)
        truncated["error"] = "truncated_shard"
        current = truncated
    yield from flush(current)


class ShardDatasource(FileBasedDatasource):
    """WebDataset ``.tar`` shards as rows of raw bytes (see the module docstring).

    ``paths`` are local paths or bucket/key paths of ``filesystem`` (pass the
    fsspec/pyarrow filesystem built from :class:`pipelines.shards.S3Options`);
    a row's ``url`` is ``url_scheme`` + its path (``"s3://"`` for S3).
    """

    _FILE_EXTENSIONS = ["tar"]

    def __init__(self, paths: list[str], rows_per_block: int = 256, url_scheme: str = "", **file_based_kwargs):
        super().__init__(paths, **file_based_kwargs)
        self.rows_per_block = rows_per_block
        self.url_scheme = url_scheme

    def _read_stream(self, f: pa.NativeFile, path: str) -> Iterator[pa.Table]:
        rows: list[dict] = []
        for row in iter_samples(f, self.url_scheme + path):
            rows.append(row)
            if len(rows) >= self.rows_per_block:
                yield pa.Table.from_pylist(rows, schema=SCHEMA)
                rows = []
        if rows:
            yield pa.Table.from_pylist(rows, schema=SCHEMA)
