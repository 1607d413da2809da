"""One answer pipeline: the same questions through `ragloop api`'s engine, the gate evaluation (as `ragloop evaluate`
runs it) and `ragloop ask`, on the same champion and index version, give the same answer record. If any of them
retrieved, prompted, generated, parsed or counted differently, what the gate measures would not be what the API
serves, and this test fails."""

from __future__ import annotations

import dataclasses

import pytest

from components.config import Settings
from tests.serving.conftest import build_deployment

SETTINGS = Settings(mlflow_tracking_uri=None, chroma_host=None, chroma_port=8000, chroma_ssl=False)
QUESTIONS = ["I lost my card", "How much is a SWIFT transfer?", "Do you offer mortgages?", "When is support open?"]
GOLD = [("card_lost", ("cards/lost-card.md",)), ("fees", ("fees.md",)), ("out_of_scope", ()),
        ("fees", ("support.txt",))]  # fmt: skip
TIMING = {"retrieve_ms": 0.0, "generate_ms": 0.0, "latency_ms": 0.0, "started_ns": 0, "retrieved_ns": 0, "ended_ns": 0}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The deployment and the engine's answers to QUESTIONS, asked together (one batch or more); the engine is
    closed before the other paths open the embedded index in this process."""
    from components.serving.engine import Engine

    dep = build_deployment(tmp_path_factory.mktemp("one-pipeline"), adapters=1)
    dep.index()
    params = dep.params()
    with Engine(params, SETTINGS) as engine:
        answers = [f.result(timeout=600) for f in [engine.submit(q) for q in QUESTIONS]]
    return params, answers


def test_the_engine_and_the_gate_evaluation_produce_the_same_answer_record(served) -> None:
    """Same prompt, retrieved chunks, raw generation, parsed answer, token counts, model and index lineage; only the
    timing differs, and the checks: the live slices for a live answer, the case's slices for a gate case, each
    computed by the contract on that same output."""
    from components.behaviour.contract import contract_for
    from components.behaviour.evaluate import run_cases
    from components.behaviour.pipeline import load_model
    from components.behaviour.suite import Case
    from components.knowledge.retrieval import Retriever
    from components.tracking import registry

    params, answers = served
    assert {(a.model_version, a.adapter_version, a.index_version) for a in answers} == {("v1", "1", 1)}
    adapter = registry.fetch_version(params, SETTINGS, "1").adapter_dir
    contract = contract_for(params)
    cases = [Case(f"c{i}", q, intent, "x" if gold else None, gold)
             for i, (q, (intent, gold)) in enumerate(zip(QUESTIONS, GOLD, strict=True))]  # fmt: skip
    with Retriever(params, SETTINGS) as retriever:
        model = load_model(params, adapter, "v1")
        outcomes = run_cases(cases, retriever, model, params.generator, params.generator.context_chunks, contract)
    for live, case, o in zip(answers, cases, outcomes, strict=True):
        gated = o.answered
        assert gated is not None
        assert gated.prompt == live.prompt and gated.raw == live.raw and gated.hits == live.hits
        skip = {**TIMING, "checks": {}, "check_errors": {}}
        assert dataclasses.replace(gated, **skip) == dataclasses.replace(live, **skip)
        retrieved = live.retrieved()
        assert (live.checks, live.check_errors) == contract.live_check(live.raw, retrieved)
        assert (gated.checks, gated.check_errors) == contract.check(case, live.raw, retrieved)
        assert (o.output, o.checks, o.errors) == (gated.raw, gated.checks, gated.check_errors)


def test_ragloop_ask_answers_with_the_same_record_the_api_serves(served) -> None:
    from components.behaviour.loop import answer_question
    from components.tracking import registry

    params, answers = served
    adapter = registry.fetch_version(params, SETTINGS, "1").adapter_dir
    for live in answers:
        asked = answer_question(params, SETTINGS, live.question, adapter, "v1")
        expected = {"answer": live.answer, "intent": live.intent, "cited": list(live.cited),
                    "sources": live.sources(), "model_version": "v1", "index_version": 1, "raw": live.raw}  # fmt: skip
        assert asked == expected
