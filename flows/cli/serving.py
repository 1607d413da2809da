"""`ragloop` commands that answer questions: ask (one question, here) and api (the OpenAI-compatible HTTP API,
components/serving/app.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from components.records import model_label
from flows.cli.common import JsonOpt, ParamsOpt, dict_table, emit, exits, load, on_prefect_api


def ask(
    question: Annotated[str, typer.Argument(help="The customer's question.")],
    params_file: ParamsOpt = Path("params.yaml"),
    as_json: JsonOpt = False,
) -> None:
    """Answer one question with the champion (retrieved sources + generator + champion adapter)."""
    from components.behaviour.loop import answer_question
    from components.config import Settings
    from components.tracking.registry import champion

    params = load(params_file)
    settings = Settings.from_env()
    champ = champion(params, settings)
    adapter, version = (champ.adapter_dir, model_label(champ.version)) if champ else (None, model_label(None))
    emit(answer_question(params, settings, question, adapter, version), as_json, dict_table)


@on_prefect_api(when=lambda kw: kw["prefect"])
def api(
    params_file: ParamsOpt = Path("params.yaml"),
    host: Annotated[str | None, typer.Option(help="Address to bind (default api.host, 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default api.port).")] = None,
    prefect: Annotated[bool, typer.Option("--prefect", help="Run it as the Prefect flow serve-api.")] = False,
) -> None:
    """Serve the champion over an OpenAI-compatible HTTP API, tracing every answer in MLflow
    (components/serving/app.py)."""
    from components.config import Settings
    from components.serving.app import ApiConfigError, api_key_for, run_api

    params = load(params_file)
    with exits({ApiConfigError: 2}):
        api_key_for(host or params.api.host)  # refuse a non-loopback bind without a key before loading anything
        if prefect:
            from flows.api_deployment import serve_api

            serve_api(params_file=str(params.source), host=host, port=port)
        else:
            run_api(params, Settings.from_env(), host, port)
