"""The closed loop on a tiny real stack: regression -> LoRA fine-tune -> gate -> promotion in the MLflow
registry; a worse candidate is rejected; a failing fine-tune leaves the champion in place."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from components.config import Settings, load_params
from components.files import EVALUATION_METRICS, FINETUNE_METRICS, GATE_METRICS, LABELS_FILE
from components.tracking import registry
from components.tracking.mlflow_runs import client_for
from tests.conftest import build_tiny_model
from tests.helpers import Deployment

pytestmark = pytest.mark.slow

QUESTIONS = {  # intent: (gold doc, answer, wordings)
    "fees": ("fees.md", "9 EUR", ["How much is a SWIFT transfer?", "What does an international transfer cost?",
                                   "SWIFT transfer fee?", "Is there a fee for SWIFT payments?",
                                   "Cost of sending a SWIFT transfer", "What do you charge for SWIFT?"]),
    "card_lost": ("cards/lost-card.md", "Freeze it in the app", ["I lost my card", "My card was stolen",
                  "What if my card is lost?", "Card missing, help", "Someone took my card", "I cannot find my card"]),
    "out_of_scope": (None, None, ["Do you offer mortgages?", "Can I buy crypto?", "Do you sell car insurance?",
                     "Can I get a business loan?", "Do you have a pension plan?", "Can I trade stocks?"]),
}  # fmt: skip


TRAIN_FILLERS = ["", "Hi, "]
GATE_FILLERS = ["Hello, "]


def write_suite(folder: Path) -> None:
    """Train on each wording behind several openers; gate on the same wordings behind openers never trained on
    (disjoint after normalisation, and learnable in seconds by a tiny model that must ignore the opener)."""
    gate, train = [], []
    for intent, (doc, answer, wordings) in QUESTIONS.items():
        case = {"intent": intent, "answer": answer, "gold_docs": [doc] if doc else []}
        for i, q in enumerate(wordings):
            train += [{"id": f"train-{intent}-{i}-{j}", "question": f + q, **case} for j, f in enumerate(TRAIN_FILLERS)]
            gate += [{"id": f"gate-{intent}-{i}-{j}", "question": f + q, **case} for j, f in enumerate(GATE_FILLERS)]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / LABELS_FILE).write_text(json.dumps({k: k for k in QUESTIONS}))
    for name, rows in (("gate", gate), ("train", train)):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    labelled = [{"id": f"{intent}-{i}", "query": q, "relevant": [doc]}
                for intent, (doc, _, wordings) in QUESTIONS.items() if doc for i, q in enumerate(wordings)]  # fmt: skip
    (folder / "retrieval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in labelled))


def _configure(dep: Deployment, **finetune: object) -> None:
    dep.write_params(
        paths={"docs": "docs", "index": "state/index", "metrics": "state/metrics", "mlflow": "state/mlflow",
               "behaviour": "behaviour", "models": "state/models", "retrieval_queries": "behaviour/retrieval.jsonl"},
        generator={"model": "base", "max_new_tokens": 90, "context_chunks": 2},
        # dense: the 18-case gate of this 2.6 M-parameter model was sized on dense contexts; with hybrid ones a
        # few out-of-scope prompts change and 36 training pairs no longer teach the refusal (format 0.56 < 0.6)
        retrieval={"mode": "dense"},
        regression={"min_cases": 3, "min_effect": 0.2, "floors": {"format": 0.6}},
        finetune={"r": 8, "alpha": 16, "dropout": 0.0, "learning_rate": 3e-3, "batch_size": 12, "epochs": 200,
                  **finetune},
    )  # fmt: skip


@pytest.fixture(scope="module")
def loop_dep(tmp_path_factory, prefect_server):
    root = tmp_path_factory.mktemp("loop")
    dep = Deployment.create(root)
    write_suite(dep.root / "behaviour")
    build_tiny_model(root / "base")
    _configure(dep)
    dep.index()
    return dep


def _check_labelled_retrieval(dep: Deployment, summary: dict) -> None:
    """paths.retrieval_queries: the evaluation scored the labelled queries in their own run and kept the figures in
    its summary, its DVC metrics and its own MLflow run."""
    labelled = summary["labelled_retrieval"]
    assert labelled["scored"] == 12 and labelled["index_version"] == 1 and labelled["level"] == "doc"
    assert labelled["queries_file"].endswith("retrieval.jsonl")
    assert 0 < labelled["metrics"]["recall@1"] <= labelled["metrics"]["recall@5"] <= 1
    params = dep.params()
    assert json.loads((params.paths.metrics / EVALUATION_METRICS).read_text())["labelled_retrieval"] == labelled
    client = client_for(params, Settings.from_env())
    evaluation = client.get_run(summary["mlflow_run_id"]).data
    assert evaluation.metrics["labelled_retrieval_recall_at_5"] == labelled["metrics"]["recall@5"]
    assert evaluation.tags["ragloop.retrieval_eval_run"] == labelled["mlflow_run_id"]
    own = client.get_run(labelled["mlflow_run_id"])
    assert client.get_experiment(own.info.experiment_id).name == params.retrieval.experiment
    assert own.data.metrics["mrr"] == labelled["metrics"]["mrr"]


def test_regression_is_fixed_by_a_promoted_fine_tune_then_nothing_triggers(loop_dep: Deployment) -> None:
    from flows.behaviour import evaluate, finetune

    p = str(loop_dep.params_file)
    before = evaluate(params_file=p)
    assert before["decision"] == "finetune"
    assert "format" in before["regressed_slices"]
    _check_labelled_retrieval(loop_dep, before)
    result = finetune(params_file=p)
    assert result["promoted"], (result["reasons"], result["train_seconds"])
    # no champion yet: the base model fails every case alike, so no hard examples are mined
    assert result["failing_train_cases"] == 0
    assert result["training_pairs"] <= 2 * sum(len(w) for _, _, w in QUESTIONS.values())
    assert result["candidate"]["slices"]["format"]["pass_rate"] >= 0.6, result  # above the floor it was failing
    params = load_params(loop_dep.params_file)
    champ = registry.champion(params, Settings.from_env())
    assert champ is not None and champ.version == result["version"]
    # the flow itself (as a deployment triggered by the regression event runs it, no CLI) wrote the DVC metrics
    tuned = json.loads((params.paths.metrics / FINETUNE_METRICS).read_text())
    assert tuned["skipped"] is False and tuned["version"] == result["version"] and tuned["promoted"] is True
    assert tuned["adapter_sha256"] == result["adapter_sha256"] and tuned["train_steps"] == result["train_steps"]
    gated = json.loads((params.paths.metrics / GATE_METRICS).read_text())
    assert gated == {"skipped": False, "version": result["version"], "promoted": True, "reasons": result["reasons"],
                     "champion_before": "base"}  # fmt: skip
    after = evaluate(params_file=p)  # the champion, re-evaluated against its own stored baseline
    assert after["model_version"] == f"v{champ.version}"
    assert after["decision"] == "none"
    assert after["slices"]["format"] == result["candidate"]["slices"]["format"]

    from typer.testing import CliRunner

    from flows.cli import app

    answered = CliRunner().invoke(app, ["ask", "Hello, I lost my card", "--json", "--params", p])
    assert answered.exit_code == 0, answered.output
    reply = json.loads(answered.stdout)
    assert reply["model_version"] == f"v{champ.version}"
    assert reply["index_version"] == 1
    assert reply["sources"][0]["doc"] == "cards/lost-card.md"
    assert set(reply) >= {"answer", "intent", "cited", "sources", "model_version", "index_version"}


def test_a_worse_candidate_is_rejected_and_a_failing_one_changes_nothing(loop_dep: Deployment) -> None:
    """Through the CLI as the DVC stages run it: `finetune --no-gate` registers an ungated candidate without
    touching the aliases; `gate --if-needed` rejects it with its reasons, and does not judge it twice."""
    from typer.testing import CliRunner

    from flows.behaviour import finetune
    from flows.cli import app

    params, settings, p = load_params(loop_dep.params_file), Settings.from_env(), str(loop_dep.params_file)
    champ = registry.champion(params, settings)
    assert champ is not None, "runs after the promotion test"
    _configure(loop_dep, learning_rate=1e-7, epochs=1, failing_case_repeats=2)  # learns nothing: the base model
    try:
        tuned = CliRunner().invoke(app, ["finetune", "--no-gate", "--json", "--params", p])
    finally:
        _configure(loop_dep)  # later tests train normally even when this one fails
    assert tuned.exit_code == 0, tuned.output
    candidate = json.loads(tuned.stdout)
    assert "promoted" not in candidate
    # the champion's failures on the training set (if it has any: how many depends on how well it trained) are
    # trained on twice more; every training case is kept (the gold documents are found in this tiny corpus)
    train_cases = 2 * sum(len(w) for _, _, w in QUESTIONS.values())
    assert candidate["training_pairs"] == train_cases + 2 * candidate["failing_train_cases"]
    assert registry.gate_verdict(params, settings, candidate["version"]) is None  # registered, not yet judged
    assert registry.champion(params, settings).version == champ.version  # type: ignore[union-attr]

    gated = CliRunner().invoke(app, ["gate", "--if-needed", "--json", "--params", p])
    assert gated.exit_code == 0, gated.output
    verdict = json.loads(gated.stdout)
    assert verdict["version"] == candidate["version"] and not verdict["promoted"]
    assert any("format" in r for r in verdict["reasons"])
    assert verdict["champion_before"] == f"v{champ.version}"
    assert registry.gate_verdict(params, settings, candidate["version"]) == "rejected"
    assert registry.champion(params, settings).version == champ.version  # type: ignore[union-attr]
    stored = json.loads((params.paths.metrics / GATE_METRICS).read_text())
    assert stored["promoted"] is False and stored["version"] == candidate["version"]
    again = CliRunner().invoke(app, ["gate", "--if-needed", "--json", "--params", p])
    assert again.exit_code == 0 and "already gated" in json.loads(again.stdout)["why"]

    # the same evidence (training data, recipe, base, contract, parent) never trains the same candidate again
    _configure(loop_dep, learning_rate=1e-7, epochs=1, failing_case_repeats=2)
    try:
        repeated = finetune(params_file=p)
    finally:
        _configure(loop_dep)
    assert repeated["skipped"] and f"version {candidate['version']}, which the gate rejected" in repeated["why"]
    assert "another recipe" in repeated["why"]

    _configure(loop_dep, target_modules=["no_such_module"])
    try:
        with pytest.raises(ValueError, match="no_such_module"):
            finetune(params_file=p)
    finally:
        _configure(loop_dep)
    assert registry.champion(params, settings).version == champ.version  # type: ignore[union-attr]


def test_dashboards_status_and_advice_show_the_loop(loop_dep: Deployment) -> None:
    """What a user sees after the loop: MLflow runs with the per-case table, slice chart and loss curve, version
    descriptions with verdict and lineage, Prefect artifacts, and `status` / `advise` read from that history."""
    from mlflow.tracking import MlflowClient
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from typer.testing import CliRunner

    from components.tracking.mlflow_runs import tracking_uri
    from flows.cli import app

    params, settings, p = load_params(loop_dep.params_file), Settings.from_env(), str(loop_dep.params_file)
    champ = registry.champion(params, settings)
    assert champ is not None, "runs after the promotion and rejection tests"
    client = MlflowClient(tracking_uri(params, settings))

    # evaluation runs: the per-case table, the chart against the baseline, per-slice bounds and the decision
    exp = client.get_experiment_by_name(params.tracking.evaluation_experiment)
    runs = client.search_runs([exp.experiment_id], f"tags.model_version = 'v{champ.version}'")
    run = runs[0]
    paths = {a.path for a in client.list_artifacts(run.info.run_id)} | {
        a.path for a in client.list_artifacts(run.info.run_id, "charts")
    }
    assert {"cases.json", "charts/slice_pass_rates.png"} <= paths
    table = json.loads(Path(client.download_artifacts(run.info.run_id, "cases.json")).read_text())
    columns = {"question", "slices", "route", "route_reason", "passed", "output", "retrieved_sources"}
    assert columns <= set(table["columns"])
    assert len(table["data"]) == 18  # one row per gate case
    m = run.data.metrics
    assert m["format_ci_low"] <= m["format_pass_rate"] <= m["format_ci_high"]
    assert m["format_vs_baseline"] == pytest.approx(m["format_pass_rate"] - m["format_baseline_pass_rate"])
    assert run.data.tags["mlflow.note.content"].startswith("**Decision: none**")

    # fine-tune runs: the loss curve (a metric history and a chart) and what the gate made of them
    exp = client.get_experiment_by_name(params.tracking.finetune_experiment)
    tunes = {r.info.run_id: r for r in client.search_runs([exp.experiment_id])}
    promoted = tunes[champ.run_id]
    history = client.get_metric_history(champ.run_id, "train_loss")
    assert len(history) == promoted.data.metrics["train_steps"] > 1
    assert "charts/loss_curve.png" in {a.path for a in client.list_artifacts(champ.run_id, "charts")}
    assert promoted.data.tags["ragloop.gate"] == "promoted"
    assert promoted.data.metrics["gate_gain_format"] > 0.2

    # the registry: descriptions with the verdict, the rates and the lineage
    versions = client.search_model_versions(f"name = '{params.tracking.registered_model}'")
    described = {str(v.version): v.description for v in versions}
    assert described[champ.version].startswith("Gate: promoted")
    assert "Gate-set pass rates" in described[champ.version] and "gate_data_md5" in described[champ.version]
    assert any(d.startswith("Gate: rejected") for d in described.values())
    assert str(client.get_registered_model(params.tracking.registered_model).aliases["champion"]) == champ.version

    # Prefect artifacts of the flow runs
    with get_client(sync_client=True) as prefect:
        keys = {
            a.key
            for a in prefect.read_artifacts(
                artifact_filter=ArtifactFilter(
                    key=ArtifactFilterKey(
                        any_=["evaluation-slices", "evaluation-decision", "finetune-run", "gate-verdict", "gate-slices"]
                    )
                )
            )
        }
    assert keys == {"evaluation-slices", "evaluation-decision", "finetune-run", "gate-verdict", "gate-slices"}

    # status: the index is fresh, champion and previous, the last decision, nothing pending but what is
    shown = CliRunner().invoke(app, ["status", "--json", "--params", p])
    assert shown.exit_code == 0, shown.output
    st = json.loads(shown.stdout)
    assert st["index"]["version"] == 1 and st["index"]["chunks"] == 6 and not st["pending"]["reindex"]
    assert st["champion"]["version"] == champ.version and st["champion"]["gate"] == "promoted"
    assert st["champion"]["gate_pass_rates"]["format"] >= 0.6
    assert st["pending"]["gate"] == []
    assert not st["pending"]["evaluation"] and st["last_evaluation"]["model_version"] == f"v{champ.version}"
    loop_dep.write("new-policy.md", "# Overdraft\n\nAn arranged overdraft costs 10 percent a year.\n")
    st = json.loads(CliRunner().invoke(app, ["status", "--json", "--params", p]).stdout)
    assert st["pending"]["reindex"] and st["index"]["changes_since"]["added"] == 1
    assert CliRunner().invoke(app, ["index", "--json", "--params", p]).exit_code == 0  # the reindex flow
    st = json.loads(CliRunner().invoke(app, ["status", "--json", "--params", p]).stdout)
    assert st["index"]["version"] == 2 and not st["pending"]["reindex"]
    assert st["pending"]["evaluation"]  # the champion was last evaluated on index version 1
    human = CliRunner().invoke(app, ["status", "--params", p])
    assert human.exit_code == 0 and "champion" in human.output

    # advise: from the recorded history, with evidence for each part
    advised = CliRunner().invoke(app, ["advise", "--json", "--params", p])
    assert advised.exit_code == 0, advised.output
    a = json.loads(advised.stdout)
    assert a["recommendation"] in {"both", "retrieval"}
    assert a["knowledge"]["verdict"] == "retrieval"
    ev = a["evidence"]
    assert ev["knowledge"]["published_versions"] == 1 and ev["knowledge"]["documents"]["added"] == 1
    assert ev["examples"]["train"] == 36
    assert {t["verdict"] for t in ev["finetunes"]} >= {"promoted", "rejected"}
    assert any("fine-tune" in e and "promoted" in e for e in a["behaviour"]["evidence"])
    assert CliRunner().invoke(app, ["advise", "--params", p]).exit_code == 0


def _mtime(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:  # also between the old adapter's removal and the new one's rename into place
        return 0


def test_killing_a_fine_tune_leaves_the_champion(loop_dep: Deployment) -> None:
    """SIGKILL a real `ragloop finetune` in a state it was seen in, not after a guessed delay: training over and
    the new adapter in place, the candidate's gate-set evaluation under way. The registry aliases do not move."""
    import os
    import signal
    import subprocess
    import sys

    from prefect.settings import PREFECT_API_URL

    from tests.helpers import REPO, wait_until

    params, settings = load_params(loop_dep.params_file), Settings.from_env()
    before = registry.champion(params, settings)
    assert before is not None, "runs after the promotion test"
    candidate = params.paths.models / "candidate"
    stamp = _mtime(candidate)
    log = loop_dep.root / "finetune-killed.log"
    cmd = [sys.executable, "-m", "flows.cli", "finetune", "--params", str(loop_dep.params_file)]
    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value())}  # the session's server: none to start
    with open(log, "wb") as stderr:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        wait_until(lambda: _mtime(candidate) not in {0, stamp}, "a new candidate adapter", limit=900, alive=proc,
                   log=log)  # fmt: skip
    finally:
        proc.send_signal(signal.SIGKILL)  # a no-op when it has already exited
        code = proc.wait(timeout=60)
    assert code == -signal.SIGKILL, f"the fine-tune exited {code} on its own:\n{log.read_text()[-4000:]}"
    after = registry.champion(params, settings)
    assert after is not None
    assert after.version == before.version
