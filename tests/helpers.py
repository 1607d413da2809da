"""Tiny real deployments for tests: a params.yaml in a temp folder, a few documents, the real stack."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from components.config import Params, load_params
from components.knowledge.indexer import run_index
from components.knowledge.maintenance import verify
from components.knowledge.session import IndexSession, open_index

REPO = Path(__file__).resolve().parents[1]

DOCS = {
    "fees.md": (
        "# Fees\n\nATM withdrawals in the euro area cost 2 EUR each after the fifth withdrawal of the month.\n\n"
        "## Foreign exchange\n\nCard payments in other currencies carry a 1.5 percent exchange fee.\n\n"
        "## Transfers\n\nSEPA transfers are free. International SWIFT transfers cost 9 EUR.\n"
    ),
    "cards/lost-card.md": (
        "# Lost or stolen card\n\nFreeze the card in the app at once under Cards, then Freeze.\n\n"
        "## Replacement\n\nA replacement card arrives within 5 working days and costs nothing the first time.\n"
    ),
    "support.txt": "Support is open from 8:00 to 20:00 on working days.\n\nCall +00 100 200 300 for urgent help.\n",
}


@dataclass
class Deployment:
    root: Path

    @classmethod
    def create(cls, root: Path, docs: dict[str, str] | None = None, **sections: dict) -> Deployment:
        dep = cls(root)
        root.mkdir(parents=True, exist_ok=True)
        dep.write_params(**sections)
        for rel, text in (DOCS if docs is None else docs).items():
            dep.write(rel, text)
        return dep

    @property
    def docs(self) -> Path:
        return self.root / "docs"

    @property
    def params_file(self) -> Path:
        return self.root / "params.yaml"

    def write_params(self, **sections: dict) -> None:
        base = {"paths": {"docs": "docs", "index": "state/index", "metrics": "state/metrics", "mlflow": "state/mlflow"}}
        base.update(sections)
        self.params_file.write_text(json.dumps(base))  # JSON is YAML
        paths = base["paths"]
        contract = self.root / paths.get("contract", Path(paths.get("behaviour", "data/behaviour")) / "contract.yaml")
        if not contract.exists():  # the fintech line contract, as the repository declares it (no params check:
            # a test may write bad params on purpose)
            contract.parent.mkdir(parents=True, exist_ok=True)
            contract.write_bytes((REPO / "data/behaviour/contract.yaml").read_bytes())

    def params(self) -> Params:
        return load_params(self.params_file)

    def write(self, rel: str, text: str | bytes) -> Path:
        path = self.docs / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        return path

    def session(self) -> open_index:  # type: ignore[valid-type]
        return open_index(self.params())

    def index(self) -> dict:
        with self.session() as s:
            return run_index(s)

    def verify(self, repair: bool = False) -> dict:
        with self.session() as s:
            return verify(s, repair=repair)

    def alive(self) -> dict[str, str]:
        """chunk_id -> doc of the published version, read from Chroma itself (not the manifest)."""
        with self.session() as s:
            return _visible(s)

    def cli(self, *args: str, env: dict | None = None, timeout: float = 900, prefix: tuple[str, ...] = ()
            ) -> subprocess.CompletedProcess:  # fmt: skip
        """`ragloop ARGS --params` this deployment's file; `timeout` only guards against a hang (generous: a slow
        shared 2-core machine runs these 3x slower than the machines the project was built on)."""
        cmd = [*prefix, sys.executable, "-m", "flows.cli", *args, "--params", str(self.params_file)]
        return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, **(env or {})})  # fmt: skip


def watches(pid: int, folder: Path) -> bool:
    """Whether process `pid` holds an inotify watch on `folder` (Linux, /proc/PID/fdinfo): a file watcher there is
    set up and sees the next change. Waiting for this replaces a guessed "the watcher is up by now" sleep."""
    assert Path("/proc/self/fdinfo").is_dir(), "watches() reads Linux's /proc"
    ino = f"ino:{folder.stat().st_ino:x}"
    for info in Path(f"/proc/{pid}/fdinfo").glob("*"):
        try:
            lines = info.read_text().splitlines()
        except OSError:  # closed while listed
            continue
        if any(line.startswith("inotify ") and ino in line.split() for line in lines):
            return True
    return False


def wait_until(observed: Callable[[], bool], what: str, limit: float = 300,
               alive: subprocess.Popen | None = None, log: Path | None = None) -> None:  # fmt: skip
    """Poll until `observed()` holds. Fail at once if the process `alive` exits first, and after `limit` seconds,
    a hang guard sized for a slow shared machine (never the moment to act), with the tail of `log` if given."""
    tail = (lambda: "\n" + log.read_text(errors="replace")[-4000:]) if log else (lambda: "")
    deadline = time.monotonic() + limit
    while not observed():
        assert alive is None or alive.poll() is None, f"exited {alive.returncode} before {what}{tail()}"
        assert time.monotonic() < deadline, f"no {what} after {limit:.0f} s{tail()}"
        time.sleep(0.2)


def _visible(s: IndexSession) -> dict[str, str]:
    from components.knowledge.store import visible_at

    published = s.manifest.published()
    info = s.manifest.version(published)
    assert info is not None
    got = s.collection(info.collection).get(where=visible_at(published), include=["metadatas"])
    return {m["chunk_id"]: m["doc"] for m in got["metadatas"]}


def contract_line(intent: str, answer: str, sources: list[str]) -> str:
    """The answer the fintech line contract (data/behaviour/contract.yaml) teaches for this intent, answer and
    citations; the refusal for `out_of_scope`."""
    from components.behaviour.contract import load_contract
    from components.behaviour.suite import Case

    case = Case("c", "q", intent, None if intent == "out_of_scope" else answer, tuple(sources))
    return load_contract(REPO / "data/behaviour/contract.yaml").target_for(case, sources)


def parse_line(output: str):  # type: ignore[no-untyped-def]
    """The fintech line contract's reading of an output (None when it does not follow it)."""
    from components.behaviour.contract import load_contract

    return load_contract(REPO / "data/behaviour/contract.yaml").answer_of(output)
