"""What triage's rules need from the index: each failing question searched again on the published version deeper
than its context (`triage.search_depth` chunks, hybrid-ranked as the assistant ranks them), every chunk scored
for how well it answers (relevance under the index's own embedder: absolute, unlike a hybrid run's fused score;
with a user's correction, the share of its terms the chunk holds), the question vectors (to group unanswered
ones) and the corpus' term frequencies (to name their topics)."""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from components.behaviour.triage import Chunk, Evidence, document_frequency
from components.config import Params, Settings
from components.knowledge.retrieval import IndexNotReadyError, Retriever, tokenize
from components.tracking.production import LiveTrace

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")
MIN_SENTENCE_CHARS = 15  # shorter pieces (a bullet's label, a heading's '##') say too little to be judged alone


@dataclass(frozen=True)
class IndexView:
    evidence: dict[str, Evidence]  # trace id -> the context it was given and the deep search now
    vectors: dict[str, np.ndarray]  # question -> its vector
    df: Counter  # term -> chunks of the published version containing it
    n_texts: int
    index_version: int | None  # None: nothing published (every failure then looks like an outage)


def sentences(text: str) -> list[str]:
    """A chunk's sentences and lines (list items, table rows), markup stripped; the whole text if none is long
    enough to judge."""
    parts = [p.strip(" \t-*#|>") for p in _SENTENCE_END.split(text)]
    return [p for p in parts if len(p) >= MIN_SENTENCE_CHARS] or [text]


def terms(text: str, stemmer: str | None) -> set[str]:
    """Every stemmed word and number of a text ('2' and '00' of 'EUR 2.00'), as BM25 tokenizes it: on the gate set,
    leaving stopwords or short words out lost more right routes than it saved (bench/triage_rules.py)."""
    return set(tokenize(text, stemmer))


def overlap(said: set[str], chunk_text: str, stemmer: str | None,
            idf: Callable[[str], float] | None = None) -> float | None:  # fmt: skip
    """The share of the correction's terms the chunk holds, each term weighted by its inverse document frequency in
    the published version (`idf`; None: every term counts 1): 'yes', 'can' and 'the' are in every chunk, a fee's
    name in few. None: no correction, or one with no terms."""
    if not said:
        return None
    weight = idf or (lambda _: 1.0)
    have = terms(chunk_text, stemmer)
    return sum(weight(w) for w in said if w in have) / sum(weight(w) for w in said)


def inverse_frequency(texts: Iterable[str], stemmer: str | None) -> Callable[[str], float]:
    """idf(term) over the chunk texts, with terms as `terms` makes them: log((n + 1) / (df + 0.5)), so a term in
    every chunk still weighs a little and an unseen one the most."""
    df: Counter = Counter()
    n = 0
    for text in texts:
        df.update(terms(text, stemmer))
        n += 1
    return lambda w: math.log((n + 1) / (df.get(w, 0) + 0.5))


def retrieve_again(params: Params, settings: Settings, traces: list[LiveTrace]) -> IndexView:
    """Each trace's question searched again on the published version, `triage.search_depth` chunks deep (at least
    as deep as the context its answer used, `k`, else `generator.context_chunks`)."""
    if not traces:
        return IndexView({}, {}, Counter(), 0, None)
    try:
        retriever = Retriever(params, settings)
    except IndexNotReadyError:
        outage = {t.trace_id: Evidence(tuple(Chunk(d.doc, d.text, -1.0) for d in t.retrieved), (), _k(t, params))
                  for t in traces}  # fmt: skip
        return IndexView(outage, {}, Counter(), 0, None)
    with retriever:
        depth = max(params.triage.search_depth, *(_k(t, params) for t in traces))
        deep = dict(zip([t.trace_id for t in traces], retriever.search([t.question for t in traces], depth),
                        strict=True))  # fmt: skip
        chunk_texts = {d.text for t in traces for d in t.retrieved} | {h["text"] for hs in deep.values() for h in hs}
        split = {text: sentences(text) for text in chunk_texts}
        texts = sorted({t.question for t in traces} | chunk_texts | {s for ss in split.values() for s in ss})
        vectors = dict(zip(texts, retriever.embedder.encode(texts), strict=True))
        records = retriever.manifest.records_at(retriever.version, retriever.info.collection)
        stored = retriever.manifest.texts({r.chunk_hash for r in records})
        df, n = document_frequency(stored.values())
        now: dict[str, set[str]] = {}  # document -> its chunk texts in the published version
        for r in records:
            now.setdefault(r.doc, set()).add(stored.get(r.chunk_hash, ""))
        version = retriever.version
    judge = _judge(vectors, split)
    said = _corrections(params, traces)
    stemmer = params.retrieval.stemmer
    idf = inverse_frequency(stored.values(), stemmer) if said else None
    evidence = {}
    for t in traces:

        def chunk(doc: str, text: str, t: LiveTrace = t) -> Chunk:
            told = said.get(t.trace_id, set())
            return Chunk(doc, text, judge(t.question, text), overlap(told, text, stemmer),
                         overlap(told, text, stemmer, idf) if idf else None)  # fmt: skip

        given = tuple(chunk(d.doc, d.text) for d in t.retrieved)
        changed = t.index_version is None or t.index_version != version
        outdated = tuple(dict.fromkeys(d.doc for d in t.retrieved if d.text not in now.get(d.doc, set())))
        evidence[t.trace_id] = Evidence(given, tuple(chunk(h["doc"], h["text"]) for h in deep[t.trace_id]),
                                        _k(t, params), changed, outdated if changed else ())  # fmt: skip
    return IndexView(evidence, {t.question: vectors[t.question] for t in traces}, df, n, version)


def _k(t: LiveTrace, params: Params) -> int:
    return t.k or params.generator.context_chunks or 1


def _judge(vectors: dict[str, np.ndarray], split: dict[str, list[str]]) -> Callable[[str, str], float]:
    """relevance(question, chunk): the mean of cosine(question, chunk) and cosine(question, its best sentence)
    (bench/triage_rules.py: better at finding the answering chunk than either alone)."""

    def relevance(question: str, text: str) -> float:
        q = vectors[question]
        best = max(float(vectors[s] @ q) for s in split[text])
        return round((float(vectors[text] @ q) + best) / 2, 6)

    return relevance


def _corrections(params: Params, traces: list[LiveTrace]) -> dict[str, set[str]]:
    """trace id -> the terms of the user's correction (its answer, when it is written in the contract's format)."""
    corrected = [t for t in traces if t.correction]
    if not corrected:
        return {}
    from components.behaviour.contract import contract_for

    contract = contract_for(params)
    out = {}
    for t in corrected:
        parsed = contract.answer_of(t.correction or "")
        out[t.trace_id] = terms(parsed.answer if parsed is not None and parsed.answer else t.correction or "",
                                params.retrieval.stemmer)  # fmt: skip
    return out
