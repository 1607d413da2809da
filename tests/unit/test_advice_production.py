"""`ragloop advise` with production evidence: live traffic, its failure mix as triage routed it, feedback."""

from __future__ import annotations

from components.behaviour.advice import MIN_LIVE, advise
from tests.unit.test_advice import _history


def _live(n: int, stale: int = 0, missing: int = 0, retrieval: int = 0, behaviour: int = 0) -> dict:
    failing = stale + missing + retrieval + behaviour
    return {"traces": n, "failing": failing, "untriaged_failing": 0,
            "routes": {"behaviour": behaviour, "retrieval": retrieval, "stale": stale, "missing": missing},
            "feedback": {"given": n // 2, "negative": failing, "corrections": 1, "rate": 0.5},
            "slices": {"format": {"n": n, "failed": behaviour, "fail_rate": round(behaviour / n, 4)}}}  # fmt: skip


def test_absent_traffic_says_so() -> None:
    a = advise({**_history(), "production": {"traces": 0, "note": "experiment 'ragloop-serving' does not exist yet"}})
    assert any(e.startswith("no live traffic in the last 30 days (experiment") for e in a["knowledge"]["evidence"])
    assert advise(_history())["knowledge"]["evidence"][-1].startswith("no live traffic")  # an older history too


def test_live_failures_show_their_mix_each_with_its_action_and_feedback() -> None:
    a = advise({**_history(), "production": _live(200, stale=30, missing=10, retrieval=12, behaviour=6)})
    assert a["knowledge"]["evidence"][-1] == (
        "live: 200 answers in 30 days, 58 failing: 30 stale (re-index), 10 missing (write the document), 12 retrieval "
        "(tune the retriever), 6 behaviour (candidate cases for a fine-tune), 0 not triaged yet")  # fmt: skip
    assert ("26% of live answers failed on the retrieval side, not the weights: re-index (30 stale); write the "
            "document (10 missing); tune the retriever (12 retrieval)") in a["knowledge"]["advice"]  # fmt: skip
    assert "live feedback on 50% of answers (58 negative, 1 corrections)" in a["behaviour"]["evidence"]
    assert "live contract failures: format 0.03 of 200" in a["behaviour"]["evidence"]


def test_live_behaviour_failures_ask_for_the_weights_only_with_enough_traffic() -> None:
    calm = _history(behaviour=2, knowledge=3, passed=95, published=0)  # the gate set alone: keep the weights
    assert advise(calm)["behaviour"]["verdict"] == "no fine-tune"
    assert advise({**calm, "production": _live(100, behaviour=15)})["behaviour"]["verdict"] == "fine-tune"
    few = _live(MIN_LIVE - 1, behaviour=MIN_LIVE - 1)
    assert advise({**calm, "production": few})["behaviour"]["verdict"] == "no fine-tune"
    # a burst of failures of the retrieval side in production never asks for a fine-tune
    for burst in ({"stale": 60, "missing": 20}, {"retrieval": 80}):
        assert advise({**calm, "production": _live(100, **burst)})["behaviour"]["verdict"] == "no fine-tune"
    # a retrieval burst alone makes the retrieval side active, with its own action
    tuned = advise({**calm, "production": _live(100, retrieval=30)})["knowledge"]
    assert tuned["active"] and any(x.endswith(": tune the retriever (30 retrieval)") for x in tuned["advice"])
