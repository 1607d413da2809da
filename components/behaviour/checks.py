"""Per-case checks through the declared contract (components/behaviour/contract.py), and the per-case diagnosis
that chooses the fix.

A case belongs to every slice of the contract that applies to it (data/behaviour/contract.yaml declares the
fintech line contract's four: format, intent, citation, refusal).

Diagnosis: a failing case is a **knowledge** failure when its gold document was not retrieved, is missing from
the index or is stale there (a re-index is the fix), or when a slice the contract declares a knowledge signal
failed; otherwise a **behaviour** failure (the right context was there and the output was still wrong: the
weights are the fix).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass, field


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
    errors: dict[str, str] = field(default_factory=dict)  # slice -> the error its assertion raised on this case
    group: str = ""  # the case's group (cases of one seed): the unit of the gate's paired test


def diagnose(gold_docs: tuple[str, ...], retrieved: tuple[str, ...], checks: dict[str, bool], stale: Iterable[str] = (),
             knowledge_slices: Collection[str] = ()) -> tuple[str, tuple[str, ...]]:  # fmt: skip
    """('pass' | 'knowledge' | 'behaviour', the gold documents to re-index). A failed slice the contract
    declares a knowledge signal makes the case a knowledge failure even when its context was retrieved."""
    if all(checks.values()):
        return "pass", ()
    stale_set = set(stale)
    lacking = tuple(sorted(g for g in gold_docs if g not in retrieved or g in stale_set))
    if gold_docs and (len(lacking) == len(gold_docs) or set(gold_docs) & stale_set):
        return "knowledge", lacking
    if any(not ok and name in knowledge_slices for name, ok in checks.items()):
        return "knowledge", lacking or tuple(sorted(gold_docs))
    return "behaviour", ()


def slice_results(outcomes: list[CaseOutcome], slices: Iterable[str] = (),
                  behaviour_only: bool = False) -> dict[str, dict[str, bool]]:  # fmt: skip
    """slice -> {case id: passed}, with every name of `slices` present even when empty. With behaviour_only,
    knowledge failures are left out: a regression test on these can only be moved by behaviour, so a deleted
    document never asks for a fine-tune."""
    out: dict[str, dict[str, bool]] = {s: {} for s in slices}
    for o in outcomes:
        if behaviour_only and o.diagnosis == "knowledge":
            continue
        for name, passed in o.checks.items():
            out.setdefault(name, {})[o.id] = passed
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
