"""Reading a JSON Lines file: every reader of one (the suite's cases, the candidates, the labelled queries, the
retriever's training questions) gets its lines here, and a problem names the file and the line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def read_jsonl(path: Path, error: type[Exception] = ValueError) -> Iterator[tuple[int, Any]]:
    """(line number, value) of each non-blank line, in order. A file that cannot be read or decoded, or a line that
    is not JSON, raises `error` with "file: why" or "file:line: invalid JSON: what at column N"."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise error(f"{path}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise error(f"{path}: not UTF-8: {exc}") from None
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise error(f"{path}:{lineno}: invalid JSON: {exc.msg} at column {exc.colno}") from None
        yield lineno, value
