"""Kill -9 a real index run at every step; readers keep seeing the last published version, and the next
run converges to exactly the state a clean run would build."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from components.knowledge.failpoints import POINTS
from components.knowledge.manifest import OPEN
from tests.helpers import REPO, Deployment, wait_until

pytestmark = pytest.mark.slow


def _change_everything(dep: Deployment) -> None:
    dep.write("fees.md", (dep.docs / "fees.md").read_text().replace("9 EUR", "7 EUR"))
    (dep.docs / "support.txt").unlink()
    dep.write("savings.md", "# Savings\n\nThe savings account pays 3.1 percent.\n\n## Access\n\nWithdraw any time.")
    dep.write("limits.md", "# Limits\n\nDaily card limit is 2,000 EUR.")


def _clean_state(tmp_path: Path, dep: Deployment) -> dict[str, str]:
    """What a fresh index of the same documents holds: the state every crashed run must converge to."""
    clean = Deployment.create(tmp_path / "clean", docs={})
    for p in dep.docs.rglob("*"):
        if p.is_file():
            clean.write(p.relative_to(dep.docs).as_posix(), p.read_bytes())
    clean.index()
    return clean.alive()


def _assert_converged(dep: Deployment, expected: dict[str, str]) -> None:
    assert dep.alive() == expected
    assert dep.verify()["ok"]
    with dep.session() as s:
        published = s.manifest.published()
        info = s.manifest.version(published)
        coll = s.collection(info.collection)  # type: ignore[union-attr]
        leftovers = coll.get(where={"v_min": {"$gt": published}}, include=[])["ids"]
        marks = coll.get(where={"$and": [{"v_max": {"$gt": published}}, {"v_max": {"$lt": OPEN}}]}, include=[])
    assert leftovers == [] and marks["ids"] == []


@pytest.mark.parametrize("point", [p for p in POINTS if p != "mid-compaction"])
def test_kill_at_each_step_then_converge(tmp_path: Path, point: str) -> None:
    dep = Deployment.create(tmp_path / "dep", index={"upsert_batch": 1})
    dep.index()
    before = dep.alive()
    _change_everything(dep)
    crashed = dep.cli("index", "--direct", env={"RAGLOOP_FAILPOINT": point})
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-2000:]
    expected = _clean_state(tmp_path, dep)
    # a reader between the crash and the next run sees a whole version: the old one, or the new one once committed
    assert dep.alive() == (expected if point == "after-commit" else before)
    report = dep.index()
    _assert_converged(dep, expected)
    assert report["index_version"] == 2


def test_kill_during_compaction_then_converge(tmp_path: Path) -> None:
    dep = Deployment.create(tmp_path / "dep", index={"upsert_batch": 1, "keep_versions": 1, "compact_churn_ratio": 0.1})
    dep.index()
    _change_everything(dep)
    crashed = dep.cli("index", "--direct", env={"RAGLOOP_FAILPOINT": "mid-compaction"})
    assert crashed.returncode == -signal.SIGKILL
    expected = _clean_state(tmp_path, dep)
    assert dep.alive() == expected  # the version was published before compaction began
    dep.write("late.md", "# Late\n\nA document added after the crash.")
    dep.index()
    expected = _clean_state(tmp_path / "again", dep)
    _assert_converged(dep, expected)
    with dep.session() as s:
        ours = [n for n in s.store.collection_names() if n.startswith("ragloop-")]
    assert len(ours) == 1  # the half-built compaction target was dropped


def test_kill_at_random_moments_then_converge(tmp_path: Path) -> None:
    """Not at named steps: SIGKILL after a random delay, three times in a row, then one clean run."""
    dep = Deployment.create(tmp_path / "dep", index={"upsert_batch": 1})
    dep.index()
    rng = random.Random(7)
    for i in range(3):
        dep.write(f"extra-{i}.md", f"# Extra {i}\n\n" + "\n\n".join(f"Paragraph {j} of {i}." * 8 for j in range(6)))
        cmd = [sys.executable, "-m", "flows.cli", "index", "--direct", "--params", str(dep.params_file)]
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # the random moment counts from when the run holds the index (imports take 10-20 s on a slow machine:
        # a delay from the start could kill every run before it touched anything)
        wait_until(lambda: _holds_index_lock(dep), "the run to lock the index", limit=900, alive=proc)
        time.sleep(rng.uniform(0.0, 2.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    dep.index()
    _assert_converged(dep, _clean_state(tmp_path, dep))


def _holds_index_lock(dep: Deployment) -> bool:
    """Whether some process holds the index's run lock (an flock: try it without blocking)."""
    import fcntl

    lock = dep.params().paths.index / ".lock"
    if not lock.exists():
        return False
    with lock.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False
