"""`ragloop tune-retriever`: fine-tune the embedder and gate it against the champion retriever, or roll back to the
previous retriever. DVC's stage tune_retriever calls it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from flows.cli.common import JsonOpt, ParamsOpt, ReasonOpt, dict_table, emit, exits, load, on_prefect_api


@on_prefect_api(when=lambda kw: not kw["rollback"])
def tune_retriever(
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
    reason: ReasonOpt = "manual",
) -> None:
    """Fine-tune the embedder on the training questions, gate it against the champion retriever on the gate set's
    questions (and paths.retrieval_queries), publish its collection only if it wins (the Prefect flow
    `tune-retriever`, which writes data/metrics/retriever.json); or roll back to the previous retriever."""
    from components.behaviour.retriever_tuning import TuningError

    params = load(params_file)
    # RegistryError, EmbedderError, IndexNotReadyError among the RuntimeErrors
    with exits({TuningError: 2, RuntimeError: 1}):
        if rollback:
            from components.config import Settings
            from flows.retriever import rollback_retriever

            result = rollback_retriever(params, Settings.from_env())
        else:
            from flows.retriever import tune_retriever as tune_flow

            result = tune_flow(params_file=str(params.source), reason=reason, if_needed=if_needed)
    emit(result, as_json, dict_table)
