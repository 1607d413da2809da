"""Tables for the group-level test and Holm's correction, each against an oracle computed another way: brute-force
enumeration of sign vectors, of group label swaps and of the closed testing procedure, and hand-computed values."""

from __future__ import annotations

import itertools
from fractions import Fraction

import pytest
from pydantic import ValidationError

from components.behaviour.stats import (
    compare_slices,
    detect_regression,
    gate,
    group_changes,
    holm_adjust,
    mcnemar_exact,
    sign_test,
)
from components.config import RegressionParams

RETRIEVAL = {"hit_at_k": 0.8, "mrr": 0.6}
Design = list[list[tuple[bool, bool]]]  # groups of cases, each case (baseline passed, current passed)


def params(**kw: object) -> RegressionParams:
    return RegressionParams.model_validate(kw)


def sides(design: Design, name: str = "format") -> tuple[dict, dict, dict[str, str]]:
    """(baseline, current, groups) for one slice from a list of groups of (baseline, current) outcomes."""
    base, cur, groups = {}, {}, {}
    for g, cases in enumerate(design):
        for i, (b, c) in enumerate(cases):
            case = f"{name}-{g:03d}-{i}"
            base[case], cur[case], groups[case] = b, c, f"{name}-g{g:03d}"
    return {name: base}, {name: cur}, groups


def clustered(worse: int, better: int, tied: int, size: int, name: str = "format") -> tuple[dict, dict, dict]:
    """Groups of `size` wordings that flip together: `worse` groups lost every wording, `better` gained every one,
    `tied` passed on both sides."""
    design = [[(True, False)] * size] * worse + [[(False, True)] * size] * better + [[(True, True)] * size] * tied
    return sides(design, name)


def merged(*parts: tuple[dict, dict, dict]) -> tuple[dict, dict, dict]:
    base, cur, groups = {}, {}, {}
    for b, c, g in parts:
        base.update(b)
        cur.update(c)
        groups.update(g)
    return base, cur, groups


# ---------------------------------------------------------------- sign_test: brute force over sign vectors


def brute_sign_test(worse: int, better: int) -> Fraction:
    """P(a sign vector of the same length is at least as unbalanced), every vector equally likely."""
    n = worse + better
    if n == 0:
        return Fraction(1)
    observed = abs(better - worse)
    extreme = sum(1 for signs in itertools.product((-1, 1), repeat=n) if abs(sum(signs)) >= observed)
    return Fraction(extreme, 2**n)


@pytest.mark.parametrize(("worse", "better"), [(w, b) for w in range(13) for b in range(13) if w + b <= 14])
def test_sign_test_equals_enumeration(worse: int, better: int) -> None:
    assert Fraction(sign_test(worse, better)) == brute_sign_test(worse, better)  # dyadic: exact in a float


@pytest.mark.parametrize(
    ("worse", "better", "expected"),
    [(0, 0, 1.0), (0, 1, 1.0), (0, 4, 0.125), (0, 5, 0.0625), (0, 6, 0.03125), (1, 6, 0.125), (1, 8, 0.0390625),
     (2, 10, 0.03857421875), (3, 3, 1.0), (5, 0, 0.0625)],
)  # fmt: skip
def test_sign_test_known_values(worse: int, better: int, expected: float) -> None:
    assert sign_test(worse, better) == expected


# ---------------------------------------------------------------- group_changes

GROUP_TABLE = [
    pytest.param([[(True, False)]], (1, 1, 0), id="one-case-lost"),
    pytest.param([[(False, True)]], (1, 0, 1), id="one-case-gained"),
    pytest.param([[(True, True)], [(False, False)]], (2, 0, 0), id="concordant-groups-tie"),
    pytest.param([[(True, False), (False, True)]], (1, 0, 0), id="flips-both-ways-inside-a-group-tie"),
    pytest.param([[(True, False), (True, False), (False, True)]], (1, 1, 0), id="net-loss-of-one"),
    pytest.param([[(True, False)] * 3, [(False, True)]], (2, 1, 1), id="three-lost-one-gained-is-one-each"),
    pytest.param([[(False, True)] * 3] * 4 + [[(True, True)] * 3] * 2, (6, 0, 4), id="clustered-gains"),
    pytest.param([], (0, 0, 0), id="nothing-paired"),
]


@pytest.mark.parametrize(("design", "expected"), GROUP_TABLE)
def test_group_changes_table(design: Design, expected: tuple[int, int, int]) -> None:
    base, cur, groups = sides(design)
    paired = sorted(base["format"])
    assert group_changes(base["format"], cur["format"], paired, groups) == expected


def test_cases_the_groups_do_not_name_are_their_own_groups() -> None:
    base, cur = {"a": True, "b": True, "c": False}, {"a": False, "b": False, "c": True}
    assert group_changes(base, cur, ["a", "b", "c"], None) == (3, 2, 1)
    assert group_changes(base, cur, ["a", "b", "c"], {"a": "g", "b": "g"}) == (2, 1, 1)
    assert group_changes(base, cur, ["a", "b", "c"], {"a": "c", "b": "c"}) == (2, 1, 1)  # a group named like a case


# ---------------------------------------------------------------- the group test is the randomisation test of groups


def swap_test(design: Design) -> Fraction:
    """Exact randomisation test: under "no change" the two sides of each group are exchangeable; enumerate every
    way of swapping them per group and count the swaps whose (better - worse groups) is at least as extreme."""

    def statistic(swaps: tuple[bool, ...]) -> int:
        total = 0
        for cases, swapped in zip(design, swaps, strict=True):
            diff = sum(int(c) - int(b) for b, c in cases) * (-1 if swapped else 1)
            total += (diff > 0) - (diff < 0)
        return total

    observed = abs(statistic((False,) * len(design)))
    every = list(itertools.product((False, True), repeat=len(design)))
    return Fraction(sum(abs(statistic(s)) >= observed for s in every), len(every))


OUTCOMES = [(True, True), (True, False), (False, True), (False, False)]


@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (2, 2, 2), (1, 2, 3), (3, 3), (1, 1, 2, 2)])
def test_group_p_value_equals_the_swap_test_on_every_design(shape: tuple[int, ...]) -> None:
    checked = 0
    for outcomes in itertools.product(OUTCOMES, repeat=sum(shape)):
        design, at = [], 0
        for size in shape:
            design.append(list(outcomes[at : at + size]))
            at += size
        base, cur, groups = sides(design)
        (cmp,) = compare_slices(base, cur, params(min_cases=1), groups)
        assert Fraction(cmp.p_group) == swap_test(design), design
        checked += 1
    assert checked == 4 ** sum(shape)


# ---------------------------------------------------------------- singleton groups: exactly today's McNemar

SINGLETON_GRID = [(both, b, c, neither) for both in (0, 30) for neither in (0, 12) for b in range(0, 14, 3)
                  for c in range(0, 14, 2)]  # fmt: skip


@pytest.mark.parametrize(("both", "b", "c", "neither"), SINGLETON_GRID)
@pytest.mark.parametrize("how", ["no-groups", "own-id", "distinct-names"])
def test_singleton_groups_equal_case_level_mcnemar(both: int, b: int, c: int, neither: int, how: str) -> None:
    design = [[(True, True)]] * both + [[(True, False)]] * b + [[(False, True)]] * c + [[(False, False)]] * neither
    base, cur, named = sides(design)
    groups = {"no-groups": None, "own-id": {k: k for k in named}, "distinct-names": named}[how]
    kw = {"min_cases": 1, "min_effect": 0.0}
    (by_group,) = compare_slices(base, cur, params(**kw), groups)
    (by_case,) = compare_slices(base, cur, params(unit="case", **kw), groups)
    assert by_group.p_group == by_group.p_value == mcnemar_exact(b, c)
    assert (by_group.groups_worse, by_group.groups_better, by_group.n_groups) == (b, c, len(design))
    assert (by_group.worse, by_group.better, by_group.p_adjusted) == (by_case.worse, by_case.better, by_case.p_adjusted)


# ---------------------------------------------------------------- holm_adjust: against closed testing


def closed_testing(p: dict[str, Fraction], alpha: Fraction) -> set[str]:
    """Holm by its definition as a closed test of Bonferroni tests: reject H_i iff every intersection hypothesis
    containing i is rejected, i.e. every subset S holding i has a p below alpha / |S|."""
    names = list(p)
    return {
        i
        for i in names
        if all(
            min(p[j] for j in subset) < alpha / len(subset)
            for size in range(1, len(names) + 1)
            for subset in itertools.combinations(names, size)
            if i in subset
        )
    }


GRID = [Fraction(0), Fraction(1, 256), Fraction(1, 128), Fraction(3, 256), Fraction(1, 64), Fraction(3, 128),
        Fraction(1, 32), Fraction(5, 128), Fraction(1, 16), Fraction(3, 32), Fraction(1, 4), Fraction(1)]  # fmt: skip


@pytest.mark.parametrize("m", [1, 2, 3, 4])
@pytest.mark.parametrize("alpha", [Fraction(1, 16), Fraction(1, 32), Fraction(1, 20), Fraction(1, 8)])
def test_holm_rejects_exactly_what_closed_testing_rejects(m: int, alpha: Fraction) -> None:
    names = [f"s{i}" for i in range(m)]
    for values in itertools.product(GRID, repeat=m):
        p = dict(zip(names, values, strict=True))
        adjusted = holm_adjust({k: float(v) for k, v in p.items()})
        assert {k for k, v in adjusted.items() if Fraction(v) < alpha} == closed_testing(p, alpha), p


@pytest.mark.parametrize("m", [1, 2, 3, 4])
def test_holm_adjusted_values_are_the_step_down_maxima(m: int) -> None:
    """Adjusted values computed in exact arithmetic: sorted ascending, max over j <= i of (m - j + 1) p_j."""
    names = [f"s{i}" for i in range(m)]
    for values in itertools.product(GRID[:8], repeat=m):
        p = dict(zip(names, values, strict=True))
        order = sorted(names, key=lambda k: (p[k], k))
        expected = {k: max(min(Fraction(1), (m - j) * p[order[j]]) for j in range(order.index(k) + 1)) for k in names}
        assert {k: Fraction(v) for k, v in holm_adjust({k: float(v) for k, v in p.items()}).items()} == expected


@pytest.mark.parametrize(
    ("p", "expected"),
    [
        ({"a": 0.01}, {"a": 0.01}),
        ({"a": 0.01, "b": 0.04, "c": 0.03}, {"a": 0.03, "c": 0.06, "b": 0.06}),
        ({"a": 0.01, "b": 0.02, "c": 0.03, "d": 0.04}, {"a": 0.04, "b": 0.06, "c": 0.06, "d": 0.06}),
        ({"a": 0.001, "b": 0.013, "c": 0.014, "d": 0.5}, {"a": 0.004, "b": 0.039, "c": 0.039, "d": 0.5}),
        ({"a": 0.3, "b": 0.4}, {"a": 0.6, "b": 0.6}),
        ({"a": 0.6, "b": 0.7}, {"a": 1.0, "b": 1.0}),
        ({"a": 0.02, "b": 0.02}, {"a": 0.04, "b": 0.04}),
        ({"a": 0.0, "b": 1.0}, {"a": 0.0, "b": 1.0}),
        ({}, {}),
    ],
)
def test_holm_known_values(p: dict[str, float], expected: dict[str, float]) -> None:
    adjusted = holm_adjust(p)
    assert adjusted.keys() == expected.keys()
    for key, value in expected.items():
        assert adjusted[key] == pytest.approx(value, abs=1e-12)


@pytest.mark.parametrize("values", list(itertools.product([0.001, 0.01, 0.02, 0.04, 0.3, 1.0], repeat=3)))
def test_holm_is_monotone_bounded_and_order_free(values: tuple[float, ...]) -> None:
    p = dict(zip("abc", values, strict=True))
    adjusted = holm_adjust(p)
    assert all(p[k] <= adjusted[k] <= 1.0 for k in p)
    assert all(adjusted[i] <= adjusted[j] for i in p for j in p if p[i] < p[j])
    assert holm_adjust(dict(reversed(list(p.items())))) == adjusted
    assert all(adjusted[k] <= min(1.0, 3 * p[k]) for k in p)  # never more conservative than Bonferroni


@pytest.mark.parametrize("bad", [{"a": -0.1}, {"a": 1.5}, {"a": 0.1, "b": float("nan")}])
def test_holm_rejects_values_that_are_not_probabilities(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="p-values must lie between 0 and 1"):
        holm_adjust(bad)


# ---------------------------------------------------------------- the decision: unit and correction

DECISION_TABLE = [
    # (id, parts, kw, expected worse slices)
    pytest.param([clustered(0, 5, 20, 3)], {"unit": "case"}, {"better": ["format"]}, id="clustered-gain-cases"),
    pytest.param([clustered(0, 5, 20, 3)], {}, {}, id="clustered-gain-five-groups-not-enough"),
    pytest.param([clustered(0, 6, 20, 3)], {}, {"better": ["format"]}, id="clustered-gain-six-groups"),
    pytest.param([clustered(5, 0, 20, 3)], {"unit": "case"}, {"worse": ["format"]}, id="clustered-drop-cases"),
    pytest.param([clustered(5, 0, 20, 3)], {}, {}, id="clustered-drop-groups"),
    pytest.param([clustered(1, 8, 20, 3)], {}, {"better": ["format"]}, id="eight-groups-against-one"),
    pytest.param([clustered(2, 10, 20, 1)], {}, {"better": ["format"]}, id="singletons-p-0.038"),
    pytest.param(
        [clustered(2, 10, 20, 1, name) for name in ("format", "intent")],
        {},
        {},
        id="two-slices-p-0.038-holm-0.077",
    ),
    pytest.param(
        [clustered(2, 10, 20, 1, name) for name in ("format", "intent")],
        {"correction": "none"},
        {"better": ["format", "intent"]},
        id="two-slices-p-0.038-no-correction",
    ),
    pytest.param(
        [clustered(0, 12, 20, 1, "format"), clustered(2, 10, 20, 1, "intent")],
        {},
        {"better": ["format", "intent"]},
        id="holm-steps-down-to-the-second-slice",
    ),
    pytest.param(
        [clustered(2, 10, 20, 1, "format"), clustered(2, 10, 4, 1, "intent")],
        {},
        {"better": ["format"]},
        id="a-slice-under-min-cases-is-outside-the-family",
    ),
    pytest.param(
        [
            clustered(0, 8, 30, 1, "format"),
            sides([[(True, False)] * 4, [(False, True)]] * 6 + [[(True, True)]] * 10, "intent"),
        ],
        {},
        {"better": ["format"]},
        id="case-drop-but-groups-evenly-split-not-worse",
    ),
]


@pytest.mark.parametrize(("parts", "kw", "expected"), DECISION_TABLE)
def test_decision_table(parts: list[tuple[dict, dict, dict]], kw: dict, expected: dict[str, list[str]]) -> None:
    base, cur, groups = merged(*parts)
    comparisons = compare_slices(base, cur, params(**kw), groups)
    assert sorted(c.slice for c in comparisons if c.better) == expected.get("better", [])
    assert sorted(c.slice for c in comparisons if c.worse) == expected.get("worse", [])
    verdict = detect_regression(base, cur, params(**kw), groups)
    assert verdict.regressed_slices == expected.get("worse", [])


def test_reasons_show_case_and_group_counts_and_the_correction() -> None:
    base, cur, groups = merged(clustered(0, 12, 20, 1, "format"), clustered(0, 5, 20, 3, "intent"))
    verdict = gate(base, cur, [], params(), RETRIEVAL, dict(RETRIEVAL), groups)
    assert verdict.promote is True
    assert verdict.correction == "group-level sign test, Holm over 2 slices"
    by = {c.slice: c for c in verdict.comparisons}
    assert (by["intent"].b, by["intent"].c, by["intent"].groups_better, by["intent"].n_groups) == (0, 15, 5, 25)
    assert by["intent"].p_group == 0.0625 and by["intent"].p_adjusted == 0.0625
    assert by["intent"].p_value == mcnemar_exact(0, 15)
    assert "cases b=0 c=15, McNemar p=6.1e-05; 25 groups: 0 worse, 5 better, sign test p=0.062" in by["intent"].reason
    assert "Holm over 2 slices: p=0.062 >= 0.05, no significant change" in by["intent"].reason
    assert verdict.reasons == [f"significantly better than the champion: {by['format'].reason}"]
    assert "Holm over 2 slices: p=0.00098 < 0.05" in verdict.reasons[0]


def test_regression_verdict_names_its_correction() -> None:
    base, cur, groups = clustered(6, 0, 20, 3)
    verdict = detect_regression(base, cur, params(correction="none"), groups)
    assert verdict.correction == "group-level sign test, no correction over 1 slice"
    assert detect_regression(base, cur, params(unit="case"), groups).correction.startswith("case-level McNemar, Holm")


@pytest.mark.parametrize(
    ("noise", "promote", "note"),
    [
        (None, True, None),
        ({"format": 0.1}, True, "+0.34 vs seed noise 0.10"),
        ({"format": 0.35}, False, "+0.34 vs seed noise 0.35: within the noise, not counted"),
        ({"intent": 0.9}, True, None),
    ],
)
def test_gain_against_seed_noise(noise: dict[str, float] | None, promote: bool, note: str | None) -> None:
    base, cur, groups = clustered(0, 12, 23, 1)  # +12/35 = +0.34
    verdict = gate(base, cur, [], params(), RETRIEVAL, dict(RETRIEVAL), groups, noise)
    assert verdict.promote is promote
    if note:
        assert note in verdict.comparisons[0].reason
    if note and promote:
        assert note in "\n".join(verdict.reasons)


def test_a_drop_blocks_whatever_the_seed_noise() -> None:
    base, cur, groups = merged(clustered(0, 12, 20, 1, "format"), clustered(12, 0, 20, 1, "intent"))
    verdict = gate(base, cur, [], params(), RETRIEVAL, dict(RETRIEVAL), groups, {"intent": 0.9, "format": 0.01})
    assert verdict.promote is False
    assert any(r.startswith("significantly worse than the champion: intent") for r in verdict.reasons)


@pytest.mark.parametrize(("field", "value"), [("unit", "cluster"), ("unit", "cases"), ("correction", "bonferroni")])
def test_unknown_unit_or_correction_is_refused_with_the_allowed_values(field: str, value: str) -> None:
    with pytest.raises(ValidationError) as info:
        params(**{field: value})
    allowed = "'group' or 'case'" if field == "unit" else "'holm' or 'none'"
    assert field in str(info.value) and allowed in str(info.value)
