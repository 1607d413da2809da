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
    import torch
    from peft import LoraConfig, TaskType, get_peft_model

    torch.manual_seed(params.seed)
    target = params.target_modules if isinstance(params.target_modules, str) else list(params.target_modules)
    config = LoraConfig(task_type=TaskType.CAUSAL_LM, r=params.r, lora_alpha=params.alpha,
                        lora_dropout=params.dropout, target_modules=target)  # fmt: skip
    peft_model = get_peft_model(model, config)
    log = TrainingLog(
        trainable_parameters=sum(p.numel() for p in peft_model.parameters() if p.requires_grad),
        total_parameters=sum(p.numel() for p in peft_model.parameters()),
    )
    rows = encode_pairs(tokenizer, pairs, params.max_length)
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=params.learning_rate)
    rng = random.Random(params.seed)
    peft_model.train()
    device = next(peft_model.parameters()).device
    start = time.monotonic()
    for _ in range(params.epochs):
        rng.shuffle(rows)
        for i in range(0, len(rows), params.batch_size):
            batch = {
                k: v.to(device) for k, v in _batch(rows[i : i + params.batch_size], tokenizer.pad_token_id).items()
            }
            loss = peft_model(**batch).loss
            if not math.isfinite(loss.item()):
                raise FloatingPointError(f"training loss became {loss.item()} at step {log.steps}")
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            log.steps += 1
            log.tokens += int(batch["attention_mask"].sum())
            log.losses.append(loss.item())
            if on_step is not None:
                on_step(log.steps, log.losses[-1])
            if time.monotonic() - start > params.max_seconds:
                break
        if time.monotonic() - start > params.max_seconds:
            break
    log.seconds = time.monotonic() - start
    peft_model.eval()
    return peft_model, log


def save_adapter(peft_model: Any, out_dir: Path) -> Path:
    """adapter_config.json + adapter_model.safetensors, swapped into place only once complete."""
    tmp = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    peft_model.save_pretrained(str(tmp), safe_serialization=True)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    return out_dir
