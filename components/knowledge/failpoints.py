"""Named fault points for the crash and fault tests. `RAGLOOP_FAILPOINT=NAME` makes the process SIGKILL itself
when it reaches NAME, so a test can kill a real run at an exact step. `RAGLOOP_FAILPOINT=NAME:pause` makes it
create the file named by `RAGLOOP_FAILPOINT_SIGNAL` and wait (at most 120 s) until the test deletes it, so a
test can break something else (kill a server) at that exact step. Unset, it costs one dict lookup."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

POINTS = ("after-chunk", "mid-add", "after-add", "after-marks", "after-commit", "mid-compaction")


def failpoint(name: str) -> None:
    value = os.environ.get("RAGLOOP_FAILPOINT")
    if value == name:
        os.kill(os.getpid(), signal.SIGKILL)
    elif value == f"{name}:pause":
        flag = Path(os.environ["RAGLOOP_FAILPOINT_SIGNAL"])
        flag.touch()
        deadline = time.monotonic() + 120
        while flag.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
