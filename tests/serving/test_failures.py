"""Server-side failures answer with a 5xx and a message, never a hang: the app on a real uvicorn server in this
process (a real Engine on a tiny deployment), called over HTTP."""

from __future__ import annotations

import threading

import httpx
import pytest

from components.config import Settings, load_params
from tests.helpers import wait_until
from tests.service.servers import free_port
from tests.serving.conftest import build_deployment

SETTINGS = Settings(mlflow_tracking_uri=None, chroma_host=None, chroma_port=8000, chroma_ssl=False)
ASK = {"model": "ragloop", "messages": [{"role": "user", "content": "I lost my card"}]}


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    dep = build_deployment(tmp_path_factory.mktemp("failures"), adapters=0)
    dep.index()
    return dep


def _serve(app):  # uvicorn on a free loopback port in a thread, stopped by the caller
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, "uvicorn started", 120)
    return server, thread, f"http://127.0.0.1:{server.config.port}"


def test_an_answer_past_the_timeout_is_a_504_and_a_failing_engine_a_500(deployment) -> None:
    from components.serving.app import create_app
    from components.serving.engine import Engine

    params = load_params(deployment.params_file)
    params = params.model_copy(update={"api": params.api.model_copy(update={"request_timeout_s": 0.001})})
    engine = Engine(params, SETTINGS)
    server, thread, url = _serve(create_app(params, SETTINGS, engine, None))
    try:
        slow = httpx.post(url + "/v1/chat/completions", json=ASK, timeout=120)
        assert slow.status_code == 504, slow.text
        assert "request_timeout_s" in slow.json()["error"]["message"]
        engine.close()  # a closed engine: every answer fails on the server's side
        failed = httpx.post(url + "/v1/chat/completions", json=ASK, timeout=120)
        assert failed.status_code == 500 and "engine is closed" in failed.json()["error"]["message"], failed.text
        assert failed.json()["error"]["type"] == "server_error"
        assert httpx.get(url + "/health", timeout=120).status_code == 200  # the server itself still answers
    finally:
        server.should_exit = True
        thread.join(timeout=60)
        engine.close()


def test_an_index_not_published_yet_is_a_503_that_says_what_to_run(tmp_path) -> None:
    from components.serving.app import create_app
    from components.serving.engine import Engine

    dep = build_deployment(tmp_path, adapters=0)  # no `dep.index()`
    params = load_params(dep.params_file)
    with Engine(params, SETTINGS) as engine:
        assert engine.versions() == {"model_version": "base", "index_version": None}
        server, thread, url = _serve(create_app(params, SETTINGS, engine, None))
        try:
            got = httpx.post(url + "/v1/chat/completions", json=ASK, timeout=120)
            assert got.status_code == 503 and "ragloop index" in got.json()["error"]["message"], got.text
            dep.index()  # published while the server runs: the next answer uses it
            again = httpx.post(url + "/v1/chat/completions", json=ASK, timeout=300)
            assert again.status_code == 200 and again.json()["ragloop"]["index_version"] == 1, again.text
        finally:
            server.should_exit = True
            thread.join(timeout=60)


def test_a_client_gone_mid_stream_still_gets_its_answer_traced(deployment) -> None:
    from mlflow import MlflowClient

    from components.serving.app import create_app
    from components.serving.engine import Engine
    from components.tracking.mlflow_runs import tracking_uri

    params = load_params(deployment.params_file)
    store = MlflowClient(tracking_uri(params, SETTINGS))

    def traced() -> int:
        exp = store.get_experiment_by_name(params.tracking.serving_experiment)
        return 0 if exp is None else len(store.search_traces(locations=[exp.experiment_id], max_results=500))

    with Engine(params, SETTINGS) as engine:
        server, thread, url = _serve(create_app(params, SETTINGS, engine, None))
        try:
            before = traced()
            with httpx.stream("POST", url + "/v1/chat/completions", json={**ASK, "stream": True}, timeout=120) as r:
                first = next(r.iter_lines())  # the role's delta: then the client hangs up
                assert r.status_code == 200 and '"role": "assistant"' in first
            wait_until(lambda: traced() == before + 1, "the abandoned answer's trace", 120)
            assert engine.counts["answered"] >= 1 and engine.counts["failed"] == 0
            assert httpx.post(url + "/v1/chat/completions", json=ASK, timeout=120).status_code == 200
        finally:
            server.should_exit = True
            thread.join(timeout=60)
