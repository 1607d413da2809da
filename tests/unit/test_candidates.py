"""Candidate cases: proposed by triage, accepted by a person into train.jsonl; never into the gate set."""

from __future__ import annotations

import json

import pytest

from components.behaviour.candidates import CandidateError, accept, add_candidates, candidates_path, load_candidates
from components.behaviour.suite import Case
from components.files import GATE_CASES, LABELS_FILE, TRAIN_CASES
from tests.helpers import Deployment

GATE = {"id": "gate-1", "question": "When is support open?", "intent": "support", "answer": "8 to 20.",
        "gold_docs": ["support.txt"]}  # fmt: skip
TRAIN = {"id": "train-1", "question": "Is a SEPA transfer free?", "intent": "fees", "answer": "Yes.",
         "gold_docs": ["fees.md"]}  # fmt: skip


def _cand(trace_id: str, question: str, **kw: object) -> dict:
    return {"id": f"cand-{trace_id}", "trace_id": trace_id, "question": question, "intent": "fees",
            "intent_source": "model", "answer": None, "gold_docs": ["fees.md"], **kw}  # fmt: skip


@pytest.fixture
def dep(tmp_path) -> Deployment:
    d = Deployment.create(tmp_path)
    d.write_params(paths={"docs": "docs", "behaviour": "behaviour", "index": "i", "metrics": "m", "mlflow": "f"})
    (tmp_path / "behaviour").mkdir(exist_ok=True)
    (tmp_path / "behaviour" / LABELS_FILE).write_text(json.dumps({k: k for k in ("fees", "support", "out_of_scope")}))
    (tmp_path / "behaviour" / GATE_CASES).write_text(json.dumps(GATE) + "\n")
    (tmp_path / "behaviour" / TRAIN_CASES).write_text(json.dumps(TRAIN) + "\n")
    return d


def test_add_candidates_keeps_one_per_trace_and_marks_gate_collisions(dep: Deployment) -> None:
    path = candidates_path(dep.params())
    gate = [Case("gate-1", GATE["question"], "support", "8 to 20.", ("support.txt",))]
    added = add_candidates(path, [_cand("a", "What does a card cost?"), _cand("b", "when is SUPPORT open")], gate)
    assert [(c["id"], c["gate_collision"]) for c in added] == [("cand-a", None), ("cand-b", "gate-1")]
    assert add_candidates(path, [_cand("a", "What does a card cost?")], gate) == []  # the same trace: not twice
    assert [c["id"] for c in load_candidates(path)] == ["cand-a", "cand-b"]


def test_accept_refuses_what_it_cannot_take_and_changes_nothing(dep: Deployment) -> None:
    params = dep.params()
    train = params.paths.behaviour / TRAIN_CASES
    proposed = [_cand("a", "What does a card cost?"), _cand("b", "is a sepa transfer free", answer="Yes, always.")]
    add_candidates(candidates_path(params), proposed, [])
    before = train.read_text()
    for ids, kw, match in (
        (["cand-x"], {}, "no candidate cand-x"),
        (["cand-a"], {}, "field 'answer': the user gave no correction"),
        (["cand-a", "cand-b"], {"answer": "5 EUR."}, "one candidate at a time"),
        (["cand-a"], {"answer": "5 EUR.", "intent": "loans"}, "field 'intent': expected one of"),
        (["cand-b"], {}, "same question as line 1 after normalisation"),  # already a training question
        (["cand-a"], {"answer": "5 | 6"}, "expected no '|'"),  # validated like any case file
    ):
        with pytest.raises(CandidateError, match=match):
            accept(params, ids, **kw)
        assert train.read_text() == before and len(load_candidates(candidates_path(params))) == 2


def test_an_out_of_scope_candidate_needs_no_answer(dep: Deployment) -> None:
    params = dep.params()
    add_candidates(candidates_path(params), [_cand("o", "Can I buy bitcoin?", intent="out_of_scope")], [])
    [done] = accept(params, ["cand-o"])
    last = json.loads((params.paths.behaviour / TRAIN_CASES).read_text().splitlines()[-1])
    assert last == {"id": done.case_id, "question": "Can I buy bitcoin?", "intent": "out_of_scope", "answer": None,
                    "gold_docs": []}  # fmt: skip
    assert load_candidates(candidates_path(params)) == []
