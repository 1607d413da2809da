"""What the system has recorded, read back: `ragloop status` (where things stand now) and the evidence that
`ragloop advise` weighs (index runs, evaluations, fine-tunes, gate verdicts).

Everything comes from the deployment's own records: the index manifest and its documents folder, and the MLflow
tracking server or embedded store (runs of the knowledge, evaluation and fine-tune experiments, and the
registry). Nothing is estimated: a figure that has no record behind it is reported as missing.
"""

from __future__ import annotations

import time
from collections import Counter
from datetime import UTC, datetime
from typing import Any

from components.config import Params, Settings
from components.records import model_label
from components.routes import (
    BEHAVIOUR,
    FINETUNE,
    KNOWLEDGE_ROUTES,
    MISSING,
    PASS,
    RETRIEVAL,
    ROUTES,
    STALE,
    TUNE_RETRIEVER,
    WRITE_DOCUMENTS,
)
from components.tracking import metric_names
from components.tracking.mlflow_runs import client_for, tracking_uri
from components.tracking.production import production_evidence

DAY_MS = 86_400_000


def _iso(ms: float | None) -> str | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds")


def _runs(client: Any, name: str, since_ms: int | None = None, limit: int = 1000, stage: str | None = None
          ) -> list[Any]:  # fmt: skip
    """Runs of an experiment, newest first (none when the experiment does not exist yet); with `stage`, only the
    runs tagged `ragloop.stage` so (the fine-tune experiment also holds the base model's builds)."""
    exp = client.get_experiment_by_name(name)
    if exp is None:
        return []
    terms = [f"attributes.start_time >= {since_ms}"] if since_ms is not None else []
    terms += [f"tags.`ragloop.stage` = '{stage}'"] if stage else []
    flt = " and ".join(terms)
    return list(client.search_runs([exp.experiment_id], filter_string=flt, order_by=["attributes.start_time DESC"],
                                   max_results=limit))  # fmt: skip


def _versions(client: Any, name: str) -> tuple[list[Any], dict[str, str]]:
    """All versions of the registered model (newest first) and its aliases; nothing when it does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        aliases = dict(client.get_registered_model(name).aliases)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return [], {}
        raise
    found = client.search_model_versions(f"name = '{name}'")
    return sorted(found, key=lambda v: int(v.version), reverse=True), {k: str(v) for k, v in aliases.items()}


# -- the index -------------------------------------------------------------------------------------------------
def index_state(params: Params) -> dict:
    """The published version, when it was published, its size, and what changed in the documents since (the
    same stat-then-hash comparison a re-index starts with; read-only, no lock, nothing embedded)."""
    from components.knowledge.indexer import detect_changes
    from components.knowledge.manifest import manifest_path
    from components.knowledge.session import open_index

    if not manifest_path(params.paths.index).is_file():
        return {"version": None, "reindex_pending": True, "reason": f"no index under {params.paths.index} yet"}
    with open_index(params, lock=False) as s:
        version = s.manifest.published()
        info = s.manifest.version(version)
        docs = s.manifest.docs_at(version) if version else {}
        chunks = len(s.manifest.records_at(version)) if version else 0
        changes = detect_changes(s)
    pending = {"added": len(changes.added), "modified": len(changes.modified), "deleted": len(changes.deleted),
               "renamed": len(changes.renamed)}  # fmt: skip
    published_at = info.created_at if info else None
    reasons = [f"{n} document(s) {k} since version {version}" for k, n in pending.items() if n]
    if changes.key_changed:
        reasons.append("the embedder or chunker changed: every document is re-chunked and re-embedded")
    if not version:
        reasons.append("nothing published yet")
    return {
        "version": version or None,
        "published_at": None if published_at is None else _iso(published_at * 1000),
        "age_s": None if published_at is None else round(time.time() - published_at, 1),
        "documents": len(docs),
        "stale_documents": sum(1 for row in docs.values() if row.stale),
        "chunks": chunks,
        "collection": info.collection if info else None,
        "changes_since": pending,
        "reindex_pending": bool(reasons),
        "reason": "; ".join(reasons) or "the documents match the published version",
    }


# -- the registry and the runs ---------------------------------------------------------------------------------
def _version_row(client: Any, mv: Any, aliases: dict[str, str]) -> dict:
    rates: dict[str, float] = {}
    if mv.run_id:
        rates = metric_names.gate_pass_rates(client.get_run(mv.run_id).data.metrics)
    return {
        "version": str(mv.version),
        "aliases": sorted(a for a, v in aliases.items() if v == str(mv.version)),
        "gate": mv.tags.get("gate", "pending"),
        "registered_at": _iso(mv.creation_timestamp),
        "run_id": mv.run_id,
        "parent_version": mv.tags.get("parent_version"),
        "index_version": mv.tags.get("index_version"),
        "gate_pass_rates": dict(sorted(rates.items())),
    }


def _evaluation_row(run: Any) -> dict:
    tags, m = run.data.tags, run.data.metrics
    return {
        "run_id": run.info.run_id,
        "at": _iso(run.info.start_time),
        "start_ms": int(run.info.start_time),
        "model_version": tags.get("model_version"),
        "index_version": tags.get("index_version"),
        "decision": tags.get("ragloop.decision"),
        "regressed_slices": [s for s in tags.get("ragloop.regressed_slices", "none").split(",") if s != "none"],
        "pass_rates": dict(sorted(metric_names.slice_pass_rates(m).items())),
        "routes": metric_names.route_counts(m, (PASS, *ROUTES)),
        "actions": [a for a in tags.get("ragloop.actions", "none").split(",") if a != "none"],
        "retrieval": metric_names.retrieval_metrics(m),
        "reason": tags.get("ragloop.reason"),
    }


def _champion_evaluations(client: Any, params: Params, since_ms: int | None = None) -> list[dict]:
    """Evaluations of the serving model (the champion, or the base before any), newest first; a candidate's
    evaluation inside a fine-tune is not one."""
    runs = _runs(client, params.tracking.evaluation_experiment, since_ms)
    return [_evaluation_row(r) for r in runs if r.data.tags.get("model_version") != "candidate"]


def status(params: Params, settings: Settings) -> dict:
    """`ragloop status`: the index and its freshness, champion and previous with their gate-set rates, the last
    evaluation's decision, and what is pending (re-index, fine-tune, gate)."""
    client = client_for(params, settings)
    index = index_state(params)
    versions, aliases = _versions(client, params.tracking.registered_model)
    by_version = {str(v.version): v for v in versions}
    models = {alias: (_version_row(client, by_version[v], aliases) if v in by_version else None)
              for alias, v in ((a, aliases.get(a)) for a in ("champion", "previous"))}  # fmt: skip
    ungated = [str(v.version) for v in versions if "gate" not in v.tags]
    evaluations = _champion_evaluations(client, params)
    last = evaluations[0] if evaluations else None
    champion_label = model_label(aliases.get("champion"))
    finetunes = _runs(client, params.tracking.finetune_experiment, limit=50, stage="finetune")

    pending_finetune, why_finetune = False, "no evaluation yet: run `ragloop evaluate`"
    if last is not None:
        started_after = [r for r in finetunes if r.info.start_time >= last["start_ms"]]
        if FINETUNE not in last["actions"]:
            why_finetune = (f"the last evaluation found no behaviour regression ({last['routes']['behaviour']} "
                            "behaviour failures with the right context)")  # fmt: skip
        elif started_after:
            why_finetune = f"the regression was answered by fine-tune run {started_after[-1].info.run_id}"
        else:
            pending_finetune = True
            why_finetune = f"the last evaluation found a behaviour regression in {', '.join(last['regressed_slices'])}"
    evaluation_current = last is not None and (last["model_version"], str(last["index_version"])) == (
        champion_label, str(index["version"]))  # fmt: skip
    knowledge = knowledge_pending(last if evaluation_current else None, index)
    return {
        "index": index,
        "champion": models["champion"],
        "previous": models["previous"],
        "last_evaluation": None if last is None else {**last, "current": evaluation_current},
        "pending": {
            "reindex": index["reindex_pending"],
            "reindex_reason": index["reason"],
            "finetune": pending_finetune,
            "finetune_reason": why_finetune,
            **knowledge,
            "gate": ungated,
            "evaluation": not evaluation_current,
            "evaluation_reason": "the last evaluation is of the current champion on the published index"
            if evaluation_current
            else f"no evaluation of {champion_label} on index version {index['version']} yet",
        },
        "production": production(params, settings, int(time.time() * 1000) - DAY_MS),
        "tracking_uri": tracking_uri(params, settings),
    }


def knowledge_pending(last: dict | None, index: dict) -> dict[str, Any]:
    """What the last evaluation (None: none of the champion on the published index) asks of the retrieval pipeline
    beyond a re-index (which the index's own state decides): documents to write and a retriever to tune. Each is
    pending only when it can change something: an evaluation of another index version asks nothing."""
    if last is None:
        why = "no evaluation of the champion on the published index yet"
        return {"write_documents": False, "write_documents_reason": why, "tune_retriever": False,
                "tune_retriever_reason": why}  # fmt: skip
    routes, actions = last["routes"], last["actions"]
    missing = routes.get(MISSING, 0)
    write = WRITE_DOCUMENTS in actions
    tune = TUNE_RETRIEVER in actions
    return {
        "write_documents": write,
        "write_documents_reason": (f"{missing} gate case(s) fail because no document in the index answers them: "
                                   "write them (`ragloop evaluate --json`: missing_documents)") if write
        else "every gate case's gold document is in the index",
        "tune_retriever": tune,
        "tune_retriever_reason": (f"retrieval misses are significant ({routes.get(RETRIEVAL, 0)} cases whose "
                                  "document is indexed and current but not in the context): `ragloop tune-retriever`")
        if tune else f"{routes.get(RETRIEVAL, 0)} retrieval misses, not significantly worse than the champion's "
        "nor below the floors",
        "reindex_note": f"{routes.get(STALE, 0)} gate case(s) failed on a stale document"
        + ("" if index.get("reindex_pending") else "; the index now matches the documents"),
    }  # fmt: skip


# -- the evidence for `advise` ---------------------------------------------------------------------------------
def _index_run_count(params: Params, recorded: list[Any], since_ms: int) -> int:
    """Index runs in the window: the manifest journals every run (a run that changed nothing has no MLflow run);
    MLflow's index runs from before the journal began (older deployments) are added."""
    from components.knowledge.manifest import Manifest, manifest_path

    path = manifest_path(params.paths.index)
    if not path.is_file():
        return len(recorded)
    manifest = Manifest(path)
    try:
        journaled, first = manifest.runs_since(since_ms / 1000), manifest.runs_since(0)
    finally:
        manifest.close()
    began_ms = first[-1].finished_at * 1000 if first else float("inf")
    ids = {r.mlflow_run_id for r in first}
    return len(journaled) + sum(1 for r in recorded if r.info.start_time < began_ms and r.info.run_id not in ids)


def evidence(params: Params, settings: Settings, days: int = 30) -> dict:
    """The recorded history `ragloop advise` weighs, over the last `days` days."""
    from components.behaviour.suite import SuiteError

    client = client_for(params, settings)
    since = int(time.time() * 1000) - days * DAY_MS
    index_runs = _runs(client, params.tracking.knowledge_experiment, since)
    published = [r for r in index_runs if r.data.metrics.get(metric_names.PUBLISHED, 0) > 0]

    def total(key: str) -> int:
        return int(sum(r.data.metrics.get(key, 0) for r in published))

    latest_chunks = int(index_runs[0].data.metrics.get(metric_names.chunks("total"), 0)) if index_runs else 0
    documents = {k: total(metric_names.documents(k)) for k in ("added", "modified", "deleted", "renamed")}
    embedded, deleted = total(metric_names.chunks("embedded")), total(metric_names.chunks("deleted"))
    unchanged = metric_names.documents("unchanged")
    knowledge = {
        "index_runs": _index_run_count(params, index_runs, since),
        "published_versions": len(published),
        "documents_changed": sum(documents.values()),
        "documents": documents,
        "chunks_embedded": embedded,
        "chunks_deleted": deleted,
        "chunks_now": latest_chunks,
        "churn": round((embedded + deleted) / latest_chunks, 4) if latest_chunks else 0,
        "index_seconds": round(sum(r.data.metrics.get(metric_names.DURATION_S, 0.0) for r in published), 1),
        "first_index_in_window": bool(published) and published[-1].data.metrics.get(unchanged, 0) == 0,
    }

    evaluations = _champion_evaluations(client, params, since)
    cases = {k: sum(e["routes"][k] for e in evaluations) for k in (PASS, *ROUTES)}
    n_cases = sum(cases.values())
    latest = evaluations[0] if evaluations else None
    knowledge_cases = sum(cases[r] for r in KNOWLEDGE_ROUTES)
    behaviour = {
        "evaluations": len(evaluations),
        "cases": cases,
        "behaviour_share": round(cases[BEHAVIOUR] / n_cases, 4) if n_cases else None,
        "knowledge_share": round(knowledge_cases / n_cases, 4) if n_cases else None,
        "latest": latest,
        "regressions": sum(1 for e in evaluations if FINETUNE in e["actions"]),
    }

    try:
        from components.behaviour.loop import load_suite

        gate, train = load_suite(params)
        by_intent = dict(sorted(Counter(c.intent for c in train).items()))
        examples: dict[str, Any] = {"train": len(train), "gate": len(gate), "train_by_intent": by_intent}
    except (SuiteError, OSError) as exc:
        examples = {"train": 0, "gate": 0, "error": str(exc)}

    versions, _ = _versions(client, params.tracking.registered_model)
    version_of = {v.run_id: str(v.version) for v in versions if v.run_id}
    tunes = []
    for r in _runs(client, params.tracking.finetune_experiment, since, stage="finetune"):
        m = r.data.metrics
        tunes.append({
            "run_id": r.info.run_id, "at": _iso(r.info.start_time), "version": version_of.get(r.info.run_id),
            "status": r.info.status, "verdict": r.data.tags.get("ragloop.gate", "pending"),
            "train_seconds": m.get("train_seconds"), "train_steps": m.get("train_steps"),
            "train_tokens_per_s": m.get("train_tokens_per_s"), "training_pairs": m.get("training_pairs"),
            "gains": {k: round(v, 4) for k, v in sorted(metric_names.gate_gains(m).items())},
        })  # fmt: skip
    return {"days": days, "knowledge": knowledge, "index": index_state(params), "behaviour": behaviour,
            "examples": examples, "finetunes": tunes,
            "production": production_evidence(params, settings, since)}  # fmt: skip


def production(params: Params, settings: Settings, since_ms: int) -> dict:
    """`ragloop status`: the live traffic of the last day and the last triage; a triage is pending while failing
    answers wait to be routed."""
    from components.tracking.triage_runs import last_triage

    live = production_evidence(params, settings, since_ms)
    pending = live.get("untriaged_failing", 0)
    return {**live, "window_h": 24, "last_triage": last_triage(params, settings), "triage_pending": bool(pending),
            "triage_reason": f"{pending} failing live answer(s) not triaged yet: `ragloop triage`" if pending
            else "every failing live answer of the last 24 h is routed"}  # fmt: skip
