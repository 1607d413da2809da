"""How the flows declare their tasks: one typed decorator per kind of step, so that mypy sees each task's own
parameters and result (Prefect's overloaded `@task` cannot pick an overload from `**kwargs` of a dict, and types a
task whose function returns Any as returning a coroutine: every task here annotates its result)."""

from __future__ import annotations

from collections.abc import Callable
from typing import ParamSpec, TypeVar

from prefect import Task, task
from prefect.cache_policies import NO_CACHE

P = ParamSpec("P")
R = TypeVar("R")

IO_RETRIES = 3
IO_RETRY_DELAYS_S: list[float] = [2, 5, 15]


def io_task(name: str) -> Callable[[Callable[P, R]], Task[P, R]]:
    """A step that reads or writes a store (Chroma, MLflow and its registry, the manifest): retried 3 times, 2, 5
    then 15 s apart, so a store that blinks does not fail the run. Never cached: each call reads fresh state."""
    return task(name=name, cache_policy=NO_CACHE, retries=IO_RETRIES, retry_delay_seconds=IO_RETRY_DELAYS_S)


def step(name: str) -> Callable[[Callable[P, R]], Task[P, R]]:
    """A step that is not retried (embedding, training, a gate-set evaluation: a retry would redo minutes of work
    for a failure that is rarely transient). Never cached."""
    return task(name=name, cache_policy=NO_CACHE)
