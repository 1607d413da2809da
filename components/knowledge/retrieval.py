"""Read the published index: what `ragloop query` and the assistant see. Takes no lock and never sees a
version that is not fully published (records are filtered by the published version's interval).

`retrieval.mode` (params.yaml) picks the ranking: `dense` (cosine similarity in Chroma), `lexical` (BM25 over the
published version's chunk texts) or `hybrid` (both, fused by reciprocal rank). The lexical index is built from the
manifest's records and texts of the version this Retriever reads, and cached per (index, version): a re-index
publishes a new version, so a cached index never serves chunks the reader's version does not contain.

`search` ranks chunks; `search_docs` ranks documents, each scored from its chunks among the best
`retrieval.doc_candidates` (`retrieval.doc_aggregation`: its best chunk, or its best chunks' ranks together).
A query longer than the embedder's window is split into parts that fit (components/knowledge/long_query.py,
`retrieval.long_query`); a chunk's dense score is its best cosine to any part (with `retrieval.sentences_whole`,
the whole query is one more part), and BM25 reads the whole query.
"""

from __future__ import annotations

import functools
import math
import re
from collections import Counter, OrderedDict, defaultdict
from dataclasses import dataclass
from types import TracebackType

import numpy as np
import snowballstemmer

from components.config import Params, RetrievalParams, Settings
from components.knowledge.embedder import Embedder
from components.knowledge.long_query import QuerySplitter
from components.knowledge.manifest import Manifest, Record, manifest_path
from components.knowledge.store import Store

_WORD = re.compile(r"\w+")
_CACHE_SIZE = 4  # lexical indexes kept per process (one per index version read recently)
LEVELS = ("chunk", "doc")  # what a search ranks: chunks, or documents scored from their chunks
Row = tuple[str, str, str, str, float]  # a ranked chunk: record id, doc, chunk_id, chunk_hash, score


class IndexNotReadyError(RuntimeError):
    """No index version has been published yet."""


@functools.lru_cache(maxsize=8)
def _stemmer(language: str) -> snowballstemmer.stemmer:
    return snowballstemmer.stemmer(language)


@functools.lru_cache(maxsize=500_000)
def _stem(language: str, word: str) -> str:
    return str(_stemmer(language).stemWord(word))


def tokenize(text: str, stemmer: str | None = None) -> list[str]:
    """Lower-cased word tokens (letters, digits, underscore; any script), reduced to their Snowball stem in
    `stemmer`'s language when one is given ("payments" and "payment" both become "payment")."""
    words = _WORD.findall(text.lower())
    return words if stemmer is None else [_stem(stemmer, w) for w in words]


@dataclass
class LexicalIndex:
    """Okapi BM25 over the chunk records of one index version. Each posting holds its term's whole BM25 weight
    (idf x saturated, length-normalised tf), so a query is one scatter-add per query term."""

    records: list[Record]
    postings: dict[str, tuple[np.ndarray, np.ndarray]]  # term -> (record positions, weights)
    stemmer: str | None = None

    @classmethod
    def build(cls, records: list[Record], texts: dict[str, str], k1: float, b: float,
              stemmer: str | None = None) -> LexicalIndex:  # fmt: skip
        records = sorted(records, key=lambda r: r.id)  # a deterministic order: ties rank the same every time
        counts = [Counter(tokenize(texts.get(r.chunk_hash, ""), stemmer)) for r in records]
        lengths = np.array([sum(c.values()) for c in counts], dtype=np.float64)
        norm = k1 * (1 - b + b * lengths / max(float(lengths.mean()) if len(records) else 0.0, 1e-9))
        by_term: dict[str, list[tuple[int, int]]] = defaultdict(list)
        for pos, c in enumerate(counts):
            for term, tf in c.items():
                by_term[term].append((pos, tf))
        n = len(records)
        postings = {}
        for term, rows in by_term.items():
            idf = math.log(1 + (n - len(rows) + 0.5) / (len(rows) + 0.5))
            pos_arr = np.fromiter((p for p, _ in rows), dtype=np.int64, count=len(rows))
            freq = np.fromiter((t for _, t in rows), dtype=np.float64, count=len(rows))
            postings[term] = (pos_arr, idf * freq * (k1 + 1) / (freq + norm[pos_arr]))
        return cls(records, postings, stemmer)

    def top(self, text: str, n: int) -> list[tuple[Record, float]]:
        """The n best records for `text` with a positive score, best first."""
        scores = np.zeros(len(self.records))
        for term in set(tokenize(text, self.stemmer)):
            if term in self.postings:
                pos, weight = self.postings[term]
                scores[pos] += weight
        hits = np.flatnonzero(scores > 0)
        if len(hits) > n:
            hits = hits[np.argpartition(-scores[hits], n - 1)[:n]]
        order = hits[np.lexsort((hits, -scores[hits]))]  # by score, then position: deterministic
        return [(self.records[i], float(scores[i])) for i in order]


_LEXICAL: OrderedDict[tuple, LexicalIndex] = OrderedDict()


def lexical_index(manifest: Manifest, version: int, collection: str, created_at: float,
                  params: RetrievalParams) -> LexicalIndex:  # fmt: skip
    """The BM25 index of one published version, built once per process. The key holds the version's creation
    time too, so an index folder deleted and rebuilt (version numbers start again) is never served stale."""
    key = (str(manifest.path.resolve()), version, created_at, collection, params.bm25_k1, params.bm25_b, params.stemmer)
    if key in _LEXICAL:
        _LEXICAL.move_to_end(key)
        return _LEXICAL[key]
    records = manifest.records_at(version, collection)
    texts = manifest.embedding_texts({r.chunk_hash for r in records})  # with the headings embedded with them
    index = _LEXICAL[key] = LexicalIndex.build(records, texts, params.bm25_k1, params.bm25_b, params.stemmer)
    while len(_LEXICAL) > _CACHE_SIZE:
        _LEXICAL.popitem(last=False)
    return index


def fuse(rankings: list[list[str]], k: int, rrf_k: int) -> list[tuple[str, float]]:
    """Reciprocal rank fusion: score(id) = sum over rankings of 1 / (rrf_k + rank), rank from 1; ties keep the
    first ranking's order. Scores are divided by their maximum (first in every ranking), so 1.0 is the top."""
    scores: dict[str, float] = defaultdict(float)
    first_seen: dict[str, tuple[int, int]] = {}
    for which, ids in enumerate(rankings):
        for rank, rid in enumerate(ids, start=1):
            scores[rid] += 1.0 / (rrf_k + rank)
            first_seen.setdefault(rid, (rank, which))
    best = len(rankings) / (rrf_k + 1)
    ranked = sorted(scores, key=lambda rid: (-scores[rid], first_seen[rid]))
    return [(rid, scores[rid] / best) for rid in ranked[:k]]


def aggregate_docs(rows: list[Row], k: int, how: str, per_doc: int) -> list[tuple[str, float, list[Row]]]:
    """The k best documents of a chunk ranking (best first), each with its best `per_doc` chunks. `max`: a
    document scores its best chunk's score; `rrf`: sum over its best `per_doc` chunks of 1 / rank, divided by the
    most any document could get (its chunks ranked 1..per_doc), so 1.0 is the top. No fusion constant here: with
    rrf_k = 60 the sum counts chunks (two chunks at ranks 5 and 8 beat one at rank 1: XQuAD recall@5 fell from 0.99
    to 0.23, bench/README.md); with 1 / rank, a document ranked first loses only to one holding the next three
    ranks. Ties keep the order in which the documents first appear."""
    chunks: dict[str, list[tuple[int, Row]]] = defaultdict(list)
    for rank, row in enumerate(rows, start=1):
        if len(chunks[row[1]]) < per_doc:
            chunks[row[1]].append((rank, row))
    if how == "max":
        scores = {doc: found[0][1][4] for doc, found in chunks.items()}
    else:
        best = sum(1.0 / r for r in range(1, per_doc + 1))
        scores = {doc: sum(1.0 / rank for rank, _ in found) / best for doc, found in chunks.items()}
    order = sorted(chunks, key=lambda doc: (-scores[doc], chunks[doc][0][0]))
    return [(doc, scores[doc], [row for _, row in chunks[doc]]) for doc in order[:k]]


class Retriever:
    """The published version, opened once for many queries (an evaluation asks hundreds)."""

    def __init__(self, params: Params, settings: Settings | None = None) -> None:
        self.params = params.retrieval
        self.manifest = Manifest(manifest_path(params.paths.index))
        self.version = self.manifest.published()
        info = self.manifest.version(self.version)
        if info is None:
            self.manifest.close()
            raise IndexNotReadyError(f"no index published under {params.paths.index}: run `ragloop index` first")
        self.info = info
        model, _, revision = info.embedder.rpartition("@")
        embedder_params = params.embedder.model_copy(
            update={"model": model, "revision": None if revision.startswith("sha256:") else revision}
        )
        self.embedder = Embedder(embedder_params, info.embedder)
        self.store = Store(params.paths.index, settings or Settings.from_env())
        self.collection = self.store.collection(info.collection)
        self._lexical: LexicalIndex | None = None
        self._splitter: QuerySplitter | None = None

    @property
    def lexical(self) -> LexicalIndex:
        if self._lexical is None:
            self._lexical = lexical_index(self.manifest, self.version, self.info.collection, self.info.created_at,
                                          self.params)  # fmt: skip
        return self._lexical

    @property
    def splitter(self) -> QuerySplitter | None:
        """Splits queries longer than the embedder's window (None: the model has no tokenizer to count with)."""
        if self._splitter is None and self.params.long_query != "truncate":
            found = self.embedder.tokenizer_window()
            self._splitter = (QuerySplitter(*found, self.params.long_query, self.params.sentences_min)
                              if found else None)  # fmt: skip
        return self._splitter

    def warm(self) -> None:
        """Load what the first search would: the embedder, and the lexical index (modes that use it)."""
        if self.params.mode != "lexical":
            self.embedder.encode(["warm up"])
            _ = self.splitter
        if self.params.mode != "dense":
            _ = self.lexical

    def search(self, texts: list[str], k: int) -> list[list[dict]]:
        """For each text, the k best chunks: [{"doc", "chunk_id", "score", "text"}], best first. The score is the
        cosine similarity (dense; for a query split into parts, the best over its parts), the BM25 score (lexical)
        or the normalised fused score (hybrid, 1.0 = ranked first by both)."""
        per_text = self._rank(texts, k, max(k, self.params.candidates))
        chunk_texts = self.manifest.texts({h[3] for per in per_text for h in per})
        return [
            [{"doc": doc, "chunk_id": cid, "score": round(score, 6), "text": chunk_texts.get(h, "")}
             for _, doc, cid, h, score in per]
            for per in per_text
        ]  # fmt: skip

    def search_docs(self, texts: list[str], k: int) -> list[list[dict]]:
        """For each text, the k best documents: [{"doc", "score", "chunks": [{"chunk_id", "score", "text"}]}], best
        first, ranked from the best `retrieval.doc_candidates` chunks by `retrieval.doc_aggregation`; `chunks`
        holds the document's best chunks (at most `retrieval.doc_chunks`), best first."""
        pool = max(k, self.params.doc_candidates)
        per_text = self._rank(texts, pool, max(pool, self.params.candidates))
        ranked = [aggregate_docs(rows, k, self.params.doc_aggregation, self.params.doc_chunks) for rows in per_text]
        chunk_texts = self.manifest.texts({c[3] for per in ranked for _, _, chunks in per for c in chunks})
        return [
            [{"doc": doc, "score": round(score, 6),
              "chunks": [{"chunk_id": cid, "score": round(s, 6), "text": chunk_texts.get(h, "")}
                         for _, _, cid, h, s in chunks]}
             for doc, score, chunks in per]
            for per in ranked
        ]  # fmt: skip

    def _rank(self, texts: list[str], k: int, candidates: int) -> list[list[Row]]:
        """Each text's k best chunk rows (id, doc, chunk_id, chunk_hash, score), best first."""
        if self.params.mode == "lexical":
            return [[(r.id, r.doc, r.chunk_id, r.chunk_hash, s) for r, s in self.lexical.top(t, k)] for t in texts]
        per_text = self._dense(texts, k if self.params.mode == "dense" else candidates)
        if self.params.mode == "hybrid":
            per_text = [self._fuse(hits, t, k, candidates) for hits, t in zip(per_text, texts, strict=True)]
        return per_text

    def _dense(self, texts: list[str], n: int) -> list[list[Row]]:
        """The n best chunks by cosine for each text; every query's parts are embedded in one batch, and a chunk
        scores its best similarity to any part of its query."""
        splitter = self.splitter
        parts = [splitter.split(t) if splitter else [t] for t in texts]
        if self.params.sentences_whole and splitter is not None:  # the whole query as one more part, if it fits
            parts = [[t, *ps] if len(ps) > 1 and splitter.fits(t) else ps for t, ps in zip(texts, parts, strict=True)]
        vectors = iter(self.embedder.encode([p for ps in parts for p in ps]))
        out = []
        for ps in parts:
            best: dict[str, Row] = {}
            for _ in ps:
                for rec, score in self.store.query(self.collection, next(vectors), n, self.version):
                    if rec.id not in best or score > best[rec.id][4]:
                        m = rec.metadata
                        best[rec.id] = (rec.id, m["doc"], m["chunk_id"], m["chunk_hash"], score)
            out.append(sorted(best.values(), key=lambda row: (-row[4], row[0]))[:n])
        return out

    def _fuse(self, dense: list[Row], text: str, k: int, candidates: int) -> list[Row]:
        lexical = self.lexical.top(text, candidates)
        rows = {rid: (rid, doc, cid, h) for rid, doc, cid, h, _ in dense}
        rows.update({r.id: (r.id, r.doc, r.chunk_id, r.chunk_hash) for r, _ in lexical})
        fused = fuse([[row[0] for row in dense], [r.id for r, _ in lexical]], k, self.params.rrf_k)
        return [(*rows[rid], score) for rid, score in fused]

    def stale_docs(self) -> set[str]:
        """Documents of the published version whose last parse failed (their chunks are an old text)."""
        return {path for path, row in self.manifest.docs_at(self.version).items() if row.stale}

    def indexed_docs(self) -> set[str]:
        """The documents of the published version."""
        return set(self.manifest.docs_at(self.version))

    def close(self) -> None:
        self.store.close()
        self.manifest.close()

    def __enter__(self) -> Retriever:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()


def query_index(params: Params, text: str, k: int = 5, settings: Settings | None = None,
                level: str = "chunk") -> list[dict]:  # fmt: skip
    """The k best chunks (level `chunk`) or documents (level `doc`) of the published version for one text."""
    if level not in LEVELS:
        raise ValueError(f"level must be one of {', '.join(LEVELS)}; got {level!r}")
    with Retriever(params, settings) as retriever:
        return (retriever.search_docs if level == "doc" else retriever.search)([text], k)[0]
