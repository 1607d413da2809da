"""The finetune and gate flows write their DVC metrics files themselves, so a run started by a deployment (no CLI)
updates them: called as flow functions on a real Prefect server, on the paths that decide not to train or gate."""

from __future__ import annotations

import json

import pytest

from components.behaviour.gate_report import GateError
from components.files import EVALUATION_METRICS, FINETUNE_METRICS, GATE_METRICS
from tests.helpers import Deployment


@pytest.fixture
def dep(deployment: Deployment, prefect_server) -> Deployment:
    deployment.write_params(paths={"docs": "docs", "index": "state/index", "metrics": "state/metrics",
                                   "mlflow": "state/mlflow", "models": "state/models"})  # fmt: skip
    metrics = deployment.params().paths.metrics
    metrics.mkdir(parents=True)
    (metrics / EVALUATION_METRICS).write_text(json.dumps({"decision": "reindex", "actions": ["reindex"]}))
    return deployment


def test_a_finetune_flow_run_the_evaluation_did_not_ask_for_records_why_and_clears_the_candidate(dep) -> None:
    from flows.behaviour import finetune

    params = dep.params()
    stale = params.paths.models / "candidate" / "adapter_model.safetensors"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"an earlier run's adapter")
    result = finetune(params_file=str(dep.params_file), reason="deployment", if_needed=True)
    why = "the last evaluation asked for reindex (decision 'reindex'), not 'finetune'"
    assert result == {"skipped": True, "why": why}
    assert json.loads((params.paths.metrics / FINETUNE_METRICS).read_text()) == result
    assert not stale.exists() and json.loads((stale.parent / "skipped.json").read_text()) == result


def test_a_gate_flow_run_with_no_candidate_records_the_skip_or_refuses(dep) -> None:
    from flows.behaviour import finetune, gate

    finetune(params_file=str(dep.params_file), if_needed=True)
    metrics = dep.params().paths.metrics
    result = gate(params_file=str(dep.params_file), if_needed=True)
    why = "no candidate: the last evaluation asked for reindex (decision 'reindex'), not 'finetune'"
    assert result == {"skipped": True, "why": why}
    assert json.loads((metrics / GATE_METRICS).read_text()) == result
    (metrics / GATE_METRICS).unlink()
    with pytest.raises(GateError, match=r"no candidate to gate: .*; name a VERSION"):
        gate(params_file=str(dep.params_file))
    assert not (metrics / GATE_METRICS).exists()
