"""Triage runs in MLflow (experiment `triage.experiment`, one run per triage): the counts per route (metric and tag
names in metric_names.py), the gap report and the routed actions, and the watermark the next triage starts from
(the run tag TAG_UNTIL: one past the newest trace it read, so it never depends on the clock of the machine that
ran it)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from components.config import Params, Settings
from components.routes import BEHAVIOUR, MISSING, RETRIEVAL, ROUTES, STALE
from components.tracking import metric_names as mn
from components.tracking.mlflow_runs import client_for, experiment_id

TAG_UNTIL = "ragloop.until_ms"
OUTAGE = "outage"  # not a route: nothing to judge against (components/behaviour/triage.py)
SHOWN = (*ROUTES, OUTAGE)
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNIT_MS = {"s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}


def parse_since(text: str, now_ms: int) -> int:
    """`--since`: an ISO 8601 time (UTC when it names no zone) or a duration back from now ('90m', '2h', '7d')."""
    value = text.strip()
    m = _DURATION.match(value.lower())
    if m:
        return now_ms - int(float(m[1]) * _UNIT_MS[m[2]])
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"--since: expected an ISO time (2026-12-01T08:00) or a duration (90m, 2h, 7d), "
                         f"got {text!r}") from None  # fmt: skip
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


def iso(ms: int | None) -> str | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds")


def last_watermark(params: Params, settings: Settings) -> int | None:
    """Where the last finished triage stopped (None: no triage yet)."""
    client = client_for(params, settings)
    exp = client.get_experiment_by_name(params.triage.experiment)
    if exp is None:
        return None
    runs = client.search_runs([exp.experiment_id], filter_string="attributes.status = 'FINISHED'",
                              order_by=["attributes.start_time DESC"], max_results=20)  # fmt: skip
    marks = [int(r.data.tags[TAG_UNTIL]) for r in runs if r.data.tags.get(TAG_UNTIL, "").isdigit()]
    return max(marks) if marks else None


def log_triage_run(params: Params, settings: Settings, report: dict, markdown: str, reason: str) -> str:
    from mlflow.entities import Metric, RunTag

    client = client_for(params, settings)
    exp = experiment_id(client, params, settings, params.triage.experiment)
    t = report["traffic"]
    tags = {"mlflow.runName": f"triage-{reason}"[:250], "mlflow.note.content": markdown, "ragloop.stage": "triage",
            "ragloop.reason": reason, TAG_UNTIL: str(report["until_ms"]),
            mn.TAG_REINDEXED: str(report["reindex"]["ran"]).lower(),
            mn.TAG_REGRESSION_EVENT: str(report["regression"]["fired"]).lower(),
            mn.TAG_RETRIEVAL_EVENT: str(report["retrieval_regression"]["fired"]).lower()}  # fmt: skip
    run_id = str(client.create_run(exp, tags=tags).info.run_id)
    figures = {"traces": t["traces"], "failing": t["failing"], "late_traces": report["late_traces"],
               "feedback_given": t["feedback"]["given"], "feedback_negative": t["feedback"]["negative"],
               "feedback_rate": t["feedback"]["rate"] or 0.0, "gap_groups": len(report["gaps"]),
               "candidates_added": len(report["candidates"]["added"])}  # fmt: skip
    figures.update({mn.routed(r): n for r, n in report["routes"].items()})
    figures.update({f"live_{s}_fail_rate": v["fail_rate"] for s, v in t["slices"].items()})
    now = int(report["until_ms"])
    client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in figures.items()],
                     tags=[RunTag(k, v) for k, v in tags.items()])  # fmt: skip
    client.log_dict(run_id, report, "triage/report.json")
    client.log_dict(run_id, report["gaps"], "triage/gap_report.json")
    client.log_text(run_id, markdown, "triage/report.md")
    client.set_terminated(run_id, "FINISHED")
    return run_id


def last_triage(params: Params, settings: Settings) -> dict | None:
    """The last finished triage run's counts, for `ragloop status`."""
    client = client_for(params, settings)
    exp = client.get_experiment_by_name(params.triage.experiment)
    if exp is None:
        return None
    runs: list[Any] = client.search_runs([exp.experiment_id], filter_string="attributes.status = 'FINISHED'",
                                         order_by=["attributes.start_time DESC"], max_results=1)  # fmt: skip
    if not runs:
        return None
    m, tags = runs[0].data.metrics, runs[0].data.tags
    return {"run_id": runs[0].info.run_id, "at": iso(runs[0].info.start_time),
            "until": iso(int(tags[TAG_UNTIL])) if tags.get(TAG_UNTIL, "").isdigit() else None,
            "routed": mn.routed_counts(m, SHOWN), "reindexed": tags.get(mn.TAG_REINDEXED) == "true",
            "regression_event": tags.get(mn.TAG_REGRESSION_EVENT) == "true",
            "retrieval_event": tags.get(mn.TAG_RETRIEVAL_EVENT) == "true"}  # fmt: skip


def triage_markdown(report: dict) -> str:
    """The triage report a person reads (Prefect artifact, MLflow run note): what failed, where each failure went."""
    t, routed = report["traffic"], report["routed"]
    since = iso(report["since_ms"]) if report["since_ms"] else "the first one served"
    lines = [f"# Triage: {t['traces']} live answers since {since}", "",
             f"{t['failing']} failing; feedback on {t['feedback']['given']} ({t['feedback']['negative']} negative, "
             f"{t['feedback']['corrections']} corrections); {report['late_traces']} older answers re-read for late "
             "feedback.", "", "| route | answers | action |", "|---|---|---|"]  # fmt: skip
    actions = {BEHAVIOUR: f"fine-tune: candidate training cases in `{report['candidates']['file']}`",
               RETRIEVAL: "tune the retriever: the answering document ranked below the context (listed below)",
               STALE: "re-index" + (" (ran)" if report["reindex"]["ran"] else "") + ", now retrieved",
               MISSING: "write the missing document (gap report below)",
               OUTAGE: "none: nothing retrieved then or now (index empty or down), left for later"}  # fmt: skip
    lines += [f"| {r} | {len(routed[r])} | {actions[r]} |" for r in SHOWN]
    lines += ["", f"Re-index: {report['reindex']['why']}"]
    for r in (STALE, RETRIEVAL, BEHAVIOUR):
        if routed[r]:
            lines += ["", f"## {r.capitalize()}", ""] + [f"- {x['question']!r}: {x['reason']}" for x in routed[r]]
    if report["gaps"]:
        lines += ["", "## Missing documents (write these up)", ""]
        for g in report["gaps"]:
            asked = "; ".join(repr(q) for q in g["questions"][:5])
            lines.append(f"- **{g['topic']}** ({g['count']} question{'s' if g['count'] != 1 else ''}): {asked}")
    reg, ret = report["regression"], report["retrieval_regression"]
    lines += ["", f"## Live behaviour regression: {'event emitted' if reg['fired'] else 'none'}", ""]
    lines += [f"- {s['reason']}" for s in reg["slices"]] or ["- no live answers with contract checks"]
    lines += ["", f"## Live retrieval misses: {'event emitted' if ret['fired'] else 'none'}", "", f"- {ret['reason']}"]
    return "\n".join(lines) + "\n"
