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

Each case's trace is written from the answer pipeline's record (`CaseOutcome.answered`, components/behaviour/
pipeline.py): the prompt, the output, what the contract read in it, the token counts and the checks are those the
evaluation computed, never parsed or counted again. The evaluation's generation is batched, so a case has no
latency of its own: its spans are laid out one after another over the batch's measured time (each case gets the
mean), and the trace says so (`TAG_TIMING`)."""

from __future__ import annotations

import dataclasses
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


def trace_evaluation(params: Params, settings: Settings, outcomes: list[CaseOutcome], run_id: str,
                     seconds: tuple[float, float]) -> list[str]:  # fmt: skip
    """Write one trace per case into the evaluation experiment and link them to `run_id`; their ids.
    `seconds`: (retrieval, generation) wall time of the whole evaluation."""
    from mlflow import MlflowClient

    from components.tracking.mlflow_runs import tracking_uri
    from components.tracking.trace_writer import write_trace

    if not outcomes:
        return []
    n = len(outcomes)
    retrieve_ns, generate_ns = (int(s * 1e9 / n) for s in seconds)
    start = time.time_ns() - n * (retrieve_ns + generate_ns)
    ids: list[str] = []
    for i, o in enumerate(outcomes):
        if o.answered is None:
            raise ValueError(f"case {o.id}: no answer recorded (evaluate.run_cases records one for each case)")
        t0 = start + i * (retrieve_ns + generate_ns)
        answered = dataclasses.replace(
            o.answered, retrieve_ms=retrieve_ns / 1e6, generate_ms=generate_ns / 1e6,
            latency_ms=(retrieve_ns + generate_ns) / 1e6, started_ns=t0, retrieved_ns=t0 + retrieve_ns,
            ended_ns=t0 + retrieve_ns + generate_ns,
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
