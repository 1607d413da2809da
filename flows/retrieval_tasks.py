"""The Prefect task over `ragloop eval-retrieval`'s evaluation, for flows that measure retrieval on labelled
queries (the evaluation's knowledge diagnosis among them): one task run, one MLflow run, the result as the task's
return value (the `--json` contract) and a table artifact of the metrics."""

from __future__ import annotations

from pathlib import Path

from prefect.artifacts import create_table_artifact

from components.behaviour.eval_retrieval import evaluate_retrieval
from components.config import Params
from components.knowledge.retrieval_eval import DEFAULT_KS
from flows.tasks import step


@step("evaluate retrieval on labelled queries")  # not retried: a bad query file fails the same way again
def evaluate_retrieval_task(params: Params, queries_file: Path, ks: tuple[int, ...] = DEFAULT_KS,
                            level: str = "doc", log: bool = True) -> dict:  # fmt: skip
    result = evaluate_retrieval(params, queries_file, ks, level, log=log)
    create_table_artifact(
        key="retrieval-metrics",
        table=[{"metric": k, "value": v} for k, v in result["metrics"].items()],
        description=f"index version {result['index_version']}, {result['level']} level, {result['scored']} queries "
        f"({result['queries_file']}, md5 {result['queries_md5']})",
    )
    return result
