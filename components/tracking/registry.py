"""The MLflow model registry of the assistant: LoRA adapters as model versions, `champion`/`previous` aliases.

Only the adapter is logged (a pyfunc model whose one artifact is the adapter folder; the base model is named
in its model_config and loaded from there), so a version weighs what the adapter weighs. Everything goes
through an `MlflowClient` bound to the deployment's tracking URI: no fluent (process-global) MLflow state.

Lineage (base model, data hashes, index version, git commit) is stored as version tags; the gate's verdict
as the version's description and its `gate` tag; the candidate's per-case evaluation results as the run
artifact `evaluation/results.json`. A rejected candidate stays registered, with its verdict.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from functools import cache
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

from components.config import Params, Settings
from components.hashing import file_sha256
from components.tracking.lineage import git_commit
from components.tracking.mlflow_runs import client_for, experiment_id, tracking_uri

CHAMPION = "champion"
PREVIOUS = "previous"
ADAPTER_ARTIFACT = "adapter"  # the pyfunc artifact name of the adapter folder
RESULTS_ARTIFACT = "evaluation/results.json"  # run artifact: the candidate's per-case evaluation results
MODEL_ID_TAG = "ragloop.model_id"  # version tag: the logged model (models/m-<id>) behind the version
VERDICTS = ("promoted", "rejected")
_REQUIREMENTS = ("mlflow", "torch", "transformers", "peft", "safetensors")


class RegistryError(RuntimeError):
    """The registry cannot do what was asked (no such version, nothing to roll back to, wrong run)."""


@dataclass(frozen=True)
class VersionInfo:
    version: str
    run_id: str | None
    tags: dict[str, str]
    adapter_dir: Path  # a local copy in the registry cache (params.paths.mlflow / "cache")
    results: dict | None  # the version's stored evaluation/results.json, None when it has none


def log_adapter(
    params: Params,
    settings: Settings,
    run_id: str,
    adapter_dir: Path,
    base_model_dir_or_id: str,
    lineage: dict[str, str],
    results: dict,
) -> str:
    """Log the adapter (only) as an MLflow model of the given fine-tune run and register it as a new version of
    `params.tracking.registered_model`, with `lineage` as version tags; returns the version number."""
    import mlflow.pyfunc
    from mlflow.entities import LoggedModelOutput
    from mlflow.models import Model
    from mlflow.utils.mlflow_tags import MLFLOW_MODEL_VERSIONS

    if not (adapter_dir / "adapter_config.json").is_file():
        raise RegistryError(f"{adapter_dir}: not a saved adapter (no adapter_config.json)")
    client = client_for(params, settings)
    run = client.get_run(run_id)
    expected = experiment_id(client, params, settings, params.tracking.finetune_experiment)
    if str(run.info.experiment_id) != expected:
        raise RegistryError(
            f"run {run_id} belongs to experiment {run.info.experiment_id}, "
            f"not to the fine-tune experiment {params.tracking.finetune_experiment!r} ({expected})"
        )
    tags = {k: str(v) for k, v in lineage.items()}
    tags.setdefault("base_model", base_model_dir_or_id)
    tags.setdefault("git_commit", git_commit(params.source.parent))
    weights = adapter_dir / "adapter_model.safetensors"
    tags["adapter_sha256"] = file_sha256(weights) if weights.is_file() else "missing"
    client.log_dict(run_id, results, RESULTS_ARTIFACT)

    base = Path(base_model_dir_or_id)
    config: dict[str, Any] = {
        "base_model": str(base.resolve()) if base.exists() else base_model_dir_or_id,
        "max_new_tokens": params.generator.max_new_tokens,
    }
    revision = tags.get("base_model_revision", "")
    if revision.lower() not in {"", "none", "null"}:
        config["base_model_revision"] = revision

    logged = client.create_logged_model(
        experiment_id=expected, name=ADAPTER_ARTIFACT, source_run_id=run_id, tags=tags, model_type="lora-adapter"
    )
    try:
        with tempfile.TemporaryDirectory(prefix="ragloop-adapter-") as tmp:
            local = Path(tmp) / "model"
            model = Model(
                artifact_path=logged.artifact_location,
                model_uuid=logged.model_id,
                run_id=run_id,
                model_id=logged.model_id,
            )
            mlflow.pyfunc.save_model(
                path=str(local),
                python_model=_adapter_pyfunc_class()(),
                artifacts={ADAPTER_ARTIFACT: str(adapter_dir.resolve())},
                model_config=config,
                pip_requirements=_pinned_requirements(),  # given, so MLflow does not load the model to infer them
                mlflow_model=model,
            )
            client.log_model_artifacts(logged.model_id, str(local))
        client.log_outputs(run_id, [LoggedModelOutput(logged.model_id, step=0)])
    except BaseException:
        client.finalize_logged_model(logged.model_id, "FAILED")
        raise
    client.finalize_logged_model(logged.model_id, "READY")

    name = params.tracking.registered_model
    _ensure_registered_model(client, name)
    # The source is the logged model's storage location, not "models:/m-<id>": the sqlite registry store
    # resolves such a URI through the process-global tracking URI instead of this client's, and it does not
    # keep `model_id` either, hence the MODEL_ID_TAG.
    version_tags = {**tags, MODEL_ID_TAG: logged.model_id}
    mv = client.create_model_version(
        name, source=logged.artifact_location, run_id=run_id, tags=version_tags, model_id=logged.model_id
    )
    client.set_logged_model_tags(
        logged.model_id, {MLFLOW_MODEL_VERSIONS: json.dumps([{"name": name, "version": str(mv.version)}])}
    )
    slices = results.get("summary", {}).get("slices", {})
    pending = ["registered; not gated yet (`ragloop gate` pairs it with the champion)"]
    client.update_model_version(name, str(mv.version), description=version_description(
        "pending", pending, {k: (None, v["pass_rate"]) for k, v in slices.items()}, version_tags))  # fmt: skip
    return str(mv.version)


def describe_version(params: Params, settings: Settings, version: str, verdict: str, reasons: list[str],
                     rates: dict[str, tuple[float | None, float]] | None = None,
                     model: str | None = None) -> None:  # fmt: skip
    """Record the gate's verdict on a version: its description (verdict, reasons, slice rates against the
    champion's, lineage) and tag `gate`. `verdict` is one of VERDICTS, or "pending" at registration. `model`: the
    registered model (default: the assistant's, tracking.registered_model; the retriever's is another)."""
    if verdict not in (*VERDICTS, "pending"):
        raise ValueError(f"verdict must be one of {(*VERDICTS, 'pending')}, got {verdict!r}")
    client = client_for(params, settings)
    name = model or params.tracking.registered_model
    mv = _version(client, name, version)
    client.update_model_version(name, version, description=version_description(verdict, reasons, rates, mv.tags))
    if verdict != "pending":
        client.set_model_version_tag(name, version, "gate", verdict)


def version_description(verdict: str, reasons: list[str], rates: dict[str, tuple[float | None, float]] | None,
                        tags: dict[str, str]) -> str:  # fmt: skip
    skip = {"gate", MODEL_ID_TAG}
    lineage = {k: v for k, v in sorted(tags.items()) if k not in skip and not k.startswith("mlflow.")}
    lines = [f"Gate: {verdict}", "", "Reasons:"]
    lines += [f"- {r}" for r in reasons] or ["- (none given)"]
    if rates:
        lines += ["", "Gate-set pass rates (this version / champion at the time):"]
        for k, (old, new) in sorted(rates.items()):
            lines.append(f"- {k}: {new:.2f} / {'-' if old is None else f'{old:.2f}'}")
    lines += ["", "Lineage:"] + ([f"- {k}: {v}" for k, v in lineage.items()] or ["- (none recorded)"])
    return "\n".join(lines)


def gate_verdict(params: Params, settings: Settings, version: str) -> str | None:
    """'promoted' | 'rejected' once the gate has judged the version; None while it has not."""
    mv = _version(client_for(params, settings), params.tracking.registered_model, version)
    return mv.tags.get("gate")


def rejected_with(params: Params, settings: Settings, tags: dict[str, str], model: str | None = None) -> dict | None:
    """The first version the gate rejected whose tags hold all of `tags` (the evidence it was trained on), as
    {"version", "reason"} (the verdict's first reason); None when there is none. What keeps the loop from training
    the same thing twice."""
    from mlflow.exceptions import MlflowException

    client = client_for(params, settings)
    name = model or params.tracking.registered_model
    try:
        versions = client.search_model_versions(f"name='{name}'")
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    for mv in sorted(versions, key=lambda v: int(v.version)):
        if mv.tags.get("gate") == "rejected" and all(mv.tags.get(k) == v for k, v in tags.items()):
            reasons = [line[2:] for line in (mv.description or "").splitlines() if line.startswith("- ")]
            return {"version": str(mv.version), "reason": reasons[0] if reasons else "no reason recorded"}
    return None


def promote(params: Params, settings: Settings, version: str, model: str | None = None) -> dict:
    """`champion` -> version, `previous` -> the old champion (if any, and if it is another version). `model`: the
    registered model (default: tracking.registered_model)."""
    client = client_for(params, settings)
    name = model or params.tracking.registered_model
    _version(client, name, version)
    old = _alias(client, name, CHAMPION)
    if old is None or str(old.version) == version:
        client.set_registered_model_alias(name, CHAMPION, version)
        prev = _alias(client, name, PREVIOUS)
        return {"champion": version, "previous": None if prev is None else str(prev.version)}
    # `previous` first: a reader between the two calls still sees the old, complete champion.
    client.set_registered_model_alias(name, PREVIOUS, str(old.version))
    client.set_registered_model_alias(name, CHAMPION, version)
    return {"champion": version, "previous": str(old.version)}


def rollback(params: Params, settings: Settings, model: str | None = None) -> dict:
    """Swap the aliases: `champion` := `previous`, `previous` := the old champion. `model`: the registered model
    (default: tracking.registered_model)."""
    client = client_for(params, settings)
    name = model or params.tracking.registered_model
    prev = _alias(client, name, PREVIOUS)
    if prev is None:
        raise RegistryError(f"registered model {name!r} has no {PREVIOUS!r} alias: nothing to roll back to")
    old = _alias(client, name, CHAMPION)
    client.set_registered_model_alias(name, CHAMPION, str(prev.version))
    if old is None or str(old.version) == str(prev.version):
        client.delete_registered_model_alias(name, PREVIOUS)
        return {"champion": str(prev.version), "previous": None}
    client.set_registered_model_alias(name, PREVIOUS, str(old.version))
    return {"champion": str(prev.version), "previous": str(old.version)}


def champion(params: Params, settings: Settings) -> VersionInfo | None:
    """The current champion with its adapter in the local cache; None when there is no champion."""
    client = client_for(params, settings)
    mv = _alias(client, params.tracking.registered_model, CHAMPION)
    return None if mv is None else _fetch(params, settings, client, mv)


def champion_version(params: Params, settings: Settings) -> str | None:
    """The version the `champion` alias points to, without fetching its adapter (one registry read: what a
    long-running server checks before each answer); None when there is no champion."""
    mv = _alias(client_for(params, settings), params.tracking.registered_model, CHAMPION)
    return None if mv is None else str(mv.version)


def fetch_version(params: Params, settings: Settings, version: str) -> VersionInfo:
    """Any registered version, with its adapter in the local cache and its stored evaluation results."""
    client = client_for(params, settings)
    return _fetch(params, settings, client, _version(client, params.tracking.registered_model, version))


def _fetch(params: Params, settings: Settings, client: Any, mv: Any) -> VersionInfo:
    name = params.tracking.registered_model
    run_id = str(mv.run_id) if mv.run_id else None
    model_id = mv.tags.get(MODEL_ID_TAG) or mv.model_id
    folder = _cached(params, settings, client, name, str(mv.version), model_id, run_id)
    results_file = folder / "results.json"
    results = json.loads(results_file.read_text(encoding="utf-8")) if results_file.is_file() else None
    return VersionInfo(
        version=str(mv.version),
        run_id=run_id,
        tags=dict(mv.tags),
        adapter_dir=_adapter_in(folder / "model"),
        results=results,
    )


def _cached(
    params: Params, settings: Settings, client: Any, name: str, version: str, model_id: str | None, run_id: str | None
) -> Path:
    """cache/<model id>/{model/, results.json}: downloaded once into a temp folder, then renamed into place."""
    import mlflow.artifacts
    from mlflow.exceptions import MlflowException

    key = model_id or f"{name}-v{version}"
    root = params.paths.mlflow / "cache"
    folder = root / key
    if (folder / "model" / "MLmodel").is_file():
        return folder
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{key}.{uuid.uuid4().hex}.partial"
    tmp.mkdir()
    try:
        uri = tracking_uri(params, settings)
        source = client.get_model_version_download_uri(name, version)  # the logged model's artifact folder
        got = mlflow.artifacts.download_artifacts(
            artifact_uri=source, dst_path=str(tmp / "download"), tracking_uri=uri, registry_uri=uri
        )
        Path(got).rename(tmp / "model")
        if run_id is not None:
            try:
                got = client.download_artifacts(run_id, RESULTS_ARTIFACT, str(tmp))
                Path(got).rename(tmp / "results.json")
            except (MlflowException, OSError):
                pass  # a version logged without results
        shutil.rmtree(folder, ignore_errors=True)  # an incomplete earlier copy
        try:
            tmp.rename(folder)
        except OSError:
            if not (folder / "model" / "MLmodel").is_file():  # another process won the race only if complete
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _adapter_in(model_dir: Path) -> Path:
    """The adapter folder inside a downloaded pyfunc model, located through its MLmodel file."""
    from mlflow.models import Model

    flavor = Model.load(str(model_dir / "MLmodel")).flavors.get("python_function", {})
    rel = flavor.get("artifacts", {}).get(ADAPTER_ARTIFACT, {}).get("path")
    if rel is None:
        raise RegistryError(f"{model_dir}: the logged model has no {ADAPTER_ARTIFACT!r} artifact")
    return model_dir / rel


def _ensure_registered_model(
    client: Any, name: str, description: str = "ragloop assistant: LoRA adapters on the generator"
) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        try:
            client.create_registered_model(name, description=description)
        except MlflowException as race:
            if race.error_code != "RESOURCE_ALREADY_EXISTS":
                raise


def _version(client: Any, name: str, version: str) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version(name, version)
    except MlflowException as exc:
        if exc.error_code in {"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"}:
            raise RegistryError(f"registered model {name!r} has no version {version!r}") from None
        raise


def _alias(client: Any, name: str, alias: str) -> Any | None:
    """The version an alias points to; None when the alias or the registered model does not exist.

    Read from the registered model's alias map: stores disagree on the error code of a missing alias."""
    from mlflow.exceptions import MlflowException

    try:
        version = client.get_registered_model(name).aliases.get(alias)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    return None if version is None else client.get_model_version(name, str(version))


def _pinned_requirements() -> list[str]:
    pinned = []
    for dist in _REQUIREMENTS:
        try:
            pinned.append(f"{dist}=={package_version(dist)}")
        except PackageNotFoundError:
            pinned.append(dist)
    return pinned


@cache
def _adapter_pyfunc_class() -> type:
    """The pyfunc wrapper, built on first use so that importing this module does not import MLflow.

    Being defined in a function, cloudpickle stores it by value: the logged model loads with mlflow,
    transformers and peft alone (`mlflow.pyfunc.load_model`), without ragloop installed.
    """
    from mlflow.pyfunc import PythonModel

    class LoraAdapterModel(PythonModel):
        """Base model (from model_config) + the logged LoRA adapter; prompts in, greedy continuations out."""

        def load_context(self, context: Any) -> None:
            from peft import PeftModel
            from transformers import AutoModelForCausalLM, AutoTokenizer

            cfg = context.model_config
            kw = {"revision": cfg["base_model_revision"]} if cfg.get("base_model_revision") else {}
            self.tokenizer = AutoTokenizer.from_pretrained(cfg["base_model"], **kw)
            self.tokenizer.padding_side = "left"
            base = AutoModelForCausalLM.from_pretrained(cfg["base_model"], use_safetensors=True, **kw)
            self.model = PeftModel.from_pretrained(base, context.artifacts[ADAPTER_ARTIFACT]).eval()
            self.max_new_tokens = int(cfg.get("max_new_tokens", 48))

        def predict(self, context: Any, model_input: list[str], params: dict[str, Any] | None = None) -> list[str]:
            import torch

            batch = self.tokenizer(list(model_input), return_tensors="pt", padding=True, return_token_type_ids=False)
            with torch.no_grad():
                out = self.model.generate(
                    **batch,
                    max_new_tokens=self.max_new_tokens,
                    do_sample=False,
                    pad_token_id=self.tokenizer.pad_token_id,
                )
            new = out[:, batch["input_ids"].shape[1] :]
            return [t.strip() for t in self.tokenizer.batch_decode(new, skip_special_tokens=True)]

    return LoraAdapterModel
