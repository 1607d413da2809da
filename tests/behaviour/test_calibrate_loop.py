"""`ragloop gate VERSION --calibrate` on a tiny real stack: the first call trains the twin (seed + 1), evaluates it
and keeps the seed noise; the second reuses it; a changed recipe measures it again. The verdict shows each slice's
gain against the noise and names the correction."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from components.files import CALIBRATION
from tests.behaviour.test_loop import _configure, write_suite
from tests.conftest import build_tiny_model
from tests.helpers import Deployment

pytestmark = pytest.mark.slow

# What is measured here is the calibration's bookkeeping (trained, kept, reused, measured again), not whether the
# candidate learned: a short recipe, so the candidate and its two twins train in a tenth of test_loop's steps.
EPOCHS = 20


@pytest.fixture(scope="module")
def candidate(tmp_path_factory, prefect_server) -> tuple[Deployment, str]:
    from flows.behaviour import evaluate, finetune

    root = tmp_path_factory.mktemp("calibrate")
    dep = Deployment.create(root)
    write_suite(dep.root / "behaviour")
    build_tiny_model(root / "base")
    _configure(dep, epochs=EPOCHS)
    dep.index()
    p = str(dep.params_file)
    assert evaluate(params_file=p)["decision"] == "finetune"
    return dep, finetune(params_file=p, run_gate=False)["version"]


def _gate(dep: Deployment, version: str) -> dict:
    from flows.cli import app

    done = CliRunner().invoke(app, ["gate", version, "--calibrate", "--json", "--params", str(dep.params_file)])
    assert done.exit_code == 0, done.output
    return json.loads(done.stdout)


def test_calibration_is_measured_then_reused_then_measured_again(candidate: tuple[Deployment, str]) -> None:
    dep, version = candidate
    first = _gate(dep, version)
    calibration = first["calibration"]
    assert calibration["reused"] is False
    assert (calibration["seed"], calibration["twin_seed"]) == (0, 1)
    assert set(calibration["slices"]) == {"format", "intent", "citation", "refusal"}
    for name, noise in calibration["slices"].items():
        assert 0.0 <= noise["noise"] <= 1.0 and noise["noise"] == abs(noise["delta"]), name
        assert noise["n_paired"] > 0 and noise["groups"] == noise["n_paired"]  # the tiny suite has no groups
    assert set(first["against_seed_noise"]) == set(calibration["slices"])
    assert all(" vs seed noise " in shown for shown in first["against_seed_noise"].values())
    assert first["correction"].startswith("group-level sign test, Holm over ")
    stored = json.loads((dep.params().paths.metrics / CALIBRATION).read_text())
    assert list(stored["calibrations"]) == [calibration["key"]]

    again = _gate(dep, version)
    assert again["calibration"]["reused"] is True
    assert again["calibration"]["key"] == calibration["key"]
    assert again["calibration"]["slices"] == calibration["slices"]
    assert again["promoted"] is False  # judged once: the first call promoted it or not, the second is a champion

    _configure(dep, epochs=EPOCHS // 2)  # another recipe: another key, measured again
    try:
        changed = _gate(dep, version)
    finally:
        _configure(dep, epochs=EPOCHS)
    assert changed["calibration"]["reused"] is False and changed["calibration"]["key"] != calibration["key"]
    kept = json.loads((dep.params().paths.metrics / CALIBRATION).read_text())["calibrations"]
    assert set(kept) == {calibration["key"], changed["calibration"]["key"]}
