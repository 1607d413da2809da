"""What triage's rules need from the index: the same questions retrieved again on the published version, every
chunk's relevance to its question (cosine under the index's own embedder: an absolute measure, unlike a hybrid
run's fused rank score), the question vectors (to group unanswered ones) and the corpus' term frequencies (to
name their topics)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from components.behaviour.triage import Chunk, Evidence, document_frequency
from components.config import Params, Settings
from components.knowledge.retrieval import IndexNotReadyError, Retriever
from components.tracking.production import LiveTrace


@dataclass(frozen=True)
class IndexView:
    evidence: dict[str, Evidence]  # trace id -> then and now
    vectors: dict[str, np.ndarray]  # question -> its vector
    df: Counter  # term -> chunks of the published version containing it
    n_texts: int
    index_version: int | None  # None: nothing published (every failure then looks like an outage)


def retrieve_again(params: Params, settings: Settings, traces: list[LiveTrace]) -> IndexView:
    """Each trace's question retrieved again with the k its answer used (else `generator.context_chunks`)."""
    if not traces:
        return IndexView({}, {}, Counter(), 0, None)
    try:
        retriever = Retriever(params, settings)
    except IndexNotReadyError:
        return IndexView({t.trace_id: Evidence(_given(t, {}), ()) for t in traces}, {}, Counter(), 0, None)
    with retriever:
        now: dict[str, list[dict]] = {}
        for k in sorted({t.k or params.generator.context_chunks or 1 for t in traces}):
            batch = [t for t in traces if (t.k or params.generator.context_chunks or 1) == k]
            for t, hits in zip(batch, retriever.search([t.question for t in batch], k), strict=True):
                now[t.trace_id] = hits
        texts = sorted({t.question for t in traces} | {d.text for t in traces for d in t.retrieved}
                       | {h["text"] for hits in now.values() for h in hits})  # fmt: skip
        vectors = dict(zip(texts, retriever.embedder.encode(texts), strict=True))
        records = retriever.manifest.records_at(retriever.version, retriever.info.collection)
        df, n = document_frequency(retriever.manifest.texts({r.chunk_hash for r in records}).values())
        version = retriever.version
    evidence = {}
    for t in traces:
        q = vectors[t.question]
        after = tuple(Chunk(h["doc"], h["text"], float(vectors[h["text"]] @ q)) for h in now[t.trace_id])
        evidence[t.trace_id] = Evidence(_given(t, vectors), after)
    return IndexView(evidence, {t.question: vectors[t.question] for t in traces}, df, n, version)


def _given(t: LiveTrace, vectors: dict[str, np.ndarray]) -> tuple[Chunk, ...]:
    q = vectors.get(t.question)
    return tuple(Chunk(d.doc, d.text, float(vectors[d.text] @ q) if q is not None else -1.0) for d in t.retrieved)
