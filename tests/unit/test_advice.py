"""`ragloop advise`'s rule on recorded histories: what goes to retrieval, what to the weights, and why."""

from __future__ import annotations

import copy

import pytest

from components.behaviour.advice import BEHAVIOUR_SHARE, FUTILE_TRIES, MIN_EXAMPLES, advise


def _history(*, published: int = 4, behaviour: int = 40, knowledge: int = 5, passed: int = 55, decision: str = "none",
             train: int = 400, tunes: list[dict] | None = None, stale: int = 0, missing: int = 0,
             actions: list[str] | None = None, reindex_pending: bool = False) -> dict:  # fmt: skip
    """`knowledge`: retrieval misses (the document indexed and current, not in the context)."""
    routes = {"pass": passed, "behaviour": behaviour, "retrieval": knowledge, "stale": stale, "missing": missing}
    latest = {"model_version": "v2", "index_version": 7, "at": "2026-11-30T02:00:00+00:00", "decision": decision,
              "actions": actions if actions is not None else ([] if decision == "none" else [decision]),
              "regressed_slices": ["format"] if decision == "finetune" else [],
              "pass_rates": {"format": 0.9, "intent": 0.6}, "retrieval": {"hit_at_k": 0.9, "mrr": 0.8},
              "routes": routes}  # fmt: skip
    n = sum(routes.values())
    return {
        "days": 30,
        "knowledge": {
            "index_runs": 60,
            "published_versions": published,
            "documents_changed": 3 * published,
            "documents": {"added": published, "modified": 2 * published, "deleted": 0, "renamed": 0},
            "chunks_embedded": 10 * published,
            "chunks_deleted": 5,
            "chunks_now": 400,
            "churn": round((10 * published + 5) / 400, 4),
            "index_seconds": 12.5,
            "first_index_in_window": False,
        },
        "index": {
            "version": 7,
            "reindex_pending": reindex_pending,
            "reason": "2 document(s) modified since version 7"
            if reindex_pending
            else "the documents match the published version",
        },
        "behaviour": {
            "evaluations": 3,
            "cases": routes,
            "latest": latest,
            "regressions": 0,
            "behaviour_share": behaviour / n,
            "knowledge_share": (knowledge + stale + missing) / n,
        },
        "examples": {"train": train, "gate": 100, "train_by_intent": {"fees": train}},
        "finetunes": tunes or [],
    }


def _tune(verdict: str, gain: float) -> dict:
    return {"run_id": "r", "at": "2026-11-20T00:00:00+00:00", "version": "3", "status": "FINISHED",
            "verdict": verdict, "train_seconds": 240.0, "train_steps": 400, "train_tokens_per_s": 5000.0,
            "training_pairs": 500, "gains": {"format": gain}}  # fmt: skip


def test_changing_knowledge_and_failing_behaviour_get_both() -> None:
    a = advise(_history(behaviour=40, tunes=[_tune("promoted", 0.4)]))
    assert a["recommendation"] == "both"
    assert a["behaviour"]["verdict"] == "fine-tune"
    assert any("4 of 60 index runs" in e for e in a["knowledge"]["evidence"])
    assert any("promoted: format +0.40 (240 s of training)" in e for e in a["behaviour"]["evidence"])
    assert a["knowledge"]["would_change"] and a["behaviour"]["would_change"]


def test_few_behaviour_failures_keep_to_retrieval() -> None:
    a = advise(_history(behaviour=5, passed=90))  # 5 % of cases
    assert BEHAVIOUR_SHARE > 5 / 100
    assert a["recommendation"] == "retrieval"
    assert a["behaviour"]["verdict"] == "no fine-tune"
    assert "keep the weights" in a["behaviour"]["advice"][0]


def test_a_regression_asks_for_a_fine_tune_even_below_the_share() -> None:
    a = advise(_history(behaviour=5, passed=90, decision="finetune"))
    assert a["behaviour"]["verdict"] == "fine-tune"


def test_stable_knowledge_and_failing_behaviour_is_a_fine_tune() -> None:
    a = advise(_history(published=0, knowledge=0, behaviour=50, passed=50))
    assert a["recommendation"] == "fine-tune"
    assert not a["knowledge"]["active"]


def test_too_few_examples_or_futile_tries_do_not_fine_tune() -> None:
    few = advise(_history(train=MIN_EXAMPLES - 1))
    assert few["behaviour"]["verdict"] == "label more" and few["recommendation"] == "retrieval"
    futile = advise(_history(tunes=[_tune("rejected", -0.01)] * FUTILE_TRIES))
    assert futile["behaviour"]["verdict"] == "hold"
    assert f"{FUTILE_TRIES} fine-tunes in 30 days, none promoted (480 s" in futile["behaviour"]["advice"][0]
    killed = advise(_history(tunes=[_tune("pending", 0.0)] * (FUTILE_TRIES + 1)))  # no gate verdict: no try
    assert killed["behaviour"]["verdict"] == "fine-tune"
    one_win = advise(_history(tunes=[_tune("rejected", 0.0)] * FUTILE_TRIES + [_tune("promoted", 0.3)]))
    assert one_win["behaviour"]["verdict"] == "fine-tune"


def test_retrieval_misses_on_a_fresh_index_never_ask_for_a_reindex() -> None:
    """The issue's case: 51 misses with the documents matching the published version. A re-index cannot change
    one of them, so it is never advised; while they are not significant nothing is, and the evidence says so."""
    a = advise(_history(knowledge=51, behaviour=5, passed=235))
    advice = " ".join(a["knowledge"]["advice"])
    assert "re-index:" not in advice and "tune the retriever:" not in advice and "write the missing" not in advice
    assert any("51 retrieval misses" in e for e in a["knowledge"]["evidence"])
    assert any("the documents match the published version" in e for e in a["knowledge"]["evidence"])
    assert a["recommendation"] == "retrieval" and a["knowledge"]["active"]


@pytest.mark.parametrize(
    ("routes", "actions", "pending", "expected"),
    [
        ({"knowledge": 30}, ["tune_retriever"], False, ["tune the retriever: 30 retrieval misses"]),
        ({"stale": 4}, ["reindex"], True, ["re-index: 2 document(s) modified"]),
        ({"stale": 4}, ["reindex"], False, []),  # re-indexed since the evaluation: nothing left to do
        ({"missing": 3}, ["write_documents"], False, ["write the missing documents: 3 gate case(s)"]),
        ({"stale": 1, "missing": 2, "knowledge": 30}, ["reindex", "write_documents", "tune_retriever"], True,
         ["re-index:", "write the missing documents: 2", "tune the retriever: 30"]),
    ],
)  # fmt: skip
def test_each_knowledge_route_advises_its_own_fix_only_when_it_can_change_something(routes, actions, pending,
                                                                                     expected) -> None:  # fmt: skip
    a = advise(_history(behaviour=5, passed=200, actions=actions, reindex_pending=pending,
                        **{"knowledge": 0, **routes}))  # fmt: skip
    fixes = a["knowledge"]["advice"][1:]  # after the standing principle
    assert len(fixes) == len(expected)
    for line, start in zip(fixes, expected, strict=True):
        assert line.startswith(start), line


def test_no_evaluation_is_no_verdict_on_behaviour() -> None:
    h = _history()
    none = dict.fromkeys(("pass", "behaviour", "retrieval", "stale", "missing"), 0)
    h["behaviour"] = {"evaluations": 0, "cases": none, "latest": None,
                      "regressions": 0, "behaviour_share": None, "knowledge_share": None}  # fmt: skip
    a = advise(h)
    assert a["behaviour"]["verdict"] == "unknown" and a["recommendation"] == "retrieval"
    assert "ragloop evaluate" in a["behaviour"]["advice"][0]


@pytest.mark.parametrize("share", [0.0, 0.5, 1.0])
def test_the_input_is_not_modified(share: float) -> None:
    h = _history(behaviour=int(100 * share), passed=100 - int(100 * share), knowledge=0)
    before = copy.deepcopy(h)
    assert advise(h)["evidence"] == before
