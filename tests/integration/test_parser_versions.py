"""A parser's version is part of each document's key: bumping it re-reads the files of its suffixes, and only
those, on the next run, even when their bytes did not change (real indexer, real Chroma, tiny documents)."""

from __future__ import annotations

import sqlite3
from dataclasses import replace

import pytest

from components.knowledge import documents
from components.knowledge.documents import ParsedDocument, Parser
from components.knowledge.manifest import manifest_path
from components.knowledge.report import to_markdown
from components.knowledge.retrieval import query_index
from tests.helpers import Deployment


def _bump_markdown(monkeypatch: pytest.MonkeyPatch, edit=lambda text: text, clean=lambda data: data) -> Parser:
    """Version 2 of the parser of `.md` only (.txt keeps version 1 of the same parser): it `clean`s the bytes and
    `edit`s the text version 1 makes of them."""
    old = documents.PARSERS[".md"]

    def parse(rel: str, data: bytes) -> ParsedDocument:
        doc = old.parse(rel, clean(data))
        return replace(doc, text=edit(doc.text))

    new = Parser(old.name, old.version + 1, parse)
    monkeypatch.setitem(documents.PARSERS, ".md", new)
    return new


def _ids_by_doc(d: Deployment) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for cid, doc in d.alive().items():
        out.setdefault(doc, set()).add(cid)
    return out


def test_a_bumped_parser_rechunks_its_files_and_reuses_the_others(deployment: Deployment, monkeypatch) -> None:
    deployment.index()
    before = _ids_by_doc(deployment)
    _bump_markdown(monkeypatch, lambda text: text.replace(" EUR", " euro"))
    report = deployment.index()
    assert report["published"] and report["reparsed"] == 2  # both .md files, though neither file changed
    assert report["documents"] == {"added": 0, "modified": 0, "deleted": 0, "renamed": 0, "unchanged": 3,
                                   "failed": 0}  # fmt: skip
    # fees.md's two sections that mention EUR are new chunks; its third section and lost-card.md are reused
    assert report["chunks"] == {"embedded": 2, "reused": 4, "deleted": 2, "total": 6}
    assert "2 unchanged document(s) read again: their parser's version changed" in to_markdown(report)
    after = _ids_by_doc(deployment)
    assert after["support.txt"] == before["support.txt"]  # the .txt file was not even re-read
    assert after["cards/lost-card.md"] == before["cards/lost-card.md"]  # re-read, same text, same ids
    assert len(after["fees.md"] & before["fees.md"]) == 1
    assert "9 euro" in query_index(deployment.params(), "SWIFT transfer fee", k=1)[0]["text"]
    assert deployment.verify()["ok"]
    again = deployment.index()
    assert (again["published"], again["reparsed"], again["chunks"]["embedded"]) == (False, 0, 0)


def test_a_bump_that_changes_no_text_reparses_and_embeds_nothing(deployment: Deployment, monkeypatch) -> None:
    deployment.index()
    before = deployment.alive()
    new = _bump_markdown(monkeypatch)
    report = deployment.index()
    assert report["reparsed"] == 2 and report["chunks"] == {"embedded": 0, "reused": 6, "deleted": 0, "total": 6}
    assert report["published"]  # the version records which parser read each file, so the next run skips them
    assert deployment.alive() == before
    with deployment.session() as s:
        parsers = {p: row.parser for p, row in s.manifest.docs_at(s.manifest.published()).items()}
    assert parsers == {"fees.md": new.identity, "cards/lost-card.md": new.identity, "support.txt": "text@1"}
    assert deployment.index()["published"] is False


def test_a_file_that_failed_is_read_again_by_a_new_parser_version(deployment: Deployment, monkeypatch) -> None:
    deployment.write("notes.md", b"# Notes\n\nNUL\x00 bytes from an old editor.\n")
    first = deployment.index()
    assert [e["path"] for e in first["errors"]] == ["notes.md"]
    assert [e["error"] for e in deployment.index()["errors"]] == ["still failing: " + first["errors"][0]["error"]]
    _bump_markdown(monkeypatch, clean=lambda data: data.replace(b"\x00", b""))
    report = deployment.index()
    assert report["errors"] == [] and report["reparsed"] == 3 and report["chunks"]["embedded"] == 1
    assert "notes.md" in set(deployment.alive().values())


def test_a_rename_keeps_its_chunks_only_when_the_same_parser_reads_the_new_name(deployment: Deployment) -> None:
    deployment.index()
    (deployment.docs / "cards" / "lost-card.md").rename(deployment.docs / "cards" / "lost-card.txt")  # text@1 both
    (deployment.docs / "fees.md").rename(deployment.docs / "fees.html")  # html@1 reads it now
    report = deployment.index()
    counts = {k: report["documents"][k] for k in ("renamed", "added", "deleted")}
    assert counts == {"renamed": 1, "added": 1, "deleted": 1}
    with deployment.session() as s:
        rows = s.manifest.docs_at(s.manifest.published())
    assert (rows["cards/lost-card.txt"].parser, rows["fees.html"].parser) == ("text@1", "html@1")
    assert deployment.verify()["ok"]


def test_a_manifest_from_before_parser_versions_reindexes_nothing(deployment: Deployment, monkeypatch) -> None:
    deployment.index()
    db = sqlite3.connect(manifest_path(deployment.params().paths.index))
    db.execute("ALTER TABLE docs DROP COLUMN parser")  # the docs table as every earlier release wrote it
    db.close()
    report = deployment.index()  # the column comes back, empty: those files were read by version 1
    assert (report["published"], report["reparsed"], report["chunks"]["embedded"]) == (False, 0, 0)
    _bump_markdown(monkeypatch)
    assert deployment.index()["reparsed"] == 2  # and a bump still finds them
