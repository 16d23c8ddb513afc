"""Seed prompts: read from a text file (one prompt a line), JSONL (`prompt`, optional `system` and
`metadata`, other fields kept as metadata) or CSV (a prompt column, the other columns as metadata), or built
from a template whose `{variables}` are filled from each line's fields.

    seeds = read_seeds(Path("prompt_seeds.txt"), SeedOptions())
    seeds.items[0].messages      # [{"role": "user", "content": "..."}]
    seeds.sha256                 # of the file's bytes, recorded in provenance

Every mistake is an InvalidInput naming the file and the line (an empty file, a line that is not JSON, a
missing prompt column, a template variable a line does not have, metadata of the wrong type). The same
prompt twice is asked once: later copies are listed in `duplicates`, not silently merged.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import string
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opentracy._csv import reader as strict_csv
from opentracy.distillation.generation.config import RESERVED_META, SeedOptions
from opentracy.errors import InvalidInput

_EXT = {".txt": "txt", ".text": "txt", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv",
        ".tsv": "csv"}  # fmt: skip
_ROLES = {"system", "user", "assistant", "tool", "developer"}


@dataclass(slots=True)
class Seed:
    """One prompt to answer: where it came from, what the teacher is sent, and the metadata its rows get."""

    line: int
    messages: list[dict[str, Any]]
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def prompt(self) -> str | list[dict[str, Any]]:
        """What a dataset row stores as its prompt: the text alone, or the messages when there is more than
        one user message (a system prompt, a conversation)."""
        if len(self.messages) == 1 and self.messages[0]["role"] == "user":
            return self.messages[0]["content"]
        return self.messages

    @property
    def key(self) -> str:
        return json.dumps(self.messages, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


@dataclass
class SeedFile:
    name: str
    format: str
    sha256: str
    bytes: int
    items: list[Seed]
    duplicates: list[dict[str, int]] = field(default_factory=list)  # {"line", "same_as"}
    blank_lines: int = 0

    def summary(self) -> dict[str, Any]:
        return {
            "file": self.name,
            "format": self.format,
            "sha256": self.sha256,
            "bytes": self.bytes,
            "prompts": len(self.items),
            "duplicate_prompts": len(self.duplicates),
            "blank_lines": self.blank_lines,
        }


class Template:
    """A prompt template: literal text and `{name}` fields (no attribute or index access, no format specs:
    a template is data from a user, never code)."""

    def __init__(self, text: str, file: str) -> None:
        self.text = text
        try:
            parsed = list(string.Formatter().parse(text))
        except ValueError as e:
            raise InvalidInput(f"the prompt template is not valid: {e} (write {{{{ and }}}} for literal braces)",
                               file=file) from None  # fmt: skip
        self.pieces: list[tuple[str, str | None]] = []
        for literal, name, spec, conv in parsed:
            if name is not None:
                if name.strip() == "":
                    raise InvalidInput(
                        "the prompt template has an empty {} field: name a column in it", file=file
                    )
                if spec or conv or any(c in name for c in ".[]"):
                    raise InvalidInput(
                        f"template field {{{name}{'!' + conv if conv else ''}{':' + spec if spec else ''}}}: only "
                        "plain column names are allowed, like {code}", file=file)  # fmt: skip
            self.pieces.append((literal, name))
        self.variables = list(dict.fromkeys(n for _, n in self.pieces if n is not None))
        if not self.variables:
            raise InvalidInput(
                "the prompt template has no {variables}: every prompt would be the same", file=file
            )

    def render(self, values: dict[str, Any], file: str, line: int) -> str:
        out = []
        for literal, name in self.pieces:
            out.append(literal)
            if name is None:
                continue
            if name not in values:
                have = ", ".join(sorted(values)) or "none"
                raise InvalidInput(f"template variable {{{name}}} has no value on this line (fields: {have})",
                                   file=file, line=line)  # fmt: skip
            v = values[name]
            if v is None:
                raise InvalidInput(f"template variable {{{name}}} is null on this line", file=file, line=line)
            out.append(v if isinstance(v, str) else json.dumps(v, ensure_ascii=False))
        return "".join(out)


def detect_format(name: str, fmt: str | None) -> str:
    if fmt:
        return fmt
    suffix = Path(name).suffix.lower()
    if suffix in _EXT:
        return _EXT[suffix]
    raise InvalidInput(f"cannot tell the format from the name {name!r}: pass format='txt', 'jsonl' or 'csv'",
                       file=name)  # fmt: skip


def read_seeds(
    path: str | Path, opts: SeedOptions | None = None, *, display_name: str | None = None
) -> SeedFile:
    """Read and check a prompts file (see the module doc). Reads the whole file: seed files are prompts, not
    datasets; a million short prompts is a few hundred MB."""
    p = Path(path)
    return parse_seeds(p.read_bytes(), opts, name=display_name or p.name)


def parse_seeds(data: bytes, opts: SeedOptions | None = None, *, name: str = "prompts") -> SeedFile:
    opts = opts or SeedOptions()
    fmt = detect_format(name, opts.format)
    sha = hashlib.sha256(data).hexdigest()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise InvalidInput(f"not UTF-8 text (byte 0x{data[e.start]:02x}); save the file as UTF-8", file=name,
                           line=line) from None  # fmt: skip
    if not text.strip():
        raise InvalidInput("the file is empty: it holds no prompts", file=name)
    tpl = Template(opts.template, name) if opts.template else None
    reader = {"txt": _txt, "jsonl": _jsonl, "csv": _csv}[fmt]
    out = SeedFile(name=name, format=fmt, sha256=f"sha256:{sha}", bytes=len(data), items=[])
    seen: dict[str, int] = {}
    for got in reader(text, opts, tpl, name, out):
        _check_metadata(got.metadata, name, got.line)
        k = got.key
        if k in seen:
            out.duplicates.append({"line": got.line, "same_as": seen[k]})
            continue
        seen[k] = got.line
        out.items.append(got)
    if not out.items:
        raise InvalidInput(
            "the file holds no prompts" + (" after the header" if fmt == "csv" else ""), file=name
        )
    return out


# -- one reader per format ---------------------------------------------------------------------------------


def _lines(text: str) -> Iterator[tuple[int, str]]:
    parts = text.split("\n")
    if parts and parts[-1] == "":
        parts.pop()  # the file's final newline ends the last line; it does not start a blank one
    for i, raw in enumerate(parts, 1):
        yield i, raw.rstrip("\r")


def _messages(prompt: str | list[dict[str, Any]], system: str | None) -> list[dict[str, Any]]:
    msgs = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else [dict(m) for m in prompt]
    if system and not any(m.get("role") == "system" for m in msgs):
        msgs.insert(0, {"role": "system", "content": system})
    return msgs


def _prompt_text(v: Any, field_name: str, file: str, line: int) -> str | list[dict[str, Any]]:
    if isinstance(v, str):
        if not v.strip():
            raise InvalidInput(f"field {field_name!r} is empty", file=file, line=line)
        return v
    if isinstance(v, list) and v:
        for i, m in enumerate(v):
            if (
                not isinstance(m, dict)
                or m.get("role") not in _ROLES
                or not isinstance(m.get("content"), str)
            ):
                raise InvalidInput(
                    f"field {field_name!r}: message {i} must be {{\"role\": system|user|assistant, \"content\": "
                    "text}", file=file, line=line)  # fmt: skip
        if v[-1]["role"] != "user":
            raise InvalidInput(
                f"field {field_name!r}: the last message must be the user's", file=file, line=line
            )
        return v
    kind = "null" if v is None else type(v).__name__
    raise InvalidInput(f"field {field_name!r} must be text (or a list of chat messages), not {kind}", file=file,
                       line=line)  # fmt: skip


def _system(v: Any, field_name: str, file: str, line: int) -> str | None:
    if v is None or v == "":
        return None
    if not isinstance(v, str):
        raise InvalidInput(f"field {field_name!r} must be text, not {type(v).__name__}", file=file, line=line)
    return v


def _txt(text: str, opts: SeedOptions, tpl: Template | None, file: str, out: SeedFile) -> Iterator[Seed]:
    if tpl is not None:
        extra = [v for v in tpl.variables if v != "prompt"]
        if extra:
            raise InvalidInput(f"template variable {{{extra[0]}}}: a text file has one column, {{prompt}} (use JSONL "
                               "or CSV for more)", file=file, line=1)  # fmt: skip
    for n, raw in _lines(text):
        s = raw.strip()
        if not s:
            out.blank_lines += 1
            continue
        prompt = tpl.render({"prompt": s}, file, n) if tpl is not None else s
        yield Seed(n, _messages(prompt, opts.system), {})


def _jsonl(text: str, opts: SeedOptions, tpl: Template | None, file: str, out: SeedFile) -> Iterator[Seed]:
    pf, sf, mf = opts.prompt_field, opts.system_field, opts.metadata_field
    for n, raw in _lines(text):
        if not raw.strip():
            out.blank_lines += 1
            continue
        try:
            rec = json.loads(raw)
        except ValueError as e:
            raise InvalidInput(f"not valid JSON ({e})", file=file, line=n) from None
        if not isinstance(rec, dict):
            raise InvalidInput(
                f"each line must be a JSON object, not {type(rec).__name__}", file=file, line=n
            )
        if tpl is not None:
            prompt: str | list[dict[str, Any]] = tpl.render(rec, file, n)
        elif pf not in rec:
            raise InvalidInput(f"no {pf!r} field (fields: {', '.join(rec) or 'none'}); name it with prompt_field= "
                               "or build prompts with prompt_template=", file=file, line=n)  # fmt: skip
        else:
            prompt = _prompt_text(rec[pf], pf, file, n)
        system = _system(rec.get(sf), sf, file, n) or opts.system
        meta = rec.get(mf)
        if meta is not None and not isinstance(meta, dict):
            raise InvalidInput(
                f"field {mf!r} must be an object, not {type(meta).__name__}", file=file, line=n
            )
        skip = {sf, mf} | ({pf} if tpl is None else set())
        extra = {k: v for k, v in rec.items() if k not in skip}
        if opts.metadata_fields is not None:
            extra = {k: v for k, v in extra.items() if k in opts.metadata_fields}
        yield Seed(n, _messages(prompt, system), {**extra, **(meta or {})})


def _csv(text: str, opts: SeedOptions, tpl: Template | None, file: str, out: SeedFile) -> Iterator[Seed]:
    delim = "\t" if file.lower().endswith(".tsv") else ","
    reader = strict_csv(io.StringIO(text, newline=""), delimiter=delim)
    try:
        header = next(reader)
    except csv.Error as e:
        raise InvalidInput(f"not valid CSV ({e})", file=file, line=1) from None
    header = [h.strip() for h in header]
    if any(not h for h in header):
        raise InvalidInput(f"column {header.index('') + 1} of the header has no name", file=file, line=1)
    dup = next((h for i, h in enumerate(header) if h in header[:i]), None)
    if dup:
        raise InvalidInput(f"column {dup!r} appears twice in the header", file=file, line=1)
    pf, sf = opts.prompt_field, opts.system_field
    cols = ", ".join(header)
    if tpl is not None:
        missing = [v for v in tpl.variables if v not in header]
        if missing:
            raise InvalidInput(f"template variable {{{missing[0]}}} is not a column (columns: {cols})", file=file,
                               line=1)  # fmt: skip
    elif pf not in header:
        raise InvalidInput(f"no {pf!r} column (columns: {cols}); name it with prompt_field= or build prompts with "
                           "prompt_template=", file=file, line=1)  # fmt: skip
    keep = [h for h in header if h != sf and (tpl is not None or h != pf)]
    if opts.metadata_fields is not None:
        keep = [h for h in keep if h in opts.metadata_fields]
    prev = reader.line_num
    while True:
        try:
            values = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            raise InvalidInput(f"not valid CSV ({e})", file=file, line=reader.line_num) from None
        n, prev = prev + 1, reader.line_num
        if not values or (len(values) == 1 and not values[0].strip()):
            out.blank_lines += 1
            continue
        if len(values) != len(header):
            raise InvalidInput(f"{len(values)} values for {len(header)} columns", file=file, line=n)
        rec = dict(zip(header, values, strict=True))
        prompt = tpl.render(rec, file, n) if tpl is not None else _prompt_text(rec[pf], pf, file, n)
        system = _system(rec.get(sf), sf, file, n) or opts.system
        yield Seed(n, _messages(prompt, system), {h: rec[h] for h in keep})


def _check_metadata(meta: dict[str, Any], file: str, line: int) -> None:
    """The metadata keys the dataset type-checks, checked here (before anything is paid), and the keys a
    generated row gets from the run, refused."""
    clash = [k for k in RESERVED_META if k in meta]
    if clash:
        raise InvalidInput(f"metadata key {clash[0]!r} is set by generation; rename it in the prompts file",
                           file=file, line=line)  # fmt: skip
    v = meta.get("source_trace_id")
    if v is not None and not isinstance(v, str):
        raise InvalidInput("metadata.source_trace_id must be a string", file=file, line=line)
    v = meta.get("cluster_id")
    if v is not None and (isinstance(v, bool) or not isinstance(v, (int, str))):
        raise InvalidInput("metadata.cluster_id must be an integer or a string", file=file, line=line)
    v = meta.get("tags")
    if v is not None and (not isinstance(v, list) or not all(isinstance(t, str) for t in v)):
        raise InvalidInput("metadata.tags must be a list of strings", file=file, line=line)
