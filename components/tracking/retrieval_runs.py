"""`ragloop eval-retrieval` runs in MLflow (experiment `retrieval.experiment`, default `ragloop-retrieval`): one run
per evaluation, with the index version, the retrieval params, the query file's md5, the metrics and the per-query
table. Its own experiment, not `ragloop-knowledge`: that one holds one run per index run, and `ragloop advise`
reads its newest run as the index's latest size."""

from __future__ import annotations

import re
from typing import Any

from components.config import Params, Settings
from components.tracking.lineage import git_commit
from components.tracking.mlflow_runs import client_for, experiment_id

QUERIES_TABLE = "eval_retrieval/queries.json"  # the per-query table (shown as a table in the Artifacts tab)


def metric_key(name: str) -> str:
    """'recall@5' -> 'recall_at_5' (MLflow metric names take no '@')."""
    return re.sub(r"[^\w./ -]", "_", name.replace("@", "_at_"))


def log_retrieval_eval(params: Params, settings: Settings, result: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    from mlflow.entities import Metric, Param, RunTag

    client = client_for(params, settings)
    exp = experiment_id(client, params, settings, params.retrieval.experiment)
    tags = {
        "mlflow.runName": f"eval-retrieval-v{result['index_version']}-{result['level']}",
        "ragloop.stage": "eval-retrieval",
        "index_version": str(result["index_version"]),
        "queries_file": result["queries_file"],
        "queries_md5": result["queries_md5"],
        "embedder": result["embedder"],
        "git_commit": git_commit(params.source.parent),
    }
    run_id = str(client.create_run(exp, tags=tags).info.run_id)
    logged = {f"retrieval.{k}": v for k, v in result["retrieval"].items()}
    logged.update({"level": result["level"], "ks": ",".join(map(str, result["ks"])), "queries": result["queries"]})
    figures = {metric_key(k): v for k, v in result["metrics"].items()}
    figures.update({"queries_scored": result["scored"], "unknown_documents": len(result["unknown_documents"]),
                    "seconds_per_query": result["seconds"]["per_query"]})  # fmt: skip
    now = _millis()
    client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in figures.items()],
                     params=[Param(k, str(v)) for k, v in logged.items()],
                     tags=[RunTag(k, v) for k, v in tags.items()])  # fmt: skip
    client.log_dict(run_id, result, "eval_retrieval/result.json")
    if rows:
        table = {k: [_cell(r[k]) for r in rows] for k in rows[0]}
        client.log_table(run_id, data=table, artifact_file=QUERIES_TABLE)
    client.set_terminated(run_id, "FINISHED")
    return run_id


def _cell(value: Any) -> Any:
    return ", ".join(value) if isinstance(value, list) else value


def _millis() -> int:
    import time

    return int(time.time() * 1000)
