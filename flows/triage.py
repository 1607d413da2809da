"""Triage as a Prefect flow: read the live traces since the last triage, re-index when the documents changed, route
each failing answer (behaviour, retrieval, stale, missing; outage apart), write the gap report and the candidate
cases (behaviour only), emit the behaviour regression event only when live behaviour failures are significantly
above the champion's own rate and the retrieval regression event only when live retrieval misses are significantly
above the tolerated share, tag the routed traces, and record it all in MLflow and as Prefect artifacts."""

from __future__ import annotations

import json
import time
from dataclasses import asdict

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.events import emit_event

from components.behaviour import triage as rules
from components.behaviour.triage_evidence import IndexView
from components.config import Params, Settings, load_params
from components.files import CANDIDATES, EVALUATION_RESULTS, GATE_CASES, LABELS_FILE
from components.records import model_label
from components.routes import BEHAVIOUR, MISSING
from components.tracking.production import LiveTrace
from flows.events import BEHAVIOUR_REGRESSION, MODEL_RESOURCE, RETRIEVAL_REGRESSION, RETRIEVER_RESOURCE
from flows.tasks import io_task

HOUR_MS = 3_600_000


@io_task("read live traces")
def read_window(params: Params, settings: Settings, since: str | None) -> tuple[int, list[LiveTrace]]:
    """(where this triage starts: `since`, else the last triage's watermark, else the first trace ever served;
    the traces of a grace period before it, then at most `triage.max_traces` new ones). Each part has its own
    limit, so old traces can never keep the new ones from being read."""
    from components.tracking.production import read_traces
    from components.tracking.traces import deliver_spool
    from components.tracking.triage_runs import last_watermark, parse_since

    deliver_spool(params, settings)  # feedback kept on disk while the store was unreachable lands first
    start = parse_since(since, int(time.time() * 1000)) if since else (last_watermark(params, settings) or 0)
    grace = int(params.triage.feedback_grace_hours * HOUR_MS)
    late = read_traces(params, settings, max(0, start - grace), before_ms=start) if grace and start else []
    return start, late + read_traces(params, settings, start)


@io_task("check the documents")
def documents_changed(params: Params) -> tuple[bool, str]:
    from components.behaviour.history import index_state

    state = index_state(params)
    return bool(state["reindex_pending"]), str(state["reason"])


@io_task("retrieve the failing questions again")
def retrieve_again(params: Params, settings: Settings, failing: list[LiveTrace]) -> IndexView:
    from components.behaviour.triage_evidence import retrieve_again as run

    return run(params, settings, failing)


@io_task("write candidate cases")
def write_candidates(params: Params, behaviour: list[tuple[LiveTrace, rules.Routed]]) -> list[str]:
    from components.behaviour.candidates import add_candidates, candidate_from, candidates_path
    from components.behaviour.contract import contract_for
    from components.behaviour.suite import load_cases, load_labels

    root = params.paths.behaviour
    labels = set(load_labels(root / LABELS_FILE))
    gate = load_cases(root / GATE_CASES, labels)
    contract = contract_for(params)
    found = [candidate_from(t, r.docs, labels, contract) for t, r in behaviour]
    added = add_candidates(candidates_path(params), found, gate)
    return [c["id"] for c in added]


@io_task("load the champion's gate rates")
def champion_rates(params: Params, settings: Settings) -> tuple[str, dict[str, float]]:
    """(the serving model's label, its failure rate per slice from its gate evaluation, behaviour-only)."""
    from components.tracking.registry import champion

    champ = champion(params, settings)
    if champ is not None:
        return model_label(champ.version), rules.champion_fail_rates((champ.results or {}).get("behaviour"))
    saved = params.paths.metrics / EVALUATION_RESULTS  # no champion yet: the base model's evaluation
    if saved.is_file():
        data = json.loads(saved.read_text())
        if data.get("summary", {}).get("model_version") == model_label(None):
            return model_label(None), rules.champion_fail_rates(data.get("behaviour"))
    return model_label(None), {}


@io_task("tag routed traces")
def tag(params: Params, settings: Settings, routes: dict[str, str]) -> None:
    from components.tracking.production import tag_routes

    tag_routes(params, settings, routes)


@io_task("record triage in mlflow")
def record(params: Params, settings: Settings, report: dict, reason: str) -> str:
    from components.tracking.triage_runs import log_triage_run, triage_markdown

    return log_triage_run(params, settings, report, triage_markdown(report), reason)


@flow(name="triage", flow_run_name="triage-{reason}")
def triage(params_file: str = "params.yaml", since: str | None = None, reason: str = "manual") -> dict:
    """Route each live failure since the last triage (or `since`: ISO time or '2h') to its fix."""
    from components.tracking.production import summarise_traffic

    params, settings = load_params(params_file), Settings.from_env()
    start, traces = read_window(params, settings, since)
    new = [t for t in traces if t.timestamp_ms >= start]
    failing = [t for t in traces if t.failing and not t.triaged]
    reindex = refresh_index(params_file, params, failing)
    view = retrieve_again(params, settings, failing)
    routed = rules.route_all(failing, view.evidence, None if view.index_version is None else view.n_texts,
                             params.triage)  # fmt: skip
    routes = {t: r.route for t, r in routed.items()}
    gaps = _gaps(failing, routed, view, params)
    added = write_candidates(params, [(t, routed[t.trace_id]) for t in failing if routes[t.trace_id] == BEHAVIOUR])
    model, rates = champion_rates(params, settings)
    tests = rules.live_regression(new, routes, rates, params.regression)
    fired = _announce_regression(model, tests)
    misses = rules.retrieval_misses(new, routed, params.triage, params.regression)
    retrieval_fired = _announce_retrieval(params, view.index_version, misses)
    tag(params, settings, {t: r for t, r in routes.items() if r != rules.OUTAGE})
    report = {
        "since_ms": start, "until_ms": max([start, *(t.timestamp_ms + 1 for t in new)]),
        "late_traces": len(traces) - len(new), "traffic": summarise_traffic(new, routes),
        "routes": {r: sum(1 for x in routes.values() if x == r) for r in rules.ROUTES_ORDER},
        "routed": _by_route(failing, routed), "reindex": reindex, "index_version": view.index_version, "gaps": gaps,
        "candidates": {"added": added, "file": str(params.paths.behaviour / CANDIDATES)},
        "regression": {"fired": fired, "model_version": model, "slices": [asdict(s) for s in tests]},
        "retrieval_regression": {"fired": retrieval_fired, **asdict(misses)},
    }  # fmt: skip
    report["mlflow_run_id"] = record(params, settings, report, reason)
    _artifacts(report)
    return report


def refresh_index(params_file: str, params: Params, failing: list[LiveTrace]) -> dict:
    """Re-index (the reindex flow, as a subflow) when an answer failed and the documents changed since the
    published version: the failures may be about facts the index does not have yet."""
    if not failing:
        return {"ran": False, "why": "no failing answer to triage", "index_version": None}
    changed, why = documents_changed(params)
    if not changed:
        return {"ran": False, "why": f"not needed: {why}", "index_version": None}
    from flows.reindex import reindex

    result = reindex(params_file=params_file, reason="triage: documents changed")
    return {"ran": True, "why": f"ran: {why}", "index_version": result["index_version"],
            "documents": result["documents"], "chunks": result["chunks"]}  # fmt: skip


def _gaps(failing: list[LiveTrace], routed: dict[str, rules.Routed], view: IndexView, params: Params) -> list[dict]:
    import numpy as np

    gap = [t for t in failing if routed[t.trace_id].route == MISSING]
    if not gap:
        return []
    vectors = np.stack([view.vectors[t.question] for t in gap])
    return rules.gap_report(gap, vectors, view.df, view.n_texts, params.triage)


def _by_route(failing: list[LiveTrace], routed: dict[str, rules.Routed]) -> dict[str, list[dict]]:
    """Each route's traces with the evidence that chose it: the reason, the answering document (retrieval: found
    deeper, at `rank` of the current index's search; stale: now retrieved; behaviour: the one given)."""
    out: dict[str, list[dict]] = {r: [] for r in rules.ROUTES_ORDER}
    for t in failing:
        r = routed[t.trace_id]
        out[r.route].append({"trace_id": t.trace_id, "question": t.question, "route": r.route, "reason": r.reason,
                             "docs": list(r.docs), "rank": r.rank})  # fmt: skip
    return out


def _announce_retrieval(params: Params, index_version: int | None, misses: rules.RetrievalMisses) -> bool:
    if misses.significant:
        payload = {"retrieval_misses": misses.misses, "live_answers": misses.n, "share": round(misses.share, 4),
                   "tolerated": misses.expected, "p_value": misses.p_value, "documents": misses.documents,
                   "index_version": index_version, "reason": misses.reason,
                   "source": "live traffic (triage)"}  # fmt: skip
        emit_event(event=RETRIEVAL_REGRESSION, payload=payload,
                   resource={"prefect.resource.id": f"{RETRIEVER_RESOURCE}.index-v{index_version}"})  # fmt: skip
    return misses.significant


def _announce_regression(model: str, tests: list[rules.LiveSliceTest]) -> bool:
    regressed = [s for s in tests if s.significant]
    if regressed:
        emit_event(event=BEHAVIOUR_REGRESSION, resource={"prefect.resource.id": f"{MODEL_RESOURCE}.{model}"},
                   payload={"regressed_slices": [s.slice for s in regressed], "reasons": [s.reason for s in regressed],
                            "source": "live traffic (triage)"})  # fmt: skip
    return bool(regressed)


def _artifacts(report: dict) -> None:
    from components.tracking.triage_runs import triage_markdown

    routed = {r: len(v) for r, v in report["routed"].items()}
    create_markdown_artifact(key="triage-report", markdown=triage_markdown(report),
                             description=f"routed: {routed}")  # fmt: skip
    rows = [{"topic": g["topic"], "questions": g["count"], "examples": "; ".join(g["questions"][:3])}
            for g in report["gaps"]]  # fmt: skip
    create_table_artifact(key="triage-gaps", description="missing documents: topics to write up",
                          table=rows or [{"topic": "none", "questions": 0, "examples": ""}])  # fmt: skip
