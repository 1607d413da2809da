"""Content hashes: of files (md5 where it must equal DVC's, sha256 otherwise), of a folder as DVC hashes it, of
model folders (part of the identity of an embedder or a base model) and of questions (equal for questions that
differ only in case, punctuation and spacing). Every file or folder digest of the project is computed here."""

from __future__ import annotations

import hashlib
import json
import os
import unicodedata
from pathlib import Path

WEIGHT_SUFFIXES = (".safetensors", ".json", ".txt", ".model")


def file_md5(path: Path) -> str:
    """md5 (hex) of the file's bytes, the digest DVC records for a file: an identity of the file, not a secret."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "md5").hexdigest()


def file_sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def dvc_folder_md5(folder: Path) -> str:
    """The folder's hash as DVC 3 writes it in dvc.lock (md5 of the sorted {md5, relpath} list + '.dir')."""
    entries = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if d not in {".git", ".dvc"}]
        for name in filenames:
            full = Path(dirpath) / name
            if full.is_file():
                entries.append({"md5": file_md5(full), "relpath": full.relative_to(folder).as_posix()})
    entries.sort(key=lambda e: e["relpath"])
    payload = json.dumps(entries, sort_keys=True).encode()
    return hashlib.md5(payload, usedforsecurity=False).hexdigest() + ".dir"


def folder_digest(folder: Path, cache_file: Path | None) -> str:
    """sha256 over a model folder's weight and config files; cached by (path, size, mtime_ns) of each file."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    stats = [(p.relative_to(folder).as_posix(), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    key = hashlib.sha256(json.dumps([str(folder), stats]).encode()).hexdigest()
    cache: dict[str, str] = {}
    if cache_file is not None and cache_file.exists():
        try:
            cache = json.loads(cache_file.read_text())
        except (OSError, ValueError):
            cache = {}
    if key in cache:
        return cache[key]
    h = hashlib.sha256()
    for path, (rel, _, _) in zip(files, stats, strict=True):
        h.update(rel.encode() + b"\0")
        with open(path, "rb") as fh:
            h.update(hashlib.file_digest(fh, "sha256").digest())
    digest = h.hexdigest()
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({key: digest}))
        os.replace(tmp, cache_file)
    return digest


def normalise(text: str) -> str:
    """Case-folded, punctuation removed (Unicode category P*), whitespace collapsed; NFKC first."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    kept = "".join(ch for ch in folded if not unicodedata.category(ch).startswith("P"))
    return " ".join(kept.split())


def text_hash(text: str) -> str:
    """sha256 (hex) of the normalised text: equal for questions that differ only in case/punctuation/spacing."""
    return hashlib.sha256(normalise(text).encode("utf-8")).hexdigest()
