"""The fintech line contract (data/behaviour/contract.yaml) as tables, kept from when its four checks were code:
the declared file must give the same result on every row; and the per-case route."""

from __future__ import annotations

from collections.abc import Collection, Iterable

import pytest

from components.behaviour.checks import (
    CaseOutcome,
    retrieval_metrics,
    retrieval_results,
    route_case,
    slice_results,
)
from components.behaviour.contract import load_contract
from components.behaviour.suite import Case
from tests.helpers import REPO

CONTRACT = REPO / "data/behaviour/contract.yaml"


def check_output(intent: str, gold: tuple[str, ...], output: str, retrieved: tuple[str, ...]) -> dict[str, bool]:
    case = Case("c", "q", intent, "an answer" if gold else None, gold)
    checks, errors = load_contract(CONTRACT, {"fees", "limits"}).check(case, output, retrieved)
    assert errors == {}
    return checks


def live_checks(output: str, retrieved: Iterable[str], labels: Collection[str] | None) -> dict[str, bool]:
    checks, errors = load_contract(CONTRACT, labels).live_check(output, tuple(retrieved))
    assert errors == {}
    return checks


GOLD = ("fees/atm.md",)
RETRIEVED = ("fees/atm.md", "cards/lost.md", "faq/general.md")
GOOD = "intent: fees | answer: 2 EUR per withdrawal | sources: [fees/atm.md]"


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        (GOOD, {"format": True, "intent": True, "citation": True}),
        (
            "intent: limits | answer: 2 EUR | sources: [fees/atm.md]",
            {"format": True, "intent": False, "citation": True},
        ),
        (
            "intent: fees | answer: 2 EUR | sources: [cards/lost.md]",
            {"format": True, "intent": True, "citation": False},
        ),
        (
            "intent: fees | answer: 2 EUR | sources: [fees/atm.md, made/up.md]",
            {"format": True, "intent": True, "citation": False},
        ),  # cites something it did not retrieve
        ("intent: fees | answer: 2 EUR | sources: []", {"format": True, "intent": True, "citation": False}),
        ("The fee is 2 EUR.", {"format": False, "intent": False, "citation": False}),
        ("intent: fees | answer: 2 EUR", {"format": False, "intent": False, "citation": False}),
        (GOOD + "\nand some rambling after", {"format": True, "intent": True, "citation": True}),  # first line counts
    ],
)
def test_checks_for_an_answerable_case(output: str, expected: dict[str, bool]) -> None:
    assert check_output("fees", GOLD, output, RETRIEVED) == expected


@pytest.mark.parametrize(
    ("output", "refused"),
    [
        ("intent: out_of_scope | answer: I don't know | sources: []", True),
        ("intent: out_of_scope | answer: I don't know | sources: [fees/atm.md]", False),
        ("intent: fees | answer: I don't know | sources: []", False),
        ("intent: out_of_scope | answer: Mortgages cost 3 percent | sources: []", False),
    ],
)
def test_refusal_check_for_an_unanswerable_case(output: str, refused: bool) -> None:
    checks = check_output("out_of_scope", (), output, RETRIEVED)
    assert set(checks) == {"format", "intent", "refusal"}
    assert checks["refusal"] is refused


INDEXED = {"fees/atm.md", "cards/lost.md", "faq/general.md"}
BROKEN = {"format": True, "citation": False}


@pytest.mark.parametrize(
    ("gold", "context", "checks", "indexed", "stale", "expected"),
    [
        (GOLD, RETRIEVED, {"format": True, "citation": True}, INDEXED, (), ("pass", ())),
        (GOLD, RETRIEVED, {"format": False, "citation": False}, INDEXED, (), ("behaviour", ())),
        (GOLD, ("cards/lost.md",), BROKEN, INDEXED, (), ("retrieval", GOLD)),  # indexed, current, not given
        (GOLD, RETRIEVED, BROKEN, INDEXED, GOLD, ("stale", GOLD)),  # given, but the document changed since
        (GOLD, ("cards/lost.md",), BROKEN, INDEXED, GOLD, ("stale", GOLD)),  # changed and not given: re-index first
        (GOLD, ("cards/lost.md",), BROKEN, INDEXED - set(GOLD), (), ("missing", GOLD)),  # not in the index at all
        (GOLD, ("cards/lost.md",), BROKEN, set(), GOLD, ("stale", GOLD)),  # removed from disk, still indexed
        ((), ("cards/lost.md",), {"format": True, "refusal": False}, INDEXED, (), ("behaviour", ())),  # no gold doc
        (("a.md", "fees/atm.md"), ("fees/atm.md",), BROKEN, INDEXED, (), ("behaviour", ())),  # one of two given
        (("a.md", "fees/atm.md"), ("x.md",), BROKEN, INDEXED, (), ("retrieval", GOLD)),  # names the indexed one
    ],
)  # fmt: skip
def test_every_failing_case_gets_exactly_one_route(gold, context, checks, indexed, stale, expected) -> None:
    route, docs, reason = route_case(gold, context, checks, indexed, stale, (), gold_rank=4)
    assert (route, docs) == expected
    assert reason  # the evidence that chose it is always there
    if route == "retrieval":
        assert "ranked 4" in reason and "indexed and current" in reason


def test_format_and_parse_round_trip() -> None:
    contract = load_contract(CONTRACT)
    line = contract.target_for(Case("c", "q", "fees", "It | costs  2 EUR", GOLD), ["fees/atm.md", "faq/x.md"])
    parsed = contract.answer_of(line)
    assert parsed is not None
    assert (parsed.intent, parsed.answer, parsed.sources) == ("fees", "It / costs 2 EUR", ("fees/atm.md", "faq/x.md"))


def _outcome(cid: str, retrieved: tuple[str, ...], route: str, passed: bool, found: tuple[str, ...] = GOLD,
             current: tuple[str, ...] = GOLD) -> CaseOutcome:  # fmt: skip
    checks = {"format": passed, "citation": passed}
    return CaseOutcome(cid, "q", "fees", GOLD, retrieved, "", checks, route, gold_current=current, gold_found=found)


def test_retrieval_metrics_and_behaviour_only_slices() -> None:
    outcomes = [
        _outcome("a", ("fees/atm.md",), "pass", True),
        _outcome("b", ("x.md", "fees/atm.md"), "behaviour", False),
        _outcome("c", ("x.md",), "retrieval", False, found=()),
        _outcome("d", ("x.md",), "stale", False, current=()),
        _outcome("e", ("x.md",), "missing", False, found=(), current=()),
    ]
    assert retrieval_metrics(outcomes, 10) == {"hit_at_k": round(2 / 5, 4), "mrr": round((1 + 0.5) / 5, 4),
                                               "recall_at_10": round(2 / 3, 4)}  # fmt: skip
    assert slice_results(outcomes)["citation"] == {"a": True, "b": False, "c": False, "d": False, "e": False}
    assert slice_results(outcomes, behaviour_only=True)["citation"] == {"a": True, "b": False}
    # the retrieval test counts only the cases retrieval could answer: a stale or missing document is not its own
    assert retrieval_results(outcomes, 10) == {"context_hit": {"a": True, "b": True, "c": False},
                                               "recall_at_10": {"a": True, "b": True, "c": False}}  # fmt: skip
    assert slice_results(outcomes, ("format", "citation", "refusal"))["refusal"] == {}  # declared, no cases


LABELS = {"fees", "card_lost"}


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        (GOOD, {"format": True, "intent": True, "citation": True}),
        ("intent: fees | answer: 2 EUR | sources: [cards/lost.md, fees/atm.md]",
         {"format": True, "intent": True, "citation": True}),  # any retrieved document, not only a gold one
        ("intent: mortgages | answer: 2 EUR | sources: [fees/atm.md]",
         {"format": True, "intent": False, "citation": True}),  # a label the contract does not know
        ("intent: fees | answer: 2 EUR | sources: [made/up.md]",
         {"format": True, "intent": True, "citation": False}),  # cites a document it was not given
        ("intent: fees | answer: 2 EUR | sources: [fees/atm.md, made/up.md]",
         {"format": True, "intent": True, "citation": False}),
        ("intent: fees | answer: 2 EUR | sources: []", {"format": True, "intent": True, "citation": False}),
        ("intent: out_of_scope | answer: I don't know | sources: []",
         {"format": True, "intent": True, "citation": True}),  # the refusal cites nothing, rightly
        ("intent: out_of_scope | answer: I don't know | sources: [fees/atm.md]",
         {"format": True, "intent": True, "citation": False}),  # a refusal that cites something
        ("intent: out_of_scope | answer: we do not sell that | sources: []",
         {"format": True, "intent": True, "citation": False}),  # not the refusal: an answer must cite
        ("The fee is 2 EUR.", {"format": False, "intent": False, "citation": False}),
        ("", {"format": False, "intent": False, "citation": False}),
    ],
)  # fmt: skip
def test_live_checks_hold_an_answer_to_the_contract_without_a_gold_answer(output: str, expected: dict) -> None:
    assert live_checks(output, RETRIEVED, LABELS) == expected


def test_live_checks_without_a_labels_file_accept_any_label() -> None:
    odd = "intent: mortgages | answer: 2 EUR | sources: [fees/atm.md]"
    assert live_checks(odd, RETRIEVED, None)["intent"] is True
    assert live_checks(odd, RETRIEVED, set())["intent"] is False
    assert live_checks(GOOD, iter(["cards/lost.md"]), LABELS)["citation"] is False  # any iterable of documents
