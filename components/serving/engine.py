"""The assistant as a long-running service: the champion and the published index, loaded once per process, and
switched without a restart when the `champion` alias moves or a new index version is published.

Every answer is computed on one worker thread ("ragloop-engine"): generation is CPU-bound (two requests at once
only share the cores), the embedded index's SQLite connections belong to the thread that opened them, and a
switch happens on that thread between two batches. The questions waiting when the worker is free are answered
together, up to `api.max_batch`, by the answer pipeline the gate evaluation uses too
(components/behaviour/pipeline.py: one retrieval call, one batched generation: on 2 CPU cores a batch of 8 cost
0.3x the time per answer of eight single calls, measured on the default-size model). So an answer uses one
snapshot from its retrieval to its generation (never a new index with an old model, or the reverse), no answer
fails because of a switch, and the snapshot it replaced is closed at once: no answer holds it any more. A
request for an answer waits in the queue (`api.max_queue` at most). A request submitted with a listener receives its
answer's text as its batch generates it (components/behaviour/token_stream.py); its future holds the whole answer.

Before each answer (at most every `api.switch_check_s`), the worker reads the published version from the
manifest and the champion from the registry; a change loads the new model (the registry's adapter, or the base
model when there is no champion) or opens the new index, and from then on answers come from it. A registry that
cannot be read keeps the current model: the answer is served, the failure is logged and counted.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from components.behaviour.assistant import Generator, generator_identity
from components.behaviour.contract import contract_for
from components.behaviour.pipeline import Model, answer_batch
from components.behaviour.token_stream import Listener
from components.config import Params, Settings
from components.knowledge.manifest import Manifest, manifest_path
from components.knowledge.retrieval import IndexNotReadyError, Retriever
from components.records import Answered, model_label

log = logging.getLogger("ragloop.serving")


class EngineBusyError(RuntimeError):
    """More answers are waiting than `api.max_queue` allows."""


@dataclass
class _Index:
    version: int
    retriever: Retriever


@dataclass(frozen=True)
class _Waiting:
    question: str
    future: Future[Answered]
    listener: Listener | None  # streams the answer's text as it is generated


class Engine:
    """`Engine(params, settings)` loads the champion (or the base model) and the published index; `answer(q)` or
    `submit(q)` answers a question like `ragloop ask`. Thread-safe; `close()` when done."""

    def __init__(self, params: Params, settings: Settings) -> None:
        self.params = params
        self.settings = settings
        self.contract = contract_for(params)  # parses each answer and holds the live checks (answer_batch)
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ragloop-engine")
        self._lock = threading.Lock()
        self._queued = 0
        self._waiting: queue.SimpleQueue[_Waiting] = queue.SimpleQueue()
        self._model: Model | None = None
        self._index: _Index | None = None
        self._checked = float("-inf")
        self.counts = {"answered": 0, "failed": 0, "batches": 0, "model_switches": 0, "index_switches": 0,
                       "check_errors": 0, "assertion_errors": 0}  # fmt: skip
        self.last_error: str | None = None
        self._closed = False
        self._worker.submit(self._refresh, True).result()  # load now: the first answer does not pay for it

    # --- public --------------------------------------------------------------------------------------------

    def submit(self, question: str, listener: Listener | None = None) -> Future[Answered]:
        """Queue a question; the future holds its `Answered` (or the error). `listener` receives the answer's text
        as it is generated, on the worker thread (components/behaviour/token_stream.py), all of it before the
        future is done. EngineBusyError when the queue is full, RuntimeError after close()."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the engine is closed")
            if self._queued >= self.params.api.max_queue:
                raise EngineBusyError(f"{self._queued} answers are waiting (api.max_queue={self.params.api.max_queue})")
            self._queued += 1
        future: Future[Answered] = Future()
        future.add_done_callback(self._done)
        self._waiting.put(_Waiting(question, future, listener))
        self._worker.submit(self._drain)  # one drain per question: a drain that finds the queue empty is a no-op
        return future

    def answer(self, question: str, timeout: float | None = None) -> Answered:
        return self.submit(question).result(timeout)

    def versions(self) -> dict[str, Any]:
        """What answers now come from: {"model_version": "v<N>" | "base", "index_version": N | None}."""
        model, index = self._model, self._index
        return {"model_version": None if model is None else model.label,
                "index_version": None if index is None else index.version}  # fmt: skip

    def status(self) -> dict[str, Any]:
        with self._lock:
            queued = self._queued
        return {**self.versions(), "queued": queued, **self.counts, "last_error": self.last_error}

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._worker.submit(self._close_index).result()
        self._worker.shutdown(wait=True)
        self._model = None

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- on the worker thread ------------------------------------------------------------------------------

    def _done(self, future: Future[Answered]) -> None:
        with self._lock:
            self._queued -= 1
            if future.cancelled() or future.exception() is not None:
                self.counts["failed"] += 1
            else:
                self.counts["answered"] += 1

    def _drain(self) -> None:
        batch: list[_Waiting] = []
        while len(batch) < self.params.api.max_batch:
            try:
                waiting = self._waiting.get_nowait()
            except queue.Empty:
                break
            if waiting.future.set_running_or_notify_cancel():
                batch.append(waiting)
        if not batch:
            return
        self.counts["batches"] += 1
        listeners = [w.listener for w in batch]
        try:
            answers = self._answer_all([w.question for w in batch], listeners if any(listeners) else None)
        except BaseException as exc:
            for w in batch:
                w.future.set_exception(exc)
            return
        for w, answered in zip(batch, answers, strict=True):
            w.future.set_result(answered)

    def _answer_all(self, questions: list[str], listeners: list[Listener | None] | None = None) -> list[Answered]:
        self._refresh(False)
        model, index = self._model, self._index  # one snapshot for the whole batch
        if index is None:
            raise IndexNotReadyError(f"no index published under {self.params.paths.index}: run `ragloop index`")
        assert model is not None
        answers = answer_batch(questions, index.retriever, model, self.contract, self.params.generator,
                               listeners=listeners)  # fmt: skip
        errors = [a.check_errors for a in answers if a.check_errors]
        if errors:  # a declared assertion that raised fails its check; the answer is still given
            self.counts["assertion_errors"] += sum(len(e) for e in errors)
            log.warning("live checks raised on an answer: %s", errors)
        return answers

    def _refresh(self, force: bool) -> None:
        now = time.monotonic()
        if not force and now - self._checked < self.params.api.switch_check_s:
            return
        self._checked = now
        self._refresh_index()
        self._refresh_model()

    def _published(self) -> int:
        if self._index is not None:
            return self._index.retriever.manifest.published()
        path = manifest_path(self.params.paths.index)
        if not path.is_file():
            return 0
        manifest = Manifest(path)
        try:
            return manifest.published()
        finally:
            manifest.close()

    def _refresh_index(self) -> None:
        published = self._published()
        current = self._index
        if published == 0 or (current is not None and current.version == published):
            return
        started = time.perf_counter()
        if self.settings.chroma_host:  # a Chroma server: open the new version, then close the old one
            retriever = Retriever(self.params, self.settings)
            self._close_index()
        else:  # embedded Chroma shares one client per folder in a process: the old one must go first, and the
            self._close_index()  # new one then reads the files another process (`ragloop index`) wrote
            retriever = Retriever(self.params, self.settings)
        self._index = _Index(retriever.version, retriever)
        if current is not None:
            self.counts["index_switches"] += 1
        log.info("index v%s open (%.2f s)%s", retriever.version, time.perf_counter() - started,
                 "" if current is None else f", was v{current.version}")  # fmt: skip

    def _refresh_model(self) -> None:
        from components.tracking import registry

        current = self._model
        try:
            version = registry.champion_version(self.params, self.settings)  # one registry read per check
            if current is not None and current.version == version:
                return
            info = None if version is None else registry.fetch_version(self.params, self.settings, version)
        except Exception as exc:  # an unreachable registry must not fail the answer: keep the model we have
            self.counts["check_errors"] += 1
            self.last_error = f"champion check: {type(exc).__name__}: {exc}"
            log.warning("cannot read the champion; answering with %s: %s", self.versions()["model_version"], exc)
            if current is not None:
                return
            version, info = None, None  # nothing loaded yet: start on the base model, switch once it is readable
        started = time.perf_counter()
        generator = Generator(self.params, None if info is None else info.adapter_dir)
        self._model = Model(generator, model_label(version), version, generator_identity(self.params))
        if current is not None:
            self.counts["model_switches"] += 1
        log.info("model %s loaded (%.2f s)%s", self._model.label, time.perf_counter() - started,
                 "" if current is None else f", was {current.label}")  # fmt: skip

    def _close_index(self) -> None:
        if self._index is not None:
            index, self._index = self._index, None
            index.retriever.close()
