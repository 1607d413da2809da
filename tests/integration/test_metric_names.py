"""MLflow metric names round trip: what the flows' writers log (tracking/mlflow_runs.py, the gate's report) is what
`ragloop status` and `ragloop advise` read back (behaviour/history.py), through one definition
(tracking/metric_names.py), on a real embedded MLflow store."""

from __future__ import annotations

from components.behaviour.gate_report import gains
from components.behaviour.reports import candidate_rates
from components.tracking import metric_names
from tests.helpers import Deployment

SUMMARY = {
    "model_version": "v2", "index_version": 4, "decision": "finetune", "regressed_slices": ["format"],
    "slices": {"format": {"pass_rate": 0.5, "ci_low": 0.3, "ci_high": 0.7, "n": 20},
               "intent": {"pass_rate": 0.8, "ci_low": 0.6, "ci_high": 0.9, "n": 20}},
    "retrieval": {"hit_at_k": 0.95, "mrr": 0.81},
    "routes": {"pass": 11, "behaviour": 7, "retrieval": 1, "stale": 1, "missing": 0}, "reasons": [],
    "actions": ["reindex", "finetune"], "retrieval_test": {"regressed": [], "reasons": []},
}  # fmt: skip
REPORT = {"index_version": 3, "published": True, "collection": "c", "embedder": "e", "duration_s": 2.5,
          "freshness_lag_s": 0.1, "errors": [],
          "documents": {"added": 2, "modified": 1, "deleted": 0, "renamed": 1, "unchanged": 0, "failed": 0},
          "chunks": {"embedded": 9, "reused": 1, "deleted": 3, "total": 10}}  # fmt: skip


def test_evaluation_index_and_fine_tune_metrics_read_back_as_written(deployment: Deployment) -> None:
    from components.behaviour import history
    from components.config import Settings
    from components.tracking import mlflow_runs

    params, settings = deployment.params(), Settings(None, None, 8000, False)
    baseline = {"format": {"pass_rate": 0.9}}
    run_id = mlflow_runs.log_evaluation_run(params, settings, SUMMARY, [], {}, "test", baseline)
    client = mlflow_runs.client_for(params, settings)
    run = client.get_run(run_id)
    assert run.data.metrics[metric_names.baseline_pass_rate("format")] == 0.9  # written beside, never read as a slice
    row = history._evaluation_row(run)
    assert row["pass_rates"] == {"format": 0.5, "intent": 0.8}
    assert row["retrieval"] == SUMMARY["retrieval"]
    assert row["routes"] == {"pass": 11, "behaviour": 7, "retrieval": 1, "stale": 1, "missing": 0}
    assert row["actions"] == ["reindex", "finetune"]

    mlflow_runs.log_index_run(params, settings, REPORT, "# report", "test")
    knowledge = history.evidence(params, settings, days=1)["knowledge"]
    assert knowledge["documents"] == {"added": 2, "modified": 1, "deleted": 0, "renamed": 1}
    assert (knowledge["chunks_embedded"], knowledge["chunks_deleted"], knowledge["chunks_now"]) == (9, 3, 10)
    assert knowledge["index_seconds"] == 2.5 and knowledge["first_index_in_window"] is True

    tune = mlflow_runs.start_finetune_run(params, settings, {}, "test")
    mlflow_runs.log_figures(params, settings, tune, candidate_rates(SUMMARY))
    mlflow_runs.log_verdict(params, settings, tune, "promoted", gains({"format": (0.25, 0.5), "tone": (None, 1.0)}))
    mlflow_runs.end_run(params, settings, tune, True)
    metrics = client.get_run(tune).data.metrics
    assert metric_names.gate_pass_rates(metrics) == {"format": 0.5, "intent": 0.8}
    (tuned,) = history.evidence(params, settings, days=1)["finetunes"]
    assert tuned["gains"] == {"format": 0.25} and tuned["verdict"] == "promoted"


def test_names_parse_back_to_their_slice_and_nothing_else() -> None:
    metrics = {metric_names.slice_stat("format", "pass_rate"): 0.5, metric_names.baseline_pass_rate("format"): 0.9,
               metric_names.vs_baseline("format"): -0.4, metric_names.gate_pass_rate("tone"): 0.7,
               metric_names.gate_gain("tone"): 0.1, metric_names.retrieval("mrr"): 0.8, "format_n": 20.0}  # fmt: skip
    assert metric_names.slice_pass_rates(metrics) == {"format": 0.5}
    assert metric_names.gate_pass_rates(metrics) == {"tone": 0.7}
    assert metric_names.gate_gains(metrics) == {"tone": 0.1}
    assert metric_names.retrieval_metrics(metrics) == {"mrr": 0.8}
