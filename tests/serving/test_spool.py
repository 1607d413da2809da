"""Feedback is never lost: `ragloop api` against a real `mlflow server` that is stopped in the middle of a stream of
feedback calls and started again. The calls keep succeeding (202: queued on disk), answers are still served,
and once the server is back every feedback lands on its trace exactly once."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from components.config import Settings
from components.tracking import feedback, trace_writer, traces
from components.tracking.trace_schema import USER_FEEDBACK
from tests.helpers import wait_until
from tests.service.servers import mlflow_server
from tests.serving.conftest import ApiServer, build_deployment

pytestmark = [pytest.mark.slow, pytest.mark.server]


def test_feedback_sent_while_the_tracking_server_is_down_lands_once_it_is_back(tmp_path) -> None:
    server = mlflow_server(tmp_path).start()
    uri = server.health.removesuffix("/health")
    settings = Settings(mlflow_tracking_uri=uri, chroma_host=None, chroma_port=8000, chroma_ssl=False)
    api = None
    try:
        dep = build_deployment(tmp_path / "dep", adapters=0)  # no champion on this store: the base model answers
        dep.index()
        api = ApiServer(dep, env={"MLFLOW_TRACKING_URI": uri}).start()
        with httpx.Client(base_url=api.url, timeout=300) as http:
            trace_ids = []
            for i in range(6):
                got = http.post(
                    "/v1/chat/completions",
                    json={"model": "ragloop", "messages": [{"role": "user", "content": f"card {i}"}]},
                )
                assert got.status_code == 200 and got.json()["ragloop"]["traced"] is True, got.text
                trace_ids.append(got.json()["ragloop"]["trace_id"])
            # answers' traces reach the store in the background: the first feedback calls find theirs there
            wait_until(lambda: api.health()["spool_depth"] == 0, "the traces delivered", 300, api.proc, api.log)

            sent: list[dict] = []
            stopped_at: list[float] = []

            def send_feedback() -> None:
                for n, trace_id in enumerate(trace_ids):
                    started = time.monotonic()
                    body = {"trace_id": trace_id, "value": n % 2 == 0, "comment": f"feedback {n}",
                            **({"correction": "intent: card_lost"} if n == 4 else {})}  # fmt: skip
                    got = http.post("/v1/feedback", json=body)
                    sent.append({**got.json(), "started": started, "http": got.status_code})
                    if n >= 1:
                        wait_until(lambda: bool(stopped_at), "the tracking server stopped", 300)

            sender = threading.Thread(target=send_feedback)
            sender.start()
            wait_until(lambda: len(sent) >= 2, "two feedback calls", 300, api.proc, api.log)
            server.stop()
            stopped_at.append(time.monotonic())
            sender.join(timeout=900)
            assert not sender.is_alive()

            assert [(s["http"], s["status"]) for s in sent[:2]] == [(200, "logged")] * 2, sent
            after = [s for s in sent if s["started"] > stopped_at[0]]
            assert len(after) == 4
            assert all(s["http"] == 202 and s["status"] == "queued" and s["feedback_id"] for s in after), sent
            health = api.health()
            assert health["spool_depth"] == 4 and health["tracking_store_reachable"] is False

            # an answer while the store is down is served, its trace kept on disk under the id it is returned with;
            # feedback on that id is queued too, and both land once the store is back
            down = http.post(
                "/v1/chat/completions", json={"model": "ragloop", "messages": [{"role": "user", "content": "card"}]}
            )
            extra = down.json()["ragloop"]
            assert down.status_code == 200 and extra["traced"] is True and extra["trace_queued"] is True, down.text
            assert down.headers["x-ragloop-trace-id"] == extra["trace_id"]
            late = http.post("/v1/feedback", json={"trace_id": extra["trace_id"], "value": False,
                                                   "comment": "feedback on the queued trace"})  # fmt: skip
            assert late.status_code == 202 and late.json()["status"] == "queued", late.text
            assert api.health()["spool_depth"] == 6  # 5 feedback, 1 trace

            server.start()  # the same port and store
            wait_until(lambda: api.health()["spool_depth"] == 0, "the spool delivered", 600, api.proc, api.log)

        for s in sent:
            trace = trace_writer.read_trace(dep.params(), settings, s["trace_id"])
            mine = [a for a in trace.info.assessments if a.name == USER_FEEDBACK]
            assert [a.metadata[feedback.FEEDBACK_ID] for a in mine] == [s["feedback_id"]], (s, mine)
            assert mine[0].source.source_type == "HUMAN" and mine[0].rationale.startswith("feedback ")
        corrected = trace_writer.read_trace(dep.params(), settings, trace_ids[4])
        assert [a.value for a in corrected.info.assessments if a.name == "correction"] == ["intent: card_lost"]
        assert not list((dep.params().paths.serving / traces.REJECTED).glob("*.json"))
        # the queued answer got exactly one trace, stored under the id it was returned with, and its feedback
        assert traces.resolve(dep.params(), extra["trace_id"]) == extra["trace_id"]
        queued = trace_writer.read_trace(dep.params(), settings, extra["trace_id"])
        assert queued.info.tags[traces.TAG_SPOOLED_AS] == extra["trace_id"]
        assert {s.name for s in queued.data.spans} == {"answer", "retrieve", "generate"}
        assert [a.rationale for a in queued.info.assessments if a.name == USER_FEEDBACK] == [
            "feedback on the queued trace"]  # fmt: skip
    finally:
        if api is not None:
            api.stop()
        server.stop()
