"""The gate's judgement assembled from what it reads: the champion's gate-set evaluation and the candidate's stored
results, paired case by case (stats.gate decides), and what is shown of it (markdown, a table, the result)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from components.behaviour import stats
from components.behaviour.calibration import gains_against_noise, noise_levels
from components.behaviour.evaluate import Evaluation
from components.config import Params, RegressionParams
from components.tracking import metric_names

Rates = dict[str, tuple[float | None, float]]  # slice -> (champion's pass rate or None, candidate's pass rate)


class GateError(RuntimeError):
    """The gate cannot judge: a candidate without stored results, or results of another index version."""


@dataclass(frozen=True)
class GateReport:
    version: str
    champion_label: str  # the champion's model_version ("v3", or "base" before any)
    promote: bool
    reasons: list[str]
    rates: Rates
    correction: str = ""  # the paired test and the correction over the slices, e.g. "..., Holm over 4 slices"
    against_noise: dict[str, str] | None = None  # slice -> "intent +0.21 vs seed noise 0.03" (gate --calibrate)

    @property
    def label(self) -> str:
        return "promoted" if self.promote else "rejected"


def candidate_results(version: str, results: dict[str, Any] | None) -> dict[str, Any]:
    """A registered version's stored results ({"behaviour", "summary"}), or GateError when it has none."""
    if not results or "behaviour" not in results or "summary" not in results:
        raise GateError(f"version {version} has no evaluation results to gate on")
    return results


def case_groups(params: Params) -> dict[str, str]:
    """The gate set's case id -> group: the unit the paired tests count (cases of one seed are one)."""
    from components.behaviour.loop import load_suite

    return {c.id: c.group for c in load_suite(params)[0]}


def judge_candidate(version: str, champion: Evaluation, candidate: dict[str, Any] | None,
                    regression: RegressionParams, groups: stats.Groups | None = None,
                    calibration: dict[str, Any] | None = None) -> GateReport:  # fmt: skip
    """The verdict on registered `version`, whose stored results are `candidate` ({"behaviour", "summary"}), against
    `champion` (its evaluation on the same index version). `groups`: the gate set's case -> group; `calibration`:
    a seed-noise record (components/behaviour/calibration.py) whose noise a gain must exceed."""
    results = candidate_results(version, candidate)
    summary = results["summary"]
    if summary["index_version"] != champion.summary["index_version"]:
        raise GateError(f"version {version} was evaluated on index version {summary['index_version']}, the "
                        f"champion on {champion.summary['index_version']}: a pairing across index versions is "
                        "meaningless")  # fmt: skip
    noise = noise_levels(calibration) if calibration else None
    verdict = stats.gate(champion.results, results["behaviour"], champion.summary["regressed_slices"], regression,
                         champion.summary["retrieval"], summary["retrieval"], groups, noise)  # fmt: skip
    rates = slice_rates(champion.summary["slices"], summary["slices"])
    against = gains_against_noise(verdict.comparisons, noise) if noise else None
    return GateReport(version, champion.summary["model_version"], verdict.promote, verdict.reasons, rates,
                      verdict.correction, against)  # fmt: skip


def slice_rates(champion: dict[str, dict], candidate: dict[str, dict]) -> Rates:
    """(champion, candidate) pass rate of each of the candidate's slices; None where the champion has no such slice."""
    return {k: (champion[k]["pass_rate"] if k in champion else None, v["pass_rate"]) for k, v in candidate.items()}


def gains(rates: Rates) -> dict[str, float]:
    """What the candidate bought per slice, as the fine-tune run's metrics (read back by `ragloop advise`)."""
    return {metric_names.gate_gain(k): new - old for k, (old, new) in rates.items() if old is not None}


def gate_table(report: GateReport) -> list[dict[str, Any]]:
    return [{"slice": k, "champion": old, "candidate": new, "change": None if old is None else round(new - old, 4)}
            for k, (old, new) in sorted(report.rates.items())]  # fmt: skip


def gate_markdown(report: GateReport) -> str:
    lines = [f"# Gate: version {report.version} {report.label}", "",
             f"Paired case by case against the champion ({report.champion_label}); {report.correction}.", "",
             "| slice | champion | candidate | change |", "|---|---|---|---|"]  # fmt: skip
    for k, (old, new) in sorted(report.rates.items()):
        change = "-" if old is None else f"{new - old:+.2f}"
        lines.append(f"| {k} | {'-' if old is None else f'{old:.2f}'} | {new:.2f} | {change} |")
    if report.against_noise:
        lines += ["", "## Gain against seed noise (calibration)", ""] + [
            f"- {g}" for g in report.against_noise.values()
        ]
    lines += ["", "## Reasons", ""] + [f"- {r}" for r in report.reasons]
    return "\n".join(lines) + "\n"


def gate_result(report: GateReport, aliases: dict | None) -> dict[str, Any]:
    """What `ragloop gate --json` prints (a stable contract)."""
    result = {"version": report.version, "promoted": report.promote, "reasons": report.reasons, "aliases": aliases,
              "champion_before": report.champion_label, "correction": report.correction}  # fmt: skip
    if report.against_noise is not None:
        result["against_seed_noise"] = report.against_noise
    return result
