"""Compressed text files (JSONL, CSV, trace exports), read through the standard library's decompressors and
told by their first bytes, not their names: a gzipped file named rows.jsonl is read too."""

from __future__ import annotations

import bz2
import gzip
import lzma
import os
import zlib
from typing import Any, BinaryIO, cast

from opentracy.errors import InvalidInput

COMPRESSED_SUFFIXES = (".gz", ".gzip", ".bz2", ".xz")
DAMAGED = (OSError, EOFError, zlib.error, lzma.LZMAError)  # what reading a damaged compressed file raises
OPENERS: dict[str, Any] = {"gzip": gzip.open, "bz2": bz2.open, "xz": lzma.open}  # a name or a file object


def compression_of(path: str | os.PathLike[str]) -> str | None:
    """'gzip', 'bz2' or 'xz' when the file starts as such a file does; None otherwise. (bz2's "BZh" could
    begin a CSV header, so its level digit and first block's magic must follow.)"""
    try:
        with open(path, "rb") as f:
            head = f.read(10)
    except (IsADirectoryError, PermissionError):
        return None
    if head.startswith(b"\x1f\x8b"):
        return "gzip"
    if head.startswith(b"\xfd7zXZ\x00"):
        return "xz"
    if head[:3] == b"BZh" and head[3:4].isdigit() and head[4:10] in (b"1AY&SY", b"\x17rE8P\x90"):
        return "bz2"  # a first block, or the end of an empty stream
    return None


def open_content(path: str | os.PathLike[str]) -> BinaryIO:
    """A file's content to read, decompressed when it is compressed (nothing hashed: for a first look)."""
    c = compression_of(path)
    return cast(BinaryIO, OPENERS[c](path, "rb")) if c else open(path, "rb")


def damaged(compression: str, e: BaseException, name: str, lines_read: int) -> InvalidInput:
    """The error for a compressed file that cannot be read through, naming it and the last line read whole."""
    where = f" (read up to line {lines_read})" if lines_read > 0 else ""
    return InvalidInput(f"not a readable {compression} file: {e}{where}", file=name)
