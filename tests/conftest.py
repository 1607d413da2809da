"""Shared fixtures. The offline/quiet environment is set before anything imports Prefect, MLflow or HF."""

from __future__ import annotations

import os
import tempfile

from components.config import QUIET_OFFLINE_ENV, BaseModelParams

os.environ.update(QUIET_OFFLINE_ENV)
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="ragloop-prefect-"))
# Every process that runs a flow with no PREFECT_API_URL (each `ragloop` CLI call, each DVC stage) starts its own
# temporary Prefect server: 29-34 s to answer on a new database on a slow shared 2-core machine (STACK.md), where
# Prefect's default wait of 20 s fails the run with "Timed out while attempting to connect to ephemeral Prefect API".
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
for _server_var in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL", "RAGLOOP_CHROMA_HOST"):
    os.environ.pop(_server_var, None)  # tests use the embedded defaults unless a test sets these itself
# A `ragloop` flow command started by a test uses Prefect's temporary server, not the project's detached one (which
# would outlive the test): tests/integration/test_prefect_server.py sets RAGLOOP_PREFECT_SERVER=project itself.
os.environ["RAGLOOP_PREFECT_SERVER"] = "ephemeral"

from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import pytest  # noqa: E402

from tests.helpers import DOCS, Deployment  # noqa: E402

# The tiny base model of every test that needs a generator, defined here once (peft's tests list their tiny models in
# one place): a 2-layer, 64-wide decoder pretrained for 60 steps on the test documents. TINY_UNTRAINED skips the
# pretraining, for tests of the plumbing around a model (the registry, the API server).
TINY = BaseModelParams(vocab_size=400, hidden_size=64, layers=2, heads=2, intermediate_size=128, context=256,
                       pretrain_steps=60, batch_size=4, seq_len=32)  # fmt: skip
TINY_UNTRAINED = TINY.model_copy(update={"pretrain_steps": 0})


def build_tiny_model(out_dir: Path, model: BaseModelParams = TINY, repeats: int = 20) -> dict[str, Any]:
    """The tiny base model built into `out_dir`, pretrained on the test documents `repeats` times over."""
    from components.behaviour.base_model import build_base_model

    return build_base_model(list(DOCS.values()) * repeats, out_dir, model)


@pytest.fixture
def deployment(tmp_path) -> Deployment:
    """An isolated deployment (its own params.yaml, docs, index and MLflow store) with three small documents."""
    return Deployment.create(tmp_path)


@pytest.fixture(scope="session")
def prefect_server():
    """A real temporary Prefect server for the whole session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield
