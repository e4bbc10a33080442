"""Helpers for the data tests: uploading shards to S3 and writing shards with planted bad samples."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np


def upload(endpoint: str, bucket: str, directory: Path, prefix: str) -> None:
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    client.create_bucket(Bucket=bucket)
    for path in sorted(directory.glob("*.tar")):
        client.put_object(Bucket=bucket, Key=f"{prefix}/{path.name}", Body=path.read_bytes())


def tiny_png(width: int = 40, height: int = 30, seed: int = 0) -> bytes:
    import io

    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _png(width: int, height: int, depth: int, colour: int, rows: bytes) -> bytes:
    """A PNG file written by hand (Pillow cannot write every kind): ``rows`` are the filtered scanlines."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def bomb_png(side: int = 30000) -> bytes:
    """A valid PNG header declaring ``side``×``side`` pixels (900 M by default) with almost no data."""
    return _png(side, side, 8, 2, b"\0" * 64)


def png16(pixels: np.ndarray) -> bytes:
    """A 16-bit PNG of ``pixels`` (uint16, ``[H, W]`` grey or ``[H, W, 3]`` RGB)."""
    height, width = pixels.shape[:2]
    rows = b"".join(b"\0" + row.astype(">u2").tobytes() for row in pixels)
    return _png(width, height, 16, 2 if pixels.ndim == 3 else 0, rows)


def record(question: str = "<image>\nwhat colour is the box ?", answer: str = "red", **extra) -> bytes:
    import json

    return json.dumps({"conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}],
                       **extra}).encode()


def add_member(archive, name: str, data: bytes) -> None:
    import io
    import tarfile

    info = tarfile.TarInfo(name)
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))
