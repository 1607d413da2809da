"""Hard-example mining, called directly with real cases, retrieval hits and outcomes."""

from __future__ import annotations

import pytest

from components.behaviour.checks import CaseOutcome
from components.behaviour.contract import load_contract
from components.behaviour.mining import behaviour_failures, with_hard_cases
from components.behaviour.suite import Case
from components.config import GeneratorParams
from tests.helpers import REPO

GEN = GeneratorParams(context_chunks=1)
CONTRACT = load_contract(REPO / "data" / "behaviour" / "contract.yaml", ("fees", "card_lost", "out_of_scope"))
CASES = [
    Case("t1", "How much is an ATM withdrawal?", "fees", "2 EUR", ("fees.md",)),
    Case("t2", "I lost my card", "card_lost", "Freeze it in the app", ("cards/lost-card.md",)),
    Case("t3", "Do you offer mortgages?", "out_of_scope", None, ()),
]
HITS = [[{"doc": "fees.md", "chunk_id": "f1", "score": 0.9, "text": "An ATM withdrawal costs 2 EUR."}],
        [{"doc": "cards/lost-card.md", "chunk_id": "c1", "score": 0.8, "text": "Freeze a lost card in the app."}],
        [{"doc": "support.txt", "chunk_id": "s1", "score": 0.3, "text": "Support answers by chat."}]]  # fmt: skip


def _outcome(case: Case, route: str) -> CaseOutcome:
    ok = route == "pass"
    return CaseOutcome(case.id, case.question, case.intent, case.gold_docs, (), "out", {"format": ok}, route)


def test_only_behaviour_failures_are_mined_and_repeated() -> None:
    outcomes = [_outcome(CASES[0], "behaviour"), _outcome(CASES[1], "retrieval"), _outcome(CASES[2], "pass")]
    assert behaviour_failures(outcomes) == [0]
    plain, none = with_hard_cases(CASES, HITS, None, GEN, 3, CONTRACT)
    assert none == 0 and len(plain) == 3
    pairs, failing = with_hard_cases(CASES, HITS, outcomes, GEN, 3, CONTRACT)
    assert failing == 1
    assert pairs[:3] == plain and pairs[3:] == [plain[0]] * 3  # the failing case's pair, three more times
    assert "2 EUR" in pairs[3][1] and "fees.md" in pairs[3][1]


def test_no_repeats_mines_nothing_and_mismatched_inputs_are_refused() -> None:
    outcomes = [_outcome(c, "behaviour") for c in CASES]
    pairs, failing = with_hard_cases(CASES, HITS, outcomes, GEN, 0, CONTRACT)
    assert (len(pairs), failing) == (3, 0)
    with pytest.raises(ValueError, match="3 training cases need as many hits and outcomes, got 2 hits"):
        with_hard_cases(CASES, HITS[:2], outcomes, GEN, 1, CONTRACT)
