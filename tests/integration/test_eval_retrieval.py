"""`ragloop eval-retrieval` on a tiny real deployment: the command's --json contract and table, its MLflow run
(index version, params, the query file's md5, the per-query table), bad input, and the Prefect task."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from components.behaviour.eval_retrieval import evaluate_retrieval
from components.config import Settings
from components.tracking.mlflow_runs import client_for
from components.tracking.retrieval_runs import QUERIES_TABLE
from flows.cli import app
from tests.helpers import Deployment

QUERIES = [
    {"id": "atm", "query": "how much does an ATM withdrawal cost", "relevant": ["fees.md"]},
    {"id": "lost", "query": "I lost my card, what now?", "relevant": {"cards/lost-card.md": 2, "support.txt": 1}},
    {"id": "hours", "query": "when can I call support", "relevant": ["support.md"]},  # a typo: not in the index
]
CONTRACT = {"index_version", "level", "ks", "queries", "scored", "metrics", "worst", "unknown_documents", "skipped",
            "queries_file", "queries_md5", "embedder", "retrieval", "seconds", "mlflow_run_id"}  # fmt: skip


@pytest.fixture(scope="module")
def dep(tmp_path_factory: pytest.TempPathFactory) -> Deployment:
    d = Deployment.create(tmp_path_factory.mktemp("eval"))
    d.index()
    (d.root / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in QUERIES))
    return d


def test_the_command_prints_the_contract_and_logs_one_run_with_its_lineage(dep: Deployment) -> None:
    out = dep.cli("eval-retrieval", str(dep.root / "queries.jsonl"), "--k", "1,3", "--json")
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    assert set(r) == CONTRACT
    assert (r["index_version"], r["level"], r["ks"], r["queries"], r["scored"]) == (1, "doc", [1, 3], 3, 2)
    assert list(r["metrics"]) == ["recall@1", "recall@3", "hit@1", "hit@3", "mrr", "ndcg@10"]
    assert r["metrics"]["hit@3"] == 1.0
    assert r["unknown_documents"] == [{"id": "hours", "line": 3, "doc": "support.md", "closest": "support.txt"}]
    assert r["skipped"][0]["id"] == "hours"
    assert "queries.jsonl:3: relevant document 'support.md' is not in index version 1" in out.stderr
    assert "closest indexed path: support.txt" in out.stderr

    client = client_for(dep.params(), Settings.from_env())
    run = client.get_run(r["mlflow_run_id"])
    assert client.get_experiment(run.info.experiment_id).name == "ragloop-retrieval"
    assert run.data.tags["index_version"] == "1"
    assert run.data.tags["queries_md5"] == r["queries_md5"]
    assert run.data.params["retrieval.long_query"] == dep.params().retrieval.long_query
    assert run.data.params["retrieval.doc_aggregation"] == dep.params().retrieval.doc_aggregation
    assert run.data.metrics["recall_at_3"] == r["metrics"]["recall@3"]
    assert run.data.metrics["unknown_documents"] == 1
    table = json.loads(Path(client.download_artifacts(run.info.run_id, QUERIES_TABLE, str(dep.root))).read_text())
    assert [row[0] for row in table["data"]] == ["atm", "lost"]
    assert {"query", "relevant", "retrieved", "ndcg@10", "mrr"} <= set(table["columns"])


def test_chunk_and_doc_levels_are_both_measured_and_graded_gains_weigh_ndcg(dep: Deployment) -> None:
    path = dep.root / "queries.jsonl"
    doc = evaluate_retrieval(dep.params(), path, (1, 3), "doc", log=False)
    chunk = evaluate_retrieval(dep.params(), path, (1, 3), "chunk", log=False)
    assert doc["mlflow_run_id"] is None and doc["level"] == "doc" and chunk["level"] == "chunk"
    # "lost" needs two documents: three chunks of lost-card.md and fees.md can crowd support.txt out of the
    # chunk top 3, never out of the document top 3 (the index holds three documents)
    lost = {w["id"]: w for w in doc["worst"]}["lost"]
    assert lost["recall@3"] == 1.0
    assert doc["metrics"]["recall@3"] >= chunk["metrics"]["recall@3"]
    graded, binary = dep.root / "graded.jsonl", dep.root / "binary.jsonl"
    graded.write_text(json.dumps({"query": "support opening hours", "relevant": {"support.txt": 1, "fees.md": 3}}))
    binary.write_text(json.dumps({"query": "support opening hours", "relevant": ["support.txt", "fees.md"]}))
    ndcg = [evaluate_retrieval(dep.params(), p, (3,), "doc", log=False)["metrics"]["ndcg@10"] for p in (graded, binary)]
    assert ndcg[0] < ndcg[1]  # fees.md (gain 3) ranks below support.txt for this query


def _eval_retrieval(dep: Deployment, path: Path, k: str, level: str, *more: str) -> Any:
    args = [
        "eval-retrieval",
        str(path),
        "--k",
        k,
        "--level",
        level,
        "--no-log",
        *more,
        "--params",
        str(dep.params_file),
    ]
    return CliRunner().invoke(app, args, terminal_width=200)


def test_the_table_names_the_worst_queries(dep: Deployment) -> None:
    out = _eval_retrieval(dep, dep.root / "queries.jsonl", "1,5", "chunk")
    assert out.exit_code == 0, out.output
    assert "at the chunk level: 2 of 3 queries scored" in out.stdout
    assert "worst queries" in out.stdout and "I lost my card" in out.stdout
    assert "not logged (--no-log)" in out.stdout


@pytest.mark.parametrize(
    ("content", "k", "level", "message"),
    [
        ('{"query": "q", "relevant": ["fees.md"]}\n{"query": "q2"}\n', "1,5", "doc", "bad.jsonl:2: field 'relevant'"),
        ('{"query": "q", "relevant": ["fees.md"]}\n', "five", "doc", "--k: expected comma-separated integers"),
        ('{"query": "q", "relevant": ["fees.md"]}\n', "5", "page", "--level must be one of chunk, doc"),
    ],
)
def test_bad_input_exits_2_naming_what_is_wrong(dep: Deployment, content: str, k: str, level: str,
                                               message: str) -> None:  # fmt: skip
    path = dep.root / "bad.jsonl"
    path.write_text(content)
    out = _eval_retrieval(dep, path, k, level, "--json")
    assert out.exit_code == 2, out.output
    assert message in out.stderr and out.stdout == ""


def test_no_published_index_exits_1(tmp_path: Path) -> None:
    empty = Deployment.create(tmp_path)
    path = tmp_path / "q.jsonl"
    path.write_text(json.dumps(QUERIES[0]) + "\n")
    out = _eval_retrieval(empty, path, "5", "doc", "--json")
    assert out.exit_code == 1 and "run `ragloop index` first" in out.stderr


def test_query_level_doc_through_the_command(dep: Deployment) -> None:
    out = dep.cli("query", "fees for ATM withdrawals, exchange and transfers", "-k", "2", "--level", "doc", "--json")
    assert out.returncode == 0, out.stderr
    hits = json.loads(out.stdout)
    assert [h["doc"] for h in hits][:1] == ["fees.md"] and len({h["doc"] for h in hits}) == 2
    bad = dep.cli("query", "fees", "--level", "page")
    assert bad.returncode == 2 and "--level must be one of chunk, doc" in bad.stderr


def test_the_prefect_task_returns_the_contract_inside_a_flow(dep: Deployment, prefect_server: None) -> None:
    from prefect import flow

    from flows.retrieval_tasks import evaluate_retrieval_task

    @flow
    def measure(queries: str) -> dict:
        return evaluate_retrieval_task(dep.params(), Path(queries), (1, 5), "doc", log=False)

    result = measure(str(dep.root / "queries.jsonl"))
    assert set(result) == CONTRACT and result["scored"] == 2
