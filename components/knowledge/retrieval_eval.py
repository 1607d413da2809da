"""Retrieval measured on a team's own labelled queries (`ragloop eval-retrieval FILE`).

The file is JSONL, one query a line: {"query": "...", "relevant": ["doc", ...]} or, graded,
{"query": "...", "relevant": {"doc": 2, "other": 1}} (gain values, used by nDCG; a plain list gives each document
gain 1), with an optional "id". Documents are paths relative to the docs folder, as `ragloop query` shows them.

Pure functions: reading and checking the file, and scoring the ranked documents of each query (recall@k, hit@k,
MRR, nDCG@10 with the gains). Retrieval and tracking happen in components/behaviour/eval_retrieval.py.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.jsonl import read_jsonl

NDCG_AT = 10
DEFAULT_KS = (1, 5, 10)


class QueryFileError(ValueError):
    """The labelled query file cannot be read or a line does not match the format."""


@dataclass(frozen=True)
class LabelledQuery:
    id: str
    line: int
    query: str
    gains: dict[str, float]  # relevant document -> gain (> 0)


def load_queries(path: Path) -> list[LabelledQuery]:
    """Every query of the file, in order; the first bad line raises QueryFileError naming file, line and field."""
    out, seen = [], set()
    for number, row in read_jsonl(path, QueryFileError):
        query = _parse(path, number, row)
        if query.id in seen:
            raise QueryFileError(f"{path}:{number}: field 'id': {query.id!r} is used by an earlier line")
        seen.add(query.id)
        out.append(query)
    if not out:
        raise QueryFileError(f"{path}: no queries (expected one JSON object a line)")
    return out


def _parse(path: Path, number: int, row: Any) -> LabelledQuery:
    where = f"{path}:{number}"
    if not isinstance(row, dict):
        raise QueryFileError(f"{where}: expected a JSON object with 'query' and 'relevant', got {type(row).__name__}")
    extra = sorted(set(row) - {"id", "query", "relevant"})
    if extra:
        raise QueryFileError(f"{where}: unknown field(s) {', '.join(map(repr, extra))}; allowed: id, query, relevant")
    text = row.get("query")
    if not isinstance(text, str) or not text.strip():
        raise QueryFileError(f"{where}: field 'query': expected a non-empty string, got {text!r}")
    qid = row.get("id", f"line-{number}")
    if not isinstance(qid, (str, int)) or isinstance(qid, bool):
        raise QueryFileError(f"{where}: field 'id': expected a string or an integer, got {qid!r}")
    return LabelledQuery(str(qid), number, text, _gains(where, row.get("relevant")))


def _gains(where: str, relevant: object) -> dict[str, float]:
    expected = "a non-empty list of document paths or an object {path: gain > 0}"
    if isinstance(relevant, list) and relevant and all(isinstance(d, str) and d for d in relevant):
        return dict.fromkeys(relevant, 1.0)
    if isinstance(relevant, dict) and relevant:
        bad = [d for d, g in relevant.items() if isinstance(g, bool) or not isinstance(g, (int, float)) or g <= 0]
        if bad:
            raise QueryFileError(f"{where}: field 'relevant': gain of {bad[0]!r} is {relevant[bad[0]]!r}; "
                                 "expected a number > 0")  # fmt: skip
        return {d: float(g) for d, g in relevant.items()}
    raise QueryFileError(f"{where}: field 'relevant': expected {expected}, got {relevant!r}")


def unknown_documents(queries: list[LabelledQuery], known: set[str]) -> list[dict]:
    """The labelled documents the published version does not hold, each with its line and the closest path."""
    out = []
    for q in queries:
        for doc in q.gains:
            if doc not in known:
                close = difflib.get_close_matches(doc, known, n=1, cutoff=0.6)
                out.append({"id": q.id, "line": q.line, "doc": doc, "closest": close[0] if close else None})
    return out


def score_query(ranked: list[str], gains: dict[str, float], ks: tuple[int, ...]) -> dict[str, float]:
    """Metrics of one query. `ranked` is the retrieved documents best first; at the chunk level a document can
    come back several times: each gold document counts once, where it first appears."""
    first: dict[str, int] = {}
    for rank, doc in enumerate(ranked, start=1):
        first.setdefault(doc, rank)
    found = {d: r for d, r in first.items() if d in gains}
    out = {}
    for k in ks:
        out[f"recall@{k}"] = sum(1 for r in found.values() if r <= k) / len(gains)
        out[f"hit@{k}"] = 1.0 if any(r <= k for r in found.values()) else 0.0
    out["mrr"] = 1.0 / min(found.values()) if found else 0.0
    dcg = sum(gains[d] / math.log2(r + 1) for d, r in found.items() if r <= NDCG_AT)
    ideal = sum(g / math.log2(i + 2) for i, g in enumerate(sorted(gains.values(), reverse=True)[:NDCG_AT]))
    out[f"ndcg@{NDCG_AT}"] = dcg / ideal
    return out


def summarise(rows: list[dict[str, float]]) -> dict[str, float]:
    """The mean of every metric over the queries."""
    return {name: round(sum(r[name] for r in rows) / len(rows), 4) for name in rows[0]} if rows else {}


def parse_ks(text: str) -> tuple[int, ...]:
    """`--k 1,5,10` -> (1, 5, 10), sorted and distinct; each between 1 and 100."""
    try:
        ks = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise ValueError(f"--k: expected comma-separated integers such as 1,5,10, got {text!r}") from None
    if not ks or ks[0] < 1 or ks[-1] > 100:
        raise ValueError(f"--k: expected integers between 1 and 100, got {text!r}")
    return tuple(ks)
