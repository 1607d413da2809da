"""Training is planned by work: the learning-rate schedule over the planned steps, batches grouped by length,
the optional wall-clock cap, and what is recorded about the machine."""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import pytest

from components.behaviour.training import Deadline, cpu_model, length_batches, lr_factor


@pytest.mark.parametrize("schedule", ["constant", "linear", "cosine"])
def test_warm_up_rises_linearly_to_the_base_rate(schedule: str) -> None:
    f = lr_factor(schedule, warmup_steps=4, total_steps=100)
    assert [round(f(s), 3) for s in range(5)] == [0.2, 0.4, 0.6, 0.8, 1.0]


@pytest.mark.parametrize(
    ("schedule", "middle", "last"),
    [("constant", 1.0, 1.0), ("linear", 0.55, 0.1), ("cosine", 0.55, 0.1)],
)
def test_decay_reaches_the_floor_at_the_last_planned_step(schedule: str, middle: float, last: float) -> None:
    f = lr_factor(schedule, warmup_steps=0, total_steps=101)
    assert f(0) == 1.0
    assert f(50) == pytest.approx(middle)
    assert f(100) == pytest.approx(last)
    assert f(500) == pytest.approx(last)  # past the plan it stays at the floor


def test_cosine_decays_monotonically() -> None:
    f = lr_factor("cosine", warmup_steps=10, total_steps=200)
    values = [f(s) for s in range(10, 200)]
    assert all(a >= b for a, b in itertools.pairwise(values))


@pytest.mark.parametrize("total", [0, 1, 2])
def test_tiny_plans_never_divide_by_zero(total: int) -> None:
    f = lr_factor("cosine", warmup_steps=10, total_steps=total)
    assert all(0 < f(s) <= 1 for s in range(3))


def test_an_unknown_schedule_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match=r"constant, linear or cosine.*'step'"):
        lr_factor("step", 0, 10)


def _lengths(n: int, seed: int = 1) -> list[int]:
    rng = random.Random(seed)
    return [rng.randint(10, 400) for _ in range(n)]


@pytest.mark.parametrize(("n", "batch"), [(1, 4), (7, 4), (64, 16), (100, 16), (129, 8)])
def test_every_row_appears_exactly_once_in_full_batches(n: int, batch: int) -> None:
    batches = length_batches(_lengths(n), batch, random.Random(0))
    assert sorted(i for b in batches for i in b) == list(range(n))
    assert sum(len(b) < batch for b in batches) <= -(-n // (batch * 8))  # at most one short batch per pool


def test_length_batches_pad_far_less_than_random_batches() -> None:
    lengths = _lengths(512)

    def padding(batches: list[list[int]]) -> int:
        return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches)

    order = list(range(512))
    random.Random(0).shuffle(order)
    plain = [order[i : i + 16] for i in range(0, 512, 16)]
    assert padding(length_batches(lengths, 16, random.Random(0))) < padding(plain) / 4


def test_the_same_seed_gives_the_same_batches_and_another_seed_another_order() -> None:
    lengths = _lengths(200)
    a, b = (length_batches(lengths, 16, random.Random(3)) for _ in range(2))
    assert a == b
    assert length_batches(lengths, 16, random.Random(4)) != a


def test_the_cap_is_off_without_max_seconds_and_passes_after_it() -> None:
    assert not Deadline(None).passed()
    assert Deadline(0.0).passed() or Deadline(-1.0).passed()


def test_the_cpu_model_names_family_and_model_on_linux() -> None:
    name = cpu_model()
    assert name
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists() and "cpu family" in cpuinfo.read_text():  # x86 Linux
        assert "family" in name
