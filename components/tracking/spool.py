"""The disk spool: records waiting for the tracking store (feedback, answers' traces), one JSON file each under a
folder, written whole or not at all (a crash never leaves half a record in the queue) and named
`<time ns>-<key>.json` so that names sort oldest first. The one writer of both spools (traces.py)."""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


class Spool:
    def __init__(self, folder: Path, rejected: Path | None = None) -> None:
        self.folder = folder
        self.rejected = rejected  # where records that can never be delivered are kept for a person, with the reason

    def put(self, key: str, record: dict[str, Any]) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"{time.time_ns():020d}-{key}.json"
        tmp = path.with_suffix(".tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(record, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_dir(self.folder)
        return path

    def pending(self) -> list[Path]:
        return sorted(self.folder.glob("*.json")) if self.folder.is_dir() else []

    def records(self, until: float | None = None) -> Iterator[tuple[Path, dict[str, Any] | None]]:
        """(file, record) for each pending record, oldest first, until `until` (time.monotonic()) has passed. A file
        gone meanwhile (delivered by another process) is skipped; an unreadable one is set aside with the reason and
        yielded with None, so that one bad file never holds up the records queued behind it."""
        for path in self.pending():
            if until is not None and time.monotonic() > until:
                return
            try:
                record = json.loads(path.read_text(encoding="utf-8"))
            except FileNotFoundError:
                continue
            except (OSError, ValueError) as exc:
                self.reject(path, {"reason": f"unreadable spool file: {exc}"})
                yield path, None
                continue
            yield path, record

    def depth(self) -> int:
        return len(self.pending())

    def holds(self, key: str) -> bool:
        return any(p.name.endswith(f"-{key}.json") for p in self.pending())

    def reject(self, path: Path, why: dict[str, Any]) -> None:
        if self.rejected is None:
            raise ValueError(f"{self.folder}: this spool keeps no rejected records")
        self.rejected.mkdir(parents=True, exist_ok=True)
        (self.rejected / path.name).write_text(json.dumps(why), encoding="utf-8")
        path.unlink(missing_ok=True)

    @contextmanager
    def locked(self, wait: bool) -> Iterator[bool]:
        """Held across processes (a file lock); with wait=False, False at once when another process holds it."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / ".lock", "a") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
