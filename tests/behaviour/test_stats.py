"""Tables for the regression test and the promotion gate: scipy is the oracle for the two statistical primitives."""

from __future__ import annotations

import dataclasses
import itertools
import math

import pytest
from scipy.stats import binomtest

from components.behaviour.stats import (
    GateVerdict,
    RegressionVerdict,
    SliceComparison,
    compare_slices,
    detect_regression,
    gate,
    mcnemar_exact,
    slice_summary,
    wilson_interval,
)
from components.config import RegressionParams

Slice = dict[str, bool]
Results = dict[str, Slice]
RETRIEVAL = {"hit_at_k": 0.8125, "mrr": 0.6342}


# ---------------------------------------------------------------- helpers


def make(both: int, b: int, c: int, neither: int, prefix: str = "case") -> tuple[Slice, Slice]:
    """Paired (baseline, current) outcomes for one slice: `b` cases only the baseline passes, `c` only current."""
    kinds = [(True, True)] * both + [(True, False)] * b + [(False, True)] * c + [(False, False)] * neither
    ids = [f"{prefix}-{i:04d}" for i in range(len(kinds))]
    return {i: k[0] for i, k in zip(ids, kinds, strict=True)}, {i: k[1] for i, k in zip(ids, kinds, strict=True)}


def pair(**slices: tuple[int, int, int, int]) -> tuple[Results, Results]:
    """(baseline, current) results from per-slice (both, b, c, neither) counts."""
    made = {name: make(*counts, prefix=name) for name, counts in slices.items()}
    return {n: m[0] for n, m in made.items()}, {n: m[1] for n, m in made.items()}


def rate(passed: int, n: int, prefix: str = "case") -> Slice:
    """One side's outcomes alone: `passed` passes out of `n`."""
    return {f"{prefix}-{i:04d}": i < passed for i in range(n)}


def params(**kw: object) -> RegressionParams:
    return RegressionParams.model_validate(kw)


def by_slice(comparisons: list[SliceComparison]) -> dict[str, SliceComparison]:
    return {c.slice: c for c in comparisons}


# ---------------------------------------------------------------- wilson_interval

WILSON_GRID = [
    (passed, n, conf)
    for n in (1, 2, 3, 5, 10, 20, 37, 50, 100, 150, 1000, 10_000)
    for passed in sorted({0, 1, n // 3, n // 2, n - 1, n} & set(range(n + 1)))
    for conf in (0.5, 0.8, 0.9, 0.95, 0.99, 0.999)
]


@pytest.mark.parametrize(("passed", "n", "conf"), WILSON_GRID)
def test_wilson_matches_scipy(passed: int, n: int, conf: float) -> None:
    ci = binomtest(passed, n).proportion_ci(confidence_level=conf, method="wilson")
    low, high = wilson_interval(passed, n, conf)
    assert low == pytest.approx(ci.low, rel=1e-9, abs=1e-12)
    assert high == pytest.approx(ci.high, rel=1e-9, abs=1e-12)
    assert 0.0 <= low <= passed / n <= high <= 1.0


@pytest.mark.parametrize(
    ("passed", "n", "conf", "expected"),
    [
        (0, 10, 0.95, (0.0, 0.2775)),
        (10, 10, 0.95, (0.7225, 1.0)),
        (5, 10, 0.95, (0.2366, 0.7634)),
        (1, 10, 0.95, (0.0179, 0.4042)),
        (81, 263, 0.95, (0.2553, 0.3662)),
        (50, 100, 0.99, (0.3753, 0.6247)),
    ],
)
def test_wilson_known_values(passed: int, n: int, conf: float, expected: tuple[float, float]) -> None:
    low, high = wilson_interval(passed, n, conf)
    assert (round(low, 4), round(high, 4)) == expected


@pytest.mark.parametrize("conf", [0.5, 0.95, 0.999])
def test_wilson_no_cases_is_uninformative(conf: float) -> None:
    assert wilson_interval(0, 0, conf) == (0.0, 1.0)


@pytest.mark.parametrize("n", [2, 10, 100])
def test_wilson_widens_with_confidence(n: int) -> None:
    narrow, wide = wilson_interval(n // 2, n, 0.8), wilson_interval(n // 2, n, 0.99)
    assert wide[0] < narrow[0] and narrow[1] < wide[1]


@pytest.mark.parametrize(
    ("passed", "n", "conf"), [(-1, 5, 0.95), (6, 5, 0.95), (0, -1, 0.95), (1, 5, 0.0), (1, 5, 1.0), (1, 5, 1.5)]
)
def test_wilson_rejects_bad_input(passed: int, n: int, conf: float) -> None:
    with pytest.raises(ValueError, match=r"passed|confidence"):
        wilson_interval(passed, n, conf)


# ---------------------------------------------------------------- mcnemar_exact

MCNEMAR_GRID = [(b, c) for b, c in itertools.product(range(26), repeat=2) if b + c > 0] + [
    (100, 130),
    (130, 100),
    (450, 500),
    (1000, 1100),
    (0, 200),
    (3, 997),
    (1500, 1500),
]


@pytest.mark.parametrize(("b", "c"), MCNEMAR_GRID)
def test_mcnemar_matches_scipy(b: int, c: int) -> None:
    assert mcnemar_exact(b, c) == pytest.approx(binomtest(b, b + c, 0.5).pvalue, rel=1e-9, abs=1e-300)


@pytest.mark.parametrize(
    ("b", "c", "expected"),
    [
        (0, 0, 1.0),
        (1, 0, 1.0),
        (3, 3, 1.0),
        (0, 5, 0.0625),
        (0, 6, 0.03125),
        (6, 0, 0.03125),
        (1, 5, 0.21875),
        (2, 12, 0.012939453125),
        (10, 0, 0.001953125),
    ],
)
def test_mcnemar_known_values(b: int, c: int, expected: float) -> None:
    assert mcnemar_exact(b, c) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(("b", "c"), [(b, c) for b in range(0, 40, 3) for c in range(0, 40, 4)])
def test_mcnemar_is_symmetric_and_a_probability(b: int, c: int) -> None:
    p = mcnemar_exact(b, c)
    assert p == mcnemar_exact(c, b)
    assert 0.0 < p <= 1.0


@pytest.mark.parametrize("k", range(0, 60, 7))
def test_mcnemar_equal_discordance_is_no_evidence(k: int) -> None:
    assert mcnemar_exact(k, k) == 1.0


def test_mcnemar_stays_exact_far_out_in_the_tail() -> None:
    assert mcnemar_exact(0, 1000) == 2.0**-999
    assert mcnemar_exact(1, 1000) == pytest.approx(1002 * 2.0**-1000, rel=1e-12)


@pytest.mark.parametrize(("b", "c"), [(-1, 0), (0, -3)])
def test_mcnemar_rejects_negative_counts(b: int, c: int) -> None:
    with pytest.raises(ValueError, match="discordant"):
        mcnemar_exact(b, c)


# ---------------------------------------------------------------- slice_summary


@pytest.mark.parametrize(
    ("outcomes", "conf", "expected"),
    [
        (rate(5, 10), 0.95, {"pass_rate": 0.5, "ci_low": 0.2366, "ci_high": 0.7634, "n": 10}),
        (rate(0, 10), 0.95, {"pass_rate": 0.0, "ci_low": 0.0, "ci_high": 0.2775, "n": 10}),
        (rate(10, 10), 0.95, {"pass_rate": 1.0, "ci_low": 0.7225, "ci_high": 1.0, "n": 10}),
        (rate(2, 3), 0.95, {"pass_rate": 0.6667, "ci_low": 0.2077, "ci_high": 0.9385, "n": 3}),
        (rate(50, 100), 0.99, {"pass_rate": 0.5, "ci_low": 0.3753, "ci_high": 0.6247, "n": 100}),
        ({}, 0.95, {"pass_rate": 0.0, "ci_low": 0.0, "ci_high": 1.0, "n": 0}),
    ],
)
def test_slice_summary_table(outcomes: Slice, conf: float, expected: dict[str, float]) -> None:
    assert slice_summary({"format": outcomes}, confidence=conf) == {"format": expected}


def test_slice_summary_covers_every_slice_and_defaults_to_95() -> None:
    summary = slice_summary({"refusal": rate(1, 10), "format": rate(5, 10), "empty": {}})
    assert list(summary) == ["empty", "format", "refusal"]
    assert summary["format"]["ci_low"] == 0.2366
    assert summary["refusal"]["pass_rate"] == 0.1
    assert summary["empty"]["n"] == 0


def test_slice_summary_of_nothing_is_empty() -> None:
    assert slice_summary({}) == {}


# ---------------------------------------------------------------- compare_slices


def test_compare_counts_discordant_pairs_and_rates() -> None:
    base, cur = pair(format=(100, 20, 0, 30))
    (cmp,) = compare_slices(base, cur, params())
    assert (cmp.slice, cmp.n_paired, cmp.b, cmp.c) == ("format", 150, 20, 0)
    assert cmp.baseline_rate == pytest.approx(120 / 150)
    assert cmp.current_rate == pytest.approx(100 / 150)
    assert cmp.delta == pytest.approx(-20 / 150)
    assert cmp.p_value == pytest.approx(binomtest(20, 20).pvalue)
    assert (cmp.worse, cmp.better, cmp.floor_breach) == (True, False, False)


def test_compare_reason_is_a_sentence_with_the_figures() -> None:
    base, cur = pair(format=(100, 20, 0, 30))
    (cmp,) = compare_slices(base, cur, params())
    assert cmp.reason == (
        "format: 0.67 vs 0.80 on 150 paired cases (cases b=20 c=0, McNemar p=1.9e-06; 150 groups: 20 worse, "
        "0 better, sign test p=1.9e-06); group-level sign test, Holm over 1 slice: p=1.9e-06 < 0.05, "
        "drop 0.13 >= 0.05"
    )


def test_compare_pairs_only_ids_present_on_both_sides() -> None:
    base = {"format": {**rate(30, 30, "old"), "shared-1": True, "shared-2": False}}
    cur = {"format": {**rate(0, 30, "new"), "shared-1": True, "shared-2": True}}
    (cmp,) = compare_slices(base, cur, params())
    assert (cmp.n_paired, cmp.b, cmp.c) == (2, 0, 1)
    assert cmp.baseline_rate == 0.5 and cmp.current_rate == 1.0


def test_compare_is_sorted_and_covers_both_sides() -> None:
    base, cur = pair(refusal=(20, 0, 0, 0), citation=(20, 0, 0, 0))
    base["only_base"] = rate(3, 5)
    cur["only_cur"] = rate(1, 5)
    names = [c.slice for c in compare_slices(base, cur, params())]
    assert names == ["citation", "only_base", "only_cur", "refusal"]


@pytest.mark.parametrize(
    ("base", "cur", "expected_rates", "side"),
    [
        ({"format": rate(3, 4)}, {}, (0.75, 0.0), "only in baseline"),
        ({}, {"format": rate(1, 4)}, (0.0, 0.25), "only in current"),
        ({"format": {}}, {"format": {}}, (0.0, 0.0), "neither side"),
        ({"format": rate(4, 4)}, {"format": {}}, (1.0, 0.0), "only in baseline"),
        ({"format": rate(4, 4, "a")}, {"format": rate(0, 4, "b")}, (1.0, 0.0), "0 paired"),
    ],
)
def test_compare_unpaired_slices_are_reported_not_judged(
    base: Results, cur: Results, expected_rates: tuple[float, float], side: str
) -> None:
    (cmp,) = compare_slices(base, cur, params(min_cases=1, min_effect=0.0))
    assert (cmp.n_paired, cmp.b, cmp.c, cmp.p_value) == (0, 0, 0, 1.0)
    assert (cmp.baseline_rate, cmp.current_rate) == expected_rates
    assert not cmp.worse and not cmp.better
    assert side in cmp.reason


@pytest.mark.parametrize(
    ("counts", "kw", "fragment"),
    [
        ((10, 4, 0, 6), {}, "p=0.12 >= 0.05, no significant change"),
        ((2, 10, 0, 3), {}, "fewer than min_cases 20, not tested"),
        ((900, 20, 2, 78), {}, "but drop 0.02 < min_effect 0.05"),
        ((100, 0, 20, 30), {}, "gain 0.13 >= 0.05"),
        (
            (20, 0, 0, 20),
            {"floors": {"format": 0.8}},
            "floor breach: rate 0.50 on 40 cases, upper 95% bound 0.65 < floor",
        ),
        ((14, 0, 0, 6), {"floors": {"format": 0.8}}, "floor 0.80 kept: rate 0.70 on 20 cases"),
        ((5, 0, 0, 5), {"floors": {"format": 0.8}}, "floor 0.80 not checked: 10 cases < min_cases 20"),
    ],
)
def test_compare_reason_explains_the_outcome(counts: tuple[int, int, int, int], kw: dict, fragment: str) -> None:
    base, cur = pair(format=counts)
    (cmp,) = compare_slices(base, cur, params(**kw))
    assert fragment in cmp.reason


@pytest.mark.parametrize(
    "counts", [(b0, b, c, n0) for b0 in (0, 40) for b in (0, 3, 12, 30) for c in (0, 2, 12, 25) for n0 in (0, 17)]
)
def test_compare_swapping_sides_swaps_worse_and_better(counts: tuple[int, int, int, int]) -> None:
    base, cur = pair(format=counts)
    forward = by_slice(compare_slices(base, cur, params()))["format"]
    backward = by_slice(compare_slices(cur, base, params()))["format"]
    assert (forward.worse, forward.better) == (backward.better, backward.worse)
    assert forward.p_value == backward.p_value
    assert forward.delta == pytest.approx(-backward.delta)
    assert not (forward.worse and forward.better)


def test_comparison_is_frozen() -> None:
    (cmp,) = compare_slices(*pair(format=(20, 0, 0, 0)), params())
    with pytest.raises(dataclasses.FrozenInstanceError):
        cmp.worse = True  # type: ignore[misc]


# ---------------------------------------------------------------- detect_regression

REGRESSION_TABLE = [
    pytest.param(pair(format=(100, 20, 0, 30)), {}, ["format"], id="significant-drop"),
    pytest.param(pair(format=(10, 4, 0, 6)), {}, [], id="drop-within-noise-p-above-alpha"),
    pytest.param(pair(format=(100, 5, 2, 43)), {}, [], id="small-drop-within-noise"),
    pytest.param(pair(format=(2, 10, 0, 3)), {}, [], id="large-drop-too-few-cases"),
    pytest.param(pair(format=(9, 10, 0, 0)), {}, [], id="min-cases-minus-one"),
    pytest.param(pair(format=(10, 10, 0, 0)), {}, ["format"], id="min-cases-exactly"),
    pytest.param(pair(format=(900, 20, 2, 78)), {}, [], id="significant-but-effect-below-min-effect"),
    pytest.param(pair(format=(900, 20, 2, 78)), {"min_effect": 0.01}, ["format"], id="same-drop-smaller-min-effect"),
    pytest.param(pair(format=(100, 6, 0, 14)), {}, ["format"], id="effect-exactly-min-effect"),
    pytest.param(pair(format=(100, 6, 0, 15)), {}, [], id="effect-just-below-min-effect"),
    pytest.param(pair(format=(100, 6, 0, 14)), {"alpha": 0.03125}, [], id="p-exactly-alpha-not-significant"),
    pytest.param(pair(format=(100, 6, 0, 14)), {"alpha": 0.0313}, ["format"], id="p-just-below-alpha"),
    pytest.param(pair(format=(100, 0, 20, 30)), {}, [], id="significant-improvement"),
    pytest.param(pair(refusal=(20, 0, 0, 20)), {"floors": {"refusal": 0.8}}, ["refusal"], id="floor-breach"),
    pytest.param(pair(refusal=(5, 0, 0, 5)), {"floors": {"refusal": 0.8}}, [], id="floor-breach-too-few-cases"),
    pytest.param(pair(refusal=(14, 0, 0, 6)), {"floors": {"refusal": 0.8}}, [], id="below-floor-but-ci-above"),
    pytest.param(pair(refusal=(14, 0, 0, 6)), {"floors": {"citation": 0.99}}, [], id="floor-for-another-slice"),
    pytest.param(pair(refusal=(38, 0, 0, 2)), {"floors": {"refusal": 0.8}}, [], id="above-floor"),
    pytest.param(pair(refusal=(40, 0, 0, 0)), {"floors": {"refusal": 1.0}}, [], id="perfect-at-floor-one"),
    pytest.param(pair(refusal=(0, 0, 0, 40)), {"floors": {"refusal": 0.0}}, [], id="floor-zero-never-breached"),
    pytest.param(pair(format=(100, 20, 0, 30), citation=(100, 0, 20, 30)), {}, ["format"], id="one-better-one-worse"),
    pytest.param(
        pair(format=(100, 20, 0, 30), refusal=(20, 0, 0, 20), intent=(150, 0, 0, 0)),
        {"floors": {"refusal": 0.8}},
        ["format", "refusal"],
        id="drop-and-floor-sorted",
    ),
    pytest.param(pair(format=(100, 20, 0, 30)), {"floors": {"format": 0.5}}, ["format"], id="worse-but-floor-kept"),
    pytest.param(pair(format=(100, 0, 0, 50)), {}, [], id="tie"),
    pytest.param(pair(format=(100, 9, 9, 32)), {}, [], id="tie-with-churn"),
    pytest.param(({"format": {}}, {"format": {}}), {"floors": {"format": 0.9}}, [], id="empty-slices"),
    pytest.param(({"format": rate(50, 50)}, {}), {}, [], id="slice-only-in-baseline"),
    pytest.param(({"format": rate(50, 50)}, {"format": {}}), {}, [], id="slice-emptied-in-current"),
    pytest.param(({}, {"format": rate(0, 50)}), {}, [], id="slice-only-in-current-no-floor"),
    pytest.param(
        ({}, {"format": rate(0, 50)}), {"floors": {"format": 0.5}}, ["format"], id="slice-only-in-current-below-floor"
    ),
    pytest.param(
        ({"format": rate(50, 50, "old")}, {"format": rate(0, 50, "new")}), {}, [], id="no-shared-ids-never-worse"
    ),
    pytest.param(({}, {}), {"floors": {"format": 0.9}}, [], id="no-results-at-all"),
]


@pytest.mark.parametrize(("sides", "kw", "expected"), REGRESSION_TABLE)
def test_detect_regression_table(sides: tuple[Results, Results], kw: dict, expected: list[str]) -> None:
    verdict = detect_regression(sides[0], sides[1], params(**kw))
    assert isinstance(verdict, RegressionVerdict)
    assert verdict.regressed_slices == expected
    assert verdict.regressed is bool(expected)
    assert [c.slice for c in verdict.comparisons] == sorted(set(sides[0]) | set(sides[1]))


def test_below_floor_but_ci_above_is_really_below_the_floor() -> None:
    """Guards the table row: the rate is under the floor, only the interval says "not sure"."""
    _, high = wilson_interval(14, 20, 0.95)
    assert 14 / 20 < 0.8 < high


def test_detect_regression_one_better_one_worse_flags() -> None:
    verdict = detect_regression(*pair(format=(100, 20, 0, 30), citation=(100, 0, 20, 30)), params())
    cmp = by_slice(verdict.comparisons)
    assert (cmp["format"].worse, cmp["format"].better) == (True, False)
    assert (cmp["citation"].worse, cmp["citation"].better) == (False, True)


@pytest.mark.parametrize(
    ("current", "kw", "expected"),
    [
        ({"format": rate(100, 100)}, {}, []),
        ({"format": rate(0, 100)}, {}, []),
        ({"format": rate(0, 100)}, {"floors": {"format": 0.5}}, ["format"]),
        ({"format": rate(40, 50), "refusal": rate(10, 50)}, {"floors": {"format": 0.85, "refusal": 0.5}}, ["refusal"]),
        ({"format": rate(0, 10)}, {"floors": {"format": 0.5}}, []),
        ({"format": {}}, {"floors": {"format": 0.5}}, []),
        ({}, {"floors": {"format": 0.5}}, []),
    ],
)
def test_detect_regression_without_baseline_only_floors_count(current: Results, kw: dict, expected: list[str]) -> None:
    verdict = detect_regression(None, current, params(**kw))
    assert verdict.regressed_slices == expected
    assert verdict.regressed is bool(expected)
    assert all(c.n_paired == 0 and not c.worse and not c.better for c in verdict.comparisons)


@pytest.mark.parametrize(("n", "passed"), [(n, p) for n in (0, 1, 5, 20, 21, 50, 150, 400) for p in {0, n // 4, n}])
@pytest.mark.parametrize("kw", [{}, {"min_cases": 1, "min_effect": 0.0, "alpha": 0.5}])
def test_unchanged_model_on_the_same_cases_never_regresses(n: int, passed: int, kw: dict) -> None:
    results = {"format": rate(passed, n), "citation": rate(n - passed, n, "cit")}
    verdict = detect_regression(results, {k: dict(v) for k, v in results.items()}, params(**kw))
    assert verdict.regressed is False
    assert all(c.delta == 0 and c.p_value == 1.0 and not c.better for c in verdict.comparisons)


@pytest.mark.parametrize("flips", range(0, 60, 4))
def test_symmetric_flakiness_never_regresses(flips: int) -> None:
    """Cases that flip both ways equally often are noise, whatever their number."""
    verdict = detect_regression(*pair(format=(200, flips, flips, 100)), params(min_cases=1, min_effect=0.0))
    assert verdict.regressed is False


def test_verdict_is_frozen() -> None:
    verdict = detect_regression(*pair(format=(20, 0, 0, 0)), params())
    with pytest.raises(dataclasses.FrozenInstanceError):
        verdict.regressed = True  # type: ignore[misc]


# ---------------------------------------------------------------- gate


def gate_for(
    champion: Results,
    candidate: Results,
    regressed: list[str],
    kw: dict | None = None,
    retrieval: dict[str, float] | None = None,
) -> GateVerdict:
    cand_retrieval = RETRIEVAL if retrieval is None else retrieval
    return gate(champion, candidate, regressed, params(**(kw or {})), dict(RETRIEVAL), dict(cand_retrieval))


GATE_TABLE = [
    # (id, slices, regressed, kw, retrieval, promote, names that must appear in the reasons)
    pytest.param(
        {"format": (100, 0, 20, 30), "citation": (150, 0, 0, 0)},
        ["format"],
        {},
        None,
        True,
        ["format"],
        id="fixes-regressed-nothing-worse",
    ),
    pytest.param(
        {"format": (100, 0, 20, 30), "citation": (100, 20, 0, 30)},
        ["format"],
        {},
        None,
        False,
        ["citation"],
        id="fixes-regressed-but-another-slice-worse",
    ),
    pytest.param(
        {"format": (100, 0, 60, 30), "citation": (100, 20, 0, 30)},
        ["format"],
        {},
        None,
        False,
        ["citation"],
        id="average-improves-but-one-slice-worse",
    ),
    pytest.param(
        {"format": (100, 2, 6, 42)},
        ["format"],
        {},
        None,
        False,
        ["format", "p=0.29"],
        id="improvement-not-significant",
    ),
    pytest.param(
        {"format": (10, 0, 9, 0)},
        ["format"],
        {},
        None,
        False,
        ["format", "min_cases 20"],
        id="improvement-too-few-cases",
    ),
    pytest.param(
        {"format": (900, 2, 20, 78)},
        ["format"],
        {},
        None,
        False,
        ["format", "min_effect"],
        id="improvement-below-min-effect",
    ),
    pytest.param(
        {"format": (100, 0, 20, 30), "citation": (100, 0, 20, 30)},
        ["format", "citation"],
        {},
        None,
        True,
        ["format", "citation"],
        id="fixes-two-regressed-slices",
    ),
    pytest.param(
        {"format": (100, 0, 20, 30), "citation": (100, 0, 0, 50)},
        ["citation", "format"],
        {},
        None,
        False,
        ["citation"],
        id="fixes-one-of-two-regressed",
    ),
    pytest.param(
        {"format": (100, 0, 20, 30)},
        ["format"],
        {},
        {**RETRIEVAL, "mrr": RETRIEVAL["mrr"] + 1e-6},
        False,
        ["mrr"],
        id="retrieval-changed",
    ),
    pytest.param(
        {"format": (100, 0, 20, 30)},
        ["format"],
        {},
        {**RETRIEVAL, "mrr": RETRIEVAL["mrr"] + 1e-10},
        True,
        ["format"],
        id="retrieval-equal-within-tolerance",
    ),
    pytest.param(
        {"format": (100, 0, 20, 30)},
        ["format"],
        {},
        {"hit_at_k": RETRIEVAL["hit_at_k"]},
        False,
        ["mrr"],
        id="retrieval-key-missing",
    ),
    pytest.param(
        {"format": (100, 0, 20, 30)},
        ["format"],
        {},
        {**RETRIEVAL, "ndcg": 0.5},
        False,
        ["ndcg"],
        id="retrieval-key-added",
    ),
    pytest.param(
        {"format": (100, 0, 20, 30)},
        ["format"],
        {},
        {**RETRIEVAL, "mrr": math.nan},
        False,
        ["mrr"],
        id="retrieval-nan",
    ),
    pytest.param(
        {"format": (150, 0, 0, 0)},
        [],
        {},
        None,
        False,
        ["changes nothing"],
        id="no-regressed-no-improvement",
    ),
    pytest.param(
        {"format": (100, 0, 20, 30)},
        [],
        {},
        None,
        True,
        ["format"],
        id="no-regressed-with-improvement",
    ),
    pytest.param(
        {"format": (100, 0, 20, 30), "refusal": (20, 0, 0, 20)},
        ["format"],
        {"floors": {"refusal": 0.3}},
        None,
        True,
        ["format"],
        id="floor-kept-by-both",
    ),
    pytest.param(
        {"format": (100, 0, 20, 30), "refusal": (24, 4, 0, 12)},
        ["format"],
        {"floors": {"refusal": 0.8}},
        None,
        False,
        ["refusal", "floor"],
        id="candidate-newly-breaches-floor",
    ),
    pytest.param(
        {"refusal": (20, 0, 40, 40)},
        ["refusal"],
        {"floors": {"refusal": 0.9}},
        None,
        True,
        ["refusal"],
        id="floor-already-breached-by-champion-and-improved",
    ),
    pytest.param({"format": (100, 0, 0, 50)}, ["format"], {}, None, False, ["format"], id="tie-with-regressed"),
    pytest.param({"format": (100, 0, 0, 50)}, [], {}, None, False, ["changes nothing"], id="tie-no-regressed"),
    pytest.param({"format": (100, 9, 9, 32)}, ["format"], {}, None, False, ["format"], id="tie-with-churn"),
    pytest.param(
        {"format": (100, 0, 20, 30)},
        ["intent"],
        {},
        None,
        False,
        ["intent", "no results"],
        id="regressed-slice-missing",
    ),
    pytest.param(
        {"format": (100, 20, 0, 30)},
        ["format"],
        {},
        None,
        False,
        ["format", "drop 0.13"],
        id="candidate-worse-on-it",
    ),
]


@pytest.mark.parametrize(("slices", "regressed", "kw", "retrieval", "promote", "named"), GATE_TABLE)
def test_gate_table(
    slices: dict[str, tuple[int, int, int, int]],
    regressed: list[str],
    kw: dict,
    retrieval: dict[str, float] | None,
    promote: bool,
    named: list[str],
) -> None:
    champion, candidate = pair(**slices)
    verdict = gate_for(champion, candidate, regressed, kw, retrieval)
    assert verdict.promote is promote
    assert verdict.reasons, "a verdict always says why"
    text = "\n".join(verdict.reasons)
    for name in named:
        assert name in text
    assert [c.slice for c in verdict.comparisons] == sorted(slices)


def test_gate_reasons_list_every_failed_condition() -> None:
    champion, candidate = pair(format=(100, 2, 6, 42), citation=(100, 20, 0, 30), refusal=(24, 4, 0, 12))
    verdict = gate_for(champion, candidate, ["format"], {"floors": {"refusal": 0.8}}, {"hit_at_k": 0.1, "mrr": 0.2})
    assert verdict.promote is False
    joined = "\n".join(verdict.reasons)
    assert "regressed slice format not significantly better" in joined
    assert "significantly worse than the champion: citation: 0.67 vs 0.80" in joined
    assert "newly breaches a floor" in joined and "refusal" in joined
    assert "hit_at_k" in joined and "mrr" in joined
    assert len(verdict.reasons) == 5


def test_gate_promotion_reasons_are_the_improvements() -> None:
    champion, candidate = pair(format=(100, 0, 20, 30), citation=(150, 0, 0, 0), intent=(100, 0, 20, 30))
    verdict = gate_for(champion, candidate, ["format"])
    assert verdict.promote is True
    assert len(verdict.reasons) == 2
    assert verdict.reasons[0].startswith("significantly better than the champion: format: 0.80 vs 0.67")
    assert "intent" in verdict.reasons[1]


def test_gate_identical_results_never_promote() -> None:
    champion, _ = pair(format=(100, 20, 0, 30), citation=(10, 0, 0, 10))
    for regressed in ([], ["format"], ["citation", "format"]):
        assert gate_for(champion, {k: dict(v) for k, v in champion.items()}, regressed).promote is False


def test_gate_empty_retrieval_on_both_sides_is_unchanged() -> None:
    champion, candidate = pair(format=(100, 0, 20, 30))
    verdict = gate(champion, candidate, ["format"], params(), {}, {})
    assert verdict.promote is True


def test_gate_verdict_is_frozen() -> None:
    verdict = gate_for(*pair(format=(100, 0, 20, 30)), ["format"])
    with pytest.raises(dataclasses.FrozenInstanceError):
        verdict.promote = False  # type: ignore[misc]
