"""The assistant: retrieved context + a causal LM (plus the champion's LoRA adapter when there is one).

What its answer must look like is declared in the behaviour contract (components/behaviour/contract.py,
data/behaviour/contract.yaml), which parses it, writes the fine-tune's targets and checks it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from components.config import GeneratorParams, Params
from components.hashing import folder_digest

if TYPE_CHECKING:
    from components.behaviour.token_stream import Listener


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
        self.grounding: Any = None  # the contract's markers, when it declares them and generator.grounded is on
        self.labels: list[str] | None = None
        if self.params.grounded:
            from components.behaviour.contract import contract_for

            contract = contract_for(params)
            self.grounding = contract.grounding
            self.labels = sorted(contract.labels) if contract.labels is not None else None
        torch.manual_seed(0)

    def generate(self, prompts: list[str], sources: list[list[str]] | None = None,
                 listeners: Sequence[Listener | None] | None = None) -> list[str]:  # fmt: skip
        """Greedy continuations (deterministic: the evaluation compares runs case by case), each stopped at the
        first of `eos_ids`. With `sources` (the documents each prompt's context shows) and `generator.grounded`,
        the line can only cite those documents and name known labels, after the markers the contract declares
        (components/behaviour/constrain.py). With `listeners`, prompt i's text also goes to `listeners[i]` (None:
        not streamed) as it is generated, adding up to the continuation returned (token_stream.py)."""
        import torch

        from components.behaviour.constrain import GroundedDecoding
        from components.behaviour.token_stream import BatchStreamer

        pad = self.tokenizer.pad_token_id
        out: list[str] = []
        for i in range(0, len(prompts), self.params.batch_size):
            rows = [encode_turn(self.tokenizer, p)[0] for p in prompts[i : i + self.params.batch_size]]
            width = max(len(r) for r in rows)
            ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=self.device)  # left padding
            mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=self.device)
            grounded = None
            if sources is not None and self.grounding is not None:
                batch_sources = sources[i : i + self.params.batch_size]
                grounded = GroundedDecoding(self.tokenizer, width, batch_sources, self.labels, self.eos_ids,
                                            **self.grounding)  # fmt: skip
            streamed = None if listeners is None else listeners[i : i + self.params.batch_size]
            streamer = BatchStreamer(self.tokenizer, streamed) if streamed and any(streamed) else None
            with torch.no_grad():
                done = self.model.generate(input_ids=ids, attention_mask=mask, do_sample=False, pad_token_id=pad,
                                           max_new_tokens=self.params.max_new_tokens,
                                           eos_token_id=self.eos_ids or None,
                                           prefix_allowed_tokens_fn=grounded, streamer=streamer)  # fmt: skip
            out.extend(t.strip() for t in self.tokenizer.batch_decode(done[:, width:], skip_special_tokens=True))
        return out


def _dtype(name: str, device: str) -> Any:
    import torch

    if name == "auto":
        return torch.bfloat16 if device.startswith("cuda") and torch.cuda.is_bf16_supported() else torch.float32
    return getattr(torch, name)
