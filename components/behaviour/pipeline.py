"""The answer pipeline: retrieve -> prompt -> generate -> parse -> check, for a batch of questions. The one way an
answer is produced: `ragloop api` (components/serving/engine.py), the gate evaluation and the hard-case mining
(components/behaviour/evaluate.py), and `ragloop ask` (components/behaviour/loop.py) all call `answer_batch`, so
what the gate measures is what the API serves. Its `Answered` records are what the traces are written from
(components/tracking/traces.py, components/behaviour/evaluation_traces.py), with nothing parsed or counted again.

A batch is one retrieval call and one generation call (the generator splits it by `generator.batch_size`): the
engine's concurrent requests and the gate set alike. Each answer is read through the contract once: its roles
(answer, intent, cited sources) and its checks, which are the case's slices for a gate case (it has a gold) and
the live slices for a live answer.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from components.behaviour.assistant import build_prompt, context_docs, encode_turn
from components.behaviour.contract import Contract
from components.behaviour.token_stream import Listener
from components.config import GeneratorParams, Params
from components.records import Answered, distinct_docs, label_version


class Searcher(Protocol):
    @property
    def version(self) -> int: ...  # the index version it reads

    def search(self, texts: list[str], k: int) -> list[list[dict]]: ...


class TextGenerator(Protocol):
    tokenizer: Any

    def generate(self, prompts: list[str], sources: list[list[str]] | None = None,
                 listeners: Sequence[Listener | None] | None = None) -> list[str]: ...  # fmt: skip


@dataclass(frozen=True)
class Model:
    """The generator that answers, and what its answers record about it."""

    generator: TextGenerator
    label: str  # "v<N>" for a registry version, "base", or an evaluation's name for it ("candidate")
    version: str | None  # the registry version N; None: the base model, or a model not (yet) registered
    identity: str  # the base model's identity (assistant.generator_identity)


def load_model(params: Params, adapter: Path | None, label: str) -> Model:
    """The generator with `adapter` (None: the base model), answering as `label`."""
    from components.behaviour.assistant import Generator, generator_identity

    return Model(Generator(params, adapter), label, label_version(label), generator_identity(params))


def token_counts(tokenizer: Any, prompt: str, raw: str) -> tuple[int, int]:
    """(prompt tokens as the generator encodes them, chat template included; output tokens, the stop excluded)."""
    tokens_in = len(encode_turn(tokenizer, prompt)[0])
    tokens_out = len(tokenizer(raw, add_special_tokens=False)["input_ids"]) if raw else 0
    return tokens_in, tokens_out


def answer_batch(questions: Sequence[str], retriever: Searcher, model: Model, contract: Contract,
                 params: GeneratorParams, k: int | None = None, cases: Sequence[Any] | None = None,
                 listeners: Sequence[Listener | None] | None = None) -> list[Answered]:  # fmt: skip
    """Each question answered on one snapshot (this retriever's index version, this model), in order. `k`: chunks
    retrieved (default `generator.context_chunks`; the prompt shows at most that many); `cases`: the gate cases
    the questions are (checked against their slices), None for live questions (checked by the live slices);
    `listeners`: question i's raw text also goes to `listeners[i]` as it is generated (None: not streamed); its
    record (parsed, checked) is only complete once the whole batch is."""
    if cases is not None and len(cases) != len(questions):
        raise ValueError(f"{len(questions)} questions but {len(cases)} cases")
    if listeners is not None and len(listeners) != len(questions):
        raise ValueError(f"{len(questions)} questions but {len(listeners)} listeners")
    t0, started_ns = time.perf_counter(), time.time_ns()
    all_hits = retriever.search(list(questions), params.context_chunks if k is None else k)
    t1, retrieved_ns = time.perf_counter(), time.time_ns()
    prompts = [build_prompt(params, q, hits) for q, hits in zip(questions, all_hits, strict=True)]
    shown = [context_docs(params, hits) for hits in all_hits]
    raws = model.generator.generate(prompts, shown, listeners)
    t2 = time.perf_counter()
    out = []
    for i, (question, hits, prompt, raw) in enumerate(zip(questions, all_hits, prompts, raws, strict=True)):
        parsed, checks, errors = contract.judge(raw, distinct_docs(hits), None if cases is None else cases[i])
        tokens_in, tokens_out = token_counts(model.generator.tokenizer, prompt, raw)
        out.append(Answered(
            question=question,
            answer=parsed.answer if parsed else raw,
            intent=parsed.intent if parsed else None,
            cited=parsed.sources if parsed else (),
            raw=raw,
            prompt=prompt,
            hits=tuple(hits),
            context_docs=tuple(shown[i]),
            model_version=model.label,
            adapter_version=model.version,
            base_model=model.identity,
            index_version=retriever.version,
            tokens_in=tokens_in,
            tokens_out=tokens_out,
            retrieve_ms=round((t1 - t0) * 1000, 3),
            generate_ms=round((t2 - t1) * 1000, 3),
            latency_ms=round((time.perf_counter() - t0) * 1000, 3),
            started_ns=started_ns,
            retrieved_ns=retrieved_ns,
            ended_ns=time.time_ns(),
            checks=checks,
            check_errors=errors,
        ))  # fmt: skip
    return out
