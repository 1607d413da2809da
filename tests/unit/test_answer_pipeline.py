"""The answer pipeline (components/behaviour/pipeline.py) on fakes: a batch is one retrieval and one generation,
each answer is read through the contract once (its roles and its checks: the case's slices offline, the live ones
online), and the evaluation's traces are written from its records, with no tokenizer and no parsing."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from components.behaviour.assistant import build_prompt, context_docs
from components.behaviour.contract import load_contract
from components.behaviour.pipeline import Model, answer_batch, token_counts
from components.behaviour.suite import Case
from components.config import GeneratorParams, load_params
from tests.helpers import REPO, contract_line

CONTRACT = load_contract(REPO / "data/behaviour/contract.yaml", ("fees", "card_lost", "out_of_scope"))
PARAMS = GeneratorParams(context_chunks=2)
HITS = {
    "How much is a SWIFT transfer?": [{"doc": "fees.md", "chunk_id": "f1", "score": 0.9, "text": "SWIFT costs 9 EUR."},
                                      {"doc": "fees.md", "chunk_id": "f2", "score": 0.5, "text": "Cards are free."},
                                      {"doc": "support.txt", "chunk_id": "s1", "score": 0.2, "text": "Open 8-20."}],
    "Do you offer mortgages?": [{"doc": "support.txt", "chunk_id": "s1", "score": 0.1, "text": "Open 8-20."}],
    "I lost my card": [{"doc": "cards/lost-card.md", "chunk_id": "c1", "score": 0.8, "text": "Freeze it."}],
}  # fmt: skip
OUTPUTS = {
    "How much is a SWIFT transfer?": contract_line("fees", "9 EUR", ["fees.md"]),
    "Do you offer mortgages?": contract_line("out_of_scope", "", []),
    "I lost my card": "freeze it, I think",  # not a contract line
}


class Tokenizer:
    """Whitespace tokens; no chat template (the prompt is encoded as it is)."""

    chat_template = None
    eos_token_id = 0

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict:
        assert not add_special_tokens
        return {"input_ids": list(range(len(text.split())))}


class Retriever:
    version = 7

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], int]] = []

    def search(self, texts: list[str], k: int) -> list[list[dict]]:
        self.calls.append((texts, k))
        return [HITS[t][:k] for t in texts]


class Generator:
    tokenizer = Tokenizer()

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], list[list[str]] | None]] = []

    def generate(self, prompts: list[str], sources: list[list[str]] | None = None,
                 listeners: list | None = None) -> list[str]:  # fmt: skip
        self.calls.append((prompts, sources))
        outs = [next(out for q, out in OUTPUTS.items() if q in p) for p in prompts]
        for out, listener in zip(outs, listeners or [None] * len(outs), strict=True):
            for word in out.split(" ") if listener else ():
                listener(word + " ")
        return outs


def _model() -> Model:
    return Model(Generator(), "v3", "3", "tiny@main")


def test_a_batch_is_one_retrieval_and_one_generation_and_each_answer_records_its_whole_path() -> None:
    questions = list(OUTPUTS)
    retriever, model = Retriever(), _model()
    answers = answer_batch(questions, retriever, model, CONTRACT, PARAMS)
    assert retriever.calls == [(questions, 2)]  # k: generator.context_chunks unless the caller says otherwise
    prompts = [build_prompt(PARAMS, q, HITS[q][:2]) for q in questions]
    assert model.generator.calls == [(prompts, [context_docs(PARAMS, HITS[q][:2]) for q in questions])]  # type: ignore[attr-defined]
    fees, refusal, free_text = answers
    assert [a.question for a in answers] == questions and [a.prompt for a in answers] == prompts
    assert (fees.intent, fees.answer, fees.cited) == ("fees", "9 EUR", ("fees.md",))
    assert fees.raw == OUTPUTS[questions[0]] and fees.hits == tuple(HITS[questions[0]][:2])
    assert fees.context_docs == ("fees.md",)  # once each, in rank order
    assert (refusal.intent, refusal.answer, refusal.cited) == ("out_of_scope", "I don't know", ())
    assert (free_text.intent, free_text.answer, free_text.cited) == (None, free_text.raw, ())  # not a contract line
    for a, prompt in zip(answers, prompts, strict=True):
        assert (a.model_version, a.adapter_version, a.base_model, a.index_version) == ("v3", "3", "tiny@main", 7)
        assert (a.tokens_in, a.tokens_out) == (len(prompt.split()), len(a.raw.split()))
        assert a.started_ns <= a.retrieved_ns <= a.ended_ns and 0 <= a.retrieve_ms <= a.latency_ms
    assert token_counts(Tokenizer(), "a b", "") == (2, 0)


def test_a_live_answer_gets_the_live_checks_and_a_gate_case_its_own_slices_from_one_identical_answer() -> None:
    """The same question as a live request and as a gate case: the same prompt, generation and reading; only the
    checks differ, each exactly what the contract computes for it."""
    q = "How much is a SWIFT transfer?"
    case = Case("c1", q, "fees", "9 EUR", ("support.txt",))  # gold not cited: the offline citation check fails
    (live,) = answer_batch([q], Retriever(), _model(), CONTRACT, PARAMS)
    (gated,) = answer_batch([q], Retriever(), _model(), CONTRACT, PARAMS, cases=[case])
    retrieved = ("fees.md",)
    assert (live.checks, live.check_errors) == CONTRACT.live_check(live.raw, retrieved)
    assert (gated.checks, gated.check_errors) == CONTRACT.check(case, gated.raw, retrieved)
    assert live.checks["citation"] and not gated.checks["citation"]
    timing = {"retrieve_ms": 0.0, "generate_ms": 0.0, "latency_ms": 0.0, "started_ns": 0, "retrieved_ns": 0,
              "ended_ns": 0, "checks": {}, "check_errors": {}}  # fmt: skip
    assert dataclasses.replace(live, **timing) == dataclasses.replace(gated, **timing)


def raises(answer: object, output: str, case: object, retrieved: tuple[str, ...]) -> bool:
    raise RuntimeError("no rule for this")


def test_an_assertion_that_raises_fails_its_check_and_its_error_is_recorded_with_the_answer(tmp_path: Path) -> None:
    custom = {"type": "python", "function": "tests.unit.test_answer_pipeline:raises"}
    body = {"contract": 1, "answer": {"format": "json"}, "roles": {"answer": "text"},
            "refusal": {"answer": "I don't know"}, "target": {"json": {"text": "$answer"}},
            "slices": [{"name": "custom", "assert": custom}]}  # fmt: skip
    (tmp_path / "contract.yaml").write_text(json.dumps(body))
    contract = load_contract(tmp_path / "contract.yaml")
    (a,) = answer_batch(["I lost my card"], Retriever(), _model(), contract, PARAMS)
    assert a.checks == {"custom": False}
    assert a.check_errors == {"custom": "RuntimeError: no rule for this"}


def test_cases_must_match_the_questions_one_to_one() -> None:
    with pytest.raises(ValueError, match="2 questions but 1 cases"):
        answer_batch(["a", "b"], Retriever(), _model(), CONTRACT, PARAMS, cases=[Case("c", "a", "fees", None, ())])


def test_the_evaluation_traces_are_written_from_the_pipeline_records_with_no_tokenizer(monkeypatch) -> None:
    """trace_evaluation writes each case's `Answered` as the evaluation recorded it (only its timing is laid out
    over the batch), never loading a tokenizer or parsing the output again."""
    import transformers

    from components.behaviour import evaluate
    from components.behaviour.evaluation_traces import trace_evaluation
    from components.config import Settings
    from components.tracking import mlflow_runs, trace_writer

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("the evaluation's traces loaded a tokenizer or parsed an output")

    written: list = []

    def write_trace(params, settings, answered, **kw):  # type: ignore[no-untyped-def]
        written.append((answered, kw))
        return type("Written", (), {"trace_id": f"tr-{len(written)}"})()

    links: list = []

    class Client:
        def __init__(self, uri: object) -> None: ...

        def link_traces_to_run(self, ids: list[str], run_id: str) -> None:
            links.append((ids, run_id))

    class Ranked(Retriever):
        def search_docs(self, texts: list[str], k: int) -> list[list[dict]]:
            return [[{"doc": h["doc"]} for h in HITS[t]] for t in texts]

        def stale_docs(self) -> set[str]:
            return set()

        def indexed_docs(self) -> set[str]:
            return {"fees.md", "support.txt", "cards/lost-card.md"}

    cases = [Case("c1", "How much is a SWIFT transfer?", "fees", "9 EUR", ("fees.md",)),
             Case("c2", "Do you offer mortgages?", "out_of_scope", None, ())]  # fmt: skip
    outcomes = evaluate.run_cases(cases, Ranked(), _model(), PARAMS, 2, CONTRACT)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", forbidden)
    monkeypatch.setattr(type(CONTRACT), "parse", forbidden)  # from here on, a parse fails the test
    monkeypatch.setattr(trace_writer, "write_trace", write_trace)
    monkeypatch.setattr(mlflow_runs, "tracking_uri", lambda p, s: "file:///nowhere")
    monkeypatch.setattr("mlflow.MlflowClient", Client)
    params = load_params(REPO / "params.yaml")
    ids = trace_evaluation(params, Settings.from_env(), outcomes, "run-1", (0.2, 1.0))
    assert ids == ["tr-1", "tr-2"] and links == [(ids, "run-1")]
    moved = ("retrieve_ms", "generate_ms", "latency_ms", "started_ns", "retrieved_ns", "ended_ns")
    for o, (answered, kw) in zip(outcomes, written, strict=True):
        assert o.answered is not None
        assert dataclasses.replace(answered, **{f: getattr(o.answered, f) for f in moved}) == o.answered
        assert (answered.retrieve_ms, answered.generate_ms) == (100.0, 500.0)  # the batch's time, shared out
        assert answered.checks == o.checks and kw["case_id"] == o.id
        assert kw["expectations"] == {"intent": o.intent, "gold_docs": list(o.gold_docs)}


def test_a_listener_per_question_receives_its_text_and_the_records_are_those_of_a_batch_without() -> None:
    questions = list(OUTPUTS)
    got: list[list[str]] = [[] for _ in questions]
    listeners = [got[0].append, None, got[2].append]
    streamed = answer_batch(questions, Retriever(), _model(), CONTRACT, PARAMS, listeners=listeners)
    plain = answer_batch(questions, Retriever(), _model(), CONTRACT, PARAMS)
    assert [a.raw for a in streamed] == [a.raw for a in plain]
    assert "".join(got[0]).strip() == streamed[0].raw and got[1] == [] and "".join(got[2]).strip() == streamed[2].raw
    with pytest.raises(ValueError, match="listeners"):
        answer_batch(questions, Retriever(), _model(), CONTRACT, PARAMS, listeners=[None])
