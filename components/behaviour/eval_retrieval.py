"""Retrieval of the published index version scored on labelled queries, in one process (every query embedded in
one batch), logged to MLflow (experiment `retrieval.experiment`): what `ragloop eval-retrieval FILE` prints
(flows/cli/knowledge.py) and what the evaluate flow records (its Prefect task: flows/retrieval_tasks.py).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from components.config import Params, Settings
from components.hashing import file_md5
from components.knowledge.retrieval import LEVELS, Retriever
from components.knowledge.retrieval_eval import (
    NDCG_AT,
    LabelledQuery,
    load_queries,
    score_query,
    summarise,
    unknown_documents,
)

WORST = 5  # queries listed as the worst, lowest nDCG first


def evaluate_retrieval(params: Params, queries_file: Path, ks: tuple[int, ...], level: str = "doc",
                       settings: Settings | None = None, log: bool = True) -> dict[str, Any]:  # fmt: skip
    """Score the published version on the file's queries; the result is the `--json` contract (README)."""
    if level not in LEVELS:
        raise ValueError(f"--level must be one of {', '.join(LEVELS)}; got {level!r}")
    started = time.perf_counter()
    queries = load_queries(queries_file)
    settings = settings or Settings.from_env()
    with Retriever(params, settings) as retriever:
        unknown = unknown_documents(queries, set(retriever.manifest.docs_at(retriever.version)))
        t0 = time.perf_counter()
        retriever.warm()
        t1 = time.perf_counter()
        ranked = _ranked_docs(retriever, [q.query for q in queries], max(*ks, NDCG_AT), level)
        load_s, retrieval_s = t1 - t0, time.perf_counter() - t1
        version, embedder = retriever.version, retriever.info.embedder
    missing = {(u["id"], u["doc"]) for u in unknown}
    rows, skipped = [], []
    for q, docs in zip(queries, ranked, strict=True):
        gains = {d: g for d, g in q.gains.items() if (q.id, d) not in missing}
        if not gains:
            skipped.append({"id": q.id, "line": q.line, "reason": "none of its relevant documents is in the index"})
            continue
        rows.append(_row(q, gains, docs, ks))
    metric_names = [*(f"{m}@{k}" for m in ("recall", "hit") for k in ks), "mrr", f"ndcg@{NDCG_AT}"]
    seconds = {"load": round(load_s, 3), "retrieval": round(retrieval_s, 3),
               "per_query": round(retrieval_s / len(queries), 4)}  # fmt: skip
    result: dict[str, Any] = {
        "index_version": version,
        "level": level,
        "ks": list(ks),
        "queries": len(queries),
        "scored": len(rows),
        "metrics": summarise([{m: r[m] for m in metric_names} for r in rows]),
        "worst": _worst(rows, ks),
        "unknown_documents": unknown,
        "skipped": skipped,
        "queries_file": str(queries_file),
        "queries_md5": file_md5(queries_file),
        "embedder": embedder,
        "retrieval": params.retrieval.model_dump(),
        "seconds": seconds,
        "mlflow_run_id": None,
    }
    seconds["total"] = round(time.perf_counter() - started, 3)
    if log:
        from components.tracking.retrieval_runs import log_retrieval_eval

        result["mlflow_run_id"] = log_retrieval_eval(params, settings, result, rows)
    return result


def _ranked_docs(retriever: Retriever, texts: list[str], depth: int, level: str) -> list[list[str]]:
    if level == "doc":
        return [[h["doc"] for h in hits] for hits in retriever.search_docs(texts, depth)]
    return [[h["doc"] for h in hits] for hits in retriever.search(texts, depth)]


def _row(q: LabelledQuery, gains: dict[str, float], docs: list[str], ks: tuple[int, ...]) -> dict[str, Any]:
    found = list(dict.fromkeys(d for d in docs if d in gains))
    return {"id": q.id, "line": q.line, "query": q.query, "relevant": sorted(gains),
            "retrieved": list(dict.fromkeys(docs))[: max(ks)],
            "missed": sorted(set(gains) - set(docs[: max(ks)])), "found": found,
            **{name: round(v, 4) for name, v in score_query(docs, gains, ks).items()}}  # fmt: skip


def _worst(rows: list[dict[str, Any]], ks: tuple[int, ...]) -> list[dict[str, Any]]:
    order = sorted(rows, key=lambda r: (r[f"ndcg@{NDCG_AT}"], r[f"recall@{max(ks)}"], r["mrr"], r["line"]))
    keep = ("id", "line", "query", f"ndcg@{NDCG_AT}", f"recall@{max(ks)}", "mrr", "missed", "retrieved")
    return [{k: r[k] for k in keep} for r in order[:WORST]]
