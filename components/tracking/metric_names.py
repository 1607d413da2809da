"""The names of the MLflow metrics ragloop writes, and how they are read back: one definition each.

The writers (tracking/mlflow_runs.py, the gate's report) build names with the functions below and the reader
(behaviour/history.py: `ragloop status` and `ragloop advise`) parses them with their inverses, so a renamed metric
cannot leave the reader looking for the old name.
"""

from __future__ import annotations

from collections.abc import Mapping

# an evaluation run: per slice `{slice}_{stat}` (stat: pass_rate, ci_low, ci_high, n), the champion's recorded
# rate beside it, the retrieval metrics and the route mix (components/routes.py)
PASS_RATE = "pass_rate"
BASELINE_SUFFIX = "_baseline_pass_rate"
VS_BASELINE_SUFFIX = "_vs_baseline"
RETRIEVAL_PREFIX = "retrieval_"
ROUTE_PREFIX = "route_"
LABELLED_PREFIX = "labelled_retrieval_"  # the labelled queries' metrics (paths.retrieval_queries), 'recall_at_5'
# a fine-tune run: its candidate's gate-set pass rates, and what the gate measured it bought per slice
GATE_PREFIX = "gate_"
GATE_GAIN_PREFIX = "gate_gain_"
# an index run: `documents_{kind}` and `chunks_{kind}` counts of its change report, whether it published, its time
DOCUMENTS_PREFIX = "documents_"
CHUNKS_PREFIX = "chunks_"
PUBLISHED = "published"
DURATION_S = "duration_s"
# a triage run: `routed_{route}` failing live answers per route (behaviour, retrieval, stale, missing, outage), and
# the run tags of what it did
ROUTED_PREFIX = "routed_"
TAG_REINDEXED = "ragloop.reindexed"
TAG_REGRESSION_EVENT = "ragloop.regression_event"  # the live behaviour regression event was emitted
TAG_RETRIEVAL_EVENT = "ragloop.retrieval_event"  # the live retrieval regression event was emitted


def slice_stat(slice_name: str, stat: str) -> str:
    return f"{slice_name}_{stat}"


def baseline_pass_rate(slice_name: str) -> str:
    return slice_name + BASELINE_SUFFIX


def vs_baseline(slice_name: str) -> str:
    return slice_name + VS_BASELINE_SUFFIX


def retrieval(name: str) -> str:
    return RETRIEVAL_PREFIX + name


def route(name: str) -> str:
    return ROUTE_PREFIX + name


def labelled_retrieval(name: str) -> str:
    """'recall@5' -> 'labelled_retrieval_recall_at_5' (MLflow metric names take no '@')."""
    return LABELLED_PREFIX + name.replace("@", "_at_")


def gate_pass_rate(slice_name: str) -> str:
    return f"{GATE_PREFIX}{slice_name}_{PASS_RATE}"


def gate_gain(slice_name: str) -> str:
    return GATE_GAIN_PREFIX + slice_name


def documents(kind: str) -> str:
    return DOCUMENTS_PREFIX + kind


def chunks(kind: str) -> str:
    return CHUNKS_PREFIX + kind


def routed(route: str) -> str:
    return ROUTED_PREFIX + route


def routed_counts(metrics: Mapping[str, float], routes: tuple[str, ...]) -> dict[str, int]:
    """{route: failing live answers a triage run routed there}, 0 for a route it has no metric of."""
    return {r: int(metrics.get(routed(r), 0)) for r in routes}


def _strip(metrics: Mapping[str, float], prefix: str, suffix: str = "") -> dict[str, float]:
    end = len(suffix)
    return {k[len(prefix) : len(k) - end]: v for k, v in metrics.items()
            if k.startswith(prefix) and k.endswith(suffix) and len(k) > len(prefix) + end}  # fmt: skip


def slice_pass_rates(metrics: Mapping[str, float]) -> dict[str, float]:
    """{slice: pass rate} of an evaluation run's metrics (the champion's baseline rates beside them excluded)."""
    own = {k: v for k, v in metrics.items() if not k.endswith(BASELINE_SUFFIX) and not k.startswith(GATE_PREFIX)}
    return _strip(own, "", "_" + PASS_RATE)


def retrieval_metrics(metrics: Mapping[str, float]) -> dict[str, float]:
    return _strip(metrics, RETRIEVAL_PREFIX)


def route_counts(metrics: Mapping[str, float], names: tuple[str, ...]) -> dict[str, int]:
    return {k: int(metrics.get(route(k), 0)) for k in names}


def gate_pass_rates(metrics: Mapping[str, float]) -> dict[str, float]:
    """{slice: the candidate's gate-set pass rate} of a fine-tune run's metrics."""
    rates = {k: v for k, v in metrics.items() if not k.startswith(GATE_GAIN_PREFIX)}
    return _strip(rates, GATE_PREFIX, "_" + PASS_RATE)


def gate_gains(metrics: Mapping[str, float]) -> dict[str, float]:
    """{slice: the pass-rate change the gate measured} of a fine-tune run's metrics."""
    return _strip(metrics, GATE_GAIN_PREFIX)
