"""MLflow, and only here: where runs go, and the index run's params, metrics, tags and change report.

Embedded default: a SQLite store and an artifact folder under `paths.mlflow`. `MLFLOW_TRACKING_URI` points
everything at a tracking server instead (the server then chooses where artifacts go).
"""

from __future__ import annotations

from typing import Any

from components.config import Params, Settings
from components.hashing import dvc_folder_md5
from components.tracking import metric_names
from components.tracking.lineage import git_commit


def tracking_uri(params: Params, settings: Settings) -> str:
    if settings.mlflow_tracking_uri:
        return settings.mlflow_tracking_uri
    params.paths.mlflow.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{params.paths.mlflow / 'mlflow.db'}"


def client_for(params: Params, settings: Settings) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri(params, settings))


def experiment_id(client: Any, params: Params, settings: Settings, name: str) -> str:
    found = client.get_experiment_by_name(name)
    if found is not None:
        return str(found.experiment_id)
    # Always give an embedded experiment an artifact location, else artifacts land in ./mlruns of the cwd.
    location = None if settings.mlflow_tracking_uri else (params.paths.mlflow / "artifacts" / name).as_uri()
    return str(client.create_experiment(name, artifact_location=location))


def index_metrics(report: dict) -> dict[str, float]:
    metrics: dict[str, float] = {
        "index_version": report["index_version"],
        metric_names.PUBLISHED: int(report["published"]),
    }
    metrics.update({metric_names.documents(k): v for k, v in report["documents"].items()})
    metrics.update({metric_names.chunks(k): v for k, v in report["chunks"].items()})
    metrics[metric_names.DURATION_S] = report.get("duration_s", 0.0)
    metrics["embed_chunks_per_s"] = report.get("embed_chunks_per_s", 0.0)
    metrics["freshness_lag_s"] = report["freshness_lag_s"]
    metrics["errors"] = len(report["errors"])
    return metrics


def log_index_run(params: Params, settings: Settings, report: dict, markdown: str, reason: str) -> str:
    """One MLflow run per index run: what changed, what it cost, and what it was built from."""
    from mlflow.entities import Metric, Param, RunTag

    client = client_for(params, settings)
    exp = experiment_id(client, params, settings, params.tracking.knowledge_experiment)
    tags = {
        "mlflow.runName": f"index-v{report['index_version']}" + ("" if report["published"] else "-unchanged"),
        "ragloop.stage": "index",
        "ragloop.reason": reason,
        "ragloop.collection": report["collection"],
        "git_commit": git_commit(params.source.parent),
        "docs_dvc_md5": dvc_folder_md5(params.paths.docs),
    }
    run = client.create_run(exp, tags=tags)
    run_id = str(run.info.run_id)
    logged = {
        "embedder.model": params.embedder.model,
        "embedder.identity": report["embedder"],
        "embedder.batch_size": params.embedder.batch_size,
        "embedder.batch_tokens": params.embedder.batch_tokens,
        "chunking.max_chars": params.chunking.max_chars,
        "chunking.min_chars": params.chunking.min_chars,
        "index.keep_versions": params.index.keep_versions,
    }
    now = _millis()
    client.log_batch(
        run_id,
        metrics=[Metric(k, float(v), now, 0) for k, v in index_metrics(report).items()],
        params=[Param(k, str(v)) for k, v in logged.items()],
        tags=[RunTag(k, str(v)) for k, v in tags.items()],
    )
    client.log_dict(run_id, report, "change_report.json")
    client.log_text(run_id, markdown, "change_report.md")
    client.set_terminated(run_id, "FINISHED")
    return run_id


def _millis() -> int:
    import time

    return int(time.time() * 1000)


CASES_TABLE = "cases.json"  # the per-case table of an evaluation run


def log_evaluation_run(params: Params, settings: Settings, summary: dict, outcomes: list[dict],
                       lineage: dict[str, str], reason: str,
                       baseline: dict[str, dict] | None = None) -> str:  # fmt: skip
    """One MLflow run per evaluation: per-slice rates with bounds (and their change against `baseline`, the
    champion's recorded slice rates), retrieval metrics, the route mix, the decision and actions, lineage tags, a
    chart of the slice pass rates against the baseline, and the per-case table (question, slices, route and the
    evidence that chose it, passed, output, retrieved sources)."""
    from mlflow.entities import Metric, RunTag

    from components.tracking import charts

    client = client_for(params, settings)
    exp = experiment_id(client, params, settings, params.tracking.evaluation_experiment)
    tags = {
        "mlflow.runName": f"evaluate-{summary['model_version']}",
        "mlflow.note.content": evaluation_note(summary, baseline, reason),
        "ragloop.stage": "evaluate",
        "ragloop.reason": reason,
        "ragloop.decision": summary["decision"],
        "ragloop.actions": ",".join(summary["actions"]) or "none",
        "ragloop.retrieval_regressed": ",".join(summary["retrieval_test"]["regressed"]) or "none",
        "ragloop.regressed_slices": ",".join(summary["regressed_slices"]) or "none",
        "model_version": summary["model_version"],
        "index_version": str(summary["index_version"]),
        "git_commit": git_commit(params.source.parent),
        **lineage,
    }
    run_id = str(client.create_run(exp, tags=tags).info.run_id)
    now = _millis()
    names = metric_names
    metrics = [Metric(names.slice_stat(name, k), float(v), now, 0)
               for name, s in summary["slices"].items() for k, v in s.items()]  # fmt: skip
    for name, s in summary["slices"].items():
        if baseline and name in baseline:
            base = float(baseline[name]["pass_rate"])
            metrics += [Metric(names.baseline_pass_rate(name), base, now, 0),
                        Metric(names.vs_baseline(name), float(s["pass_rate"]) - base, now, 0)]  # fmt: skip
    metrics += [Metric(names.retrieval(k), float(v), now, 0) for k, v in summary["retrieval"].items()]
    metrics += [Metric(names.route(k), float(v), now, 0) for k, v in summary["routes"].items()]
    labelled = summary.get("labelled_retrieval")
    if labelled:
        metrics += [Metric(names.labelled_retrieval(k), float(v), now, 0) for k, v in labelled["metrics"].items()]
        tags["ragloop.retrieval_eval_run"] = str(labelled["mlflow_run_id"])
    client.log_batch(run_id, metrics=metrics, tags=[RunTag(k, str(v)) for k, v in tags.items()])
    client.log_dict(run_id, summary, "evaluation/summary.json")
    if baseline:
        client.log_dict(run_id, baseline, "evaluation/baseline_slices.json")
    title = f"{summary['model_version']} on index v{summary['index_version']}"
    fig = charts.slice_chart(summary["slices"], baseline,
                             title + (" vs the champion's baseline" if baseline else " (no baseline yet)"))  # fmt: skip
    try:
        client.log_figure(run_id, fig, "charts/slice_pass_rates.png")
    finally:
        charts.close(fig)
    if outcomes:
        client.log_table(run_id, data={k: [o[k] for o in outcomes] for k in outcomes[0]}, artifact_file=CASES_TABLE)
    client.set_terminated(run_id, "FINISHED")
    return run_id


def evaluation_note(summary: dict, baseline: dict[str, dict] | None, reason: str) -> str:
    """The run's description (markdown, shown at the top of its MLflow page)."""
    lines = [f"**Decision: {summary['decision']}** ({reason}; model {summary['model_version']}, "
             f"index v{summary['index_version']})", "",
             "| slice | pass rate | 95% interval | n | champion baseline |", "|---|---|---|---|---|"]  # fmt: skip
    for name, s in sorted(summary["slices"].items()):
        base = f"{baseline[name]['pass_rate']:.2f}" if baseline and name in baseline else "-"
        lines.append(f"| {name} | {s['pass_rate']:.2f} | {s['ci_low']:.2f}-{s['ci_high']:.2f} | {s['n']} | {base} |")
    r = summary["routes"]
    lines += ["", f"Cases: {r['pass']} pass; failures: {r['behaviour']} behaviour (fine-tune), {r['retrieval']} "
              f"retrieval (tune the retriever), {r['stale']} stale (re-index), {r['missing']} missing (write the "
              f"document). Actions: {', '.join(summary['actions']) or 'none'}."]  # fmt: skip
    lines += [f"- {r}" for r in summary.get("reasons", [])]
    lines += [f"- retrieval: {r}" for r in summary["retrieval_test"]["reasons"]]
    if summary.get("reindex_documents"):
        lines.append(f"Stale documents (re-index): {', '.join(summary['reindex_documents'][:10])}")
    if summary.get("missing_documents"):
        lines.append(f"Not in the index (write them): {', '.join(summary['missing_documents'][:10])}")
    labelled = summary.get("labelled_retrieval")
    if labelled:
        figures = ", ".join(f"{k} {v:.3f}" for k, v in labelled["metrics"].items())
        lines += ["", f"Labelled queries ({labelled['queries_file']}, {labelled['scored']} scored, "
                  f"{labelled['level']} level): {figures}; run {labelled['mlflow_run_id']}"]  # fmt: skip
    return "\n".join(lines)


def start_training_run(params: Params, settings: Settings, experiment: str, stage: str, run_name: str,
                       recipe: tuple[str, dict[str, Any]], tags: dict[str, str], reason: str) -> str:  # fmt: skip
    """A training run (the generator's fine-tune, the retriever's), left running: the model is logged into it
    before it ends. `recipe`: (params section name, its values), logged as `<section>.<key>` params."""
    from mlflow.entities import Param

    client = client_for(params, settings)
    exp = experiment_id(client, params, settings, experiment)
    run_tags = {"mlflow.runName": run_name, "ragloop.stage": stage, "ragloop.reason": reason,
                "git_commit": git_commit(params.source.parent), **tags}  # fmt: skip
    run_id = str(client.create_run(exp, tags=run_tags).info.run_id)
    section, values = recipe
    client.log_batch(run_id, params=[Param(f"{section}.{k}", str(v)) for k, v in values.items()])
    return run_id


def start_finetune_run(params: Params, settings: Settings, lineage: dict[str, str], reason: str) -> str:
    """The fine-tune's MLflow run, left running: the adapter is logged into it before it ends."""
    return start_training_run(params, settings, params.tracking.finetune_experiment, "finetune", "finetune-lora",
                              ("finetune", params.finetune.model_dump()), lineage, reason)  # fmt: skip


def log_base_model_run(params: Params, settings: Settings, info: dict, machine: dict[str, str]) -> str:
    """The base model's build in the fine-tune experiment: its params, the work (steps, tokens), what it cost
    here (seconds, tokens/s) and the machine; tagged truncated when the safety cap cut it short."""
    from mlflow.entities import Metric, Param, RunTag

    client = client_for(params, settings)
    exp = experiment_id(client, params, settings, params.tracking.finetune_experiment)
    tags = {"mlflow.runName": "base-model", "ragloop.stage": "base_model",
            "git_commit": git_commit(params.source.parent),
            "ragloop.truncated": str(bool(info["truncated"])).lower(), **machine}  # fmt: skip
    run_id = str(client.create_run(exp, tags=tags).info.run_id)
    now = _millis()
    figures = {k: float(v) for k, v in info.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    client.log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in figures.items() if v == v],
                     params=[Param(f"base_model.{k}", str(v)) for k, v in params.base_model.model_dump().items()],
                     tags=[RunTag("ragloop.base_model_path", str(info["path"]))])  # fmt: skip
    client.set_terminated(run_id, "FAILED" if info["truncated"] else "FINISHED")
    return run_id


def log_training(params: Params, settings: Settings, run_id: str, losses: list[float], metrics: dict[str, float],
                 tags: dict[str, str], title: str = "LoRA fine-tune") -> None:  # fmt: skip
    """The loss curve (one point per step), the work and its cost (steps, tokens, seconds) and the machine."""
    from mlflow.entities import Metric, RunTag

    client = client_for(params, settings)
    now = _millis()
    client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
    curve = [Metric("train_loss", loss, now, step) for step, loss in enumerate(losses, 1)]
    for i in range(0, len(curve), 900):
        client.log_batch(run_id, metrics=curve[i : i + 900])
    client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()])
    if losses:
        from components.tracking import charts

        fig = charts.loss_chart(losses, f"{title}: {len(losses)} steps")
        try:
            client.log_figure(run_id, fig, "charts/loss_curve.png")
        finally:
            charts.close(fig)


def log_figures(params: Params, settings: Settings, run_id: str, figures: dict[str, float]) -> None:
    from mlflow.entities import Metric

    now = _millis()
    client_for(params, settings).log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in figures.items()])


def mark_truncated(params: Params, settings: Settings, run_id: str, steps: int, planned: int) -> None:
    """A run the wall-clock cap cut short: tagged, so no one mistakes it for a reproducible result."""
    from mlflow.entities import RunTag

    client_for(params, settings).log_batch(
        run_id, tags=[RunTag("ragloop.truncated", "true"), RunTag("ragloop.truncated_at", f"{steps}/{planned} steps")]
    )


def log_verdict(params: Params, settings: Settings, run_id: str, verdict: str, gains: dict[str, float]) -> None:
    """The gate's verdict on a fine-tune run (tag `ragloop.gate`) and what it bought per slice (`gate_gain_*`)."""
    from mlflow.entities import Metric, RunTag

    now = _millis()
    client_for(params, settings).log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in gains.items()],
                                           tags=[RunTag("ragloop.gate", verdict)])  # fmt: skip


def end_run(params: Params, settings: Settings, run_id: str, ok: bool) -> None:
    client_for(params, settings).set_terminated(run_id, "FINISHED" if ok else "FAILED")
