"""The retriever's gate as a table: the paired, group-level, Holm-corrected test of the slices, on retrieval and on
the assistant's answers from each side's context."""

from __future__ import annotations

import pytest

from components.behaviour.retriever_gate import figures, judge
from components.config import Params, RegressionParams

N = 40  # questions, each its own group


def _slice(passed: int, offset: int = 0) -> dict[str, bool]:
    """N questions, `passed` of them passing, starting at question `offset` (wrapping)."""
    return {f"q{(i + offset) % N}": i < passed for i in range(N)}


def _params(**regression: object) -> Params:
    return Params(regression=RegressionParams(**{"min_cases": 20, "min_effect": 0.05, **regression}))  # type: ignore[arg-type]


GROUPS = {f"q{i}": f"q{i}" for i in range(N)}


@pytest.mark.parametrize(
    ("champion", "candidate", "assistant", "promote", "reason"),
    [
        # 20 more questions find their document, none lost: significant on both slices
        ((20, 20), (40, 40), None, True, "significantly better than the champion: context_hit"),
        # the same rates: nothing significant, never promoted (churn)
        ((30, 30), (30, 30), None, False, "no slice is significantly better"),
        # better context, worse recall: a gain must not buy a loss
        ((20, 30), (40, 10), None, False, "significantly worse than the champion: recall_at_5"),
        # a gain too small to matter (min_effect 0.05 of 40 questions: 2)
        ((30, 30), (31, 31), None, False, "no slice is significantly better"),
        # retrieval wins, but an assistant slice answering from the candidate's context is significantly worse
        ((20, 20), (40, 40), ((40, 0), (10, 0)), False, "assistant slice significantly worse"),
        # retrieval wins, the assistant holds
        ((20, 20), (40, 40), ((30, 0), (30, 0)), True, "significantly better"),
    ],
)
def test_the_retriever_gate(champion, candidate, assistant, promote, reason) -> None:
    def results(context: int, recall: int) -> dict[str, dict[str, bool]]:
        return {"context_hit": _slice(context), "recall_at_5": _slice(recall)}

    pair = None
    if assistant is not None:
        (before, off_b), (after, off_a) = assistant
        pair = ({"intent": _slice(before, off_b)}, {"intent": _slice(after, off_a)})
    verdict = judge(results(*champion), results(*candidate), GROUPS, _params(), pair)
    assert verdict.promote is promote
    assert any(reason in r for r in verdict.reasons), verdict.reasons
    assert verdict.rates["context_hit"] == (champion[0] / N, candidate[0] / N)
    assert "Holm over 2 slices" in verdict.correction


def test_too_few_questions_never_promote() -> None:
    small = {f"q{i}": f"q{i}" for i in range(10)}
    champ = {"labelled.context_hit": {k: False for k in small}}
    cand = {"labelled.context_hit": {k: True for k in small}}
    verdict = judge(champ, cand, small, _params())
    assert not verdict.promote and "no slice is significantly better" in verdict.reasons[0]
    assert "labelled.context_hit: 1.00 vs 0.00 on 10 paired cases, fewer than min_cases 20" in verdict.reasons[1]
    assert judge(champ, cand, small, _params(min_cases=5)).promote


def test_figures_name_both_sides() -> None:
    verdict = judge({"recall_at_5": _slice(20)}, {"recall_at_5": _slice(40)}, GROUPS, _params(),
                    ({"format": _slice(40)}, {"format": _slice(40)}))  # fmt: skip
    assert figures(verdict) == {"champion.recall_at_5": 0.5, "candidate.recall_at_5": 1.0,
                                "champion.assistant.format": 1.0, "candidate.assistant.format": 1.0}  # fmt: skip
