"""The tracking store as the trace code reaches it: `bind()` points this process's trace export at the deployment's
store, `store_call` runs one call and turns its failures into two errors (a trace the store does not have; a store
that cannot serve the call), and `store_reachable` says whether the store answers now.

MLflow exports a trace through its process-wide tracer, which writes to the process-wide tracking URI: `bind()`
sets that URI (the one exception to this codebase's rule of no fluent, process-global MLflow state: the client API
has no per-client trace destination) and turns asynchronous trace export off, so a trace is in the store when
`write_trace` returns its id and feedback can never race it. Everything else (assessments, reads) goes through
clients bound to the deployment's URI.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from components.config import Params, Settings
from components.tracking.mlflow_runs import client_for, experiment_id, tracking_uri

# The MLflow REST client retries a failed call 7 times with a doubling backoff (minutes) by default. A server that
# answers requests must fail fast and spool instead; bind() sets these unless the environment already does.
ASYNC_EXPORT = "MLFLOW_ENABLE_ASYNC_TRACE_LOGGING"  # MLflow's switch, set by bind(), not a deployment setting
FAST_FAILING_HTTP = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                     "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}  # fmt: skip


class UnknownTraceError(LookupError):
    """The tracking store has no trace with this id."""


class StoreUnavailableError(RuntimeError):
    """The tracking store could not be reached (or failed) for this call."""


_bound: dict[str, str] = {}
_bind_lock = threading.Lock()


def bind(params: Params, settings: Settings, fast_fail: bool = False) -> str:
    """Point this process's trace export at the deployment's tracking store, synchronously; the serving
    experiment's id (created with an artifact location under paths.mlflow when embedded). `fast_fail` also
    makes MLflow's HTTP calls give up after seconds (the API server sets it)."""
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.tracing.provider import reset

    uri = tracking_uri(params, settings)
    name = params.tracking.serving_experiment
    with _bind_lock:
        if fast_fail:
            for key, value in FAST_FAILING_HTTP.items():
                os.environ.setdefault(key, value)
        if os.environ.get(ASYNC_EXPORT) != "false" or mlflow.get_tracking_uri() != uri:
            os.environ[ASYNC_EXPORT] = "false"  # read when the exporter is built
            outside = os.environ.get("MLFLOW_TRACKING_URI")
            mlflow.set_tracking_uri(uri)  # process-wide: MLflow's tracer exports there (see the module doc)
            # set_tracking_uri also exports MLFLOW_TRACKING_URI; left set, Settings.from_env() in this process would
            # take the embedded store for a tracking server (experiments created later lose their artifact location
            # and write ./mlruns into the working folder). The tracer keeps the URI set above.
            if outside is None:
                os.environ.pop("MLFLOW_TRACKING_URI", None)
            else:
                os.environ["MLFLOW_TRACKING_URI"] = outside
            reset()  # rebuild the exporter with both settings
        key = f"{uri}\n{name}"
        if key not in _bound:
            client = client_for(params, settings)
            try:
                _bound[key] = experiment_id(client, params, settings, name)
            except MlflowException as exc:  # another process created it between our read and our create
                if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
                _bound[key] = experiment_id(client, params, settings, name)
        return _bound[key]


_chosen = threading.local()  # the trace id the next trace started on this thread gets (`chosen_trace_id`)


@contextmanager
def chosen_trace_id(trace_id: str) -> Iterator[None]:
    """The next trace this thread starts gets `trace_id` ("tr-" and 32 hex digits, MLflow's own form): a trace
    delivered from the spool is stored under the id its answer was returned with. MLflow makes a trace's id from
    its OpenTelemetry trace id; the tracer provider's id generator (one object, shared by the tracers it has
    handed out) is taught to hand this one out once."""
    from mlflow.tracing.provider import _get_tracer, provider

    _get_tracer(__name__)  # the provider exists from here on (bind() may have just reset it)
    generator: Any = provider.get().id_generator
    if not getattr(generator, "_ragloop_chosen", False):
        generator.generate_trace_id = _chosen_first(generator.generate_trace_id)
        generator._ragloop_chosen = True
    _chosen.value = int(trace_id.removeprefix("tr-"), 16)
    try:
        yield
    finally:
        _chosen.value = None


def _chosen_first(generate: Any) -> Any:
    def generate_trace_id() -> int:
        chosen = getattr(_chosen, "value", None)
        if chosen is None:
            return int(generate())
        _chosen.value = None
        return int(chosen)

    return generate_trace_id


def store_reachable(params: Params, settings: Settings) -> bool:
    """Whether the tracking store answers now (a server's /health, or a read of the embedded store)."""
    uri = tracking_uri(params, settings)
    try:
        if uri.startswith(("http://", "https://")):
            import urllib.request

            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5) as reply:
                return bool(reply.status == 200)
        client_for(params, settings).search_experiments(max_results=1)
        return True
    except Exception:
        return False


def tracing_client(params: Params, settings: Settings) -> Any:
    from mlflow.tracing.client import TracingClient

    return TracingClient(tracking_uri(params, settings))


def store_call(fn: Any, trace_id: str) -> Any:
    """Run one store call; a missing trace becomes UnknownTraceError, a store that cannot serve the call
    StoreUnavailableError, a request the store refuses ValueError."""
    from mlflow.exceptions import MlflowException

    try:
        return fn()
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            raise UnknownTraceError(f"no trace {trace_id!r} in the tracking store") from None
        if exc.error_code in {"INVALID_PARAMETER_VALUE", "BAD_REQUEST"} and "not found" in str(exc).lower():
            raise UnknownTraceError(f"no trace {trace_id!r} in the tracking store") from None
        if exc.error_code in {"INVALID_PARAMETER_VALUE", "BAD_REQUEST"}:
            raise ValueError(f"the tracking store refused the call: {exc.message}") from None
        raise StoreUnavailableError(f"{exc.error_code}: {exc.message}"[:500]) from exc
    except Exception as exc:  # connection errors (requests, urllib3), a locked or unreadable SQLite file
        import sqlalchemy.exc
        from requests import RequestException

        if isinstance(exc, RequestException | OSError | sqlalchemy.exc.SQLAlchemyError):
            raise StoreUnavailableError(f"{type(exc).__name__}: {exc}"[:500]) from exc
        raise
