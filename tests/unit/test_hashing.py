"""File and folder digests, all computed in components/hashing.py."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from components.hashing import dvc_folder_md5, file_md5, file_sha256


def test_a_file_digest_is_that_of_its_bytes(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"abc")
    assert file_md5(path) == "900150983cd24fb0d6963f7d28e17f72"
    assert file_sha256(path) == hashlib.sha256(b"abc").hexdigest()


def test_a_folder_digest_is_dvcs_md5_of_its_sorted_entries(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "x.md").write_bytes(b"x")
    (tmp_path / "a.md").write_bytes(b"a")
    (tmp_path / ".dvc").mkdir()
    (tmp_path / ".dvc" / "ignored").write_bytes(b"not content")
    entries = [{"md5": hashlib.md5(b"a").hexdigest(), "relpath": "a.md"},
               {"md5": hashlib.md5(b"x").hexdigest(), "relpath": "b/x.md"}]  # fmt: skip
    expected = hashlib.md5(json.dumps(entries, sort_keys=True).encode()).hexdigest() + ".dir"
    assert dvc_folder_md5(tmp_path) == expected
