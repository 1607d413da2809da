"""The project's Prefect server (`ragloop server`, flows/prefect_server.py) with the real `prefect server start`:
started once on a new database, reused by flow commands (same pid, their runs on it), stopped; a stale state file;
a configured PREFECT_API_URL or profile is used instead; the opt-out keeps Prefect's temporary server; a started
server stops itself when idle (a running flow keeps it up) and when its folder is gone, and is listed machine-wide."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flows import prefect_server as ps
from flows.prefect_server import STATE_FILE
from tests.helpers import REPO, Deployment
from tests.service.servers import free_port

pytestmark = [pytest.mark.slow, pytest.mark.server]


def _env(home: Path, **extra: str) -> dict[str, str]:
    """A project of its own: a fresh PREFECT_HOME (a new database) and a free port; conftest's opt-out undone."""
    return {"PREFECT_HOME": str(home), "RAGLOOP_PREFECT_SERVER": "project", "RAGLOOP_PREFECT_PORT": str(free_port()),
            **extra}  # fmt: skip


def _json(result: subprocess.CompletedProcess) -> dict:
    assert result.stdout, result.stderr
    return json.loads(result.stdout)


def _flow_runs(api_url: str) -> list[dict]:
    return list(_post(api_url, "/flow_runs/filter", {}))


def _exited(pid: int) -> bool:
    """Gone, or a zombie waiting for an init that reaps late (its server exited either way)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def _post(api_url: str, path: str, body: dict, attempts: int = 8) -> Any:
    """POST as Prefect's own client does: a 429, 502 or 503 is retried with a growing pause (the server answers 503
    while its SQLite database is locked by another writer, as on a loaded machine); any other error at once."""
    for attempt in range(attempts):
        request = urllib.request.Request(f"{api_url}{path}", data=json.dumps(body).encode(), method="POST",
                                         headers={"Content-Type": "application/json"})  # fmt: skip
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as exc:
            if exc.code not in {429, 502, 503} or attempt == attempts - 1:
                raise
            time.sleep(min(2**attempt, 30))
    raise AssertionError("unreachable")


def _group_gone(pgid: int, timeout: float = 300.0) -> bool:
    """Every process of the group (the watcher and the server under it) has exited, waiting up to `timeout` (a slow
    machine's poll and shutdown); a state, not a sleep."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        members = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[-1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                members.append(stat)
        if not members:
            return True
        time.sleep(0.5)
    return False


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Iterator[tuple[Deployment, dict[str, str]]]:
    """One deployment whose project server the tests of this module share; stopped (by pid) at the end."""
    dep = Deployment.create(tmp_path_factory.mktemp("project"))
    env = _env(dep.root / ".prefect")
    yield dep, env
    dep.cli("server", "stop", env=env)


def test_start_on_a_new_database_status_reuse_by_flow_commands_then_stop(project) -> None:
    dep, env = project
    home = Path(env["PREFECT_HOME"])
    stale = {"pid": _dead_pid(), "port": free_port(), "home": str(home), "log": "", "started_at": "then"}
    home.mkdir(parents=True)
    (home / STATE_FILE).write_text(json.dumps(stale))  # a server that died without `stop`: cleaned up, not reused

    started = _json(dep.cli("server", "start", "--json", env=env))
    assert started["started"] and started["healthy"] and started["pid"] != stale["pid"]
    port = int(env["RAGLOOP_PREFECT_PORT"])
    assert started["port"] == port and started["url"] == f"http://127.0.0.1:{port}"
    assert (home / "prefect.db").is_file()  # its own, new database
    status = dep.cli("server", "status", "--json", env=env)
    assert status.returncode == 0 and _json(status)["healthy"] and _json(status)["pid"] == started["pid"]
    again = _json(dep.cli("server", "start", "--json", env=env))
    assert not again["started"] and again["pid"] == started["pid"]  # idempotent: the running one

    for n in (1, 2):  # flow commands with no PREFECT_API_URL use it, and start no server of their own
        indexed = dep.cli("index", "--json", env=env)
        assert indexed.returncode == 0, indexed.stderr
        assert "started the project's Prefect server" not in indexed.stderr
        runs = [r for r in _flow_runs(started["api_url"]) if r["name"].startswith("reindex-")]
        assert len(runs) == n and all(r["state_type"] == "COMPLETED" for r in runs)
        assert _json(dep.cli("server", "status", "--json", env=env))["pid"] == started["pid"]
        assert _json(dep.cli("server", "start", "--json", env=env))["started"] is False

    stopped = _json(dep.cli("server", "stop", "--json", env=env))
    assert stopped["stopped"] and stopped["pid"] == started["pid"] and not stopped["running"]
    assert _exited(started["pid"])
    after = dep.cli("server", "status", "--json", env=env)
    assert after.returncode == 1 and not _json(after)["running"] and not (home / STATE_FILE).exists()
    assert not _json(dep.cli("server", "stop", "--json", env=env))["stopped"]  # stopping twice is fine


def test_a_flow_command_starts_the_server_when_none_runs(project) -> None:
    dep, env = project
    first = dep.cli("index", "--json", env=env)
    assert first.returncode == 0, first.stderr
    assert "started the project's Prefect server: UI http://127.0.0.1:" in first.stderr
    status = _json(dep.cli("server", "status", "--json", env=env))
    assert status["healthy"]
    second = dep.cli("index", "--json", env=env)
    assert second.returncode == 0 and "started the project's Prefect server" not in second.stderr
    assert _json(dep.cli("server", "status", "--json", env=env))["pid"] == status["pid"]


@pytest.mark.parametrize("how", ["env", "profile"])
def test_a_configured_prefect_api_is_used_and_no_server_started(project, tmp_path: Path, how: str) -> None:
    dep, env = project
    server = _json(dep.cli("server", "start", "--json", env=env))  # someone's Prefect server
    other = Deployment.create(tmp_path / "other")
    home = tmp_path / "other-prefect"
    configured = _env(home)
    if how == "env":
        configured["PREFECT_API_URL"] = server["api_url"]
    else:  # what `prefect config set PREFECT_API_URL=...` writes
        home.mkdir()
        profile = f'active = "team"\n[profiles.team]\nPREFECT_API_URL = "{server["api_url"]}"\n'
        (home / "profiles.toml").write_text(profile)
    before = len(_flow_runs(server["api_url"]))
    result = other.cli("index", "--json", env=configured)
    assert result.returncode == 0, result.stderr
    assert len(_flow_runs(server["api_url"])) == before + 1  # the run went to the configured API
    assert not (home / STATE_FILE).exists() and "started the project's Prefect server" not in result.stderr
    assert other.cli("server", "status", "--json", env=configured).returncode == 1


def test_stale_state_file_is_cleaned_up(tmp_path: Path, deployment: Deployment) -> None:
    env = _env(tmp_path / "prefect")
    home = Path(env["PREFECT_HOME"])
    home.mkdir()
    (home / STATE_FILE).write_text(json.dumps({"pid": _dead_pid(), "port": free_port(), "home": str(home),
                                               "log": "", "started_at": "then"}))  # fmt: skip
    status = deployment.cli("server", "status", "--json", env=env)
    assert status.returncode == 1 and _json(status) == {"running": False, "healthy": False, "home": str(home)}
    assert not (home / STATE_FILE).exists()
    (home / STATE_FILE).write_text(json.dumps({"pid": os.getpid(), "port": free_port(), "home": str(home),
                                               "log": "", "started_at": "then"}))  # fmt: skip
    stopped = _json(deployment.cli("server", "stop", "--json", env=env))  # a live pid that is no Prefect server
    assert not stopped["stopped"] and not (home / STATE_FILE).exists()  # ... is left alone (this very test)


def test_ephemeral_opt_out_on_a_new_database(tmp_path: Path, deployment: Deployment) -> None:
    """RAGLOOP_PREFECT_SERVER=ephemeral: Prefect's temporary server, with a startup limit a slow machine meets."""
    env = {"PREFECT_HOME": str(tmp_path / "fresh"), "RAGLOOP_PREFECT_SERVER": "ephemeral"}
    probe = ("import os; from pathlib import Path; from flows.prefect_server import prefect_api\n"
             "with prefect_api(Path('params.yaml')) as api:\n"
             "    print(api, os.environ['PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS'])")  # fmt: skip
    clean = {k: v for k, v in os.environ.items() if k != "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"}
    seen = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**clean, **env})  # fmt: skip
    assert seen.stdout.split() == ["ephemeral", "180"], seen.stderr
    result = deployment.cli("index", "--json", env=env)  # the real temporary server, first start on a new database
    assert result.returncode == 0, result.stderr
    assert _json(result)["chunks"]["embedded"] == 6 and not (tmp_path / "fresh" / STATE_FILE).exists()


def test_an_unknown_mode_is_refused_with_the_allowed_values(deployment: Deployment, tmp_path: Path) -> None:
    result = deployment.cli("index", env={"PREFECT_HOME": str(tmp_path), "RAGLOOP_PREFECT_SERVER": "shared"})
    assert result.returncode == 1 and "RAGLOOP_PREFECT_SERVER='shared': expected one of project, ephemeral" in (
        result.stderr
    )


def test_an_idle_server_stops_itself_and_a_running_flow_keeps_it_up(tmp_path: Path, deployment: Deployment) -> None:
    idle = 6
    env = _env(tmp_path / "prefect", RAGLOOP_PREFECT_IDLE_S=str(idle))
    home = Path(env["PREFECT_HOME"])
    started = _json(deployment.cli("server", "start", "--json", env=env))
    assert started["started"] and started["idle_s"] == idle
    assert [s.pid for s in ps.started_servers()].count(started["pid"]) == 1  # listed machine-wide
    flow = _post(started["api_url"], "/flows/", {"name": "held-open"})
    run = _post(started["api_url"], "/flow_runs/", {"flow_id": flow["id"], "state": {"type": "RUNNING"}})
    time.sleep(4 * idle)  # four idle periods with a run in progress: still up
    assert _json(deployment.cli("server", "status", "--json", env=env))["pid"] == started["pid"]
    _post(started["api_url"], f"/flow_runs/{run['id']}/set_state", {"state": {"type": "COMPLETED"}, "force": True})
    assert _group_gone(started["pid"]), "the idle server (or its watcher) is still running"
    assert f"idle for {idle} s; stopping the Prefect server" in Path(started["log"]).read_text()
    assert not (home / STATE_FILE).exists() and started["pid"] not in [s.pid for s in ps.started_servers()]
    after = deployment.cli("server", "status", "--json", env=env)
    assert after.returncode == 1 and not _json(after)["running"]


def test_a_server_never_outlives_its_folder(tmp_path: Path, deployment: Deployment) -> None:
    env = _env(tmp_path / "project" / ".prefect", RAGLOOP_PREFECT_IDLE_S="0")  # 0: no idle stop; only the folder
    started = _json(deployment.cli("server", "start", "--json", env=env))
    assert started["started"] and started["idle_s"] == 0
    shutil.rmtree(tmp_path / "project")
    assert _group_gone(started["pid"]), "the server of a deleted folder is still running"
    assert started["pid"] not in [s.pid for s in ps.started_servers()]


def test_a_bad_idle_period_is_refused_naming_the_variable(tmp_path: Path, deployment: Deployment) -> None:
    env = _env(tmp_path / "prefect", RAGLOOP_PREFECT_IDLE_S="soon")
    result = deployment.cli("server", "start", "--json", env=env)
    assert result.returncode == 1
    assert "RAGLOOP_PREFECT_IDLE_S must be a number of seconds >= 0 (0: never stop), got 'soon'" in result.stderr
    assert not (Path(env["PREFECT_HOME"]) / STATE_FILE).exists()


def test_status_all_lists_every_started_server_and_stop_all_ends_them(tmp_path: Path, deployment: Deployment) -> None:
    envs = [_env(tmp_path / name / ".prefect", RAGLOOP_PREFECT_IDLE_S="0") for name in ("one", "two")]
    pids = [_json(deployment.cli("server", "start", "--json", env=env))["pid"] for env in envs]
    listed = _json(deployment.cli("server", "status", "--all", "--json", env=envs[0]))["servers"]
    assert {s["pid"] for s in listed} >= set(pids)  # both, whichever folder asks
    assert {s["home"] for s in listed if s["pid"] in pids} == {env["PREFECT_HOME"] for env in envs}
    stopped = _json(deployment.cli("server", "stop", "--all", "--json", env=envs[1]))["stopped"]
    assert {s["pid"] for s in stopped} >= set(pids)
    assert all(_group_gone(pid, timeout=60) for pid in pids)
    assert _json(deployment.cli("server", "status", "--all", "--json", env=envs[0]))["servers"] == []
    assert all(not (Path(env["PREFECT_HOME"]) / STATE_FILE).exists() for env in envs)
