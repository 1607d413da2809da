"""The model registry on a real embedded MLflow store (sqlite) with real tiny LoRA adapters."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from components.behaviour.assistant import Generator, build_prompt
from components.behaviour.finetune import save_adapter, train_lora
from components.config import FinetuneParams, Settings
from components.tracking.mlflow_runs import client_for, experiment_id
from components.tracking.registry import (
    RegistryError,
    champion,
    describe_version,
    log_adapter,
    promote,
    rollback,
)
from tests.conftest import TINY_UNTRAINED, build_tiny_model
from tests.helpers import DOCS, Deployment, contract_line

SETTINGS = Settings(mlflow_tracking_uri=None, chroma_host=None, chroma_port=8000, chroma_ssl=False)
PAIRS = [
    ("How much is an ATM withdrawal?", contract_line("fees", "2 EUR", ["fees.md"]), "fees.md"),
    (
        "I lost my card",
        contract_line("card_lost", "Freeze it in the app", ["cards/lost-card.md"]),
        "cards/lost-card.md",
    ),
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A deployment with a tiny base model and two different adapters (with the logits each one gives)."""
    import torch

    root = tmp_path_factory.mktemp("registry")
    dep = Deployment.create(root)
    build_tiny_model(root / "base", TINY_UNTRAINED, repeats=5)
    dep.write_params(generator={"model": "base", "context_chunks": 1})
    params = dep.params()
    pairs = [(build_prompt(params.generator, q, [{"doc": d, "text": DOCS[d]}]), t) for q, t, d in PAIRS]
    adapters = []
    for seed in (0, 1):
        gen = Generator(params)
        ft = FinetuneParams(r=4, alpha=8, dropout=0.0, learning_rate=1e-2, batch_size=2, epochs=2, seed=seed)
        peft_model, _ = train_lora(gen.model, gen.tokenizer, pairs, ft)
        batch = gen.tokenizer([pairs[0][0]], return_tensors="pt", return_token_type_ids=False)
        with torch.no_grad():
            logits = peft_model(**batch).logits
        adapters.append((save_adapter(peft_model, root / f"adapter-{seed}"), batch, logits))
    return root / "base", adapters


@pytest.fixture
def params(tmp_path: Path):
    """A fresh deployment (its own sqlite MLflow store under tmp_path) per test."""
    return Deployment.create(tmp_path / "dep").params()


def _log(params, adapter: Path, tag: str, base: Path) -> str:
    client = client_for(params, SETTINGS)
    exp = experiment_id(client, params, SETTINGS, params.tracking.finetune_experiment)
    run_id = client.create_run(exp).info.run_id
    lineage = {"base_model": str(base), "base_model_revision": "none",
               "adapter": tag, "train_data_md5": "t" + tag, "gate_data_md5": "g" + tag,
               "index_version": "3", "git_commit": "abc123"}  # fmt: skip
    results = {"cases": [{"id": f"case-{tag}", "passed": True}]}
    version = log_adapter(params, SETTINGS, run_id, adapter, lineage["base_model"], lineage, results)
    client.set_terminated(run_id, "FINISHED")
    return version


def _tree_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def test_log_promote_rollback_and_the_champion_adapter_round_trips(setup, params, tmp_path, monkeypatch) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base, adapters = setup
    monkeypatch.chdir(tmp_path)  # nothing may fall back to MLflow's global default store (./mlflow.db, ./mlruns)
    assert champion(params, SETTINGS) is None

    assert _log(params, adapters[0][0], "a", base) == "1"
    assert promote(params, SETTINGS, "1") == {"champion": "1", "previous": None}
    assert _log(params, adapters[1][0], "b", base) == "2"
    assert promote(params, SETTINGS, "2") == {"champion": "2", "previous": "1"}
    assert rollback(params, SETTINGS) == {"champion": "1", "previous": "2"}

    info = champion(params, SETTINGS)
    assert info is not None
    assert info.version == "1"
    assert info.tags["adapter"] == "a"
    assert info.tags["train_data_md5"] == "ta"
    assert info.results == {"cases": [{"id": "case-a", "passed": True}]}
    assert info.adapter_dir.is_relative_to(params.paths.mlflow / "cache")
    run = client_for(params, SETTINGS).get_run(info.run_id)
    assert run.info.experiment_id == experiment_id(
        client_for(params, SETTINGS), params, SETTINGS, params.tracking.finetune_experiment
    )

    _, batch, logits = adapters[0]
    base = AutoModelForCausalLM.from_pretrained(str(base), use_safetensors=True)
    loaded = PeftModel.from_pretrained(base, str(info.adapter_dir)).eval()
    with torch.no_grad():
        assert torch.allclose(loaded(**batch).logits, logits, atol=1e-5)
    with torch.no_grad():  # and it is not the other adapter's behaviour
        assert not torch.allclose(adapters[1][2], logits, atol=1e-5)

    again = champion(params, SETTINGS)  # served from the cache
    assert again is not None
    assert again.adapter_dir == info.adapter_dir
    assert (
        info.tags["adapter_sha256"]
        == hashlib.sha256((adapters[0][0] / "adapter_model.safetensors").read_bytes()).hexdigest()
    )
    assert not (tmp_path / "mlflow.db").exists()
    assert not (tmp_path / "mlruns").exists()


def test_the_logged_model_holds_only_the_adapter(setup, params) -> None:
    base, adapters = setup
    version = _log(params, adapters[0][0], "size", base)
    client = client_for(params, SETTINGS)
    mv = client.get_model_version(params.tracking.registered_model, version)
    logged = client.get_logged_model(mv.tags["ragloop.model_id"])
    assert logged.source_run_id == mv.run_id
    folder = Path(logged.artifact_location.removeprefix("file://"))
    assert folder.parts[-2].startswith("m-")  # models/m-<id>/artifacts
    files = {p.name for p in folder.rglob("*") if p.is_file()}
    assert "adapter_model.safetensors" in files
    assert "model.safetensors" not in files  # no base weights
    logged_bytes = _tree_bytes(folder)
    base_bytes = (base / "model.safetensors").stat().st_size
    assert logged_bytes < 2_000_000
    assert logged_bytes < base_bytes / 2


def test_the_pyfunc_model_loads_base_plus_adapter_and_generates(setup, params, monkeypatch) -> None:
    import mlflow

    base, adapters = setup
    version = _log(params, adapters[0][0], "pyfunc", base)
    client = client_for(params, SETTINGS)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", client.tracking_uri)  # the fluent API reads the global URI
    model = mlflow.pyfunc.load_model(f"models:/{params.tracking.registered_model}/{version}")
    out = model.predict(["### Customer: hi\n### Assistant:"])
    assert isinstance(out, list)
    assert len(out) == 1


def test_a_rejected_version_stays_registered_with_its_verdict(setup, params) -> None:
    base, adapters = setup
    version = _log(params, adapters[1][0], "rejected", base)
    describe_version(params, SETTINGS, version, "rejected", ["slice fees regressed: 0.90 -> 0.60 (p=0.01)"])
    mv = client_for(params, SETTINGS).get_model_version(params.tracking.registered_model, version)
    assert mv.tags["gate"] == "rejected"
    assert "rejected" in mv.description
    assert "slice fees regressed" in mv.description
    assert "train_data_md5: trejected" in mv.description
    with pytest.raises(ValueError, match="verdict"):
        describe_version(params, SETTINGS, version, "maybe", [])
    with pytest.raises(RegistryError, match="no version"):
        describe_version(params, SETTINGS, "999", "promoted", [])


def test_rollback_without_previous_is_a_clear_error(setup, params) -> None:
    base, adapters = setup
    with pytest.raises(RegistryError, match=r"ragloop-assistant.*previous"):
        rollback(params, SETTINGS)
    assert _log(params, adapters[0][0], "only", base) == "1"
    assert promote(params, SETTINGS, "1") == {"champion": "1", "previous": None}
    with pytest.raises(RegistryError, match=r"ragloop-assistant.*previous"):
        rollback(params, SETTINGS)
    with pytest.raises(RegistryError, match="no version"):
        promote(params, SETTINGS, "7")
