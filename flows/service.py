"""ragloop as a service: serve every deployment from one process, and watch the documents folder.

`watch` turns file-system changes into one debounced `ragloop.documents.changed` event per burst; the reindex
deployment's trigger starts a run from it (queued behind a running one: the deployment's concurrency is 1).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from components.config import Params
from flows.events import DOCS_RESOURCE, DOCUMENTS_CHANGED

log = logging.getLogger("ragloop.service")


def serve(params: Params) -> None:
    """Serve the deployments (schedules, triggers, concurrency) until SIGINT or SIGTERM; Prefect's runner stops
    cleanly on either, pausing the schedules it served."""
    from prefect import serve as prefect_serve

    from flows.deployments import ensure_limits, runner_deployments

    ensure_limits(params)
    prefect_serve(*runner_deployments(params))


def relevant(params: Params, changes: Iterable[tuple[Any, str]]) -> list[str]:
    """The changed paths that can affect the index: suffixes the indexer reads, not hidden or temporary files."""
    root = params.paths.docs.resolve()
    suffixes = set(params.index.suffixes)
    out = []
    for _, raw in changes:
        path = Path(raw)
        try:
            rel = path.resolve().relative_to(root)
        except ValueError:
            continue
        if any(part.startswith(".") for part in rel.parts) or path.suffix.lower() not in suffixes:
            continue
        out.append(rel.as_posix())
    return sorted(set(out))


def emit_documents_changed(params: Params, paths: list[str]) -> None:
    from prefect.events import emit_event

    emit_event(
        event=DOCUMENTS_CHANGED,
        resource={
            "prefect.resource.id": f"{DOCS_RESOURCE}.{params.index.collection}",
            "ragloop.docs.root": str(params.paths.docs),
        },
        payload={"paths": paths[:100], "count": len(paths)},
    )


def watch(params: Params, emit: Callable[[Params, list[str]], None] = emit_documents_changed,
          stop: threading.Event | None = None, ready: threading.Event | None = None) -> None:  # fmt: skip
    """Emit one event per burst of document changes until `stop` is set (or SIGINT). A burst is every change
    until `service.watch_debounce_ms` passes without a new one (watchfiles' step), capped at ten times that."""
    from watchfiles import watch as watch_files

    quiet = params.service.watch_debounce_ms
    root = params.paths.docs
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: the documents folder (paths.docs) does not exist")
    if ready is not None:
        ready.set()
    for changes in watch_files(root, step=quiet, debounce=10 * quiet, stop_event=stop, rust_timeout=500,
                               yield_on_timeout=False, raise_interrupt=False):  # fmt: skip
        paths = relevant(params, changes)
        if paths:
            log.info("%d document(s) changed: emitting %s", len(paths), DOCUMENTS_CHANGED)
            emit(params, paths)
