"""When a saved gate-set evaluation stands in for a fresh one, and the DVC metrics files the flows write: called
directly on a real deployment folder."""

from __future__ import annotations

import json

import pytest

from components.behaviour import dvc_metrics, reuse
from components.behaviour.evaluate import Evaluation
from components.files import EVALUATION_METRICS, FINETUNE_METRICS, GATE_CASES, PLOTS, SLICES_PLOT
from tests.helpers import Deployment


def _params(dep: Deployment, **sections: dict):  # type: ignore[no-untyped-def]
    dep.write_params(paths={"docs": "docs", "index": "state/index", "metrics": "state/metrics",
                            "behaviour": "behaviour", "models": "state/models"}, **sections)  # fmt: skip
    (dep.root / "behaviour").mkdir(exist_ok=True)
    case = {"id": "g1", "question": "How much is an ATM withdrawal?", "intent": "fees", "gold_docs": ["fees.md"]}
    (dep.root / "behaviour" / GATE_CASES).write_text(json.dumps(case) + "\n")
    return dep.params()


def _evaluation(model_version: str = "v2", index_version: int = 5, decision: str = "none",
                actions: list[str] | None = None) -> Evaluation:  # fmt: skip
    actions = actions if actions is not None else ([] if decision == "none" else [decision])
    summary = {"model_version": model_version, "index_version": index_version, "decision": decision,
               "actions": actions, "slices": {"format": {"pass_rate": 0.5, "ci_low": 0.2, "ci_high": 0.8, "n": 4}},
               "retrieval": {"mrr": 0.7, "hit_at_k": 1.0}, "regressed_slices": []}  # fmt: skip
    return Evaluation(summary, [], {"format": {"a": True, "b": False}}, retrieval={"context_hit": {"a": False}})


def _publish(params, version: int) -> None:  # type: ignore[no-untyped-def]
    params.paths.index.mkdir(parents=True, exist_ok=True)
    (params.paths.index / "published.json").write_text(json.dumps({"index_version": version}))


def test_a_saved_evaluation_is_reused_only_for_the_same_model_index_and_fingerprint(deployment: Deployment) -> None:
    params = _params(deployment)
    assert reuse.reusable_evaluation(params, "v2", 5) is None  # nothing saved yet
    reuse.save_results(params, _evaluation())
    saved = reuse.reusable_evaluation(params, "v2", 5)
    assert saved is not None and saved.results == {"format": {"a": True, "b": False}} and saved.outcomes == []
    assert saved.summary["slices"]["format"]["pass_rate"] == 0.5
    assert reuse.reusable_evaluation(params, "v3", 5) is None  # another champion
    assert reuse.reusable_evaluation(params, "v2", 6) is None  # another index version
    _publish(params, 5)
    assert reuse.reusable_evaluation(params, "v2", None) is not None  # None: the published version
    _publish(params, 6)
    assert reuse.reusable_evaluation(params, "v2", None) is None
    # a change of what results depend on (here the regression test) changes the fingerprint: evaluate afresh
    changed = _params(deployment, regression={"min_cases": 3})
    assert reuse.fingerprint(changed) != reuse.fingerprint(params)
    assert reuse.reusable_evaluation(changed, "v2", 5) is None


def test_an_unreadable_saved_evaluation_is_not_reused(deployment: Deployment) -> None:
    params = _params(deployment)
    reuse.results_path(params).parent.mkdir(parents=True)
    reuse.results_path(params).write_text('{"summary": {"model_version": "v2"}}')
    assert reuse.reusable_evaluation(params, "v2", 5) is None


def test_an_evaluation_on_another_index_version_cannot_be_paired() -> None:
    reuse.check_same_index(None, _evaluation(index_version=5))
    reuse.check_same_index(5, _evaluation(index_version=5))
    with pytest.raises(reuse.IndexMovedError, match="from version 4 to 5"):
        reuse.check_same_index(4, _evaluation(index_version=5))


def test_the_evaluation_metrics_files_are_what_dvc_and_the_reuse_read(deployment: Deployment) -> None:
    params = _params(deployment)
    dvc_metrics.write_evaluation(params, _evaluation(decision="finetune"))
    metrics = params.paths.metrics
    assert json.loads((metrics / EVALUATION_METRICS).read_text())["decision"] == "finetune"
    assert json.loads((metrics / PLOTS / SLICES_PLOT).read_text())[0]["slice"] == "format"
    assert reuse.reusable_evaluation(params, "v2", 5) is not None
    assert dvc_metrics.finetune_not_needed(params) is None
    assert reuse.reusable_evaluation(params, "v2", 5).retrieval == {"context_hit": {"a": False}}
    dvc_metrics.write_evaluation(params, _evaluation(decision="reindex"))
    assert dvc_metrics.finetune_not_needed(params) == (
        "the last evaluation asked for reindex (decision 'reindex'), not 'finetune'")  # fmt: skip
    # the decision is the first action; a fine-tune asked for after a re-index still runs
    dvc_metrics.write_evaluation(params, _evaluation(decision="reindex", actions=["reindex", "finetune"]))
    assert dvc_metrics.finetune_not_needed(params) is None
    assert dvc_metrics.action_not_needed(params, "tune_retriever") is not None


def test_a_skipped_fine_tune_clears_the_old_adapter_and_leaves_no_candidate_to_gate(deployment: Deployment) -> None:
    params = _params(deployment)
    assert dvc_metrics.last_candidate(params) == (None, "no fine-tune has run")
    stale = params.paths.models / "candidate" / "adapter_model.safetensors"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"old")
    record = dvc_metrics.record_finetune_skip(params, "not needed")
    assert record == {"skipped": True, "why": "not needed"} and not stale.exists()
    assert json.loads((stale.parent / "skipped.json").read_text()) == record
    assert dvc_metrics.last_candidate(params) == (None, "not needed")
    dvc_metrics.record_truncated_finetune(params, "capped")
    assert dvc_metrics.last_candidate(params)[0] is None
    dvc_metrics.record_finetune(params, {"version": "3", "training_pairs": 10, "candidate": {"big": "summary"}})
    written = json.loads((params.paths.metrics / FINETUNE_METRICS).read_text())
    assert written == {"skipped": False, "version": "3", "training_pairs": 10}  # only the kept keys
    assert dvc_metrics.last_candidate(params) == ("3", "")
