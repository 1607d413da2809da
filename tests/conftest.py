"""Shared fixtures. The offline/quiet environment is set before anything imports Prefect, MLflow or HF."""

from __future__ import annotations

import contextlib
import os
import signal
import tempfile
import time
import uuid
from pathlib import Path

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
# The machine-wide list of the Prefect servers ragloop started (`ragloop server status --all`) is the session's own,
# and every process a test starts carries the session's mark: one still alive when the session ends is a leak.
os.environ.setdefault("RAGLOOP_STATE_DIR", tempfile.mkdtemp(prefix="ragloop-state-"))
SESSION_MARK = "RAGLOOP_TEST_SESSION"
os.environ.setdefault(SESSION_MARK, uuid.uuid4().hex)

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


def _marked_processes() -> dict[int, str]:
    """The live processes (not zombies, not this one) that carry this session's mark: pid -> command line."""
    mark = f"{SESSION_MARK}={os.environ[SESSION_MARK]}".encode()
    found = {}
    for entry in Path("/proc").glob("[0-9]*"):
        pid = int(entry.name)
        if pid == os.getpid():
            continue
        try:
            if mark not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            state, ppid = (entry / "stat").read_text().rsplit(")", 1)[-1].split()[:2]
            if state == "Z":
                continue
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            if int(ppid) == os.getpid() and "from multiprocessing." in cmd:
                continue  # this process's own resource tracker or forkserver: it ends with this process
            found[pid] = cmd
        except OSError:
            continue
    return found


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the session when a process a test started (a server, a watcher, a worker) outlives it, and end it."""
    if hasattr(session.config, "workerinput") or not Path("/proc/self/environ").exists():
        return  # an xdist worker (the controller checks once, after them), or no /proc to read
    deadline = time.monotonic() + 60  # a server told to stop may take a while to go on a slow machine
    left = _marked_processes()
    while left and time.monotonic() < deadline:
        time.sleep(1)
        left = _marked_processes()
    if not left:
        return
    for pid in left:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"FAILED: {len(left)} process(es) started by tests outlived the session (killed now):",
                            red=True)  # fmt: skip
        for pid, cmd in sorted(left.items()):
            reporter.write_line(f"  pid {pid}: {cmd[:200]}", red=True)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
