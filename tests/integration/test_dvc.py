"""`dvc repro index` runs the index stage through the CLI and the Prefect flow, and reruns only when inputs change."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from components.files import EVALUATION_METRICS, FINETUNE_METRICS, GATE_METRICS, INDEX_METRICS
from tests.helpers import DOCS, REPO

pytestmark = pytest.mark.slow


def _run(cwd: Path, *cmd: str, bytecode: bool = False) -> subprocess.CompletedProcess:
    """`cmd` in the project with the venv first on PATH; `bytecode` turns Python's .pyc writing on, as on a
    user's machine (ours set PYTHONDONTWRITEBYTECODE=1, which hid __pycache__ folders from these tests)."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "PREFECT_HOME": str(cwd / ".prefect")}  # fmt: skip
    if bytecode:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
    # the limit guards against a hang: a `dvc repro` of the tiny loop runs six stages, minutes on a slow shared machine
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=1800)


def _sh(cwd: Path, *cmd: str, bytecode: bool = False) -> str:
    result = _run(cwd, *cmd, bytecode=bytecode)
    assert result.returncode == 0, f"{' '.join(cmd)}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


@pytest.fixture
def project(tmp_path: Path, prefect_api_url: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh git + DVC project with the repo's dvc.yaml, params.yaml and .dvcignore and a tiny knowledge base.
    Its stages' `ragloop` commands run their flows on the session's Prefect server (PREFECT_API_URL, as a team's
    configured server), not each on a temporary server of its own."""
    monkeypatch.setenv("PREFECT_API_URL", prefect_api_url)
    for name in ("dvc.yaml", "params.yaml", ".dvcignore"):
        shutil.copy(REPO / name, tmp_path / name)
    for name in ("components", "flows"):
        shutil.copytree(REPO / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    for rel, text in DOCS.items():
        (tmp_path / "data" / "docs" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "data" / "docs" / rel).write_text(text)
    _sh(tmp_path, "git", "init", "-q")
    _sh(tmp_path, "dvc", "init", "-q")
    _sh(tmp_path, "dvc", "config", "core.analytics", "false")
    _sh(tmp_path, "git", "add", "-A")
    _sh(tmp_path, "git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    return tmp_path


def _index_runs(project: Path) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{project / '.mlflow' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("ragloop-knowledge")
    return list(client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"]))


def test_dvc_repro_indexes_incrementally_and_skips_when_nothing_changed(project: Path) -> None:
    _sh(project, "dvc", "repro", "index")
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    docs_dep = next(d for d in lock["stages"]["index"]["deps"] if d["path"] == "data/docs")
    (run,) = _index_runs(project)
    assert run.data.tags["docs_dvc_md5"] == docs_dep["md5"]  # MLflow's lineage tag is DVC's own hash
    assert run.data.tags["ragloop.reason"] == "dvc-repro"
    metrics = json.loads((project / "data" / "metrics" / INDEX_METRICS).read_text())
    assert metrics["chunks"]["total"] == 6

    assert "up to date" in _sh(project, "dvc", "repro", "index")
    assert len(_index_runs(project)) == 1  # nothing changed: the stage did not run
    _sh(project, "git", "add", "-A")
    _sh(project, "git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "index v1")

    doc = project / "data" / "docs" / "support.txt"
    doc.write_text(doc.read_text() + "\nWeekend support is available by chat.\n")
    _sh(project, "dvc", "repro", "index")
    metrics = json.loads((project / "data" / "metrics" / INDEX_METRICS).read_text())
    assert metrics["documents"]["modified"] == 1
    assert metrics["chunks"]["embedded"] == 1  # incremental: only the changed chunk
    assert "index.json" in _sh(project, "dvc", "metrics", "show")

    # what the change did, between the last commit and the workspace: `dvc metrics diff` and `dvc plots diff`
    diff = json.loads(_sh(project, "dvc", "metrics", "diff", "HEAD", "--json"))["data/metrics/index.json"]
    assert diff["index_version"] == {"old": 1, "new": 2, "diff": 1}
    assert diff["documents.modified"] == {"old": 0, "new": 1, "diff": 1}
    assert diff["chunks.embedded"] == {"old": 6, "new": 1, "diff": -5}
    assert "chunks.total" not in diff or diff["chunks.total"]["diff"] == 0
    plots = json.loads(_sh(project, "dvc", "plots", "diff", "HEAD", "--json"))["data"]
    (size,) = plots["index size"]
    points = {(row["rev"], row["field"]): (row["index_version"], row["dvc_inferred_y_value"])
              for row in size["content"]["data"]["values"]}  # fmt: skip
    assert points == {("HEAD", "chunks"): (1, 6), ("HEAD", "documents"): (1, 3),
                      ("workspace", "chunks"): (2, 6), ("workspace", "documents"): (2, 3)}  # fmt: skip
    status = _sh(project, "dvc", "status", "index")
    assert "up to date" in status or status.strip() == ""


# What tools, editors and the OS leave next to the real files of a dependency folder (.dvcignore names them)
NOISE = ["components/knowledge/.indexer.py.swp", "components/knowledge/indexer.py~",
         "components/knowledge/.mypy_cache/3.11/cache.db", "components/knowledge/.ruff_cache/CACHEDIR.TAG",
         "components/knowledge/.pytest_cache/README.md", "data/docs/.DS_Store", "data/docs/cards/.#lost-card.md",
         "data/docs/._fees.md"]  # fmt: skip


def _dependency_paths(project: Path) -> list[str]:
    """Every dep and out of every stage in dvc.yaml, and every file git tracks under one of them."""
    stages = yaml.safe_load((project / "dvc.yaml").read_text())["stages"].values()
    named = {next(iter(e)) if isinstance(e, dict) else e
             for stage in stages for key in ("deps", "outs", "metrics") for e in stage.get(key, [])}  # fmt: skip
    tracked = _sh(project, "git", "ls-files").splitlines()
    return sorted(named | {f for f in tracked if any(f.startswith(d.rstrip("/") + "/") for d in named)})


def test_bytecode_and_editor_files_in_a_dependency_folder_leave_dvc_status_clean(project: Path) -> None:
    """With bytecode writing on, as on a user's machine: running the code of a stage (components/knowledge, a Python
    package, its files deps of the stage one by one) writes its __pycache__ there; neither that nor an editor's or a
    tool's leftovers beside the code or in a dependency folder (data/docs) may make DVC see a changed dependency. A
    real edit of a source file still does."""
    _sh(project, "dvc", "repro", "index", bytecode=True)
    # `python -m` from the project imports the project's own copy of the package (the `ragloop` script the stage
    # runs imports the installed one), so this is what a user's first query does to their checkout
    hits = json.loads(_sh(project, sys.executable, "-m", "flows.cli", "query", "SWIFT transfer fee", "--json",
                          bytecode=True))  # fmt: skip
    assert hits and hits[0]["doc"] == "fees.md"
    package = project / "components" / "knowledge"
    assert list((package / "__pycache__").glob("retrieval.*.pyc")), "the query wrote no bytecode: nothing was tested"
    for rel in NOISE:
        (project / rel).parent.mkdir(parents=True, exist_ok=True)
        (project / rel).write_text("noise\n")

    assert json.loads(_sh(project, "dvc", "status", "index", "--json")) == {}
    ignored = _sh(project, "dvc", "check-ignore", "components/knowledge/__pycache__", *NOISE).split()
    assert ignored == ["components/knowledge/__pycache__", *NOISE]
    sources = _dependency_paths(project)
    assert "components/knowledge/indexer.py" in sources and "data/docs/fees.md" in sources
    checked = _run(project, "dvc", "check-ignore", "--details", *sources)
    assert checked.returncode == 1 and checked.stdout == "", f"real inputs ignored by .dvcignore:\n{checked.stdout}"

    chunking = package / "chunking.py"
    chunking.write_text(chunking.read_text() + "\n# an edit\n")
    changed = json.loads(_sh(project, "dvc", "status", "index", "--json"))
    assert changed == {"index": [{"changed deps": {"components/knowledge/chunking.py": "modified"}}]}


def _tiny_loop(project: Path) -> None:
    """The repo's dvc.yaml on a tiny real stack: a 60-step base model, a 6-chunk index, an 18-case gate set."""
    from tests.behaviour.test_loop import write_suite
    from tests.conftest import TINY

    params = yaml.safe_load((project / "params.yaml").read_text())
    params["base_model"] = TINY.model_dump()
    params["generator"].update(max_new_tokens=90, context_chunks=2)
    params["regression"].update(min_cases=3, min_effect=0.2, floors={"format": 0.6})
    params["finetune"].update(r=8, alpha=16, dropout=0.0, batch_size=12, epochs=3)
    params["retriever"].update(steps=2, batch_size=8)  # should an evaluation ask for a tuned retriever: seconds
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    write_suite(project / "data" / "behaviour")
    shutil.copy(REPO / "data" / "behaviour" / "contract.yaml", project / "data" / "behaviour" / "contract.yaml")
    _sh(project, "git", "add", "-A")
    _sh(project, "git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "tiny loop")


def test_dvc_repro_runs_the_loop_then_nothing_then_only_what_a_lora_param_touches(project: Path) -> None:
    _tiny_loop(project)
    _sh(project, "dvc", "repro")  # base model, index, evaluate (the base model breaks format), finetune, gate
    metrics = project / "data" / "metrics"
    evaluation = json.loads((metrics / EVALUATION_METRICS).read_text())
    assert evaluation["decision"] == "finetune" and "format" in evaluation["regressed_slices"]
    tuned = json.loads((metrics / FINETUNE_METRICS).read_text())
    gated = json.loads((metrics / GATE_METRICS).read_text())
    assert tuned["skipped"] is False and gated["skipped"] is False
    assert gated["version"] == tuned["version"] == "1" and isinstance(gated["promoted"], bool)
    shown = json.loads(_sh(project, "dvc", "metrics", "show", "--json"))[""]["data"]
    assert shown["data/metrics/evaluation.json"]["data"]["slices"]["format"]["n"] == 18
    plots = json.loads(_sh(project, "dvc", "plots", "show", "--json"))["data"]
    (bars,) = plots["slice pass rates (gate set)"]
    drawn = {row["slice"]: row["pass_rate"] for row in bars["content"]["data"]["values"]}
    assert drawn == {k: v["pass_rate"] for k, v in evaluation["slices"].items()}
    (retrieval,) = plots["retrieval (gate set)"]
    assert {r["metric"]: r["value"] for r in retrieval["content"]["data"]["values"]} == evaluation["retrieval"]

    second = _sh(project, "dvc", "repro")  # nothing changed: every stage is up to date, nothing runs
    assert "Running stage" not in second
    assert json.loads((metrics / FINETUNE_METRICS).read_text()) == tuned

    params = yaml.safe_load((project / "params.yaml").read_text())
    params["finetune"]["r"] = 4
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    diff = json.loads(_sh(project, "dvc", "params", "diff", "--json"))
    assert diff == {"params.yaml": {"finetune.r": {"old": 8, "new": 4, "diff": -4}}}
    changed = set(json.loads(_sh(project, "dvc", "status", "--json")))
    assert changed == {"finetune"}  # not the base model, the index or the evaluation
