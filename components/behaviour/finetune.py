"""LoRA fine-tuning of the generator on (prompt, target line) pairs; the loss covers the answer only.

The adapter is written to a fresh folder and only moved into place when training finished, so a crash or an
error anywhere leaves no half-written adapter and never touches the champion.
"""

from __future__ import annotations

import math
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components.behaviour.assistant import build_prompt, encode_turn
from components.behaviour.contract import Contract
from components.behaviour.training import Deadline, length_batches, lr_factor
from components.config import FinetuneParams, GeneratorParams


@dataclass
class TrainingLog:
    losses: list[float] = field(default_factory=list)
    steps: int = 0
    planned_steps: int = 0
    tokens: int = 0  # real (unpadded) tokens seen
    padded_tokens: int = 0  # tokens computed, padding included
    seconds: float = 0.0
    trainable_parameters: int = 0
    total_parameters: int = 0

    @property
    def truncated(self) -> bool:
        """The safety cap stopped the run before its planned steps."""
        return self.steps < self.planned_steps

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


def training_pairs(cases: list[Any], hits: list[list[dict]], params: GeneratorParams,
                   contract: Contract) -> list[tuple[str, str]]:  # fmt: skip
    """(prompt, target) for each case, the target written by the contract. `hits` may run deeper than the
    prompt's `context_chunks`: an answerable case is shown its gold document's best chunk first (what the answer
    should be grounded in, when retrieval found it at all), then the best of the rest; the target cites the gold
    documents shown. A case whose gold document was not retrieved is left out (it would teach invented
    citations)."""
    pairs = []
    for case, found in zip(cases, hits, strict=True):
        shown = _gold_first(found, case.gold_docs)[: params.context_chunks]
        cited = [d for d in case.gold_docs if d in {h["doc"] for h in shown}]
        if case.gold_docs and not cited:
            continue
        pairs.append((build_prompt(params, case.question, shown), contract.target_for(case, cited)))
    return pairs


def _gold_first(found: list[dict], gold: tuple[str, ...]) -> list[dict]:
    first = next((h for h in found if h["doc"] in gold), None)
    return found if first is None else [first, *(h for h in found if h is not first)]


class PairEncodingError(ValueError):
    """A training pair that would teach nothing, or never to stop: refused before any training step."""


def encode_pairs(tokenizer: Any, pairs: list[tuple[str, str]], max_length: int) -> list[tuple[list[int], list[int]]]:
    """input ids + labels with the prompt masked (-100): only the answer and its end token are learned. Each pair
    is encoded by `encode_turn`, as the generator encodes prompts at answer time (its chat template, if any), and
    cut to its last `max_length` tokens. A pair whose learned labels are empty (a template that drops the
    assistant turn) or hold no EOS (a template whose end-of-turn is not the tokenizer's eos) is refused."""
    out = []
    for i, (prompt, target) in enumerate(pairs):
        where = f"training pair {i} (prompt ending {prompt[-48:]!r}, target {target[:48]!r})"
        try:
            p, t = encode_turn(tokenizer, prompt, target)
        except ValueError as exc:
            raise PairEncodingError(f"{where}: {exc}") from None
        ids = (p + t)[-max_length:]
        labels = ([-100] * len(p) + t)[-max_length:]
        learned = [token for token in labels if token != -100]
        if not learned:
            raise PairEncodingError(
                f"{where}: no answer token left to learn ({len(p)} prompt + {len(t)} answer tokens, max_length "
                f"{max_length}): expected the target line and its end token after the prompt"
            )
        if tokenizer.eos_token_id not in learned:
            raise PairEncodingError(
                f"{where}: the learned answer holds no end-of-sequence token {tokenizer.eos_token!r} (id "
                f"{tokenizer.eos_token_id}), so the model would never learn to stop; it ends "
                f"{tokenizer.decode(learned[-6:])!r}: expected the tokenizer's eos_token at the end of the answer "
                "(with a chat template: its end-of-turn token)"
            )
        out.append((ids, labels))
    return out


def _batch(rows: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, Any]:
    import torch

    width = max(len(ids) for ids, _ in rows)
    ids = [[pad_id] * (width - len(i)) + i for i, _ in rows]  # left padding, as in generation
    labels = [[-100] * (width - len(lab)) + lab for _, lab in rows]
    mask = [[0] * (width - len(i)) + [1] * len(i) for i, _ in rows]
    return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels), "attention_mask": torch.tensor(mask)}


def train_lora(model: Any, tokenizer: Any, pairs: list[tuple[str, str]], params: FinetuneParams,
               on_step: Callable[[int, float], None] | None = None) -> tuple[Any, TrainingLog]:  # fmt: skip
    """LoRA training through `accelerate`: one device in this process, or, under `accelerate launch` (see
    `launch_multi_gpu`), data-parallel across GPUs with each process training on its shard of the pairs.

    The work is planned up front (`epochs` passes, at most `max_steps` steps) and seeded; batches group pairs of
    similar length. Only the optional `max_seconds` cap can end it early, and then `log.truncated` is True."""
    import torch
    from accelerate import Accelerator
    from peft import LoraConfig, TaskType, get_peft_model

    torch.manual_seed(params.seed)
    accelerator = Accelerator(cpu=next(model.parameters()).device.type == "cpu")
    target = params.target_modules if isinstance(params.target_modules, str) else list(params.target_modules)
    config = LoraConfig(task_type=TaskType.CAUSAL_LM, r=params.r, lora_alpha=params.alpha,
                        lora_dropout=params.dropout, target_modules=target)  # fmt: skip
    peft_model = get_peft_model(model, config)
    every = encode_pairs(tokenizer, pairs, params.max_length)
    rows = every[accelerator.process_index :: accelerator.num_processes]  # this process's shard
    steps_per_epoch = math.ceil(math.ceil(len(every) / accelerator.num_processes) / params.batch_size)  # same in all
    planned = min(params.epochs * steps_per_epoch, params.max_steps or math.inf)
    log = TrainingLog(
        planned_steps=int(planned),
        trainable_parameters=sum(p.numel() for p in peft_model.parameters() if p.requires_grad),
        total_parameters=sum(p.numel() for p in peft_model.parameters()),
    )
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=params.learning_rate)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_factor(params.lr_schedule, params.warmup_steps, log.planned_steps)
    )
    wrapped, optimizer = accelerator.prepare(peft_model, optimizer)
    rng = random.Random(params.seed)
    lengths = [len(ids) for ids, _ in rows]
    wrapped.train()
    cap = Deadline(params.max_seconds)
    while log.steps < log.planned_steps:
        batches = length_batches(lengths, params.batch_size, rng)
        for i in range(min(steps_per_epoch, log.planned_steps - log.steps)):
            chunk = [rows[j] for j in (batches[i] if i < len(batches) else batches[0])]
            batch = {k: v.to(accelerator.device) for k, v in _batch(chunk, tokenizer.pad_token_id).items()}
            loss = wrapped(**batch).loss
            if not math.isfinite(loss.item()):
                raise FloatingPointError(f"training loss became {loss.item()} at step {log.steps}")
            accelerator.backward(loss)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()
            log.steps += 1
            log.tokens += int(batch["attention_mask"].sum()) * accelerator.num_processes
            log.padded_tokens += batch["attention_mask"].numel() * accelerator.num_processes
            log.losses.append(loss.item())
            if on_step is not None:
                on_step(log.steps, log.losses[-1])
            if _out_of_time(accelerator, cap):
                log.seconds = cap.elapsed()
                return _finish(accelerator, wrapped), log
    log.seconds = cap.elapsed()
    return _finish(accelerator, wrapped), log


def _finish(accelerator: Any, wrapped: Any) -> Any:
    peft_model = accelerator.unwrap_model(wrapped)
    peft_model.eval()
    return peft_model


def _out_of_time(accelerator: Any, cap: Deadline) -> bool:
    """Every process stops at the same step: the slowest clock decides (a DDP step needs them all)."""
    import torch

    if cap.max_seconds is None:
        return False
    if accelerator.num_processes == 1:
        return cap.passed()
    late = torch.tensor([1.0 if cap.passed() else 0.0], device=accelerator.device)
    return bool(accelerator.reduce(late, reduction="max").item() > 0)


def gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def launch_multi_gpu(params_file: Path, pairs: list[tuple[str, str]], out_dir: Path, processes: int,
                     extra: tuple[str, ...] = ()) -> TrainingLog:  # fmt: skip
    """Train under `accelerate launch` (one process per GPU; `extra` adds launcher flags) and return the log;
    the main process writes the adapter to out_dir. Used by the fine-tune flow when several GPUs are present."""
    import json
    import subprocess
    import sys
    import tempfile

    with tempfile.TemporaryDirectory(prefix="ragloop-ddp-") as tmp:
        pairs_file, log_file = Path(tmp) / "pairs.json", Path(tmp) / "log.json"
        pairs_file.write_text(json.dumps(pairs))
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(processes),
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               *(["--multi_gpu"] if processes > 1 else []), *extra,
               "-m", "components.behaviour.finetune_worker", str(params_file), str(pairs_file), str(out_dir),
               str(log_file)]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"accelerate launch failed ({done.returncode}): {done.stderr[-3000:]}")
        data = json.loads(log_file.read_text())
    return TrainingLog(**data)


def save_adapter(peft_model: Any, out_dir: Path, base: str | None = None) -> Path:
    """adapter_config.json + adapter_model.safetensors, swapped into place only once complete.

    The folder is a DVC output, so its bytes must depend on the training alone: peft writes the base model's
    absolute path (a clone elsewhere differs), lists target modules in set order (differs between processes) and
    adds a generated model card; the config gets `base` (the configured model, e.g. `data/models/base`) and sorted
    modules, and the card is dropped. The loader is always given its base model, never this path."""
    import json

    tmp = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    peft_model.save_pretrained(str(tmp), safe_serialization=True)
    config_file = tmp / "adapter_config.json"
    config = json.loads(config_file.read_text())
    if isinstance(config.get("target_modules"), list):
        config["target_modules"] = sorted(config["target_modules"])
    if base is not None:
        config["base_model_name_or_path"] = base
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    (tmp / "README.md").unlink(missing_ok=True)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    return out_dir
