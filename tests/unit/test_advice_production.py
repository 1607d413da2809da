"""`ragloop advise` with production evidence: live traffic, its failure mix as triage routed it, feedback."""

from __future__ import annotations

from components.tracking.advice import MIN_LIVE, advise
from tests.unit.test_advice import _history


def _live(n: int, knowledge: int = 0, gap: int = 0, behaviour: int = 0) -> dict:
    failing = knowledge + gap + behaviour
    return {"traces": n, "failing": failing, "untriaged_failing": 0,
            "routes": {"knowledge": knowledge, "gap": gap, "behaviour": behaviour},
            "feedback": {"given": n // 2, "negative": failing, "corrections": 1, "rate": 0.5},
            "slices": {"format": {"n": n, "failed": behaviour, "fail_rate": round(behaviour / n, 4)}}}  # fmt: skip


def test_absent_traffic_says_so() -> None:
    a = advise({**_history(), "production": {"traces": 0, "note": "experiment 'ragloop-serving' does not exist yet"}})
    assert any(e.startswith("no live traffic in the last 30 days (experiment") for e in a["knowledge"]["evidence"])
    assert advise(_history())["knowledge"]["evidence"][-1].startswith("no live traffic")  # an older history too


def test_live_failures_show_their_mix_and_feedback() -> None:
    a = advise({**_history(), "production": _live(200, knowledge=30, gap=10, behaviour=6)})
    assert "live: 200 answers in 30 days, 46 failing: 30 knowledge (re-index), 10 gap" in a["knowledge"]["evidence"][-1]
    assert any("20% of live answers failed on knowledge or a gap" in x for x in a["knowledge"]["advice"])
    assert "live feedback on 50% of answers (46 negative, 1 corrections)" in a["behaviour"]["evidence"]
    assert "live contract failures: format 0.03 of 200" in a["behaviour"]["evidence"]


def test_live_behaviour_failures_ask_for_the_weights_only_with_enough_traffic() -> None:
    calm = _history(behaviour=2, knowledge=3, passed=95, published=0)  # the gate set alone: keep the weights
    assert advise(calm)["behaviour"]["verdict"] == "no fine-tune"
    assert advise({**calm, "production": _live(100, behaviour=15)})["behaviour"]["verdict"] == "fine-tune"
    few = _live(MIN_LIVE - 1, behaviour=MIN_LIVE - 1)
    assert advise({**calm, "production": few})["behaviour"]["verdict"] == "no fine-tune"
    # a burst of knowledge failures in production never asks for a fine-tune
    assert advise({**calm, "production": _live(100, knowledge=60, gap=20)})["behaviour"]["verdict"] == "no fine-tune"
