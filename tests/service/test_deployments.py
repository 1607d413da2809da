"""The deployments: prefect.yaml is generated from params.yaml and stays current; `prefect deploy --all` accepts it
against a real Prefect server; `ragloop watch` turns a burst of writes into one event; embedding on a local Dask
cluster gives the index the default runner gives."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest
import yaml

from components.config import ParamsError, load_params
from flows.deployments import render_prefect_yaml, specs
from flows.events import BEHAVIOUR_REGRESSION, DOCUMENTS_CHANGED, RETRIEVAL_REGRESSION
from tests.helpers import REPO, Deployment, wait_until, watches
from tests.service.servers import HTTP_TIMEOUT, prefect_server


def test_prefect_yaml_is_generated_from_params_and_current() -> None:
    params = load_params(REPO / "params.yaml")
    assert (REPO / "prefect.yaml").read_text() == render_prefect_yaml(params), "run `ragloop deployments --write`"
    doc = yaml.safe_load((REPO / "prefect.yaml").read_text())
    by_name = {d["name"]: d for d in doc["deployments"]}
    assert set(by_name) == {"reindex", "evaluate", "finetune", "tune-retriever", "pipeline", "triage"}
    assert by_name["reindex"]["schedules"][0]["cron"] == params.service.reindex_cron
    assert by_name["reindex"]["triggers"][0]["expect"] == [DOCUMENTS_CHANGED]
    assert by_name["finetune"]["triggers"][0]["expect"] == [BEHAVIOUR_REGRESSION]
    assert by_name["tune-retriever"]["triggers"][0]["expect"] == [RETRIEVAL_REGRESSION]
    assert by_name["triage"]["schedules"][0]["cron"] == params.service.triage_cron == "15 * * * *"
    for d in doc["deployments"]:
        assert d["concurrency_limit"] == {"limit": 1, "collision_strategy": "ENQUEUE"}  # runs queue, never race
        for trigger in d.get("triggers", []):
            assert set(trigger["match"]) == {"prefect.resource.id"}  # a name pattern, never an id
            assert trigger["match"]["prefect.resource.id"].startswith("ragloop.")


def test_a_bad_schedule_names_the_field(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text("service:\n  reindex_cron: every five minutes\n")
    with pytest.raises(ParamsError, match=r"service\.reindex_cron.*cron"):
        load_params(tmp_path / "params.yaml")
    (tmp_path / "params.yaml").write_text("service:\n  timezone: Mars/Olympus\n")
    with pytest.raises(ParamsError, match=r"service\.timezone.*Mars/Olympus"):
        load_params(tmp_path / "params.yaml")


@pytest.mark.slow
@pytest.mark.server
def test_prefect_deploy_all_registers_schedules_triggers_and_limits(tmp_path: Path) -> None:
    server = prefect_server(tmp_path).start()
    try:
        env = {**os.environ, "PREFECT_API_URL": server.env["PREFECT_API_URL"], "RAGLOOP_PROJECT_DIR": str(REPO)}
        prefect = str(Path(sys.executable).parent / "prefect")
        for cmd in ([prefect, "work-pool", "create", "ragloop-process", "--type", "process"],
                    [prefect, "--no-prompt", "deploy", "--all"]):  # fmt: skip
            done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
            assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        api = server.env["PREFECT_API_URL"]
        deployed = {d["name"]: d for d in httpx.post(f"{api}/deployments/filter", json={}, timeout=HTTP_TIMEOUT).json()}
        assert set(deployed) == {s.name for s in specs(load_params(REPO / "params.yaml"))}
        reindex = deployed["reindex"]
        assert reindex["schedules"][0]["schedule"]["cron"] == "*/30 * * * *"
        assert reindex["global_concurrency_limit"]["limit"] == 1
        assert reindex["concurrency_options"]["collision_strategy"] == "ENQUEUE"
        assert reindex["work_pool_name"] == "ragloop-process"
        automations = httpx.post(f"{api}/automations/filter", json={}, timeout=HTTP_TIMEOUT).json()
        expects = {e for a in automations for e in a["trigger"]["expect"]}
        assert expects == {DOCUMENTS_CHANGED, BEHAVIOUR_REGRESSION, RETRIEVAL_REGRESSION}
    finally:
        server.stop()


@pytest.mark.slow
def test_watch_turns_a_burst_of_writes_into_one_event(deployment: Deployment) -> None:
    from flows.service import watch

    # a burst is every change until 1 s passes with none: far above any pause inside the write loop below, even
    # on a loaded machine
    deployment.write_params(service={"watch_debounce_ms": 1000})
    params = deployment.params()
    events: list[list[str]] = []
    stop = threading.Event()
    watcher = threading.Thread(target=watch, args=(params, lambda _, paths: events.append(paths), stop))
    watcher.start()
    try:
        wait_until(lambda: watches(os.getpid(), deployment.docs) or not watcher.is_alive(), "the watcher watching")
        assert watcher.is_alive()
        for i in range(100):
            deployment.write(f"burst/note-{i % 10}.md", f"# Note\n\nrevision {i}\n")
        deployment.write(".hidden.md", "editor swap file")
        deployment.write("scratch.tmp", "not a document")
        wait_until(lambda: bool(events), "an event for the burst")
        assert events == [sorted(f"burst/note-{i}.md" for i in range(10))]
        # a deletion is a change too; and, seen after the burst's event, it shows nothing else came of the burst
        # (a late part of it would arrive first, or merged with the deletion)
        (deployment.docs / "burst" / "note-3.md").unlink()
        wait_until(lambda: len(events) >= 2, "an event for the deletion")
        assert events[1:] == [["burst/note-3.md"]]
    finally:
        stop.set()
        watcher.join(timeout=60)
    assert not watcher.is_alive()


@pytest.mark.slow
def test_embedding_on_a_local_dask_cluster_builds_the_same_index(tmp_path: Path, prefect_server) -> None:
    from flows.reindex import reindex

    results = {}
    for runner in ("default", "dask"):
        dep = Deployment.create(tmp_path / runner)
        dep.write_params(service={"task_runner": runner, "dask_workers": 2, "embed_batch_chunks": 2})
        report = reindex(params_file=str(dep.params_file))
        assert report["chunks"]["embedded"] == 6
        with dep.session() as s:
            records = s.store.scan(s.collection(s.target_collection()), with_embeddings=True)
            results[runner] = {r.metadata["chunk_hash"]: r.embedding for r in records}
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:  # the texts never travel as flow parameters (the API caps those)
        assert all(len(json.dumps(run.parameters)) < 1000 for run in client.read_flow_runs())
    assert results["default"].keys() == results["dask"].keys()
    for key, vector in results["default"].items():
        assert max(abs(a - b) for a, b in zip(vector, results["dask"][key], strict=True)) < 1e-5
