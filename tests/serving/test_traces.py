"""Traces, live checks and feedback on a real embedded MLflow store, with answers from a real Engine (tiny model,
real index): the trace's shape (trace_schema.py), HUMAN feedback, and the disk spool's exactly-once delivery."""

from __future__ import annotations

import json
import math

import pytest

from components.config import Settings
from components.tracking import feedback, trace_store, trace_writer, traces
from components.tracking.trace_schema import (
    ANSWER_SPAN,
    CHECK_PREFIX,
    CHECK_SOURCE,
    CORRECTION,
    GENERATE_SPAN,
    LLM_ATTRIBUTES,
    RETRIEVE_SPAN,
    TAG_INDEX_VERSION,
    TAG_MODEL_VERSION,
    TAG_ORIGIN,
    TAG_PARAMS_HASH,
    TAG_QUESTION_HASH,
    USER_FEEDBACK,
)
from tests.service.servers import free_port
from tests.serving.conftest import build_deployment

SETTINGS = Settings(mlflow_tracking_uri=None, chroma_host=None, chroma_port=8000, chroma_ssl=False)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from components.serving.engine import Engine

    dep = build_deployment(tmp_path_factory.mktemp("traces"))
    dep.index()
    params = dep.params()
    with Engine(params, SETTINGS) as engine:
        yield params, engine


@pytest.fixture(scope="module")
def traced(served):
    params, engine = served
    answered = engine.answer("Hello, I lost my card")
    written = trace_writer.write_trace(params, SETTINGS, answered)
    assert written.stored, written
    return params, answered, written.trace_id


def _feedback(trace, name: str) -> list:
    return [a for a in trace.info.assessments if a.name == name]


def test_an_answer_is_one_trace_with_its_spans_documents_lineage_and_checks(traced) -> None:
    from mlflow.entities import SpanType

    from components.behaviour.suite import text_hash
    from components.tracking.mlflow_runs import client_for

    params, answered, trace_id = traced
    trace = trace_writer.read_trace(params, SETTINGS, trace_id)
    spans = {s.name: s for s in trace.data.spans}
    assert set(spans) == {ANSWER_SPAN, RETRIEVE_SPAN, GENERATE_SPAN}
    root, retrieve, generate = spans[ANSWER_SPAN], spans[RETRIEVE_SPAN], spans[GENERATE_SPAN]
    assert root.parent_id is None and retrieve.parent_id == root.span_id == generate.parent_id
    assert (root.span_type, retrieve.span_type, generate.span_type) == (SpanType.CHAIN, SpanType.RETRIEVER,
                                                                         SpanType.LLM)  # fmt: skip
    assert root.inputs == {"question": "Hello, I lost my card"}
    assert root.outputs["raw"] == answered.raw and root.outputs["cited"] == list(answered.cited)

    docs = retrieve.outputs
    assert [d["metadata"]["doc_uri"] for d in docs] == [h["doc"] for h in answered.hits]
    assert docs[0]["metadata"]["doc_uri"] == "cards/lost-card.md"  # the tiny index does retrieve it first
    assert docs[0]["page_content"] == answered.hits[0]["text"] and docs[0]["page_content"]
    assert {"doc_uri", "chunk_id", "score", "index_version"} <= set(docs[0]["metadata"])
    assert docs[0]["metadata"]["index_version"] == answered.index_version == 1

    assert generate.inputs == {"prompt": answered.prompt} and generate.outputs == {"text": answered.raw}
    assert set(LLM_ATTRIBUTES) <= set(generate.attributes)
    assert generate.attributes["model_version"] == "v1" and generate.attributes["adapter_version"] == "1"
    assert generate.attributes["tokens_in"] == answered.tokens_in > 0
    assert generate.attributes["tokens_out"] == answered.tokens_out > 0  # the base+adapter writes something
    assert root.start_time_ns <= retrieve.end_time_ns <= generate.start_time_ns + 1 <= root.end_time_ns + 1

    tags = trace.info.tags
    assert tags[TAG_ORIGIN] == "live" and tags[TAG_MODEL_VERSION] == "v1" and tags[TAG_INDEX_VERSION] == "1"
    assert tags[TAG_QUESTION_HASH] == text_hash("hello, i lost my card!")  # normalised
    assert tags[TAG_PARAMS_HASH] == trace_writer.params_hash(params) and len(tags[TAG_PARAMS_HASH]) == 16

    checks = {a.name: a for a in trace.info.assessments if a.name.startswith(CHECK_PREFIX)}
    assert {n.removeprefix(CHECK_PREFIX): a.value for n, a in checks.items()} == answered.checks
    assert set(answered.checks) == {"format", "intent", "citation"}
    assert all(a.source.source_type == "CODE" and a.source.source_id == CHECK_SOURCE for a in checks.values())

    client = client_for(params, SETTINGS)
    exp = client.get_experiment(trace.info.experiment_id)
    assert exp.name == params.tracking.serving_experiment == "ragloop-serving"
    assert exp.artifact_location.startswith((params.paths.mlflow / "artifacts").as_uri())


def test_feedback_is_human_with_comment_and_correction_and_never_logged_twice(traced) -> None:
    params, _, trace_id = traced
    got = traces.submit_feedback(params, SETTINGS, trace_id, False, "wrong label", "intent: card_lost", "ana")
    assert got["status"] == "logged"
    again = feedback.log_feedback(params, SETTINGS, trace_id, False, "wrong label", "intent: card_lost", "ana",
                                feedback_id=got["feedback_id"])  # fmt: skip
    assert again["status"] == "duplicate"
    trace = trace_writer.read_trace(params, SETTINGS, trace_id)
    mine = [a for a in trace.info.assessments if (a.metadata or {}).get(feedback.FEEDBACK_ID) == got["feedback_id"]]
    assert sorted(a.name for a in mine) == [CORRECTION, USER_FEEDBACK]
    fb = next(a for a in mine if a.name == USER_FEEDBACK)
    assert (fb.value, fb.rationale, fb.source.source_type, fb.source.source_id) == (False, "wrong label", "HUMAN",
                                                                                      "ana")  # fmt: skip
    assert next(a for a in mine if a.name == CORRECTION).value == "intent: card_lost"
    scored = traces.submit_feedback(params, SETTINGS, trace_id, -0.5)
    value = next(a.value for a in _feedback(trace_writer.read_trace(params, SETTINGS, trace_id), USER_FEEDBACK)
                 if a.metadata[feedback.FEEDBACK_ID] == scored["feedback_id"])  # fmt: skip
    assert value == -0.5


def test_unknown_trace_and_bad_values_are_clear_errors(traced) -> None:
    params, _, trace_id = traced
    with pytest.raises(trace_store.UnknownTraceError, match="tr-0000"):
        traces.submit_feedback(params, SETTINGS, "tr-" + "0" * 32, True)
    for bad in (2, -1.5, "yes", None, math.nan, [1]):
        with pytest.raises(ValueError, match=r"^value: "):
            traces.submit_feedback(params, SETTINGS, trace_id, bad)  # type: ignore[arg-type]
    assert traces.spool_depth(params) == 0  # nothing of these was queued


def test_feedback_for_an_unreachable_store_is_spooled_then_delivered_exactly_once(traced, monkeypatch) -> None:
    params, _, trace_id = traced
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    down = Settings(mlflow_tracking_uri=f"http://127.0.0.1:{free_port()}", chroma_host=None, chroma_port=8000,
                    chroma_ssl=False)  # fmt: skip
    assert not trace_store.store_reachable(params, down) and trace_store.store_reachable(params, SETTINGS)
    queued = traces.submit_feedback(params, down, trace_id, True, "late but kept")
    lost = traces.submit_feedback(params, down, "tr-" + "f" * 32, True)  # unverifiable while the store is down
    assert queued["status"] == lost["status"] == "queued"
    assert traces.spool_depth(params) == 2
    files = traces.spool(params).pending()
    assert json.loads(files[0].read_text())["feedback_id"] == queued["feedback_id"]  # oldest first

    still_down = traces.deliver_spool(params, down)
    assert (still_down["delivered"], still_down["pending"]) == (0, 2) and still_down["error"]

    # a delivery that died after logging and before removing the file: the next one must not log it again
    record = json.loads(files[0].read_text())
    feedback.log_feedback(params, SETTINGS, **{k: record[k] for k in ("trace_id", "value", "comment", "feedback_id")})
    done = traces.deliver_spool(params, SETTINGS)
    assert (done["delivered"], done["rejected"], done["pending"]) == (1, 1, 0)
    trace = trace_writer.read_trace(params, SETTINGS, trace_id)
    mine = [a for a in _feedback(trace, USER_FEEDBACK) if a.metadata[feedback.FEEDBACK_ID] == queued["feedback_id"]]
    assert len(mine) == 1 and mine[0].rationale == "late but kept"
    rejected = list((params.paths.serving / traces.REJECTED).glob("*.json"))
    assert len(rejected) == 1 and "tr-ffff" in json.loads(rejected[0].read_text())["reason"]
    assert traces.deliver_spool(params, SETTINGS) == {
        "delivered": 0,
        "rejected": 0,
        "pending": 0,
        "error": None,
        "traces": {"delivered": 0, "rejected": 0, "pending": 0, "error": None},
    }


def test_a_spooled_trace_is_stored_under_its_own_id_exactly_once(served) -> None:
    params, engine = served
    answered = engine.answer("I lost my card")
    kept = traces.keep_trace(params, answered)
    assert kept.queued and not kept.stored and traces.trace_pending(params, kept.trace_id)
    record = json.loads(traces.trace_spool(params).pending()[0].read_text())
    queued = traces.submit_feedback(params, SETTINGS, kept.trace_id, True, "before it landed")
    assert queued["status"] == "queued"  # its trace is on its way: the feedback waits for it

    done = traces.deliver_spool(params, SETTINGS)
    assert done["traces"]["delivered"] == done["delivered"] == 1 and done["pending"] == 0, done["traces"]
    trace = trace_writer.read_trace(params, SETTINGS, kept.trace_id)  # the id the answer was returned with
    assert {s.name for s in trace.data.spans} == {ANSWER_SPAN, RETRIEVE_SPAN, GENERATE_SPAN}
    assert trace.info.tags[traces.TAG_SPOOLED_AS] == kept.trace_id and traces.resolve(params, kept.trace_id) == (
        kept.trace_id)  # fmt: skip
    assert [a.rationale for a in _feedback(trace, USER_FEEDBACK)] == ["before it landed"]

    # a delivery killed between writing the trace and removing its file: the next one writes nothing again
    traces.trace_spool(params).put(kept.trace_id, record)
    again = traces.deliver_spool(params, SETTINGS)
    assert again["traces"] == {"delivered": 1, "rejected": 0, "pending": 0, "error": None}
    from components.tracking.mlflow_runs import client_for

    exp = client_for(params, SETTINGS).get_experiment_by_name(params.tracking.serving_experiment).experiment_id
    found = client_for(params, SETTINGS).search_traces(
        locations=[exp], filter_string=f"tag.`{traces.TAG_SPOOLED_AS}` = '{kept.trace_id}'"
    )
    assert [t.info.trace_id for t in found] == [kept.trace_id]
    assert len(trace_writer.read_trace(params, SETTINGS, kept.trace_id).data.spans) == 3


def test_an_unreadable_trace_file_is_set_aside_and_the_traces_behind_it_are_delivered(served) -> None:
    params, engine = served
    bad = traces.trace_spool(params).put("tr-" + "0" * 32, {"trace_id": "tr-" + "0" * 32})
    bad.write_text("{", encoding="utf-8")  # cut short
    kept = traces.keep_trace(params, engine.answer("What does a SWIFT transfer cost?"))
    done = traces.deliver_traces(params, SETTINGS)
    assert (done["delivered"], done["rejected"], done["pending"], done["error"]) == (1, 1, 0, None)
    assert trace_writer.read_trace(params, SETTINGS, kept.trace_id) is not None
    kept_aside = json.loads((params.paths.serving / traces.REJECTED_TRACES / bad.name).read_text())
    assert kept_aside["reason"].startswith("unreadable spool file")
