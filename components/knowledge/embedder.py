"""The embedder (a sentence-transformers model) and its identity.

The model runs through plain transformers with sentence-transformers' own pipeline (components/knowledge/
sentence_model.py: the same vectors, without importing sentence_transformers on every command).

The identity (model + revision, or a hash of the local weight files) is part of the index key: a different
identity means a different collection, so a store never mixes vectors of two embedders. Hashing the weights
uses a stat fast path (size + mtime_ns) so that it costs nothing when the files did not change.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from components.config import EmbedderParams
from components.hashing import folder_digest


class EmbedderError(RuntimeError):
    """The embedding model could not be found or loaded."""


def resolve_model(spec: str) -> str:
    """'package:NAME' -> the model folder shipped in that package; a path or hub id is returned as is."""
    if spec.startswith("package:"):
        name = spec.removeprefix("package:")
        try:
            module = importlib.import_module(name)
        except ImportError:
            raise EmbedderError(
                f"embedder.model={spec!r}: package {name!r} is not installed (pip install {name})"
            ) from None
        get_path = getattr(module, "get_model_path", None)
        if get_path is None:
            raise EmbedderError(f"embedder.model={spec!r}: package {name!r} has no get_model_path()")
        return str(get_path())
    return spec


def embedder_identity(params: EmbedderParams, cache_file: Path | None = None) -> str:
    """A short string that changes whenever the vectors could change."""
    location = resolve_model(params.model)
    if Path(location).is_dir():
        digest = folder_digest(Path(location), cache_file)
        return f"{params.model}@sha256:{digest[:16]}"
    return f"{params.model}@{params.revision or 'main'}"


def pick_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


class Embedder:
    """Loads the model on first use; `encode` returns L2-normalised float32 vectors."""

    def __init__(self, params: EmbedderParams, identity: str) -> None:
        self.params = params
        self.identity = identity
        self._model: Any = None

    def _load(self) -> Any:
        if self._model is None:
            from components.knowledge.sentence_model import load_sentence_model

            location = resolve_model(self.params.model)
            try:
                self._model = load_sentence_model(location, self.params.revision, pick_device(self.params.device))
            except OSError as exc:
                offline = os.environ.get("HF_HUB_OFFLINE") == "1"
                hint = " (HF_HUB_OFFLINE=1: only local folders or package: models load)" if offline else ""
                raise EmbedderError(f"embedder.model={self.params.model!r} cannot be loaded{hint}: {exc}") from None
        return self._model

    def encode(self, texts: list[str], progress: Callable[[int], None] | None = None) -> np.ndarray:
        return encode_batched(self._load(), texts, self.params.batch_size, self.params.batch_tokens, progress)

    def tokenizer_window(self) -> tuple[Any, int] | None:
        """The model's tokenizer and its window (the most tokens it reads, special tokens included: the
        model's `max_seq_length`); None when the model has no tokenizer or no window."""
        model = self._load()
        tokenizer, window = getattr(model, "tokenizer", None), getattr(model, "max_seq_length", None)
        return (tokenizer, int(window)) if callable(tokenizer) and window else None


PLAN_WINDOW = 8192  # texts tokenized and ordered together


def encode_batched(
    model: Any, texts: list[str], max_texts: int, max_tokens: int, progress: Callable[[int], None] | None = None
) -> np.ndarray:
    """L2-normalised float32 vectors of `texts`, in their order. Longest first, then batches of equal padded size
    (`max_tokens`) rather than of equal count: long texts go in small batches that stay in cache, short ones in
    large batches that amortise the call. Works through the texts in windows of PLAN_WINDOW, so a large corpus is
    never tokenized at once. A model without a tokenizer gets plain batches of `max_texts`."""
    out = np.empty((len(texts), model.get_embedding_dimension()), dtype=np.float32)
    for start in range(0, len(texts), PLAN_WINDOW):
        window = texts[start : start + PLAN_WINDOW]
        lengths = token_lengths(model, window)
        budget = max_tokens if lengths is not None else 0
        if lengths is None:
            lengths = np.array([len(t) for t in window], dtype=np.int64)  # only to order them
        order = np.argsort(-lengths, kind="stable")
        for batch in plan_batches(lengths[order], max_texts, budget):
            idx = order[batch]
            out[start + idx] = model.encode(
                [window[i] for i in idx],
                batch_size=len(idx),
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
            if progress is not None:
                progress(len(idx))
    return out


def token_lengths(model: Any, texts: list[str]) -> np.ndarray | None:
    """What each text costs the model: its token count after truncation; None when the model has no tokenizer."""
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None or not callable(tokenizer):
        return None
    limit = getattr(model, "max_seq_length", None)
    ids = tokenizer(texts, truncation=limit is not None, max_length=limit, return_attention_mask=False,
                    return_token_type_ids=False)["input_ids"]  # fmt: skip
    return np.array([len(x) for x in ids], dtype=np.int64)


def plan_batches(lengths: np.ndarray, max_texts: int, max_tokens: int) -> list[slice]:
    """Consecutive slices over `lengths` (sorted longest first) with at most `max_texts` texts and at most
    `max_tokens` padded tokens (count x longest) each; a text longer than `max_tokens` goes alone.
    `max_tokens=0` gives plain batches of `max_texts`."""
    batches, start, n = [], 0, len(lengths)
    while start < n:
        size = max_texts
        if max_tokens > 0:
            size = max(1, min(max_texts, max_tokens // max(1, int(lengths[start]))))
        batches.append(slice(start, min(n, start + size)))
        start += size
    return batches
