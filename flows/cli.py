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
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

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


def _load(params_file: Path):  # type: ignore[no-untyped-def]
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
    _emit(report, as_json, _index_table)


def _direct(params):  # type: ignore[no-untyped-def]
    from components.knowledge.indexer import journal, run_index
    from components.knowledge.report import contract
    from components.knowledge.session import open_index

    with open_index(params) as s:
        report = run_index(s)
    journal(params.paths.index, report, "direct", None)
    return contract(report)


def _rollback(params, version: str) -> dict:  # type: ignore[no-untyped-def]
    from components.knowledge.maintenance import rollback
    from components.knowledge.report import contract
    from components.knowledge.session import open_index

    if version != "previous" and not version.isdigit():
        raise ValueError(f"--rollback takes a version number, got {version!r}")
    with open_index(params) as s:
        return contract(rollback(s, None if version == "previous" else int(version)))


@app.command()
def query(
    text: Annotated[str, typer.Argument(help="The question or text to search for.")],
    k: Annotated[int, typer.Option("-k", min=1, max=100, help="How many chunks to return.")] = 5,
    params_file: ParamsOpt = Path("params.yaml"),
    as_json: JsonOpt = False,
) -> None:
    """Search the published index version: the k best chunks, best first."""
    from components.knowledge.retrieval import IndexNotReadyError, query_index

    params = _load(params_file)
    try:
        hits = query_index(params, text, k)
    except IndexNotReadyError as exc:
        err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from None
    _emit(hits, as_json, _hits_table)


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
    _emit(result, as_json, _verify_table)
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
    _emit(rows, as_json, _versions_table)


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
    _emit(info, as_json, _dict_table)
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
    _emit(answer_question(params, settings, question, adapter, version), as_json, _dict_table)


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
    """Evaluate the champion on the gate set; decide none, reindex or finetune (the Prefect flow `evaluate`)."""
    from flows.behaviour import evaluate as evaluate_flow

    params = _load(params_file)
    summary = evaluate_flow(params_file=str(params.source), reason=reason)
    _emit(summary, as_json, _evaluation_table)


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
    """Train a LoRA candidate, register it, gate it against the champion, promote it only if it wins."""
    params = _load(params_file)
    out = params.paths.metrics / "finetune.json"
    if if_needed:
        last = params.paths.metrics / "evaluation.json"
        decision = json.loads(last.read_text())["decision"] if last.exists() else "finetune"
        if decision != "finetune":
            why = f"the last evaluation decided {decision!r}, not 'finetune'"
            _clear_candidate(params.paths.models / "candidate", why)
            _record(out, {"skipped": True, "why": why}, as_json)
            return
    from components.behaviour.training import TruncatedTraining
    from flows.behaviour import finetune

    try:
        result = finetune(params_file=str(params.source), reason=reason, run_gate=run_gate)
    except TruncatedTraining as exc:
        _write(out, {"skipped": False, "truncated": True, "why": str(exc)})
        err.print(f"[red]error:[/] truncated: {exc}")
        raise typer.Exit(3) from None
    keep = ("version", "promoted", "reasons", "training_pairs", "failing_train_cases", "train_steps", "train_tokens",
            "adapter_sha256", "train_seconds", "train_tokens_per_s")  # fmt: skip
    _write(out, {"skipped": False, **{k: result[k] for k in keep if k in result}})
    _emit(result, as_json, _dict_table)


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
) -> None:
    """Gate a registered candidate against the champion, case by case; promote it only if it wins."""
    from components.config import Settings
    from components.tracking import registry

    params = _load(params_file)
    out = params.paths.metrics / "gate.json"
    if version is None:
        last = params.paths.metrics / "finetune.json"
        tuned = json.loads(last.read_text()) if last.exists() else {"skipped": True, "why": "no fine-tune has run"}
        if tuned.get("skipped"):
            if not if_needed:
                err.print(f"[red]error:[/] no candidate to gate: {tuned['why']}; name a VERSION")
                raise typer.Exit(2)
            _record(out, {"skipped": True, "why": f"no candidate: {tuned['why']}"}, as_json)
            return
        version = str(tuned["version"])
    try:
        verdict = registry.gate_verdict(params, Settings.from_env(), version)
        if if_needed and verdict is not None:
            _record(out, {"skipped": True, "why": f"version {version} was already gated: {verdict}"}, as_json)
            return
        from flows.behaviour import gate

        result = gate(version=version, params_file=str(params.source))
    except RuntimeError as exc:  # RegistryError among them
        err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from None
    _write(out, {"skipped": False, **{k: result[k] for k in ("version", "promoted", "reasons", "champion_before")}})
    _emit(result, as_json, _dict_table)


def _clear_candidate(folder: Path, why: str) -> None:
    """A skipped fine-tune leaves no adapter behind (the DVC stage's output says why instead): a stale adapter
    from an earlier run must never pass for this run's."""
    import shutil

    shutil.rmtree(folder, ignore_errors=True)
    _write(folder / "skipped.json", {"skipped": True, "why": why})


def _write(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


def _record(path: Path, data: dict, as_json: bool) -> None:
    _write(path, data)
    _emit(data, as_json, _dict_table)


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
    _emit(registry.promote(params, Settings.from_env(), version), as_json, _dict_table)


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
    _emit(result, as_json, _dict_table)


@app.command()
def run(params_file: ParamsOpt = Path("params.yaml"), as_json: JsonOpt = False) -> None:
    """The whole loop (the Prefect flow `pipeline`): reindex, evaluate, fine-tune only on a regression."""
    from flows.behaviour import pipeline

    params = _load(params_file)
    _emit(pipeline(params_file=str(params.source)), as_json, _dict_table)


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
    from components.config import Settings
    from components.tracking.history import status as read_status

    params = _load(params_file)
    _emit(read_status(params, Settings.from_env()), as_json, _status_view)


@app.command()
def advise(
    params_file: ParamsOpt = Path("params.yaml"),
    as_json: JsonOpt = False,
    days: Annotated[int, typer.Option(min=1, help="How far back the recorded history is read.")] = 30,
) -> None:
    """RAG or fine-tuning, what goes where? Answered from this system's recorded history: how often the
    knowledge changed, the mix of knowledge and behaviour failures, the labelled examples, and what each
    fine-tune bought at the gate and what it cost."""
    from components.config import Settings
    from components.tracking.advice import advise as decide
    from components.tracking.history import evidence

    params = _load(params_file)
    _emit(decide(evidence(params, Settings.from_env(), days)), as_json, _advice_view)


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
    """Route each failing live answer since the last triage to its fix (the Prefect flow `triage`): knowledge
    (re-index, then check the question retrieves it), gap (a report of the topics to write up), behaviour
    (candidate training cases for `ragloop cases accept`)."""
    from components.tracking.triage_runs import parse_since

    params = _load(params_file)
    if since is not None:
        try:
            parse_since(since, 0)
        except ValueError as exc:
            err.print(f"[red]error:[/] {exc}")
            raise typer.Exit(2) from None
    from flows.triage import triage as triage_flow

    _emit(triage_flow(params_file=str(params.source), since=since, reason=reason), as_json, _triage_view)


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
    _emit(rows, as_json, _cases_table)


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
          _dict_table)  # fmt: skip


def _triage_view(r: dict) -> Table:
    t = r["traffic"]
    rate = t["feedback"]["rate"]
    title = (f"ragloop triage: {t['traces']} live answers, {t['failing']} failing, feedback on "
             f"{'-' if rate is None else f'{rate:.0%}'}")  # fmt: skip
    table = Table("route", "answers", "details", title=title, show_lines=True, title_justify="left")
    for route, items in r["routed"].items():
        table.add_row(route, str(len(items)), "\n".join(f"{x['question']}: {x['reason']}" for x in items) or "-")
    table.add_row("re-index", "", r["reindex"]["why"])
    table.add_row("gaps", str(len(r["gaps"])), "\n".join(f"{g['topic']} ({g['count']}): {'; '.join(g['questions'])}"
                                                          for g in r["gaps"]) or "-")  # fmt: skip
    table.add_row("candidates", str(len(r["candidates"]["added"])), ", ".join(r["candidates"]["added"]) or "-")
    reg = r["regression"]
    tests = "\n".join(s["reason"] for s in reg["slices"]) or "-"
    table.add_row("regression", "event emitted" if reg["fired"] else "none", tests)
    return table


def _cases_table(rows: list[dict]) -> Table:
    t = Table("id", "question", "intent", "answer", "needs", title=f"{len(rows)} candidate case(s)")
    for c in rows:
        lacks = (("--intent", not c.get("intent")),
                 ("--answer", not c.get("answer") and c.get("intent") != "out_of_scope"))  # fmt: skip
        needs = [n for n, missing in lacks if missing]
        if c.get("gate_collision"):
            needs = [f"cannot be accepted: same question as gate case {c['gate_collision']}"]
        label = f"{c.get('intent') or '-'}" + (" (model's guess)" if c.get("intent_source") == "model" else "")
        t.add_row(c["id"], c["question"], label, c.get("answer") or "-", ", ".join(needs) or "ready")
    return t


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
    import os

    from flows import prefect_server as ps

    try:
        started = ps.start(ps.project_home(params_file), port, timeout)[1]
    except ps.ServerError as exc:
        err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from None
    if os.environ.get("PREFECT_API_URL"):
        err.print(f"note: PREFECT_API_URL is set ({os.environ['PREFECT_API_URL']}): flow commands use that API")
    _emit({"started": started, **ps.status(ps.project_home(params_file))}, as_json, _server_table)


@server_app.command("stop")
def server_stop(params_file: ParamsOpt = Path("params.yaml"), as_json: JsonOpt = False) -> None:
    """Stop the project's Prefect server (SIGTERM, then wait until it has exited)."""
    from flows import prefect_server as ps

    home = ps.project_home(params_file)
    stopped = ps.stop(home)
    _emit({"stopped": stopped is not None, **ps.status(home), **({"pid": stopped.pid} if stopped else {})}, as_json,
          _server_table)  # fmt: skip


@server_app.command("status")
def server_status(params_file: ParamsOpt = Path("params.yaml"), as_json: JsonOpt = False) -> None:
    """Whether the project's Prefect server runs and answers, with its URL (the UI) and pid; exit 1 when it does
    not answer."""
    from flows import prefect_server as ps

    result = ps.status(ps.project_home(params_file))
    _emit(result, as_json, _server_table)
    if not result["healthy"]:
        raise typer.Exit(1)


def _server_table(s: dict) -> Table:
    state = "healthy" if s["healthy"] else "running, not answering" if s["running"] else "not running"
    t = Table("", "", title=f"Prefect server: {state}" + (f" (UI {s['url']})" if s.get("url") else ""))
    for key in ("started", "stopped", "url", "api_url", "pid", "port", "home", "log", "started_at"):
        if key in s:
            t.add_row(key, str(s[key]))
    return t


def _status_view(s: dict) -> Table:
    t = Table("", "state", title="ragloop status", show_lines=True)
    ix = s["index"]
    if ix["version"] is None:
        t.add_row("index", f"[yellow]nothing published[/] ({ix['reason']})")
    else:
        age = f"{ix['age_s'] / 3600:.1f} h ago" if ix["age_s"] is not None else "?"
        t.add_row("index", f"version {ix['version']}: {ix['documents']} documents, {ix['chunks']} chunks, "
                  f"published {ix['published_at']} ({age})")  # fmt: skip
    for alias in ("champion", "previous"):
        m = s[alias]
        rates = ", ".join(f"{k} {v:.2f}" for k, v in (m or {}).get("gate_pass_rates", {}).items())
        t.add_row(alias, "-" if m is None else f"v{m['version']} (gate {m['gate']}, registered {m['registered_at']})"
                  + (f"\ngate set: {rates}" if rates else ""))  # fmt: skip
    ev = s["last_evaluation"]
    if ev is None:
        t.add_row("last evaluation", "-")
    else:
        regressed = f" (regressed: {', '.join(ev['regressed_slices'])})" if ev["regressed_slices"] else ""
        t.add_row("last evaluation", f"{ev['model_version']} on index v{ev['index_version']} at {ev['at']}: "
                  f"decision [bold]{ev['decision']}[/]{regressed}")  # fmt: skip
    p = s["pending"]
    flag = {True: "[yellow]pending[/]", False: "[green]no[/]"}
    t.add_row("re-index", f"{flag[p['reindex']]}: {p['reindex_reason']}")
    t.add_row("evaluation", f"{flag[p['evaluation']]}: {p['evaluation_reason']}")
    t.add_row("fine-tune", f"{flag[p['finetune']]}: {p['finetune_reason']}")
    t.add_row("gate", f"{flag[bool(p['gate'])]}" + (f": versions {', '.join(p['gate'])}" if p["gate"] else ""))
    if "production" in s:
        live = s["production"]
        t.add_row("live (24 h)", _live_line(live))
        last = live.get("last_triage")
        done = f"last {last['at']}: routed {last['routed']}" if last else "never run"
        t.add_row("triage", f"{flag[bool(live.get('triage_pending'))]}: {live.get('triage_reason', '-')} ({done})")
    return t


def _live_line(live: dict) -> str:
    if not live.get("traces"):
        return live.get("note", "no live traffic")
    r, fb = live["routes"], live["feedback"]
    slices = ", ".join(f"{k} {v['fail_rate']:.2f}" for k, v in live["slices"].items())
    head = (f"{live['traces']} answers, {live['failing']} failing (knowledge {r['knowledge']}, gap {r['gap']}, "
            f"behaviour {r['behaviour']}, not triaged {live['untriaged_failing']}); feedback on "
            f"{fb['rate']:.0%} ({fb['negative']} negative)")  # fmt: skip
    return head + (f"\ncontract failure rates: {slices}" if slices else "")


def _advice_view(a: dict) -> Table:
    t = Table("", "", title=f"ragloop advise: {a['headline']}", show_lines=True, title_justify="left")
    parts = (("knowledge", "knowledge → retrieval"), ("behaviour", f"behaviour → {a['behaviour']['verdict']}"))
    for part, label in parts:
        d = a[part]
        t.add_row(f"[bold]{label}[/]", "\n".join(d["advice"]))
        t.add_row("  evidence", "\n".join(f"- {e}" for e in d["evidence"]) or "-")
        t.add_row("  would change it", "\n".join(f"- {w}" for w in d["would_change"]))
    return t


def _emit(data, as_json: bool, table) -> None:  # type: ignore[no-untyped-def]
    if as_json:
        sys.stdout.write(json.dumps(data) + "\n")
    else:
        Console().print(table(data))


def _index_table(r: dict) -> Table:
    state = "published" if r.get("published", True) else "unchanged"
    t = Table(title=f"index version {r['index_version']} ({state})")
    for col in ("", "added", "modified", "deleted", "renamed", "unchanged", "failed"):
        t.add_column(col)
    t.add_row("documents", *(str(r["documents"][k]) for k in list(r["documents"])))
    t.add_row("chunks", *(f"{k} {v}" for k, v in r["chunks"].items()), "", "")
    for e in r["errors"]:
        t.add_row("[red]error[/]", f"{e['path']}: {e['error']}")
    return t


def _dict_table(d: dict) -> Table:
    t = Table("key", "value")
    for k, v in d.items():
        t.add_row(str(k), json.dumps(v) if isinstance(v, (list, dict)) else str(v))
    return t


def _evaluation_table(s: dict) -> Table:
    t = Table("slice", "pass rate", "95% interval", "n", title=f"{s['model_version']}: decision {s['decision']}")
    for name, v in s["slices"].items():
        t.add_row(name, f"{v['pass_rate']:.3f}", f"{v['ci_low']:.3f}-{v['ci_high']:.3f}", str(v["n"]))
    t.add_row("retrieval", f"hit@k {s['retrieval']['hit_at_k']:.3f}", f"mrr {s['retrieval']['mrr']:.3f}", "")
    return t


def _hits_table(hits: list[dict]) -> Table:
    t = Table("score", "doc", "text")
    for h in hits:
        t.add_row(f"{h['score']:.3f}", h["doc"], h["text"][:160].replace("\n", " "))
    return t


def _verify_table(r: dict) -> Table:
    t = Table(title=f"verify index version {r['index_version']}: {'ok' if r['ok'] else 'NOT OK'}")
    t.add_column("check")
    t.add_column("count")
    for key in ("missing", "orphaned", "duplicated", "foreign_embedder", "mismatched"):
        t.add_row(key, str(r[key]))
    t.add_row("documents changed since publish", str(len(r["pending_documents"])))
    return t


def _versions_table(rows: list[dict]) -> Table:
    t = Table("version", "published", "kind", "embedder", "collection")
    for r in rows:
        t.add_row(str(r["version"]), "*" if r["published"] else "", r["kind"], r["embedder"], r["collection"])
    return t


# The commands that run Prefect flows, and when they do. Each connects to a Prefect API before its flow module imports
# prefect: PREFECT_API_URL (or the active Prefect profile's) when set, else the project's server, started by the
# first such command and reused by the next (flows/prefect_server.py; RAGLOOP_PREFECT_SERVER=ephemeral: Prefect's
# temporary server per process instead).
_RUNS_A_FLOW: dict[str, Callable[[dict[str, Any]], bool]] = {
    "index": lambda kw: not kw["direct"] and kw["rollback"] is None,
    "triage": lambda kw: True,
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
    """`--rollback` with no VERSION means the previous version (click options cannot take an optional value)."""
    out = list(args)
    for i, arg in enumerate(out):
        if arg == "--rollback" and (i + 1 == len(out) or out[i + 1].startswith("-")):
            out.insert(i + 1, "previous")
            break
    return out


def main() -> None:
    try:
        app(args=optional_rollback_value(sys.argv[1:]), prog_name="ragloop")
    except Exception as exc:  # a server that stays unreachable after the tasks' retries: say which, plainly
        where = _unreachable_server(exc)
        if where is None:
            raise
        err.print(f"[red]error:[/] {where} is unreachable (after retries): {type(exc).__name__}: {exc}")
        err.print("The published index and the registry aliases are as they were before this step.")
        sys.exit(1)


_CONNECTION_FAILURES = ("Connection refused", "Max retries exceeded", "Failed to establish", "timed out",
                        "Could not connect")  # fmt: skip


def _unreachable_server(exc: BaseException) -> str | None:
    """'the MLflow tracking server at URI' / 'the Chroma server at HOST:PORT' when exc (or its cause) is a
    connection failure to one of them; None for anything else."""
    import os

    seen: BaseException | None = exc
    while seen is not None:
        module, text = type(seen).__module__, str(seen)
        if any(marker in text for marker in _CONNECTION_FAILURES):
            if module.startswith("chromadb") or "Chroma" in text:
                host, port = os.environ.get("RAGLOOP_CHROMA_HOST", "?"), os.environ.get("RAGLOOP_CHROMA_PORT", "8000")
                return f"the Chroma server at {host}:{port}"
            if module.startswith("mlflow") or "/api/2.0/mlflow" in text:
                return f"the MLflow tracking server at {os.environ.get('MLFLOW_TRACKING_URI', '?')}"
        seen = seen.__cause__ or seen.__context__
    return None


if __name__ == "__main__":
    main()
