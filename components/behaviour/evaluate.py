"""Evaluate the assistant on the gate set: per-case checks and diagnosis, per-slice rates with intervals,
retrieval metrics, the regression test against the champion's baseline, and the decision.

The decision: a behaviour regression (measured on cases whose right context was retrieved, so knowledge can
never move it) asks for a fine-tune; knowledge failures ask for a re-index and name the documents; else none.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Protocol

from components.behaviour.assistant import build_prompt, context_docs
from components.behaviour.checks import CaseOutcome, diagnose, retrieval_metrics, slice_results
from components.behaviour.contract import Contract
from components.behaviour.stats import Results, detect_regression, slice_summary
from components.behaviour.suite import Case
from components.config import GeneratorParams, RegressionParams


class _Retriever(Protocol):
    def search(self, texts: list[str], k: int) -> list[list[dict]]: ...
    def stale_docs(self) -> set[str]: ...


class _Generator(Protocol):
    def generate(self, prompts: list[str], sources: list[list[str]] | None = None) -> list[str]: ...


@dataclass(frozen=True)
class Evaluation:
    summary: dict[str, Any]  # the `ragloop evaluate --json` contract
    outcomes: list[CaseOutcome]
    results: Results  # behaviour-only slice results: the baseline a later evaluation is paired against
    seconds: tuple[float, float] = (0.0, 0.0)  # wall time of retrieval and of generation over the gate set


def run_cases(cases: list[Case], retriever: _Retriever, generator: _Generator, params: GeneratorParams,
              k: int, contract: Contract, seconds: dict[str, float] | None = None) -> list[CaseOutcome]:  # fmt: skip
    """Each case retrieved, answered and checked against the contract. `seconds`, when given, receives the wall
    time of retrieval and of generation ("retrieve", "generate") for the whole batch."""
    t0 = time.perf_counter()
    hits = retriever.search([c.question for c in cases], k)
    t1 = time.perf_counter()
    prompts = [build_prompt(params, c.question, h) for c, h in zip(cases, hits, strict=True)]
    outputs = generator.generate(prompts, [context_docs(params, h) for h in hits])
    if seconds is not None:
        seconds.update(retrieve=t1 - t0, generate=time.perf_counter() - t1)
    stale = retriever.stale_docs()
    outcomes = []
    for case, found, prompt, output in zip(cases, hits, prompts, outputs, strict=True):
        retrieved = tuple(dict.fromkeys(h["doc"] for h in found))
        checks, errors = contract.check(case, output, retrieved)
        diagnosis, lacking = diagnose(case.gold_docs, retrieved, checks, stale, contract.knowledge_slices)
        outcomes.append(CaseOutcome(case.id, case.question, case.intent, case.gold_docs, retrieved, output,
                                    checks, diagnosis, lacking, prompt, tuple(found), errors,
                                    case.group))  # fmt: skip
    return outcomes


def summarise(outcomes: list[CaseOutcome], baseline: Results | None, params: RegressionParams,
              model_version: str, index_version: int, contract: Contract) -> Evaluation:  # fmt: skip
    behaviour = slice_results(outcomes, contract.slice_names, behaviour_only=True)
    every = slice_summary(slice_results(outcomes, contract.slice_names), params.confidence)
    verdict = detect_regression(baseline, behaviour, params, {o.id: o.group or o.id for o in outcomes})
    reindex = sorted({d for o in outcomes if o.diagnosis == "knowledge" for d in o.knowledge_docs})
    decision = "finetune" if verdict.regressed else ("reindex" if reindex else "none")
    counts = Counter(o.diagnosis for o in outcomes)
    summary = {
        "model_version": model_version,
        "index_version": index_version,
        "contract": {"name": contract.name, "md5": contract.digest},
        "slices": {k: dict(v) for k, v in every.items()},
        "retrieval": retrieval_metrics(outcomes),
        "diagnosis": {d: counts.get(d, 0) for d in ("knowledge", "behaviour", "pass")},
        "decision": decision,
        "regressed_slices": verdict.regressed_slices,
        "reindex_documents": reindex,
        "reasons": [c.reason for c in verdict.comparisons if c.slice in verdict.regressed_slices],
    }
    return Evaluation(summary, outcomes, behaviour)
