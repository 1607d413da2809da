"""`ragloop` commands of production triage and of where things stand: triage, `cases list|accept` (the candidate
training cases triage found), status and advise; with their tables."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from components.files import TRAIN_CASES
from flows.cli.common import JsonOpt, ParamsOpt, ReasonOpt, dict_table, emit, exits, load, on_prefect_api


@on_prefect_api()
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
    reason: ReasonOpt = "manual",
) -> None:
    """Route each failing live answer since the last triage to its fix (the Prefect flow `triage`): stale
    (re-index, then check the question retrieves it), missing (a report of the topics to write up), retrieval (the
    answering document ranked below the context: tune the retriever), behaviour (candidate training cases for
    `ragloop cases accept`)."""
    from components.tracking.triage_runs import parse_since

    params = load(params_file)
    if since is not None:
        with exits({ValueError: 2}):
            parse_since(since, 0)
    from flows.triage import triage as triage_flow

    emit(triage_flow(params_file=str(params.source), since=since, reason=reason), as_json, triage_view)


cases = typer.Typer(
    name="cases",
    help="Candidate training cases that triage found in live traffic (data/behaviour/candidates.jsonl): list them, "
    "accept them into train.jsonl. They never enter the gate set.",
    no_args_is_help=True,
)


@cases.command("list")
def cases_list(params_file: ParamsOpt = Path("params.yaml"), as_json: JsonOpt = False) -> None:
    """The pending candidates, with what each still needs before it can be accepted."""
    from components.behaviour.candidates import candidates_path, load_candidates
    from components.behaviour.suite import SuiteError

    params = load(params_file)
    with exits({SuiteError: 2}):
        rows = load_candidates(candidates_path(params))
    emit(rows, as_json, cases_table)


@cases.command("accept")
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

    params = load(params_file)
    with exits({(CandidateError, SuiteError): 1}):
        done = accept(params, ids, answer=answer, intent=intent)
    emit({"accepted": [asdict(a) for a in done], "train": str(params.paths.behaviour / TRAIN_CASES)}, as_json,
         dict_table)  # fmt: skip


def status(params_file: ParamsOpt = Path("params.yaml"), as_json: JsonOpt = False) -> None:
    """Where things stand: the index and its freshness, champion and previous with their gate-set rates, the
    last evaluation's decision, and whether a re-index, an evaluation, a fine-tune or a gate is pending."""
    from components.behaviour.history import status as read_status
    from components.config import Settings

    params = load(params_file)
    emit(read_status(params, Settings.from_env()), as_json, status_view)


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

    params = load(params_file)
    emit(decide(evidence(params, Settings.from_env(), days)), as_json, advice_view)


# --- the tables ------------------------------------------------------------------------------------------------


def triage_view(r: dict) -> Table:
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
    ret = r["retrieval_regression"]
    table.add_row("retrieval misses", "event emitted" if ret["fired"] else "none", ret["reason"])
    return table


def cases_table(rows: list[dict]) -> Table:
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


def status_view(s: dict) -> Table:
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
        routes = ", ".join(f"{k} {v}" for k, v in ev["routes"].items())
        t.add_row("last evaluation", f"{ev['model_version']} on index v{ev['index_version']} at {ev['at']}: "
                  f"decision [bold]{ev['decision']}[/]{regressed}\nroutes: {routes}")  # fmt: skip
    p = s["pending"]
    flag = {True: "[yellow]pending[/]", False: "[green]no[/]"}
    t.add_row("re-index", f"{flag[p['reindex']]}: {p['reindex_reason']}")
    t.add_row("evaluation", f"{flag[p['evaluation']]}: {p['evaluation_reason']}")
    t.add_row("write documents", f"{flag[p['write_documents']]}: {p['write_documents_reason']}")
    t.add_row("tune retriever", f"{flag[p['tune_retriever']]}: {p['tune_retriever_reason']}")
    t.add_row("fine-tune", f"{flag[p['finetune']]}: {p['finetune_reason']}")
    t.add_row("gate", f"{flag[bool(p['gate'])]}" + (f": versions {', '.join(p['gate'])}" if p["gate"] else ""))
    if "production" in s:
        live = s["production"]
        t.add_row("live (24 h)", live_line(live))
        last = live.get("last_triage")
        done = f"last {last['at']}: routed {last['routed']}" if last else "never run"
        t.add_row("triage", f"{flag[bool(live.get('triage_pending'))]}: {live.get('triage_reason', '-')} ({done})")
    return t


def live_line(live: dict) -> str:
    if not live.get("traces"):
        return live.get("note", "no live traffic")
    r, fb = live["routes"], live["feedback"]
    slices = ", ".join(f"{k} {v['fail_rate']:.2f}" for k, v in live["slices"].items())
    routed = ", ".join(f"{route} {n}" for route, n in r.items())
    head = (f"{live['traces']} answers, {live['failing']} failing ({routed}, not triaged "
            f"{live['untriaged_failing']}); feedback on {fb['rate']:.0%} ({fb['negative']} negative)")  # fmt: skip
    return head + (f"\ncontract failure rates: {slices}" if slices else "")


def advice_view(a: dict) -> Table:
    t = Table("", "", title=f"ragloop advise: {a['headline']}", show_lines=True, title_justify="left")
    parts = (("knowledge", "knowledge → the retrieval pipeline"),
             ("behaviour", f"behaviour → {a['behaviour']['verdict']}"))  # fmt: skip
    for part, label in parts:
        d = a[part]
        t.add_row(f"[bold]{label}[/]", "\n".join(d["advice"]))
        t.add_row("  evidence", "\n".join(f"- {e}" for e in d["evidence"]) or "-")
        t.add_row("  would change it", "\n".join(f"- {w}" for w in d["would_change"]))
    return t
