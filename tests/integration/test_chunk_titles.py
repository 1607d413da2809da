"""Chunks embedded with their document's title (`chunking.embed_title`) on a tiny real deployment: the vector and
BM25 read the title, the stored and shown text does not, and the setting is part of the index key."""

from __future__ import annotations

import sqlite3

import numpy as np

from components.config import RetrievalParams
from components.knowledge.embedder import Embedder
from components.knowledge.manifest import manifest_path
from components.knowledge.retrieval import Retriever
from tests.helpers import DOCS, Deployment

FEES_CHUNK = "## Transfers\n\nSEPA transfers are free. International SWIFT transfers cost 9 EUR."


def test_the_vector_reads_the_title_and_the_stored_text_does_not(deployment: Deployment) -> None:
    deployment.index()
    with deployment.session() as s:
        info = s.manifest.version(s.manifest.published())
        records = {r.chunk_hash: r for r in s.manifest.records_at(info.version)}  # type: ignore[union-attr]
        texts = s.manifest.texts(records)
        (fees,) = [h for h, t in texts.items() if t == FEES_CHUNK]  # stored exactly as chunked, no title
        assert s.manifest.embedding_texts([fees])[fees] == "# Fees\n\n" + FEES_CHUNK
        stored = s.store.embeddings(s.collection(info.collection), [records[fees].id])[records[fees].id]  # type: ignore[union-attr]
        wanted = Embedder(s.params.embedder, s.embedder_id).encode(["# Fees\n\n" + FEES_CHUNK])[0]
        plain = Embedder(s.params.embedder, s.embedder_id).encode([FEES_CHUNK])[0]
    assert np.allclose(stored, wanted, atol=1e-5) and not np.allclose(stored, plain, atol=1e-3)
    lexical = deployment.params().model_copy(update={"retrieval": RetrievalParams(mode="lexical")})
    with Retriever(lexical) as r:  # "fees" is only in the title above the Transfers section
        hits = r.search(["fees"], 5)[0]
    assert FEES_CHUNK in [h["text"] for h in hits]  # found through its title, shown without it


def test_changing_the_setting_re_embeds_and_changing_it_back_reuses_the_kept_collection(
    deployment: Deployment,
) -> None:
    first = deployment.index()
    assert first["chunks"]["embedded"] == first["chunks"]["total"] == 6
    assert deployment.index()["chunks"]["embedded"] == 0  # unchanged setting, unchanged documents: nothing to embed
    deployment.write_params(chunking={"embed_title": False})
    off = deployment.index()
    assert off["collection"] != first["collection"] and off["chunks"]["embedded"] == 6  # its own collection
    deployment.write_params(chunking={"embed_title": True})
    back = deployment.index()
    assert back["collection"] == first["collection"] and back["chunks"]["embedded"] == 0  # old vectors, reused
    assert set(DOCS) == {h["doc"] for h in _all_hits(deployment)}


def _all_hits(deployment: Deployment) -> list[dict]:
    with Retriever(deployment.params()) as r:
        return r.search(["fees card support"], 10)[0]


def test_a_manifest_from_before_chunk_contexts_keeps_its_index_without_titles(deployment: Deployment) -> None:
    deployment.write_params(chunking={"embed_title": False})  # an index as every earlier release built it
    deployment.index()
    db = sqlite3.connect(manifest_path(deployment.params().paths.index))
    db.execute("ALTER TABLE texts DROP COLUMN context")  # the texts table as earlier releases wrote it
    db.close()
    report = deployment.index()  # the column comes back, empty: nothing to re-embed
    assert (report["published"], report["chunks"]["embedded"]) == (False, 0)
    deployment.write_params()  # the default, titles on: a new key, every chunk embedded anew
    assert deployment.index()["chunks"]["embedded"] == 6


def test_a_repair_re_embeds_a_lost_vector_with_its_title(deployment: Deployment) -> None:
    deployment.index()
    with deployment.session() as s:
        info = s.manifest.version(s.manifest.published())
        records = s.manifest.records_at(info.version)  # type: ignore[union-attr]
        (fees,) = [r for r in records if s.manifest.texts([r.chunk_hash])[r.chunk_hash] == FEES_CHUNK]
        s.store.delete(s.collection(info.collection), [fees.id], 10)  # type: ignore[union-attr]
    assert deployment.verify()["missing"] == 1
    assert deployment.verify(repair=True)["ok"]  # re-embedded from the manifest's text and context
    with deployment.session() as s:
        coll = s.collection(s.manifest.version(s.manifest.published()).collection)  # type: ignore[union-attr]
        stored = s.store.embeddings(coll, [fees.id])[fees.id]
        wanted = Embedder(s.params.embedder, s.embedder_id).encode(["# Fees\n\n" + FEES_CHUNK])[0]
    assert np.allclose(stored, wanted, atol=1e-5)
