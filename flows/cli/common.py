"""What every `ragloop` command shares: its common options, the one error path (an exception type a command names
ends it with `error: ...` on stderr and that type's exit code), the connection to a Prefect API for the commands
that run a flow, and the printing of a result (one JSON object with `--json`, else a table).

Cheap to import (typer and rich only): a command imports what it needs when it runs.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console, RenderableType
from rich.table import Table

if TYPE_CHECKING:
    from components.config import Params

err = Console(stderr=True, soft_wrap=True)

ParamsOpt = Annotated[
    Path, typer.Option("--params", "-p", help="params.yaml to use; relative paths in it resolve against its folder.")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object (a stable contract) instead of a table.")]
ReasonOpt = Annotated[str, typer.Option(help="Why this run happened; recorded in MLflow.")]

Command = TypeVar("Command", bound=Callable[..., Any])
ExitCodes = Mapping[type[BaseException] | tuple[type[BaseException], ...], int]


def fail(message: str, code: int) -> NoReturn:
    """End the command: `error: MESSAGE` on stderr, exit status `code` (2: bad input, 1: it could not be done)."""
    err.print(f"[red]error:[/] {message}")
    raise typer.Exit(code) from None


@contextmanager
def exits(codes: ExitCodes, prefix: str = "") -> Iterator[None]:
    """The one error path: an exception of a type in `codes` (looked up in order, so name a subclass before its
    base) ends the command through `fail` with PREFIX and its message; any other exception propagates."""
    try:
        yield
    except (typer.Exit, typer.Abort):  # both are RuntimeErrors: never mistake them for the command's failure
        raise
    except Exception as exc:
        code = next((c for types, c in codes.items() if isinstance(exc, types)), None)
        if code is None:
            raise
        fail(f"{prefix}{exc}", code)


def load(params_file: Path) -> Params:
    """params.yaml, checked; a bad one exits 2 naming the field."""
    from components.config import ParamsError, load_params

    with exits({ParamsError: 2}):
        return load_params(params_file)


def on_prefect_api(when: Callable[[dict[str, Any]], bool] = lambda _: True) -> Callable[[Command], Command]:
    """For a command that runs a Prefect flow (when `when(its arguments)` holds): connect to a Prefect API before
    the flow's module imports prefect. PREFECT_API_URL (or the active Prefect profile's) when set, else the project's
    server, started by the first such command and reused by the next (flows/prefect_server.py;
    RAGLOOP_PREFECT_SERVER=ephemeral: Prefect's temporary server per process instead). A bad params file exits 2
    before any server starts; a server that cannot start exits 1."""

    def decorate(command: Command) -> Command:
        @functools.wraps(command)
        def run(**kwargs: Any) -> Any:
            if not when(kwargs):
                return command(**kwargs)
            from flows.prefect_server import ServerError, prefect_api

            load(kwargs["params_file"])
            with ExitStack() as stack:
                with exits({ServerError: 1}):
                    stack.enter_context(prefect_api(kwargs["params_file"], notice=err.print))
                return command(**kwargs)

        return run  # type: ignore[return-value]

    return decorate


def emit(data: Any, as_json: bool, table: Callable[[Any], RenderableType]) -> None:
    """The result: one JSON line (the contract) with --json, else the command's table for people."""
    if as_json:
        sys.stdout.write(json.dumps(data) + "\n")
    else:
        Console().print(table(data))


def dict_table(d: dict) -> Table:
    """A result's keys and values, for the commands whose result is one flat object."""
    t = Table("key", "value")
    for k, v in d.items():
        t.add_row(str(k), json.dumps(v) if isinstance(v, (list, dict)) else str(v))
    return t
