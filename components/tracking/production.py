"""Live traffic, read back from MLflow: the traces `ragloop api` writes (components/tracking/trace_schema.py) as
plain dataclasses for triage, the tags triage puts on the traces it routed, and the production evidence that
`ragloop status` and `ragloop advise` show (traffic, failure mix, feedback rate per slice).

Traces are read through the deployment's own tracking URI (`client_for`), from the serving experiment.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from components.config import Params, Settings
from components.routes import MISSING, ROUTES, STALE
from components.tracking import trace_schema as ts
from components.tracking.mlflow_runs import client_for

# the values of ts.TAG_TRIAGED: the four routes (components/routes.py); traces a triage tagged before the
# routes had these names are read under the new ones (a `knowledge` failure was retrieved again at the same depth
# after a re-index: stale; a `gap` had nothing relevant: missing)
LEGACY_ROUTES = {"knowledge": STALE, "gap": MISSING}
PAGE = 500  # traces per search_traces page


@dataclass(frozen=True)
class RetrievedDoc:
    doc: str
    chunk_id: str
    score: float
    index_version: int | None
    text: str


@dataclass(frozen=True)
class LiveTrace:
    """One live answer as triage sees it."""

    trace_id: str
    timestamp_ms: int
    question: str
    output: str  # the raw line the model wrote
    retrieved: tuple[RetrievedDoc, ...]  # best first, as the answer saw them
    k: int | None  # chunks asked of the retriever
    index_version: int | None
    model_version: str | None
    checks: dict[str, bool] = field(default_factory=dict)  # check name (without the prefix) -> passed
    feedback: bool | float | None = None  # the user's latest judgement: bool, or a number (< 0 negative)
    comment: str | None = None
    correction: str | None = None
    triaged: str | None = None  # the route a past triage tagged it with
    intent: str | None = None  # the label the answer pipeline parsed from the output, as its trace recorded it

    @property
    def negative_feedback(self) -> bool:
        if isinstance(self.feedback, bool):
            return not self.feedback
        return self.feedback is not None and self.feedback < 0

    @property
    def failed_checks(self) -> tuple[str, ...]:
        return tuple(sorted(name for name, ok in self.checks.items() if not ok))

    @property
    def failing(self) -> bool:
        """A failed contract check or negative feedback; a correction alone says the answer was wrong too."""
        return bool(self.failed_checks) or self.negative_feedback or self.correction is not None


def serving_experiment_id(client: Any, params: Params) -> str | None:
    found = client.get_experiment_by_name(params.tracking.serving_experiment)
    return None if found is None else str(found.experiment_id)


def search_live(client: Any, experiment_id: str, since_ms: int, limit: int, spans: bool = True,
                before_ms: int | None = None) -> Iterator[Any]:  # fmt: skip
    """MLflow traces of live answers with since_ms <= timestamp (< before_ms), oldest first, at most `limit`."""
    flt = f"trace.timestamp_ms >= {int(since_ms)} AND tags.`{ts.TAG_ORIGIN}` = '{ts.ORIGIN_LIVE}'"
    flt += f" AND trace.timestamp_ms < {int(before_ms)}" if before_ms is not None else ""
    token, seen = None, 0
    while seen < limit:
        page = client.search_traces(locations=[experiment_id], filter_string=flt, order_by=["timestamp_ms ASC"],
                                    max_results=min(PAGE, limit - seen), page_token=token,
                                    include_spans=spans)  # fmt: skip
        for trace in page:
            seen += 1
            yield trace
        token = page.token
        if not token:
            return


def read_traces(params: Params, settings: Settings, since_ms: int, limit: int | None = None,
                before_ms: int | None = None) -> list[LiveTrace]:  # fmt: skip
    """The live traces from `since_ms` (epoch milliseconds; up to `before_ms`), oldest first, at most `limit`
    (default `triage.max_traces`); none when nothing was served yet."""
    client = client_for(params, settings)
    exp = serving_experiment_id(client, params)
    if exp is None:
        return []
    found = search_live(client, exp, since_ms, limit or params.triage.max_traces, before_ms=before_ms)
    return [to_live_trace(t) for t in found]


def to_live_trace(trace: Any) -> LiveTrace:
    """An MLflow `Trace` of the schema's shape as a LiveTrace; a field the trace lacks is empty, never guessed."""
    info, spans = trace.info, {s.name: s for s in (trace.data.spans if trace.data else [])}
    root, retrieve, generate = (spans.get(n) for n in (ts.ANSWER_SPAN, ts.RETRIEVE_SPAN, ts.GENERATE_SPAN))
    inputs = (root.inputs if root else None) or {}
    outputs = (root.outputs if root else None) or {}
    docs = tuple(_doc(d) for d in ((retrieve.outputs if retrieve else None) or []) if isinstance(d, dict))
    raw = outputs.get("raw") if isinstance(outputs, dict) else None
    if raw is None and generate is not None and isinstance(generate.outputs, dict):
        raw = generate.outputs.get("text")
    k = (retrieve.inputs or {}).get("k") if retrieve else None
    tags = info.tags or {}
    checks, feedback, comment, correction = _assessments(info.assessments or [])
    version = tags.get(ts.TAG_INDEX_VERSION)
    return LiveTrace(
        trace_id=info.trace_id, timestamp_ms=int(info.request_time),
        question=str(inputs.get("question", "")) if isinstance(inputs, dict) else "",
        output=str(raw or ""), retrieved=docs, k=int(k) if isinstance(k, int) else None,
        index_version=int(version) if version and version.isdigit() else next(
            (d.index_version for d in docs if d.index_version is not None), None),
        model_version=tags.get(ts.TAG_MODEL_VERSION), checks=checks, feedback=feedback, comment=comment,
        correction=correction, triaged=_route_tag(tags.get(ts.TAG_TRIAGED)),
        intent=outputs.get("intent") if isinstance(outputs, dict) and isinstance(outputs.get("intent"), str) else None,
    )  # fmt: skip


def _route_tag(value: str | None) -> str | None:
    return LEGACY_ROUTES.get(value, value) if value else None


def _doc(d: dict) -> RetrievedDoc:
    meta = d.get("metadata") or {}
    version = meta.get("index_version")
    return RetrievedDoc(doc=str(meta.get("doc_uri", "")), chunk_id=str(meta.get("chunk_id", "")),
                        score=float(meta.get("score", 0.0)), text=str(d.get("page_content", "")),
                        index_version=int(version) if version is not None else None)  # fmt: skip


def _assessments(found: list[Any]) -> tuple[dict[str, bool], bool | float | None, str | None, str | None]:
    """(checks, the latest user feedback, its comment, the latest correction); overridden assessments are skipped."""
    checks: dict[str, bool] = {}
    feedback: tuple[int, Any, str | None] | None = None
    correction: tuple[int, Any] | None = None
    for a in sorted(found, key=lambda a: a.create_time_ms or 0):
        if a.valid is False:
            continue
        if a.name.startswith(ts.CHECK_PREFIX) and a.feedback is not None:
            checks[a.name[len(ts.CHECK_PREFIX) :]] = bool(a.feedback.value)
        elif a.name == ts.USER_FEEDBACK and a.feedback is not None and isinstance(a.feedback.value, (bool, int, float)):
            feedback = (a.create_time_ms or 0, a.feedback.value, a.rationale)
        elif a.name == ts.CORRECTION and a.expectation is not None:
            correction = (a.create_time_ms or 0, a.expectation.value)
    value = None if feedback is None else feedback[1] if isinstance(feedback[1], bool) else float(feedback[1])
    fixed = None if correction is None or correction[1] in (None, "") else str(correction[1])
    return checks, value, None if feedback is None else feedback[2], fixed


def tag_routes(params: Params, settings: Settings, routes: dict[str, str]) -> None:
    """Mark each routed trace with its route (TAG_TRIAGED): a later triage never routes it twice."""
    client = client_for(params, settings)
    for trace_id, route in sorted(routes.items()):
        client.set_trace_tag(trace_id, ts.TAG_TRIAGED, route)


def summarise_traffic(traces: list[LiveTrace], routes: dict[str, str] | None = None) -> dict:
    """Traffic, failure mix and feedback rate, overall and per contract check (slice: its failures by route).
    `routes` (trace id -> route) overrides the routes the traces were tagged with."""
    routes = {**{t.trace_id: t.triaged for t in traces if t.triaged}, **(routes or {})}
    slices: dict[str, Counter] = {}
    for t in traces:
        for name, ok in t.checks.items():
            slices.setdefault(name, Counter())["n"] += 1
            slices[name]["failed"] += 0 if ok else 1
            if not ok and t.trace_id in routes:
                slices[name][routes[t.trace_id]] += 1
    given = [t for t in traces if t.feedback is not None]
    mix = Counter(routes[t.trace_id] for t in traces if t.trace_id in routes)
    n = len(traces)
    feedback = {"given": len(given), "negative": sum(1 for t in given if t.negative_feedback),
                "corrections": sum(1 for t in traces if t.correction is not None),
                "rate": round(len(given) / n, 4) if n else None}  # fmt: skip
    per_slice = {name: {"n": c["n"], "failed": c["failed"], "fail_rate": round(c["failed"] / c["n"], 4),
                        "routes": {r: c[r] for r in ROUTES}} for name, c in sorted(slices.items())}  # fmt: skip
    return {
        "traces": n,
        "failing": sum(1 for t in traces if t.failing),
        "routes": {r: mix.get(r, 0) for r in ROUTES},
        "untriaged_failing": sum(1 for t in traces if t.failing and t.trace_id not in routes),
        "feedback": feedback,
        "slices": per_slice,
        "models": dict(sorted(Counter(t.model_version or "?" for t in traces).items())),
        "first_at_ms": traces[0].timestamp_ms if traces else None,
        "last_at_ms": traces[-1].timestamp_ms if traces else None,
    }


def production_evidence(params: Params, settings: Settings, since_ms: int) -> dict:
    """`ragloop status` / `advise`: the live traffic since `since_ms` (spans not read: tags and assessments
    are enough), or why there is none."""
    client = client_for(params, settings)
    exp = serving_experiment_id(client, params)
    if exp is None:
        return {"traces": 0, "note": f"no live traffic recorded: experiment {params.tracking.serving_experiment!r} "
                "does not exist yet (start `ragloop api`)"}  # fmt: skip
    traces = [to_live_trace(t) for t in search_live(client, exp, since_ms, params.triage.max_traces, spans=False)]
    summary = summarise_traffic(traces)
    if not traces:
        summary["note"] = f"no live traffic in {params.tracking.serving_experiment!r} in this window"
    return summary
