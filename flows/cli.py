"""`ragloop`: one subcommand per job. DVC stages and users call these; `--json` output is a stable contract.

Importing this module is cheap (typer and rich only: `ragloop --help` answers at once); each command imports what
it needs when it runs.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console, RenderableType

from flows import tables

if TYPE_CHECKING:
    from components.config import Params

app = typer.Typer(
    name="ragloop",
    help="Keep a RAG assistant right: re-index when knowledge changes, fine-tune only when behaviour regresses.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
err = Console(stderr=True, soft_wrap=True)

ParamsOpt = Annotated[
    Path, typer.Option("--params", "-p", help="params.yaml to use; relative paths in it resolve against its folder.")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object (a stable contract) instead of a table.")]


def _load(params_file: Path) -> Params:
    from components.config import ParamsError, load_params

    try:
        return load_params(params_file)
    except ParamsError as exc:
        err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from None


@app.command()
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
    reason: Annotated[str, typer.Option(help="Why this run happened; recorded in MLflow.")] = "manual",
) -> None:
    """Bring the index in line with the documents (incremental, crash-safe), or roll it back."""
    params = _load(params_file)
    try:
        if rollback is not None:
            report = _rollback(params, rollback)
        elif direct:
            report = _direct(params)
        else:
            from flows.reindex import reindex

            report = reindex(params_file=str(params.source), reason=reason)
    except (FileNotFoundError, RuntimeError, ValueError, OSError) as exc:
        err.print(f"[red]error:[/] nothing was published: {exc}")
        raise typer.Exit(1) from None
    _emit(report, as_json, tables.index_table)


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


LevelOpt = Annotated[
    str, typer.Option("--level", help="chunk: rank chunks; doc: rank documents by their chunks (retrieval.doc_*).")
]


@app.command()
def query(
    text: Annotated[str, typer.Argument(help="The question or text to search for.")],
    k: Annotated[int, typer.Option("-k", min=1, max=100, help="How many chunks (or documents) to return.")] = 5,
    level: LevelOpt = "chunk",
    params_file: ParamsOpt = Path("params.yaml"),
    as_json: JsonOpt = False,
) -> None:
    """Search the published index version: the k best chunks (or documents), best first."""
    from components.knowledge.retrieval import LEVELS, IndexNotReadyError, query_index
    from flows.eval_retrieval import doc_hits_table

    params = _load(params_file)
    if level not in LEVELS:
        err.print(f"[red]error:[/] --level must be one of {', '.join(LEVELS)}; got {level!r}")
        raise typer.Exit(2)
    try:
        hits = query_index(params, text, k, level=level)
    except IndexNotReadyError as exc:
        err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from None
    _emit(hits, as_json, doc_hits_table if level == "doc" else tables.hits_table)


@app.command("eval-retrieval")
def eval_retrieval(
    file: Annotated[Path, typer.Argument(help='JSONL: {"query": ..., "relevant": [doc, ...] or {doc: gain}} a line.')],
    k: Annotated[str, typer.Option("--k", help="Cut-offs of recall@k and hit@k, comma-separated.")] = "1,5,10",
    level: LevelOpt = "doc",
    log: Annotated[bool, typer.Option("--log/--no-log", help="Record the evaluation as an MLflow run.")] = True,
    params_file: ParamsOpt = Path("params.yaml"),
    as_json: JsonOpt = False,
) -> None:
    """Score retrieval of the published version on labelled queries: recall@k, MRR, nDCG@10, the worst queries."""
    from flows.eval_retrieval import run_command

    raise typer.Exit(run_command(_load(params_file), file, k, level, as_json, log))


@app.command()
def verify(
    repair: Annotated[bool, typer.Option("--repair", help="Fix what is wrong, without a full rebuild.")] = False,
    params_file: ParamsOpt = Path("params.yaml"),
    as_json: JsonOpt = False,
) -> None:
    """Check the real store against the manifest and the documents (exit 1 when not ok)."""
    from components.knowledge.maintenance import verify as run_verify
    from components.knowledge.session import open_index

    params = _load(params_file)
    with open_index(params) as s:
        result = run_verify(s, repair=repair)
    _emit(result, as_json, tables.verify_table)
    if not result["ok"]:
        raise typer.Exit(1)


@app.command()
def versions(params_file: ParamsOpt = Path("params.yaml"), as_json: JsonOpt = False) -> None:
    """List the retained index versions (the ones `index --rollback` can restore)."""
    from components.knowledge.manifest import Manifest, manifest_path

    params = _load(params_file)
    manifest = Manifest(manifest_path(params.paths.index))
    published = manifest.published()
    rows = [
        {"version": v.version, "published": v.version == published, "kind": v.kind, "created_at": v.created_at,
         "collection": v.collection, "embedder": v.embedder, "chunker": v.chunker}
        for v in manifest.versions()
    ]  # fmt: skip
    manifest.close()
    _emit(rows, as_json, tables.versions_table)


@app.command("base-model")
def base_model(params_file: ParamsOpt = Path("params.yaml"), as_json: JsonOpt = False) -> None:
    """Build the offline default generator (BPE tokenizer + small Llama pretrained on the corpus)."""
    from components.behaviour.base_model import build_base_model, corpus_texts, pretrain_chunking
    from components.behaviour.training import machine_info
    from components.config import Settings
    from components.tracking.mlflow_runs import log_base_model_run

    params = _load(params_file)
    out = params.paths.models / "base"  # where generator.model points by default
    texts = corpus_texts(
        params.paths.docs, params.index.suffixes, params.index.max_file_bytes, pretrain_chunking(params)
    )
    info = {"path": str(out), **build_base_model(texts, out, params.base_model)}
    info["mlflow_run_id"] = log_base_model_run(params, Settings.from_env(), info, machine_info())
    _emit(info, as_json, tables.dict_table)
    if info["truncated"]:
        err.print(f"[red]error:[/] truncated: base_model.max_seconds ({params.base_model.max_seconds} s) stopped "
                  f"pretraining after {info['pretrain_steps']} of {info['pretrain_planned_steps']} steps; the model "
                  "was saved but would not reproduce, so this stage fails (raise or remove the cap)")  # fmt: skip
        raise typer.Exit(3)


@app.command()
def ask(
    question: Annotated[str, typer.Argument(help="The customer's question.")],
    params_file: ParamsOpt = Path("params.yaml"),
    as_json: JsonOpt = False,
) -> None:
    """Answer one question with the champion (retrieved sources + generator + champion adapter)."""
    from components.behaviour.loop import answer_question
    from components.config import Settings
    from components.tracking.registry import champion

    params = _load(params_file)
    settings = Settings.from_env()
    champ = champion(params, settings)
    adapter, version = (champ.adapter_dir, f"v{champ.version}") if champ else (None, "base")
    _emit(answer_question(params, settings, question, adapter, version), as_json, tables.dict_table)


@app.command()
def api(
    params_file: ParamsOpt = Path("params.yaml"),
    host: Annotated[str | None, typer.Option(help="Address to bind (default api.host, 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default api.port).")] = None,
    prefect: Annotated[bool, typer.Option("--prefect", help="Run it as the Prefect flow serve-api.")] = False,
) -> None:
    """Serve the champion over an OpenAI-compatible HTTP API, tracing every answer in MLflow (flows/api.py)."""
    from components.config import Settings
    from flows.api import ApiConfigError, api_key_for, run_api

    params = _load(params_file)
    try:
        api_key_for(host or params.api.host)  # refuse a non-loopback bind without a key before loading anything
        if prefect:
            from flows.api_deployment import serve_api

            serve_api(params_file=str(params.source), host=host, port=port)
        else:
            run_api(params, Settings.from_env(), host, port)
    except ApiConfigError as exc:
        err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from None


@app.command()
def evaluate(
    params_file: ParamsOpt = Path("params.yaml"),
    as_json: JsonOpt = False,
    reason: Annotated[str, typer.Option(help="Why this run happened; recorded in MLflow.")] = "manual",
) -> None:
    """Evaluate the champion on the gate set; route each failure (stale, missing, retrieval, behaviour) and decide
    the actions: reindex, write_documents, tune_retriever, finetune (the Prefect flow `evaluate`)."""
    from flows.behaviour import evaluate as evaluate_flow

    params = _load(params_file)
    summary = evaluate_flow(params_file=str(params.source), reason=reason)
    _emit(summary, as_json, tables.evaluation_table)


@app.command("finetune")
def finetune_cmd(
    params_file: ParamsOpt = Path("params.yaml"),
    as_json: JsonOpt = False,
    if_needed: Annotated[
        bool, typer.Option("--if-needed", help="Only when the last evaluation decided 'finetune'; else record why not.")
    ] = False,
    run_gate: Annotated[
        bool, typer.Option("--gate/--no-gate", help="Gate (and maybe promote) the candidate, or leave it to `gate`.")
    ] = True,
    reason: Annotated[str, typer.Option(help="Why this run happened; recorded in MLflow.")] = "manual",
) -> None:
    """Train a LoRA candidate, register it, gate it against the champion, promote it only if it wins (the Prefect
    flow `finetune`, which writes data/metrics/finetune.json)."""
    from components.behaviour.training import TruncatedTraining
    from flows.behaviour import finetune

    params = _load(params_file)
    try:
        result = finetune(params_file=str(params.source), reason=reason, run_gate=run_gate, if_needed=if_needed)
    except TruncatedTraining as exc:
        err.print(f"[red]error:[/] truncated: {exc}")
        raise typer.Exit(3) from None
    _emit(result, as_json, tables.dict_table)


@app.command("gate")
def gate_cmd(
    version: Annotated[
        str | None, typer.Argument(help="The registered version to gate (default: the last fine-tune's).")
    ] = None,
    params_file: ParamsOpt = Path("params.yaml"),
    as_json: JsonOpt = False,
    if_needed: Annotated[
        bool, typer.Option("--if-needed", help="Only when the last fine-tune left an ungated candidate.")
    ] = False,
    calibrate: Annotated[
        bool,
        typer.Option(
            "--calibrate",
            help="First measure the seed noise: train a twin with finetune.seed + 1 (or reuse the stored measurement "
            "of the same recipe, data/metrics/calibration.json); a gain must exceed it.",
        ),
    ] = False,
) -> None:
    """Gate a registered candidate against the champion, case by case; promote it only if it wins (the Prefect
    flow `gate`, which writes data/metrics/gate.json)."""
    from components.behaviour.dvc_metrics import last_candidate

    params = _load(params_file)
    if version is None and not if_needed:
        candidate, why = last_candidate(params)
        if candidate is None:
            err.print(f"[red]error:[/] no candidate to gate: {why}; name a VERSION")
            raise typer.Exit(2)
    from flows.behaviour import gate

    try:
        result = gate(version=version, params_file=str(params.source), if_needed=if_needed, calibrate=calibrate)
    except RuntimeError as exc:  # RegistryError, GateError, IndexMovedError among them
        err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from None
    _emit(result, as_json, tables.dict_table)


@app.command()
def promote(
    version: Annotated[str, typer.Argument(help="The registered model version to make champion.")],
    params_file: ParamsOpt = Path("params.yaml"),
    as_json: JsonOpt = False,
) -> None:
    """Move the `champion` alias to VERSION by hand (the old champion becomes `previous`)."""
    from components.config import Settings
    from components.tracking import registry

    params = _load(params_file)
    _emit(registry.promote(params, Settings.from_env(), version), as_json, tables.dict_table)


@app.command()
def rollback(params_file: ParamsOpt = Path("params.yaml"), as_json: JsonOpt = False) -> None:
    """Restore the `previous` model as `champion`."""
    from components.config import Settings
    from components.tracking import registry

    params = _load(params_file)
    try:
        result = registry.rollback(params, Settings.from_env())
    except registry.RegistryError as exc:
        err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from None
    _emit(result, as_json, tables.dict_table)


@app.command("tune-retriever")
def tune_retriever_cmd(
    params_file: ParamsOpt = Path("params.yaml"),
    as_json: JsonOpt = False,
    if_needed: Annotated[
        bool,
        typer.Option("--if-needed", help="Only when the last evaluation's actions hold tune_retriever, else say why."),
    ] = False,
    rollback: Annotated[
        bool,
        typer.Option("--rollback", help="Serve the previous retriever again (its kept collection, not re-embedded)."),
    ] = False,
    reason: Annotated[str, typer.Option(help="Why this run happened; recorded in MLflow.")] = "manual",
) -> None:
    """Fine-tune the embedder on the training questions, gate it against the champion retriever on the gate set's
    questions (and paths.retrieval_queries), publish its collection only if it wins (the Prefect flow
    `tune-retriever`, which writes data/metrics/retriever.json); or roll back to the previous retriever."""
    from components.behaviour.retriever_tuning import TuningError

    params = _load(params_file)
    try:
        if rollback:
            from components.config import Settings
            from flows.retriever import rollback_retriever

            result = rollback_retriever(params, Settings.from_env())
        else:
            from flows.retriever import tune_retriever

            result = tune_retriever(params_file=str(params.source), reason=reason, if_needed=if_needed)
    except TuningError as exc:
        err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from None
    except RuntimeError as exc:  # RegistryError, EmbedderError, IndexNotReadyError among them
        err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from None
    _emit(result, as_json, tables.dict_table)


@app.command()
def run(params_file: ParamsOpt = Path("params.yaml"), as_json: JsonOpt = False) -> None:
    """The whole loop (the Prefect flow `pipeline`): reindex, evaluate, fine-tune only on a regression."""
    from flows.behaviour import pipeline

    params = _load(params_file)
    _emit(pipeline(params_file=str(params.source)), as_json, tables.dict_table)


@app.command()
def serve(params_file: ParamsOpt = Path("params.yaml")) -> None:
    """Serve every deployment (schedules, event triggers, concurrency limits) from this process, against the
    Prefect API in PREFECT_API_URL (or the project's Prefect server). Stops cleanly on Ctrl-C or SIGTERM."""
    from flows.service import serve as serve_all

    serve_all(_load(params_file))


@app.command()
def watch(params_file: ParamsOpt = Path("params.yaml")) -> None:
    """Watch the documents folder; emit one debounced `ragloop.documents.changed` event per burst of changes
    (the reindex deployment's trigger) to the Prefect API `serve` uses. Runs until Ctrl-C or SIGTERM."""
    import signal
    import threading

    from flows.service import watch as watch_docs

    params = _load(params_file)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    err.print(f"watching {params.paths.docs} (debounce {params.service.watch_debounce_ms} ms)")
    try:
        watch_docs(params, stop=stop)
    except FileNotFoundError as exc:
        err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from None


@app.command()
def deployments(
    params_file: ParamsOpt = Path("params.yaml"),
    write: Annotated[
        Path | None, typer.Option("--write", help="Write prefect.yaml here instead of printing it.")
    ] = None,
) -> None:
    """Print (or write) prefect.yaml for `prefect deploy --all`: the deployments `serve` serves, on a work pool."""
    from flows.deployments import render_prefect_yaml

    text = render_prefect_yaml(_load(params_file), params_file.name)
    if write is None:
        sys.stdout.write(text)
    else:
        write.write_text(text)
        err.print(f"wrote {write}")


@app.command()
def status(params_file: ParamsOpt = Path("params.yaml"), as_json: JsonOpt = False) -> None:
    """Where things stand: the index and its freshness, champion and previous with their gate-set rates, the
    last evaluation's decision, and whether a re-index, an evaluation, a fine-tune or a gate is pending."""
    from components.behaviour.history import status as read_status
    from components.config import Settings

    params = _load(params_file)
    _emit(read_status(params, Settings.from_env()), as_json, tables.status_view)


@app.command()
def advise(
    params_file: ParamsOpt = Path("params.yaml"),
    as_json: JsonOpt = False,
    days: Annotated[int, typer.Option(min=1, help="How far back the recorded history is read.")] = 30,
) -> None:
    """RAG or fine-tuning, what goes where? Answered from this system's recorded history: how often the
    knowledge changed, the mix of knowledge and behaviour failures, the labelled examples, and what each
    fine-tune bought at the gate and what it cost."""
    from components.behaviour.advice import advise as decide
    from components.behaviour.history import evidence
    from components.config import Settings

    params = _load(params_file)
    _emit(decide(evidence(params, Settings.from_env(), days)), as_json, tables.advice_view)


@app.command()
def triage(
    params_file: ParamsOpt = Path("params.yaml"),
    as_json: JsonOpt = False,
    since: Annotated[
        str | None,
        typer.Option(
            help="Start here instead of where the last triage stopped: an ISO time (UTC unless it says) "
            "or a duration back from now (90m, 2h, 7d)."
        ),
    ] = None,
    reason: Annotated[str, typer.Option(help="Why this run happened; recorded in MLflow.")] = "manual",
) -> None:
    """Route each failing live answer since the last triage to its fix (the Prefect flow `triage`): stale
    (re-index, then check the question retrieves it), missing (a report of the topics to write up), retrieval (the
    answering document ranked below the context: tune the retriever), behaviour (candidate training cases for
    `ragloop cases accept`)."""
    from components.tracking.triage_runs import parse_since

    params = _load(params_file)
    if since is not None:
        try:
            parse_since(since, 0)
        except ValueError as exc:
            err.print(f"[red]error:[/] {exc}")
            raise typer.Exit(2) from None
    from flows.triage import triage as triage_flow

    _emit(triage_flow(params_file=str(params.source), since=since, reason=reason), as_json, tables.triage_view)


cases_app = typer.Typer(
    name="cases",
    help="Candidate training cases that triage found in live traffic (data/behaviour/candidates.jsonl): list them, "
    "accept them into train.jsonl. They never enter the gate set.",
    no_args_is_help=True,
)
app.add_typer(cases_app)


@cases_app.command("list")
def cases_list(params_file: ParamsOpt = Path("params.yaml"), as_json: JsonOpt = False) -> None:
    """The pending candidates, with what each still needs before it can be accepted."""
    from components.behaviour.candidates import candidates_path, load_candidates
    from components.behaviour.suite import SuiteError

    params = _load(params_file)
    try:
        rows = load_candidates(candidates_path(params))
    except SuiteError as exc:
        err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from None
    _emit(rows, as_json, tables.cases_table)


@cases_app.command("accept")
def cases_accept(
    ids: Annotated[list[str], typer.Argument(help="Candidate ids (`ragloop cases list`).")],
    params_file: ParamsOpt = Path("params.yaml"),
    as_json: JsonOpt = False,
    answer: Annotated[
        str | None, typer.Option(help="The target answer, for a candidate the user gave no correction for.")
    ] = None,
    intent: Annotated[
        str | None, typer.Option(help="The intent label, when the candidate's is missing or wrong.")
    ] = None,
) -> None:
    """Move candidates into train.jsonl (validated, and refused when a question collides with the gate set)."""
    from dataclasses import asdict

    from components.behaviour.candidates import CandidateError, accept
    from components.behaviour.suite import SuiteError

    params = _load(params_file)
    try:
        done = accept(params, ids, answer=answer, intent=intent)
    except (CandidateError, SuiteError) as exc:
        err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from None
    _emit({"accepted": [asdict(a) for a in done], "train": str(params.paths.behaviour / "train.jsonl")}, as_json,
          tables.dict_table)  # fmt: skip


server_app = typer.Typer(
    name="server",
    help="The project's Prefect server (PREFECT_HOME, `.prefect` beside params.yaml by default): the commands that "
    "run flows start it when it is not running and reuse it, and its UI shows their runs.",
    no_args_is_help=True,
)
app.add_typer(server_app)


@server_app.command("start")
def server_start(
    params_file: ParamsOpt = Path("params.yaml"),
    as_json: JsonOpt = False,
    port: Annotated[
        int | None, typer.Option(help="Port (default: RAGLOOP_PREFECT_PORT, else 4200 when free, else a free one).")
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for it to answer /api/health.")] = 180.0,
) -> None:
    """Start the project's Prefect server, detached (it outlives this command), or reuse the running one."""
    from flows import prefect_server as ps

    home = ps.project_home(params_file)
    try:
        started = ps.start(home, port, timeout)[1]
    except ps.ServerError as exc:
        err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from None
    configured = ps.configured_api_url(home)
    if configured:
        err.print(f"note: a Prefect API is configured ({configured}): flow commands use that API")
    _emit({"started": started, **ps.status(home)}, as_json, tables.server_table)


@server_app.command("stop")
def server_stop(params_file: ParamsOpt = Path("params.yaml"), as_json: JsonOpt = False) -> None:
    """Stop the project's Prefect server (SIGTERM, then wait until it has exited)."""
    from flows import prefect_server as ps

    home = ps.project_home(params_file)
    stopped = ps.stop(home)
    _emit({"stopped": stopped is not None, **ps.status(home), **({"pid": stopped.pid} if stopped else {})}, as_json,
          tables.server_table)  # fmt: skip


@server_app.command("status")
def server_status(params_file: ParamsOpt = Path("params.yaml"), as_json: JsonOpt = False) -> None:
    """Whether the project's Prefect server runs and answers, with its URL (the UI) and pid; exit 1 when it does
    not answer."""
    from flows import prefect_server as ps

    result = ps.status(ps.project_home(params_file))
    _emit(result, as_json, tables.server_table)
    if not result["healthy"]:
        raise typer.Exit(1)


def _emit(data: Any, as_json: bool, table: Callable[[Any], RenderableType]) -> None:
    if as_json:
        sys.stdout.write(json.dumps(data) + "\n")
    else:
        Console().print(table(data))


# The commands that run Prefect flows, and when they do. Each connects to a Prefect API before its flow module imports
# prefect: PREFECT_API_URL (or the active Prefect profile's) when set, else the project's server, started by the
# first such command and reused by the next (flows/prefect_server.py; RAGLOOP_PREFECT_SERVER=ephemeral: Prefect's
# temporary server per process instead).
_RUNS_A_FLOW: dict[str, Callable[[dict[str, Any]], bool]] = {
    "index": lambda kw: not kw["direct"] and kw["rollback"] is None,
    "triage": lambda kw: True,
    "tune-retriever": lambda kw: not kw["rollback"],
    **dict.fromkeys(("evaluate", "finetune", "gate", "run", "serve", "watch"), lambda kw: True),
    "api": lambda kw: kw["prefect"],
}


def _on_prefect_api(command: Callable[..., Any], runs_a_flow: Callable[[dict[str, Any]], bool]) -> Callable[..., Any]:
    @functools.wraps(command)
    def run(**kwargs: Any) -> Any:
        if not runs_a_flow(kwargs):
            return command(**kwargs)
        from flows.prefect_server import ServerError, prefect_api

        _load(kwargs["params_file"])  # a bad params file exits 2 before any server starts
        with ExitStack() as stack:
            try:
                stack.enter_context(prefect_api(kwargs["params_file"], notice=err.print))
            except ServerError as exc:
                err.print(f"[red]error:[/] {exc}")
                raise typer.Exit(1) from None
            return command(**kwargs)

    return run


for _info in app.registered_commands:
    _name = _info.name or (_info.callback.__name__ if _info.callback else "")
    if _info.callback is not None and _name in _RUNS_A_FLOW:
        _info.callback = _on_prefect_api(_info.callback, _RUNS_A_FLOW[_name])


def optional_rollback_value(args: list[str]) -> list[str]:
    """`index --rollback` with no VERSION means the previous version (click options cannot take an optional value);
    `tune-retriever --rollback` is a plain flag."""
    out = list(args)
    if not out or out[0] != "index":
        return out
    for i, arg in enumerate(out):
        if arg == "--rollback" and (i + 1 == len(out) or out[i + 1].startswith("-")):
            out.insert(i + 1, "previous")
            break
    return out


def main() -> None:
    try:
        app(args=optional_rollback_value(sys.argv[1:]), prog_name="ragloop")
    except Exception as exc:  # a server that stays unreachable after the tasks' retries: say which, plainly
        from components.config import ParamsError, Settings
        from flows.failures import unreachable_server

        try:
            where = unreachable_server(exc, Settings.from_env())
        except ParamsError:
            where = None
        if where is None:
            raise
        err.print(f"[red]error:[/] {where} is unreachable (after retries): {type(exc).__name__}: {exc}")
        err.print("The published index and the registry aliases are as they were before this step.")
        sys.exit(1)


if __name__ == "__main__":
    main()
