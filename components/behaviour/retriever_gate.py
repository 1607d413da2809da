"""The retriever's gate: the champion retriever and the candidate, paired question by question, with the same test
as the behaviour slices (stats.gate: paired, group-level, Holm-corrected, `min_cases`, `min_effect`, floors).

Retrieval slices, each a pass/fail per question:
- `context_hit`: a gold document is among the chunks the assistant's context gets (`generator.context_chunks`)
- `recall_at_K`: every gold document is among the K best documents (`regression.recall_k`)
on the gate set's in-scope questions (the evaluation's retrieval test, with its names, depth and floors:
checks.retrieval_results), and the same two as `labelled.*` on `paths.retrieval_queries` when set.
The candidate is promoted only when retrieval is significantly better on some slice and worse on none, and (with a
behaviour suite) no slice of the assistant, answering from the candidate's context, is significantly worse.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from components.behaviour import stats
from components.behaviour.checks import CONTEXT_HIT, recall_slice
from components.behaviour.stats import Groups, Results
from components.config import Params
from components.files import GATE_CASES
from components.knowledge.retrieval import Retriever
from components.knowledge.retrieval_eval import load_queries


@dataclass(frozen=True)
class Question:
    id: str
    text: str
    gold: tuple[str, ...]
    group: str
    source: str  # "retrieval" (the gate set) or "labelled" (paths.retrieval_queries)


@dataclass(frozen=True)
class RetrieverVerdict:
    promote: bool
    reasons: list[str]
    rates: dict[str, tuple[float, float]]  # slice -> (champion, candidate)
    correction: str = ""
    assistant: dict[str, tuple[float, float]] = field(default_factory=dict)  # slice -> (champion, candidate)


def has_suite(params: Params) -> bool:
    """A deployment with a behaviour suite (a gate set); one with labelled queries alone gates on those."""
    return (params.paths.behaviour / GATE_CASES).is_file()


def gate_questions(params: Params) -> list[Question]:
    """The questions a retriever is judged on: the gate set's in-scope cases, then the labelled queries."""
    out: list[Question] = []
    if has_suite(params):
        from components.behaviour.loop import load_suite

        gate, _ = load_suite(params)
        out += [Question(c.id, c.question, c.gold_docs, c.group, "retrieval") for c in gate if c.gold_docs]
    if params.paths.retrieval_queries is not None:
        out += [Question(f"labelled:{q.id}", q.query, tuple(q.gains), f"labelled:{q.id}", "labelled")
                for q in load_queries(params.paths.retrieval_queries)]  # fmt: skip
    if not out:
        raise ValueError("nothing to gate a retriever on: no gate set (paths.behaviour/gate.jsonl) and no "
                         "paths.retrieval_queries")  # fmt: skip
    return out


def retrieval_results(params: Params, retriever: Retriever, questions: list[Question]) -> Results:
    """Per slice, per question: passed or not (see the module's docstring)."""
    texts = [q.text for q in questions]
    k = params.regression.recall_k
    chunks = retriever.search(texts, max(params.generator.context_chunks, 1))
    docs = retriever.search_docs(texts, k)
    results: dict[str, dict[str, bool]] = {}
    for q, hits, ranked in zip(questions, chunks, docs, strict=True):
        in_context = {h["doc"] for h in hits}
        top = {h["doc"] for h in ranked}
        prefix = "" if q.source == "retrieval" else f"{q.source}."
        results.setdefault(prefix + CONTEXT_HIT, {})[q.id] = bool(in_context & set(q.gold))
        results.setdefault(prefix + recall_slice(k), {})[q.id] = set(q.gold) <= top
    return results


def groups_of(questions: list[Question]) -> Groups:
    return {q.id: q.group for q in questions}


def judge(champion: Results, candidate: Results, groups: Groups, params: Params,
          assistant: tuple[Results, Results] | None = None) -> RetrieverVerdict:  # fmt: skip
    """Promote when some retrieval slice is significantly better and none worse (stats.gate, nothing regressed
    beforehand: a gain is required), and no assistant slice (champion's answers from each side's context) is
    significantly worse."""
    verdict = stats.gate(champion, candidate, [], params.regression, {}, {}, groups)
    rates = {c.slice: (round(c.baseline_rate, 4), round(c.current_rate, 4)) for c in verdict.comparisons}
    reasons = list(verdict.reasons)
    worse_assistant: list[str] = []
    assistant_rates: dict[str, tuple[float, float]] = {}
    if assistant is not None:
        comparisons = stats.compare_slices(assistant[0], assistant[1], params.regression, groups)
        assistant_rates = {c.slice: (round(c.baseline_rate, 4), round(c.current_rate, 4)) for c in comparisons}
        worse_assistant = [f"assistant slice significantly worse with the candidate's context: {c.reason}"
                           for c in comparisons if c.worse]  # fmt: skip
    promote = verdict.promote and not worse_assistant
    if verdict.promote and worse_assistant:
        reasons = worse_assistant + reasons
    if not promote:  # each retrieval slice's own note: what it would take (more questions, a larger gain)
        reasons += [f"retrieval slice {c.reason}" for c in verdict.comparisons if not c.worse]
    return RetrieverVerdict(promote, reasons, rates, verdict.correction, assistant_rates)


def figures(verdict: RetrieverVerdict) -> dict[str, Any]:
    """The retrieval and assistant rates of both sides, as MLflow metric names (champion_*, candidate_*)."""
    out: dict[str, Any] = {}
    for prefix, rates in (("", verdict.rates), ("assistant.", verdict.assistant)):
        for name, (old, new) in rates.items():
            key = (prefix + name).replace("@", "_at_")
            out[f"champion.{key}"], out[f"candidate.{key}"] = old, new
    return out
