"""LoRA fine-tuning on a tiny model built from nothing: it learns the contract, and the adapter round-trips."""

from __future__ import annotations

from pathlib import Path

import pytest

from components.behaviour.assistant import Generator, build_prompt
from components.behaviour.base_model import build_base_model
from components.behaviour.finetune import save_adapter, train_lora
from components.config import FinetuneParams, load_params
from tests.conftest import TINY, build_tiny_model
from tests.helpers import DOCS, Deployment, contract_line, parse_line

PAIRS = [
    ("How much is an ATM withdrawal?", contract_line("fees", "2 EUR", ["fees.md"]), "fees.md"),
    (
        "I lost my card",
        contract_line("card_lost", "Freeze it in the app", ["cards/lost-card.md"]),
        "cards/lost-card.md",
    ),
    ("Do you offer mortgages?", contract_line("out_of_scope", "I don't know", []), "support.txt"),
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Deployment, object]:
    root = tmp_path_factory.mktemp("tiny")
    dep = Deployment.create(root)
    build_tiny_model(root / "base")
    dep.write_params(generator={"model": "base", "max_new_tokens": 90, "context_chunks": 1})
    return dep, load_params(dep.params_file)


def _prompts(params) -> list[tuple[str, str]]:
    return [(build_prompt(params.generator, q, [{"doc": d, "text": DOCS[d]}]), target) for q, target, d in PAIRS]


def test_base_model_loads_through_from_pretrained_and_saves_safetensors(tiny) -> None:
    dep, params = tiny
    files = {p.name for p in (dep.root / "base").iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= files
    assert not any(f.endswith(".bin") for f in files)
    assert len(Generator(params).generate(["### Customer: hi\n### Assistant:"])) == 1


def test_lora_learns_the_contract_and_the_adapter_round_trips(tiny, tmp_path: Path) -> None:
    import torch
    from peft import PeftModel

    _, params = tiny
    gen = Generator(params)
    pairs = _prompts(params)
    before = gen.generate([p for p, _ in pairs])
    assert all(parse_line(o) is None for o in before)  # the base model knows nothing of the format
    ft = FinetuneParams(r=8, alpha=16, dropout=0.0, learning_rate=1e-2, batch_size=3, epochs=400)
    peft_model, log = train_lora(gen.model, gen.tokenizer, pairs, ft)
    assert log.losses[-1] < log.losses[0] / 2  # an untied, frozen output layer keeps the loss above ~2
    assert 0 < log.trainable_parameters < log.total_parameters
    gen.model = peft_model
    after = gen.generate([p for p, _ in pairs])
    assert after == [t for _, t in pairs]  # memorised exactly: training really moves behaviour

    adapter = save_adapter(peft_model, tmp_path / "adapter")
    assert {p.name for p in adapter.iterdir()} == {"adapter_config.json", "adapter_model.safetensors"}
    reloaded = Generator(params, adapter=adapter)
    batch = gen.tokenizer([pairs[0][0]], return_tensors="pt", return_token_type_ids=False)
    with torch.no_grad():
        a = peft_model(**batch).logits
        b = reloaded.model(**batch).logits
    assert isinstance(reloaded.model, PeftModel)
    assert torch.allclose(a, b, atol=1e-5)
    assert reloaded.generate([p for p, _ in pairs]) == after


def test_the_accelerate_launcher_trains_in_a_worker_process_and_writes_the_adapter(tiny, tmp_path: Path) -> None:
    """The multi-GPU path (`accelerate launch`, one process per GPU) run here with one CPU process: the worker
    trains on the pairs, the main process writes the adapter and the log comes back."""
    from peft import PeftModel

    from components.behaviour.assistant import Generator
    from components.behaviour.finetune import launch_multi_gpu

    dep, params = tiny
    pairs = [(p, t) for p, t in _prompts(params)]
    small = params.finetune.model_copy(update={"epochs": 3, "batch_size": 2})
    dep.write_params(generator={"model": "base", "max_new_tokens": 90, "context_chunks": 1},
                     finetune=small.model_dump(mode="json"))  # fmt: skip
    out = tmp_path / "adapter"
    log = launch_multi_gpu(dep.params_file, pairs, out, processes=1, extra=("--cpu",))
    assert log.steps == 3 * 2 and len(log.losses) == log.steps and log.tokens > 0
    assert (out / "adapter_model.safetensors").is_file()
    model = PeftModel.from_pretrained(Generator(load_params(dep.params_file)).model, str(out))
    assert sum("lora_" in name for name, _ in model.named_parameters()) > 0


def test_max_steps_caps_training_whatever_the_time_budget(tiny) -> None:
    from components.behaviour.assistant import Generator
    from components.behaviour.finetune import train_lora

    _, params = tiny
    generator = Generator(params)
    capped = params.finetune.model_copy(update={"epochs": 50, "batch_size": 1, "max_steps": 4})
    _, log = train_lora(generator.model, generator.tokenizer, _prompts(params), capped)
    assert log.steps == 4 and len(log.losses) == 4


def test_the_same_params_and_seed_give_the_same_base_model_files(tmp_path: Path) -> None:
    """Pretraining is defined by steps and a seed: two builds are byte-identical (what `dvc repro` relies on)."""
    from components.hashing import folder_digest

    texts = list(DOCS.values()) * 5
    tiny = TINY.model_copy(update={"pretrain_steps": 5})
    first = build_base_model(texts, tmp_path / "a", tiny)
    second = build_base_model(texts, tmp_path / "b", tiny)
    assert first["pretrain_steps"] == second["pretrain_steps"] == 5 and not first["truncated"]
    assert folder_digest(tmp_path / "a", None) == folder_digest(tmp_path / "b", None)
    other = build_base_model(texts, tmp_path / "c", tiny.model_copy(update={"seed": 1}))
    assert not other["truncated"]
    assert folder_digest(tmp_path / "c", None) != folder_digest(tmp_path / "a", None)


def test_the_safety_cap_truncates_a_fine_tune_and_says_so(tiny) -> None:
    from components.behaviour.assistant import Generator

    _, params = tiny
    generator = Generator(params)
    capped = params.finetune.model_copy(update={"epochs": 50, "batch_size": 1, "max_seconds": 1e-6})
    _, log = train_lora(generator.model, generator.tokenizer, _prompts(params), capped)
    assert log.steps == 1 and log.planned_steps == 150 and log.truncated
    _, full = train_lora(Generator(params).model, generator.tokenizer, _prompts(params),
                         capped.model_copy(update={"epochs": 2, "max_seconds": None}))  # fmt: skip
    assert full.steps == full.planned_steps == 6 and not full.truncated


def test_a_base_model_build_cut_short_by_the_cap_fails_its_stage_and_is_tagged_in_mlflow(tmp_path: Path) -> None:
    """`ragloop base-model` (the DVC stage's command) exits non-zero when the cap cut pretraining short, so DVC
    never records a model that `dvc repro` could not reproduce; the MLflow run says truncated and names the CPU."""
    import mlflow

    dep = Deployment.create(tmp_path)
    dep.write_params(base_model={**TINY.model_dump(), "pretrain_steps": 10_000, "max_seconds": 0.5})
    done = dep.cli("base-model", "--json")
    assert done.returncode == 3, done.stderr
    assert "truncated" in done.stderr and "of 10000 steps" in done.stderr
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'state/mlflow/mlflow.db'}")
    [run] = client.search_runs(
        [e.experiment_id for e in client.search_experiments()], "tags.ragloop.stage = 'base_model'"
    )
    assert run.data.tags["ragloop.truncated"] == "true" and run.info.status == "FAILED"
    assert run.data.tags["machine.cpu"] and run.data.tags["machine.torch"]
    assert 0 < run.data.metrics["pretrain_steps"] < 10_000


def test_a_saved_adapter_depends_on_its_training_alone(tiny, tmp_path: Path) -> None:
    """The adapter is a DVC output: no absolute path of this clone, no set order, no generated model card."""
    import json

    from components.behaviour.assistant import Generator
    from components.hashing import folder_digest

    _, params = tiny
    generator = Generator(params)
    one_step = params.finetune.model_copy(update={"max_steps": 1})
    peft_model, _ = train_lora(generator.model, generator.tokenizer, _prompts(params), one_step)
    a = save_adapter(peft_model, tmp_path / "clone-a" / "candidate", "data/models/base")
    b = save_adapter(peft_model, tmp_path / "clone-b" / "candidate", "data/models/base")
    assert folder_digest(a, None) == folder_digest(b, None)
    config = json.loads((a / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "data/models/base"
    assert config["target_modules"] == sorted(config["target_modules"]) and len(config["target_modules"]) > 1
    assert not (a / "README.md").exists()
