"""The same indexing code against a real `chroma run` server (HttpClient), configured only by environment."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.helpers import Deployment

pytestmark = [pytest.mark.slow, pytest.mark.server]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def chroma_server(tmp_path: Path):
    port = _free_port()
    chroma = Path(sys.executable).parent / "chroma"
    proc = subprocess.Popen([str(chroma), "run", "--path", str(tmp_path / "server"), "--host", "127.0.0.1",
                             "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v2/heartbeat", timeout=1)
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("chroma server did not start") from None
                time.sleep(0.3)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_index_query_verify_against_a_chroma_server(chroma_server: int, deployment: Deployment, monkeypatch) -> None:
    from components.knowledge.retrieval import query_index

    monkeypatch.setenv("RAGLOOP_CHROMA_HOST", "127.0.0.1")
    monkeypatch.setenv("RAGLOOP_CHROMA_PORT", str(chroma_server))
    first = deployment.index()
    assert first["chunks"]["embedded"] == 6
    assert not (deployment.root / "state" / "index" / "chroma").exists()  # nothing embedded locally
    deployment.write("support.txt", "Support is open around the clock, every day.")
    second = deployment.index()
    assert (second["chunks"]["embedded"], second["chunks"]["deleted"]) == (1, 1)
    assert deployment.verify()["ok"]
    assert query_index(deployment.params(), "when is support open", k=1)[0]["doc"] == "support.txt"
    import chromadb

    client = chromadb.HttpClient(host="127.0.0.1", port=chroma_server)
    (name,) = [c.name for c in client.list_collections()]
    assert name == second["collection"]
