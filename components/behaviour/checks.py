"""Deterministic behaviour checks per case, and the per-case diagnosis that chooses the fix.

Slices (a case belongs to every slice that applies to it):
- format: the output is exactly one contract line (every case);
- intent: the label is the expected one (every case);
- citation: the answer cites only retrieved sources, and the gold one (cases whose answer is in the docs);
- refusal: the assistant says it does not know (cases the knowledge base cannot answer).

Diagnosis: a failing case is a **knowledge** failure when its gold document was not retrieved, is missing from
the index or is stale there (a re-index is the fix); otherwise a **behaviour** failure (the right context was
there and the output was still wrong: the weights are the fix).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass, field

from components.behaviour.assistant import OUT_OF_SCOPE, REFUSAL, parse_answer

SLICES = ("format", "intent", "citation", "refusal")


@dataclass(frozen=True)
class CaseOutcome:
    id: str
    question: str
    intent: str
    gold_docs: tuple[str, ...]
    retrieved: tuple[str, ...]
    output: str
    checks: dict[str, bool]
    diagnosis: str  # "pass" | "knowledge" | "behaviour"
    knowledge_docs: tuple[str, ...] = field(default=())  # gold docs missing from the retrieval or stale
    prompt: str = ""  # what the generator was given (the case's trace records it)
    hits: tuple[dict, ...] = field(default=(), compare=False)  # the retrieved chunks, best first


def check_output(intent: str, gold_docs: tuple[str, ...], output: str, retrieved: tuple[str, ...]) -> dict[str, bool]:
    parsed = parse_answer(output)
    checks = {"format": parsed is not None, "intent": parsed is not None and parsed.intent == intent}
    if gold_docs:
        checks["citation"] = (
            parsed is not None
            and bool(parsed.sources)
            and set(parsed.sources) <= set(retrieved)
            and bool(set(parsed.sources) & set(gold_docs))
        )
    else:
        checks["refusal"] = (
            parsed is not None and parsed.intent == OUT_OF_SCOPE and parsed.answer == REFUSAL and not parsed.sources
        )
    return checks


LIVE_CHECKS = ("format", "intent", "citation")


def live_checks(output: str, retrieved_docs: Iterable[str], labels: Collection[str] | None) -> dict[str, bool]:
    """The contract checks a live answer can be held to without knowing the right answer:
    - format: the output is exactly one contract line;
    - intent: its label is a known one (`labels`, from labels.json) or out_of_scope (any label when `labels` is
      None: a deployment without a labels file);
    - citation: an answer that is not the refusal cites at least one source and only documents that were
      retrieved; the refusal cites none."""
    parsed = parse_answer(output)
    if parsed is None:
        return dict.fromkeys(LIVE_CHECKS, False)
    known = labels is None or parsed.intent == OUT_OF_SCOPE or parsed.intent in labels
    if parsed.intent == OUT_OF_SCOPE and parsed.answer == REFUSAL:
        cited_ok = not parsed.sources
    else:
        cited_ok = bool(parsed.sources) and set(parsed.sources) <= set(retrieved_docs)
    return {"format": True, "intent": known, "citation": cited_ok}


def diagnose(gold_docs: tuple[str, ...], retrieved: tuple[str, ...], checks: dict[str, bool],
             stale: Iterable[str] = ()) -> tuple[str, tuple[str, ...]]:  # fmt: skip
    """('pass' | 'knowledge' | 'behaviour', the gold documents to re-index)."""
    if all(checks.values()):
        return "pass", ()
    stale_set = set(stale)
    lacking = tuple(sorted(g for g in gold_docs if g not in retrieved or g in stale_set))
    if gold_docs and (len(lacking) == len(gold_docs) or set(gold_docs) & stale_set):
        return "knowledge", lacking
    return "behaviour", ()


def slice_results(outcomes: list[CaseOutcome], behaviour_only: bool = False) -> dict[str, dict[str, bool]]:
    """slice -> {case id: passed}. With behaviour_only, knowledge failures are left out: a regression test on
    these can only be moved by behaviour, so a deleted document never asks for a fine-tune."""
    out: dict[str, dict[str, bool]] = {s: {} for s in SLICES}
    for o in outcomes:
        if behaviour_only and o.diagnosis == "knowledge":
            continue
        for name, passed in o.checks.items():
            out[name][o.id] = passed
    return out


def retrieval_metrics(outcomes: list[CaseOutcome]) -> dict[str, float]:
    """hit@k and MRR over the cases with gold documents (k is however many chunks the assistant retrieved)."""
    ranked = [o for o in outcomes if o.gold_docs]
    if not ranked:
        return {"hit_at_k": 0.0, "mrr": 0.0}
    ranks = [next((i + 1 for i, d in enumerate(o.retrieved) if d in o.gold_docs), 0) for o in ranked]
    return {
        "hit_at_k": round(sum(r > 0 for r in ranks) / len(ranks), 4),
        "mrr": round(sum(1 / r for r in ranks if r) / len(ranks), 4),
    }
