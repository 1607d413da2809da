"""Shared fixtures. The offline/quiet environment is set before anything imports Prefect, MLflow or HF."""

from __future__ import annotations

import contextlib
import os
import signal
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

# torch runs one thread in every test process and in every process a test starts, whatever the machine: training is
# fixed by steps and a seed, and with a fixed thread count it also gives the same weights on a 2-core and a 64-core
# machine (a matmul's sum order depends on its threads), so the pass rates the loop tests assert do not move with
# the core count. It is also each pytest-xdist worker's share of 2 cores: two workers each spinning two OpenMP
# threads slow each other badly. Set before anything imports torch.
os.environ["OMP_NUM_THREADS"] = "1"

from components.config import QUIET_OFFLINE_ENV, BaseModelParams

os.environ.update(QUIET_OFFLINE_ENV)
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="ragloop-prefect-"))
# `make test` runs the suite in pytest-xdist workers, a test file each at a time (--dist loadfile). Each worker has its
# own Prefect home and ragloop state folder: a test that lists "every server ragloop started on this machine" must
# see its own worker's only. The session mark below stays the controller's, so its leak check covers the workers.
_WORKER = os.environ.get("PYTEST_XDIST_WORKER")
if _WORKER:
    os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix=f"ragloop-prefect-{_WORKER}-")
    os.environ["RAGLOOP_STATE_DIR"] = tempfile.mkdtemp(prefix=f"ragloop-state-{_WORKER}-")
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


_BUILT: dict[str, tuple[Path, dict[str, Any]]] = {}  # model params + repeats -> (built once, what was built)


def build_tiny_model(out_dir: Path, model: BaseModelParams = TINY, repeats: int = 20) -> dict[str, Any]:
    """The tiny base model built into `out_dir`, pretrained on the test documents `repeats` times over.

    Built once per test session for each (model, repeats) and copied into `out_dir` after that: the build is
    seeded and fixed by steps, so the copy holds the very files a new build would (test_finetune.py's
    test_the_same_params_and_seed_give_the_same_base_model_files builds twice and compares the bytes)."""
    import json
    import shutil

    from components.behaviour.base_model import build_base_model

    key = json.dumps([model.model_dump(), repeats], sort_keys=True)
    if key not in _BUILT:
        first = Path(tempfile.mkdtemp(prefix="ragloop-tiny-")) / "model"
        _BUILT[key] = (first, build_base_model(list(DOCS.values()) * repeats, first, model))
    built, info = _BUILT[key]
    shutil.copytree(built, out_dir, dirs_exist_ok=True)
    return dict(info)


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


@pytest.fixture(scope="session")
def prefect_api_url(prefect_server) -> str:
    """The session's Prefect server's API URL, for tests that start flow commands as processes (`dvc repro`'s
    stages): each would otherwise start a temporary Prefect server of its own, seconds each."""
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    assert url, "the Prefect test harness set no API URL"
    return str(url)


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    """The files that hold slow or server tests first (a stable sort: each file keeps its tests' order), so that the
    pytest-xdist workers (`make test`) end on the many quick tests instead of one long file running alone."""
    heavy = {item.path for item in items if item.get_closest_marker("slow") or item.get_closest_marker("server")}
    items.sort(key=lambda item: item.path not in heavy)
    # pytest-xdist keys its work by test id: of several tests with one id it runs one, and says nothing
    twice = sorted(nodeid for nodeid, n in Counter(item.nodeid for item in items).items() if n > 1)
    if twice:
        raise pytest.UsageError(f"tests with the same id (pytest-xdist would run one of each): {twice[:5]}")


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


@pytest.hookimpl(trylast=True)  # after pytest-xdist has shut its workers down
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
