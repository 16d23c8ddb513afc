"""Receive a multipart upload straight into a staging file, without spooling it through memory."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import Request
from python_multipart.multipart import MultipartParser, parse_options_header

from opentracy.errors import InvalidInput

MAX_FIELD_BYTES = 1 << 20


@dataclass
class Received:
    fields: dict[str, str] = field(default_factory=dict)
    filename: str | None = None
    path: Path | None = None
    size: int = 0


def safe_filename(name: str | None) -> str:
    """Only the last path component, with odd characters replaced: it is a label, never a path we open."""
    base = re.split(r"[\\/]", name or "")[-1].strip() or "upload"
    return re.sub(r"[^A-Za-z0-9._-]", "_", base)[:200]


async def receive(
    request: Request,
    dest_dir: Path,
    *,
    file_field: str = "file",
    check_field: Callable[[str, str], object] | None = None,
) -> Received:
    """Stage the part `file_field` in `dest_dir` and collect the other fields. `check_field(name, value)`
    sees each field as it ends and may raise, so that a bad option sent before the file stops the upload
    before the file is received."""
    ctype, params = parse_options_header(request.headers.get("content-type", ""))
    if ctype != b"multipart/form-data" or b"boundary" not in params:
        raise InvalidInput("send the file as multipart/form-data with a part named 'file'")
    out = Received()
    state: dict = {
        "name": None,
        "filename": None,
        "buf": None,
        "fh": None,
        "hf": b"",
        "hv": b"",
        "headers": {},
    }
    dest_dir.mkdir(parents=True, exist_ok=True)

    def on_part_begin() -> None:
        state.update(name=None, filename=None, buf=bytearray(), fh=None, headers={})

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state["hf"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state["hv"] += data[start:end]

    def on_header_end() -> None:
        state["headers"][state["hf"].lower()] = state["hv"]
        state["hf"], state["hv"] = b"", b""

    def on_headers_finished() -> None:
        _, disp = parse_options_header(state["headers"].get(b"content-disposition", b""))
        state["name"] = disp.get(b"name", b"").decode("utf-8", "replace")
        fn = disp.get(b"filename")
        if state["name"] == file_field:
            if out.path is not None:
                raise InvalidInput("send one file per upload")
            out.filename = safe_filename(fn.decode("utf-8", "replace") if fn else None)
            out.path = dest_dir / out.filename
            state["fh"] = open(out.path, "wb")  # closed in on_part_end, or below on error

    def on_part_data(data: bytes, start: int, end: int) -> None:
        fh = state["fh"]
        if fh is not None:
            chunk = data[start:end]
            fh.write(chunk)
            out.size += end - start
        else:
            buf = state["buf"]
            buf += data[start:end]
            if len(buf) > MAX_FIELD_BYTES:
                raise InvalidInput(f"form field {state['name']!r} is too large")

    def on_part_end() -> None:
        if state["fh"] is not None:
            state["fh"].close()
            state["fh"] = None
        elif state["name"]:
            value = out.fields[state["name"]] = bytes(state["buf"]).decode("utf-8", "replace")
            if check_field is not None:
                check_field(state["name"], value)

    parser = MultipartParser(
        params[b"boundary"],
        {
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
        },
    )
    try:
        async for chunk in request.stream():
            parser.write(chunk)
        parser.finalize()
    except BaseException:
        if state["fh"] is not None:
            state["fh"].close()
        if out.path is not None and out.path.exists():
            os.unlink(out.path)
        raise
    if out.path is None:
        raise InvalidInput("no file in the upload: send it as a multipart part named 'file'")
    return out
