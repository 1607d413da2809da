"""What a run was built from (the git commit of the code, the DVC hash of the documents), and the data files
that `dvc plots` draws."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

from components.files import PLOTS


def git_commit(where: Path) -> str:
    """HEAD's sha, with '-dirty' when tracked files differ from it; 'unknown' outside a git checkout."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=where,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{sha}-dirty" if dirty else sha


def docs_dvc_md5(folder: Path) -> str:
    """The folder's hash as DVC 3 writes it in dvc.lock (md5 of the sorted {md5, relpath} list + '.dir')."""
    entries = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if d not in {".git", ".dvc"}]
        for name in filenames:
            full = Path(dirpath) / name
            if not full.is_file():
                continue
            with open(full, "rb") as fh:
                md5 = hashlib.file_digest(fh, "md5").hexdigest()
            entries.append({"md5": md5, "relpath": full.relative_to(folder).as_posix()})
    entries.sort(key=lambda e: e["relpath"])
    payload = json.dumps(entries, sort_keys=True).encode()
    return hashlib.md5(payload, usedforsecurity=False).hexdigest() + ".dir"


def write_plot(folder: Path, name: str, rows: list[dict]) -> None:
    """A `dvc plots` data file (a list of records) under <folder>/plots/; dvc.yaml says how to draw it."""
    (folder / PLOTS).mkdir(parents=True, exist_ok=True)
    (folder / PLOTS / name).write_text(json.dumps(rows, indent=2) + "\n")
