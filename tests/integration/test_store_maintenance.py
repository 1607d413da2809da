"""Versions, rollback, compaction, verify and repair against the real Chroma store."""

from __future__ import annotations

import numpy as np
import pytest

from components.knowledge.maintenance import RollbackError, rollback
from components.knowledge.retrieval import query_index
from tests.helpers import Deployment


def test_versions_are_monotonic_and_rollback_restores_content(deployment: Deployment) -> None:
    v1 = deployment.index()
    before = deployment.alive()
    deployment.write("fees.md", "# Fees\n\nEverything is free now.")
    v2 = deployment.index()
    assert v2["index_version"] == v1["index_version"] + 1 == 2
    assert deployment.alive() != before
    with deployment.session() as s:
        back = rollback(s, 1)
    assert back["index_version"] == 3 and back["chunks"]["embedded"] == 0
    assert deployment.alive() == before
    assert deployment.verify()["ok"]
    hits = query_index(deployment.params(), "SWIFT transfer fee", k=1)
    assert "9 EUR" in hits[0]["text"]  # the rolled-back text is what readers see
    again = deployment.index()  # the next run re-syncs to the documents, reusing vectors
    assert again["index_version"] == 4 and again["chunks"]["embedded"] == 0
    assert deployment.verify()["ok"]


def test_rollback_to_an_unknown_version_lists_the_retained_ones(deployment: Deployment) -> None:
    deployment.index()
    with deployment.session() as s, pytest.raises(RollbackError, match="retained versions are none"):
        rollback(s)
    deployment.write("x.md", "# X\n\nSomething new.")
    deployment.index()
    with deployment.session() as s, pytest.raises(RollbackError, match=r"retained versions are \[1\]"):
        rollback(s, 7)


def test_old_versions_are_garbage_collected_beyond_keep_versions(tmp_path) -> None:
    dep = Deployment.create(tmp_path, index={"keep_versions": 2, "compact_churn_ratio": 100})
    for i in range(4):
        dep.write("churn.md", f"# Churn\n\nRevision {i} of a frequently edited page.")
        dep.index()
    with dep.session() as s:
        assert [v.version for v in s.manifest.versions()] == [3, 4]
        info = s.manifest.version(4)
        assert info is not None
        stored = s.collection(info.collection).count()
    # live chunks of v4 plus the one churn chunk only v3 still sees; older revisions are gone from Chroma
    assert stored == len(dep.alive()) + 1
    assert dep.verify()["ok"]


def test_compaction_rebuilds_the_collection_without_reembedding(tmp_path) -> None:
    dep = Deployment.create(tmp_path, index={"keep_versions": 1, "compact_churn_ratio": 0.3})
    dep.index()
    with dep.session() as s:
        old = s.manifest.version(1).collection  # type: ignore[union-attr]
    dep.write("fees.md", "# Fees\n\nRewritten completely.\n\n## More\n\nAnd again.")
    dep.write("support.txt", "Support hours changed.")
    report = dep.index()
    assert report["compacted"] is True
    with dep.session() as s:
        new = s.manifest.version(report["index_version"]).collection  # type: ignore[union-attr]
        assert new != old and old not in s.store.collection_names()
        assert s.collection(new).count() == report["chunks"]["total"]
        assert s.manifest.collection_removed(new) == 0
    assert dep.verify()["ok"]
    assert query_index(dep.params(), "support hours", k=1)[0]["doc"] == "support.txt"


def test_verify_finds_and_repair_fixes_a_sabotaged_store(deployment: Deployment) -> None:
    deployment.index()
    with deployment.session() as s:
        info = s.manifest.version(1)
        assert info is not None
        coll = s.collection(info.collection)
        ids = sorted(coll.get(include=[])["ids"])
        victim, foreign = ids[0], ids[1]
        coll.delete(ids=[victim])  # missing
        coll.add(ids=["stray@1"], embeddings=[np.ones(384) / np.sqrt(384)], documents=["stray"],
                 metadatas=[{"doc": "nowhere.md", "chunk_id": "stray", "chunk_hash": "0", "v_min": 1,
                             "v_max": 2**31 - 1, "embedder": info.embedder}])  # fmt: skip
        coll.update(ids=[foreign], metadatas=[{"embedder": "some-other-model@main"}])
        dup_meta = coll.get(ids=[ids[2]], include=["metadatas", "embeddings", "documents"])
        coll.add(ids=["dup@1"], embeddings=dup_meta["embeddings"], documents=dup_meta["documents"],
                 metadatas=dup_meta["metadatas"])  # fmt: skip
    found = deployment.verify()
    assert not found["ok"]
    assert (found["missing"], found["orphaned"], found["duplicated"], found["foreign_embedder"]) == (1, 1, 1, 1)
    fixed = deployment.verify(repair=True)
    assert fixed["ok"], fixed
    with deployment.session() as s:
        assert sorted(s.collection(info.collection).get(include=[])["ids"]) == ids


def test_verify_reports_documents_changed_since_publish(deployment: Deployment) -> None:
    deployment.index()
    deployment.write("new.md", "# New\n\nNot indexed yet.")
    result = deployment.verify()
    assert result["ok"] and result["pending_documents"] == ["new.md"]
