"""Build the offline default generator: a byte-level BPE tokenizer trained on the corpus and a small
Llama-architecture causal LM pretrained on it for a fixed number of steps, saved with `save_pretrained` so that
it loads through exactly the same `from_pretrained` path as a hub model.

Pretraining only gives generation a base to stand on; the behaviour (format, labels, citations) comes from the
LoRA fine-tune, which is why it is short. It is defined by steps and a seed, so two builds give the same weights
(bench/README.md, "The offline default model").
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from components.behaviour.training import Deadline, lr_factor
from components.config import BaseModelParams, ChunkingParams, Params

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>"]


def train_tokenizer(lines: Iterable[str], vocab_size: int) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tk.train_from_iterator(lines, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def build_model(tokenizer: Any, params: BaseModelParams) -> Any:
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(params.seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=params.hidden_size,
        intermediate_size=params.intermediate_size,
        num_hidden_layers=params.layers,
        num_attention_heads=params.heads,
        num_key_value_heads=params.heads,
        max_position_embeddings=params.context,
        tie_word_embeddings=params.tie_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return AutoModelForCausalLM.from_config(config)


def pretrain(model: Any, tokenizer: Any, texts: list[str], params: BaseModelParams) -> dict[str, Any]:
    """Next-token training on packed corpus windows for `pretrain_steps` steps (warm-up, then cosine decay);
    `truncated` is True when the optional `max_seconds` cap stopped it first."""
    import torch

    ids: list[int] = []
    for text in texts:
        ids.extend([*tokenizer(text)["input_ids"], tokenizer.eos_token_id])
    windows = [ids[i : i + params.seq_len] for i in range(0, len(ids) - params.seq_len, params.seq_len)]
    planned = params.pretrain_steps if windows else 0
    rng = random.Random(params.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=params.learning_rate, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor("cosine", params.warmup_steps, planned))
    model.train()
    steps, loss_value, cap = 0, math.nan, Deadline(params.max_seconds)
    while steps < planned and not cap.passed():
        batch = torch.tensor(rng.sample(windows, min(params.batch_size, len(windows))))
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        steps, loss_value = steps + 1, loss.item()
    model.eval()
    seconds = cap.elapsed()
    tokens = steps * min(params.batch_size, len(windows)) * params.seq_len
    return {"pretrain_steps": steps, "pretrain_planned_steps": planned, "pretrain_loss": loss_value,
            "pretrain_tokens": tokens, "pretrain_seconds": round(seconds, 2),
            "pretrain_tokens_per_s": round(tokens / seconds, 1) if seconds else 0.0,
            "truncated": steps < planned}  # fmt: skip


def build_base_model(texts: list[str], out_dir: Path, params: BaseModelParams) -> dict[str, Any]:
    """Tokenizer + model + pretraining, saved as safetensors; returns what was built (for tracking)."""
    import torch

    torch.manual_seed(params.seed)
    lines = [line for text in texts for line in text.splitlines() if line.strip()]
    tokenizer = train_tokenizer(lines, params.vocab_size)
    model = build_model(tokenizer, params)
    stats = pretrain(model, tokenizer, texts, params)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    info = {**stats, "parameters": sum(p.numel() for p in model.parameters()), "vocab": len(tokenizer)}
    # Only what the weights depend on goes next to them: timings and the machine vary, the files must not.
    reproducible = {k: v for k, v in info.items() if k not in {"pretrain_seconds", "pretrain_tokens_per_s"}}
    (tmp / "ragloop_base.json").write_text(json.dumps({"params": params.model_dump(), **reproducible}, indent=2))
    _replace_dir(tmp, out_dir)
    return info


def _replace_dir(src: Path, dst: Path) -> None:
    """Swap the finished folder in, so a killed build never leaves a half-written model where loaders look."""
    import shutil

    if dst.exists():
        old = dst.with_name(dst.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        dst.rename(old)
        src.rename(dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        src.rename(dst)


def pretrain_chunking(params: Params) -> ChunkingParams | None:
    """The index's chunking when the base model pretrains on chunks (as prompts show them), else None."""
    return params.chunking if params.base_model.pretrain_on == "chunks" else None


def corpus_texts(docs_root: Path, suffixes: tuple[str, ...], max_bytes: int,
                 chunking: ChunkingParams | None = None) -> list[str]:  # fmt: skip
    """The knowledge base as text, through the same parsers as the index (documents that fail are skipped).

    With `chunking`, each document is cut by the index's own chunker and every chunk is written the way the
    assistant's prompt shows retrieved context, `[<doc path>] <text>`: the model then learns the paths it will
    have to cite and what they contain, not only the prose."""
    from components.knowledge.chunking import split_text
    from components.knowledge.documents import DocumentError, parse_document, read_bytes, scan_documents

    texts = []
    for rel in sorted(scan_documents(docs_root, suffixes).files):
        try:
            text = parse_document(rel, read_bytes(docs_root, rel, max_bytes)).text
        except DocumentError:
            continue
        if chunking is None:
            texts.append(text)
        else:
            texts.extend(f"[{rel}] {' '.join(piece.split())}" for piece in split_text(text, chunking))
    return texts
