"""What a run was built from (the git commit of the code; the DVC hash of the documents is hashing.dvc_folder_md5),
and the data files that `dvc plots` draws."""

from __future__ import annotations

import json
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


def write_plot(folder: Path, name: str, rows: list[dict]) -> None:
    """A `dvc plots` data file (a list of records) under <folder>/plots/; dvc.yaml says how to draw it."""
    (folder / PLOTS).mkdir(parents=True, exist_ok=True)
    (folder / PLOTS / name).write_text(json.dumps(rows, indent=2) + "\n")
