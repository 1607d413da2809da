"""Hostile traffic: the API's own OpenAPI schema fuzzed with schemathesis (valid and invalid requests of every
operation) against a real `ragloop api` process on loopback. Whatever arrives: no 5xx, no dropped connection, and
every error in OpenAI's shape. Bounded: a fixed number of examples per operation, derandomized (the same cases on
every run), each request under a deadline."""

from __future__ import annotations

from datetime import timedelta

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from tests.helpers import REPO
from tests.serving.conftest import KEY, ApiServer, build_deployment

pytestmark = [pytest.mark.slow, pytest.mark.server]

EXAMPLES = 30  # per operation and generation mode (valid, invalid)
ERROR_FIELDS = {"message", "type", "param", "code"}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    dep = build_deployment(tmp_path_factory.mktemp("fuzz"), adapters=0, generator={"max_new_tokens": 8})
    dep.index()
    server = ApiServer(dep, env={"RAGLOOP_API_KEY": KEY}).start()
    yield server
    server.stop()


def _openapi() -> dict:
    """The schema the server publishes at /openapi.json (routes only: no engine, nothing loaded). Built here, not
    fetched from the fixture's server: schemathesis' fixture-based schemas do not run under pytest 9."""
    from components.config import Settings, load_params
    from components.serving.app import create_app

    settings = Settings(mlflow_tracking_uri=None, chroma_host=None, chroma_port=8000, chroma_ssl=False)
    return create_app(load_params(REPO / "params.yaml"), settings, None, KEY).openapi()


schema = schemathesis.openapi.from_dict(_openapi())


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=timedelta(seconds=60), derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))  # fmt: skip
def test_no_request_gets_a_5xx_a_dropped_connection_or_an_error_outside_openais_shape(case, served) -> None:
    _aim(case)
    response = case.call(base_url=served.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=60)  # a dropped
    # connection raises
    described = f"{case.method} {case.path} {case.body!r:.300} -> {response.status_code} {response.text[:300]}"
    print("FUZZ", case.method, case.path, response.status_code, str(case.body)[:80])
    assert response.status_code < 500, described
    if response.status_code >= 400:
        body = response.json()
        assert set(body) == {"error"} and set(body["error"]) == ERROR_FIELDS, described
        assert isinstance(body["error"]["message"], str) and body["error"]["message"], described
    assert served.proc is not None and served.proc.poll() is None


def _aim(case) -> None:
    """Half of the chat requests name the served model and end on a user message that quotes the fuzzed body:
    left alone, almost none gets past the first checks (an unknown model, no user message), and generation,
    streaming and tracing would never see a hostile question."""
    body = case.body
    if case.path != "/v1/chat/completions" or not isinstance(body, dict) or len(repr(body)) % 2:
        return
    body["model"] = "ragloop"
    if isinstance(body.get("messages"), list) and len(body["messages"]) < 8:
        body["messages"].append({"role": "user", "content": f"card {body!r:.300}"})
