"""Per-case checks through the declared contract (components/behaviour/contract.py), and the per-case route
that chooses the fix (components/routes.py).

A case belongs to every slice of the contract that applies to it (data/behaviour/contract.yaml declares the
fintech line contract's four: format, intent, citation, refusal).

Route of a failing case, with the evidence that chose it (the first rule that holds):
- **stale**: one of its gold documents changed or was removed since the published index version (or its last
  parse failed, so the index holds an old text): a re-index is the fix.
- **behaviour**: a gold document was in the context (or the case has none: an out-of-scope question) and the
  output still broke the contract: the weights are the fix. A failed slice the contract declares a knowledge
  signal is not behaviour: it goes to retrieval (the document is indexed and current; the context did not
  carry the fact).
- **retrieval**: a gold document is indexed and current, and none was in the context: the retriever is the fix.
- **missing**: no gold document is in the index at all: a person writes it (the knowledge-gap report).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass, field

from components.records import Answered
from components.routes import BEHAVIOUR, MISSING, PASS, RETRIEVAL, STALE


@dataclass(frozen=True)
class CaseOutcome:
    id: str
    question: str
    intent: str
    gold_docs: tuple[str, ...]
    retrieved: tuple[str, ...]
    output: str
    checks: dict[str, bool]
    route: str  # routes.PASS or one of routes.ROUTES
    route_docs: tuple[str, ...] = field(default=())  # stale: the stale gold docs; retrieval: the ones indexed and
    # not in the context; missing: the gold docs the index lacks
    errors: dict[str, str] = field(default_factory=dict)  # slice -> the error its assertion raised on this case
    group: str = ""  # the case's group (cases of one seed): the unit of the gate's paired test
    gold_rank: int | None = None  # rank of the best gold document at the document level (None: below recall_k)
    reason: str = ""  # the evidence that chose the route
    gold_current: tuple[str, ...] = ()  # gold documents indexed and current: what retrieval could have found
    gold_found: tuple[str, ...] = ()  # those among the top recall_k documents
    answered: Answered | None = field(default=None, compare=False)  # the answer pipeline's record (its trace)

    @property
    def hits(self) -> tuple[dict, ...]:
        """The retrieved chunks, best first."""
        return () if self.answered is None else self.answered.hits


def route_case(gold_docs: tuple[str, ...], context: tuple[str, ...], checks: dict[str, bool],
               indexed: Collection[str], stale: Collection[str] = (), knowledge_slices: Collection[str] = (),
               gold_rank: int | None = None) -> tuple[str, tuple[str, ...], str]:  # fmt: skip
    """(route, the documents it names, the reason) of one case; see the module docstring for the rules."""
    if all(checks.values()):
        return PASS, (), "every check passed"
    failed = ", ".join(sorted(name for name, ok in checks.items() if not ok))
    gold = tuple(sorted(gold_docs))
    if old := tuple(d for d in gold if d in stale):
        return STALE, old, f"failed {failed}; {', '.join(old)} changed since the published index version"
    given = tuple(d for d in gold if d in context)
    signal = sorted(n for n, ok in checks.items() if not ok and n in knowledge_slices)
    if (given or not gold) and not signal:
        why = f"in the context: {', '.join(given)}" if given else "no gold document (out of scope)"
        return BEHAVIOUR, (), f"failed {failed} with the right context ({why})"
    if found := tuple(d for d in gold if d in indexed):
        where = f"ranked {gold_rank} at the document level" if gold_rank else "below the searched depth"
        if given:
            return RETRIEVAL, found, (f"failed the knowledge signal {', '.join(signal)}: {', '.join(found)} is "
                                      "indexed and current but its context did not carry the fact")  # fmt: skip
        return RETRIEVAL, found, (f"failed {failed}; {', '.join(found)} indexed and current but not in the "
                                  f"context ({where})")  # fmt: skip
    named = f" ({', '.join(gold)})" if gold else ""
    return MISSING, gold, f"failed {failed}; no document in the index answers it{named}"


def slice_results(outcomes: list[CaseOutcome], slices: Iterable[str] = (),
                  behaviour_only: bool = False) -> dict[str, dict[str, bool]]:  # fmt: skip
    """slice -> {case id: passed}, with every name of `slices` present even when empty. With behaviour_only, only
    the cases whose context was right count (passes and behaviour failures): a regression test on these can only
    be moved by behaviour, so a deleted or badly ranked document never asks for a fine-tune."""
    out: dict[str, dict[str, bool]] = {s: {} for s in slices}
    for o in outcomes:
        if behaviour_only and o.route not in (PASS, BEHAVIOUR):
            continue
        for name, passed in o.checks.items():
            out.setdefault(name, {})[o.id] = passed
    return out


CONTEXT_HIT = "context_hit"  # the retrieval test's slices: a gold document in the context ...


def recall_slice(k: int) -> str:
    """... and every indexed gold document among the top k documents ('recall_at_10')."""
    return f"recall_at_{k}"


def retrieval_results(outcomes: list[CaseOutcome], recall_k: int) -> dict[str, dict[str, bool]]:
    """The retrieval test's per-case results, on the cases retrieval could answer (a gold document indexed and
    current): a stale or missing document is the index's or a writer's to fix, never the retriever's."""
    eligible = [o for o in outcomes if o.gold_current]
    return {
        CONTEXT_HIT: {o.id: any(d in o.retrieved for d in o.gold_current) for o in eligible},
        recall_slice(recall_k): {o.id: set(o.gold_found) == set(o.gold_current) for o in eligible},
    }


def retrieval_metrics(outcomes: list[CaseOutcome], recall_k: int) -> dict[str, float]:
    """hit@k and MRR of the context over the cases with gold documents (k: the chunks the assistant retrieved),
    and recall@recall_k at the document level over those whose gold documents are indexed and current."""
    ranked = [o for o in outcomes if o.gold_docs]
    current = [o for o in outcomes if o.gold_current]
    if not ranked:
        return {"hit_at_k": 0.0, "mrr": 0.0, recall_slice(recall_k): 0.0}
    ranks = [next((i + 1 for i, d in enumerate(o.retrieved) if d in o.gold_docs), 0) for o in ranked]
    recall = sum(len(o.gold_found) / len(o.gold_current) for o in current) / len(current) if current else 0.0
    return {
        "hit_at_k": round(sum(r > 0 for r in ranks) / len(ranks), 4),
        "mrr": round(sum(1 / r for r in ranks if r) / len(ranks), 4),
        recall_slice(recall_k): round(recall, 4),
    }
