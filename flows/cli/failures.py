"""Which server a failure could not reach, for the one plain line `ragloop` prints instead of a traceback when a
store stays unreachable after the tasks' retries. The addresses come from the deployment's Settings, never from
the process environment directly."""

from __future__ import annotations

from components.config import Settings

# what the clients put in a connection failure's message: requests/urllib3 (MLflow), httpx (Chroma), the OS
CONNECTION_FAILURES = ("Connection refused", "Max retries exceeded", "Failed to establish", "timed out",
                       "Could not connect")  # fmt: skip


def _is_connection_failure(exc: BaseException) -> bool:
    return isinstance(exc, ConnectionError | TimeoutError) or any(m in str(exc) for m in CONNECTION_FAILURES)


def unreachable_server(exc: BaseException, settings: Settings) -> str | None:
    """'the MLflow tracking server at URI' / 'the Chroma server at HOST:PORT' when `exc` (or an exception it was
    raised from or during) is a connection failure of the Chroma or the MLflow client; None for anything else."""
    seen: BaseException | None = exc
    while seen is not None:
        if _is_connection_failure(seen):
            module, text = type(seen).__module__, str(seen)
            if module.startswith("chromadb") or "Chroma" in text:
                return f"the Chroma server at {settings.chroma_host or '?'}:{settings.chroma_port}"
            if module.startswith("mlflow") or "/api/2.0/mlflow" in text:
                return f"the MLflow tracking server at {settings.mlflow_tracking_uri or '?'}"
        seen = seen.__cause__ or seen.__context__
    return None
