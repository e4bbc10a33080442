"""``visor data pack``: real VLM datasets (LLaVA JSON / JSON lines + an image folder, Hugging Face parquet exports)
→ WebDataset shards in the layout :mod:`pipelines.reader` reads, as one Ray Data job.

Sources (:func:`list_sources`): files, directories (every ``.json``/``.jsonl``/``.parquet`` below, sorted), globs,
local or ``s3://``. The job, for each run of consecutive sources of one format:

1. reads them with Ray Data's readers — ``read_binary_files`` for a JSON array (one task a file, the array split
   into rows), ``read_text`` for JSON lines (one row a line), ``read_parquet`` — so a row that does not parse, or
   a column whose type varies between rows, is one quarantined row, never a failed read;
2. packs rows in parallel tasks (:func:`pack_batch`): the image's bytes come from the parquet ``image`` struct
   (``{bytes, path}``) or from the file its path names (relative to ``--image-root``, default the source's folder;
   local or ``s3://``); the sample JSON is built (LLaVA ``conversations``, or a benchmark export's ``question``
   plus first answer; ``answers``; ``metric`` and ``data_source`` by default from :data:`BENCHMARK_METRICS` when
   the row's ``data_source`` or the source path names a benchmark) and checked with the reader's own
   :func:`pipelines.validate.parse_sample`, so every packed sample is one training will accept;
3. the driver takes the packed rows **in input order** (Ray Data's ``preserve_order``), gives each the key
   ``<source index>_<row index>`` (4 and 9 digits: no dot, unique) and cuts shards every ``shard_size`` samples
   or ``max_shard_bytes`` bytes; each shard is written by a Ray task (:func:`write_shard`: a tar with fixed
   mtime, owner and mode, members ``<key>.<ext>`` then ``<key>.json``).

Determinism: the same sources and options give byte-identical shards, hence the same data version.
Images are stored as their bytes came (no re-encoding) unless ``image_format`` asks for ``png``/``jpg``; a GIF,
BMP or TIFF, which the reader does not take, is stored as PNG.

Rows that cannot be packed are skipped, counted by reason and written to ``<out>/pack_quarantine.jsonl`` as
``{"url": source, "key", "reason", "detail"}`` lines (the reasons of :data:`pipelines.validate.REASONS`:
``missing_image_file``, ``undecodable_image``, ``bad_conversation``, ``no_image_placeholder``,
``extra_image_placeholders``, ``missing_image``, ``multiple_images`` — multi-image rows are not supported yet —,
``unreadable_source``, …). ``<out>/pack_manifest.json`` holds the summary :func:`pack` returns.
"""

from __future__ import annotations

import glob
import io
import json
import os
import tarfile
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .options import PackOptions
from .shards import S3Options, ShardSet
from .validate import IMAGE_PLACEHOLDER, Rejected, parse_sample

FORMATS = {".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}
# a benchmark's own metric, found by name in the row's ``data_source`` or in the source path (lmms-lab exports);
# the first name found wins, so InfoVQA (lmms-lab/DocVQA/InfographicVQA/…) comes before DocVQA
BENCHMARK_METRICS: dict[str, str] = {"infographicvqa": "anls", "infovqa": "anls", "docvqa": "anls",
                                     "chartqa": "relaxed", "textvqa": "vqa", "vqav2": "vqa", "ocrbench": "contains"}
PIL_EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}
ANSWER_FIELDS = ("answers", "answer")  # looked up in this order when --answers-field is not given
KEPT_FIELDS = ("id", "data_source", "question_type", "category", "question_id", "questionId")
PACKED_COLUMNS = ("url", "json", "image", "image_ext", "reason", "detail")
QUARANTINE_FILE = "pack_quarantine.jsonl"
MANIFEST_FILE = "pack_manifest.json"


@dataclass(frozen=True)
class Source:
    """One source file: ``url`` (local absolute path or ``s3://bucket/key``) and ``format`` (``json``/``jsonl``/
    ``parquet``)."""

    url: str
    format: str


def _format_of(url: str) -> str | None:
    return FORMATS.get(os.path.splitext(url)[1].lower())


def list_sources(specs: Sequence[str], storage: S3Options | None = None) -> list[Source]:
    """The source files of ``specs`` in order (each spec's matches sorted); raises ``ValueError`` naming a spec
    that matches no ``.json``/``.jsonl``/``.parquet`` file, or a file of another type."""
    sources: list[Source] = []
    for spec in specs:
        if spec.startswith("s3://"):
            fs = (storage or S3Options()).filesystem()
            path = spec.removeprefix("s3://")
            if any(c in path for c in "*?["):
                found = fs.glob(path)
            elif fs.isdir(path):
                found = fs.find(path)
            else:
                found = [path] if fs.exists(path) else []
            urls = [f"s3://{p}" for p in sorted(found)]
        else:
            local = os.path.expanduser(spec)
            if any(c in local for c in "*?["):
                urls = sorted(glob.glob(local, recursive=True))
            elif os.path.isdir(local):
                urls = sorted(str(p) for p in Path(local).rglob("*") if p.is_file())
            else:
                urls = [local] if os.path.isfile(local) else []
            urls = [str(Path(u).resolve()) for u in urls]
        if os.path.isfile(spec) or (spec.startswith("s3://") and len(urls) == 1 and urls[0] == spec):
            if _format_of(spec) is None:
                raise ValueError(f"source {spec!r}: not a .json, .jsonl or .parquet file")
        matched = [Source(u, _format_of(u)) for u in urls if _format_of(u) is not None]
        if not matched:
            raise ValueError(f"source {spec!r} matches no .json, .jsonl or .parquet file")
        sources.extend(matched)
    return sources


# ---- reading: each format's Ray Data reader → rows {"url": source, "record": JSON text, "image": bytes,
# "has_image": whether the row carries the image's bytes itself (a parquet image struct)}


def _split_json_files(batch: dict[str, np.ndarray]) -> dict[str, list]:
    """``read_binary_files`` rows (a whole JSON file each) → one row per element of its top-level array."""
    out: dict[str, list] = {"url": [], "record": []}
    for data, url in zip(batch["bytes"], batch["path"], strict=True):
        try:
            parsed = json.loads(bytes(data).decode("utf-8"))
            items = parsed if isinstance(parsed, list) else [parsed]
            records = [json.dumps(item, ensure_ascii=False) for item in items]
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            records = [f"\0unreadable: {type(err).__name__}: {err}"]
        for record in records:
            out["url"].append(str(url))
            out["record"].append(record)
    out["image"] = [b""] * len(out["url"])
    out["has_image"] = [False] * len(out["url"])
    return out


def _json_lines(batch: dict[str, np.ndarray]) -> dict[str, list]:
    """``read_text`` rows (one line each) → rows; the line is parsed when packed."""
    count = len(batch["text"])
    return {"url": [str(u) for u in batch["path"]], "record": [str(t) for t in batch["text"]],
            "image": [b""] * count, "has_image": [False] * count}


def _parquet_rows(batch: Any) -> dict[str, list]:
    """``read_parquet`` rows → rows: the ``image`` struct's bytes apart, its path and every other column as JSON."""
    out: dict[str, list] = {"url": [], "record": [], "image": [], "has_image": []}
    for row in batch.to_pylist():
        url = str(row.pop("path"))
        image = row.get("image")
        data = None
        if isinstance(image, dict):
            data = image.get("bytes")
            row["image"] = image.get("path") if data is None else None
        out["url"].append(url)
        out["image"].append(data or b"")
        out["has_image"].append(data is not None)
        out["record"].append(json.dumps(row, ensure_ascii=False, default=str))
    return out


def _read(sources: list[Source], storage: S3Options):
    """One Ray dataset of rows ``{url, record, image, has_image}`` for sources of one format, in order."""
    import ray.data

    remote = sources[0].url.startswith("s3://")
    paths = [s.url.removeprefix("s3://") for s in sources]
    kwargs: dict[str, Any] = {"include_paths": True}
    if remote:
        kwargs["filesystem"] = storage.filesystem()
    fmt = sources[0].format
    if fmt == "json":
        dataset = ray.data.read_binary_files(paths, **kwargs).map_batches(_split_json_files, batch_format="numpy")
    elif fmt == "jsonl":
        dataset = ray.data.read_text(paths, **kwargs).map_batches(_json_lines, batch_format="numpy")
    else:
        dataset = ray.data.read_parquet(paths, **kwargs).map_batches(_parquet_rows, batch_format="pyarrow")
    if remote:  # Ray drops the scheme from the path column
        dataset = dataset.map_batches(lambda b: {**b, "url": np.array([f"s3://{u}" for u in b["url"]], dtype=object)},
                                      batch_format="numpy")
    return dataset


# ---- packing one row


def benchmark_in(text: str) -> str | None:
    """The first benchmark of :data:`BENCHMARK_METRICS` whose name occurs in ``text`` (case ignored)."""
    return next((name for name in BENCHMARK_METRICS if name in text.lower()), None)


def default_metric(data_source: str, url: str) -> str | None:
    """The metric of the benchmark named in ``data_source`` or, failing that, in the source path."""
    name = benchmark_in(data_source) or benchmark_in(url)
    return BENCHMARK_METRICS[name] if name else None


def _references(record: dict, options: PackOptions) -> list[str] | None:
    fields = (options.answers_field,) if options.answers_field else ANSWER_FIELDS
    for name in fields:
        value = record.get(name)
        if value is None:
            continue
        values = value if isinstance(value, list) else [value]
        return [v if isinstance(v, str) else json.dumps(v) for v in values]
    return None


def _conversations(record: dict, references: list[str] | None, with_image: bool) -> Any:
    """The LLaVA ``conversations`` of a row: its own (a list, or a list as JSON text), or a benchmark export's
    ``question`` with the first reference as the answer; raises ``Rejected('bad_conversation')`` for neither."""
    conversations = record.get("conversations")
    if isinstance(conversations, str):
        try:
            conversations = json.loads(conversations)
        except json.JSONDecodeError as err:
            raise Rejected("bad_conversation", f"'conversations' is not JSON: {err}") from err
    if conversations is None and isinstance(record.get("question"), str) and references:
        question = record["question"]
        if IMAGE_PLACEHOLDER not in question and with_image:
            question = f"{IMAGE_PLACEHOLDER}\n{question}"
        conversations = [{"from": "human", "value": question}, {"from": "gpt", "value": references[0]}]
    if not isinstance(conversations, list) or not conversations:
        raise Rejected("bad_conversation", "no 'conversations' list (nor a 'question' with answers)")
    return conversations


def _image_paths(record: dict) -> list[str]:
    """The image file paths a row names (``image``: a path or a list of paths; ``images``: a list)."""
    paths: list[str] = []
    for name in ("image", "images"):
        value = record.get(name)
        if isinstance(value, str) and value:
            paths.append(value)
        elif isinstance(value, list):
            paths.extend(v if isinstance(v, str) else json.dumps(v) for v in value if v)
    return paths


def _join(root: str, path: str) -> str:
    if path.startswith("s3://") or os.path.isabs(path):
        return path
    return f"{root.rstrip('/')}/{path}"


def _load(url: str, storage: S3Options) -> bytes:
    """The bytes of an image file (local or ``s3://``); ``Rejected('missing_image_file')`` when it is not there."""
    try:
        if url.startswith("s3://"):
            return storage.filesystem().cat_file(url.removeprefix("s3://"))
        return Path(url).read_bytes()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as err:
        raise Rejected("missing_image_file", url) from err
    except OSError as err:
        raise Rejected("missing_image_file", f"{url}: {err}") from err


def _stored_image(data: bytes, image_format: str) -> tuple[bytes, str]:
    """``(bytes, extension)`` to store: as they came when the reader takes the format and nothing else is asked,
    else re-encoded (PNG, or JPEG for ``jpg``). The bytes were decoded once already (they are an image)."""
    with Image.open(io.BytesIO(data)) as image:
        kind = PIL_EXTENSIONS.get(image.format or "")
        if image_format == "keep" and kind is not None:
            return data, kind
        target = "jpg" if image_format == "jpg" else "png"
        converted = image.convert("RGB") if target == "jpg" or image.mode not in ("RGB", "RGBA", "L", "LA", "P") \
            else image
        buffer = io.BytesIO()
        converted.save(buffer, format="JPEG" if target == "jpg" else "PNG", **({"quality": 95} if target == "jpg"
                                                                                   else {"optimize": False}))
        return buffer.getvalue(), target


def pack_row(url: str, record_text: str, image: bytes | None, options: PackOptions) -> tuple[bytes, bytes | None, str]:
    """One source row → ``(sample JSON, image bytes or None, image extension or "")``; raises :class:`Rejected`
    with the reason it cannot be packed."""
    if record_text.startswith("\0unreadable: "):
        raise Rejected("unreadable_source", record_text.removeprefix("\0unreadable: ")[:500])
    try:
        record = json.loads(record_text)
    except json.JSONDecodeError as err:
        raise Rejected("unreadable_source", f"{err}: {record_text[:200]}") from err
    if not isinstance(record, dict):
        raise Rejected("bad_conversation", f"a row that is a {type(record).__name__}, not an object")
    paths = _image_paths(record)
    if len(paths) + (image is not None) > 1:
        raise Rejected("multiple_images", f"{len(paths) + (image is not None)} images: multi-image rows are not "
                                          "supported yet")
    if image is None and paths:
        root = options.image_root if options.image_root is not None else url.rsplit("/", 1)[0]
        image = _load(_join(root, paths[0]), options.storage or S3Options())
    references = _references(record, options)
    sample: dict[str, Any] = {"conversations": _conversations(record, references, image is not None)}
    sample.update({k: record[k] for k in KEPT_FIELDS if record.get(k) is not None})
    if options.data_source is not None:
        sample["data_source"] = options.data_source
    elif "data_source" not in sample and benchmark_in(url):  # e.g. lmms-lab/DocVQA/…parquet: its rows are DocVQA's
        sample["data_source"] = benchmark_in(url)
    if references is not None:
        sample["answers"] = references
    metric = options.metric or record.get("metric") or default_metric(str(sample.get("data_source", "")), url)
    if metric is not None:
        sample["metric"] = metric
    encoded = json.dumps(sample, ensure_ascii=False, sort_keys=True, default=str).encode()
    parse_sample(image, encoded, options.max_image_pixels)  # what the reader will check, so it accepts the sample
    if image is None:
        return encoded, None, ""
    data, extension = _stored_image(image, options.image_format)
    return encoded, data, extension


def pack_batch(batch: dict[str, np.ndarray], options: PackOptions) -> dict[str, np.ndarray]:
    """Rows ``{url, record, image, has_image}`` → rows of :data:`PACKED_COLUMNS` (``reason`` ``""`` for a packed
    sample, else why it was skipped, with ``detail``; ``image`` ``b""`` and ``image_ext`` ``""`` for a text-only
    sample — never None, which Ray would turn into NaN); one row out per row in, in order; never raises on a bad
    row."""
    out: dict[str, list] = {name: [] for name in PACKED_COLUMNS}
    for url, record, image, has_image in zip(batch["url"], batch["record"], batch["image"], batch["has_image"],
                                             strict=True):
        encoded, data, extension, reason, detail = b"", None, "", "", ""
        try:
            encoded, data, extension = pack_row(str(url), str(record), bytes(image) if has_image else None, options)
        except Rejected as err:
            reason, detail = err.reason, err.detail
        except Exception as err:  # an odd row must not end the job
            reason, detail = "processing_error", f"{type(err).__name__}: {err}"
        for name, value in zip(PACKED_COLUMNS, (str(url), encoded, data or b"", extension, reason, detail[:500]),
                               strict=True):
            out[name].append(value)
    return {name: _objects(values) for name, values in out.items()}


def _objects(values: list) -> np.ndarray:
    column = np.empty(len(values), dtype=object)
    column[:] = values
    return column


# ---- writing shards


def tar_bytes(samples: Sequence[tuple[str, bytes, bytes | None, str]]) -> bytes:
    """A deterministic tar of ``(key, json, image, extension)`` samples: ``<key>.<ext>`` then ``<key>.json``,
    mtime 0, owner ``visor`` (uid/gid 0), mode 0644."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as archive:
        for key, record, image, extension in samples:
            members = ([(f"{key}.{extension}", image)] if image is not None else []) + [(f"{key}.json", record)]
            for name, data in members:
                info = tarfile.TarInfo(name)
                info.size, info.mtime, info.mode = len(data), 0, 0o644
                info.uid = info.gid = 0
                info.uname = info.gname = "visor"
                archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def write_shard(url: str, samples: list[tuple[str, bytes, bytes | None, str]], storage: S3Options) -> int:
    """Write one shard (see :func:`tar_bytes`) to ``url`` (local path or ``s3://``); returns its size in bytes.
    Run as a Ray task by :func:`pack`."""
    data = tar_bytes(samples)
    if url.startswith("s3://"):
        storage.filesystem().pipe_file(url.removeprefix("s3://"), data)
    else:
        Path(url).write_bytes(data)
    return len(data)


def _prepare_out(out: str, prefix: str, storage: S3Options) -> None:
    """Create ``out`` and delete its earlier ``<prefix>-NNNNNN.tar`` shards (they would join this set)."""
    import re

    pattern = re.compile(rf"{re.escape(prefix)}-\d{{6}}\.tar")
    if out.startswith("s3://"):
        fs = storage.filesystem()
        root = out.removeprefix("s3://").rstrip("/")
        stale = [p for p in (fs.ls(root) if fs.exists(root) else []) if pattern.fullmatch(p.rsplit("/", 1)[-1])]
        if stale:
            fs.rm(stale)
        return
    Path(out).mkdir(parents=True, exist_ok=True)
    for path in Path(out).iterdir():
        if pattern.fullmatch(path.name):
            path.unlink()


def _write_text(url: str, text: str, storage: S3Options) -> None:
    if url.startswith("s3://"):
        storage.filesystem().pipe_file(url.removeprefix("s3://"), text.encode())
    else:
        Path(url).write_text(text)


def _runs(sources: list[Source]) -> Iterator[list[Source]]:
    """Consecutive sources of one format (and one storage): each run is read as one dataset."""
    run: list[Source] = []
    for source in sources:
        if run and (source.format != run[0].format or source.url.startswith("s3://") != run[0].url.startswith(
                "s3://")):
            yield run
            run = []
        run.append(source)
    if run:
        yield run


class _ShardCutter:
    """Cuts the packed samples, in order, into shards of at most ``shard_size`` samples / ``max_shard_bytes`` bytes
    and hands each to a :func:`write_shard` Ray task (at most ``in_flight`` waiting at once)."""

    def __init__(self, out: str, options: PackOptions, in_flight: int = 4):
        import ray

        self.out, self.options, self.in_flight = out, options, in_flight
        self.writer = ray.remote(num_cpus=0)(write_shard)
        self.names: list[str] = []
        self.pending: list = []
        self.samples: list[tuple[str, bytes, bytes | None, str]] = []
        self.bytes = 0

    def add(self, key: str, record: bytes, image: bytes | None, extension: str) -> None:
        size = len(record) + (len(image) if image is not None else 0) + 1536  # + two tar headers and padding
        if self.samples and (len(self.samples) >= self.options.shard_size
                             or self.bytes + size > self.options.max_shard_bytes):
            self.flush()
        self.samples.append((key, record, image, extension))
        self.bytes += size

    def flush(self) -> None:
        import ray

        if self.samples:
            name = f"{self.options.prefix}-{len(self.names):06d}.tar"
            self.names.append(name)
            self.pending.append(self.writer.remote(f"{self.out}/{name}", self.samples, self.options.storage))
            if len(self.pending) > self.in_flight:
                ray.get(self.pending.pop(0))
        self.samples, self.bytes = [], 0

    def finish(self) -> list[str]:
        import ray

        self.flush()
        ray.get(self.pending)
        return self.names


def pack(specs: Sequence[str], out: str, options: PackOptions | None = None,
         progress: Callable[[int, int], None] | None = None) -> dict:
    """Pack the sources of ``specs`` into shards under ``out`` (local or ``s3://``); see the module docstring.

    Returns (and writes to ``<out>/pack_manifest.json``) ``{"rows", "packed", "skipped": {reason: n}, "shards":
    [names], "data_version", "out"}``; ``rows == packed + sum(skipped.values())`` always holds.
    ``progress(rows, skipped)`` is called after every batch. Raises ``ValueError``
    for a spec that names no source.
    """
    import ray.data

    options = options or PackOptions()
    options = replace(options, storage=options.storage or S3Options())
    sources = list_sources(specs, options.storage)
    index = {s.url: i for i, s in enumerate(sources)}
    out = out.rstrip("/") if out.startswith("s3://") else str(Path(out).expanduser().resolve())
    _prepare_out(out, options.prefix, options.storage)
    context = ray.data.DataContext.get_current()
    previous, context.execution_options.preserve_order = context.execution_options.preserve_order, True
    cutter = _ShardCutter(out, options)
    rows_seen: Counter[str] = Counter()
    skipped: list[dict] = []
    try:
        for run in _runs(sources):
            dataset = _read(run, options.storage).repartition(target_num_rows_per_block=options.rows_per_task)
            dataset = dataset.map_batches(
                pack_batch, fn_kwargs={"options": options}, batch_size=options.batch_size, batch_format="numpy",
                num_cpus=options.cpus)
            for batch in dataset.iter_batches(batch_size=options.batch_size, batch_format="numpy"):
                for url, record, image, extension, reason, detail in zip(
                        *(batch[name] for name in PACKED_COLUMNS), strict=True):
                    key = f"{index[url]:04d}_{rows_seen[url]:09d}"
                    rows_seen[url] += 1
                    if not reason:
                        cutter.add(key, record, image if extension else None, extension)
                    else:
                        skipped.append({"url": url, "key": key, "reason": reason, "detail": detail})
                if progress is not None:
                    progress(sum(rows_seen.values()), len(skipped))
        shards = cutter.finish()
    finally:
        context.execution_options.preserve_order = previous
    rows = sum(rows_seen.values())
    lines = "".join(json.dumps(r, sort_keys=True) + "\n" for r in skipped)
    _write_text(f"{out}/{QUARANTINE_FILE}", lines, options.storage)
    version = ShardSet.resolve([f"{out}/{name}" for name in shards], options.storage).version if shards else None
    summary = {"rows": rows, "packed": rows - len(skipped),
               "skipped": dict(sorted(Counter(r["reason"] for r in skipped).items())),
               "shards": shards, "data_version": version, "out": out}
    _write_text(f"{out}/{MANIFEST_FILE}", json.dumps(summary, indent=2, sort_keys=True) + "\n", options.storage)
    return summary
