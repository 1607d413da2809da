"""Seed-noise calibration of the gate (opt-in: `ragloop gate VERSION --calibrate`).

A second candidate is trained exactly like the gated one (the same training pairs, the same `finetune` params,
the same base model) but with seed `finetune.seed + 1`, and evaluated on the same gate set. Per slice, how far
these two equal candidates differ (|pass-rate difference|, discordant cases, groups that moved) is the seed noise:
what a retrained champion could show with no real change. The verdict shows each slice's gain against it
("intent +0.21 vs seed noise 0.03"), and a significant gain counts as better only when it exceeds the noise
(`stats.gate(..., noise=...)`); drops are judged without it, so calibration can only make promotion harder.

The result is kept in `paths.metrics/calibration.json` under a key: a fingerprint of the training pairs, the
`finetune` params but the seed, the base model and the gate set. A later calibration with the same key reuses it
(`reused: true`); any change trains and evaluates the twin again. One twin is one draw of the noise
(bench/seed_noise.py measures its spread over ten seeds on the default model).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from components.behaviour.stats import Groups, Results, SliceComparison, compare_slices
from components.config import FinetuneParams, Params, RegressionParams, Settings
from components.files import CALIBRATION, GATE_CASES

Pairs = list[tuple[str, str]]


class CalibrationError(ValueError):
    """A calibration file that cannot be read back, or results that cannot be compared."""


def calibration_key(pairs: Pairs, finetune: FinetuneParams, base_model: str, gate_md5: str) -> str:
    """What the seed noise depends on besides the seed: the training pairs, the recipe, the base model, the gate."""
    recipe = finetune.model_dump(mode="json")
    recipe.pop("seed")
    parts = [json.dumps(pairs), json.dumps(recipe, sort_keys=True), base_model, gate_md5]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def twin_seed(finetune: FinetuneParams) -> int:
    return finetune.seed + 1


def slice_noise(first: Results, second: Results, params: RegressionParams, groups: Groups | None) -> dict[str, dict]:
    """Per slice, how far two equal candidates differ on their paired cases: `noise` is |rate difference|."""
    return {c.slice: {"noise": round(abs(c.delta), 4), "delta": round(c.delta, 4), "n_paired": c.n_paired,
                      "b": c.b, "c": c.c, "p_case": c.p_value, "groups": c.n_groups,
                      "groups_worse": c.groups_worse, "groups_better": c.groups_better, "p_group": c.p_group}
            for c in compare_slices(first, second, params, groups)}  # fmt: skip


def noise_levels(record: Mapping[str, Any]) -> dict[str, float]:
    """slice -> seed noise, from a calibration record."""
    return {name: float(s["noise"]) for name, s in record["slices"].items()}


def gains_against_noise(comparisons: list[SliceComparison], levels: Mapping[str, float]) -> dict[str, str]:
    """slice -> "intent +0.21 vs seed noise 0.03", for every slice the calibration measured."""
    return {c.slice: f"{c.slice} {c.delta:+.2f} vs seed noise {levels[c.slice]:.2f}"
            for c in comparisons if c.slice in levels}  # fmt: skip


def load_calibration(path: Path, key: str) -> dict | None:
    """The stored calibration of `key`, or None when there is none for it."""
    if not path.is_file():
        return None
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CalibrationError(f"{path}: cannot read a calibration: {exc}; delete it to recompute") from None
    if not isinstance(stored, dict) or not isinstance(stored.get("calibrations"), dict):
        raise CalibrationError(f"{path}: expected an object with 'calibrations' (key -> record); delete it")
    record = stored["calibrations"].get(key)
    return dict(record) if isinstance(record, dict) else None


def store_calibration(path: Path, key: str, record: Mapping[str, Any]) -> None:
    """Add (or replace) the record of `key`; the others stay, so returning to an earlier recipe reuses its own."""
    stored: dict[str, Any] = {"calibrations": {}}
    if path.is_file():
        load_calibration(path, key)  # refuses a file it could not read back
        stored = json.loads(path.read_text(encoding="utf-8"))
    stored["calibrations"][key] = dict(record)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(stored, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(path)


def calibrate(params: Params, settings: Settings, candidate: Results, miner_adapter: Path | None,
              groups: Groups | None) -> dict:  # fmt: skip
    """The seed noise around `candidate` (the gated candidate's stored behaviour results): reused when stored under
    the same key, else the twin is trained (seed + 1) and evaluated. `miner_adapter`: the model whose training-set
    failures were repeated in the candidate's training (its parent; None: the base, nothing mined). Returns the
    record with `reused`."""
    from components.behaviour.assistant import generator_identity
    from components.behaviour.mining import mine_training_pairs
    from components.behaviour.suite import suite_hash

    pairs, _ = mine_training_pairs(params, settings, miner_adapter)
    key = calibration_key(pairs, params.finetune, generator_identity(params),
                          suite_hash(params.paths.behaviour / GATE_CASES))  # fmt: skip
    path = params.paths.metrics / CALIBRATION
    stored = load_calibration(path, key)
    if stored is not None:
        return {**stored, "reused": True}
    twin = _train_twin(params, settings, pairs)
    noise = slice_noise(candidate, twin, params.regression, groups)
    record = {"key": key, "seed": params.finetune.seed, "twin_seed": twin_seed(params.finetune),
              "training_pairs": len(pairs), "slices": noise}  # fmt: skip
    store_calibration(path, key, record)
    return {**record, "reused": False}


def _train_twin(params: Params, settings: Settings, pairs: Pairs) -> Results:
    """The twin's behaviour results on the gate set: trained like the candidate, with the next seed. Its adapter
    lives in a temporary folder: only its results are kept."""
    import tempfile

    from components.behaviour.assistant import Generator
    from components.behaviour.finetune import save_adapter, train_lora
    from components.behaviour.loop import evaluate_model
    from components.behaviour.training import TruncatedTraining

    recipe = params.finetune.model_copy(update={"seed": twin_seed(params.finetune)})
    generator = Generator(params)
    peft_model, log = train_lora(generator.model, generator.tokenizer, pairs, recipe)
    if log.truncated:
        raise TruncatedTraining(
            f"finetune.max_seconds stopped the calibration twin after {log.steps} of {log.planned_steps} steps: "
            "its noise would not reproduce; raise or remove the cap"
        )
    with tempfile.TemporaryDirectory(prefix="ragloop-calibration-") as tmp:
        adapter = save_adapter(peft_model, Path(tmp) / "twin", params.generator.model)
        return evaluate_model(params, settings, adapter, None, "calibration twin").results
