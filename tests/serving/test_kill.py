"""Answers never wait on the tracking store, and a server killed at any moment loses nothing it answered or
accepted: `ragloop api` as a real process, its store held locked (answers keep coming, their traces wait on disk),
then killed with SIGKILL while clients send answers and feedback, restarted, and the store counted."""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
import time
from collections import Counter

import httpx
import pytest

from components.config import Settings
from components.tracking import feedback, trace_writer
from components.tracking.mlflow_runs import client_for, tracking_uri
from components.tracking.trace_schema import USER_FEEDBACK
from tests.helpers import Deployment, wait_until
from tests.serving.conftest import ApiServer, build_deployment

pytestmark = pytest.mark.slow

SETTINGS = Settings(mlflow_tracking_uri=None, chroma_host=None, chroma_port=8000, chroma_ssl=False)
ASK = {"model": "ragloop", "messages": [{"role": "user", "content": "I lost my card"}]}


@pytest.fixture(scope="module")
def deployment(tmp_path_factory) -> Deployment:
    dep = build_deployment(tmp_path_factory.mktemp("kill"), adapters=0)
    dep.index()
    return dep


def _stored_traces(dep: Deployment) -> Counter[str]:
    params = dep.params()
    client = client_for(params, SETTINGS)
    exp = client.get_experiment_by_name(params.tracking.serving_experiment).experiment_id
    ids: Counter[str] = Counter()
    token = None
    while True:
        page = client.search_traces(locations=[exp], max_results=500, page_token=token, include_spans=False)
        ids.update(t.info.trace_id for t in page)
        token = page.token
        if not token:
            return ids


def test_answers_return_while_the_store_is_locked_and_their_traces_land_after(deployment) -> None:
    api = ApiServer(deployment).start()
    db = tracking_uri(deployment.params(), SETTINGS).removeprefix("sqlite:///")
    lock = sqlite3.connect(db, timeout=60)
    try:
        with httpx.Client(base_url=api.url, timeout=300) as http:
            http.post("/v1/chat/completions", json=ASK)  # warm
            wait_until(lambda: api.health()["spool_depth"] == 0, "the spool delivered", 300, api.proc, api.log)
            lock.execute("BEGIN IMMEDIATE")  # the one SQLite writer is ours: every store write waits, then fails
            ids = []
            for _ in range(3):
                t = time.monotonic()
                got = http.post("/v1/chat/completions", json=ASK)
                assert got.status_code == 200 and got.json()["ragloop"]["trace_queued"] is True, got.text
                assert time.monotonic() - t < 30, "the answer waited on the store"
                ids.append(got.headers["x-ragloop-trace-id"])
            sent = http.post("/v1/feedback", json={"trace_id": ids[0], "value": True, "comment": "while locked"})
            assert sent.status_code == 202 and sent.json()["status"] == "queued", sent.text
            assert api.health()["spool_depth"] >= 4 and not set(ids) & set(_stored_traces(deployment))
            lock.rollback()
            wait_until(lambda: api.health()["spool_depth"] == 0, "the spool delivered", 300, api.proc, api.log)
        stored = _stored_traces(deployment)
        assert [stored[i] for i in ids] == [1, 1, 1]
        trace = trace_writer.read_trace(deployment.params(), SETTINGS, ids[0])
        assert [a.rationale for a in trace.info.assessments if a.name == USER_FEEDBACK] == ["while locked"]
    finally:
        lock.close()
        api.stop()


def test_sigkill_under_load_loses_no_answered_trace_and_no_accepted_feedback(deployment) -> None:
    api = ApiServer(deployment).start()
    answered: list[str] = []
    accepted: list[tuple[str, str]] = []  # (trace id, feedback id) of each feedback call answered 200 or 202
    stop = threading.Event()

    def client(n: int) -> None:
        with httpx.Client(base_url=api.url, timeout=300) as http:
            for i in range(10_000):
                if stop.is_set():
                    return
                try:
                    got = http.post("/v1/chat/completions", json=ASK)
                    if got.status_code != 200:
                        continue
                    trace_id = got.json()["ragloop"]["trace_id"]
                    answered.append(trace_id)
                    sent = http.post("/v1/feedback", json={"trace_id": trace_id, "value": i % 2 == 0,
                                                           "comment": f"client {n} call {i}"})  # fmt: skip
                    if sent.status_code in {200, 202}:
                        accepted.append((trace_id, sent.json()["feedback_id"]))
                except httpx.HTTPError:  # the server died during the call: never answered, or never accepted
                    return

    clients = [threading.Thread(target=client, args=(n,)) for n in range(4)]
    for c in clients:
        c.start()
    try:
        wait_until(lambda: len(accepted) >= 12, "twelve answers with feedback", 600, api.proc, api.log)
    finally:
        assert api.proc is not None
        os.killpg(api.proc.pid, signal.SIGKILL)  # mid-flight: answers generating, traces and feedback spooled
        api.proc.wait(timeout=60)
        stop.set()
        for c in clients:
            c.join(timeout=300)
    assert len(answered) >= 12

    again = ApiServer(deployment).start()  # delivers what the spools hold at start-up
    try:
        wait_until(lambda: again.health()["spool_depth"] == 0, "the spool delivered", 600, again.proc, again.log)
    finally:
        again.stop()
    stored = _stored_traces(deployment)
    assert {t: stored[t] for t in answered} == dict.fromkeys(answered, 1)  # every answered trace exactly once
    for trace_id, feedback_id in accepted:
        trace = trace_writer.read_trace(deployment.params(), SETTINGS, trace_id)
        mine = [a for a in trace.info.assessments
                if a.name == USER_FEEDBACK and (a.metadata or {}).get(feedback.FEEDBACK_ID) == feedback_id]  # fmt: skip
        assert len(mine) == 1, (trace_id, feedback_id)
    assert not list((deployment.params().paths.serving / "feedback-rejected").glob("*.json"))
