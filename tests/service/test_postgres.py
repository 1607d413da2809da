"""Server mode on a real PostgreSQL, as infra/compose.yaml runs it: `mlflow server --backend-store-uri
postgresql://...` and `prefect server start` with PREFECT_SERVER_DATABASE_CONNECTION_URL, each on a database this
module creates and drops. The whole loop (index, evaluate, fine-tune, gate, alias flip), two `ragloop api` processes
answering and logging at once with feedback, triage, and two flow runs racing for one concurrency slot.

PostgreSQL: RAGLOOP_TEST_POSTGRES (default postgresql://postgres@127.0.0.1:5432/postgres, a superuser that may
create databases). Where it is not reachable every test here skips and says so."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest

from components.config import Settings
from tests.helpers import REPO, Deployment, wait_until
from tests.service.servers import HTTP_TIMEOUT, Server, mlflow_server, prefect_server
from tests.serving.conftest import KEY, ApiServer, build_deployment

pytestmark = [pytest.mark.slow, pytest.mark.server]

POSTGRES = os.environ.get("RAGLOOP_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")


def _connect(url: str):
    import psycopg2

    conn = psycopg2.connect(url, connect_timeout=10)
    conn.autocommit = True
    return conn


def _database_url(name: str, driver: str = "postgresql") -> str:
    parts = urlsplit(POSTGRES)
    return urlunsplit((driver, parts.netloc, f"/{name}", parts.query, ""))


def _rows(url: str, sql: str) -> list[tuple]:
    conn = _connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
            return list(cur.fetchall())
    finally:
        conn.close()


@dataclass
class PgStack:
    dep: Deployment
    prefect: Server
    mlflow: Server
    env: dict[str, str]
    databases: dict[str, str]  # mlflow / prefect -> psycopg2 URL

    def cli(self, *args: str, timeout: float = 1800) -> subprocess.CompletedProcess:
        return self.dep.cli(*args, env=self.env, timeout=timeout)

    @property
    def settings(self) -> Settings:
        return Settings(mlflow_tracking_uri=self.env["MLFLOW_TRACKING_URI"], chroma_host=None, chroma_port=8000,
                        chroma_ssl=False)  # fmt: skip


@pytest.fixture(scope="module")
def databases() -> Iterator[dict[str, str]]:
    """Two new databases (mlflow, prefect) on the PostgreSQL server, dropped at the end."""
    try:
        admin = _connect(POSTGRES)
    except Exception as exc:
        pytest.skip(f"PostgreSQL is not reachable at {POSTGRES} ({str(exc).strip()}); set RAGLOOP_TEST_POSTGRES to a "
                    "server where this user may create databases to run the PostgreSQL tests")  # fmt: skip
    tag = uuid.uuid4().hex[:10]
    names = {"mlflow": f"ragloop_test_{tag}_mlflow", "prefect": f"ragloop_test_{tag}_prefect"}
    try:
        with admin.cursor() as cur:
            for name in names.values():
                cur.execute(f'CREATE DATABASE "{name}"')
        yield {key: _database_url(name) for key, name in names.items()}
    finally:
        with admin.cursor() as cur:
            for name in names.values():
                cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture(scope="module")
def pg(tmp_path_factory, databases: dict[str, str]) -> Iterator[PgStack]:
    root = tmp_path_factory.mktemp("postgres")
    prefect_url = databases["prefect"].replace("postgresql://", "postgresql+asyncpg://", 1)
    # the driver named, as infra/compose.yaml does: SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3
    mlflow_url = databases["mlflow"].replace("postgresql://", "postgresql+psycopg2://", 1)
    servers = [prefect_server(root, database_url=prefect_url), mlflow_server(root, mlflow_url, workers=2)]
    try:
        for server in servers:
            server.start()
        prefect, mlflow = servers
        env = {"PREFECT_API_URL": prefect.env["PREFECT_API_URL"], "MLFLOW_TRACKING_URI": mlflow.health[:-7],
               "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "120",
               "RAGLOOP_API_KEY": KEY}  # fmt: skip
        settings = Settings(mlflow_tracking_uri=env["MLFLOW_TRACKING_URI"], chroma_host=None, chroma_port=8000,
                            chroma_ssl=False)  # fmt: skip
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("MLFLOW_TRACKING_URI", env["MLFLOW_TRACKING_URI"])  # build_deployment's registrations
            dep = build_deployment(root / "project", adapters=2, settings=settings,
                                   regression={"min_cases": 3, "min_effect": 0.2, "floors": {"format": 0.6}},
                                   finetune={"r": 4, "alpha": 8, "dropout": 0.0, "batch_size": 12, "epochs": 1},
                                   api={"spool_retry_s": 1})  # fmt: skip
        yield PgStack(dep, prefect, mlflow, env, databases)
    finally:
        for server in servers:
            server.stop()


def _json(result: subprocess.CompletedProcess) -> dict:
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return dict(json.loads(result.stdout))


def test_a_the_whole_loop_and_the_alias_flip_are_stored_in_postgresql(pg: PgStack) -> None:
    loop = _json(pg.cli("run", "--json"))
    assert loop["index"]["chunks"]["embedded"] > 0 and loop["evaluation"]["decision"] in {"finetune", "none"}
    registered = _rows(pg.databases["mlflow"], "SELECT version FROM model_versions WHERE name = 'ragloop-assistant'")
    assert len(registered) >= 2  # the registry lives in PostgreSQL, not in a SQLite file (v1, v2 and the loop's)
    runs = _rows(pg.databases["prefect"], "SELECT name, state_type FROM flow_run")
    assert {"COMPLETED"} == {state for name, state in runs if name.startswith(("pipeline-", "reindex-"))}, runs
    if loop["finetune"] and loop["finetune"].get("version"):  # the loop trained a candidate: it is registered
        assert (str(loop["finetune"]["version"]),) in {(str(v),) for (v,) in registered}

    before = dict(_rows(pg.databases["mlflow"], "SELECT alias, version FROM registered_model_aliases"))
    target = str(max(int(v) for (v,) in registered if str(v) != str(before["champion"])))  # a real flip
    promoted = _json(pg.cli("promote", target, "--json"))
    assert promoted["champion"] == target
    after = dict(_rows(pg.databases["mlflow"], "SELECT alias, version FROM registered_model_aliases"))
    assert str(after["champion"]) == target and str(after["previous"]) == str(before["champion"])
    rolled = _json(pg.cli("rollback", "--json"))  # and back, read from PostgreSQL again
    assert rolled["champion"] == str(before["champion"])
    back = dict(_rows(pg.databases["mlflow"], "SELECT alias, version FROM registered_model_aliases"))
    assert str(back["champion"]) == str(before["champion"])


def test_b_two_api_servers_answer_and_log_at_once_then_feedback_and_triage(pg: PgStack) -> None:
    from mlflow import MlflowClient

    if not (pg.dep.root / "state" / "index" / "published.json").exists():
        _json(pg.cli("index", "--json"))
    servers = [ApiServer(pg.dep, env=pg.env).start(), ApiServer(pg.dep, env=pg.env).start()]
    answered: list[tuple[int, str]] = []
    failures: list[str] = []
    lock = threading.Lock()

    def ask(server: ApiServer, n: int) -> None:
        body = {"model": "ragloop", "messages": [{"role": "user", "content": f"I lost my card ({n})"}]}
        response = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=600,
                              headers={"Authorization": f"Bearer {KEY}"})  # fmt: skip
        with lock:
            if response.status_code == 200:
                answered.append((n, response.headers["x-ragloop-trace-id"]))
            else:
                failures.append(f"{response.status_code}: {response.text[:300]}")

    try:
        threads = [threading.Thread(target=ask, args=(servers[n % 2], n)) for n in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=900)
        assert not failures and len(answered) == 12, failures
        for n, trace_id in answered[:6]:  # negative feedback on half, through either server
            sent = httpx.post(servers[n % 2].url + "/v1/feedback", timeout=120,
                              headers={"Authorization": f"Bearer {KEY}"},
                              json={"trace_id": trace_id, "value": False, "comment": f"wrong ({n})"})  # fmt: skip
            assert sent.status_code in {200, 202}, sent.text
        for server in servers:  # answers do not wait for their traces: each server delivers its spool
            delivered = lambda s=server: s.health()["spool_depth"] == 0  # noqa: E731
            wait_until(delivered, "the spool delivered", 600, server.proc, server.log)
    finally:
        for server in servers:
            server.stop()

    client = MlflowClient(tracking_uri=pg.env["MLFLOW_TRACKING_URI"])
    stored = _rows(pg.databases["mlflow"], "SELECT request_id FROM trace_info")
    ids = [tid for (tid,) in stored]
    for _, trace_id in answered:  # every answer's trace, exactly once, in PostgreSQL
        assert ids.count(trace_id) == 1, trace_id
    wait_until(lambda: all(any(a.name == "user_feedback" for a in client.get_trace(t).info.assessments)
                           for _, t in answered[:6]), "the feedback on its traces", limit=600)  # fmt: skip

    triaged = _json(pg.cli("triage", "--json"))
    routed = sum(triaged["routes"].values()) if isinstance(triaged.get("routes"), dict) else None
    assert routed is not None and routed >= 6, triaged  # every negative answer got a route (or outage)


def test_c_two_flow_runs_race_for_one_concurrency_slot(pg: PgStack, tmp_path: Path) -> None:
    """The embedding slot (flows/deployments.py `slot`) as the flows take it, from two processes on the Prefect
    server's PostgreSQL: the second waits while the first holds it, then runs."""
    created = subprocess.run([sys.executable, "-c", (
        "from components.config import load_params; from flows.deployments import ensure_limits; "
        f"print(ensure_limits(load_params({str(pg.dep.params_file)!r})))")], cwd=REPO, capture_output=True,
        text=True, timeout=600, env={**os.environ, **pg.env})  # fmt: skip
    assert created.returncode == 0, created.stderr
    holder = (
        "import sys, time; from pathlib import Path; from prefect import flow\n"
        "from flows.deployments import EMBEDDING_LIMIT, slot\n"
        "@flow(name='slot-holder')\n"
        "def hold(name: str, folder: str) -> None:\n"
        "    with slot(EMBEDDING_LIMIT):\n"
        "        Path(folder, name + '.in').touch()\n"
        "        while not Path(folder, name + '.release').exists():\n"
        "            time.sleep(0.2)\n"
        "    Path(folder, name + '.out').touch()\n"
        "hold(sys.argv[1], sys.argv[2])\n"
    )
    # a run of a deployment: `slot` only limits deployments' runs (a hand-started command skips it)
    env = {**os.environ, **pg.env, "PREFECT__RUNTIME__DEPLOYMENT__ID": str(uuid.uuid4())}
    procs = {}
    logs = {name: open(tmp_path / f"{name}.log", "wb") for name in ("a", "b")}  # noqa: SIM115 - closed below
    try:
        procs["a"] = subprocess.Popen([sys.executable, "-c", holder, "a", str(tmp_path)], cwd=REPO, env=env,
                                      stdout=logs["a"], stderr=subprocess.STDOUT)  # fmt: skip
        wait_until(lambda: (tmp_path / "a.in").exists(), "run a holding the slot", limit=600, alive=procs["a"],
                   log=tmp_path / "a.log")  # fmt: skip
        procs["b"] = subprocess.Popen([sys.executable, "-c", holder, "b", str(tmp_path)], cwd=REPO, env=env,
                                      stdout=logs["b"], stderr=subprocess.STDOUT)  # fmt: skip

        def b_waits() -> bool:  # run b exists and is running, i.e. it reached the slot
            body = {"flow_runs": {"state": {"type": {"any_": ["RUNNING"]}}}}
            runs = httpx.post(f"{pg.env['PREFECT_API_URL']}/flow_runs/filter", json=body, timeout=HTTP_TIMEOUT).json()
            return len(runs) >= 2

        wait_until(b_waits, "run b running, waiting for the slot", limit=600, alive=procs["b"], log=tmp_path / "b.log")
        deadline = time.monotonic() + 10  # b had 10 s with the slot taken: it must not have entered
        while time.monotonic() < deadline:
            assert not (tmp_path / "b.in").exists(), "two runs held the one embedding slot at once"
            time.sleep(0.2)
        limits = httpx.post(f"{pg.env['PREFECT_API_URL']}/v2/concurrency_limits/filter", json={},
                            timeout=HTTP_TIMEOUT).json()  # fmt: skip
        assert {x["name"]: x["active_slots"] for x in limits}["ragloop-embedding"] == 1
        (tmp_path / "a.release").touch()
        wait_until(lambda: (tmp_path / "b.in").exists(), "run b taking the slot once a released it", limit=600,
                   alive=procs["b"], log=tmp_path / "b.log")  # fmt: skip
        (tmp_path / "b.release").touch()
        for name, proc in procs.items():
            assert proc.wait(timeout=600) == 0, (tmp_path / f"{name}.log").read_text()[-3000:]
        slots = _rows(pg.databases["prefect"], "SELECT name, active_slots FROM concurrency_limit_v2")
        assert dict(slots)["ragloop-embedding"] == 0  # both released, in PostgreSQL
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=60)
        for fh in logs.values():
            fh.close()
