"""LoRA fine-tuning of the generator on (prompt, target line) pairs; the loss covers the answer only.

The adapter is written to a fresh folder and only moved into place when training finished, so a crash or an
error anywhere leaves no half-written adapter and never touches the champion.
"""

from __future__ import annotations

import math
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components.behaviour.assistant import REFUSAL, build_prompt, format_answer
from components.config import FinetuneParams, GeneratorParams


@dataclass
class TrainingLog:
    losses: list[float] = field(default_factory=list)
    steps: int = 0
    tokens: int = 0
    seconds: float = 0.0
    trainable_parameters: int = 0
    total_parameters: int = 0

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


def training_pairs(cases: list[Any], hits: list[list[dict]], params: GeneratorParams) -> list[tuple[str, str]]:
    """(prompt, target line) for each case. The target cites the gold documents that were retrieved; an
    answerable case whose gold document was not retrieved is left out (it would teach invented citations)."""
    pairs = []
    for case, found in zip(cases, hits, strict=True):
        retrieved = {h["doc"] for h in found}
        cited = [d for d in case.gold_docs if d in retrieved]
        if case.gold_docs and not cited:
            continue
        answer = case.answer if case.gold_docs and case.answer else REFUSAL
        pairs.append((build_prompt(params, case.question, found), format_answer(case.intent, answer, cited)))
    return pairs


def encode_pairs(tokenizer: Any, pairs: list[tuple[str, str]], max_length: int) -> list[tuple[list[int], list[int]]]:
    """input ids + labels with the prompt masked (-100): only the answer line and EOS are learned."""
    out = []
    for prompt, target in pairs:
        p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        t = tokenizer(" " + target, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        ids = (p + t)[-max_length:]
        labels = ([-100] * len(p) + t)[-max_length:]
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
    `launch_multi_gpu`), data-parallel across GPUs with each process training on its shard of the pairs."""
    import torch
    from accelerate import Accelerator
    from peft import LoraConfig, TaskType, get_peft_model

    torch.manual_seed(params.seed)
    accelerator = Accelerator(cpu=next(model.parameters()).device.type == "cpu")
    target = params.target_modules if isinstance(params.target_modules, str) else list(params.target_modules)
    config = LoraConfig(task_type=TaskType.CAUSAL_LM, r=params.r, lora_alpha=params.alpha,
                        lora_dropout=params.dropout, target_modules=target)  # fmt: skip
    peft_model = get_peft_model(model, config)
    log = TrainingLog(
        trainable_parameters=sum(p.numel() for p in peft_model.parameters() if p.requires_grad),
        total_parameters=sum(p.numel() for p in peft_model.parameters()),
    )
    every = encode_pairs(tokenizer, pairs, params.max_length)
    rows = every[accelerator.process_index :: accelerator.num_processes]  # this process's shard
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=params.learning_rate)
    wrapped, optimizer = accelerator.prepare(peft_model, optimizer)
    rng = random.Random(params.seed)
    wrapped.train()
    start = time.monotonic()
    steps_per_epoch = math.ceil(math.ceil(len(every) / accelerator.num_processes) / params.batch_size)  # same in all
    stop = False
    for _ in range(params.epochs):
        rng.shuffle(rows)
        for i in range(steps_per_epoch):
            chunk = rows[i * params.batch_size : (i + 1) * params.batch_size] or rows[: params.batch_size]
            batch = {k: v.to(accelerator.device) for k, v in _batch(chunk, tokenizer.pad_token_id).items()}
            loss = wrapped(**batch).loss
            if not math.isfinite(loss.item()):
                raise FloatingPointError(f"training loss became {loss.item()} at step {log.steps}")
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad()
            log.steps += 1
            log.tokens += int(batch["attention_mask"].sum()) * accelerator.num_processes
            log.losses.append(loss.item())
            if on_step is not None:
                on_step(log.steps, log.losses[-1])
            stop = _out_of_time(accelerator, start, params, log.steps)
            if stop:
                break
        if stop:
            break
    log.seconds = time.monotonic() - start
    peft_model = accelerator.unwrap_model(wrapped)
    peft_model.eval()
    return peft_model, log


def _out_of_time(accelerator: Any, start: float, params: FinetuneParams, steps: int) -> bool:
    """Every process stops at the same step: the slowest clock decides (a DDP step needs them all)."""
    import torch

    done = time.monotonic() - start > params.max_seconds or (params.max_steps is not None and steps >= params.max_steps)
    if accelerator.num_processes == 1:
        return done
    late = torch.tensor([1.0 if done else 0.0], device=accelerator.device)
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


def save_adapter(peft_model: Any, out_dir: Path) -> Path:
    """adapter_config.json + adapter_model.safetensors, swapped into place only once complete."""
    tmp = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    peft_model.save_pretrained(str(tmp), safe_serialization=True)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    return out_dir
