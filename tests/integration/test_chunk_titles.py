"""Chunks embedded with their document's title (`chunking.embed_title`) on a tiny real deployment: the vector and
BM25 read the title, the stored and shown text does not, and the setting is part of the index key."""

from __future__ import annotations

import numpy as np

from components.config import RetrievalParams
from components.knowledge.embedder import Embedder
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
