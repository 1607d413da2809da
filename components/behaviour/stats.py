"""The statistics behind "has behaviour regressed?" and "may this candidate replace the champion?".

Every decision is made per slice on paired cases (the same case id evaluated on both sides), because pairing
removes the case-difficulty noise that an unpaired comparison of two pass rates would carry. A slice counts as
changed only when three things agree: enough paired cases (`min_cases`), a significant exact McNemar test
(`alpha`) and a change large enough to matter (`min_effect`). Requiring all three is what keeps an unchanged
model, re-evaluated on the same cases, from ever being reported as regressed.

Floors are checked on the current side alone and only with certainty: a slice breaches its floor when even the
upper bound of its Wilson interval is below the floor, so a few unlucky cases never trip it.

Everything here is a pure function of its arguments: no I/O, no randomness, no clock.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from statistics import NormalDist
from typing import TypedDict

from components.config import RegressionParams

Results = Mapping[str, Mapping[str, bool]]  # slice -> {case_id: passed}
RETRIEVAL_TOLERANCE = 1e-9  # retrieval metrics must match this closely: fine-tuning must not change knowledge


class SliceSummary(TypedDict):
    pass_rate: float
    ci_low: float
    ci_high: float
    n: int


@dataclass(frozen=True)
class SliceComparison:
    """One slice, baseline against current, on the cases both sides evaluated.

    Rates are over the paired cases; for a slice with no paired cases (one side only, or empty) each rate is over
    that side's own cases (0.0 when it has none), so a report still shows what was measured.
    """

    slice: str
    n_paired: int
    baseline_rate: float
    current_rate: float
    delta: float  # current_rate - baseline_rate
    b: int  # baseline passed, current failed
    c: int  # baseline failed, current passed
    p_value: float  # exact two-sided McNemar on (b, c); 1.0 when nothing is paired
    worse: bool  # current significantly worse (enough cases, p < alpha, drop >= min_effect)
    better: bool  # current significantly better (same three conditions, other direction)
    floor_breach: bool  # current is surely below this slice's floor
    reason: str


@dataclass(frozen=True)
class RegressionVerdict:
    regressed: bool
    regressed_slices: list[str]  # sorted
    comparisons: list[SliceComparison]  # sorted by slice


@dataclass(frozen=True)
class GateVerdict:
    promote: bool
    reasons: list[str]  # every failed condition; on promotion, the improvements
    comparisons: list[SliceComparison]  # champion (baseline side) against candidate (current side)


def wilson_interval(passed: int, n: int, confidence: float) -> tuple[float, float]:
    """Wilson score interval: unlike the normal approximation it stays inside [0, 1] and is sane at 0 or n passes."""
    if n < 0 or not 0 <= passed <= n:
        raise ValueError(f"need 0 <= passed <= n, got passed={passed}, n={n}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be strictly between 0 and 1, got {confidence}")
    if n == 0:
        return 0.0, 1.0
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = passed / n
    denom = 2 * (n + z * z)
    center = (2 * n * p + z * z) / denom
    half = z / denom * math.sqrt(4 * n * p * (1 - p) + z * z)
    low = 0.0 if passed == 0 else max(0.0, center - half)
    high = 1.0 if passed == n else min(1.0, center + half)
    return low, high


def mcnemar_exact(b: int, c: int) -> float:
    """Exact two-sided McNemar p-value: under "no change" each discordant case flips either way with probability 1/2.

    The tail is summed in integers, so it stays exact for any number of discordant cases.
    """
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be >= 0, got b={b}, c={c}")
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1))
    return min(1.0, 2 * tail / 2**n)


def binomial_greater(k: int, n: int, p0: float) -> float:
    """Exact one-sided binomial p-value P(X >= k) for X ~ Binomial(n, p0): how surprising k failures in n are if
    the true failure rate is p0. Summed in log space, so it stays finite for any n."""
    if n < 0 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if not 0 <= p0 <= 1:
        raise ValueError(f"p0 must be a rate between 0 and 1, got {p0}")
    if k == 0:
        return 1.0
    if p0 == 0.0:
        return 0.0
    if p0 == 1.0:
        return 1.0
    log_p, log_q = math.log(p0), math.log1p(-p0)
    terms = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * log_p + (n - i) * log_q
             for i in range(k, n + 1)]  # fmt: skip
    top = max(terms)
    return min(1.0, math.exp(top) * sum(math.exp(t - top) for t in terms))


def slice_summary(results: Results, confidence: float = 0.95) -> dict[str, SliceSummary]:
    """Pass rate and its Wilson interval per slice, for reports; an empty slice is "unknown": (0, 1)."""
    summary: dict[str, SliceSummary] = {}
    for name in sorted(results):
        outcomes = results[name]
        n, passed = len(outcomes), sum(bool(v) for v in outcomes.values())
        low, high = wilson_interval(passed, n, confidence)
        rate = passed / n if n else 0.0
        summary[name] = SliceSummary(pass_rate=round(rate, 4), ci_low=round(low, 4), ci_high=round(high, 4), n=n)
    return summary


def compare_slices(baseline: Results, current: Results, params: RegressionParams) -> list[SliceComparison]:
    """Compare every slice seen on either side, sorted by name; only case ids present on both sides are paired."""
    names = sorted(set(baseline) | set(current))
    return [_compare_slice(name, baseline.get(name), current.get(name), params) for name in names]


def detect_regression(baseline: Results | None, current: Results, params: RegressionParams) -> RegressionVerdict:
    """A slice regresses when it is significantly worse than the baseline or surely below its floor.

    With no baseline yet (no champion evaluated), nothing can be significantly worse, so only floors count.
    """
    comparisons = compare_slices(baseline or {}, current, params)
    regressed = sorted(c.slice for c in comparisons if c.worse or c.floor_breach)
    return RegressionVerdict(regressed=bool(regressed), regressed_slices=regressed, comparisons=comparisons)


def gate(
    champion: Results,
    candidate: Results,
    regressed_slices: list[str],
    params: RegressionParams,
    champion_retrieval: dict[str, float],
    candidate_retrieval: dict[str, float],
) -> GateVerdict:
    """Promote only a candidate that fixes what regressed, breaks nothing else and leaves knowledge untouched.

    Per-slice non-regression is required even when the average improves: a gain in one behaviour must not buy
    a loss in another. A candidate that changes nothing significant is never promoted (it would be churn).
    """
    comparisons = compare_slices(champion, candidate, params)
    by_slice = {c.slice: c for c in comparisons}
    failures = [
        *_unfixed(regressed_slices, by_slice, comparisons),
        *[f"significantly worse than the champion: {c.reason}" for c in comparisons if c.worse],
        *_new_floor_breaches(champion, comparisons, params),
        *_retrieval_changes(champion_retrieval, candidate_retrieval),
    ]
    if failures:
        return GateVerdict(promote=False, reasons=failures, comparisons=comparisons)
    gains = [f"significantly better than the champion: {c.reason}" for c in comparisons if c.better]
    return GateVerdict(promote=True, reasons=gains, comparisons=comparisons)


def _compare_slice(
    name: str, base: Mapping[str, bool] | None, cur: Mapping[str, bool] | None, params: RegressionParams
) -> SliceComparison:
    base, cur = base or {}, cur or {}
    paired = sorted(set(base) & set(cur))
    n = len(paired)
    b = sum(1 for k in paired if base[k] and not cur[k])
    c = sum(1 for k in paired if cur[k] and not base[k])
    p = mcnemar_exact(b, c)
    if n:
        both = sum(1 for k in paired if base[k] and cur[k])
        base_rate, cur_rate, delta = (both + b) / n, (both + c) / n, (c - b) / n  # delta exact, not a difference
    else:
        base_rate, cur_rate = _rate(base), _rate(cur)
        delta = cur_rate - base_rate
    tested = n >= params.min_cases and abs(delta) >= params.min_effect and p < params.alpha
    breach, floor_note = _floor_check(name, cur, params)
    reason = _change_note(name, n, base_rate, cur_rate, delta, p, params, bool(base), bool(cur))
    return SliceComparison(
        slice=name,
        n_paired=n,
        baseline_rate=base_rate,
        current_rate=cur_rate,
        delta=delta,
        b=b,
        c=c,
        p_value=p,
        worse=tested and delta < 0,
        better=tested and delta > 0,
        floor_breach=breach,
        reason=reason + (f"; {floor_note}" if floor_note else ""),
    )


def _rate(outcomes: Mapping[str, bool]) -> float:
    return sum(bool(v) for v in outcomes.values()) / len(outcomes) if outcomes else 0.0


def _floor_check(name: str, outcomes: Mapping[str, bool], params: RegressionParams) -> tuple[bool, str]:
    """Breach only when sure: enough cases, and even the interval's upper bound is below the floor."""
    floor = params.floors.get(name)
    if floor is None:
        return False, ""
    n, passed = len(outcomes), sum(bool(v) for v in outcomes.values())
    if n < params.min_cases:
        return False, f"floor {floor:.2f} not checked: {n} cases < min_cases {params.min_cases}"
    high = wilson_interval(passed, n, params.confidence)[1]
    where = f"rate {passed / n:.2f} on {n} cases, upper {params.confidence:.0%} bound {high:.2f}"
    if high < floor:
        return True, f"floor breach: {where} < floor {floor:.2f}"
    return False, f"floor {floor:.2f} kept: {where} >= floor"


def _change_note(
    name: str,
    n: int,
    base_rate: float,
    cur_rate: float,
    delta: float,
    p: float,
    params: RegressionParams,
    has_base: bool,
    has_cur: bool,
) -> str:
    """One human sentence saying why the slice did or did not count as changed."""
    if not has_base or not has_cur:
        side = "baseline" if has_base else "current" if has_cur else "neither side (empty slice)"
        return f"{name}: cases only in {side}, 0 paired cases, not compared"
    head = f"{name}: {cur_rate:.2f} vs {base_rate:.2f} on {n} paired cases"
    if n < params.min_cases:
        return f"{head}, fewer than min_cases {params.min_cases}, not tested"
    test = f"McNemar p={p:.2g}"
    if p >= params.alpha:
        return f"{head}, {test} >= {params.alpha}, no significant change"
    word = "drop" if delta < 0 else "gain"
    if abs(delta) < params.min_effect:
        return f"{head}, {test} < {params.alpha} but {word} {abs(delta):.2f} < min_effect {params.min_effect}"
    return f"{head}, {test} < {params.alpha}, {word} {abs(delta):.2f} >= {params.min_effect}"


def _unfixed(
    regressed: list[str], by_slice: Mapping[str, SliceComparison], comparisons: list[SliceComparison]
) -> list[str]:
    """Every regressed slice must be significantly better; with none regressed, at least one slice must be."""
    if not regressed:
        if any(c.better for c in comparisons):
            return []
        return ["no slice is significantly better than the champion: a candidate that changes nothing is not promoted"]
    missing = "no results on either side"
    return [
        f"regressed slice {name} not significantly better: {by_slice[name].reason if name in by_slice else missing}"
        for name in sorted(regressed)
        if name not in by_slice or not by_slice[name].better
    ]


def _new_floor_breaches(champion: Results, comparisons: list[SliceComparison], params: RegressionParams) -> list[str]:
    """A floor the champion already breached does not block; one the candidate newly breaches does."""
    return [
        f"candidate newly breaches a floor the champion kept: {c.reason}"
        for c in comparisons
        if c.floor_breach and not _floor_check(c.slice, champion.get(c.slice) or {}, params)[0]
    ]


def _retrieval_changes(champion: dict[str, float], candidate: dict[str, float]) -> list[str]:
    """Fine-tuning changes behaviour only: any change in retrieval means the knowledge side moved too."""
    reasons = []
    if set(champion) != set(candidate):
        only_champ, only_cand = sorted(set(champion) - set(candidate)), sorted(set(candidate) - set(champion))
        reasons.append(f"retrieval metrics differ in keys: champion only {only_champ}, candidate only {only_cand}")
    for key in sorted(set(champion) & set(candidate)):
        before, after = champion[key], candidate[key]
        if not abs(after - before) <= RETRIEVAL_TOLERANCE:  # `not <=` also catches NaN
            reasons.append(f"retrieval changed: {key} {before!r} (champion) vs {after!r} (candidate)")
    return reasons
