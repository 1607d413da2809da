"""`ragloop` commands that run the service: serve (every deployment), watch (the documents folder), deployments
(prefect.yaml), and `server start|stop|status` (the project's Prefect server); with the server's table."""

from __future__ import annotations

import sys
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from flows.cli.common import JsonOpt, ParamsOpt, emit, err, exits, load, on_prefect_api


@on_prefect_api()
def serve(params_file: ParamsOpt = Path("params.yaml")) -> None:
    """Serve every deployment (schedules, event triggers, concurrency limits) from this process, against the
    Prefect API in PREFECT_API_URL (or the project's Prefect server). Stops cleanly on Ctrl-C or SIGTERM."""
    from flows.service import serve as serve_all

    serve_all(load(params_file))


@on_prefect_api()
def watch(params_file: ParamsOpt = Path("params.yaml")) -> None:
    """Watch the documents folder; emit one debounced `ragloop.documents.changed` event per burst of changes
    (the reindex deployment's trigger) to the Prefect API `serve` uses. Runs until Ctrl-C or SIGTERM."""
    import signal
    import threading

    from flows.service import watch as watch_docs

    params = load(params_file)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    err.print(f"watching {params.paths.docs} (debounce {params.service.watch_debounce_ms} ms)")
    with exits({FileNotFoundError: 2}):
        watch_docs(params, stop=stop)


def deployments(
    params_file: ParamsOpt = Path("params.yaml"),
    write: Annotated[
        Path | None, typer.Option("--write", help="Write prefect.yaml here instead of printing it.")
    ] = None,
) -> None:
    """Print (or write) prefect.yaml for `prefect deploy --all`: the deployments `serve` serves, on a work pool."""
    from flows.deployments import render_prefect_yaml

    text = render_prefect_yaml(load(params_file), params_file.name)
    if write is None:
        sys.stdout.write(text)
    else:
        write.write_text(text)
        err.print(f"wrote {write}")


server = typer.Typer(
    name="server",
    help="The project's Prefect server (PREFECT_HOME, `.prefect` beside params.yaml by default): the commands that "
    "run flows start it when it is not running and reuse it, and its UI shows their runs.",
    no_args_is_help=True,
)


@server.command("start")
def server_start(
    params_file: ParamsOpt = Path("params.yaml"),
    as_json: JsonOpt = False,
    port: Annotated[
        int | None, typer.Option(help="Port (default: RAGLOOP_PREFECT_PORT, else 4200 when free, else a free one).")
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for it to answer /api/health.")] = 180.0,
    idle_timeout: Annotated[
        float | None,
        typer.Option(
            "--idle-timeout",
            min=0,
            help="Stop it after this many idle seconds: no active flow run, no client, no command reusing it "
            "(default: RAGLOOP_PREFECT_IDLE_S, else 1800; 0: never). It always stops when its folder is gone.",
        ),
    ] = None,
) -> None:
    """Start the project's Prefect server, detached (it outlives this command, not its idle period or its folder),
    or reuse the running one."""
    from flows import prefect_server as ps

    home = ps.project_home(params_file)
    with exits({ps.ServerError: 1}):
        started = ps.start(home, port, timeout, idle_timeout)[1]
    configured = ps.configured_api_url(home)
    if configured:
        err.print(f"note: a Prefect API is configured ({configured}): flow commands use that API")
    emit({"started": started, **ps.status(home)}, as_json, server_table)


AllOpt = Annotated[
    bool, typer.Option("--all", help="Every Prefect server ragloop started on this machine, whatever its folder.")
]


@server.command("stop")
def server_stop(params_file: ParamsOpt = Path("params.yaml"), as_json: JsonOpt = False, every: AllOpt = False) -> None:
    """Stop the project's Prefect server (SIGTERM, then wait until it has exited); --all: every one ragloop started."""
    from flows import prefect_server as ps

    if every:
        stopped_all = [asdict(s) for s in ps.stop_all()]
        emit({"stopped": stopped_all}, as_json, lambda d: servers_table(d["stopped"], "stopped"))
        return
    home = ps.project_home(params_file)
    stopped = ps.stop(home)
    emit({"stopped": stopped is not None, **ps.status(home), **({"pid": stopped.pid} if stopped else {})}, as_json,
         server_table)  # fmt: skip


@server.command("status")
def server_status(
    params_file: ParamsOpt = Path("params.yaml"), as_json: JsonOpt = False, every: AllOpt = False
) -> None:
    """Whether the project's Prefect server runs and answers, with its URL (the UI) and pid; exit 1 when it does
    not answer. --all: every one ragloop started on this machine (exit 0, even when there is none)."""
    from flows import prefect_server as ps

    if every:
        listed = ps.status_all()
        emit({"servers": listed}, as_json, lambda d: servers_table(d["servers"], "running"))
        return
    result = ps.status(ps.project_home(params_file))
    emit(result, as_json, server_table)
    if not result["healthy"]:
        raise typer.Exit(1)


def server_table(s: dict) -> Table:
    state = "healthy" if s["healthy"] else "running, not answering" if s["running"] else "not running"
    t = Table("", "", title=f"Prefect server: {state}" + (f" (UI {s['url']})" if s.get("url") else ""))
    for key in ("started", "stopped", "url", "api_url", "pid", "port", "home", "log", "started_at"):
        if key in s:
            t.add_row(key, str(s[key]))
    return t


def servers_table(servers: list[dict], what: str) -> Table:
    title = f"Prefect servers ragloop started: {len(servers)} {what}"
    t = Table("pid", "url", "home", "idle stop (s)", "started", title=title)
    for s in servers:
        home = s["home"] + ("" if s.get("home_exists", True) else " (gone)")
        t.add_row(str(s["pid"]), f"http://127.0.0.1:{s['port']}", home, f"{s['idle_s']:g}", s["started_at"])
    return t
