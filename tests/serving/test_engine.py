"""The Engine in-process on a tiny real deployment: questions waiting together are answered in one batch with
the answers they get alone, and a promotion moves every later answer to the new champion, never back."""

from __future__ import annotations

import pytest

from components.config import Settings
from components.tracking import registry
from tests.serving.conftest import build_deployment

SETTINGS = Settings(mlflow_tracking_uri=None, chroma_host=None, chroma_port=8000, chroma_ssl=False)
QUESTIONS = ["I lost my card", "How much is a SWIFT transfer?", "Do you offer mortgages?", "When is support open?"]


@pytest.fixture(scope="module")
def engine_and_params(tmp_path_factory):
    from components.serving.engine import Engine

    dep = build_deployment(tmp_path_factory.mktemp("engine"))
    dep.index()
    params = dep.params()
    with Engine(params, SETTINGS) as engine:
        yield engine, params


def test_waiting_questions_are_answered_in_batches_with_the_answers_they_get_alone(engine_and_params) -> None:
    engine, _ = engine_and_params
    alone = {q: engine.answer(q).raw for q in QUESTIONS}
    before = engine.counts["batches"]
    futures = [engine.submit(q) for q in QUESTIONS * 3]  # submitted while the worker answers the first
    answers = [f.result(timeout=600) for f in futures]
    assert [a.raw for a in answers] == [alone[q] for q in QUESTIONS * 3]
    assert [a.question for a in answers] == QUESTIONS * 3
    batches = engine.counts["batches"] - before
    assert 2 <= batches < 12, batches  # at most api.max_batch (8) per batch, and fewer batches than questions
    assert all(a.model_version == "v1" and a.index_version == 1 for a in answers)


def test_answers_after_a_promotion_come_from_the_new_champion_and_never_go_back(engine_and_params) -> None:
    engine, params = engine_and_params
    try:
        first = [engine.submit(q) for q in QUESTIONS * 2]
        first[0].result(timeout=600)
        registry.promote(params, SETTINGS, "2")
        later = [engine.submit(q) for q in QUESTIONS * 2]
        versions = [f.result(timeout=600).model_version for f in first + later]
        assert versions == sorted(versions) and versions[0] == "v1"  # v1 ... v1 v2 ... v2, by submission
        assert set(versions[len(first) :]) == {"v2"}  # asked after the promotion returned
        assert engine.counts["model_switches"] == 1 and engine.versions()["model_version"] == "v2"
        again = engine.answer(QUESTIONS[0])
        assert (again.model_version, again.adapter_version) == ("v2", "2")
    finally:
        registry.promote(params, SETTINGS, "1")


def test_streamed_answers_arrive_piece_by_piece_each_from_its_own_row_of_a_shared_batch(engine_and_params) -> None:
    """Streamed and whole answers in the same batches: each listener gets its own answer's text, in more than one
    piece, the first before generation ended, adding up to the answer the question gets alone."""
    import time

    engine, _ = engine_and_params
    alone = {q: engine.answer(q).raw for q in QUESTIONS}
    asked = QUESTIONS * 3
    pieces: list[list[tuple[int, str]]] = [[] for _ in asked]
    futures = [engine.submit(q, lambda piece, got=pieces[i]: got.append((time.time_ns(), piece))) if i % 3 else
               engine.submit(q) for i, q in enumerate(asked)]  # fmt: skip
    answers = [f.result(timeout=600) for f in futures]
    assert [a.raw for a in answers] == [alone[q] for q in asked]
    for i, (answer, got) in enumerate(zip(answers, pieces, strict=True)):
        if i % 3 == 0:
            assert got == []
            continue
        assert "".join(p for _, p in got) == answer.raw
        if answer.tokens_out > 1:
            assert len(got) > 1, got
        generation_ended_ns = answer.retrieved_ns + answer.generate_ms * 1e6
        assert got[0][0] < generation_ended_ns  # streamed, not handed over at the end
