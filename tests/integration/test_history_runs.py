"""The fine-tune experiment also holds the base model's builds: history reads only the fine-tunes as fine-tunes."""

from __future__ import annotations

from pathlib import Path


def test_only_runs_tagged_finetune_count_as_fine_tunes(tmp_path: Path) -> None:
    from mlflow import MlflowClient

    from components.behaviour.history import _runs

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.create_experiment("ragloop-finetune", artifact_location=str(tmp_path / "artifacts"))
    tuned = client.create_run(exp, tags={"ragloop.stage": "finetune"}).info.run_id
    client.create_run(exp, tags={"ragloop.stage": "base_model"})
    assert [r.info.run_id for r in _runs(client, "ragloop-finetune", stage="finetune")] == [tuned]
    assert len(_runs(client, "ragloop-finetune")) == 2
    assert _runs(client, "no-such-experiment", stage="finetune") == []
