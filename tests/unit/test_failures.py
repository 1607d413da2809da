"""Which server a failure could not reach: the addresses come from the Settings passed in, not the environment."""

from __future__ import annotations

import pytest

from components.config import Settings
from flows.cli.failures import unreachable_server

SERVERS = Settings(mlflow_tracking_uri="http://10.0.0.9:5000", chroma_host="chroma.internal", chroma_port=8123,
                   chroma_ssl=False)  # fmt: skip


def _raised(outer: BaseException, inner: BaseException | None = None) -> BaseException:
    try:
        try:
            if inner is not None:
                raise inner
        except BaseException as cause:
            raise outer from cause
        raise outer
    except BaseException as exc:
        return exc


def test_an_mlflow_connection_failure_names_the_configured_tracking_server(monkeypatch) -> None:
    from mlflow.exceptions import MlflowException

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://not-this-one:1")  # the settings win, not the environment
    exc = _raised(RuntimeError("task failed"), MlflowException("API request to /api/2.0/mlflow/runs/create failed: "
                                                                "Max retries exceeded with url"))  # fmt: skip
    assert unreachable_server(exc, SERVERS) == "the MLflow tracking server at http://10.0.0.9:5000"


def test_a_chroma_connection_failure_names_host_and_port() -> None:
    exc = _raised(ValueError("Could not connect to a Chroma server. Are you sure it is running?"))
    assert unreachable_server(exc, SERVERS) == "the Chroma server at chroma.internal:8123"
    assert unreachable_server(exc, Settings(None, None, 8000, False)) == "the Chroma server at ?:8000"


@pytest.mark.parametrize("exc", [ValueError("Chroma collection has the wrong dimension"),
                                 KeyError("Max retries"), RuntimeError("something else broke")])  # fmt: skip
def test_anything_else_is_not_a_server_failure(exc: BaseException) -> None:
    assert unreachable_server(_raised(exc), SERVERS) is None
