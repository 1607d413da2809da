"""How well production triage's rules route live failures, measured where the truth is known: the sample
deployment's gate set (data/behaviour/gate.jsonl) on the published data/docs index (params.yaml;
`ragloop index --direct --params params.yaml` builds it).

Every gate question is treated as a failing live answer served with the assistant's context (the hybrid top
`generator.context_chunks` chunks, as `ragloop api` retrieves them) and routed by the real triage code
(components/behaviour/triage_evidence.py, then triage.py). Truth, per case: `missing` when it has no gold document
(out of scope), `behaviour` when a gold document was in the context, `retrieval` when it ranked below the cut-off.
Candidate judges of "which chunk answers" are compared through the same `classify`, each chunk re-scored:

* same depth, cosine: the rule before routes (the context's depth again, cosine(question, chunk); no retrieval
  route, so every retrieval miss goes to behaviour or missing);
* deep, cosine / best sentence / mean: `triage.search_depth` chunks, the chunk's cosine, its best sentence's, or
  the mean of both (the chosen judge);
* deep, mean, with corrections: the user corrected the answer (the gate's expected answer as the correction),
  the chunk holding most of its terms is the answering one (in-scope cases: an out-of-scope case has no answer);
  the question-alone routes of the chosen judge on the same in-scope cases are reported beside it.

Precision and recall per route; stale needs edited documents (tests/integration/test_triage_flow.py proves it).

    OMP_NUM_THREADS=1 .venv/bin/python bench/triage_rules.py
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import replace
from typing import Any

import _common as c  # sets the offline environment before the project imports

from components.behaviour import triage as rules
from components.behaviour.triage_evidence import retrieve_again, sentences
from components.config import Settings, load_params
from components.knowledge.retrieval import Retriever
from components.routes import BEHAVIOUR, MISSING, RETRIEVAL, STALE
from components.tracking.production import LiveTrace, RetrievedDoc

ROUTES = (BEHAVIOUR, RETRIEVAL, MISSING, STALE, rules.OUTAGE)


def served(params: Any, cases: list[dict], corrected: bool) -> list[LiveTrace]:
    """The gate questions as failing live answers, with the context the assistant retrieves for them."""
    k = params.generator.context_chunks
    with Retriever(params) as r:
        hits, version = r.search([x["question"] for x in cases], k), r.version
    return [LiveTrace(trace_id=x["id"], timestamp_ms=0, question=x["question"], output="", k=k,
                      retrieved=tuple(RetrievedDoc(h["doc"], h["chunk_id"], h["score"], version, h["text"])
                                      for h in hs), index_version=version, model_version="bench", feedback=False,
                      correction=x["answer"] if corrected and x.get("answer") else None)
            for x, hs in zip(cases, hits, strict=True)]  # fmt: skip


def truth(case: dict, trace: LiveTrace) -> str:
    gold = set(case.get("gold_docs") or ())
    if not gold:
        return MISSING
    return BEHAVIOUR if gold & {d.doc for d in trace.retrieved} else RETRIEVAL


def rescored(ev: rules.Evidence, question: str, score: Any, depth: int | None) -> rules.Evidence:
    """The same evidence under another judge (`score(question, text)`), the deep search cut to `depth`."""

    def one(ch: rules.Chunk) -> rules.Chunk:
        return replace(ch, relevance=score(question, ch.text), overlap=None)

    deep = ev.deep if depth is None else ev.deep[:depth]
    return rules.Evidence(tuple(map(one, ev.given)), tuple(map(one, deep)), ev.k)


def scores(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """Precision and recall per route, and the confusion matrix (truth -> route -> count)."""
    out: dict[str, Any] = {"cases": len(pairs), "confusion": {}}
    for t in sorted({t for t, _ in pairs}):
        out["confusion"][t] = dict(Counter(r for tt, r in pairs if tt == t))
    for route in (BEHAVIOUR, RETRIEVAL, MISSING):
        tp = sum(t == r == route for t, r in pairs)
        routed, true = sum(r == route for _, r in pairs), sum(t == route for t, _ in pairs)
        out[route] = {"precision": round(tp / routed, 3) if routed else None,
                      "recall": round(tp / true, 3) if true else None, "routed": routed, "true": true}  # fmt: skip
    return out


def main() -> None:
    params = load_params(c.ROOT / "params.yaml")
    settings = Settings.from_env()
    cases = [json.loads(x) for x in (c.ROOT / "data/behaviour/gate.jsonl").read_text().splitlines() if x.strip()]
    t0 = time.perf_counter()
    plain = served(params, cases, corrected=False)
    view = retrieve_again(params, settings, plain)
    seconds = time.perf_counter() - t0
    truths = [truth(x, t) for x, t in zip(cases, plain, strict=True)]
    vectors = _vectors(params, cases, view)

    def cos(q: str, text: str) -> float:
        return float(vectors[text] @ vectors[q])

    def sent(q: str, text: str) -> float:
        return max(cos(q, s) for s in sentences(text))

    judges = {
        "same depth, cosine (before routes)": (cos, params.generator.context_chunks),
        "deep, cosine": (cos, None), "deep, best sentence": (sent, None),
        "deep, mean of cosine and best sentence (chosen)": (None, None),
    }  # fmt: skip
    results: dict[str, Any] = {}
    for name, (judge, depth) in judges.items():
        routed = []
        for t in plain:
            ev = view.evidence[t.trace_id] if judge is None else rescored(view.evidence[t.trace_id], t.question,
                                                                          judge, depth)  # fmt: skip
            routed.append(rules.classify(t, ev, params.triage).route)
        results[name] = scores(list(zip(truths, routed, strict=True)))
        c.log(f"{name}: {_line(results[name])}")
    results["deep, mean, question alone (in scope)"] = scores(
        [(t, r) for t, r in zip(truths, routed, strict=True) if t != MISSING]
    )  # the chosen judge's routes
    fixed = served(params, cases, corrected=True)
    fixed_view = retrieve_again(params, settings, fixed)
    routed = [rules.classify(t, fixed_view.evidence[t.trace_id], params.triage).route for t in fixed]
    in_scope = [(tr, r) for tr, r, x in zip(truths, routed, cases, strict=True) if x.get("answer")]
    results["deep, mean, with the user's correction (in scope)"] = scores(in_scope)
    c.log(f"with corrections: {_line(results['deep, mean, with the user' + chr(39) + 's correction (in scope)'])}")
    sweep = {}
    for thr in (0.3, 0.35, 0.4, 0.45, 0.5, 0.55):
        p = params.triage.model_copy(update={"relevance_min": thr})
        pairs = [(tr, rules.classify(t, view.evidence[t.trace_id], p).route)
                 for tr, t in zip(truths, plain, strict=True)]  # fmt: skip
        sweep[str(thr)] = {r: scores(pairs)[r] for r in (MISSING, BEHAVIOUR, RETRIEVAL)}
    missed = [(x, t) for x, t, tr in zip(cases, plain, truths, strict=True) if tr == RETRIEVAL]
    ranks = Counter(next((i for i, ch in enumerate(view.evidence[t.trace_id].deep, 1) if ch.doc in x["gold_docs"]),
                         "deeper") for x, t in missed)  # fmt: skip
    c.save("triage_rules", {
        "params": {"context_chunks": params.generator.context_chunks, "search_depth": params.triage.search_depth,
                   "relevance_min": params.triage.relevance_min, "retrieval_mode": params.retrieval.mode},
        "truth": dict(Counter(truths)), "gold_rank_of_retrieval_misses": {str(k): v for k, v in ranks.items()},
        "evidence_seconds": round(seconds, 1), "judges": results, "relevance_min_sweep": sweep,
    })  # fmt: skip


def _vectors(params: Any, cases: list[dict], view: Any) -> dict[str, Any]:
    texts = {x["question"] for x in cases}
    for ev in view.evidence.values():
        for ch in (*ev.given, *ev.deep):
            texts |= {ch.text, *sentences(ch.text)}
    ordered = sorted(texts)
    with Retriever(params) as r:
        return dict(zip(ordered, r.embedder.encode(ordered), strict=True))


def _line(s: dict[str, Any]) -> str:
    return ", ".join(f"{r} P {s[r]['precision']} R {s[r]['recall']}" for r in (BEHAVIOUR, RETRIEVAL, MISSING))


if __name__ == "__main__":
    main()
