"""ragloop as a service, for real: `prefect server start`, `mlflow server` and `chroma run` on 127.0.0.1, configured
only through environment variables; `ragloop serve` and `ragloop watch` as processes. Faults: the Chroma server
killed in the middle of a re-index, the MLflow server unreachable. Every process is stopped by pid."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from components.knowledge.manifest import OPEN
from tests.behaviour.test_loop import write_suite
from tests.conftest import build_tiny_model
from tests.helpers import REPO, Deployment, wait_until, watches
from tests.service.servers import HTTP_TIMEOUT, Server, chroma_server, free_port, mlflow_server, port_of, prefect_server

pytestmark = [pytest.mark.slow, pytest.mark.server]


@dataclass
class Stack:
    dep: Deployment
    prefect: Server
    mlflow: Server
    chroma: Server
    env: dict[str, str]

    @property
    def api(self) -> str:
        return self.env["PREFECT_API_URL"]

    def cli(self, *args: str, extra: dict | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
        return self.dep.cli(*args, env={**self.env, **(extra or {})}, timeout=timeout)

    def spawn(self, *args: str, log: str) -> subprocess.Popen:
        cmd = [sys.executable, "-m", "flows.cli", *args, "--params", str(self.dep.params_file)]
        out = open(self.dep.root / log, "ab")  # noqa: SIM115 - the child holds it
        return subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, **self.env, "PREFECT_RUNNER_POLL_FREQUENCY": "2"})  # fmt: skip

    def deployments(self) -> list[dict]:
        return list(httpx.post(f"{self.api}/deployments/filter", json={}, timeout=HTTP_TIMEOUT).json())

    def flow_runs(self, deployment: str) -> list[dict]:
        ids = [d["id"] for d in self.deployments() if d["name"] == deployment]
        if not ids:
            return []
        body = {"flow_runs": {"deployment_id": {"any_": ids}}}
        return list(httpx.post(f"{self.api}/flow_runs/filter", json=body, timeout=HTTP_TIMEOUT).json())

    def wait_for_run(self, deployment: str, count: int, timeout: float) -> list[dict]:
        """The deployment's runs once `count` of them are final; fails on a failed run or the timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            runs = self.flow_runs(deployment)
            failed = [r for r in runs if r["state_type"] in {"FAILED", "CRASHED"}]
            assert not failed, f"{deployment} run failed: {failed[0]['state']}; logs in {self.dep.root}"
            if sum(r["state_type"] == "COMPLETED" for r in runs) >= count:
                return runs
            time.sleep(1)
        raise AssertionError(f"no {count} completed {deployment} run(s) in {timeout} s: {self.flow_runs(deployment)}")


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("service")
    dep = Deployment.create(root / "project")
    write_suite(dep.root / "behaviour")
    build_tiny_model(dep.root / "base")
    dep.write_params(
        paths={"docs": "docs", "index": "state/index", "metrics": "state/metrics", "mlflow": "state/mlflow",
               "behaviour": "behaviour", "models": "state/models"},
        generator={"model": "base", "max_new_tokens": 90, "context_chunks": 2},
        regression={"min_cases": 3, "min_effect": 0.2, "floors": {"format": 0.6}},
        finetune={"r": 8, "alpha": 16, "dropout": 0.0, "batch_size": 12, "epochs": 2},
        service={"reindex_cron": None, "evaluate_cron": None, "watch_debounce_ms": 700},
    )  # fmt: skip
    servers = [prefect_server(root), mlflow_server(root), chroma_server(root)]
    try:
        for server in servers:
            server.start()
        prefect, mlflow, chroma = servers
        env = {"PREFECT_API_URL": prefect.env["PREFECT_API_URL"], "MLFLOW_TRACKING_URI": mlflow.health[:-7],
               "RAGLOOP_CHROMA_HOST": "127.0.0.1", "RAGLOOP_CHROMA_PORT": str(port_of(chroma)),
               # one retry, and a request limit for a 1-worker server on a loaded 2-core machine (an adapter's
               # upload while another process trains), not for a fast one
               "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "120"}  # fmt: skip
        yield Stack(dep, prefect, mlflow, chroma, env)
    finally:
        for server in servers:
            server.stop()


def _chroma_docs(stack: Stack) -> set[str]:
    import chromadb

    client = chromadb.HttpClient(host="127.0.0.1", port=port_of(stack.chroma))
    docs: set[str] = set()
    for c in client.list_collections():
        got = client.get_collection(c.name).get(include=["metadatas"])
        docs |= {m["doc"] for m in got["metadatas"] if m["v_max"] == OPEN}  # live in the newest version
    return docs


def test_a_chroma_server_killed_mid_reindex_then_restarted_converges(stack: Stack) -> None:
    first = stack.cli("index", "--json")
    assert first.returncode == 0, first.stderr
    assert not (stack.dep.root / "state" / "index" / "chroma").exists()  # the vectors live on the server
    stack.dep.write("outage.md", "# Outage\n\nDuring an outage, card payments are retried for 24 hours.\n")
    flag, log = stack.dep.root / "paused", stack.dep.root / "index-outage.log"
    with open(log, "wb") as out:  # a file, not a pipe: nothing blocks on a full pipe or on reading a live one
        run = subprocess.Popen([sys.executable, "-m", "flows.cli", "index", "--params", str(stack.dep.params_file)],
                               cwd=REPO, env={**os.environ, **stack.env, "RAGLOOP_FAILPOINT": "after-add:pause",
                                              "RAGLOOP_FAILPOINT_SIGNAL": str(flag)},
                               stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    # the new chunks are added on the server, the version is not committed
    wait_until(flag.exists, "the run paused after adding its chunks", limit=600, alive=run, log=log)
    stack.chroma.stop(signal.SIGKILL)
    flag.unlink()  # the run goes on against a dead server: its retries fail or outlast the restart below
    time.sleep(3)  # the length of the outage (not a wait for anything): any outcome of the run is allowed
    stack.chroma.start()
    run.wait(timeout=900)
    again = stack.cli("index", "--json")
    assert again.returncode == 0, again.stderr
    verified = stack.cli("verify", "--json")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert json.loads(verified.stdout)["ok"]
    assert "outage.md" in _chroma_docs(stack)


def test_b_an_unreachable_mlflow_server_fails_loudly_and_corrupts_nothing(stack: Stack) -> None:
    before = json.loads(stack.cli("verify", "--json").stdout)
    stack.dep.write("hours.md", "# Hours\n\nThe branch is open from 9 to 17 on weekdays.\n")
    dead = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    failed = stack.cli("index", "--json", extra={"MLFLOW_TRACKING_URI": dead, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
                                                  "MLFLOW_HTTP_REQUEST_TIMEOUT": "2"})  # fmt: skip
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert f"the MLflow tracking server at {dead} is unreachable" in failed.stderr
    assert time.monotonic() - started > 20  # the record task retried (2 + 5 + 15 s) before giving up
    after = stack.cli("verify", "--json")
    assert after.returncode == 0 and json.loads(after.stdout)["ok"]  # the index itself is consistent
    assert json.loads(after.stdout)["index_version"] == before["index_version"] + 1  # and it did publish
    evaluated = stack.cli("evaluate", "--json", extra={"MLFLOW_TRACKING_URI": dead,
                                                       "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"})  # fmt: skip
    assert evaluated.returncode == 1 and "MLflow tracking server" in evaluated.stderr
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=stack.env["MLFLOW_TRACKING_URI"])
    assert not client.search_registered_models()  # no half-registered model


def test_c_served_deployments_reindex_on_a_document_burst_and_finetune_on_a_regression_event(stack: Stack) -> None:
    serve = stack.spawn("serve", log="serve.log")
    watch = stack.spawn("watch", log="watch.log")
    root = stack.dep.root
    try:
        wait_until(lambda: len(stack.deployments()) >= 4, "4 deployments served", limit=600, alive=serve,
                   log=root / "serve.log")  # fmt: skip
        limits = httpx.post(f"{stack.api}/v2/concurrency_limits/filter", json={}, timeout=HTTP_TIMEOUT).json()
        by_name = {x["name"]: x["limit"] for x in limits}
        assert (by_name.get("ragloop-embedding"), by_name.get("ragloop-training")) == (1, 1)
        wait_until(lambda: watches(watch.pid, stack.dep.docs), "the watcher watching the documents", alive=watch,
                   log=root / "watch.log")  # fmt: skip
        for i in range(100):  # a burst of 100 writes: one event, one re-index
            stack.dep.write("guides/burst.md", f"# Burst guide\n\nRevision {i}: transfers settle in one day.\n")
        runs = stack.wait_for_run("reindex", 1, timeout=600)
        assert runs[0]["parameters"]["reason"] == "event: ragloop.documents.changed"
        assert "guides/burst.md" in _chroma_docs(stack)
        # one more change, long after the burst settled: its run is the second. A second event from the burst would
        # have come first and queued a run before it (the deployment runs one at a time), so none means exactly 2
        stack.dep.write("guides/marker.md", "# Marker\n\nCheques are no longer accepted.\n")
        stack.wait_for_run("reindex", 2, timeout=600)
        assert len(stack.flow_runs("reindex")) == 2, "a burst of writes must yield one re-index"
        assert "guides/marker.md" in _chroma_docs(stack)
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=stack.env["MLFLOW_TRACKING_URI"])
        exp = client.get_experiment_by_name("ragloop-knowledge")
        reasons = {r.data.tags.get("ragloop.reason") for r in client.search_runs([exp.experiment_id])}
        assert "event: ragloop.documents.changed" in reasons

        emitted = subprocess.run([sys.executable, "-c", (
            "from prefect.events import emit_event; from prefect.events.worker import EventsWorker; "
            "emit_event(event='ragloop.behaviour.regression', resource={'prefect.resource.id': 'ragloop.model.base'},"
            " payload={'regressed_slices': ['format']}); EventsWorker.drain_all()")],
            env={**os.environ, **stack.env}, capture_output=True, text=True, timeout=300)  # fmt: skip
        assert emitted.returncode == 0, emitted.stderr
        stack.wait_for_run("finetune", 1, timeout=1200)
        assert client.search_model_versions("name='ragloop-assistant'")  # registered on the MLflow server
    finally:
        for proc in (watch, serve):
            proc.send_signal(signal.SIGTERM)
        assert watch.wait(timeout=120) == 0
        assert serve.wait(timeout=120) == 0, (stack.dep.root / "serve.log").read_text()[-3000:]
