"""Every kind of bad input: reported with its path and reason, never aborts the run, never loses knowledge."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable

import pytest

from components.knowledge import indexer
from tests.helpers import Deployment
from tests.unit.test_documents import _pdf


def _encrypted_pdf() -> bytes:
    import io

    import pypdf

    writer = pypdf.PdfWriter(clone_from=pypdf.PdfReader(io.BytesIO(_pdf(["secret"]))))
    writer.encrypt("pw", algorithm="RC4-128")
    buf = io.BytesIO()
    writer.write(buf)
    return buf.getvalue()


BAD_NEW_FILES: dict[str, tuple[str, Callable[[Deployment], None], str]] = {
    "empty file": ("empty.md", lambda d: d.write("empty.md", b""), "empty document"),
    "binary with text suffix": ("logo.md", lambda d: d.write("logo.md", b"\x89PNG\x00\x00\x01"), "binary content"),
    "truncated pdf": ("cut.pdf", lambda d: d.write("cut.pdf", _pdf(["Hello"])[:150]), "broken or truncated PDF"),
    "encrypted pdf": ("locked.pdf", lambda d: d.write("locked.pdf", _encrypted_pdf()), "encrypted PDF"),
    "over the size limit": ("big.txt", lambda d: d.write("big.txt", "x " * 3000), "over the limit"),
    "symlink escaping": ("escape.md", lambda d: os.symlink(d.root / "params.yaml", d.docs / "escape.md"),
                         "outside the docs folder"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD_NEW_FILES))
def test_a_bad_new_file_is_reported_and_the_rest_is_indexed(tmp_path, case: str) -> None:
    path, make, reason = BAD_NEW_FILES[case]
    dep = Deployment.create(tmp_path, index={"max_file_bytes": 5000})
    first = dep.index()
    before = dep.alive()
    make(dep)
    dep.write("good.md", "# Good\n\nA good new document arrives in the same run.")
    report = dep.index()
    assert report["published"] and report["index_version"] == first["index_version"] + 1
    assert [(e["path"], reason in e["error"]) for e in report["errors"]] == [(path, True)]
    assert report["documents"]["failed"] == 1 and report["chunks"]["embedded"] == 1
    after = dep.alive()
    assert {k: v for k, v in after.items() if v != "good.md"} == before  # nothing else changed
    assert dep.verify()["ok"]
    again = dep.index()  # the same bad bytes are not re-read or re-published, but still reported
    assert not again["published"] and [e["path"] for e in again["errors"]] == [path]


def test_a_document_that_breaks_keeps_its_last_good_chunks_marked_stale(deployment: Deployment) -> None:
    deployment.index()
    before = deployment.alive()
    deployment.write("fees.md", b"\x00\x01binary garbage")
    report = deployment.index()
    assert report["errors"] == [{"path": "fees.md", "error": "binary content in a .md file (NUL bytes); expected text"}]
    assert deployment.alive() == before  # the last good chunks still answer queries
    with deployment.session() as s:
        row = s.manifest.docs_at(s.manifest.published())["fees.md"]
    assert row.stale and "binary" in (row.error or "")
    deployment.write("fees.md", "# Fees\n\nFixed again: ATM withdrawals are free.")
    fixed = deployment.index()
    assert fixed["errors"] == [] and fixed["documents"]["modified"] == 1
    with deployment.session() as s:
        assert not s.manifest.docs_at(s.manifest.published())["fees.md"].stale


def test_invalid_utf8_is_indexed_with_a_warning(deployment: Deployment) -> None:
    deployment.write("latin.txt", "Geb\u00fchren f\u00fcr Karten: 2 \u20ac pro Monat.".encode("cp1252"))
    report = deployment.index()
    assert report["errors"] == [] and report["documents"]["added"] == 4
    assert report["warnings"][0]["path"] == "latin.txt" and "cp1252" in report["warnings"][0]["warning"]


def test_a_file_that_vanishes_mid_run_is_reported_and_kept(deployment: Deployment, monkeypatch) -> None:
    deployment.index()
    before = deployment.alive()
    deployment.write("support.txt", "Support is now open around the clock.")
    real_chunk = indexer.chunk_changes

    def chunk_after_vanishing(s, ch):  # the file disappears between change detection and reading
        (deployment.docs / "support.txt").unlink()
        return real_chunk(s, ch)

    monkeypatch.setattr(indexer, "chunk_changes", chunk_after_vanishing)
    with deployment.session() as s:
        report = indexer.run_index(s)
    assert [e["path"] for e in report["errors"]] == ["support.txt"] and "vanished" in report["errors"][0]["error"]
    assert deployment.alive() == before
    monkeypatch.undo()
    gone = deployment.index()  # the next run sees it deleted
    assert gone["documents"]["deleted"] == 1 and deployment.verify()["ok"]


def test_an_unreadable_file_is_reported(deployment: Deployment) -> None:
    """Permissions mean nothing to root: as root, the run drops the capabilities that bypass them."""
    deployment.write("secret.md", "# Secret\n\nNobody may read this.").chmod(0o000)
    prefix: tuple[str, ...] = ()
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: cannot make a file unreadable")
        prefix = ("setpriv", "--bounding-set=-dac_override,-dac_read_search")
    result = deployment.cli("index", "--direct", "--json", prefix=prefix)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["errors"] == [{"path": "secret.md", "error": "unreadable: permission denied"}]
    assert report["documents"]["added"] == 3 and report["documents"]["failed"] == 1


def test_a_missing_docs_folder_publishes_nothing_and_exits_non_zero(deployment: Deployment) -> None:
    deployment.index()
    shutil.rmtree(deployment.docs)
    result = deployment.cli("index", "--direct", "--json")
    assert result.returncode == 1
    assert "docs folder" in result.stderr and "nothing was published" in result.stderr
    assert len(deployment.alive()) == 6  # the published index is untouched
