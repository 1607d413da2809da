"""The dashboards a user opens after the loop has run, in a real headless browser: MLflow's experiment pages list
the evaluation and fine-tune runs and its registry shows the `champion` and `previous` aliases; Prefect's UI lists
the flow runs. One tiny real loop feeds both, through a real `prefect server start` and then a `mlflow server` on
its SQLite store. Assertions name only runs, experiments, flows, the model and its aliases, never the layout."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin

import httpx
import pytest

from components.config import Params, Settings
from components.tracking import registry
from tests.behaviour.test_loop import write_suite
from tests.conftest import build_tiny_model
from tests.helpers import Deployment
from tests.service.servers import BIN, HTTP_TIMEOUT, Server, free_port, prefect_server

# a hang guard for each test, the module's loop included (it runs inside the first test's time): two fine-tunes and
# two servers take minutes on a slow shared 2-core machine
pytestmark = [pytest.mark.slow, pytest.mark.server, pytest.mark.browser, pytest.mark.timeout(3600)]


@dataclass
class Dashboards:
    params: Params
    prefect_api: str  # http://127.0.0.1:PORT/api
    mlflow: str  # http://127.0.0.1:PORT

    @property
    def prefect(self) -> str:
        return self.prefect_api.removesuffix("/api")

    def experiment_id(self, name: str) -> str:
        got = httpx.get(f"{self.mlflow}/api/2.0/mlflow/experiments/get-by-name", params={"experiment_name": name},
                        timeout=HTTP_TIMEOUT)  # fmt: skip
        got.raise_for_status()
        return str(got.json()["experiment"]["experiment_id"])

    def flow_runs(self) -> list[dict]:
        got = httpx.post(f"{self.prefect_api}/flow_runs/filter", json={}, timeout=HTTP_TIMEOUT)
        got.raise_for_status()
        return list(got.json())

    def flow_name(self, flow_id: str) -> str:
        return str(httpx.get(f"{self.prefect_api}/flows/{flow_id}", timeout=HTTP_TIMEOUT).json()["name"])


def mlflow_ui(root: Path, params: Params) -> Server:
    """`mlflow server` on a deployment's embedded store: runs and registry in its SQLite file; each experiment
    already names its own artifact folder."""
    port = free_port()
    cmd = [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
           "--backend-store-uri", f"sqlite:///{params.paths.mlflow / 'mlflow.db'}", "--no-serve-artifacts",
           "--default-artifact-root", (params.paths.mlflow / "artifacts").as_uri()]  # fmt: skip
    return Server("mlflow", cmd, f"http://127.0.0.1:{port}/health", root / "mlflow-ui.log", {})


def _configure(dep: Deployment) -> None:
    """The loop of tests/behaviour/test_loop.py, trained for a fixed handful of steps: these tests need runs and
    registered versions, not a good model."""
    dep.write_params(
        paths={"docs": "docs", "index": "state/index", "metrics": "state/metrics", "mlflow": "state/mlflow",
               "behaviour": "behaviour", "models": "state/models"},
        generator={"model": "base", "max_new_tokens": 90, "context_chunks": 2},
        regression={"min_cases": 3, "min_effect": 0.2, "floors": {"format": 0.6}},
        finetune={"r": 8, "alpha": 16, "dropout": 0.0, "batch_size": 12, "max_steps": 3,
                  "failing_case_repeats": 0},
    )  # fmt: skip


def _ragloop(dep: Deployment, env: dict[str, str], *args: str) -> dict:
    done = dep.cli(*args, "--json", env=env, timeout=900)
    assert done.returncode == 0, f"ragloop {' '.join(args)} failed: {done.stderr[-3000:]}"
    return dict(json.loads(done.stdout))


@pytest.fixture(scope="module")
def dashboards(tmp_path_factory) -> Iterator[Dashboards]:
    """`ragloop run` (reindex -> evaluate -> fine-tune -> gate) against a real Prefect server, then a fine-tune of
    a second candidate; each promoted by hand (as `ragloop promote` does, whatever the gate said of these barely
    trained adapters), so the registry has a `champion` (v2) and a `previous` (v1)."""
    root = tmp_path_factory.mktemp("dashboards")
    dep = Deployment.create(root / "project")
    write_suite(dep.root / "behaviour")
    build_tiny_model(dep.root / "base")
    _configure(dep)
    prefect = prefect_server(root)
    api = prefect.env["PREFECT_API_URL"]
    prefect.env.update(PREFECT_UI_ENABLED="true", PREFECT_UI_API_URL=api)
    mlflow: Server | None = None
    try:
        prefect.start()
        params, settings, env = dep.params(), Settings.from_env(), {"PREFECT_API_URL": api}
        ran = _ragloop(dep, env, "run")
        assert ran["finetune"], f"the base model's evaluation did not ask for a fine-tune: {ran['evaluation']}"
        registry.promote(params, settings, ran["finetune"]["version"])
        registry.promote(params, settings, _ragloop(dep, env, "finetune", "--no-gate")["version"])
        mlflow = mlflow_ui(root, params).start()
        yield Dashboards(params, api, mlflow.health.removesuffix("/health"))
    finally:
        for server in (mlflow, prefect):
            if server is not None:
                server.stop()


def test_mlflow_experiment_pages_list_the_loop_runs(dashboards: Dashboards, page, screenshots: Path) -> None:
    from playwright.sync_api import expect

    tracking = dashboards.params.tracking
    expected = {tracking.evaluation_experiment: ["evaluate-base", "evaluate-candidate"],
                tracking.finetune_experiment: ["finetune-lora"],
                tracking.knowledge_experiment: ["index-v1"]}  # fmt: skip
    for experiment, run_names in expected.items():
        page.goto(f"{dashboards.mlflow}/#/experiments/{dashboards.experiment_id(experiment)}/runs")
        try:
            expect(page.get_by_text(experiment).first).to_be_visible()
            for name in run_names:
                expect(page.get_by_text(name, exact=True).first).to_be_visible()
        finally:
            page.screenshot(path=screenshots / f"mlflow-{experiment}.png", full_page=True)


def test_mlflow_registry_page_shows_the_champion_and_previous_aliases(
    dashboards: Dashboards, page, screenshots: Path
) -> None:
    from playwright.sync_api import expect

    name = dashboards.params.tracking.registered_model
    page.goto(f"{dashboards.mlflow}/#/models/{name}")
    try:
        expect(page.get_by_text(name).first).to_be_visible()
        for alias in ("champion", "previous"):
            expect(page.get_by_text(re.compile(rf"@\s*{alias}\b")).first).to_be_visible()
    finally:
        page.screenshot(path=screenshots / f"mlflow-model-{name}.png", full_page=True)


def test_prefect_ui_lists_the_flow_runs(dashboards: Dashboards, page, screenshots: Path) -> None:
    from playwright.sync_api import expect

    runs = {dashboards.flow_name(r["flow_id"]): r["name"] for r in dashboards.flow_runs()}
    assert {"pipeline", "reindex", "evaluate", "finetune"} <= set(runs), runs
    page.set_viewport_size({"width": 1600, "height": 1600})  # the run list scrolls inside the page
    page.goto(f"{dashboards.prefect}/")  # the neutral entry point redirects to the server's default UI
    page.goto(urljoin(page.url, "runs"))
    try:
        for flow in ("pipeline", "reindex", "evaluate", "finetune"):
            expect(page.get_by_text(runs[flow]).first).to_be_visible()
            expect(page.get_by_text(flow, exact=True).first).to_be_visible()
    finally:
        page.screenshot(path=screenshots / "prefect-flow-runs.png", full_page=True)


def test_mlflow_trace_view_shows_a_production_trace_with_its_retrieval_and_feedback(
    dashboards: Dashboards, page, screenshots: Path
) -> None:
    """An answer served by the champion (the server's own engine and trace code), disliked by its user: MLflow's
    trace view shows the trace, its retriever span and the feedback with its comment."""
    from playwright.sync_api import expect

    from components.serving.engine import Engine
    from components.tracking.feedback import log_feedback
    from components.tracking.trace_schema import ANSWER_SPAN
    from components.tracking.trace_writer import write_trace

    params, settings = dashboards.params, Settings.from_env()
    with Engine(params, settings) as engine:
        answered = engine.answer("I lost my card, what do I do?")
    written = write_trace(params, settings, answered)
    assert written.stored, written.error
    comment = "it should say how to freeze the card"
    log_feedback(params, settings, written.trace_id, False, comment=comment, user="browser-test")
    exp = dashboards.experiment_id(params.tracking.serving_experiment)
    page.goto(f"{dashboards.mlflow}/#/experiments/{exp}/traces?selectedEvaluationId={written.trace_id}")
    try:
        expect(page.get_by_text(written.trace_id.removeprefix("tr-")[:8]).first).to_be_visible()  # the drawer opened
        expect(page.get_by_text(answered.question).first).to_be_visible()
        page.get_by_text("retrieve", exact=True).first.click()  # the retriever span: its chunks as documents
        expect(page.get_by_text(answered.hits[0]["doc"]).first).to_be_visible()
        page.get_by_text(ANSWER_SPAN, exact=True).first.click()  # the root span holds the trace's assessments
        page.get_by_text("Assess", exact=False).first.click()  # and its assessments panel
        expect(page.get_by_text("user_feedback").first).to_be_visible()
        for check in ("format", "intent", "citation"):  # the live contract checks, as CODE assessments
            expect(page.get_by_text(check, exact=True).first).to_be_visible()
        # the user's feedback (listed first) opens to its rationale
        page.locator('[data-component-id="shared.model-trace-explorer.toggle-assessment-expanded"]').first.click()
        expect(page.get_by_text(comment).first).to_be_visible()
    finally:
        page.screenshot(path=screenshots / "mlflow-production-trace.png", full_page=True)
