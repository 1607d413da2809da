"""The gate's assembly, called directly: real results of a champion and a candidate, paired case by case."""

from __future__ import annotations

import pytest

from components.behaviour.evaluate import Evaluation
from components.behaviour.gate_report import (
    GateError,
    gains,
    gate_markdown,
    gate_result,
    gate_table,
    judge_candidate,
    slice_rates,
)
from components.config import RegressionParams
from components.tracking import metric_names

REGRESSION = RegressionParams(unit="case", correction="none", min_cases=10, min_effect=0.05)
IDS = [f"case-{i}" for i in range(40)]
RETRIEVAL = {"hit_at_k": 0.9, "mrr": 0.8}


def _results(format_passes: int, intent_passes: int) -> dict[str, dict[str, bool]]:
    return {"format": {c: i < format_passes for i, c in enumerate(IDS)},
            "intent": {c: i < intent_passes for i, c in enumerate(IDS)}}  # fmt: skip


def _summary(results: dict, model_version: str, index_version: int = 3, regressed: list[str] | None = None) -> dict:
    slices = {k: {"pass_rate": sum(v.values()) / len(v), "ci_low": 0.0, "ci_high": 1.0, "n": len(v)}
              for k, v in results.items()}  # fmt: skip
    return {"model_version": model_version, "index_version": index_version, "slices": slices,
            "retrieval": dict(RETRIEVAL), "regressed_slices": regressed or []}  # fmt: skip


def _champion(format_passes: int = 4, intent_passes: int = 30) -> Evaluation:
    results = _results(format_passes, intent_passes)
    return Evaluation(_summary(results, "v1", regressed=["format"]), [], results)


def _candidate(format_passes: int, intent_passes: int, index_version: int = 3) -> dict:
    results = _results(format_passes, intent_passes)
    return {"behaviour": results, "summary": _summary(results, "candidate", index_version)}


def test_a_candidate_that_fixes_the_regressed_slice_and_breaks_nothing_is_promoted() -> None:
    report = judge_candidate("7", _champion(), _candidate(38, 30), REGRESSION)
    assert report.promote and report.label == "promoted"
    assert report.champion_label == "v1" and report.version == "7"
    assert report.rates == {"format": (0.1, 0.95), "intent": (0.75, 0.75)}
    assert any("format" in r for r in report.reasons)
    assert gate_result(report, {"champion": "7", "previous": "1"}) == {
        "version": "7", "promoted": True, "reasons": report.reasons, "aliases": {"champion": "7", "previous": "1"},
        "champion_before": "v1", "correction": "case-level McNemar, no correction over 2 slices"}  # fmt: skip


def test_a_fix_bought_with_a_significant_loss_elsewhere_is_rejected_with_its_reason() -> None:
    report = judge_candidate("8", _champion(), _candidate(38, 10), REGRESSION)
    assert not report.promote and report.label == "rejected"
    assert any("worse" in r and "intent" in r for r in report.reasons)
    markdown = gate_markdown(report)
    assert markdown.startswith("# Gate: version 8 rejected\n")
    assert "| intent | 0.75 | 0.25 | -0.50 |" in markdown and "| format | 0.10 | 0.95 | +0.85 |" in markdown
    assert markdown.count("\n- ") == len(report.reasons)


def test_gains_are_named_as_the_reader_parses_them_and_a_new_slice_has_none() -> None:
    rates = slice_rates({"format": {"pass_rate": 0.5}}, {"format": {"pass_rate": 0.75}, "tone": {"pass_rate": 1.0}})
    assert rates == {"format": (0.5, 0.75), "tone": (None, 1.0)}
    metrics = gains(rates)
    assert metrics == {metric_names.gate_gain("format"): 0.25}
    assert metric_names.gate_gains(metrics) == {"format": 0.25}


def test_the_table_rows_are_sorted_and_say_the_change() -> None:
    report = judge_candidate("7", _champion(), _candidate(38, 30), REGRESSION)
    assert gate_table(report) == [
        {"slice": "format", "champion": 0.1, "candidate": 0.95, "change": 0.85},
        {"slice": "intent", "champion": 0.75, "candidate": 0.75, "change": 0.0},
    ]


def test_a_version_without_results_or_of_another_index_version_cannot_be_gated() -> None:
    with pytest.raises(GateError, match="version 9 has no evaluation results"):
        judge_candidate("9", _champion(), None, REGRESSION)
    with pytest.raises(GateError, match="version 9 has no evaluation results"):
        judge_candidate("9", _champion(), {"summary": {}}, REGRESSION)
    with pytest.raises(GateError, match="index version 4, the champion on 3"):
        judge_candidate("9", _champion(), _candidate(38, 30, index_version=4), REGRESSION)
