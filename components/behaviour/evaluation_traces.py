"""Gate-set evaluations as MLflow traces: one trace per case, in the shape a live answer has
(components/tracking/trace_schema.py), linked to the evaluation's run.

Each case's trace has the same ANSWER / RETRIEVE / GENERATE spans and lineage tags as a production trace (origin
`evaluation`, the case id), the case's checks (format, intent, citation, refusal) as CODE assessments and its gold
(intent, gold documents) as expectations. So a production trace and an evaluation case read alike in the
MLflow UI, and the traces of two evaluation runs (the champion's and a candidate's) sit side by side there.

Why not `mlflow.genai.evaluate`: it calls a predict function once per row, where the evaluation generates the
gate set in batches (the same greedy decoding, several times faster on a CPU), and ragloop's checks need the
whole case (gold documents, what was retrieved), which they already have here. The traces it would write are
the ones written here.

The evaluation's generation is batched, so a case has no latency of its own: its spans are laid out one after
another over the batch's measured time (each case gets the mean), and the trace says so
(`TAG_TIMING`)."""

from __future__ import annotations

import time
from typing import Any

from components.behaviour.checks import CaseOutcome
from components.config import Params, Settings
from components.tracking.trace_schema import ORIGIN_EVALUATION

TAG_TIMING = "ragloop.timing"
TAG_ROUTE = "ragloop.route"  # pass, behaviour, retrieval, stale or missing
TAG_ROUTE_REASON = "ragloop.route_reason"
TAG_RUN = "ragloop.evaluation_run"
_LINK_BATCH = 100  # MLflow links at most 100 traces to a run per call


def trace_evaluation(params: Params, settings: Settings, outcomes: list[CaseOutcome], summary: dict[str, Any],
                     run_id: str, seconds: tuple[float, float]) -> list[str]:  # fmt: skip
    """Write one trace per case into the evaluation experiment and link them to `run_id`; their ids.
    `seconds`: (retrieval, generation) wall time of the whole evaluation."""
    from mlflow import MlflowClient
    from transformers import AutoTokenizer

    from components.behaviour.assistant import context_docs, generator_identity, resolve_generator
    from components.behaviour.contract import contract_for
    from components.records import Answered, label_version
    from components.tracking.mlflow_runs import tracking_uri
    from components.tracking.trace_writer import write_trace

    if not outcomes:
        return []
    tokenizer = AutoTokenizer.from_pretrained(resolve_generator(params), revision=params.generator.revision)
    n = len(outcomes)
    retrieve_ns, generate_ns = (int(s * 1e9 / n) for s in seconds)
    model_version = str(summary["model_version"])
    adapter = label_version(model_version)
    base = generator_identity(params)
    contract = contract_for(params)
    start = time.time_ns() - n * (retrieve_ns + generate_ns)
    ids: list[str] = []
    for i, o in enumerate(outcomes):
        t0 = start + i * (retrieve_ns + generate_ns)
        parsed = contract.answer_of(o.output)
        answered = Answered(
            question=o.question, answer=parsed.answer if parsed else o.output,
            intent=parsed.intent if parsed else None, cited=parsed.sources if parsed else (), raw=o.output,
            prompt=o.prompt, hits=o.hits, context_docs=tuple(context_docs(params.generator, list(o.hits))),
            model_version=model_version, adapter_version=adapter, base_model=base,
            index_version=int(summary["index_version"]),
            tokens_in=len(tokenizer(o.prompt)["input_ids"]), tokens_out=len(tokenizer(o.output)["input_ids"]),
            retrieve_ms=retrieve_ns / 1e6, generate_ms=generate_ns / 1e6,
            latency_ms=(retrieve_ns + generate_ns) / 1e6,
            started_ns=t0, retrieved_ns=t0 + retrieve_ns, ended_ns=t0 + retrieve_ns + generate_ns, checks=o.checks,
        )  # fmt: skip
        expectations: dict[str, Any] = {"intent": o.intent, "gold_docs": list(o.gold_docs)}
        written = write_trace(
            params, settings, answered, origin=ORIGIN_EVALUATION, case_id=o.id,
            tags={TAG_ROUTE: o.route, TAG_ROUTE_REASON: o.reason, TAG_RUN: run_id,
                  TAG_TIMING: f"mean of a batch of {n} cases"},
            experiment=params.tracking.evaluation_experiment, expectations=expectations,
        )  # fmt: skip
        ids.append(written.trace_id)
    client = MlflowClient(tracking_uri(params, settings))
    for i in range(0, len(ids), _LINK_BATCH):
        client.link_traces_to_run(ids[i : i + _LINK_BATCH], run_id)
    return ids
