"""What `dvc status` says after an edit to the code, with real DVC on the repo's dvc.yaml: an edit to the HTTP app, to
another command's CLI module or to triage leaves the evaluate, finetune and gate stages up to date (issue 21: a
comment in the API server's code reran hours of fine-tuning); an edit to the evaluation reruns them.

No model is trained: every stage's data deps and outs are placeholder files, and `dvc commit -f` records them in
dvc.lock as if `dvc repro` had run; `dvc status` then compares the working tree with that lock, as it would after a
real `make run`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers import REPO

pytestmark = pytest.mark.slow

BEHAVIOUR_STAGES = {"evaluate", "finetune", "gate"}


def _dvc(cwd: Path, *args: str) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    result = subprocess.run(["dvc", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"dvc {' '.join(args)}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


def _paths(stage: dict) -> list[str]:
    entries = [*stage.get("deps", []), *stage.get("outs", []), *stage.get("metrics", [])]
    return [e if isinstance(e, str) else next(iter(e)) for e in entries]


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The repo's code, dvc.yaml and params.yaml in a fresh git + DVC project, every stage recorded as run."""
    root = tmp_path_factory.mktemp("dvc-reruns")
    for name in ("dvc.yaml", "params.yaml", ".dvcignore"):
        shutil.copy(REPO / name, root / name)
    for name in ("components", "flows"):
        shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    for stage in yaml.safe_load((root / "dvc.yaml").read_text())["stages"].values():
        for rel in _paths(stage):
            path = root / rel
            if path.exists():
                continue
            if path.suffix:  # a file: a data dep, a metrics file, the index marker
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text("{}\n")
            else:  # a folder: the documents, a model
                path.mkdir(parents=True)
                (path / "placeholder.txt").write_text(f"{rel}\n")
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    _dvc(root, "init", "-q")
    _dvc(root, "config", "core.analytics", "false")
    _dvc(root, "commit", "-f", "-q")
    assert _stale(root) == set(), "every stage is recorded as run"
    return root


def _stale(project: Path) -> set[str]:
    """The stages `dvc status` lists as changed."""
    out = _dvc(project, "status", "--json").strip()
    return {name.split(":")[-1] for name in json.loads(out or "{}")}


def _append_comment(project: Path, rel: str) -> str:
    path = project / rel
    before = path.read_text()
    path.write_text(before + "\n# an edit\n")
    return before


@pytest.mark.parametrize(
    "edited",
    [
        "components/serving/app.py",  # the HTTP app
        "components/serving/protocol.py",  # its OpenAI bodies
        "flows/cli/triage.py",  # another command's CLI module
        "flows/cli/serving.py",
        "flows/cli/knowledge.py",
        "components/behaviour/triage.py",  # production triage
        "flows/triage.py",
    ],
)
def test_an_edit_outside_the_behaviour_stages_code_leaves_them_up_to_date(project: Path, edited: str) -> None:
    before = _append_comment(project, edited)
    try:
        assert not _stale(project) & BEHAVIOUR_STAGES
    finally:
        (project / edited).write_text(before)


def test_an_edit_to_the_evaluation_reruns_them(project: Path) -> None:
    """The control: the same comment in the code the three stages run lists each of them (and not the base model or
    the index, which do not run it)."""
    before = _append_comment(project, "components/behaviour/evaluate.py")
    try:
        stale = _stale(project)
        assert stale >= BEHAVIOUR_STAGES and not stale & {"base_model", "index"}
    finally:
        (project / "components/behaviour/evaluate.py").write_text(before)
    assert _stale(project) == set()
