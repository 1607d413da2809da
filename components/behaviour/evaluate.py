"""Evaluate the assistant on the gate set: per-case checks and route (components/behaviour/checks.py), per-slice
rates with intervals, retrieval metrics, the regression tests against the champion's baseline, and the actions.

The actions, each only where it can change something (in the order the loop runs them):
- `reindex` when a case failed on a stale document (changed on disk since the published version);
- `write_documents` when a case failed because no document in the index answers it;
- `tune_retriever` when retrieval is significantly worse than the champion's, or surely below its floor, on the
  cases retrieval could answer (the context's hit and recall@k: the same paired, group-level, corrected test
  and floors as the slices);
- `finetune` when a behaviour slice regressed (measured on the cases whose context was right only, so no
  knowledge failure can ever move it).
The decision is the first of them, or none.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Protocol

from components.behaviour.checks import (
    CaseOutcome,
    retrieval_metrics,
    retrieval_results,
    route_case,
    slice_results,
)
from components.behaviour.contract import Contract
from components.behaviour.pipeline import Model, answer_batch
from components.behaviour.stats import Results, detect_regression, slice_summary
from components.behaviour.suite import Case
from components.config import GeneratorParams, RegressionParams
from components.routes import (
    FINETUNE,
    MISSING,
    PASS,
    REINDEX,
    ROUTES,
    STALE,
    TUNE_RETRIEVER,
    WRITE_DOCUMENTS,
    decision_of,
    ordered_actions,
)


class _Retriever(Protocol):
    @property
    def version(self) -> int: ...
    def search(self, texts: list[str], k: int) -> list[list[dict]]: ...
    def search_docs(self, texts: list[str], k: int) -> list[list[dict]]: ...
    def stale_docs(self) -> set[str]: ...
    def indexed_docs(self) -> set[str]: ...


@dataclass(frozen=True)
class Evaluation:
    summary: dict[str, Any]  # the `ragloop evaluate --json` contract
    outcomes: list[CaseOutcome]
    results: Results  # behaviour-only slice results: the baseline a later evaluation is paired against
    seconds: tuple[float, float] = (0.0, 0.0)  # wall time of retrieval and of generation over the gate set
    retrieval: Results | None = None  # the retrieval test's per-case results (checks.retrieval_results)


def run_cases(cases: list[Case], retriever: _Retriever, model: Model, params: GeneratorParams,
              k: int, contract: Contract, seconds: dict[str, float] | None = None, changed: set[str] | None = None,
              recall_k: int = 10) -> list[CaseOutcome]:  # fmt: skip
    """Each case answered by the answer pipeline (as `ragloop api` answers it, checked against the case's slices)
    and routed. `changed`: documents edited, added or removed on disk since the published version (stale, with
    those whose last parse failed); `recall_k`: how deep the document-level ranking is read for the retrieval
    evidence. `seconds`, when given, receives the wall time of retrieval and of generation ("retrieve",
    "generate") for the whole batch."""
    questions = [c.question for c in cases]
    answers = answer_batch(questions, retriever, model, contract, params, k, cases)
    t0 = time.perf_counter()
    ranked = [[d["doc"] for d in docs] for docs in retriever.search_docs(questions, recall_k)]
    if seconds is not None and answers:
        ranking = time.perf_counter() - t0
        seconds.update(retrieve=answers[0].retrieve_ms / 1000 + ranking, generate=answers[0].generate_ms / 1000)
    stale = retriever.stale_docs() | (changed or set())
    indexed = retriever.indexed_docs()
    outcomes = []
    for case, answered, docs in zip(cases, answers, ranked, strict=True):
        retrieved = answered.retrieved()
        rank = next((i + 1 for i, d in enumerate(docs) if d in case.gold_docs), None)
        route, named, reason = route_case(case.gold_docs, retrieved, answered.checks, indexed, stale,
                                          contract.knowledge_slices, rank)  # fmt: skip
        current = tuple(d for d in case.gold_docs if d in indexed and d not in stale)
        outcomes.append(CaseOutcome(case.id, case.question, case.intent, case.gold_docs, retrieved, answered.raw,
                                    answered.checks, route, named, errors=answered.check_errors, group=case.group,
                                    gold_rank=rank, reason=reason, gold_current=current,
                                    gold_found=tuple(d for d in current if d in docs), answered=answered))  # fmt: skip
    return outcomes


def summarise(outcomes: list[CaseOutcome], baseline: Results | None, params: RegressionParams,
              model_version: str, index_version: int, contract: Contract,
              retrieval_baseline: Results | None = None) -> Evaluation:  # fmt: skip
    """The `ragloop evaluate --json` summary: slices, routes, both regression tests, the actions and the decision.
    `baseline` / `retrieval_baseline`: the champion's behaviour-only and retrieval results (None: floors only)."""
    behaviour = slice_results(outcomes, contract.slice_names, behaviour_only=True)
    every = slice_summary(slice_results(outcomes, contract.slice_names), params.confidence)
    groups = {o.id: o.group or o.id for o in outcomes}
    verdict = detect_regression(baseline, behaviour, params, groups)
    retrieval = retrieval_results(outcomes, params.recall_k)
    retrieval_verdict = detect_regression(retrieval_baseline, retrieval, params, groups)
    reindex = sorted({d for o in outcomes if o.route == STALE for d in o.route_docs})
    missing = sorted({d for o in outcomes if o.route == MISSING for d in o.route_docs})
    actions = set()
    if reindex:
        actions.add(REINDEX)
    if any(o.route == MISSING for o in outcomes):
        actions.add(WRITE_DOCUMENTS)
    if retrieval_verdict.regressed:
        actions.add(TUNE_RETRIEVER)
    if verdict.regressed:
        actions.add(FINETUNE)
    ordered = ordered_actions(actions)
    counts = Counter(o.route for o in outcomes)
    summary = {
        "model_version": model_version,
        "index_version": index_version,
        "contract": {"name": contract.name, "md5": contract.digest},
        "slices": {k: dict(v) for k, v in every.items()},
        "retrieval": retrieval_metrics(outcomes, params.recall_k),
        "routes": {r: counts.get(r, 0) for r in (PASS, *ROUTES)},
        "decision": decision_of(ordered),
        "actions": ordered,
        "regressed_slices": verdict.regressed_slices,
        "reasons": [c.reason for c in verdict.comparisons if c.slice in verdict.regressed_slices],
        "retrieval_test": {
            "slices": {k: dict(v) for k, v in slice_summary(retrieval, params.confidence).items()},
            "regressed": retrieval_verdict.regressed_slices,
            "reasons": [c.reason for c in retrieval_verdict.comparisons],
            "correction": retrieval_verdict.correction,
        },
        "reindex_documents": reindex,
        "missing_documents": missing,
    }
    return Evaluation(summary, outcomes, behaviour, retrieval=retrieval)
