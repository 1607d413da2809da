"""`ragloop api` as a Prefect flow: `ragloop api --prefect` runs it on the project's Prefect server (the server's
run shows in the UI, with its logs, and can be cancelled there); `prefect deploy flows/api_deployment.py:serve_api`
makes it a deployment of your own (it is not in prefect.yaml, where it would hold the process worker's only slot
for as long as it serves). Kept apart from the HTTP app (components/serving/app.py) so that a plain `ragloop api`
never imports Prefect."""

from __future__ import annotations

from prefect import flow

from components.config import Settings, load_params
from components.serving.app import run_api


@flow(name="serve-api", log_prints=True)
def serve_api(params_file: str = "params.yaml", reason: str = "manual", host: str | None = None,
              port: int | None = None) -> None:  # fmt: skip
    """Serve the OpenAI-compatible API until the run is cancelled or the process is stopped."""
    params = load_params(params_file)
    run_api(params, Settings.from_env(), host, port)
