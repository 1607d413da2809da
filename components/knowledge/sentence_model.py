"""A sentence-transformers model run without sentence-transformers: the same vectors, without importing
sentence_transformers (12.6 s of a 14.7 s cold `ragloop query` on a slow 2-core machine). The tokenizer is
transformers' AutoTokenizer; the Transformer module is components/knowledge/encoders.py (plain BERT on torch.nn
alone, anything else through transformers' AutoModel).

A sentence-transformers folder describes its pipeline in `modules.json`: a Transformer (the folder itself or a
subfolder), a Pooling (`1_Pooling/config.json`) and, for normalised models, a Normalize. This module runs exactly
that pipeline for the common case (one Transformer, pooling by cls / mean / max / mean_sqrt_len_tokens, an optional
Normalize, no default prompt) with the truncation of `sentence_bert_config.json`. A folder with anything else
(Dense layers, other poolings, prompts) is not guessed at: `load_sentence_model` hands it to sentence-transformers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

SUPPORTED_POOLING = ("cls", "max", "mean", "mean_sqrt_len_tokens")
# legacy pooling flags, in sentence-transformers' order of concatenation
_LEGACY_POOLING = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
# The settings of a Transformer module (sentence_bert_config.json) this path reproduces, with the values it
# reproduces (None: any value); another key or value sends the folder to sentence-transformers.
_TRANSFORMER_SETTINGS = {
    "max_seq_length": None,
    "do_lower_case": None,
    "transformer_task": "feature-extraction",
    "module_output_name": "token_embeddings",
    "modality_config": {"text": {"method": "forward", "method_output_name": "last_hidden_state"}},
}
_POOLING_SETTINGS = {
    "embedding_dimension",
    "word_embedding_dimension",
    "pooling_mode",
    "include_prompt",
    *_LEGACY_POOLING,
}
_PLAIN = ["Transformer", "Pooling"]
_ST_TYPE = "sentence_transformers.models.{}"
# What a hub snapshot needs: configs, tokenizer files and weights, not the ONNX / OpenVINO exports beside them.
_HUB_FILES = ["*.json", "*.txt", "*.model", "*.safetensors", "*.bin"]
_HUB_SKIP = ["onnx/*", "openvino/*", "*.onnx", "*.h5", "*.msgpack", "*.ot"]


def _kind(module: dict[str, Any]) -> str:
    """'Transformer', 'Pooling', 'Normalize' (sentence-transformers 2-6 spell the module path differently), or
    the type as written for anything else."""
    ref = str(module.get("type", ""))
    name = ref.rsplit(".", 1)[-1]
    known = ref.startswith("sentence_transformers.") and name in {"Transformer", "Pooling", "Normalize"}
    return name if known and not module.get("kwargs") else ref


class Pipeline:
    """What a model folder's sentence-transformers config asks for. `unsupported` names what the plain
    transformers path would not reproduce exactly (empty: nothing)."""

    def __init__(self, folder: Path) -> None:
        # no modules.json: a plain transformers model, which sentence-transformers gives mean pooling, no Normalize
        modules = _read(folder / "modules.json") or [{"type": _ST_TYPE.format("Transformer")},
                                                      {"type": _ST_TYPE.format("Pooling"), "path": "-"}]  # fmt: skip
        kinds = [_kind(m) for m in modules]
        paths = {kind: m.get("path", "") for kind, m in zip(kinds, modules, strict=True)}
        self.transformer = folder / paths.get("Transformer", "")
        settings = _read(self.transformer / "sentence_bert_config.json") or {}
        pooling = _read(folder / paths.get("Pooling", "-") / "config.json") or {}
        self.max_seq_length: int | None = settings.get("max_seq_length")
        self.lower_case = bool(settings.get("do_lower_case", False))
        self.pooling = _pooling_modes(pooling)
        self.normalize = "Normalize" in kinds
        prompt = (_read(folder / "config_sentence_transformers.json") or {}).get("default_prompt_name")
        self.unsupported = [
            *([f"modules {kinds}"] if kinds not in (_PLAIN, [*_PLAIN, "Normalize"]) else []),
            *(f"{k}={v!r}" for k, v in settings.items()
              if k not in _TRANSFORMER_SETTINGS or _TRANSFORMER_SETTINGS[k] not in (None, v)),
            *(f"pooling {m}" for m in self.pooling if m not in SUPPORTED_POOLING),
            *(f"pooling {k}" for k in pooling if k not in _POOLING_SETTINGS),
            *([f"default prompt {prompt!r}"] if prompt else []),
        ]  # fmt: skip


def _read(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _pooling_modes(config: dict[str, Any]) -> tuple[str, ...]:
    if "pooling_mode" in config:
        mode = config["pooling_mode"]
        return (mode,) if isinstance(mode, str) else tuple(mode)
    return tuple(mode for key, mode in _LEGACY_POOLING.items() if config.get(key)) or ("mean",)


class SentenceModel:
    """The duck type `encode_batched` and the benchmarks use (`encode`, `tokenizer`, `max_seq_length`,
    `get_embedding_dimension`), as sentence-transformers' SentenceTransformer offers it."""

    def __init__(self, pipeline: Pipeline, device: str) -> None:
        from transformers import AutoTokenizer

        from components.knowledge.encoders import load_encoder

        self.pipeline, self.device = pipeline, device
        config = _read(pipeline.transformer / "config.json") or {}
        self.tokenizer = AutoTokenizer.from_pretrained(str(pipeline.transformer))
        self.model = load_encoder(pipeline.transformer, config, device)
        # sentence-transformers' window: the module's max_seq_length, else the tokenizer's capped by the model's
        positions = config.get("max_position_embeddings", -1)
        self.max_seq_length: int = pipeline.max_seq_length or min(
            self.tokenizer.model_max_length, positions if positions > 0 else self.tokenizer.model_max_length
        )

    def get_embedding_dimension(self) -> int:
        return self.model.hidden_size * len(self.pipeline.pooling)

    def encode(self, texts: list[str], batch_size: int = 32, normalize_embeddings: bool = False,
               convert_to_numpy: bool = True, show_progress_bar: bool = False) -> np.ndarray:  # fmt: skip
        """float32 vectors of `texts` in their order, `batch_size` texts per forward pass (the last two
        arguments are accepted for sentence-transformers' signature: the result is always a numpy array)."""
        out = np.empty((len(texts), self.get_embedding_dimension()), dtype=np.float32)
        for start in range(0, len(texts), batch_size):
            out[start : start + batch_size] = self._forward(texts[start : start + batch_size], normalize_embeddings)
        return out

    def _forward(self, texts: list[str], normalize: bool) -> np.ndarray:
        import torch

        if self.pipeline.lower_case:
            texts = [t.lower() for t in texts]
        batch = self.tokenizer(texts, padding=True, truncation="longest_first", max_length=self.max_seq_length,
                               return_tensors="pt").to(self.device)  # fmt: skip
        with torch.inference_mode():
            tokens = self.model(**batch)
            vectors = torch.cat([_pool(mode, tokens, batch["attention_mask"]) for mode in self.pipeline.pooling], 1)
            if self.pipeline.normalize or normalize:
                vectors = torch.nn.functional.normalize(vectors, p=2, dim=1)
        return vectors.float().cpu().numpy()


def _pool(mode: str, tokens: Any, attention_mask: Any) -> Any:
    """sentence-transformers' Pooling for one mode over (batch, tokens, dim), ignoring padding."""
    import torch

    mask = attention_mask.unsqueeze(-1).to(tokens.dtype)
    if mode == "cls":  # the first real token (padding may be on the left)
        first = attention_mask.to(torch.int).argmax(dim=1)
        return tokens[torch.arange(tokens.shape[0], device=tokens.device), first]
    if mode == "max":
        return tokens.masked_fill(mask == 0, float("-inf")).max(dim=1).values
    counts = torch.clamp(mask.sum(dim=1), min=1e-9)
    return (tokens * mask).sum(dim=1) / (counts if mode == "mean" else torch.sqrt(counts))


def model_folder(location: str, revision: str | None) -> Path:
    """A local folder as is; a hub id as its snapshot at `revision` (from the cache when HF_HUB_OFFLINE=1)."""
    if Path(location).is_dir():
        return Path(location)
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(location, revision=revision, allow_patterns=_HUB_FILES, ignore_patterns=_HUB_SKIP))


def load_sentence_model(location: str, revision: str | None, device: str) -> Any:
    """The model at `location` (a sentence-transformers folder or hub id): through plain transformers when its
    pipeline is one this module reproduces, else through sentence-transformers itself."""
    folder = model_folder(location, revision)
    pipeline = Pipeline(folder)
    if not pipeline.unsupported:
        return SentenceModel(pipeline, device)
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(folder), device=device)
