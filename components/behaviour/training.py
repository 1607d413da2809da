"""What pretraining and fine-tuning share: a learning-rate schedule over a planned number of steps, batches
grouped by length, the optional wall-clock safety cap, and the machine a run happened on.

Training is defined by work (steps), never by the clock: the same params and seed give the same weights on a
fast or a slow machine, only the time differs. The cap exists for users who want a hard stop; a run it cuts
short is *truncated* and must not be recorded as a reproducible result.
"""

from __future__ import annotations

import math
import os
import platform
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


class TruncatedTraining(RuntimeError):
    """The safety cap stopped training before its planned steps: the result would not reproduce."""


def lr_factor(schedule: str, warmup_steps: int, total_steps: int, floor: float = 0.1) -> Callable[[int], float]:
    """A multiplier of the base learning rate per step (for `torch.optim.lr_scheduler.LambdaLR`): linear warm-up
    over `warmup_steps`, then constant, linear or cosine decay to `floor` at `total_steps`."""
    if schedule not in {"constant", "linear", "cosine"}:
        raise ValueError(f"lr schedule must be constant, linear or cosine, got {schedule!r}")
    warmup = min(warmup_steps, max(total_steps - 1, 0))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if schedule == "constant" or total_steps <= warmup + 1:
            return 1.0
        progress = min((step - warmup) / (total_steps - warmup - 1), 1.0)
        decay = 1 - progress if schedule == "linear" else 0.5 * (1 + math.cos(math.pi * progress))
        return floor + (1 - floor) * decay

    return factor


def length_batches(lengths: list[int], batch_size: int, rng: random.Random, pool: int = 8) -> list[list[int]]:
    """Indices grouped into batches of similar length (little padding), in a seeded random order.

    The rows are shuffled, cut into pools of `pool` batches, each pool sorted by length and split into batches;
    then the batches are shuffled. Every row appears exactly once per call, batches keep `batch_size` rows (the
    last may be shorter), and each pool mixes rows from the whole set, so an epoch is still a random pass."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    span = batch_size * max(pool, 1)
    batches: list[list[int]] = []
    for start in range(0, len(order), span):
        group = sorted(order[start : start + span], key=lambda i: lengths[i])
        batches.extend(group[i : i + batch_size] for i in range(0, len(group), batch_size))
    rng.shuffle(batches)
    return batches


@dataclass
class Deadline:
    """The optional safety cap: `passed()` is always False when max_seconds is None."""

    max_seconds: float | None
    start: float = 0.0

    def __post_init__(self) -> None:
        self.start = time.monotonic()

    def passed(self) -> bool:
        return self.max_seconds is not None and time.monotonic() - self.start > self.max_seconds

    def elapsed(self) -> float:
        return time.monotonic() - self.start


def machine_info() -> dict[str, str]:
    """What a run's timing figures depend on: CPU model, threads torch uses, torch version, device."""
    import torch

    return {
        "machine.cpu": cpu_model(),
        "machine.cores": str(os.cpu_count() or 0),
        "machine.torch_threads": str(torch.get_num_threads()),
        "machine.torch": torch.__version__,
        "machine.cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
    }


def cpu_model() -> str:
    """The CPU's model name as lscpu shows it (with family/model, since one name covers several generations)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError:
        return platform.processor() or platform.machine()
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
        if not line.strip():
            break
    name = fields.get("model name") or platform.processor() or platform.machine()
    if "cpu family" in fields:
        return f"{name} (family {fields['cpu family']} model {fields.get('model', '?')})"
    return name
