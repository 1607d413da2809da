"""The users' feedback on a trace: HUMAN assessments logged with a feedback id, so that logging the same feedback
again (a delivery from the spool after a crash) adds nothing."""

from __future__ import annotations

import math
import uuid
from typing import Any

from components.config import Params, Settings
from components.tracking.trace_schema import CORRECTION, USER_FEEDBACK
from components.tracking.trace_store import store_call, tracing_client

FEEDBACK_ID = "ragloop.feedback_id"  # assessment metadata: the feedback's id (idempotent delivery)


def check_value(value: Any) -> bool | float:
    """A user judgement: true/false, or a number in [-1, 1] (below 0 is negative). ValueError names `value`."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float) and math.isfinite(value) and -1 <= value <= 1:
        return float(value)
    raise ValueError(f"value: expected true/false or a number between -1 and 1, got {value!r}")


def log_feedback(params: Params, settings: Settings, trace_id: str, value: bool | float, comment: str | None = None,
                 correction: str | None = None, user: str | None = None,
                 feedback_id: str | None = None) -> dict[str, Any]:  # fmt: skip
    """The user's judgement on a trace: HUMAN feedback `user_feedback` (the comment as its rationale) and, with a
    correction, an expectation `correction`, both tagged with the feedback id. Parts already on the trace with
    this id are not logged again. UnknownTraceError for a trace the store lacks, StoreUnavailableError when the
    store cannot be reached (nothing or only a part was logged: logging again with the same id completes it)."""
    from mlflow.entities import AssessmentSource, Expectation, Feedback

    value = check_value(value)
    feedback_id = feedback_id or uuid.uuid4().hex
    tracing = tracing_client(params, settings)
    info = store_call(lambda: tracing.get_trace_info(trace_id), trace_id)
    have = {(a.name, (a.metadata or {}).get(FEEDBACK_ID)) for a in (info.assessments or [])}
    source = AssessmentSource(source_type="HUMAN", source_id=user or "anonymous")
    meta = {FEEDBACK_ID: feedback_id}
    logged = []
    if (USER_FEEDBACK, feedback_id) not in have:
        fb = Feedback(name=USER_FEEDBACK, value=value, rationale=comment, source=source, metadata=meta)
        store_call(lambda: tracing.log_assessment(trace_id, fb), trace_id)
        logged.append(USER_FEEDBACK)
    if correction is not None and (CORRECTION, feedback_id) not in have:
        ex = Expectation(name=CORRECTION, value=correction, source=source, metadata=meta)
        store_call(lambda: tracing.log_assessment(trace_id, ex), trace_id)
        logged.append(CORRECTION)
    return {"trace_id": trace_id, "feedback_id": feedback_id, "status": "logged" if logged else "duplicate",
            "logged": logged}  # fmt: skip
