"""The knowledge path as a Prefect flow: detect changes, chunk, embed, publish; then tidy, record, report."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cache

import numpy as np
from prefect import flow
from prefect.artifacts import create_markdown_artifact
from prefect.events import emit_event

from components.config import EmbedderParams, Params, Settings, load_params
from components.files import INDEX_METRICS, INDEX_SIZE_PLOT
from components.knowledge import indexer
from components.knowledge.embedder import Embedder
from components.knowledge.report import contract, to_markdown
from components.knowledge.retriever_pointer import effective_params
from components.knowledge.session import IndexSession, open_index
from components.tracking.lineage import write_plot
from components.tracking.mlflow_runs import log_index_run
from flows.deployments import EMBEDDING_LIMIT, slot
from flows.events import INDEX_PUBLISHED, INDEX_RESOURCE
from flows.tasks import io_task, step


@io_task("detect changes")
def detect_changes(session: IndexSession) -> indexer.Changes:
    return indexer.detect_changes(session)


@io_task("chunk changed documents")
def chunk(session: IndexSession, changes: indexer.Changes) -> indexer.Plan:
    return indexer.chunk_changes(session, changes)


@step("embed new chunks")
def embed(session: IndexSession, plan: indexer.Plan) -> dict:
    with _progress(len(plan.to_embed)) as advance:
        return indexer.embed_chunks(session, plan, advance)


@step("embed batch")
def embed_batch(embedder: EmbedderParams, identity: str, texts: list[str]) -> np.ndarray:
    return _worker_embedder(embedder, identity).encode(texts)


@cache
def _worker_embedder(embedder: EmbedderParams, identity: str) -> Embedder:
    """One model per worker process, loaded by its first batch."""
    return Embedder(embedder, identity)


def _embed_on_dask(params: Params, identity: str, texts: list[str]) -> list[np.ndarray]:
    """Embedding mapped over batches of chunk texts on a Dask cluster (prefect-dask): a local one of
    `service.dask_workers` processes, or the one at `service.dask_address`. The batches go to the tasks
    directly, never through flow parameters (the Prefect API caps those at 512 KiB)."""
    from prefect_dask import DaskTaskRunner

    s = params.service
    runner = DaskTaskRunner(address=s.dask_address) if s.dask_address else DaskTaskRunner(
        cluster_kwargs={"n_workers": s.dask_workers, "threads_per_worker": 1, "processes": True})  # fmt: skip
    n = s.embed_batch_chunks
    with runner:
        batches = [texts[i : i + n] for i in range(0, len(texts), n)]
        futures = [runner.submit(embed_batch, {"embedder": params.embedder, "identity": identity, "texts": batch})
                   for batch in batches]  # fmt: skip
        return [v for f in futures for v in f.result()]


def _embed(params: Params, session: IndexSession, plan: indexer.Plan) -> tuple[dict, float]:
    """The new chunks' vectors, holding one embedding slot of the global limit for the whole step."""
    t0 = time.perf_counter()
    if not plan.to_embed:
        return {}, 0.0
    with slot(EMBEDDING_LIMIT):
        if params.service.task_runner == "dask":
            done = _embed_on_dask(params, session.embedder_id, plan.embedding_texts())
            vectors = dict(zip(plan.to_embed, done, strict=True))
        else:
            vectors = embed(session, plan)
    return vectors, time.perf_counter() - t0


@io_task("publish index version")
def publish(session: IndexSession, plan: indexer.Plan, vectors: dict) -> dict:
    return indexer.publish(session, plan, vectors)


@io_task("tidy store")
def tidy(session: IndexSession) -> bool:
    return indexer.tidy_store(session)


@io_task("record run in mlflow")
def record(params: Params, settings: Settings, report: dict, reason: str) -> str:
    return log_index_run(params, settings, report, to_markdown(report), reason)


@step("write dvc metrics")
def write_metrics(params: Params, report: dict) -> None:
    """The DVC metrics of the published version. A run that published nothing leaves them as they are (once
    they exist): they describe what DVC tracks, and rewriting its timing would make `dvc status` report the
    index stage as changed after a command that changed nothing."""
    if not report["published"] and (params.paths.metrics / INDEX_METRICS).is_file():
        return
    params.paths.metrics.mkdir(parents=True, exist_ok=True)
    keep = {k: report[k] for k in ("index_version", "documents", "chunks", "duration_s", "freshness_lag_s")}
    (params.paths.metrics / INDEX_METRICS).write_text(json.dumps(keep, indent=2) + "\n")
    live = sum(v for k, v in report["documents"].items() if k not in {"deleted", "failed"})
    write_plot(params.paths.metrics, INDEX_SIZE_PLOT, [{"index_version": report["index_version"], "documents": live,
                                            "chunks": report["chunks"]["total"]}])  # fmt: skip


@flow(name="reindex", flow_run_name="reindex-{reason}", log_prints=True)
def reindex(params_file: str = "params.yaml", reason: str = "manual") -> dict:
    """Bring the index in line with the documents. Returns the `ragloop index --json` report."""
    t0 = time.perf_counter()
    params, settings = effective_params(load_params(params_file)), Settings.from_env()  # the champion retriever's
    with open_index(params, settings) as session:
        changes = detect_changes(session)
        plan = chunk(session, changes)
        vectors, embed_seconds = _embed(params, session, plan)
        report = publish(session, plan, vectors)
        report["compacted"] = tidy(session) if report["published"] else False
    report = indexer.finish_report(report, embed_seconds, time.perf_counter() - t0)
    report["mlflow_run_id"] = record(params, settings, report, reason) if indexer.worth_a_run_record(report) else None
    indexer.journal(params.paths.index, report, reason, report["mlflow_run_id"])
    write_metrics(params, report)
    _announce(report)
    return contract(report)


@contextmanager
def foreground() -> Iterator[None]:
    """For a reindex run in the foreground of a command (`ragloop index`): no flow-run heartbeats. Prefect's
    heartbeat thread sleeps in whole seconds and the flow waits for it on exit (0.75 s of a 3.2 s no-change
    command, bench/commands.py); nothing reads the heartbeats unless a zombie-detection automation is set up, and a
    foreground run that dies is seen by the user who started it. Deployment runs (`ragloop serve`, a worker)
    keep them."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield


def _announce(report: dict) -> None:
    create_markdown_artifact(key="reindex-report", markdown=to_markdown(report), description="Index change report")
    if report["published"]:
        emit_event(
            event=INDEX_PUBLISHED,
            resource={"prefect.resource.id": f"{INDEX_RESOURCE}.{report['collection']}"},
            payload={"index_version": report["index_version"], "chunks": report["chunks"]},
        )


@contextmanager
def _progress(total: int) -> Iterator[Callable[[int], None] | None]:
    """A Rich progress bar on an interactive terminal; nothing in logs, CI or `--json` pipelines."""
    if not total or not sys.stderr.isatty():
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    with Progress("[bold]embedding", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), transient=True) as bar:
        job = bar.add_task("embed", total=total)
        yield lambda n: bar.advance(job, n)
