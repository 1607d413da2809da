"""The Transformer module of a sentence model: token embeddings for a tokenized batch.

Plain BERT (MiniLM among them) runs on torch.nn alone: its layer is exactly `nn.TransformerEncoderLayer` in
post-norm form with erf GELU, and the weights load from model.safetensors. transformers' own model classes pull
in `transformers.modeling_utils` (torch.distributed, torch._dynamo, sympy, scipy through the loss functions): on a
slow 2-core machine that import chain costs more than torch itself, on every cold `ragloop query`. Any other
architecture, or a BERT this class does not match exactly, loads through `transformers.AutoModel`.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import torch
from torch import nn

# config.json values under which BERT is exactly the module below (absent keys take BERT's defaults)
_BERT_DEFAULTS = {"hidden_act": "gelu", "position_embedding_type": "absolute", "is_decoder": False,
                  "add_cross_attention": False}  # fmt: skip
_PLAIN_BERT = {"model_type": "bert", **_BERT_DEFAULTS}


class BertEncoder(nn.Module):
    """BERT's embeddings and encoder (no pooler): token embeddings, as `BertModel(...).last_hidden_state`."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        hidden, eps = config["hidden_size"], config.get("layer_norm_eps", 1e-12)
        self.hidden_size: int = hidden
        self.word = nn.Embedding(config["vocab_size"], hidden)
        self.position = nn.Embedding(config["max_position_embeddings"], hidden)
        self.token_type = nn.Embedding(config.get("type_vocab_size", 2), hidden)
        self.norm = nn.LayerNorm(hidden, eps=eps)
        heads, ffn = config["num_attention_heads"], config["intermediate_size"]
        layer = nn.TransformerEncoderLayer(hidden, heads, ffn, dropout=0.0, activation="gelu", layer_norm_eps=eps,
                                           batch_first=True)  # fmt: skip
        self.encoder = nn.TransformerEncoder(layer, config["num_hidden_layers"], enable_nested_tensor=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
        positions = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)
        types = torch.zeros_like(input_ids) if token_type_ids is None else token_type_ids
        x = self.norm(self.word(input_ids) + self.position(positions) + self.token_type(types))
        return self.encoder(x, src_key_padding_mask=attention_mask == 0)

    def load_bert_weights(self, weights: dict[str, torch.Tensor], layers: int) -> None:
        """BertModel's tensors (with or without a `bert.` prefix) into this module; strict."""
        w = {k.removeprefix("bert."): v for k, v in weights.items()}
        state = {"word.weight": w["embeddings.word_embeddings.weight"],
                 "position.weight": w["embeddings.position_embeddings.weight"],
                 "token_type.weight": w["embeddings.token_type_embeddings.weight"],
                 "norm.weight": w["embeddings.LayerNorm.weight"],
                 "norm.bias": w["embeddings.LayerNorm.bias"]}  # fmt: skip
        for i in range(layers):
            src, dst = f"encoder.layer.{i}.", f"encoder.layers.{i}."
            for part in ("weight", "bias"):
                qkv = [w[f"{src}attention.self.{n}.{part}"] for n in ("query", "key", "value")]
                state[f"{dst}self_attn.in_proj_{part}"] = torch.cat(qkv)
                state[f"{dst}self_attn.out_proj.{part}"] = w[f"{src}attention.output.dense.{part}"]
                state[f"{dst}norm1.{part}"] = w[f"{src}attention.output.LayerNorm.{part}"]
                state[f"{dst}linear1.{part}"] = w[f"{src}intermediate.dense.{part}"]
                state[f"{dst}linear2.{part}"] = w[f"{src}output.dense.{part}"]
                state[f"{dst}norm2.{part}"] = w[f"{src}output.LayerNorm.{part}"]
        self.load_state_dict(state, strict=True)


class AutoEncoder:
    """Any architecture through transformers.AutoModel, given only the inputs its forward takes."""

    def __init__(self, folder: Path, device: str) -> None:
        from transformers import AutoModel

        self.model = AutoModel.from_pretrained(str(folder)).to(device).eval()
        self.hidden_size = int(self.model.config.hidden_size)
        self._inputs = set(inspect.signature(self.model.forward).parameters)  # e.g. no token_type_ids for some

    def __call__(self, **batch: torch.Tensor) -> torch.Tensor:
        return self.model(**{k: v for k, v in batch.items() if k in self._inputs}).last_hidden_state


def load_encoder(folder: Path, config: dict[str, Any], device: str) -> BertEncoder | AutoEncoder:
    weights = folder / "model.safetensors"
    if weights.is_file() and all({**_BERT_DEFAULTS, **config}.get(k) == v for k, v in _PLAIN_BERT.items()):
        from safetensors.torch import load_file

        bert = BertEncoder(config)
        try:
            bert.load_bert_weights(load_file(str(weights)), config["num_hidden_layers"])
            return bert.to(device).eval()
        except (KeyError, RuntimeError):  # tensors named or shaped otherwise: transformers knows them
            pass
    return AutoEncoder(folder, device)
