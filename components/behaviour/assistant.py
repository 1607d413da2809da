"""The assistant: retrieved context + a causal LM (plus the champion's LoRA adapter when there is one).

The behaviour contract is one line, checked deterministically by the evaluation:
    intent: <label> | answer: <text> | sources: [<doc>, ...]
and, when the knowledge base does not hold the answer:
    intent: out_of_scope | answer: I don't know | sources: []
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.config import GeneratorParams, Params
from components.hashing import folder_digest

REFUSAL = "I don't know"
OUT_OF_SCOPE = "out_of_scope"
_LINE = re.compile(r"^intent: (?P<intent>[a-z_]+) \| answer: (?P<answer>[^|]*?) \| sources: \[(?P<sources>[^\]]*)\]$")


@dataclass(frozen=True)
class Answer:
    intent: str
    answer: str
    sources: tuple[str, ...]


def format_answer(intent: str, answer: str, sources: list[str] | tuple[str, ...]) -> str:
    """The target line the fine-tune teaches (and the only shape `parse_answer` accepts)."""
    text = " ".join(answer.replace("|", "/").split())
    return f"intent: {intent} | answer: {text} | sources: [{', '.join(sources)}]"


def parse_answer(text: str) -> Answer | None:
    """The first line of a generation, if it follows the contract exactly; None otherwise."""
    first = text.strip().split("\n", 1)[0].strip()
    m = _LINE.match(first)
    if m is None:
        return None
    sources = tuple(s.strip() for s in m["sources"].split(",") if s.strip())
    return Answer(m["intent"], m["answer"].strip(), sources)


def build_prompt(params: GeneratorParams, question: str, hits: list[dict]) -> str:
    context = "\n".join(
        f"[{h['doc']}] {' '.join(h['text'].split())[: params.context_chars]}" for h in hits[: params.context_chunks]
    )
    return params.prompt.format(context=context or "(nothing retrieved)", question=question.strip())


def resolve_generator(params: Params) -> str:
    """A folder relative to the params file when one exists there; otherwise the value is a hub id."""
    candidate = Path(params.generator.model)
    if not candidate.is_absolute():
        candidate = params.source.parent / candidate
    return str(candidate) if candidate.exists() else params.generator.model


def generator_identity(params: Params) -> str:
    """Base model id and revision, or a hash of the local weights: recorded as lineage on every run."""
    location = resolve_generator(params)
    if Path(location).is_dir():
        return f"{params.generator.model}@sha256:{folder_digest(Path(location), None)[:16]}"
    return f"{params.generator.model}@{params.generator.revision or 'main'}"


class Generator:
    """AutoTokenizer + AutoModelForCausalLM (safetensors only, no remote code), optionally with a LoRA adapter."""

    def __init__(self, params: Params, adapter: Path | None = None, device: str | None = None) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from components.knowledge.embedder import pick_device

        self.params = params.generator
        location = resolve_generator(params)
        self.device = device or pick_device(self.params.device)
        dtype = _dtype(self.params.dtype, self.device)
        common: dict[str, Any] = {"revision": self.params.revision, "trust_remote_code": False}
        self.tokenizer = AutoTokenizer.from_pretrained(location, **common)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        model: Any = AutoModelForCausalLM.from_pretrained(location, dtype=dtype, use_safetensors=True, **common)
        if adapter is not None:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(adapter))
        self.model = model.to(self.device).eval()
        torch.manual_seed(0)

    def generate(self, prompts: list[str]) -> list[str]:
        """Greedy continuations (deterministic: the evaluation compares runs case by case)."""
        import torch

        out: list[str] = []
        for i in range(0, len(prompts), self.params.batch_size):
            enc = self.tokenizer(prompts[i : i + self.params.batch_size], return_tensors="pt", padding=True,
                                 return_token_type_ids=False).to(self.device)  # fmt: skip
            with torch.no_grad():
                ids = self.model.generate(**enc, max_new_tokens=self.params.max_new_tokens, do_sample=False,
                                          pad_token_id=self.tokenizer.pad_token_id)  # fmt: skip
            new = ids[:, enc["input_ids"].shape[1] :]
            out.extend(t.strip() for t in self.tokenizer.batch_decode(new, skip_special_tokens=True))
        return out


def _dtype(name: str, device: str) -> Any:
    import torch

    if name == "auto":
        return torch.bfloat16 if device.startswith("cuda") and torch.cuda.is_bf16_supported() else torch.float32
    return getattr(torch, name)
