"""`ragloop` commands of the knowledge path: index (or roll it back), query, eval-retrieval, verify, versions; with
the tables they print without `--json`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from typer.core import TyperCommand

from flows.cli.common import JsonOpt, ParamsOpt, ReasonOpt, emit, exits, fail, load, on_prefect_api

if TYPE_CHECKING:
    from components.config import Params

LevelOpt = Annotated[
    str, typer.Option("--level", help="chunk: rank chunks; doc: rank documents by their chunks (retrieval.doc_*).")
]


def optional_rollback_value(args: list[str]) -> list[str]:
    """`--rollback` with no VERSION means the previous version (click options cannot take an optional value)."""
    out = list(args)
    for i, arg in enumerate(out):
        if arg == "--rollback" and (i + 1 == len(out) or out[i + 1].startswith("-")):
            out.insert(i + 1, "previous")
            break
    return out


class OptionalRollback(TyperCommand):
    """`index`'s command class: reads `--rollback` alone as `--rollback previous`."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:  # ctx: the click Context Typer vendors
        return super().parse_args(ctx, optional_rollback_value(args))


@on_prefect_api(when=lambda kw: not kw["direct"] and kw["rollback"] is None)
def index(
    params_file: ParamsOpt = Path("params.yaml"),
    as_json: JsonOpt = False,
    rollback: Annotated[
        str | None,
        typer.Option(
            "--rollback",
            metavar="[VERSION]",
            help="Publish a new version with the content of VERSION (alone: the previous version).",
        ),
    ] = None,
    direct: Annotated[
        bool, typer.Option("--direct", help="Run the steps in-process without Prefect or MLflow (debugging).")
    ] = False,
    reason: ReasonOpt = "manual",
) -> None:
    """Bring the index in line with the documents (incremental, crash-safe), or roll it back."""
    params = load(params_file)
    with exits({(FileNotFoundError, RuntimeError, ValueError, OSError): 1}, prefix="nothing was published: "):
        if rollback is not None:
            report = _rollback(params, rollback)
        elif direct:
            report = _direct(params)
        else:
            from flows.reindex import reindex

            report = reindex(params_file=str(params.source), reason=reason)
    emit(report, as_json, index_table)


def _direct(params: Params) -> dict:
    from components.knowledge.indexer import journal, run_index
    from components.knowledge.report import contract
    from components.knowledge.session import open_index

    with open_index(params) as s:
        report = run_index(s)
    journal(params.paths.index, report, "direct", None)
    return contract(report)


def _rollback(params: Params, version: str) -> dict:
    from components.knowledge.maintenance import rollback
    from components.knowledge.report import contract
    from components.knowledge.session import open_index

    if version != "previous" and not version.isdigit():
        raise ValueError(f"--rollback takes a version number, got {version!r}")
    with open_index(params) as s:
        return contract(rollback(s, None if version == "previous" else int(version)))


def query(
    text: Annotated[str, typer.Argument(help="The question or text to search for.")],
    k: Annotated[int, typer.Option("-k", min=1, max=100, help="How many chunks (or documents) to return.")] = 5,
    level: LevelOpt = "chunk",
    params_file: ParamsOpt = Path("params.yaml"),
    as_json: JsonOpt = False,
) -> None:
    """Search the published index version: the k best chunks (or documents), best first."""
    from components.knowledge.retrieval import LEVELS, IndexNotReadyError, query_index

    params = load(params_file)
    if level not in LEVELS:
        fail(f"--level must be one of {', '.join(LEVELS)}; got {level!r}", 2)
    with exits({IndexNotReadyError: 1}):
        hits = query_index(params, text, k, level=level)
    emit(hits, as_json, doc_hits_table if level == "doc" else hits_table)


def eval_retrieval(
    file: Annotated[Path, typer.Argument(help='JSONL: {"query": ..., "relevant": [doc, ...] or {doc: gain}} a line.')],
    k: Annotated[str, typer.Option("--k", help="Cut-offs of recall@k and hit@k, comma-separated.")] = "1,5,10",
    level: LevelOpt = "doc",
    log: Annotated[bool, typer.Option("--log/--no-log", help="Record the evaluation as an MLflow run.")] = True,
    params_file: ParamsOpt = Path("params.yaml"),
    as_json: JsonOpt = False,
) -> None:
    """Score retrieval of the published version on labelled queries: recall@k, MRR, nDCG@10, the worst queries."""
    from components.behaviour.eval_retrieval import evaluate_retrieval
    from components.knowledge.retrieval import IndexNotReadyError
    from components.knowledge.retrieval_eval import QueryFileError, parse_ks

    params = load(params_file)
    with exits({(QueryFileError, ValueError): 2, IndexNotReadyError: 1}):
        result = evaluate_retrieval(params, file, parse_ks(k), level, log=log)
    for u in result["unknown_documents"]:
        hint = f" (closest indexed path: {u['closest']})" if u["closest"] else ""
        where = f"{file}:{u['line']}: relevant document {u['doc']!r}"
        Console(stderr=True, soft_wrap=True).print(
            f"[yellow]warning:[/] {where} is not in index version {result['index_version']}{hint}; left out of the "
            "scores", highlight=False)  # fmt: skip
    if as_json:
        sys.stdout.write(json.dumps(result) + "\n")
    else:
        Console(soft_wrap=True).print(*retrieval_views(result))


def verify(
    repair: Annotated[bool, typer.Option("--repair", help="Fix what is wrong, without a full rebuild.")] = False,
    params_file: ParamsOpt = Path("params.yaml"),
    as_json: JsonOpt = False,
) -> None:
    """Check the real store against the manifest and the documents (exit 1 when not ok)."""
    from components.knowledge.maintenance import verify as run_verify
    from components.knowledge.session import open_index

    params = load(params_file)
    with open_index(params) as s:
        result = run_verify(s, repair=repair)
    emit(result, as_json, verify_table)
    if not result["ok"]:
        raise typer.Exit(1)


def versions(params_file: ParamsOpt = Path("params.yaml"), as_json: JsonOpt = False) -> None:
    """List the retained index versions (the ones `index --rollback` can restore)."""
    from components.knowledge.manifest import Manifest, manifest_path

    params = load(params_file)
    manifest = Manifest(manifest_path(params.paths.index))
    published = manifest.published()
    rows = [
        {"version": v.version, "published": v.version == published, "kind": v.kind, "created_at": v.created_at,
         "collection": v.collection, "embedder": v.embedder, "chunker": v.chunker}
        for v in manifest.versions()
    ]  # fmt: skip
    manifest.close()
    emit(rows, as_json, versions_table)


# --- the tables ------------------------------------------------------------------------------------------------


def index_table(r: dict) -> Table:
    state = "published" if r.get("published", True) else "unchanged"
    t = Table(title=f"index version {r['index_version']} ({state})")
    for col in ("", "added", "modified", "deleted", "renamed", "unchanged", "failed"):
        t.add_column(col)
    t.add_row("documents", *(str(r["documents"][k]) for k in list(r["documents"])))
    t.add_row("chunks", *(f"{k} {v}" for k, v in r["chunks"].items()), "", "")
    for e in r["errors"]:
        t.add_row("[red]error[/]", f"{e['path']}: {e['error']}")
    return t


def hits_table(hits: list[dict]) -> Table:
    t = Table("score", "doc", "text")
    for h in hits:
        t.add_row(f"{h['score']:.3f}", h["doc"], h["text"][:160].replace("\n", " "))
    return t


def doc_hits_table(hits: list[dict[str, Any]]) -> Table:
    """`ragloop query --level doc`: each document with its score and the start of its best chunk."""
    t = Table("score", "doc", "best chunk")
    for h in hits:
        t.add_row(f"{h['score']:.3f}", h["doc"], h["chunks"][0]["text"][:160].replace("\n", " "))
    return t


def retrieval_views(r: dict[str, Any]) -> list[Any]:
    """The tables `ragloop eval-retrieval` prints: the metrics, then the worst queries."""
    from components.knowledge.retrieval_eval import NDCG_AT

    title = (f"retrieval of index version {r['index_version']} at the {r['level']} level: {r['scored']} of "
             f"{r['queries']} queries scored, {r['seconds']['per_query'] * 1000:.0f} ms a query")  # fmt: skip
    metrics = Table("metric", "value", title=title)
    for name, value in r["metrics"].items():
        metrics.add_row(name, f"{value:.3f}")
    worst = Table("line", "query", f"ndcg@{NDCG_AT}", "missed", title="worst queries")
    for w in r["worst"]:
        text = w["query"] if len(w["query"]) <= 90 else w["query"][:87] + "..."
        worst.add_row(str(w["line"]), text, f"{w[f'ndcg@{NDCG_AT}']:.2f}", ", ".join(w["missed"]) or "-")
    footer = f"MLflow run {r['mlflow_run_id']}" if r["mlflow_run_id"] else "not logged (--no-log)"
    return [metrics, worst, footer]


def verify_table(r: dict) -> Table:
    t = Table(title=f"verify index version {r['index_version']}: {'ok' if r['ok'] else 'NOT OK'}")
    t.add_column("check")
    t.add_column("count")
    for key in ("missing", "orphaned", "duplicated", "foreign_embedder", "mismatched"):
        t.add_row(key, str(r[key]))
    t.add_row("documents changed since publish", str(len(r["pending_documents"])))
    return t


def versions_table(rows: list[dict]) -> Table:
    t = Table("version", "published", "kind", "embedder", "collection")
    for r in rows:
        t.add_row(str(r["version"]), "*" if r["published"] else "", r["kind"], r["embedder"], r["collection"])
    return t
