"""`ragloop`: one subcommand per job. DVC stages and users call these; `--json` output is a stable contract.

One module per area, each holding its commands and the tables they print: knowledge.py (index, query,
eval-retrieval, verify, versions), behaviour.py (base-model, evaluate, finetune, gate, promote, rollback, run),
retriever.py (tune-retriever), serving.py (ask, api), operations.py (serve, watch, deployments, server), triage.py
(status, advise, triage, cases). What they share (options, the error path, the Prefect connection, printing) is
common.py; reference.py renders docs/cli.md from this app.

Importing this package is cheap (typer and rich only: `ragloop --help` answers at once); each command imports what
it needs when it runs.
"""

from __future__ import annotations

import os
import sys

import typer

from flows.cli import behaviour, knowledge, operations, retriever, serving, triage
from flows.cli.common import err

app = typer.Typer(
    name="ragloop",
    help="Keep a RAG assistant right: re-index when knowledge changes, fine-tune only when behaviour regresses.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

# Every command, in the order `ragloop --help` lists them (a command's name is its function's, `_` as `-`).
app.command(cls=knowledge.OptionalRollback)(knowledge.index)
for _command in (
    knowledge.query, knowledge.eval_retrieval, knowledge.verify, knowledge.versions,
    behaviour.base_model, serving.ask, serving.api,
    behaviour.evaluate, behaviour.finetune, behaviour.gate, behaviour.promote, behaviour.rollback,
    retriever.tune_retriever, behaviour.run,
    operations.serve, operations.watch, operations.deployments,
    triage.status, triage.advise, triage.triage,
):  # fmt: skip
    app.command()(_command)
app.add_typer(triage.cases)
app.add_typer(operations.server)


def main() -> None:
    """The `ragloop` console script: the app, and for a store that stays unreachable after the tasks' retries one
    plain line naming it instead of a traceback (exit 1)."""
    # stdout is the commands' own (a --json object): MLflow prints "View run ... at" there after each run on a
    # tracking server unless told not to
    os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
    try:
        app(prog_name="ragloop")
    except Exception as exc:
        from components.config import ParamsError, Settings
        from flows.cli.failures import unreachable_server

        try:
            where = unreachable_server(exc, Settings.from_env())
        except ParamsError:
            where = None
        if where is None:
            raise
        err.print(f"[red]error:[/] {where} is unreachable (after retries): {type(exc).__name__}: {exc}")
        err.print("The published index and the registry aliases are as they were before this step.")
        sys.exit(1)
