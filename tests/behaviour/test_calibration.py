"""Seed-noise calibration: its key, the per-slice noise of two equal candidates, the store that keeps and reuses it,
and the gate judging a candidate's gain against it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from components.behaviour.calibration import (
    CalibrationError,
    calibration_key,
    gains_against_noise,
    load_calibration,
    noise_levels,
    slice_noise,
    store_calibration,
    twin_seed,
)
from components.behaviour.evaluate import Evaluation
from components.behaviour.gate_report import gate_markdown, gate_result, judge_candidate
from components.behaviour.stats import compare_slices
from components.config import FinetuneParams, RegressionParams
from components.files import CALIBRATION

PAIRS = [("### Customer: what is the fee?\n### Assistant:", "intent: fees | answer: EUR 1 | sources: [fees.md]")]
REGRESSION = RegressionParams(min_cases=10)
RETRIEVAL = {"hit_at_k": 0.9, "mrr": 0.8}


def outcomes(passes: int, n: int = 60) -> dict[str, bool]:
    return {f"case-{i:03d}": i < passes for i in range(n)}


GROUPS = {f"case-{i:03d}": f"s{i // 3:03d}" for i in range(60)}  # 20 seeds of 3 wordings


# ---------------------------------------------------------------- the key


def test_the_key_ignores_the_seed_and_nothing_else() -> None:
    base = calibration_key(PAIRS, FinetuneParams(), "data/models/base@sha256:ab", "md5-gate")
    assert calibration_key(PAIRS, FinetuneParams(seed=7), "data/models/base@sha256:ab", "md5-gate") == base
    changed = [
        calibration_key([*PAIRS, PAIRS[0]], FinetuneParams(), "data/models/base@sha256:ab", "md5-gate"),
        calibration_key(PAIRS, FinetuneParams(epochs=3), "data/models/base@sha256:ab", "md5-gate"),
        calibration_key(PAIRS, FinetuneParams(), "data/models/base@sha256:cd", "md5-gate"),
        calibration_key(PAIRS, FinetuneParams(), "data/models/base@sha256:ab", "md5-other-gate"),
    ]
    assert base not in changed and len(set(changed)) == len(changed)


def test_the_twin_trains_with_the_next_seed() -> None:
    assert twin_seed(FinetuneParams(seed=0)) == 1
    assert twin_seed(FinetuneParams(seed=41)) == 42


# ---------------------------------------------------------------- the noise


def test_slice_noise_reports_rates_discordance_and_groups() -> None:
    first = {"format": outcomes(57), "intent": outcomes(30)}
    second = {"format": outcomes(57), "intent": {**outcomes(30), "case-000": False, "case-040": True,
                                                 "case-041": True, "case-042": True}}  # fmt: skip
    noise = slice_noise(first, second, REGRESSION, GROUPS)
    assert noise["format"] == {"noise": 0.0, "delta": 0.0, "n_paired": 60, "b": 0, "c": 0, "p_case": 1.0,
                               "groups": 20, "groups_worse": 0, "groups_better": 0, "p_group": 1.0}  # fmt: skip
    intent = noise["intent"]
    assert (intent["b"], intent["c"], intent["delta"], intent["noise"]) == (1, 3, round(2 / 60, 4), round(2 / 60, 4))
    assert (intent["groups_worse"], intent["groups_better"]) == (1, 2)  # s000 lost one; s013 and s014 gained
    assert noise_levels({"slices": noise}) == {"format": 0.0, "intent": round(2 / 60, 4)}


def test_noise_is_symmetric() -> None:
    first, second = {"intent": outcomes(20)}, {"intent": outcomes(35)}
    there, back = slice_noise(first, second, REGRESSION, GROUPS), slice_noise(second, first, REGRESSION, GROUPS)
    assert there["intent"]["noise"] == back["intent"]["noise"] == 0.25
    assert there["intent"]["delta"] == -back["intent"]["delta"]


def test_gains_against_noise_read_as_the_verdict_shows_them() -> None:
    comparisons = compare_slices({"intent": outcomes(20), "format": outcomes(50)},
                                 {"intent": outcomes(33), "format": outcomes(50)}, REGRESSION, GROUPS)  # fmt: skip
    shown = gains_against_noise(comparisons, {"intent": 0.03, "format": 0.0})
    assert shown == {"format": "format +0.00 vs seed noise 0.00", "intent": "intent +0.22 vs seed noise 0.03"}
    assert gains_against_noise(comparisons, {"intent": 0.03}) == {"intent": "intent +0.22 vs seed noise 0.03"}


# ---------------------------------------------------------------- kept and reused


def test_a_stored_calibration_is_reused_only_under_its_key(tmp_path: Path) -> None:
    path = tmp_path / "metrics" / CALIBRATION
    assert load_calibration(path, "k1") is None
    store_calibration(path, "k1", {"seed": 0, "slices": {"intent": {"noise": 0.03}}})
    store_calibration(path, "k2", {"seed": 0, "slices": {"intent": {"noise": 0.05}}})
    assert load_calibration(path, "k1") == {"seed": 0, "slices": {"intent": {"noise": 0.03}}}
    assert load_calibration(path, "k2") == {"seed": 0, "slices": {"intent": {"noise": 0.05}}}
    assert load_calibration(path, "k3") is None
    store_calibration(path, "k1", {"seed": 0, "slices": {"intent": {"noise": 0.01}}})  # recomputed: replaced
    assert noise_levels(load_calibration(path, "k1") or {}) == {"intent": 0.01}
    assert set(json.loads(path.read_text())["calibrations"]) == {"k1", "k2"}


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '{"calibrations": []}', '{"other": {}}'])
def test_an_unreadable_calibration_file_is_an_error_naming_it(tmp_path: Path, text: str) -> None:
    path = tmp_path / CALIBRATION
    path.write_text(text)
    with pytest.raises(CalibrationError, match=r"calibration\.json: .*delete it"):
        load_calibration(path, "k1")
    with pytest.raises(CalibrationError):
        store_calibration(path, "k1", {"slices": {}})
    assert path.read_text() == text  # never overwritten


# ---------------------------------------------------------------- the gate against the noise


def _evaluation(passes: dict[str, int], model_version: str) -> tuple[dict, dict]:
    results = {name: outcomes(p) for name, p in passes.items()}
    slices = {k: {"pass_rate": sum(v.values()) / len(v)} for k, v in results.items()}
    summary = {"model_version": model_version, "index_version": 3, "slices": slices, "retrieval": dict(RETRIEVAL),
               "regressed_slices": ["intent"]}  # fmt: skip
    return results, summary


def _judge(noise: dict[str, float] | None) -> object:
    champ_results, champ_summary = _evaluation({"format": 57, "intent": 18}, "v1")
    cand_results, cand_summary = _evaluation({"format": 57, "intent": 39}, "candidate")  # +0.35, 7 seeds better
    calibration = None if noise is None else {"slices": {k: {"noise": v} for k, v in noise.items()}}
    return judge_candidate("5", Evaluation(champ_summary, [], champ_results),
                           {"behaviour": cand_results, "summary": cand_summary}, REGRESSION, GROUPS,
                           calibration)  # fmt: skip


def test_a_gain_well_above_the_seed_noise_is_promoted_and_shown() -> None:
    report = _judge({"intent": 0.03, "format": 0.02})
    assert report.promote is True
    assert report.against_noise == {
        "format": "format +0.00 vs seed noise 0.02",
        "intent": "intent +0.35 vs seed noise 0.03",
    }
    assert report.correction == "group-level sign test, Holm over 2 slices"
    result = gate_result(report, None)
    assert result["against_seed_noise"] == report.against_noise and result["correction"] == report.correction
    markdown = gate_markdown(report)
    assert "## Gain against seed noise (calibration)\n\n- format +0.00 vs seed noise 0.02\n" in markdown
    assert "Holm over 2 slices" in markdown


def test_a_gain_within_the_seed_noise_is_not_promoted() -> None:
    report = _judge({"intent": 0.4})
    assert report.promote is False
    assert any("regressed slice intent not significantly better" in r and "within the noise" in r
               for r in report.reasons)  # fmt: skip


def test_without_calibration_nothing_about_noise_is_shown() -> None:
    report = _judge(None)
    assert report.promote is True and report.against_noise is None
    assert "against_seed_noise" not in gate_result(report, None)
    assert "seed noise" not in gate_markdown(report)
