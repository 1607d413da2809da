"""Real servers for the server-mode tests: `prefect server start`, `mlflow server` and `chroma run` on 127.0.0.1
and free ports, each started as its own process and stopped by pid (its whole process group)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

BIN = Path(sys.executable).parent
# Limits sized for a slow, shared 2-core machine, where the servers answer late (STACK.md): `mlflow server` takes
# 25-70 s to answer /health and `prefect server start` 30+ s on a new database. They guard against a hang; every
# wait polls for the state it needs, so a fast machine never waits for them.
STARTUP_TIMEOUT = 300.0
HTTP_TIMEOUT = 60.0  # one REST call to a server under load (httpx's default is 5 s)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    name: str
    cmd: list[str]
    health: str  # a URL that answers 200 once the server is up
    log: Path
    env: dict[str, str]
    proc: subprocess.Popen | None = None

    def start(self, timeout: float = STARTUP_TIMEOUT) -> Server:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(self.cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **self.env},
                                         start_new_session=True)  # fmt: skip
        deadline = time.monotonic() + timeout
        while True:
            try:
                urllib.request.urlopen(self.health, timeout=10)
                return self
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    why = (f"exited {self.proc.returncode}" if self.proc.poll() is not None
                           else f"did not answer {self.health} in {timeout:.0f} s")  # fmt: skip
                    self.stop()
                    raise RuntimeError(f"{self.name} {why}; log: {self.log.read_text()[-3000:]}") from None
                time.sleep(0.5)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, sig)  # the server and the workers it started
            self.proc.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)


def prefect_server(root: Path, database_url: str | None = None) -> Server:
    """`database_url`: PostgreSQL (postgresql+asyncpg://...), as infra/compose.yaml runs it; default SQLite."""
    port = free_port()
    env = {"PREFECT_HOME": str(root / "prefect-server"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_API_URL": f"http://127.0.0.1:{port}/api", "PREFECT_UI_ENABLED": "false"}  # fmt: skip
    if database_url:
        env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = database_url
    cmd = [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    return Server("prefect", cmd, f"http://127.0.0.1:{port}/api/health", root / "prefect.log", env)


def mlflow_server(root: Path, backend_store_uri: str | None = None, workers: int = 1) -> Server:
    """`backend_store_uri`: PostgreSQL (postgresql://...), as infra/compose.yaml runs it; default SQLite."""
    port = free_port()
    cmd = [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers),
           "--backend-store-uri", backend_store_uri or f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination",
           str(root / "mlflow-artifacts")]  # fmt: skip
    return Server("mlflow", cmd, f"http://127.0.0.1:{port}/health", root / "mlflow.log", {})


def chroma_server(root: Path, port: int | None = None) -> Server:
    port = port or free_port()
    cmd = [str(BIN / "chroma"), "run", "--path", str(root / "chroma-server"), "--host", "127.0.0.1",
           "--port", str(port)]  # fmt: skip
    return Server("chroma", cmd, f"http://127.0.0.1:{port}/api/v2/heartbeat", root / "chroma.log", {})


def port_of(server: Server) -> int:
    return int(server.health.split(":")[2].split("/")[0])
