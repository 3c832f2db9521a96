"""Image files a caller could put in an image folder to hurt a service.

Written byte by byte, so a test needs no large file: a PNG's header declares
its canvas, and PIL sizes its decode buffer from the header alone.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def write_png_bomb(path: Path, width: int = 100_000, height: int = 100_000) -> Path:
    """A ~100-byte grey PNG whose header declares ``width`` x ``height``
    pixels (10 G pixels by default: 10 GB to decode)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + _chunk(b"IEND", b"")
    )
    return path


def write_truncated_png(path: Path, size: int = 32) -> Path:
    """A real PNG cut in half: its header reads, its pixels do not decode."""
    pixels = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path
