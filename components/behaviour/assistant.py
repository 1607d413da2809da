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


SYSTEM_ATTRIBUTE = "ragloop_system"  # set on its tokenizer by `Generator`: training receives that tokenizer


def encode_turn(tokenizer: Any, prompt: str, target: str | None = None) -> tuple[list[int], list[int]]:
    """(prompt ids, answer ids): the one encoding that training and answering share, so they cannot drift apart.

    With a chat template, `prompt` (what `build_prompt` returns) is the user message, after the system message
    `generator.system` if set; the prompt is rendered with the generation prompt, and the answer is exactly what
    the template puts after it when `target` is the assistant message (its end-of-turn token included). Without
    one: the prompt as it is, then " " + target + EOS. Never `add_special_tokens`: a template writes its own BOS."""

    def ids(text: str) -> list[int]:
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])

    if not getattr(tokenizer, "chat_template", None):
        return ids(prompt), [] if target is None else [*ids(" " + target), tokenizer.eos_token_id]
    system = getattr(tokenizer, SYSTEM_ATTRIBUTE, None)
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": prompt})
    head = ids(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
    if target is None:
        return head, []
    turn = [*messages, {"role": "assistant", "content": target}]
    whole = ids(tokenizer.apply_chat_template(turn, tokenize=False))
    if whole[: len(head)] != head:  # then training would teach a prompt the model never sees at answer time
        at = next((i for i, (a, b) in enumerate(zip(head, whole, strict=False)) if a != b), len(whole))
        raise ValueError(
            "the chat template's prompt (add_generation_prompt=True) is not a token prefix of the conversation with "
            f"the answer: they part at token {at}, prompt {tokenizer.decode(head[at : at + 8])!r} vs conversation "
            f"{tokenizer.decode(whole[at : at + 8])!r}"
        )
    return head, whole[len(head) :]


def context_docs(params: GeneratorParams, hits: list[dict]) -> list[str]:
    """The documents the prompt's context shows (what the answer may cite), in rank order, once each."""
    return list(dict.fromkeys(h["doc"] for h in hits[: params.context_chunks]))


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
    """AutoTokenizer + AutoModelForCausalLM (safetensors only, no remote code), optionally with a LoRA adapter.

    Prompts are encoded by `encode_turn` (through the tokenizer's chat template when it has one, with
    `generator.system`), exactly as `encode_pairs` encodes them for training on `self.tokenizer`."""

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
        setattr(self.tokenizer, SYSTEM_ATTRIBUTE, self.params.system)
        model: Any = AutoModelForCausalLM.from_pretrained(location, dtype=dtype, use_safetensors=True, **common)
        # stop at any end token the model declares (a chat model's end-of-turn, e.g. <|im_end|>) or the tokenizer's
        configured = model.generation_config.eos_token_id
        ends = configured if isinstance(configured, list) else [configured]
        self.eos_ids = sorted({i for i in [*ends, self.tokenizer.eos_token_id] if i is not None})
        if adapter is not None:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(adapter))
        self.model = model.to(self.device).eval()
        self.labels = _labels(params) if self.params.grounded else None
        torch.manual_seed(0)

    def generate(self, prompts: list[str], sources: list[list[str]] | None = None) -> list[str]:
        """Greedy continuations (deterministic: the evaluation compares runs case by case), each stopped at the
        first of `eos_ids`. With `sources` (the documents each prompt's context shows) and `generator.grounded`,
        the line can only cite those documents and name known labels (components/behaviour/constrain.py)."""
        import torch

        from components.behaviour.constrain import GroundedDecoding

        pad = self.tokenizer.pad_token_id
        out: list[str] = []
        for i in range(0, len(prompts), self.params.batch_size):
            rows = [encode_turn(self.tokenizer, p)[0] for p in prompts[i : i + self.params.batch_size]]
            width = max(len(r) for r in rows)
            ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=self.device)  # left padding
            mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=self.device)
            grounded = None
            if sources is not None and self.params.grounded:
                batch_sources = sources[i : i + self.params.batch_size]
                grounded = GroundedDecoding(self.tokenizer, width, batch_sources, self.labels, self.eos_ids)
            with torch.no_grad():
                done = self.model.generate(input_ids=ids, attention_mask=mask, do_sample=False, pad_token_id=pad,
                                           max_new_tokens=self.params.max_new_tokens,
                                           eos_token_id=self.eos_ids or None,
                                           prefix_allowed_tokens_fn=grounded)  # fmt: skip
            out.extend(t.strip() for t in self.tokenizer.batch_decode(done[:, width:], skip_special_tokens=True))
        return out


def _labels(params: Params) -> list[str] | None:
    """The contract's labels (data/behaviour/labels.json), when the deployment has them."""
    from components.behaviour.suite import load_labels

    path = params.paths.behaviour / "labels.json"
    return list(load_labels(path)) if path.is_file() else None


def _dtype(name: str, device: str) -> Any:
    import torch

    if name == "auto":
        return torch.bfloat16 if device.startswith("cuda") and torch.cuda.is_bf16_supported() else torch.float32
    return getattr(torch, name)
