"""The statistics behind "has behaviour regressed?" and "may this candidate replace the champion?".

Every decision is made per slice on paired cases (the same case id evaluated on both sides), because pairing
removes the case-difficulty noise that an unpaired comparison of two pass rates would carry. A slice counts as
changed only when three things agree: enough paired cases (`min_cases`), a significant test (`alpha`, after the
correction) and a change large enough to matter (`min_effect`). Requiring all three is what keeps an unchanged
model, re-evaluated on the same cases, from ever being reported as regressed.

Cases are not independent: the gate set holds several wordings of one question, and a model that learned or
lost that question flips them together. With `unit: group` (the default) the unit of the test is the group
(cases sharing a `group`; an ungrouped case is its own): per group, the candidate's passes on its paired cases
against the baseline's, and the groups that got better or worse feed an exact two-sided sign test (ties
dropped). With every group a single case this is exactly McNemar's test on the cases; both are always reported.
One decision tests several slices at once, so with `correction: holm` (the default) the p-values of the slices
in the family (those with at least `min_cases` paired cases) are adjusted by Holm's step-down method, which
keeps the chance of calling any unchanged slice changed at most `alpha`; regression detection and the gate are
two separate decisions, each its own family.

Floors are checked on the current side alone and only with certainty: a slice breaches its floor when even the
upper bound of its Wilson interval is below the floor, so a few unlucky cases never trip it.

Everything here is a pure function of its arguments: no I/O, no randomness, no clock.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from statistics import NormalDist
from typing import TypedDict

from components.config import RegressionParams

Results = Mapping[str, Mapping[str, bool]]  # slice -> {case_id: passed}
Groups = Mapping[str, str]  # case_id -> group; a case it does not name is a group of its own
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
    b: int  # cases: baseline passed, current failed
    c: int  # cases: baseline failed, current passed
    p_value: float  # exact two-sided McNemar on (b, c); 1.0 when nothing is paired
    worse: bool  # current significantly worse (enough cases, adjusted p < alpha, drop >= min_effect)
    better: bool  # current significantly better (same three conditions, other direction)
    floor_breach: bool  # current is surely below this slice's floor
    reason: str
    n_groups: int = 0  # groups with at least one paired case
    groups_worse: int = 0  # groups where current passes fewer of the group's paired cases than the baseline
    groups_better: int = 0  # ... more of them
    p_group: float = 1.0  # exact two-sided sign test on (groups_worse, groups_better)
    p_adjusted: float = 1.0  # the decision's p-value (the unit's test), after the correction over the family


@dataclass(frozen=True)
class RegressionVerdict:
    regressed: bool
    regressed_slices: list[str]  # sorted
    comparisons: list[SliceComparison]  # sorted by slice
    correction: str = ""  # the test and the correction applied, e.g. "group-level sign test, Holm over 4 slices"


@dataclass(frozen=True)
class GateVerdict:
    promote: bool
    reasons: list[str]  # every failed condition; on promotion, the improvements
    comparisons: list[SliceComparison]  # champion (baseline side) against candidate (current side)
    correction: str = ""


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


def sign_test(worse: int, better: int) -> float:
    """Exact two-sided sign test on the units that changed: under "no change" each is better or worse with
    probability 1/2. Numerically the same tail as McNemar's test, which is the sign test on cases."""
    return mcnemar_exact(worse, better)


def holm_adjust(p_values: Mapping[str, float]) -> dict[str, float]:
    """Holm's step-down adjusted p-values: sorted ascending, the i-th of m gets max over j <= i of
    min(1, (m - j + 1) * p_j). Rejecting every hypothesis whose adjusted p is below alpha keeps the family-wise
    error at most alpha under any dependence between the tests; ties get equal adjusted values."""
    bad = {k: p for k, p in p_values.items() if not 0 <= p <= 1}
    if bad:
        raise ValueError(f"p-values must lie between 0 and 1, got {bad}")
    order = sorted(p_values, key=lambda k: (p_values[k], k))
    adjusted: dict[str, float] = {}
    running = 0.0
    for rank, key in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * p_values[key]))
        adjusted[key] = running
    return adjusted


def group_changes(base: Mapping[str, bool], cur: Mapping[str, bool], paired: list[str],
                  groups: Groups | None) -> tuple[int, int, int]:  # fmt: skip
    """(groups, worse, better) over the paired cases: a group is worse when the current side passes fewer of
    its paired cases than the baseline, better when more, tied otherwise."""
    diff: dict[tuple[str, str], int] = {}
    for case in paired:
        unit = ("group", g) if groups and (g := groups.get(case)) else ("case", case)  # "" is no group either
        diff[unit] = diff.get(unit, 0) + int(bool(cur[case])) - int(bool(base[case]))
    return len(diff), sum(d < 0 for d in diff.values()), sum(d > 0 for d in diff.values())


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


def compare_slices(baseline: Results, current: Results, params: RegressionParams,
                   groups: Groups | None = None) -> list[SliceComparison]:  # fmt: skip
    """Compare every slice seen on either side, sorted by name; only case ids present on both sides are paired.
    The slices with at least `min_cases` paired cases form the family the correction adjusts over."""
    names = sorted(set(baseline) | set(current))
    raw = {name: _paired_counts(baseline.get(name) or {}, current.get(name) or {}, groups) for name in names}
    tested = {name: r.p_unit(params) for name, r in raw.items() if r.n >= params.min_cases}
    adjusted = holm_adjust(tested) if params.correction == "holm" else dict(tested)
    family = correction_label(params, len(tested))
    return [_compare_slice(name, baseline.get(name) or {}, current.get(name) or {}, raw[name],
                           adjusted.get(name, raw[name].p_unit(params)), family, params) for name in names]  # fmt: skip


def correction_label(params: RegressionParams, family: int) -> str:
    """How a decision's slices were tested, for its verdict: "group-level sign test, Holm over 4 slices"."""
    test = "group-level sign test" if params.unit == "group" else "case-level McNemar"
    plural = "slice" if family == 1 else "slices"
    fix = f"Holm over {family} {plural}" if params.correction == "holm" else f"no correction over {family} {plural}"
    return f"{test}, {fix}"


def detect_regression(baseline: Results | None, current: Results, params: RegressionParams,
                      groups: Groups | None = None) -> RegressionVerdict:  # fmt: skip
    """A slice regresses when it is significantly worse than the baseline or surely below its floor.

    With no baseline yet (no champion evaluated), nothing can be significantly worse, so only floors count.
    """
    comparisons = compare_slices(baseline or {}, current, params, groups)
    regressed = sorted(c.slice for c in comparisons if c.worse or c.floor_breach)
    return RegressionVerdict(regressed=bool(regressed), regressed_slices=regressed, comparisons=comparisons,
                             correction=_family_of(comparisons, params))  # fmt: skip


def gate(
    champion: Results,
    candidate: Results,
    regressed_slices: list[str],
    params: RegressionParams,
    champion_retrieval: dict[str, float],
    candidate_retrieval: dict[str, float],
    groups: Groups | None = None,
    noise: Mapping[str, float] | None = None,
) -> GateVerdict:
    """Promote only a candidate that fixes what regressed, breaks nothing else and leaves knowledge untouched.

    Per-slice non-regression is required even when the average improves: a gain in one behaviour must not buy
    a loss in another. A candidate that changes nothing significant is never promoted (it would be churn).
    `noise` (slice -> |rate difference| between two candidates that differ only by their training seed, from a
    calibration) raises the bar of a gain: a significant gain no larger than the slice's seed noise does not
    count as better, since a retrained champion could show it as well. Drops are judged without it.
    """
    comparisons = [_against_noise(c, noise) for c in compare_slices(champion, candidate, params, groups)]
    by_slice = {c.slice: c for c in comparisons}
    correction = _family_of(comparisons, params)
    failures = [
        *_unfixed(regressed_slices, by_slice, comparisons),
        *[f"significantly worse than the champion: {c.reason}" for c in comparisons if c.worse],
        *_new_floor_breaches(champion, comparisons, params),
        *_retrieval_changes(champion_retrieval, candidate_retrieval),
    ]
    if failures:
        return GateVerdict(promote=False, reasons=failures, comparisons=comparisons, correction=correction)
    gains = [f"significantly better than the champion: {c.reason}" for c in comparisons if c.better]
    return GateVerdict(promote=True, reasons=gains, comparisons=comparisons, correction=correction)


@dataclass(frozen=True)
class _Paired:
    n: int
    b: int
    c: int
    groups: int
    groups_worse: int
    groups_better: int

    @property
    def p_case(self) -> float:
        return mcnemar_exact(self.b, self.c)

    @property
    def p_group(self) -> float:
        return sign_test(self.groups_worse, self.groups_better)

    def p_unit(self, params: RegressionParams) -> float:
        return self.p_group if params.unit == "group" else self.p_case


def _paired_counts(base: Mapping[str, bool], cur: Mapping[str, bool], groups: Groups | None) -> _Paired:
    paired = sorted(set(base) & set(cur))
    b = sum(1 for k in paired if base[k] and not cur[k])
    c = sum(1 for k in paired if cur[k] and not base[k])
    return _Paired(len(paired), b, c, *group_changes(base, cur, paired, groups))


def _compare_slice(name: str, base: Mapping[str, bool], cur: Mapping[str, bool], counts: _Paired,
                   p_adjusted: float, family: str, params: RegressionParams) -> SliceComparison:  # fmt: skip
    n, b, c = counts.n, counts.b, counts.c
    if n:
        both = sum(1 for k in set(base) & set(cur) if base[k] and cur[k])
        base_rate, cur_rate, delta = (both + b) / n, (both + c) / n, (c - b) / n  # delta exact, not a difference
    else:
        base_rate, cur_rate = _rate(base), _rate(cur)
        delta = cur_rate - base_rate
    # with groups, the groups must move the way the cases did (a drop of the cases carried by more better groups
    # than worse ones is no evidence of either)
    down = delta < 0 and (params.unit == "case" or counts.groups_worse > counts.groups_better)
    up = delta > 0 and (params.unit == "case" or counts.groups_better > counts.groups_worse)
    tested = n >= params.min_cases and abs(delta) >= params.min_effect and p_adjusted < params.alpha
    breach, floor_note = _floor_check(name, cur, params)
    reason = _change_note(name, counts, base_rate, cur_rate, delta, p_adjusted, family, params, bool(base), bool(cur))
    return SliceComparison(
        slice=name,
        n_paired=n,
        baseline_rate=base_rate,
        current_rate=cur_rate,
        delta=delta,
        b=b,
        c=c,
        p_value=counts.p_case,
        worse=tested and down,
        better=tested and up,
        floor_breach=breach,
        reason=reason + (f"; {floor_note}" if floor_note else ""),
        n_groups=counts.groups,
        groups_worse=counts.groups_worse,
        groups_better=counts.groups_better,
        p_group=counts.p_group,
        p_adjusted=p_adjusted,
    )


def _family_of(comparisons: list[SliceComparison], params: RegressionParams) -> str:
    return correction_label(params, sum(c.n_paired >= params.min_cases for c in comparisons))


def _against_noise(cmp: SliceComparison, noise: Mapping[str, float] | None) -> SliceComparison:
    """The gain set against the slice's seed noise; a gain within the noise is not "better"."""
    if noise is None or cmp.slice not in noise:
        return cmp
    level = noise[cmp.slice]
    within = cmp.better and cmp.delta <= level
    note = f"{cmp.delta:+.2f} vs seed noise {level:.2f}" + (": within the noise, not counted" if within else "")
    return replace(cmp, better=cmp.better and not within, reason=f"{cmp.reason}; {note}")


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


def _change_note(name: str, counts: _Paired, base_rate: float, cur_rate: float, delta: float, p_adjusted: float,
                 family: str, params: RegressionParams, has_base: bool, has_cur: bool) -> str:  # fmt: skip
    """One human sentence saying why the slice did or did not count as changed, with the case-level and the
    group-level counts and the p-value the decision used."""
    if not has_base or not has_cur:
        side = "baseline" if has_base else "current" if has_cur else "neither side (empty slice)"
        return f"{name}: cases only in {side}, 0 paired cases, not compared"
    n = counts.n
    head = f"{name}: {cur_rate:.2f} vs {base_rate:.2f} on {n} paired cases"
    if n < params.min_cases:
        return f"{head}, fewer than min_cases {params.min_cases}, not tested"
    cases = f"cases b={counts.b} c={counts.c}, McNemar p={counts.p_case:.2g}"
    units = (f"{counts.groups} groups: {counts.groups_worse} worse, {counts.groups_better} better, "
             f"sign test p={counts.p_group:.2g}")  # fmt: skip
    test = f"{head} ({cases}; {units}); {family}: p={p_adjusted:.2g}"
    if p_adjusted >= params.alpha:
        return f"{test} >= {params.alpha}, no significant change"
    word = "drop" if delta < 0 else "gain"
    if abs(delta) < params.min_effect:
        return f"{test} < {params.alpha} but {word} {abs(delta):.2f} < min_effect {params.min_effect}"
    if params.unit == "group" and (counts.groups_worse > counts.groups_better) != (delta < 0):
        return f"{test} < {params.alpha} but the groups moved against the cases' {word}, no significant change"
    return f"{test} < {params.alpha}, {word} {abs(delta):.2f} >= {params.min_effect}"


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
