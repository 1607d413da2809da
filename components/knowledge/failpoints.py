"""Named crash points for the crash-consistency tests: `RAGLOOP_FAILPOINT=NAME` makes the process SIGKILL
itself when it reaches NAME, so a test can kill a real run at an exact step. Unset, it costs one dict lookup."""

from __future__ import annotations

import os
import signal

POINTS = ("after-chunk", "mid-add", "after-add", "after-marks", "after-commit", "mid-compaction")


def failpoint(name: str) -> None:
    if os.environ.get("RAGLOOP_FAILPOINT") == name:
        os.kill(os.getpid(), signal.SIGKILL)
