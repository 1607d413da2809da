"""Hostile traffic: the API's own OpenAPI schema fuzzed with schemathesis (valid and invalid requests of every
operation) against a real `ragloop api` process on loopback. Whatever arrives: no 5xx, no dropped connection, and
every error in OpenAI's shape. Bounded: a fixed number of examples per operation, derandomized (the same cases on
every run), each request under a deadline."""

from __future__ import annotations

from datetime import timedelta

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

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
# One test per operation and generation mode, each with its own id. schemathesis' `schema.parametrize()` gives every
# operation the same test id, and pytest-xdist (`make test`), which keys its work by id, then ran one operation of
# five: the other four were never fuzzed, and nothing said so. Invalid requests (NEGATIVE) exist only where there is
# a body to break: a GET with no parameter, or a free string in the path, has no request outside its schema.
OPERATIONS = [result.ok() for result in schema.get_all_operations()]
POSITIVE, NEGATIVE = schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE
FUZZED = [(op, mode) for op in OPERATIONS for mode in (POSITIVE, NEGATIVE) if mode is POSITIVE or op.body]


@pytest.mark.parametrize(("operation", "mode"), FUZZED, ids=[f"{op.label} {mode}" for op, mode in FUZZED])
def test_no_request_gets_a_5xx_a_dropped_connection_or_an_error_outside_openais_shape(operation, mode, served) -> None:
    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=EXAMPLES, deadline=timedelta(seconds=60), derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    def fuzz(case) -> None:
        _aim(case)
        response = case.call(base_url=served.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=60)  # a
        # dropped connection raises
        described = f"{case.method} {case.path} {case.body!r:.300} -> {response.status_code} {response.text[:300]}"
        assert response.status_code < 500, described
        if response.status_code >= 400:
            body = response.json()
            assert set(body) == {"error"} and set(body["error"]) == ERROR_FIELDS, described
            assert isinstance(body["error"]["message"], str) and body["error"]["message"], described
        assert served.proc is not None and served.proc.poll() is None

    fuzz()


def test_every_operation_of_the_schema_is_fuzzed() -> None:
    """The five operations the API publishes, each a test of its own above (a new route is fuzzed by itself), and
    the two with a body also with invalid requests."""
    assert sorted(f"{op.label} {mode}" for op, mode in FUZZED) == [
        "GET /health positive", "GET /v1/models positive", "GET /v1/models/{model_id} positive",
        "POST /v1/chat/completions negative", "POST /v1/chat/completions positive", "POST /v1/feedback negative",
        "POST /v1/feedback positive"]  # fmt: skip


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
